"""Datasets for a run and their seeded, shardable batches.

Batches are drawn from a permutation that depends only on ``(seed, epoch)``, so a
resumed run sees exactly the batches it would have seen, and under DDP every process
takes its slice of the same global batch (its loss weighted by the slice's share, so the
averaged gradient is the one-process gradient; BatchNorm layers normalise over the global
batch on CUDA only, see the trainer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from torchstn.data import MNISTDataset
from torchstn.engine._config import TrainConfig

__all__ = [
    "dataset_model_args", "epoch_batches", "fetch", "fetch_inputs", "iterate", "law_label", "law_text", "load_split",
    "run_data", "shard", "to_channels_last",
]


def load_split(config: TrainConfig, split: str) -> Dataset:
    """The ``split`` (``"train"`` or ``"test"``) of ``config.data`` with its ``data_options``,
    limited as configured.

    Raises whatever :func:`torchstn.data.get_dataset` raises for an unknown name or
    missing files (``ValueError``, ``FileNotFoundError``) or an option its recipe does not
    take (``TypeError``), with a message saying what to do.
    """
    from torchstn.data import get_dataset

    limit = config.train_limit if split == "train" else config.test_limit
    return get_dataset(
        config.data, split, root=config.data_dir, seed=config.data_seed, online=config.online, limit=limit,
        **config.data_options,
    )


def law_text(law: dict[str, Any] | None) -> str:
    """A recorded data law (:func:`torchstn.data.data_law`) in words, for messages."""
    if law is None:
        return "a set drawn by no recipe"
    options = ", ".join(f"{k}={v}" for k, v in law.get("options", {}).items())
    return f"mnist-{law.get('kind')} as recipe version {law.get('version')} draws it ({options})"


def law_label(law: dict[str, Any] | None) -> str:
    """The same law named short, without its options, for tables (a report's changed fields)."""
    return "drawn by no recipe" if law is None else f"mnist-{law.get('kind')} recipe version {law.get('version')}"


def run_data(config: TrainConfig, info: dict[str, Any], *, chosen: bool = False) -> tuple[TrainConfig, str | None]:
    """The config that measures a run on the data it was trained on, and a note to print (``None``:
    nothing to say).

    ``config`` is the run's (:func:`~torchstn.engine.load_model`'s), its ``data`` and
    ``data_options`` perhaps changed by the caller; ``info`` is :func:`~torchstn.engine.load_model`'s
    (``data_law`` where the checkpoint records the law its data were drawn by, as runs do since
    2026-12-05; ``path``). Where this torchstn draws another law for ``config`` (a recipe has
    changed since the run was trained), the run's own law is taken if an option of the recipe still
    draws it (:attr:`torchstn.data.Recipe.earlier`), with a note; where none does, a ``ValueError``
    says so. Data the user ``chosen`` (``--data``, ``--data-option``) are measured as given, with a
    note where they are drawn by another version of the run's recipe. A run that records no law
    (trained before, or on sets given to the trainer) is measured on its config's law as drawn now,
    with a note where its recipe has changed since its first version (naming the options that draw
    the earlier ones).

    Example:
        >>> config = TrainConfig(data="mnist-p")
        >>> law = {"kind": "p", "version": 1, "options": {"sigma": 5.0}}
        >>> run_data(config, {"data_law": law})[0].data_options
        {'sigma': 5.0, 'moved': 'target'}
    """
    from torchstn.data import KINDS, data_law

    law = data_law(config.data, config.data_options)
    where = str(info.get("path", "the run"))
    if "data_law" not in info:
        if chosen or law is None or law["version"] == 1:
            return config, None
        earlier = KINDS[law["kind"]].earlier
        hints = "; ".join(f"version {v} with --data-option " + " ".join(f"{k}={x}" for k, x in o.items())
                          for v, o in sorted(earlier.items()))
        return config, (
            f"{where} does not record the law its data were drawn by (trained before 2026-12-05, or on "
            f"sets given to the trainer): measured on {law_text(law)}"
            + (f"; a run trained on an earlier version is measured on its own by {hints}" if hints else "")
        )
    recorded = info["data_law"]
    if recorded == law:
        return config, None
    same_kind = recorded is not None and law is not None and recorded.get("kind") == law["kind"]
    if chosen:  # (a note where the recipe has changed since: the options given may not mean what they meant)
        other_version = same_kind and recorded.get("version") != law["version"]
        return config, f"{where} was trained on {law_text(recorded)}; measured, as asked, on {law_text(law)}" \
            if other_version else None
    options = KINDS[law["kind"]].options_for(recorded) if same_kind else None
    if options is None:
        raise ValueError(
            f"{where} was trained on {law_text(recorded)}, which this torchstn draws no more; its config now draws "
            f"{law_text(law)}. To measure it on that, say so (--data {config.data} with --data-option, or "
            "run_data(..., chosen=True)); to measure it on its own data, train it again"
        )
    changed = " ".join(f"{k}={v}" for k, v in options.items() if law["options"].get(k) != v)
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}  # (as the recipe takes them)
    return config.replace(data_options=options), (
        f"{where} was trained on {law_text(recorded)}, which this torchstn draws with {changed}: measured on it"
    )


