"""Preview figures: a grid of generated samples with their labels and the originals beside them.

matplotlib is imported inside :func:`preview` (it is an optional dependency, the
``cli`` extra), through its object-oriented API so no global backend is changed.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

import torch

from torchstn._validation import check_int, figure_file
from torchstn.data._generate import DistortedMNIST, distorted_mnist

__all__ = ["preview", "projections", "sample_mosaic"]

_GAP = 0.35  # grey of the 1-pixel frames and gaps, so a canvas edge is visible on black


def _framed(panel: torch.Tensor, height: int) -> torch.Tensor:
    """A ``(h, w)`` float panel in a 1-pixel grey frame, centred vertically on ``height + 2`` rows."""
    h, w = panel.shape
    top = (height - h) // 2
    out = torch.zeros(height + 2, w + 2)
    out[top : top + h + 2, :] = _GAP
    out[1 + top : 1 + top + h, 1 : 1 + w] = panel
    return out


def projections(volume: torch.Tensor) -> list[torch.Tensor]:
    """Maximum-intensity projections of a ``(D, H, W)`` volume along depth, height and width:
    ``(H, W)`` (the view along z, as a flattening along depth sees it), ``(D, W)`` and ``(D, H)``."""
    return [volume.amax(0), volume.amax(1), volume.amax(2)]


def sample_mosaic(data: DistortedMNIST, i: int, originals: bool = True) -> torch.Tensor:
    """One sample as a float ``(h, w)`` image: its original digit(s), then each channel, framed.

    A volume (``mnist-3d``) shows as its three maximum-intensity projections (see
    :func:`projections`). Each panel has a 1-pixel grey frame just outside the canvas, so
    a digit cut by the canvas edge or an empty canvas shows.
    """
    raw = []
    if originals:
        raw += list(data.originals()[i].reshape(-1, *data.sources.images.shape[1:]).float() / 255)
    if data.images.dim() == 5:
        raw += projections(data.images[i, 0].float() / 255)
    else:
        raw += list(data.images[i].float() / 255)
    # the tallest panel's rows (an original 28x28 digit beside a smaller canvas, a volume's views)
    height = max(p.shape[0] for p in raw)
    panels = [_framed(p, height) for p in raw]
    gap = torch.full((height + 2, 2), 0.0)
    pieces = []
    for k, p in enumerate(panels):
        if k:
            pieces.append(gap)
        pieces.append(p)
    return torch.cat(pieces, 1)


def _title(data: DistortedMNIST, i: int) -> str:
    if data.kind == "addition":
        a, b = data.sources.labels[data.source[i]].tolist()
        return f"{a}+{b}={int(data.labels[i])}"
    return f"label {int(data.labels[i])}"


def preview(
    kind: str,
    out: str | os.PathLike,
    *,
    split: str = "train",
    seed: int = 0,
    n: int = 16,
    originals: bool = True,
    root: str | os.PathLike | None = None,
    columns: int | None = None,
    **options: Any,
) -> Path:
    """Save a grid of the first ``n`` samples of a distorted set (labels as titles) to ``out``.

    Args:
        kind: a distortion (see :func:`~torchstn.data.distorted_mnist`).
        out: the image file to write (PNG, PDF, SVG: by its suffix).
        split, seed, root, **options: as in :func:`~torchstn.data.distorted_mnist`.
        n: number of samples shown.
        originals: show each sample's undistorted digit(s) to its left.
        columns: samples per row (default: about square).

    Returns:
        The written path.
    """
    check_int("n", n, 1)
    if columns is not None:
        check_int("columns", columns, 1)
    data = distorted_mnist(kind, split, root, seed, limit=n, cache=False, **options)
    fig = _sample_grid(data, originals, columns)
    recipe = data.recipe
    shape = "x".join(map(str, recipe.input_shape))
    what = "distorted" if len(recipe.input_shape) == 3 else "max projections along depth, height, width"
    what = f"original | {what}" if originals else what
    title = f"mnist-{recipe.kind} ({split}, seed {seed}): {recipe.summary}; {shape}, {what}"
    # wrapped to the figure's width (about 14 characters per inch at 8 points): a few samples make a narrow figure
    fig.suptitle(textwrap.fill(title, max(30, int(14 * fig.get_figwidth()))), fontsize=8)
    fig.tight_layout()
    out = figure_file(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _sample_grid(data: DistortedMNIST, originals: bool, columns: int | None) -> Any:
    """A matplotlib ``Figure`` of every sample of ``data``, ``columns`` a row (default about square)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(data)
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / columns)
    mosaics = [sample_mosaic(data, i, originals) for i in range(n)]
    aspect = mosaics[0].shape[1] / mosaics[0].shape[0]
    fig = Figure(figsize=(columns * 1.25 * aspect + 0.4, rows * 1.5 + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(mosaics[i].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(_title(data, i), fontsize=8)
    return fig
