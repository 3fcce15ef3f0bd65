"""Figures of what a transformer learned on data other than images: series (``ucr:``) and volumes (``mnist-3d``).

:func:`~torchstn.reproduce.write_figure` draws images with :func:`torchstn.engine.plot_run`
and hands series and volumes to these two: a time series is drawn with the warps its
transformer applies to it (for a P-STN, the sampled warps and the time maps behind
them); a volume with the view the baseline has (the projection along depth) beside the
view after the 3-D transformer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["plot_series_warps", "plot_volume_views"]

#: sampled warps drawn per series (a P-STN draws this many θ; a plain STN has one)
WARPS = 8


def _pick(dataset: Any, num: int, *, start: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` test items, one per class in turn (the first of each class, then the second, ...);
    with ``start``, those from index ``start`` on, in order (``torchstn visualize --start``)."""
    if start is not None:
        return _items(dataset, list(range(start, min(start + num, len(dataset)))))
    labels = getattr(dataset, "labels", None)  # every torchstn dataset holds them (an online set renders no item)
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
    order = []
    for rank in range(len(labels)):
        for c in labels.unique().tolist():
            members = (labels == c).nonzero().flatten()
            if rank < len(members):
                order.append(int(members[rank]))
        if len(order) >= num:
            break
    return _items(dataset, order[:num])


def _items(dataset: Any, order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs and labels of ``dataset``'s items ``order``, stacked."""
    getitems = getattr(dataset, "__getitems__", None)  # a batch at once (an online set renders it)
    items = getitems(order) if getitems is not None else [dataset[i] for i in order]
    return torch.stack([torch.as_tensor(item[0]).float() for item in items]), torch.tensor([int(i[1]) for i in items])


@torch.no_grad()
def _warps(st: nn.Module, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, B, C, L)`` warped series and ``(S, B, L)`` time maps ``T_θ(t)`` of a (probabilistic) transformer."""
    probabilistic = hasattr(st, "test_samples")
    if probabilistic:
        kept = st.test_samples
        st.test_samples = samples
    try:
        warped, params = st(x, return_params=True)
    finally:
        if probabilistic:
            st.test_samples = kept
    s = warped.shape[0] // x.shape[0]
    maps = st.transform.grid(params, (x.shape[-1],), align_corners=st.align_corners)[..., 0]
    return warped.view(s, *x.shape), maps.view(s, x.shape[0], -1)


def plot_series_warps(
    model: nn.Module, dataset: Any, out: str | Path, *, num: int = 4, title: str = "", start: int | None = None,
    warp_samples: int = WARPS,
) -> Path:
    """Test series with the warps the model's transformer applies to them.

    ``num`` series, one of each class in turn, or those from index ``start`` on. Top row: each
    series (black) and its warped versions (colours; a P-STN's ``warp_samples`` samples of θ, a
    plain STN's single θ). Bottom row: the time maps behind them,
    ``T_θ(t)`` (output time to input time, normalised to [-1, 1]) against the identity
    (dashed). The model's prediction is in each panel's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    x, y = _pick(dataset, num, start=start)
    with torch.no_grad():
        predicted = model(x).argmax(1)
    warped, maps = _warps(model.transformers[0], x, warp_samples)
    t = torch.linspace(-1, 1, x.shape[-1]).numpy()
    x, warped, maps = x.numpy(), warped.numpy(), maps.numpy()
    fig, axes = plt.subplots(2, len(x), figsize=(3.4 * len(x), 5.2), squeeze=False, sharex=True)
    colours = plt.get_cmap("viridis")(torch.linspace(0.1, 0.9, warped.shape[0]).numpy())
    for i in range(len(x)):
        top, bottom = axes[0, i], axes[1, i]
        for s in range(warped.shape[0]):
            top.plot(t, warped[s, i, 0], color=colours[s], lw=1.0, alpha=0.8)
            bottom.plot(t, maps[s, i], color=colours[s], lw=1.0, alpha=0.8)
        top.plot(t, x[i, 0], color="black", lw=1.6, label="input")
        bottom.plot(t, t, color="black", ls="--", lw=1.0, label="identity")
        top.set_title(f"class {int(y[i])}, predicted {int(predicted[i])}", fontsize=9)
        bottom.set_xlabel("output time t")
        if i == 0:
            top.set_ylabel("series (z-normalised)")
            bottom.set_ylabel("input time T_θ(t)")
            top.legend(fontsize=7, loc="upper left")
            bottom.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title}\nblack: a test series; colours: {warped.shape[0]} warp(s) of it by the transformer",
                 fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_volume_views(
    model: nn.Module, dataset: Any, out: str | Path, *, num: int = 6, title: str = "", start: int | None = None
) -> Path:
    """Test volumes as a depth-projecting classifier sees them, before and after the 3-D transformer.

    ``num`` volumes, one of each class in turn, or those from index ``start`` on. Rows: the
    input summed along depth (what the baseline classifies), the transformer's output summed
    along depth (what this model classifies, before pooling), and the output summed along
    height (a side view: how the transformer turned the slab).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model.eval()
    x, y = _pick(dataset, num, start=start)
    with torch.no_grad():
        predicted = model(x).argmax(1)
        volume = model.transform_volume(x)
    rows = [("input along depth", x.sum(2)), ("transformed, along depth", volume.sum(2)),
            ("transformed, along height", volume.sum(3))]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.9 * len(x), 2.0 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for i in range(len(x)):
            ax = axes[r, i]
            ax.imshow(images[i, 0].numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{int(y[i])} → {int(predicted[i])}", fontsize=9)
            if i == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}\ncolumns: test volumes (label → prediction); sums of the voxels along one axis", fontsize=9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
