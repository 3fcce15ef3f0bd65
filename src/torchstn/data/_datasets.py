"""PyTorch datasets over MNIST and its distortions: the path the training engine uses.

Items are ``(image, label)``: ``image`` float32 ``(C, H, W)`` in [0, 1] (``(1, D, H, W)``
for ``mnist-3d``, ``(D, L)`` z-normalised series for ``ucr:<Name>``), ``label`` an
int. Every dataset has ``num_classes`` and ``input_shape``; distorted ones also
``params`` ``(N, P)`` (the ground truth of each sample) and ``transform`` (its
family, ``None`` where the parameters are not one family). Datasets implement
``__getitems__``, so a :class:`torch.utils.data.DataLoader` fetches (and an online
set renders) a whole batch at once; they hold plain tensors and pickle, so
``num_workers > 0`` works with every start method.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import torch
from torch.utils.data import Dataset

from torchstn._validation import check_bool, check_choice, check_int, check_tensor
from torchstn.data._cifar import load_cifar10
from torchstn.data._generate import BLOCK, distorted_mnist, draw_blocks, image_items, load_sources
from torchstn.data._geometry import make_generator
from torchstn.data._mnist import SPLITS, load_mnist
from torchstn.data._recipes import KINDS, Draw, Recipe, Sources, get_recipe
from torchstn.data._ucr import UCR_OPTIONS, UCR_PADDINGS, check_ucr_options, load_ucr, ucr_datasets
from torchstn.transforms import Transform

__all__ = [
    "DATASETS", "DISTORTED", "PSTN_SIZES", "UCR_PREFIX", "MNISTDataset", "OnlineDistortedMNIST", "TimeSeriesDataset",
    "get_dataset", "list_datasets", "pstn_fold",
]

#: dataset names accepted by :func:`get_dataset` (besides ``"ucr:<Name>"``)
#: the datasets drawn with distortions (a recipe's options, a seed of their own, fresh draws ``online``)
DISTORTED: tuple[str, ...] = tuple(f"mnist-{k}" for k in KINDS)
DATASETS: tuple[str, ...] = ("mnist", *DISTORTED, "cifar10")
#: the prefix of a UCR data set's name: ``"ucr:GunPoint"``
UCR_PREFIX = "ucr:"

#: the P-STN small-data training-set sizes
PSTN_SIZES: tuple[int, ...] = (30, 100, 1000, 3000, 10000)


def list_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset`: :data:`DATASETS`, then ``"ucr:<Name>"`` for
    every UCR data set found without a ``root`` (in ``$TORCHSTN_DATA``, the user cache,
    or shipped by the installed ``aeon``; see :func:`~torchstn.data.load_ucr`).
    ``get_dataset`` also takes ``"ucr:<Name>"`` for a set under its ``root``.

    Example:
        >>> stn.data.list_datasets()[:3]
        ['mnist', 'mnist-r', 'mnist-rts']
    """
    return list(DATASETS) + [UCR_PREFIX + name for name in ucr_datasets()]


def pstn_fold(labels: torch.Tensor, n: int, fold: int, folds: int = 5) -> torch.Tensor:
    """Indices of the P-STN small-data subset of ``n`` images, fold ``fold`` of ``folds``.

    The subsets are class-balanced (``n // C`` images of each of the ``C`` classes, the
    first ``n % C`` classes one more) and the folds are disjoint. They are fixed: drawn
    from a constant stream, independent of any seed, so every run trains on the same
    images (P-STN uses 30, 100, 1000, 3000 and 10000 images, 5 folds).

    Args:
        labels: ``(N,)`` int64 labels of the split.
        n: subset size.
        fold: which fold, ``0 <= fold < folds``.
        folds: number of disjoint folds.

    Returns:
        ``(n,)`` int64 sorted indices into the split.

    Example:
        >>> labels = torch.arange(1000) % 10
        >>> idx = pstn_fold(labels, 30, 0)
        >>> len(idx), torch.bincount(labels[idx]).tolist()
        (30, [3, 3, 3, 3, 3, 3, 3, 3, 3, 3])
    """
    check_int("n", n, 1)
    check_int("folds", folds, 1)
    check_int("fold", fold, 0, folds - 1)
    classes = int(labels.max()) + 1 if len(labels) else 0
    generator = make_generator("pstn-folds", len(labels))
    order = torch.randperm(len(labels), generator=generator)
    picked = []
    for c in range(classes):
        members = order[labels[order] == c]
        take = n // classes + (1 if c < n % classes else 0)
        if folds * take > len(members):
            raise ValueError(
                f"{folds} disjoint folds of {n} images need {folds * take} images of class {c}, "
                f"the split has {len(members)}"
            )
        picked.append(members[fold * take : (fold + 1) * take])
    return torch.cat(picked).sort().values


