"""Evaluation: error, loss, per-class error and (when available) calibration of a classifier."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchstn.engine._data import iterate

__all__ = ["evaluate", "predict"]


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
    ground_truth_init: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, K)`` and labels ``(N,)`` over ``dataset`` (gathered over processes under DDP).

    Under DDP each process evaluates every ``world_size``-th example; the result is
    reordered to the dataset's order on every process. ``ground_truth_init`` calls the
    model as ``TrainConfig.ground_truth_init`` says (the IC-STN protocol).
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y, kwargs in iterate(dataset, batch_size, rank, world, ground_truth_init=ground_truth_init, device=device):
        logits.append(model(x, **kwargs).float())
        labels.append(y)
    model.train(was_training)
    num_classes = int(getattr(model, "num_classes", 0)) or (logits[0].shape[1] if logits else 0)
    out = torch.cat(logits) if logits else torch.zeros(0, num_classes, device=device)
    lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    out, lab = _gather(out), _gather(lab)
    if world > 1:  # rank r held items r, r + world, ...: put them back in order
        order = torch.cat([torch.arange(r, len(dataset), world) for r in range(world)]).to(out.device)
        out, lab = out[order.argsort()], lab[order.argsort()]
    return out, lab


def _calibration(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    # ECE and NLL live in torchstn.engine.metrics (written separately); report them when present
    try:
        from torchstn.engine.metrics import expected_calibration_error, negative_log_likelihood
    except ImportError:
        return {}
    return {
        "ece": float(expected_calibration_error(probs, labels, bins=15)),
        "nll": float(negative_log_likelihood(probs, labels)),
    }


def evaluate(
    model: nn.Module, dataset: Any, *, batch_size: int = 512, device: str | torch.device = "cpu",
    ground_truth_init: bool = False,
) -> dict[str, Any]:
    """Test metrics of a classifier on a dataset of ``(image, label)`` items.

    ``ground_truth_init``: call the model as ``TrainConfig.ground_truth_init`` says.

    Returns:
        ``{"n", "loss", "error", "per_class_error", "ece", "nll"}``: mean
        cross-entropy, error rate in [0, 1], a list with the error rate of each class
        (``None`` for a class absent from the data), and the 15-bin expected calibration
        error and negative log-likelihood when :mod:`torchstn.engine.metrics` is installed.
    """
    logits, labels = predict(model, dataset, batch_size=batch_size, device=device, ground_truth_init=ground_truth_init)
    n = int(labels.numel())
    if n == 0:
        raise ValueError("evaluate needs a non-empty dataset")
    num_classes = logits.shape[1]
    wrong = logits.argmax(1) != labels
    counts = torch.bincount(labels, minlength=num_classes)
    wrong_per_class = torch.bincount(labels[wrong], minlength=num_classes)
    per_class = [None if c == 0 else float(w / c) for w, c in zip(wrong_per_class.tolist(), counts.tolist())]
    result: dict[str, Any] = {
        "n": n,
        "loss": float(F.cross_entropy(logits, labels)),
        "error": float(wrong.float().mean()),
        "per_class_error": per_class,
    }
    result.update(_calibration(logits.softmax(1), labels))
    return result