def dataset_model_args(dataset: Any) -> dict[str, Any]:
    """``in_channels``, ``input_size`` and ``num_classes`` of a dataset, for :func:`create_model`.

    ``dataset.input_shape`` is ``(C, L)`` for series (``ucr:<Name>``), ``(C, H, W)`` for
    images or ``(C, D, H, W)`` for volumes (``mnist-3d``); ``input_size`` is the part after
    ``C``: ``[L]``, ``[H, W]`` or ``[D, H, W]``.

    Raises:
        ValueError: an ``input_shape`` of another length (the message names it).

    Example:
        >>> from types import SimpleNamespace
        >>> dataset_model_args(SimpleNamespace(input_shape=(1, 150), num_classes=2))
        {'in_channels': 1, 'input_size': [150], 'num_classes': 2}
        >>> dataset_model_args(SimpleNamespace(input_shape=(1, 60, 60, 60), num_classes=10))["input_size"]
        [60, 60, 60]
    """
    missing = [name for name in ("input_shape", "num_classes") if getattr(dataset, name, None) is None]
    if missing:  # (an AttributeError of the training loop's, or int(None))
        raise ValueError(f"a dataset to train on needs input_shape ((C, L), (C, H, W) or (C, D, H, W)) and "
                         f"num_classes, as torchstn's datasets have; {type(dataset).__name__} has no "
                         f"{' or '.join(missing)}")
    shape = [int(s) for s in dataset.input_shape]
    if not 2 <= len(shape) <= 4:
        raise ValueError(
            f"a dataset's input_shape must be (C, L), (C, H, W) or (C, D, H, W), got {tuple(dataset.input_shape)} "
            f"from {type(dataset).__name__}"
        )
    return {"in_channels": shape[0], "input_size": shape[1:], "num_classes": int(dataset.num_classes)}


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its 4-D parameters and buffers (2-D convolution weights) in channels-last memory format.

    ``Module.to(memory_format=torch.channels_last)`` refuses a model holding 5-D tensors
    (a 3-D convolution's weights, as in the volume models); this converts the 4-D ones
    only and leaves the others (1-D, 3-D convolutions, linear layers) as they are, so
    ``TrainConfig.channels_last`` is safe for any model. Values are unchanged. A weight of one
    input channel gets channels-last strides too (``Tensor.to``, as ``Module.to`` does):
    ``contiguous(memory_format=...)`` returns it as it is, since its NCHW strides count as
    channels-last as well, and the first convolution of every MNIST model then ran NCHW.

    Example:
        >>> net = to_channels_last(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Conv2d(2, 4, 3)))
        >>> net[1].weight.is_contiguous(memory_format=torch.channels_last), net[0].weight.is_contiguous()
        (True, True)
    """
    return model._apply(lambda t: t.to(memory_format=torch.channels_last) if t.dim() == 4 else t)


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> torch.Tensor:
    """Index batches ``(num_batches, batch_size)`` of one epoch; the last partial batch is dropped.

    The permutation depends only on ``seed`` and ``epoch``.

    Example:
        >>> epoch_batches(10, 4, seed=0, epoch=0).shape
        torch.Size([2, 4])
        >>> torch.equal(epoch_batches(10, 4, 0, 1), epoch_batches(10, 4, 0, 1))
        True
    """
    mixed = seed * 1_000_003 + epoch
    generator = torch.Generator().manual_seed(mixed if -(2**63) <= mixed < 2**63 else mixed % 2**63)  # (int64)
    perm = torch.randperm(num_items, generator=generator)
    num_batches = num_items // batch_size
    return perm[: num_batches * batch_size].view(num_batches, batch_size)


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's contiguous slice of a global batch (``world_size`` nearly equal parts)."""
    if world_size == 1:
        return indices
    return torch.tensor_split(indices, world_size)[rank]