def _originals(sources: Sources, source: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 28, 28)`` float32 in [0, 1]: the source digits at ``source``."""
    return sources.images[source].unsqueeze(1).float().div_(255)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_cpu(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """``method`` (or function) with the CPU as torch's default device: the data are built, drawn
    and rendered on the CPU whatever the caller's default (under ``torch.set_default_device``
    an online set's draws met CPU tensors and failed). Typed with ``method``'s own signature
    (``Callable[..., Any]`` erased ``get_dataset``'s for type checkers)."""

    @functools.wraps(method)
    def on_cpu(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with torch.device("cpu"):
            return method(*args, **kwargs)

    return on_cpu


class MNISTDataset(Dataset):
    """A fixed set of images with labels (and, if distorted, their ground-truth parameters).

    Args:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` int64.
        num_classes: number of classes (10; 19 for addition).
        params: ``(N, P)`` ground truth, or ``None`` for undistorted MNIST.
        transform: the family of ``params`` (``None`` if none or not a single family).
        name: the dataset's name (``"mnist-rts"``, ...).
        split: ``"train"`` or ``"test"``.
        source: ``(N,)`` (or ``(N, 2)``) index of the source digit(s) in the split.
        sources: the undistorted split ``source`` indexes (for :meth:`ground_truth`).

    Items are ``(image float32 (C, H, W) in [0, 1], label int)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        num_classes: int = 10,
        params: torch.Tensor | None = None,
        transform: Transform | None = None,
        name: str = "mnist",
        split: str = "train",
        source: torch.Tensor | None = None,
        sources: Sources | None = None,
    ) -> None:
        check_tensor("images", images, ndim=4)
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (N, C, H, W), got {images.dtype}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.images = images
        self.labels = labels
        self.num_classes = num_classes
        self.params = params
        self.transform = transform
        self.name = name
        self.split = split
        self.source = source
        self.sources = sources

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        return image_items(self.images, self.labels, indices)

    def _take(self, index: torch.Tensor, name: str | None = None) -> MNISTDataset:
        return MNISTDataset(
            self.images[index],
            self.labels[index],
            num_classes=self.num_classes,
            params=None if self.params is None else self.params[index],
            transform=self.transform,
            name=name or self.name,
            split=self.split,
            source=None if self.source is None else self.source[index],
            sources=self.sources,
        )

    def ground_truth(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The undistorted digits and the parameters that distorted them, at ``indices``.

        Returns:
            ``(originals, params)``: ``(B, 1, 28, 28)`` float32 in [0, 1] and ``(B, P)``, such
            that ``warp(originals, params, self.transform, size)`` renders the images (for
            ``mnist-cluttered``, their digit without the clutter added after its warp).

        Raises:
            ValueError: a set without one transform family per sample (undistorted MNIST,
                ``addition``) or built without its sources.
        """
        if self.params is None or self.transform is None or self.source is None or self.sources is None:
            raise ValueError(
                f"{self.name} has no ground truth to start from: it needs one transform family per sample "
                "and its undistorted sources (a distorted set from get_dataset, not mnist or mnist-addition)"
            )
        index = torch.as_tensor(indices, dtype=torch.long, device="cpu")
        return _originals(self.sources, self.source[index]), self.params[index]

    def set_epoch(self, epoch: int) -> None:
        """Nothing: a fixed set is the same every epoch (so that a loop may call it on every
        split, as on an :class:`OnlineDistortedMNIST`, whose test split is a fixed set)."""

    def subset(self, n: int, fold: int = 0, folds: int = 5) -> MNISTDataset:
        """The P-STN small-data subset: ``n`` images of fold ``fold`` (see :func:`pstn_fold`),
        balanced over the classes of the samples' (first) digits where their sources are known
        (addition's labels are sums): the images ``get_dataset(..., subset=n, fold=fold)`` and
        the online set's :meth:`OnlineDistortedMNIST.subset` take."""
        return self._take(pstn_fold(self._fold_classes(), n, fold, folds), f"{self.name}[{n}/{fold}]")

    def _fold_classes(self) -> torch.Tensor:
        if self.source is None or self.sources is None:
            return self.labels
        first = self.source if self.source.dim() == 1 else self.source[:, 0]
        return self.sources.labels[first]

    def __repr__(self) -> str:
        return f"MNISTDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, input_shape={self.input_shape})"


class OnlineDistortedMNIST(Dataset):
    """Fresh distortions every epoch, rendered on the fly (batched per ``__getitems__`` call).

    Epoch ``e`` draws from the stream ``(seed, kind, split, e)``: epoch 0 is the fixed
    set of :func:`~torchstn.data.distorted_mnist`, and every epoch is reproducible. Call
    :meth:`set_epoch` at the start of each epoch (as with ``DistributedSampler``), before
    making the epoch's ``DataLoader`` iterator: the epoch is held in shared memory, so it
    reaches the workers also where they persist (``persistent_workers=True``: they keep
    the copy of the dataset they were given, and with the epoch in that copy they drew
    epoch 0 again every epoch, without a word).

    Args:
        recipe: the distortion.
        sources: the undistorted split.
        split: its name.
        seed: seed of the distortions.
        limit: use only the first ``limit`` samples.
        index: restrict to these samples of the split (e.g. a P-STN fold).
        fixed: always epoch 0 (:meth:`set_epoch` changes nothing): the fixed set of
            :func:`~torchstn.data.distorted_mnist`, rendered batch by batch, for sets too
            large to hold (``mnist-3d``).
    """

    def __init__(
        self,
        recipe: Recipe,
        sources: Sources,
        split: str,
        seed: int = 0,
        *,
        limit: int | None = None,
        index: torch.Tensor | None = None,
        fixed: bool = False,
    ) -> None:
        self.recipe = recipe
        self.sources = sources
        self.split = split
        self.seed = seed
        self.name = f"mnist-{recipe.kind}"
        self.num_classes = recipe.num_classes
        self.transform = recipe.transform
        full = torch.arange(len(sources), device="cpu") if index is None else index
        self.index = full if limit is None else full[:limit]
        self._epoch = torch.zeros((), dtype=torch.int64, device="cpu").share_memory_()  # (see set_epoch)
        self.fixed = check_bool("fixed", fixed)
        self._blocks: dict[int, Draw] = {}
        self._blocks_epoch = 0
        self._warned_unfit = False  # (digits cut by the canvas are reported once, at the first block holding some)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.recipe.input_shape

    @property
    def epoch(self) -> int:
        """The epoch whose distortions the set renders (:meth:`set_epoch`)."""
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use the distortions of ``epoch`` from now on (a ``fixed`` set stays at epoch 0), in
        this process and in the ``DataLoader`` workers that hold a copy of the set, made
        before or after: the epoch lives in shared memory, which the workers' copies share
        (whether forked or spawned); a :func:`copy.deepcopy` or an unpickled set has its own."""
        epoch = check_int("epoch", epoch, 0)
        if not self.fixed:
            self.epoch = epoch

    def __setstate__(self, state: dict) -> None:
        # unpickled or deep-copied: a private tensor, shared again (its own epoch, for its own workers); a
        # worker's copy, which torch's multiprocessing sends as a handle to the same memory, stays shared
        self.__dict__.update(state)
        if not self._epoch.is_shared():
            self._epoch.share_memory_()

    def _draw_of(self, rows: torch.Tensor) -> tuple[Draw, torch.Tensor]:
        """The current epoch's draws of the blocks holding ``rows`` (drawn once per epoch and
        process), and where ``rows`` are in them."""
        epoch = self.epoch  # (read once: another process may set it)
        if self._blocks_epoch != epoch:
            self._blocks, self._blocks_epoch = {}, epoch
        needed = torch.unique(rows // BLOCK).tolist() or [0]  # (no rows: block 0 gives the draws' shapes)
        for b in needed:
            if b not in self._blocks:
                block = self._blocks[b] = draw_blocks(self.recipe, self.sources, self.split, self.seed, epoch,
                                                      range(b, b + 1))
                if not self._warned_unfit and block.stats.get("unfit"):  # (once per set, not per block)
                    self._warned_unfit = True
                    samples = f"samples {b * BLOCK}..{b * BLOCK + len(block.labels) - 1}"
                    self.recipe.warn_unfit(block.stats, f"{self.name} {self.split} (seed {self.seed}, epoch "
                                                        f"{epoch}, {samples})")
        draw = Draw.cat([self._blocks[b] for b in needed])
        starts = torch.tensor([b * BLOCK for b in needed])
        offsets = torch.cumsum(torch.tensor([0] + [len(self._blocks[b].labels) for b in needed[:-1]]), 0)
        block = torch.searchsorted(starts, rows, right=True) - 1
        return draw, offsets[block] + rows - starts[block]

    @_on_cpu
    def current_draw(self) -> Draw:
        """Every random choice of the current epoch, for the samples of this dataset (in order)."""
        draw, where = self._draw_of(self.index)
        return Draw(draw.params[where], draw.source[where], draw.labels[where],
                    {k: v[where] for k, v in draw.extras.items()}, draw.stats)

    @property
    def params(self) -> torch.Tensor:
        """``(N, P)`` ground truth of the current epoch."""
        return self.current_draw().params

    @property
    def labels(self) -> torch.Tensor:
        """``(N,)`` labels (of the current epoch: for ``addition`` the second digit is redrawn)."""
        if self.recipe.channels == 1:  # one digit per sample: its label, whatever the draw
            return self.sources.labels[self.index]
        return self.current_draw().labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([index])[0]

    @_on_cpu
    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        rows = self.index[torch.as_tensor(indices, dtype=torch.long, device="cpu")]
        draw, where = self._draw_of(rows)
        images = self.recipe.render(self.sources, draw, where).float().div_(255)
        return list(zip(images.unbind(0), draw.labels[where].tolist()))

    @_on_cpu
    def ground_truth(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The undistorted digits and this epoch's parameters at ``indices`` (see :meth:`MNISTDataset.ground_truth`)."""
        if self.recipe.channels != 1 or self.transform is None:
            raise ValueError(f"{self.name} has no ground truth to start from: it needs one transform family per sample")
        rows = self.index[torch.as_tensor(indices, dtype=torch.long, device="cpu")]
        draw, where = self._draw_of(rows)
        return self.recipe.originals(self.sources, draw.source[where]), draw.params[where]

    def subset(self, n: int, fold: int = 0, folds: int = 5) -> OnlineDistortedMNIST:
        """The P-STN small-data subset of this set (see :func:`pstn_fold`)."""
        picked = self.index[pstn_fold(self.sources.labels[self.index], n, fold, folds)]
        out = OnlineDistortedMNIST(self.recipe, self.sources, self.split, self.seed, index=picked, fixed=self.fixed)
        out.epoch = self.epoch
        return out

    def __repr__(self) -> str:
        return (
            f"OnlineDistortedMNIST(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"epoch={self.epoch}, fixed={self.fixed}, recipe={self.recipe!r})"
        )


