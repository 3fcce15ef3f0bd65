"""Per-epoch diagnostics of what the spatial transformers predict.

"My STN does not learn / collapses / zooms out to a blank image" is the most common
complaint about spatial transformers. These statistics show it as it happens: the
spread of θ, how far it moved from the identity, how much of the sampling grid falls
outside the input (sampled as zeros), and how much of the image survives the warp.

A subtler failure: the transformer helps the classifier by encoding the class in the
warp (zooming in on one class and out on another) instead of aligning the object. Given
the predicted classes, the diagnostics compare the area the transformer reads per class.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from torchstn.engine._evaluate import as_evaluated
from torchstn.nn import CascadedSpatialTransformer, ParallelSpatialTransformers, SpatialTransformer

__all__ = ["collapse_warnings", "predicted_classes", "theta_diagnostics", "warp_log_area"]

#: a transformer reading more than this fraction of its samples outside the input has collapsed
#: (a transformer that centres digits near the border legitimately reads up to about half outside)
MAX_OUTSIDE = 0.9
#: a warped image keeping less than this fraction of the input's mean intensity is nearly empty
MIN_KEPT = 0.1
#: a mean distance of θ from the identity above this is diverging (normalised units)
MAX_DISTANCE = 10.0
#: predicted classes with fewer images than this in the diagnostics batch are left out of the per-class statistics
MIN_CLASS_IMAGES = 5
#: the per-class mean log area (:func:`warp_log_area`) spreading over more than log 2 means that
#: the transformer reads, on average, a frame of twice the area for one predicted class as for another
MAX_CLASS_SPREAD = math.log(2.0)
#: ... and the predicted class explaining more than this share of the log area's variance over the batch
#: (the correlation ratio eta squared) means the class, not the object's own size, sets the zoom
MIN_CLASS_SHARE = 0.5
#: a transformer whose every parameter varies less than this (standard deviation over the batch)
#: predicts one θ for every input: its localisation net's features are dead or ignored. The 40
#: trained transformers of results/ (STN Table 1, cluttered, addition, IC-STN, tutorial) vary by
#: 0.014 or more in their most varying parameter; the two dead ones of stn-3d (every unit of
#: the localisation net's FC layer at 0 after ReLU, for every input) by exactly 0.
MIN_THETA_STD = 1e-6


@torch.no_grad()
def warp_log_area(transform: Any, theta: torch.Tensor, points: int = 16) -> torch.Tensor:
    """``(B,)`` mean over the output frame of ``log |det J|``, ``J`` the Jacobian of the warp.

    ``|det J|`` is the local ratio of the area (length in 1-D, volume in 3-D) read in
    the input to the area of the output it fills, in normalised coordinates, so the
    statistic is 0 for the identity, ``log |det A|`` for an affine ``θ = [A | t]``,
    negative when the transformer zooms in and positive when it zooms out. ``J`` is
    taken at the centres of the cells of a ``points``-per-axis grid over the output frame,
    each column the difference along its axis averaged over the cell's other edges
    (exact for matrix families without perspective, second order otherwise), so it
    serves every family. (Until 2026-12-04 each column was a one-sided difference at a
    point of its own, shifted half a cell on the other axes: 2.3x the exact value for a
    homography with perspective term 0.1.)

    Example:
        >>> half = torch.tensor([[0.5, 0, 0.2, 0, 0.5, 0]])  # reads a quarter of the area
        >>> round(warp_log_area(stn.Affine(), half).item() / math.log(0.25), 6)
        1.0
    """
    size = (points,) * transform.ndim
    grid = transform.grid(theta.detach().double(), size, align_corners=True)  # (B, *size, ndim)
    step = 2.0 / (points - 1)  # between neighbouring points of the align_corners grid
    columns = []
    for axis in range(transform.ndim):  # (grid dims 1.. are (D,) H, W)
        column = grid.diff(dim=1 + axis) / step
        for other in range(transform.ndim):  # to the cell centres along the other axes
            if other != axis:
                column = (column.narrow(1 + other, 0, points - 1) + column.narrow(1 + other, 1, points - 1)) / 2
        columns.append(column)
    det = torch.linalg.det(torch.stack(columns, dim=-1))  # (B, *cells); columns in (D,) H, W order
    return det.abs().clamp_min(1e-12).log().flatten(1).mean(1).to(theta.dtype)


@torch.no_grad()
def predicted_classes(model: nn.Module, x: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
    """``(B,)`` classes the model predicts for ``x``, in eval mode, leaving the model's mode and
    the random state as they were (so that a diagnostic never changes a seeded training run)."""
    with as_evaluated([model], x.device):
        return model(x, **inputs).argmax(1)


@torch.no_grad()
def theta_diagnostics(
    transformers: nn.ModuleList | list[SpatialTransformer],
    x: torch.Tensor,
    *,
    classes: torch.Tensor | None = None,
    **inputs: torch.Tensor,
) -> list[dict[str, Any]]:
    """Statistics of the θ each transformer predicts for a batch ``x`` ``(B, C, H, W)``.

    ``inputs`` go to ``predict_params`` (a cascade's ``init_params``): θ is then the total
    warp of ``x``. The transformers are those of :func:`theta_heads`: a
    :class:`~torchstn.nn.ParallelSpatialTransformers` counts as its heads, in order, and
    heads without a θ are left out. ``classes`` ``(B,)`` are the classes the model predicts for ``x``
    (:func:`predicted_classes`); with them the statistics include the per-class ones.

    Returns one dict per transformer with:

    * ``mean``, ``std``: per-parameter mean and standard deviation of θ, lists of ``P``;
    * ``distance``: mean over the batch of ``||θ - θ_identity||_2``;
    * ``outside``: fraction of sampling points outside the input, beyond the border pixels'
      edges (a normalised coordinate beyond ±1 on some axis, or with ``align_corners=True``
      beyond ±(1 + 1/(n - 1)) for an axis of ``n`` pixels);
    * ``kept``: mean absolute value of the warped images over that of the inputs
      (1 for the identity, near 0 when the output is blank);
    * ``finite``: whether every θ is finite;
    * ``images``: the batch size;
    * ``log_area``: mean over the batch of :func:`warp_log_area` (0 for the identity,
      below 0 when the transformer zooms in);

    and, with ``classes``:

    * ``class_log_area``: ``{class: mean log_area}`` over the predicted classes with at
      least ``MIN_CLASS_IMAGES`` images (keys are strings, as in ``metrics.jsonl``);
    * ``class_spread``: the largest minus the smallest of those means (``log 2``: one
      class is read through a frame of twice the area of another's);
    * ``class_share``: the share of the variance of ``log_area`` over those images that
      the predicted class explains (the correlation ratio η², 0 to 1).

    Example:
        >>> st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)))
        >>> d = theta_diagnostics([st], torch.rand(4, 1, 28, 28))[0]
        >>> d["distance"], d["outside"], round(d["kept"], 3), round(d["log_area"], 6)
        (0.0, 0.0, 1.0, 0.0)
    """
    heads = theta_heads(transformers)
    with as_evaluated(heads, x.device):  # (in training mode, the test batch moved BatchNorm's statistics)
        return [_theta_statistics(st, x, classes, inputs) for st in heads]


def transformers_of(model: nn.Module) -> list[nn.Module]:
    """``model``'s spatial transformers: its ``transformers`` (a registry model's, in order), else
    every :class:`~torchstn.nn.SpatialTransformer` in it that is not inside another, in module
    order (a user's model holding one as ``self.st``: ``identity_reg`` had added nothing to its
    loss and the θ diagnostics had been empty, while ``loc_lr_mult`` found it)."""
    listed = getattr(model, "transformers", None)
    kinds = (SpatialTransformer, ParallelSpatialTransformers)
    if isinstance(listed, (nn.ModuleList, list, tuple)) and all(isinstance(m, kinds) for m in listed):
        return list(listed)  # (not a list of something else named so: a user's nn.TransformerEncoderLayer's)
    if isinstance(model, SpatialTransformer):
        return [model]
    found: list[nn.Module] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, SpatialTransformer) and not any(name.startswith(f"{outer}.") for outer in inside):
            found.append(module)
            inside.append(name)
    return found


def theta_heads(transformers: Iterable[nn.Module]) -> list[SpatialTransformer]:
    """The transformers of ``transformers`` that predict a θ, which the diagnostics, the run's
    figures and the identity penalty read: a :class:`~torchstn.nn.ParallelSpatialTransformers`
    counts as its heads, in order. Left out: a Parallel's head that is no transformer (it takes
    any module) and a plain cascade of a family without a total θ (its steps' TPS warps
    compose to no single θ); before, the first raised AttributeError and the second TypeError
    at the end of a training's first epoch."""
    heads = [head for st in transformers
             for head in (st.transformers if isinstance(st, ParallelSpatialTransformers) else [st])]
    return [head for head in heads if isinstance(head, SpatialTransformer)
            and (not isinstance(head, CascadedSpatialTransformer) or head.has_total_params)]