def _rows(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(inputs, labels)`` whose rows are ``dataset``'s items exactly (uint8 images in [0, 255]),
    or ``None`` where its class reads its items otherwise."""
    kind = type(dataset)
    if isinstance(dataset, TensorDataset) and kind.__getitem__ is TensorDataset.__getitem__:
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, MNISTDataset) and (kind.__getitem__, kind.__getitems__) == (
            MNISTDataset.__getitem__, MNISTDataset.__getitems__):
        return dataset.images, dataset.labels
    return None


def fetch(dataset: Any, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(B, C, ...)`` float32 (images ``(B, C, H, W)``, series ``(B, C, L)``, volumes
    ``(B, C, D, H, W)``) and labels ``(B,)`` int64 at ``indices``.

    A ``TensorDataset`` or torchstn's ``MNISTDataset`` whose items are its tensors' rows is
    indexed in one go; any other dataset item by item (``__getitems__`` where it has it), so
    that a class's own ``__getitem__`` (a normalisation, a relabelling) is what the model sees
    (its tensors were read past it: logits 1.08 off a ``TensorDataset`` subclass's items).
    """
    tensors = _rows(dataset)
    if tensors is not None:
        x, y = tensors[0][indices], tensors[1][indices]
    else:
        getitems = getattr(dataset, "__getitems__", None)  # a batch at once (an online set renders it)
        items = getitems(indices.tolist()) if getitems is not None else [dataset[int(i)] for i in indices]
        if items and not (isinstance(items[0], (tuple, list)) and len(items[0]) >= 2):  # (a dict: KeyError: 0)
            raise TypeError(f"the dataset's items must be (input, label) pairs, got {type(items[0]).__name__}"
                            + (f" with keys {list(items[0])}" if isinstance(items[0], dict) else ""))
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    return x.float(), y.long()


def fetch_inputs(
    dataset: Any, indices: torch.Tensor, ground_truth_init: bool = False, device: str | torch.device | None = None,
    *, channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """What the model is called with at ``indices``: ``model(x, **kwargs)``, and the labels.

    Returns:
        ``(x, y, kwargs)``: the images and no keywords; with ``ground_truth_init`` the
        undistorted digits and ``{"init_params": θ_gt}`` (see ``TrainConfig.ground_truth_init``);
        all on ``device`` when given; 4-D images in channels-last memory format when
        ``channels_last`` (the same values).

    Raises:
        ValueError: ``ground_truth_init`` on a dataset without ground truth.
    """
    x, y = fetch(dataset, indices)
    kwargs: dict[str, torch.Tensor] = {}
    if ground_truth_init:
        ground_truth = getattr(dataset, "ground_truth", None)
        if ground_truth is None:
            raise ValueError(
                f"ground_truth_init needs a distorted dataset with ground truth, got {type(dataset).__name__}"
            )
        x, kwargs["init_params"] = ground_truth(indices)
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        kwargs = {k: v.to(device, non_blocking=True) for k, v in kwargs.items()}
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y, kwargs


def iterate(
    dataset: Any, batch_size: int, rank: int = 0, world_size: int = 1, *, ground_truth_init: bool = False,
    device: str | torch.device | None = None, channels_last: bool = False, limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
    """This process's share of ``dataset`` (of its first ``limit`` items when given) in order,
    in batches ``(x, y, kwargs)`` (see :func:`fetch_inputs`)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = torch.arange(rank, n, world_size)
    for start in range(0, len(indices), batch_size):
        yield fetch_inputs(dataset, indices[start : start + batch_size], ground_truth_init, device,
                           channels_last=channels_last)