class TimeSeriesDataset(Dataset):
    """Series with labels: a UCR split as a dataset (see :func:`~torchstn.data.load_ucr`).

    Args:
        series: ``(N, D, L)`` float32.
        labels: ``(N,)`` int64 in ``0..num_classes-1``.
        classes: the original label of each class index.
        name: ``"ucr:<Name>"``.
        split: ``"train"`` or ``"test"``.
        lengths: ``(N,)`` lengths before padding (``None``: all ``L``).

    Items are ``(series float32 (D, L), label int)``; ``tensors`` is ``(series, labels)``
    (as a ``TensorDataset``'s), so the training engine takes whole batches at once.
    """

    transform = None
    params = None

    def __init__(
        self, series: torch.Tensor, labels: torch.Tensor, *, classes: Sequence[Any], name: str, split: str,
        lengths: torch.Tensor | None = None,
    ) -> None:
        check_tensor("series", series, ndim=3)
        if not series.is_floating_point():
            raise TypeError(f"series must be floating point (N, D, L), got {series.dtype}")
        if labels.shape != (series.shape[0],):
            raise ValueError(f"labels must have shape ({series.shape[0]},), got {tuple(labels.shape)}")
        self.series, self.labels = series, labels
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.name, self.split = name, split
        self.lengths = torch.full((len(labels),), series.shape[2]) if lengths is None else lengths

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.series, self.labels

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(D, L)`` of every series."""
        return tuple(self.series.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.series.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.series[index], int(self.labels[index])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.long, device="cpu")
        return list(zip(self.series[index].unbind(0), self.labels[index].tolist()))

    def _take(self, index: torch.Tensor) -> TimeSeriesDataset:
        return TimeSeriesDataset(self.series[index], self.labels[index], classes=self.classes, name=self.name,
                                 split=self.split, lengths=self.lengths[index])

    def __repr__(self) -> str:
        return (f"TimeSeriesDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"input_shape={self.input_shape}, classes={self.num_classes})")


@_on_cpu
def get_dataset(
    name: str,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    online: bool = False,
    limit: int | None = None,
    subset: int | None = None,
    fold: int = 0,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    verify: bool = True,
    **options: Any,
) -> MNISTDataset | OnlineDistortedMNIST | TimeSeriesDataset:
    """A dataset by name (see :func:`list_datasets`).

    Names: ``"mnist"``; a distortion ``"mnist-<kind>"``; ``"mnist-3d"``, the STN paper's
    extruded-digit volumes, always rendered batch by batch (13 GB of train split would
    not fit: a fixed set renders epoch 0 on every call, the same bytes each time;
    ``cache`` does not apply); ``"cifar10"`` (:func:`~torchstn.data.load_cifar10`, from
    ``root``); ``"ucr:<Name>"``, a UCR time-series set (:func:`~torchstn.data.load_ucr`,
    whose ``znormalize``, ``pad`` and ``length`` are accepted as options).

    Args:
        name: one of :data:`DATASETS` (any case) or ``"ucr:<Name>"``.
        split: ``"train"`` or ``"test"``.
        root: where the MNIST files are (see :func:`~torchstn.data.load_mnist`), or the
            CIFAR-10 archive, or the UCR folders.
        seed: seed of the distortions.
        online: fresh distortions every epoch (:class:`OnlineDistortedMNIST`, call
            ``set_epoch``); the test split is always the fixed set. Only for the distorted
            sets (``mnist-<kind>``): ``ValueError`` for ``mnist``, ``cifar10`` and ``ucr:``.
        limit: only the first ``limit`` samples (after ``subset``).
        subset: take the P-STN small-data subset of this many images (see :func:`pstn_fold`).
        fold: which fold of ``subset`` (``0 <= fold < 5``).
        cache, cache_dir: read and write the cache of a fixed distorted set, and where it
            is (see :func:`~torchstn.data.distorted_mnist`); ``"mnist"`` and online sets
            generate nothing, so they ignore both.
        download, verify: for ``"mnist"``, as in :func:`~torchstn.data.load_mnist`; the
            distorted sets are made from the canonical MNIST, so they accept only ``True``;
            ``cifar10`` and ``ucr:`` sets are never downloaded nor checksummed.
        **options: the recipe's options (e.g. ``sigma=2.5``, see
            :func:`~torchstn.data.distorted_mnist`), or ``load_ucr``'s for ``ucr:``;
            unknown names raise ``TypeError``.

    Returns:
        A dataset of ``(image float32 (C, H, W) in [0, 1], label int)`` (``(1, D, H, W)``
        for ``mnist-3d``; a :class:`TimeSeriesDataset` of ``(D, L)`` series for ``ucr:``)
        with ``num_classes``, ``input_shape`` and, for distorted sets, ``params`` and ``transform``.

    Raises:
        ValueError: an unknown name (the message lists the valid ones), a bad value, ``online``
            for a set that is not distorted.
        TypeError: a wrong type, or an option neither this function nor the recipe has.

    Example:
        >>> ds = stn.data.get_dataset("mnist-rts", "test", limit=8, cache=False)  # doctest: +SKIP
        >>> ds.input_shape, ds.num_classes, ds.params.shape  # doctest: +SKIP
        ((1, 42, 42), 10, torch.Size([8, 4]))
    """
    name, recipe = _named(name, options)
    check_choice("split", split, SPLITS)
    seed = check_int("seed", seed)  # (a tensor seed was hashed as "tensor(1)": other draws than seed=1)
    if limit is not None:
        check_int("limit", limit, 0)
    check_bool("online", online)
    check_bool("download", download)
    check_bool("verify", verify)
    if subset is not None:
        check_int("subset", subset, 1)
    elif fold != 0:  # (once ignored without a word)
        raise ValueError(f"fold picks a fold of a subset; give subset too (got fold={fold!r} without it)")
    if online and recipe is None:  # (once accepted, recorded in the run's config, and the fixed set returned)
        raise ValueError(f"online=True draws fresh distortions of a distorted set's training images every epoch; "
                         f"{name} is not distorted, so there is nothing to redraw: use online=False")
    picked = _Selection(subset, fold, limit)
    if name.startswith(UCR_PREFIX):
        return _ucr_set(name[len(UCR_PREFIX):], split, root, picked, options)
    if recipe is None:
        if name == "cifar10":
            images, labels = load_cifar10(root, split)
            dataset = MNISTDataset(images, labels, name="cifar10", split=split)
            return dataset if picked.everything else dataset._take(picked.index(labels))
        return _mnist_set(root, split, picked, download=download, verify=verify)
    if not (download and verify):
        raise ValueError(
            f"download={download!r}, verify={verify!r}: {name} is generated from the canonical MNIST, "
            "so it is always downloaded where missing and verified (both must be True)"
        )
    kind = name.removeprefix("mnist-")
    fresh = online and split == "train"
    if fresh or len(recipe.input_shape) > 3:  # rendered on the fly: nothing is cached
        sources = load_sources(root, split)
        return OnlineDistortedMNIST(recipe, sources, split, seed, index=picked.index(sources.labels), fixed=not fresh)
    return _fixed_set(kind, split, root, seed, picked, cache=cache, cache_dir=cache_dir, options=options)


def check_dataset_options(name: str, options: dict[str, Any]) -> None:
    """Check a dataset name and its options as :func:`get_dataset` would, loading no data.

    The options are a distorted set's recipe options (names and values checked by its
    :class:`Recipe`) or a ``ucr:`` set's :func:`~torchstn.data.load_ucr` keywords (names and
    values); ``"mnist"`` and ``"cifar10"`` take none.

    Raises:
        ValueError: an unknown name, an option value out of range.
        TypeError: an option the set does not take, a wrong type.

    Example:
        >>> stn.data.check_dataset_options("mnist-p", {"supersample": 4})
        >>> stn.data.check_dataset_options("mnist", {"supersample": 4})
        Traceback (most recent call last):
        ...
        TypeError: unknown argument(s) ['supersample'] for dataset 'mnist': mnist has none; only the distorted sets and ucr: sets take options
    """
    _named(name, options)


def data_law(name: str, options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The law by which this torchstn draws the set ``name`` with ``options``: its recipe's
    :meth:`~torchstn.data.Recipe.describe` (kind, version, every option), or ``None`` for a set drawn
    by no recipe (``mnist``, ``cifar10``, ``ucr:`` sets). A run records it, so that a later version
    of a recipe is not taken for the one its data were drawn by. Loads no data.

    Example:
        >>> stn.data.data_law("mnist-p", {"sigma": 3.0})["options"]["sigma"]
        3.0
        >>> stn.data.data_law("mnist") is None
        True
    """
    recipe = _named(name, dict(options or {}))[1]
    return None if recipe is None else recipe.describe()


