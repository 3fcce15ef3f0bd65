"""Evaluation: error, loss, per-class error and (when available) calibration of a classifier."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchstn._validation import check_choice, check_int
from torchstn.engine._config import PRECISIONS
from torchstn.engine._data import iterate
from torchstn.engine.metrics import expected_calibration_error, misclassified

__all__ = ["as_evaluated", "cpu_has_native_bf16", "evaluate", "precision_context", "predict"]


@contextlib.contextmanager
def as_evaluated(modules: Iterable[nn.Module], device: torch.device, fork_rng: bool = True) -> Iterator[None]:
    """``modules`` in eval mode and the random state forked, for an evaluation or a diagnostic:
    afterwards every submodule has its own mode back (a part the user froze in eval mode stays
    so) and the generators their state, so that evaluating never changes a seeded training run
    (a BatchNorm's running statistics, a dropout draw, a P-STN's test-time θ). ``fork_rng=False``:
    the modes alone (a draw the caller asked for)."""
    modes = [(module, module.training) for root in modules for module in root.modules()]
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked, enabled=fork_rng):
        for root in modules:
            root.eval()
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode


def precision_context(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``TrainConfig.precision``: bf16 autocast, or nothing for ``"fp32"``.

    Under autocast the network's convolutions and matmuls run in bfloat16; torchstn's
    sampler keeps float32 (it casts its input up, see ``tests/test_autocast.py``). On a
    CPU without native bfloat16 a warning says that it will be slower, not faster.
    """
    if check_choice("precision", precision, PRECISIONS) == "fp32":  # ("float32" ran bf16)
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cpu" and not cpu_has_native_bf16():
        _warn_slow_bf16()
    return torch.autocast(device_type, dtype=torch.bfloat16)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), so that bf16 autocast can win.

    Without it oneDNN does not take bfloat16 convolutions and torch falls back to its
    generic kernel: an ST-CNN step ran 7x slower in bf16 than in fp32 on an AVX2-only
    EPYC (``python benchmarks/bench_engine_options.py``). torch has no public query for
    this; ``torch.cpu``'s private ones are asked, and a torch without them counts as "no".
    """
    ask = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(f()) for f in ask if f is not None)


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn(
        "precision='bf16' on a CPU without native bfloat16 (no AVX-512 BF16 or AMX): convolutions fall back to "
        "torch's generic kernel and run several times slower than fp32 (7x for an ST-CNN step measured on an "
        "AVX2 CPU); use precision='fp32' here",
        RuntimeWarning,
        stacklevel=3,
    )


def _gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a ``(N_rank, ...)`` tensor over the processes, in rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    world = dist.get_world_size()
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Any, *, batch_size: int = 512, device: str | torch.device = "cpu",
    ground_truth_init: bool = False, precision: str = "fp32", channels_last: bool = False, limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` (float32) and labels ``(N,)`` over ``dataset``, or its first ``limit``
    items (gathered over processes under DDP).

    Under DDP each process evaluates every ``world_size``-th example; the result is
    reordered to the dataset's order on every process. ``ground_truth_init`` (the IC-STN
    protocol), ``precision`` and ``channels_last`` call the model as the ``TrainConfig``
    fields of those names say: evaluation takes the training's path. The model runs in eval
    mode, every submodule's own mode restored afterwards; what it draws (a P-STN's test-time
    θ) comes from torch's generator as any call's would (:func:`~torchstn.engine.train`
    forks it around its per-epoch evaluation, so that evaluating never changes a seeded run).
    """
    if not isinstance(model, nn.Module):  # (a str failed with "'str' object has no attribute 'modules'")
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("batch_size", batch_size, 1)  # (-1 gave no logits, 0 range()'s error)
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    logits, labels = [], []
    n = len(dataset) if limit is None else min(limit, len(dataset))
    batches = iterate(dataset, batch_size, rank, world, ground_truth_init=ground_truth_init, device=device,
                      channels_last=channels_last, limit=n)
    with as_evaluated([model], torch.device(device), fork_rng=False):  # (the trainer forks the generators)
        for x, y, kwargs in batches:
            with precision_context(precision, device):
                logits.append(model(x, **kwargs).float())
            labels.append(y)
    num_classes = int(getattr(model, "num_classes", 0)) or (logits[0].shape[1] if logits else 0)
    out = torch.cat(logits) if logits else torch.zeros(0, num_classes, device=device)
    lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    out, lab = _gather(out), _gather(lab)
    if world > 1:  # rank r held items r, r + world, ...: put them back in order
        order = torch.cat([torch.arange(r, n, world) for r in range(world)]).to(out.device)
        out, lab = out[order.argsort()], lab[order.argsort()]
    return out, lab


def _calibration(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The ECE of the probabilities; the NLL from the log-probabilities in float64 (a model's
    log-probabilities pass unchanged): taken from the float32 probabilities, whose floor at
    float32's smallest normal number capped an image's cost at 87.3 (an NLL of 46.17 where
    the exact one was 115.0, beside a loss of 115.0)."""
    return {
        "ece": float(expected_calibration_error(logits.softmax(1), labels, bins=15)),
        "nll": float(F.cross_entropy(logits.double(), labels)),
    }


def evaluate(
    model: nn.Module, dataset: Any, *, batch_size: int = 512, device: str | torch.device = "cpu",
    ground_truth_init: bool = False, precision: str = "fp32", channels_last: bool = False,
) -> dict[str, Any]:
    """Test metrics of a classifier on a dataset of ``(image, label)`` items.

    ``ground_truth_init``, ``precision``, ``channels_last``: call the model as the
    ``TrainConfig`` fields of those names say (see :func:`predict`).

    Returns:
        ``{"n", "loss", "error", "per_class_error", "ece", "nll"}``: mean
        cross-entropy, error rate in [0, 1], a list with the error rate of each class
        (``None`` for a class absent from the data), and the 15-bin expected calibration
        error and negative log-likelihood (:mod:`torchstn.engine.metrics`).
    """
    logits, labels = predict(model, dataset, batch_size=batch_size, device=device, ground_truth_init=ground_truth_init,
                             precision=precision, channels_last=channels_last)
    n = int(labels.numel())
    if n == 0:
        raise ValueError("evaluate needs a non-empty dataset")
    num_classes = logits.shape[1]
    wrong = misclassified(logits, labels)  # (a NaN row counts as wrong: argmax took NaN for the top)
    counts = torch.bincount(labels, minlength=num_classes)
    wrong_per_class = torch.bincount(labels[wrong], minlength=num_classes)
    per_class = [None if c == 0 else float(w / c) for w, c in zip(wrong_per_class.tolist(), counts.tolist())]
    result: dict[str, Any] = {
        "n": n,
        "loss": float(F.cross_entropy(logits, labels)),
        "error": float(wrong.float().mean()),
        "per_class_error": per_class,
    }
    result.update(_calibration(logits, labels))
    return result
