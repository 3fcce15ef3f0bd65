"""Grid generators: parameterised maps from output coordinates to input coordinates.

Layer 1 of torchstn: pure tensor maths, no ``nn.Module`` state.
"""

from __future__ import annotations

import inspect

from torchstn._tracing import clear_caches
from torchstn.transforms._base import MatrixTransform, Transform, base_grid, matrix_grid
from torchstn.transforms._cpab import CPAB1D
from torchstn.transforms._matrix import Affine, Affine1D, Affine3D, Attention, Projective, Similarity, Translation
from torchstn.transforms._tps import ThinPlateSpline

__all__ = [
    "Affine",
    "Affine1D",
    "Affine3D",
    "Attention",
    "CPAB1D",
    "MatrixTransform",
    "Projective",
    "Similarity",
    "ThinPlateSpline",
    "Transform",
    "Translation",
    "base_grid",
    "clear_caches",
    "get_transform",
    "matrix_grid",
    "named_transforms",
]

_BY_NAME: dict[str, type[Transform]] = {
    "translation": Translation,
    "attention": Attention,
    "similarity": Similarity,
    "affine": Affine,
    "aff": Affine,
    "projective": Projective,
    "proj": Projective,
    "tps": ThinPlateSpline,
    "thin-plate-spline": ThinPlateSpline,
    "affine3d": Affine3D,
    "affine1d": Affine1D,
    "cpab1d": CPAB1D,
    "cpab": CPAB1D,
}


def get_transform(name: str | Transform, **kwargs: object) -> Transform:
    """A transform by name (``"affine"``/``"aff"``, ``"projective"``/``"proj"``, ``"tps"``, ...).

    A :class:`Transform` instance is returned unchanged, so functions can accept either
    (with keyword arguments, which only a name can take, it raises).

    Example:
        >>> get_transform("tps", control=(3, 3)).num_params
        18
    """
    if isinstance(name, Transform):
        if kwargs:
            raise TypeError(f"get_transform: keyword arguments ({', '.join(sorted(kwargs))}) are for a transform "
                            f"named by a string; got the instance {name!r}")
        return name
    if isinstance(name, type) and issubclass(name, Transform):  # (the message said "got ABCMeta")
        raise TypeError(f"transform must be a Transform instance or a name, got the class {name.__name__}: "
                        f"pass an instance, {name.__name__}()")
    if not isinstance(name, str):
        raise TypeError(f"transform must be a Transform or a name, got {type(name).__name__}")
    key = name.lower()
    if key not in _BY_NAME:
        raise ValueError(f"transform must be one of {sorted(_BY_NAME)}, got {name!r}")
    family = _BY_NAME[key]
    options = inspect.signature(family).parameters.values()
    takes = [p.name for p in options if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in options):  # (said "Affine() takes no arguments")
        raise TypeError(f"get_transform({name!r}): {family.__name__} takes "
                        f"{', '.join(takes) if takes else 'no options'}, got {', '.join(unknown)}")
    return family(**kwargs)


def named_transforms() -> dict[str, Transform]:
    """Every name :func:`get_transform` knows, each with a transform of its default options,
    made now: for a caller that warps by name and keeps these (``warp(x, θ, "tps")``), made
    once instead of in every call, and before any ``torch.compile`` trace (a
    :class:`ThinPlateSpline` or :class:`CPAB1D` solves and checks its system when made, which
    dynamo cannot trace: made in the trace, ``warp(x, θ, "tps")`` broke ``fullgraph=True``).
    Names of one family share one instance; a caller must not change them (modules get their
    own from :func:`get_transform`).

    Example:
        >>> named = named_transforms()
        >>> named["tps"] is named["thin-plate-spline"], named["aff"].num_params
        (True, 6)
    """
    made = {cls: cls() for cls in dict.fromkeys(_BY_NAME.values())}
    return {name: made[cls] for name, cls in _BY_NAME.items()}