def _theta_statistics(
    st: SpatialTransformer, x: torch.Tensor, classes: torch.Tensor | None, inputs: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """:func:`theta_diagnostics` of one transformer."""
    theta = st.predict_params(x, **inputs)
    finite = bool(torch.isfinite(theta).all())
    identity = st.transform.identity(device=theta.device, dtype=theta.dtype)
    stats: dict[str, Any] = {
        "transform": st.transform.name,
        "mean": theta.mean(0).tolist(),
        "std": theta.std(0, unbiased=False).tolist(),
        "distance": float((theta - identity).norm(dim=1).mean()),
        "finite": finite,
        "images": int(theta.shape[0]),
    }
    if finite:
        size = st.output_size if st.output_size is not None else tuple(x.shape[2:])
        grid = st.transform.grid(theta, size, st.align_corners)
        # beyond the border pixels' edges: +-1, or with align_corners (+-1 the pixels' centres) half a
        # pixel further, per axis (x along the width: the input's sizes reversed)
        edges = [1 + 1 / max(n - 1, 1) if st.align_corners else 1.0 for n in reversed(x.shape[2:])]
        stats["outside"] = float((grid.abs() > grid.new_tensor(edges)).any(dim=-1).float().mean())
        warped = st.transform_input(x, theta)
        stats["kept"] = float(warped.abs().mean() / x.abs().mean().clamp_min(1e-12))
        log_area = warp_log_area(st.transform, theta)
        stats["log_area"] = float(log_area.mean())
        if classes is not None:
            stats.update(_per_class(log_area, classes))
    else:
        stats["outside"], stats["kept"] = 1.0, 0.0
    return stats


def _per_class(values: torch.Tensor, classes: torch.Tensor) -> dict[str, Any]:
    """``class_log_area``, ``class_spread`` and ``class_share`` of :func:`theta_diagnostics`."""
    values, classes = values.double().cpu(), classes.cpu()
    found, counts = classes.unique(return_counts=True)
    found = found[counts >= MIN_CLASS_IMAGES]
    means = {int(c): values[classes == c].mean() for c in found}
    stats = {"class_log_area": {str(c): float(m) for c, m in means.items()}, "class_spread": 0.0, "class_share": 0.0}
    if len(means) >= 2:
        member = values[torch.isin(classes, found)]
        between = sum(int((classes == c).sum()) * float(m - member.mean()) ** 2 for c, m in means.items())
        total = float(((member - member.mean()) ** 2).sum())
        stats["class_spread"] = float(max(means.values()) - min(means.values()))
        stats["class_share"] = between / total if total > 1e-12 else 0.0
    return stats


def collapse_warnings(diagnostics: list[dict[str, Any]]) -> list[str]:
    """Human-readable warnings for transformers that collapsed, diverge or encode the class (empty when healthy).

    A transformer is said to encode the class when, in diagnostics taken with the
    predicted classes, the mean log area it reads differs by more than ``MAX_CLASS_SPREAD``
    (2x in area) between two predicted classes *and* the class explains more than
    ``MIN_CLASS_SHARE`` (half) of the variance of the log area. Both thresholds sit above
    every healthy transformer measured: the 25 trained transformers of STN Table 1 (the
    24 ST-FCN and ST-CNN cells, affine, projective and TPS on R, RTS, P and E at the
    standard budget, and the long ST-CNN Aff RTS; last checkpoint, the trainer's 512
    diagnostics images) spread 1.08x to 1.73x (class 1, thin, is read through a smaller
    frame) with shares of 0.08 to 0.46; none exceeded either threshold. The transformer
    that encoded the class in a user's toy task read areas 1.63 / 1.01 / 1.15 / 3.67.

    Example:
        >>> collapse_warnings([{"finite": True, "outside": 0.95, "kept": 0.05, "distance": 3.0}])
        ['transformer 0 collapsed: 95% of its sampling points fall outside the input and its output keeps 5% of the input (try a smaller loc_lr_mult, e.g. 0.01, or identity_reg=0.1)']
        >>> collapse_warnings([{"finite": True, "outside": 0.4, "kept": 0.8, "distance": 0.5}])
        []
        >>> areas = {"0": math.log(1.63), "1": math.log(1.01), "2": math.log(1.15), "3": math.log(3.67)}
        >>> usual = {"finite": True, "outside": 0.1, "kept": 0.9, "distance": 0.5}
        >>> print(collapse_warnings([{**usual, "class_log_area": areas, "class_spread": math.log(3.67 / 1.01),
        ...                           "class_share": 0.9}])[0])
        transformer 0 may encode the class in its warp instead of aligning the object: the area it reads differs 3.6x between predicted classes (per class, 1 = the identity's: 0: 1.63, 1: 1.01, 2: 1.15, 3: 3.67) and the class explains 90% of its variance (a transformer that aligns the object reads similar areas for every class unless the object's size depends on its class; try identity_reg=0.1 or a smaller loc_lr_mult)
    """
    warnings = []
    for i, d in enumerate(diagnostics):
        problems = []
        if not d["finite"]:
            problems.append("θ is not finite")
        if d["outside"] > MAX_OUTSIDE:
            problems.append(f"{d['outside']:.0%} of its sampling points fall outside the input")
        if d["kept"] < MIN_KEPT:
            problems.append(f"its output keeps {d['kept']:.0%} of the input")
        if d["distance"] > MAX_DISTANCE:
            problems.append(f"θ is {d['distance']:.3g} from the identity (diverging)")
        if problems:
            warnings.append(
                f"transformer {i} collapsed: {' and '.join(problems)} "
                "(try a smaller loc_lr_mult, e.g. 0.01, or identity_reg=0.1)"
            )
        if d.get("images", 0) >= 2 and d["finite"] and max(d["std"], default=1.0) < MIN_THETA_STD:
            warnings.append(
                f"transformer {i} ignores its input: it predicts the same θ for all {d['images']} images (no parameter "
                f"varies by {MIN_THETA_STD:g} or more), so it is one fixed warp; its localisation net's features are "
                "dead (a ReLU layer at 0 for every input) or unused (try a smaller loc_lr_mult than this run's, or "
                "inputs of a larger scale for the localisation net); after only a few steps at a small (warm-up) rate "
                "its zero-initialised regressor may simply not have moved yet"
            )
        if d.get("class_spread", 0.0) > MAX_CLASS_SPREAD and d.get("class_share", 0.0) > MIN_CLASS_SHARE:
            areas = ", ".join(f"{c}: {math.exp(v):.2f}" for c, v in d["class_log_area"].items())
            warnings.append(
                f"transformer {i} may encode the class in its warp instead of aligning the object: the area it "
                f"reads differs {math.exp(d['class_spread']):.1f}x between predicted classes (per class, 1 = the "
                f"identity's: {areas}) and the class explains {d['class_share']:.0%} of its variance (a transformer "
                "that aligns the object reads similar areas for every class unless the object's size depends on "
                "its class; try identity_reg=0.1 or a smaller loc_lr_mult)"
            )
    return warnings