def _named(name: str, options: dict[str, Any]) -> tuple[str, Recipe | None]:
    """``name`` in canonical case and its recipe built from ``options`` (None for a set without one)."""
    ucr = isinstance(name, str) and name.lower().startswith(UCR_PREFIX)
    if isinstance(name, str) and not ucr and name.lower() not in DATASETS:
        raise ValueError(f"name must be one of {list(DATASETS)} or '{UCR_PREFIX}<Name>' (a UCR data set), got {name!r}")
    if ucr:
        unknown = sorted(set(options) - set(UCR_OPTIONS))
        if unknown:
            raise TypeError(f"unknown argument(s) {unknown} for a UCR data set; it takes {', '.join(UCR_OPTIONS)} "
                            f"(pad one of {UCR_PADDINGS})")
        check_ucr_options(**options)  # (their values too, before any file is read)
        return UCR_PREFIX + name[len(UCR_PREFIX):], None  # the prefix in any case
    name = check_choice("name", name.lower() if isinstance(name, str) else name, DATASETS)
    if name not in DISTORTED:
        if options:
            raise TypeError(f"unknown argument(s) {sorted(options)} for dataset {name!r}: {name} has none; only the "
                            "distorted sets and ucr: sets take options")
        return name, None
    return name, get_recipe(name.removeprefix("mnist-"), options)


