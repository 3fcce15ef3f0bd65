"""torchstn: spatial transformer networks for PyTorch.

>>> import torchstn as stn
>>> x = torch.rand(1, 1, 28, 28)
>>> stn.warp(x, torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.5, 0.0]]), stn.Affine()).shape
torch.Size([1, 1, 28, 28])
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchstn._version import __version__
from torchstn.models import create_model, list_models, register_model
from torchstn.nn import (
    CascadedSpatialTransformer,
    IdentityRegressor,
    ParallelSpatialTransformers,
    ProbabilisticSpatialTransformer,
    SpatialTransformer,
    conv_localization,
    param_groups,
)
from torchstn.sampling import reference_sample, sample, warp
from torchstn.transforms import (
    Affine,
    Affine1D,
    Affine3D,
    Attention,
    CPAB1D,
    MatrixTransform,
    Projective,
    Similarity,
    ThinPlateSpline,
    Transform,
    Translation,
    base_grid,
    clear_caches,
    get_transform,
)

from torchstn import data  # layer 5, as ``stn.data`` (light: no matplotlib, no download at import)
from torchstn import testing  # as ``stn.testing.check_transform`` (the README's spelling failed without its import)

#: the command's layer, imported where first named (``torchstn.engine.load_model(...)``, the
#: README's spelling, failed after a plain ``import torchstn``)
_ON_FIRST_USE = frozenset({"bench", "cli", "engine", "export", "reproduce"})

if TYPE_CHECKING:  # what __getattr__ hands out, as type checkers see it (``stn.engine.train`` read as ``object``)
    from torchstn import bench, cli, engine, export, reproduce


def __getattr__(name: str) -> object:
    if name in _ON_FIRST_USE:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:  # (dir() and tab completion name the layers imported on first use too)
    return sorted({*globals(), *_ON_FIRST_USE})

__all__ = [
    "Affine",
    "Affine1D",
    "Affine3D",
    "Attention",
    "CPAB1D",
    "CascadedSpatialTransformer",
    "IdentityRegressor",
    "MatrixTransform",
    "ParallelSpatialTransformers",
    "ProbabilisticSpatialTransformer",
    "Projective",
    "Similarity",
    "SpatialTransformer",
    "ThinPlateSpline",
    "Transform",
    "Translation",
    "__version__",
    "base_grid",
    "clear_caches",
    "conv_localization",
    "create_model",
    "get_transform",
    "list_models",
    "param_groups",
    "reference_sample",
    "register_model",
    "sample",
    "warp",
]
