"""The public surface and the layering never change by accident."""

import ast
from pathlib import Path

import torchstn

PUBLIC = [
    "Affine",
    "Affine1D",
    "Affine3D",
    "Attention",
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
    "reference_sample",
    "register_model",
    "sample",
    "warp",
]

# DESIGN.md: each layer imports only the layers above it
LAYERS = ["transforms", "sampling", "nn", "models", "data", "engine"]
TOP = {"cli", "bench", "export", "testing"}

SRC = Path(torchstn.__file__).parent


def test_public_names():
    assert sorted(torchstn.__all__) == sorted(PUBLIC)
    for name in torchstn.__all__:
        assert hasattr(torchstn, name), name


def _imported_subpackages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "torchstn" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_layers_import_only_lower_layers():
    violations = []
    for i, layer in enumerate(LAYERS):
        allowed = set(LAYERS[:i]) | {layer, "_validation", "_version", "_tracing"}
        for path in (SRC / layer).rglob("*.py") if (SRC / layer).exists() else []:
            bad = _imported_subpackages(path) - allowed
            if bad:
                violations.append(f"{path.relative_to(SRC)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)
