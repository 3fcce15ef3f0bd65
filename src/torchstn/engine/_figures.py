"""Figures of what a spatial transformer learned: inputs beside outputs, warps, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchstn._validation import figure_file
from torchstn.engine._data import fetch_inputs
from torchstn.engine._diagnostics import theta_heads, transformers_of
from torchstn.engine._evaluate import as_evaluated, precision_context, predict
from torchstn.engine.metrics import calibration_bins, expected_calibration_error
from torchstn.nn import ProbabilisticSpatialTransformer, SpatialTransformer
from torchstn.transforms import ThinPlateSpline

__all__ = ["plot_run", "sampled_params", "warp_outline"]

_COLORS = ("#e8412c", "#2c8be8", "#33b04a", "#e8a92c")
_OUTSIDE = "#d8d8d8"  # the background of an input's view: where the input has no pixels
_SHARE = "#8c8c8c"  # the images-per-bin histogram under the reliability diagram


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
    says), drawn in eval mode (a BatchNorm in its localisation net keeps its running
    statistics), with the modules' modes and sample counts restored afterwards.

    Example:
        >>> pst = stn.ProbabilisticSpatialTransformer(stn.Similarity(), stn.conv_localization(1, (28, 28)))
        >>> sampled_params(pst, torch.rand(2, 1, 28, 28), samples=5).shape
        torch.Size([5, 2, 4])
    """
    saved = st.test_samples
    st.test_samples = samples  # (eval mode draws test_samples θ as training mode draws samples)
    try:
        with as_evaluated([st], x.device, fork_rng=False):
            _, params = st(x, return_params=True)
    finally:
        st.test_samples = saved
    return params.reshape(samples, x.shape[0], -1)


