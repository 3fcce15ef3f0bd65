"""Per-epoch diagnostics of what the spatial transformers predict.

"My STN does not learn / collapses / zooms out to a blank image" is the most common
complaint about spatial transformers. These statistics show it as it happens: the
spread of θ, how far it moved from the identity, how much of the sampling grid falls
outside the input (sampled as zeros), and how much of the image survives the warp.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from torchstn.nn import SpatialTransformer

__all__ = ["collapse_warnings", "theta_diagnostics"]

#: a transformer reading more than this fraction of its samples outside the input has collapsed
#: (a transformer that centres digits near the border legitimately reads up to about half outside)
MAX_OUTSIDE = 0.9
#: a warped image keeping less than this fraction of the input's mean intensity is nearly empty
MIN_KEPT = 0.1
#: a mean distance of θ from the identity above this is diverging (normalised units)
MAX_DISTANCE = 10.0


@torch.no_grad()
def theta_diagnostics(
    transformers: nn.ModuleList | list[SpatialTransformer], x: torch.Tensor, **inputs: torch.Tensor
) -> list[dict[str, Any]]:
    """Statistics of the θ each transformer predicts for a batch ``x`` ``(B, C, H, W)``.

    ``inputs`` go to ``predict_params`` (a cascade's ``init_params``): θ is then the total
    warp of ``x``.

    Returns one dict per transformer with:

    * ``mean``, ``std``: per-parameter mean and standard deviation of θ, lists of ``P``;
    * ``distance``: mean over the batch of ``||θ - θ_identity||_2``;
    * ``outside``: fraction of sampling points outside the input (``|x| > 1`` or
      ``|y| > 1`` in normalised coordinates, i.e. beyond the border pixels' edges);
    * ``kept``: mean absolute value of the warped images over that of the inputs
      (1 for the identity, near 0 when the output is blank);
    * ``finite``: whether every θ is finite.

    Example:
        >>> st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (28, 28)))
        >>> d = theta_diagnostics([st], torch.rand(4, 1, 28, 28))[0]
        >>> d["distance"], d["outside"], round(d["kept"], 3)
        (0.0, 0.0, 1.0)
    """
    out = []
    for st in transformers:
        theta = st.predict_params(x, **inputs)
        finite = bool(torch.isfinite(theta).all())
        identity = st.transform.identity(device=theta.device, dtype=theta.dtype)
        stats: dict[str, Any] = {
            "transform": st.transform.name,
            "mean": theta.mean(0).tolist(),
            "std": theta.std(0, unbiased=False).tolist(),
            "distance": float((theta - identity).norm(dim=1).mean()),
            "finite": finite,
        }
        if finite:
            size = st.output_size if st.output_size is not None else tuple(x.shape[2:])
            grid = st.transform.grid(theta, size, st.align_corners)
            stats["outside"] = float((grid.abs() > 1).any(dim=-1).float().mean())
            warped = st.transform_input(x, theta)
            stats["kept"] = float(warped.abs().mean() / x.abs().mean().clamp_min(1e-12))
        else:
            stats["outside"], stats["kept"] = 1.0, 0.0
        out.append(stats)
    return out


def collapse_warnings(diagnostics: list[dict[str, Any]]) -> list[str]:
    """Human-readable warnings for transformers that collapsed or diverge (empty when healthy).

    Example:
        >>> collapse_warnings([{"finite": True, "outside": 0.95, "kept": 0.05, "distance": 3.0}])
        ['transformer 0 collapsed: 95% of its sampling points fall outside the input and its output keeps 5% of the input (try a smaller loc_lr_mult, e.g. 0.01, or identity_reg=0.1)']
        >>> collapse_warnings([{"finite": True, "outside": 0.4, "kept": 0.8, "distance": 0.5}])
        []
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
    return warnings
