"""Figures of what a spatial transformer learned: inputs beside outputs, warps, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchstn.engine._data import fetch_inputs
from torchstn.engine.metrics import calibration_bins, expected_calibration_error
from torchstn.nn import ProbabilisticSpatialTransformer, SpatialTransformer
from torchstn.transforms import ThinPlateSpline

__all__ = ["plot_run", "sampled_params", "warp_outline"]

_COLORS = ("#e8412c", "#2c8be8", "#33b04a", "#e8a92c")


def warp_outline(st: SpatialTransformer, theta: torch.Tensor, input_size: Sequence[int], lines: int = 5) -> list[torch.Tensor]:
    """Polylines, in input pixel coordinates, of where the transformer reads its output from.

    The first polyline is the border of the output frame mapped into the input (a
    quadrilateral for matrix transforms); for a thin-plate spline ``lines`` interior
    grid lines in each direction follow, to show the bending.

    Args:
        st: the transformer (its transform, output size and ``align_corners``).
        theta: ``(P,)`` parameters of one example.
        input_size: ``(H, W)`` of the input.
        lines: interior grid lines per direction (thin-plate spline only).

    Returns:
        a list of ``(N, 2)`` tensors of ``(column, row)`` pixel coordinates, ready for
        ``plt.plot(*line.T)`` on ``imshow`` of the input.

    Example:
        >>> st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)))
        >>> border = warp_outline(st, stn.Affine().identity(), (28, 28))[0]
        >>> border.min().item(), border.max().item()  # the identity reads the whole image
        (-0.5, 27.5)
    """
    t = torch.linspace(-1.0, 1.0, 41, dtype=torch.float64)
    one = torch.ones_like(t)
    border = torch.cat([torch.stack([t, -one], 1), torch.stack([one, t], 1), torch.stack([t.flip(0), one], 1),
                        torch.stack([-one, t.flip(0)], 1)])
    curves = [border]
    if isinstance(st.transform, ThinPlateSpline):
        for v in torch.linspace(-1.0, 1.0, lines + 2, dtype=torch.float64)[1:-1]:
            curves += [torch.stack([t, v * one], 1), torch.stack([v * one, t], 1)]
    h, w = input_size
    out = []
    for curve in curves:
        mapped = st.transform.transform_points(theta.detach().double().reshape(1, -1).cpu(), curve[None])[0]
        if st.align_corners:  # -1 and 1 are the extreme pixel centres
            cols, rows = (mapped[:, 0] + 1) * (w - 1) / 2, (mapped[:, 1] + 1) * (h - 1) / 2
        else:  # -1 and 1 are the outer edges of the extreme pixels
            cols, rows = ((mapped[:, 0] + 1) * w - 1) / 2, ((mapped[:, 1] + 1) * h - 1) / 2
        out.append(torch.stack([cols, rows], 1))
    return out


@torch.no_grad()
def sampled_params(st: ProbabilisticSpatialTransformer, x: torch.Tensor, samples: int = 8) -> torch.Tensor:
    """``samples`` θ drawn by a P-STN for each input: ``(samples, B, P)``.

    The transformer's own sampling (its training distribution, whatever ``test_samples``
    says), with the module's mode and sample counts restored afterwards.

    Example:
        >>> pst = stn.ProbabilisticSpatialTransformer(stn.Similarity(), stn.conv_localization(1, (28, 28)))
        >>> sampled_params(pst, torch.rand(2, 1, 28, 28), samples=5).shape
        torch.Size([5, 2, 4])
    """
    was_training, saved = st.training, st.samples
    st.train()
    st.samples = samples
    try:
        _, params = st(x, return_params=True)
    finally:
        st.samples = saved
        st.train(was_training)
    return params.reshape(samples, x.shape[0], -1)


@torch.no_grad()
def _probabilities(
    model: nn.Module, dataset: Any, n: int, device: str | torch.device, ground_truth_init: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(n, K)`` and labels of the first ``n`` items (a P-STN model's
    log-probabilities and a classifier's logits both go through ``softmax``)."""
    probs, labels = [], []
    for first in range(0, n, 500):
        x, y, inputs = fetch_inputs(dataset, torch.arange(first, min(first + 500, n)), ground_truth_init, device)
        probs.append(model(x, **inputs).float().softmax(1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def _plot_reliability(ax: Any, probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal, counts shaded."""
    confidence, accuracy, count = (t.double().numpy() for t in calibration_bins(probs, labels, bins=bins))
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64).numpy()
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
    filled = count > 0
    ax.bar(centres[filled], accuracy[filled], width=width * 0.95, color="#2c8be8", edgecolor="#1b5c9e",
           label="accuracy")
    ax.bar(centres[filled], (confidence - accuracy)[filled], bottom=accuracy[filled], width=width * 0.95,
           color="#e8412c", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1)
    share = ax.twinx()
    share.step(edges[:-1], count / max(count.sum(), 1), where="post", color="black", lw=0.8, alpha=0.6)
    share.set_ylim(0, 1)
    share.set_yticks([])
    ece = float(expected_calibration_error(probs, labels, bins=bins))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (line: share of images)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability ({len(labels)} images), ECE {ece:.3f}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _image(x: torch.Tensor) -> tuple[Any, str | None]:
    """A ``(C, H, W)`` tensor as something ``imshow`` draws: RGB for 3 channels, else grey."""
    x = x.detach().float().cpu()
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).clamp(0, 1).numpy(), None
    return x.mean(0).numpy(), "gray"


def plot_run(
    model: nn.Module,
    dataset: Any,
    out: str | Path,
    *,
    history: Sequence[dict[str, Any]] = (),
    num: int = 8,
    start: int = 0,
    title: str | None = None,
    device: str | torch.device = "cpu",
    calibration_images: int = 2000,
    warp_samples: int = 8,
    ground_truth_init: bool = False,
) -> Path:
    """Write a PNG: inputs with the predicted warp drawn on them, the transformers' outputs, and curves.

    Row 1 shows ``num`` test inputs with, for each transformer, the border of its
    output frame mapped into the input (a quadrilateral, or a bent grid for a
    thin-plate spline) and the predicted / true label. Row 2 (one per transformer)
    shows what the transformer made of each input. The last row shows loss and error
    per epoch (train and test) and the θ diagnostics (distance from the identity,
    fraction of sampling points outside the input) when ``history`` is given, and a
    reliability diagram (accuracy per confidence bin, 15 bins, with the ECE) of the first
    ``calibration_images`` items. For a P-STN a row after the inputs draws
    ``warp_samples`` sampled warps on each input (thin) around the mean warp (thick).

    Args:
        model: a registry model (``.transformers``, ``.transform_input``).
        dataset: items ``(image (C, H, W), label)``.
        out: PNG path (parent directories are created).
        history: the per-epoch records of ``metrics.jsonl``.
        num: examples shown.
        start: index of the first example.
        title: figure title.
        device: where the model runs.
        calibration_images: items of ``dataset`` (from the first) in the reliability diagram.
        warp_samples: θ samples drawn per input for a P-STN.
        ground_truth_init: run the model as ``TrainConfig.ground_truth_init`` says: row 1
            then shows the undistorted digits with the total warp (the ground-truth
            perturbation composed with the predicted updates) drawn on them.

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transformers = list(getattr(model, "transformers", ()))
    num = max(1, min(num, len(dataset) - start))
    x_dev, y, inputs = fetch_inputs(dataset, torch.arange(start, start + num), ground_truth_init, device)
    x, y = x_dev.cpu(), y.cpu()
    model.eval()
    with torch.no_grad():
        pred = model(x_dev, **inputs).argmax(1).cpu()
        thetas = [st.predict_params(x_dev, **inputs).cpu() for st in transformers]
        outputs = [st.transform_input(x_dev, th.to(device)).cpu() for st, th in zip(transformers, thetas)]
        samples = [(k, sampled_params(st, x_dev, warp_samples).cpu()) for k, st in enumerate(transformers)
                   if isinstance(st, ProbabilisticSpatialTransformer)]
    probs, labels = _probabilities(model, dataset, min(calibration_images, len(dataset)), device, ground_truth_init)

    sample_rows = len(samples)
    image_rows = 1 + sample_rows + len(transformers)
    curve_panels = (3 if transformers and history else 2 if history else 0) + 1  # + the reliability diagram
    height_ratios = [1.0] * image_rows + [2.2]
    fig = plt.figure(figsize=(max(1.45 * num, 3.2 * curve_panels), 1.6 * image_rows + 3.2 + 0.6))
    grid = fig.add_gridspec(len(height_ratios), 1, height_ratios=height_ratios, hspace=0.35)
    rows = grid[:image_rows].subgridspec(image_rows, num, wspace=0.08, hspace=0.25)
    outlines = [[warp_outline(st, th[j], x.shape[2:]) for st, th in zip(transformers, thetas)] for j in range(num)]
    # one view for the whole row, grown to show warps that read outside the input (grey)
    low, high = torch.tensor([-0.5, -0.5]), torch.tensor([x.shape[3] - 0.5, x.shape[2] - 0.5])
    sample_outlines = [[[warp_outline(transformers[k], th[s, j], x.shape[2:])[0] for s in range(th.shape[0])]
                        for k, th in samples] for j in range(num)]
    every_line = [line for per_example in outlines for per_st in per_example for line in per_st]
    every_line += [line for per_example in sample_outlines for per_st in per_example for line in per_st]
    for line in every_line:
        finite = line[torch.isfinite(line).all(1)].float()
        if len(finite):
            low, high = torch.minimum(low, finite.min(0).values), torch.maximum(high, finite.max(0).values)
    size = torch.tensor([x.shape[3], x.shape[2]], dtype=torch.float32)
    low, high = torch.maximum(low, -size), torch.minimum(high, 2 * size)  # a diverged warp stays legible
    margin = 0.04 * float((high - low).max())
    for j in range(num):
        ax = fig.add_subplot(rows[0, j])
        img, cmap = _image(x[j])
        ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        for k, per_st in enumerate(outlines[j]):
            for n_line, line in enumerate(per_st):
                ax.plot(line[:, 0], line[:, 1], color=_COLORS[k % len(_COLORS)], lw=1.4 if n_line == 0 else 0.6)
        ax.set_xlim(float(low[0]) - margin, float(high[0]) + margin)
        ax.set_ylim(float(high[1]) + margin, float(low[1]) - margin)
        ax.set_facecolor("#d8d8d8")
        ok = int(pred[j]) == int(y[j])
        ax.set_title(f"{int(pred[j])}" if ok else f"{int(pred[j])} (true {int(y[j])})", fontsize=9,
                     color="black" if ok else "#c0392b")
        ax.set_xticks([])
        ax.set_yticks([])
        if j == 0:
            ax.set_ylabel("original + init" if ground_truth_init else "input", fontsize=9)
        for r, (k, _) in enumerate(samples):
            ax = fig.add_subplot(rows[1 + r, j])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            for line in sample_outlines[j][r]:
                ax.plot(line[:, 0], line[:, 1], color=_COLORS[k % len(_COLORS)], lw=0.6, alpha=0.7)
            mean_border = outlines[j][k][0]
            ax.plot(mean_border[:, 0], mean_border[:, 1], color="black", lw=1.2, ls="--")
            ax.set_xlim(float(low[0]) - margin, float(high[0]) + margin)
            ax.set_ylim(float(high[1]) + margin, float(low[1]) - margin)
            ax.set_facecolor("#d8d8d8")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{warp_samples} sampled θ", fontsize=9)
        for k, warped in enumerate(outputs):
            ax = fig.add_subplot(rows[1 + sample_rows + k, j])
            img, cmap = _image(warped[j])
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_color(_COLORS[k % len(_COLORS)])
                side.set_linewidth(1.5)
            if j == 0:
                ax.set_ylabel(f"ST {k + 1} output" if len(outputs) > 1 else "ST output", fontsize=9)
    cells = grid[image_rows].subgridspec(1, curve_panels, wspace=0.3)
    if history:
        _plot_curves(fig, cells, history, bool(transformers))
    _plot_reliability(fig.add_subplot(cells[0, curve_panels - 1]), probs, labels)
    fig.suptitle(title or "", fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _plot_curves(fig: Any, cells: Any, history: Sequence[dict[str, Any]], with_theta: bool) -> None:
    """Loss and error against the step: the running train curve, test at the end of each epoch."""
    steps = [h.get("step", h["epoch"]) for h in history]
    curve = [point for h in history for point in h.get("train_curve", [])]
    for col, (key, title, scale) in enumerate((("loss", "cross-entropy loss", 1.0), ("error", "error (%)", 100.0))):
        ax = fig.add_subplot(cells[0, col])
        if curve:
            ax.plot([p[0] for p in curve], [scale * p[1 + col] for p in curve], "-", lw=1, label="train")
        else:
            ax.plot(steps, [scale * h[f"train_{key}"] for h in history], "o-", ms=3, label="train")
        ax.plot(steps, [scale * h[f"test_{key}"] for h in history], "o-", ms=4, label="test")
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    if with_theta and all(h.get("theta") for h in history):
        ax = fig.add_subplot(cells[0, 2])
        for k in range(len(history[0]["theta"])):
            color = _COLORS[k % len(_COLORS)]
            ax.plot(steps, [h["theta"][k]["distance"] for h in history], "o-", color=color, ms=3,
                    label=f"ST {k + 1}: |θ - identity|")
            ax.plot(steps, [h["theta"][k]["outside"] for h in history], "s--", color=color, ms=3, alpha=0.7,
                    label=f"ST {k + 1}: samples outside")
        ax.set_xlabel("step")
        ax.set_title("transformer diagnostics (test)", fontsize=10)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