def _probabilities(
    model: nn.Module, dataset: Any, n: int, device: str | torch.device, options: dict[str, Any], batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(n, K)`` and labels of the first ``n`` items (a P-STN model's
    log-probabilities and a classifier's logits both go through ``softmax``), the model
    called as ``options`` say (:meth:`TrainConfig.call_options`), as :func:`predict` calls it."""
    with as_evaluated([model], torch.device(device)):  # (a figure drawn mid-training leaves the run's draws)
        logits, labels = predict(model, dataset, batch_size=batch_size, device=device, limit=n, **options)
    return logits.softmax(1).cpu(), labels.cpu()


def _plot_reliability(fig: Any, cell: Any, probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> None:
    """Reliability diagram of the first ``len(labels)`` images, above the number of images per bin.

    Per confidence bin: the accuracy (bar), the bin's mean confidence (tick) and the gap
    between them (hatched), against the diagonal of perfect calibration. Below, on a log
    axis, how many images each bin holds, so that a bar of a one-image bin is read as such.
    """
    import numpy as np
    from matplotlib.patches import Patch
    from matplotlib.ticker import LogLocator

    confidence, accuracy, count = (t.double().numpy() for t in calibration_bins(probs, labels, bins=bins))
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64).numpy()
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
    filled = count > 0
    top, bottom = cell.subgridspec(2, 1, height_ratios=[3.2, 1], hspace=0.08)
    ax = fig.add_subplot(top)
    ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="calibrated")
    ax.bar(centres[filled], accuracy[filled], width=width * 0.95, color="#2c8be8", label="accuracy")
    low = np.minimum(confidence, accuracy)[filled]
    ax.bar(centres[filled], np.abs(confidence - accuracy)[filled], bottom=low, width=width * 0.95, color="none",
           edgecolor="#e8412c", hatch="////", lw=0.8)
    ax.plot(centres[filled], confidence[filled], "_", color="black", ms=9, mew=1.6, label="confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.tick_params(labelbottom=False)
    ece = float(expected_calibration_error(probs, labels, bins=bins))
    ax.set_title(f"reliability, first {len(labels):,} images: ECE {ece:.3f}", fontsize=9, pad=24)
    handles, names = ax.get_legend_handles_labels()
    handles += [Patch(facecolor="none", edgecolor="#e8412c", hatch="////"), Patch(color=_SHARE)]
    names += ["gap (mean: ECE)", "images (below)"]
    # the key sits above the panel, under its title: inside, it hid bars that reach 1.0
    ax.legend(handles, names, fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False,
              handlelength=1.4, columnspacing=0.8, borderaxespad=0.2)
    share = fig.add_subplot(bottom, sharex=ax)
    share.bar(centres[filled], count[filled], width=width * 0.95, color=_SHARE)
    share.set_yscale("log")
    share.set_ylim(0.5, max(float(count.max()), 1.0) * 3)
    _plain_ticks(share.yaxis, LogLocator(base=10, numticks=4))
    share.set_xlabel("confidence (top class probability)")
    share.set_ylabel("images", fontsize=8)
    share.tick_params(labelsize=7)


def _image(x: torch.Tensor) -> tuple[Any, str | None]:
    """A ``(C, H, W)`` tensor as something ``imshow`` draws: RGB for 3 channels; 2 channels
    (MNIST addition's two digits) in colours, the first magenta and the second green, so that
    each transformer's output shows which digit it holds; else grey (the channels' mean)."""
    x = x.detach().float().cpu()
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).clamp(0, 1).numpy(), None
    if x.shape[0] == 2:
        return torch.stack([x[0], x[1], x[0]], dim=-1).clamp(0, 1).numpy(), None
    return x.mean(0).numpy(), "gray"


def plot_run(
    model: nn.Module,
    dataset: Any,
    out: str | Path,
    *,
    history: Sequence[dict[str, Any]] = (),
    num: int = 8,
    start: int = 0,
    examples: Sequence[int] | None = None,
    predicted: Sequence[int] | None = None,
    title: str | None = None,
    device: str | torch.device = "cpu",
    calibration_images: int = 2000,
    warp_samples: int = 8,
    ground_truth_init: bool = False,
    label_smoothing: float = 0.0,
    precision: str = "fp32",
    channels_last: bool = False,
    eval_batch_size: int = 512,
) -> Path:
    """Write a PNG: inputs with the predicted warp drawn on them, the transformers' outputs, and curves.

    Row 1 shows ``num`` test inputs with, for each transformer, the border of its
    output frame mapped into the input (a quadrilateral, or a bent grid for a
    thin-plate spline) and the predicted / true label, on grey where the view extends
    beyond the input. Row 2 (one per transformer) shows what the transformer made of
    each input. A key above the images says what the grey, the lines and the labels
    mean. When ``history`` is given, the last row shows loss and error per step (the
    running train curve, test at the end of each epoch) on log axes, so the end of
    training reads as well as its start, and the θ diagnostics per epoch: distance
    from the identity (left axis) and share of sampling points outside the input
    (right axis). It ends with a reliability diagram (accuracy, mean confidence and
    their gap per confidence bin, 15 bins, with the ECE) of the first
    ``calibration_images`` items, above the number of images in each bin (log axis).
    The diagram's ECE is of those images only: a caller quoting the ECE of a whole
    test set in ``title`` should say so. For a P-STN a row after the inputs draws
    ``warp_samples`` sampled warps on each input (thin) around the mean warp (dashed).

    Args:
        model: a registry model (``.transformers``, ``.transform_input``).
        dataset: items ``(image (C, H, W), label)``.
        out: PNG path (parent directories are created).
        history: the per-epoch records of ``metrics.jsonl``.
        num: examples shown.
        start: index of the first example.
        examples: indices of the examples shown instead (``num`` and ``start`` then unused),
            e.g. the test images a model gets wrong.
        predicted: the predicted labels of ``examples`` to show, as the caller's selection found
            them: a P-STN's prediction is a draw, and another call on fewer images may differ (an
            "errors" figure titled some of its images as right).
        title: figure title.
        device: where the model runs.
        calibration_images: items of ``dataset`` (from the first) in the reliability diagram.
        warp_samples: θ samples drawn per input for a P-STN.
        ground_truth_init: run the model as ``TrainConfig.ground_truth_init`` says: row 1
            then shows the undistorted digits with the total warp (the ground-truth
            perturbation composed with the predicted updates) drawn on them.
        label_smoothing: the run's ``TrainConfig.label_smoothing``: the loss panel's title
            then says that the train curve is the smoothed loss.
        precision, channels_last: call the model as the run's ``TrainConfig`` fields of
            those names say (``**config.call_options()`` passes these and
            ``ground_truth_init``), as its evaluation did.
        eval_batch_size: the batches of the reliability diagram, the run's
            ``TrainConfig.eval_batch_size``: a sampling model's (P-STN's) θ depend on them. Its
            draws come first, before the examples': inside :func:`~torchstn.engine.evaluation_draws` of the
            run's checkpoint, on the run's test images, the diagram is its recorded evaluation
            (a P-STN's panel read ECE 0.067 where the title's record said 0.066).

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if examples is None:
        examples = range(start, start + max(1, min(num, len(dataset) - start)))
    num = len(examples)
    options = {"ground_truth_init": ground_truth_init, "precision": precision, "channels_last": channels_last}
    # (first: the generators as the caller handed them over; _probabilities forks them, the examples draw the same)
    probs, labels = _probabilities(model, dataset, min(calibration_images, len(dataset)), device, options,
                                   eval_batch_size)
    shown = _run_examples(model, dataset, torch.as_tensor(examples), device, warp_samples, options)
    if predicted is not None:
        if len(predicted) != num:
            raise ValueError(f"predicted gives {len(predicted)} labels for the {num} examples shown")
        shown = replace(shown, pred=torch.as_tensor(predicted, dtype=torch.int64))
    image_rows = 1 + len(shown.samples) + len(shown.transformers)
    curve_panels = (3 if shown.transformers and history else 2 if history else 0) + 1  # + the reliability diagram
    width = max(1.45 * num, 3.4 * curve_panels)
    key = _key(shown, warp_samples)
    columns = _key_columns(width, [entry.get_label() for entry in key])
    key_rows = -(-len(key) // columns)
    height = 1.6 * image_rows + 3.6 + 0.6 + 0.25 * key_rows  # images, curves, title, key
    fig = plt.figure(figsize=(width, height))
    top = 1 - (0.75 + 0.25 * key_rows) / height  # below the title and the key, above the inputs' labels
    grid = fig.add_gridspec(image_rows + 1, 1, height_ratios=[1.0] * image_rows + [2.6], hspace=0.35, top=top)
    rows = grid[:image_rows].subgridspec(image_rows, num, wspace=0.08, hspace=0.25)
    _draw_examples(fig, rows, shown, warp_samples, ground_truth_init)
    fig.legend(handles=key, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.4 / height), ncol=columns,
               fontsize=8, frameon=False, handlelength=2.2, columnspacing=1.6)
    diagnostics = bool(shown.transformers and history)  # (its right axis: labels on both sides)
    cells = grid[image_rows].subgridspec(1, curve_panels, wspace=0.85 if diagnostics else 0.6)
    if history:
        _plot_curves(fig, cells, history, bool(shown.transformers), label_smoothing)
    _plot_reliability(fig, cells[0, curve_panels - 1], probs, labels)
    fig.suptitle(title or "", fontsize=11, y=1 - 0.12 / height, va="top")
    out = figure_file(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _key_columns(width: float, labels: list[str]) -> int:
    """Columns of the key above the images: all in one row where they fit in ``width`` inches
    (about 0.065 inch a character at 8 points, 0.6 inch for a handle and the gap), else fewer."""
    for columns in range(len(labels), 1, -1):
        rows = -(-len(labels) // columns)
        widest = [max((len(label) for label in labels[c * rows:(c + 1) * rows]), default=0) for c in range(columns)]
        if 0.065 * sum(widest) + 0.6 * columns <= width:
            return columns
    return 1


def _key(shown: _Examples, warp_samples: int) -> list[Any]:
    """The legend of the image rows: what the grey, the lines and the labels above the inputs mean."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    key: list[Any] = [Patch(facecolor=_OUTSIDE, edgecolor="black", lw=0.5, label="grey: outside the input")]
    for k, st in enumerate(shown.transformers):
        name = f"ST {k + 1}" if len(shown.transformers) > 1 else "ST"
        grid = " (and its bent grid)" if isinstance(st.transform, ThinPlateSpline) else ""
        label = f"{name}: border of what it reads{grid}"
        key.append(Line2D([], [], color=_COLORS[k % len(_COLORS)], lw=1.4, label=label))
    if shown.samples:
        color = _COLORS[shown.samples[0][0] % len(_COLORS)]
        key.append(Line2D([], [], color=color, lw=0.6, label=f"borders for {warp_samples} sampled θ"))
        key.append(Line2D([], [], color="black", lw=1.2, ls="--", label="border for the mean θ"))
    if shown.x.shape[1] == 2:
        key.append(Line2D([], [], ls="none", label="channel 1 magenta, channel 2 green"))
    key.append(Line2D([], [], ls="none", label="above: predicted class (true one in red if wrong)"))
    return key


@dataclass
class _Examples:
    """The examples a figure shows and what the model and each transformer made of them (on the CPU)."""

    transformers: list[SpatialTransformer]
    x: torch.Tensor  # (num, C, H, W): the inputs, or the undistorted digits with ground_truth_init
    y: torch.Tensor  # (num,) true labels
    pred: torch.Tensor  # (num,) predicted labels
    thetas: list[torch.Tensor]  # per transformer, (num, P)
    outputs: list[torch.Tensor]  # per transformer, its warped inputs
    samples: list[tuple[int, torch.Tensor]]  # per P-STN: (its transformer index, (samples, num, P))

    def outlines(self) -> tuple[list[list[list[torch.Tensor]]], list[list[list[torch.Tensor]]]]:
        """Per example: each transformer's :func:`warp_outline`, and each P-STN's sampled borders."""
        size, num = self.x.shape[2:], len(self.x)
        outlines = [[warp_outline(st, th[j], size) for st, th in zip(self.transformers, self.thetas)] for j in range(num)]
        sampled = [[[warp_outline(self.transformers[k], th[s, j], size)[0] for s in range(th.shape[0])]
                    for k, th in self.samples] for j in range(num)]
        return outlines, sampled


@torch.no_grad()
def _run_examples(
    model: nn.Module, dataset: Any, index: torch.Tensor, device: str | torch.device, warp_samples: int,
    options: dict[str, Any],
) -> _Examples:
    """Run the model and its transformers on the items at ``index`` (called as ``options`` say)."""
    transformers = theta_heads(transformers_of(model))
    x_dev, y, inputs = fetch_inputs(dataset, index, options["ground_truth_init"], device)
    with as_evaluated([model], x_dev.device):  # (a figure drawn mid-training leaves the run as it was)
        with precision_context(options["precision"], device):  # (the prediction drawn; warps in float32 anyway)
            pred = model(x_dev, **inputs).argmax(1).cpu()
        thetas = [st.predict_params(x_dev, **inputs).cpu() for st in transformers]
        outputs = [st.transform_input(x_dev, th.to(device)).cpu() for st, th in zip(transformers, thetas)]
        samples = [(k, sampled_params(st, x_dev, warp_samples).cpu()) for k, st in enumerate(transformers)
                   if isinstance(st, ProbabilisticSpatialTransformer)]
    return _Examples(transformers, x_dev.cpu(), y.cpu(), pred, thetas, outputs, samples)


def _view(x: torch.Tensor, lines: list[torch.Tensor]) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(xlim, ylim)`` in pixels (y downwards) showing the input and every line of a warp, with a margin.

    One view serves a whole row, grown to show warps that read outside the input (drawn
    grey), but never more than the input's size beyond it, so a diverged warp stays legible.
    """
    low, high = torch.tensor([-0.5, -0.5]), torch.tensor([x.shape[3] - 0.5, x.shape[2] - 0.5])
    for line in lines:
        finite = line[torch.isfinite(line).all(1)].float()
        if len(finite):
            low, high = torch.minimum(low, finite.min(0).values), torch.maximum(high, finite.max(0).values)
    size = torch.tensor([x.shape[3], x.shape[2]], dtype=torch.float32)
    low, high = torch.maximum(low, -size), torch.minimum(high, 2 * size)
    margin = 0.04 * float((high - low).max())
    return (float(low[0]) - margin, float(high[0]) + margin), (float(high[1]) + margin, float(low[1]) - margin)


def _draw_examples(fig: Any, rows: Any, shown: _Examples, warp_samples: int, ground_truth_init: bool) -> None:
    """The image rows: each input with the warps drawn on it, each P-STN's sampled warps, each transformer's output."""
    outlines, sampled = shown.outlines()
    every_line = [line for per_example in outlines + sampled for per_st in per_example for line in per_st]
    view = _view(shown.x, every_line)
    for j in range(len(shown.x)):
        img = _image(shown.x[j])
        ax = fig.add_subplot(rows[0, j])
        _draw_input(ax, img, outlines[j], view, int(shown.pred[j]), int(shown.y[j]))
        if j == 0:
            ax.set_ylabel("original + init" if ground_truth_init else "input", fontsize=9)
        for r, (k, _) in enumerate(shown.samples):
            ax = fig.add_subplot(rows[1 + r, j])
            _draw_sampled(ax, img, sampled[j][r], outlines[j][k][0], _COLORS[k % len(_COLORS)], view)
            if j == 0:
                ax.set_ylabel(f"{warp_samples} sampled θ", fontsize=9)
        for k, warped in enumerate(shown.outputs):
            ax = fig.add_subplot(rows[1 + len(shown.samples) + k, j])
            _draw_output(ax, _image(warped[j]), _COLORS[k % len(_COLORS)])
            if j == 0:
                ax.set_ylabel(f"ST {k + 1} output" if len(shown.outputs) > 1 else "ST output", fontsize=9)


def _draw_input(
    ax: Any, img: tuple[Any, str | None], outlines: list[list[torch.Tensor]], view: tuple[Any, Any], pred: int, true: int
) -> None:
    """One input with each transformer's border (thick) and bent grid lines (thin), titled with its prediction."""
    ax.imshow(img[0], cmap=img[1], vmin=0, vmax=1, interpolation="nearest")
    for k, per_st in enumerate(outlines):
        for n_line, line in enumerate(per_st):
            ax.plot(line[:, 0], line[:, 1], color=_COLORS[k % len(_COLORS)], lw=1.4 if n_line == 0 else 0.6)
    _frame(ax, view)
    ok = pred == true
    ax.set_title(f"{pred}" if ok else f"{pred} (true {true})", fontsize=9, color="black" if ok else "#c0392b")


def _draw_sampled(
    ax: Any, img: tuple[Any, str | None], borders: list[torch.Tensor], mean_border: torch.Tensor, color: str,
    view: tuple[Any, Any],
) -> None:
    """One input with a P-STN's sampled borders (thin) around the border of its mean θ (dashed)."""
    ax.imshow(img[0], cmap=img[1], vmin=0, vmax=1, interpolation="nearest")
    for line in borders:
        ax.plot(line[:, 0], line[:, 1], color=color, lw=0.6, alpha=0.7)
    ax.plot(mean_border[:, 0], mean_border[:, 1], color="black", lw=1.2, ls="--")
    _frame(ax, view)


def _frame(ax: Any, view: tuple[Any, Any]) -> None:
    """The shared view of an input row, grey outside the input, no ticks."""
    ax.set_xlim(*view[0])
    ax.set_ylim(*view[1])
    ax.set_facecolor(_OUTSIDE)
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_output(ax: Any, img: tuple[Any, str | None], color: str) -> None:
    """One transformer output, framed in the transformer's colour."""
    ax.imshow(img[0], cmap=img[1], vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_color(color)
        side.set_linewidth(1.5)


def _plot_curves(fig: Any, cells: Any, history: Sequence[dict[str, Any]], with_theta: bool,
                 label_smoothing: float = 0.0) -> None:
    """Loss and error against the step on log axes (the end of training stays legible next to its
    start), the running train curve and the test value at the end of each epoch; the θ diagnostics.
    With label smoothing the train loss is the smoothed one (above the test loss by its floor),
    and the title says so."""
    steps = [h.get("step", h["epoch"]) for h in history]
    curve = [point for h in history for point in h.get("train_curve", [])]
    for col, (key, title, scale, unit) in enumerate((("loss", "loss (negative log-likelihood)", 1.0, ""),
                                                      ("error", "error (%)", 100.0, "%"))):
        ax = fig.add_subplot(cells[0, col])
        if curve:
            ax.plot([p[0] for p in curve], _positive([scale * p[1 + col] for p in curve]), "-", lw=1, label="train")
        else:
            ax.plot(steps, _positive([scale * h[f"train_{key}"] for h in history]), "o-", ms=3, label="train")
        test = [scale * h[f"test_{key}"] for h in history]
        ax.plot(steps, _positive(test), "o-", ms=4, label="test")
        last = {"text": f"{test[-1]:#.3g}{unit}", "ha": "right", "fontsize": 8, "color": "C1",
                "bbox": {"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1}}
        if test[-1] > 0:  # the last test value, beside its point
            ax.annotate(xy=(steps[-1], test[-1]), xytext=(0, 7), textcoords="offset points", **last)
        else:  # 0 has no place on a log axis
            ax.annotate(xy=(0.97, 0.04), xycoords="axes fraction", **{**last, "text": f"last test 0{unit}"})
        if key == "loss" and label_smoothing:
            title = f"loss (train: label smoothing {label_smoothing:g})"
        ax.set_title(f"{title}, log scale", fontsize=10)
        ax.set_xlim(left=0)
        _step_axis(ax)
        _log_axis(ax)
        ax.legend(fontsize=8)
    if with_theta and all(h.get("theta") for h in history):
        _plot_theta(fig.add_subplot(cells[0, 2]), steps, history)


def _step_axis(ax: Any) -> None:
    """The x-axis of iterations: at most five ticks, thousands as ``25k`` (five-digit labels
    of a long run ran into each other)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}"))


def _positive(values: list[float]) -> list[float]:
    """``values`` with the ones a log axis cannot show (0: no error in a window) left out as gaps."""
    return [v if v > 0 else float("nan") for v in values]


def _log_axis(ax: Any) -> None:
    """A log y-axis labelled in plain numbers (1, 2, 5, 10, ...; every integer multiple when
    the data spans less than a factor 5, so that a curve that barely moved still has ticks)."""
    from matplotlib.ticker import LogLocator

    ax.set_yscale("log")
    low, high = ax.dataLim.y0, ax.dataLim.y1
    subs = (1.0, 2.0, 5.0) if low > 0 and high / low >= 5 else tuple(float(m) for m in range(1, 10))
    _plain_ticks(ax.yaxis, LogLocator(base=10, subs=subs))


def _plain_ticks(axis: Any, locator: Any) -> None:
    """Major ticks of a log ``axis`` at ``locator``, labelled ``0.5``, ``2``, ``100`` (not ``10^2``),
    and no labels on the minor ticks."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _plot_theta(ax: Any, steps: list[int], history: Sequence[dict[str, Any]]) -> None:
    """Distance of θ from the identity (left axis) and share of sampling points outside the input
    (right axis, %), per transformer, at the end of each epoch."""
    from matplotlib.lines import Line2D

    outside = ax.twinx()
    count = len(history[0]["theta"])
    for k in range(count):
        color = _COLORS[k % len(_COLORS)]
        ax.plot(steps, [h["theta"][k]["distance"] for h in history], "o-", color=color, ms=5)
        outside.plot(steps, [100 * h["theta"][k]["outside"] for h in history], "s--", color=color, ms=5, mfc="white")
    ax.set_title("transformer diagnostics (test)", fontsize=10)
    ax.set_xlim(0, max(steps) * 1.05 if max(steps) > 0 else 1)
    _step_axis(ax)
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-3) * 1.7)  # the top third is the key's
    ax.set_ylabel("mean |θ − identity|", fontsize=9)
    highest = max(100 * h["theta"][k]["outside"] for h in history for k in range(count))
    # the highest share at 0.45 of the height, the highest distance at 0.59 (1 / 1.7): with both at
    # 1 / 1.7, flat or proportional curves lay on each other and the squares hid the circles
    outside.set_ylim(0, max(5.0, highest) / 0.45)
    outside.set_ylabel("outside the input (%)", fontsize=9)
    shade = _COLORS[0] if count == 1 else "black"  # (the lines' own colour; several: the style alone, colours below)
    key = [Line2D([], [], color=shade, marker="o", ms=5, label="|θ − identity| (left)"),
           Line2D([], [], color=shade, marker="s", ms=5, mfc="white", ls="--", label="outside, % (right)")]
    if count > 1:
        key += [Line2D([], [], color=_COLORS[k % len(_COLORS)], lw=3, label=f"ST {k + 1}") for k in range(count)]
    # on the twin axes, which are drawn over the left one's, and narrow enough to stay inside
    outside.legend(handles=key, fontsize=7, loc="upper center", ncol=2 if count > 1 else 1, framealpha=0.9,
                   handlelength=1.6, columnspacing=0.8)