def _ucr_set(name: str, split: str, root: str | os.PathLike | None, picked: _Selection,
             options: dict[str, Any]) -> TimeSeriesDataset:
    """``ucr:<name>`` as a dataset; ``options`` are :func:`~torchstn.data.load_ucr`'s keywords (checked by :func:`_named`)."""
    data = load_ucr(name, split, root, **options)
    dataset = TimeSeriesDataset(data.x, data.y, classes=data.classes, name=UCR_PREFIX + data.name, split=split,
                                lengths=data.lengths)
    return dataset if picked.everything else dataset._take(picked.index(data.y))


@dataclass(frozen=True)
class _Selection:
    """Which samples of a split a dataset keeps: a P-STN ``subset`` fold, then the first ``limit``."""

    subset: int | None
    fold: int
    limit: int | None

    @property
    def everything(self) -> bool:
        return self.subset is None and self.limit is None

    def index(self, labels: torch.Tensor) -> torch.Tensor:
        """The kept indices into a split with these ``labels``."""
        index = torch.arange(len(labels)) if self.subset is None else pstn_fold(labels, self.subset, self.fold)
        return index if self.limit is None else index[: self.limit]


def _mnist_set(
    root: str | os.PathLike | None, split: str, picked: _Selection, *, download: bool, verify: bool
) -> MNISTDataset:
    """Undistorted MNIST, restricted as ``picked`` says."""
    images, labels = load_mnist(root, split, download=download, verify=verify)
    dataset = MNISTDataset(images.unsqueeze(1), labels, name="mnist", split=split)
    return dataset if picked.everything else dataset._take(picked.index(labels))


def _fixed_set(
    kind: str,
    split: str,
    root: str | os.PathLike | None,
    seed: int,
    picked: _Selection,
    *,
    cache: bool,
    cache_dir: str | os.PathLike | None,
    options: dict[str, Any],
) -> MNISTDataset:
    """The fixed distorted set of ``kind`` (rendered only up to ``limit`` when no subset is taken)."""
    limit = picked.limit if picked.subset is None else None
    data = distorted_mnist(kind, split, root, seed, limit=limit, cache=cache, cache_dir=cache_dir, **options)
    dataset = MNISTDataset(
        data.images,
        data.labels,
        num_classes=data.recipe.num_classes,
        params=data.params,
        transform=data.transform,
        name=f"mnist-{kind}",
        split=split,
        source=data.source,
        sources=data.sources,
    )
    if picked.subset is None:
        return dataset
    # a fold is balanced over the classes of the samples' (first) digits, as the online set's
    # (addition's labels are sums: balancing them picked other images than the online epoch 0)
    return dataset._take(picked.index(dataset._fold_classes()))
