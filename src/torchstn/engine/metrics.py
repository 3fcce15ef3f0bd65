"""Calibration metrics: expected calibration error and negative log-likelihood.

The P-STN paper (Schwöbel et al., arXiv 2004.03637, section 5) reports both beside the
error: a model that marginalises over transformations should be better calibrated, not
only more accurate. Both take predicted class probabilities, not logits.
"""

from __future__ import annotations

import torch

from torchstn._validation import HALF_DTYPES, check_floating, check_int, check_same_batch, check_tensor

__all__ = ["calibration_bins", "expected_calibration_error", "misclassified", "negative_log_likelihood"]


def _check_scores_labels(name: str, scores: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores`` ``(N, K)`` floating (named ``name``) and ``labels`` ``(N,)`` class indices in ``[0, K)``."""
    scores = check_floating(name, check_tensor(name, scores, ndim=2))
    labels = check_tensor("labels", labels, ndim=1)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    check_same_batch(name, scores, "labels", labels)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(
            f"labels must be class indices in [0, {scores.shape[1] - 1}] for {name} of shape {tuple(scores.shape)}, "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return scores, labels.long()


def _check_probs_labels(probs: object, labels: object) -> tuple[torch.Tensor, torch.Tensor]:
    probs, labels = _check_scores_labels("probs", probs, labels)
    _check_distributions(probs)
    return probs, labels


def _check_distributions(probs: torch.Tensor) -> None:
    """Refuse logits and log-probabilities (a P-STN returns the latter): rows of numbers in [0, 1]
    summing to 1, to the dtype's rounding (logits gave an "ECE" of 3.5 and a negative NLL).
    Rows that are not finite (a diverged model's) are left to the metrics, which give NaN."""
    finite = probs.isfinite().all(1)
    if not bool(finite.any()):
        return
    rows = probs[finite].double()
    tol = 2e-2 if probs.dtype in HALF_DTYPES else 1e-3
    low, high, total = float(rows.min()), float(rows.max()), rows.sum(1)
    worst = float((total - 1).abs().max())
    if low < -tol or high > 1 + tol or worst > tol:
        raise ValueError(
            f"probs must be probabilities (each row in [0, 1], summing to 1), got values in [{low:.4g}, {high:.4g}] "
            f"with row sums off by up to {worst:.3g}: logits or log-probabilities? pass softmax(logits) or "
            "log_probs.exp() (of a P-STN in evaluation mode, model.eval(): in training it returns the mean of its "
            "samples' log-probabilities, not a distribution)"
        )


def calibration_bins(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-bin confidence, accuracy and count: the data of a reliability diagram.

    The confidence of a prediction is its top probability :math:`\hat p_i = \max_k p_{ik}`;
    predictions fall into ``bins`` equal-width bins :math:`(\frac{m-1}{M}, \frac{m}{M}]`
    (a confidence of exactly 0 goes to the first bin), as in Guo et al., *On Calibration
    of Modern Neural Networks* (2017); the edges :math:`\frac{m}{M}` as ``probs``' dtype holds
    them (so a float32 confidence ``0.6`` is in the bin ending at 0.6; their code's
    ``torch.linspace`` edges are within one unit in the last place of these).

    Args:
        probs: ``(N, K)`` predicted class probabilities.
        labels: ``(N,)`` integer class indices.
        bins: number of bins ``M``.

    Returns:
        ``(confidence, accuracy, count)``, each ``(M,)``: the mean confidence and the
        accuracy of the predictions in each bin (0 for an empty bin) and their number, in
        the dtype of ``probs``, float32 for float16 and bfloat16 ``probs`` (summed in float64).

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> conf, acc, count = calibration_bins(p, torch.tensor([0, 1, 1]), bins=2)
        >>> conf, acc, count
        (tensor([0.0000, 0.7333]), tensor([0.0000, 0.6667]), tensor([0., 3.]))
    """
    probs, labels = _check_probs_labels(probs, labels)
    check_int("bins", bins, minimum=1)
    confidence = probs.max(dim=1).values
    # compared with the edges as the input's dtype holds them, not through confidence * bins rounded in
    # that dtype, which fell onto an edge (bfloat16 0.90234375 * 10 = 9.0: bin (0.8, 0.9])
    edges = (torch.arange(1, bins + 1, dtype=torch.float64, device=probs.device) / bins).to(probs.dtype)
    index = torch.searchsorted(edges, confidence.contiguous()).clamp(0, bins - 1)
    # summed in float64: a bfloat16 count stopped at 256 (256 + 1 rounds to 256), a float16 one at 2048
    confidence = confidence.double()
    count = confidence.new_zeros(bins).index_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros_like(count).index_add_(0, index, confidence)
    acc_sum = torch.zeros_like(count).index_add_(0, index, (~_misclassified(probs, labels)).double())
    denom = count.clamp_min(1)
    dtype = torch.promote_types(probs.dtype, torch.float32)
    return (conf_sum / denom).to(dtype), (acc_sum / denom).to(dtype), count.to(dtype)


def misclassified(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: whether each prediction misses its label, the top score's class not the
    label, and a row with a NaN score always (``argmax`` takes NaN for the largest value, which
    counted a diverged model's NaN rows as class 0 and so right for that class). The error rate
    :func:`~torchstn.engine.evaluate` reports and the training error are its mean.

    Args:
        logits: ``(N, K)`` scores (logits, probabilities or log-probabilities).
        labels: ``(N,)`` integer class indices.

    Example:
        >>> misclassified(torch.tensor([[2.0, 1.0], [0.0, 3.0], [float("nan"), 0.0]]), torch.tensor([0, 0, 0]))
        tensor([False,  True,  True])
    """
    return _misclassified(*_check_scores_labels("logits", logits, labels))


def _misclassified(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`misclassified` without the checks (the training step's, once per batch)."""
    return (logits.argmax(1) != labels) | logits.isnan().any(1)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> torch.Tensor:
    r"""Expected calibration error (ECE) with ``bins`` equal-width confidence bins.

    .. math:: \mathrm{ECE} = \sum_{m=1}^{M} \frac{|B_m|}{N}\,
              \bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|

    Bins as in :func:`calibration_bins`. 0 for a perfectly calibrated model, at most 1.

    Args:
        probs: ``(N, K)`` predicted class probabilities.
        labels: ``(N,)`` integer class indices.
        bins: number of bins ``M`` (15, as the P-STN paper and Guo et al. use).

    Returns:
        A 0-dim tensor (``nan`` for ``N = 0``).

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
        >>> round(float(expected_calibration_error(p, torch.tensor([0, 1, 1]), bins=2)), 4)
        0.0667
    """
    confidence, accuracy, count = calibration_bins(probs, labels, bins)
    return (count * (accuracy - confidence).abs()).sum() / count.sum()


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Mean negative log-likelihood of the true classes: :math:`-\frac1N \sum_i \log p_{i, y_i}`.

    Probabilities are clamped below at the dtype's smallest positive normal number, so a
    confidently wrong prediction costs a large but finite amount.

    Args:
        probs: ``(N, K)`` predicted class probabilities.
        labels: ``(N,)`` integer class indices.

    Returns:
        A 0-dim tensor (``nan`` for ``N = 0``).

    Example:
        >>> p = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> negative_log_likelihood(p, torch.tensor([0, 1]))  # (log 2 + log 4/3) / 2
        tensor(0.4904)
    """
    probs, labels = _check_probs_labels(probs, labels)
    picked = probs.gather(1, labels[:, None]).squeeze(1)
    return -picked.clamp_min(torch.finfo(probs.dtype).tiny).log().mean()
