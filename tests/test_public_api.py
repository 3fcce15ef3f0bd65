"""The public surface and the layering never change by accident."""

import ast
import importlib
from pathlib import Path

import pytest

import torchstn

PUBLIC = [
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
# the lower layers' own surfaces, which other packages (and users) import by these names
LAYER_PUBLIC = {
    "transforms": ["Affine", "Affine1D", "Affine3D", "Attention", "CPAB1D", "MatrixTransform", "Projective", "Similarity",
                   "ThinPlateSpline", "Transform", "Translation", "base_grid", "clear_caches", "get_transform",
                   "matrix_grid", "named_transforms"],
    "sampling": ["BACKENDS", "BACKEND_CHOICES", "Backend", "BackendName", "FusedStatus", "MODES", "Mode", "PADDINGS",
                 "Padding", "SamplerOptions", "fused_applies", "fused_status", "reference_sample", "sample", "warp"],
}

# The layers, lowest first (DESIGN.md "Layers"; docs/architecture.md): a module may import its
# own package and every rank below it, never a rank above nor a peer of its own rank.
#   transforms < sampling < {nn, testing} < models < data < engine < {bench, export, reproduce} < cli
# testing (the checkers shipped for users' transforms and samplers) needs transforms and sampling
# only, as nn does. bench, export and reproduce are three uses of the engine side by side; cli,
# the command, sits on top and may use them all. The package's __init__/__main__ are the facade.
RANKS: list[set[str]] = [
    {"transforms"},
    {"sampling"},
    {"nn", "testing"},
    {"models"},
    {"data"},
    {"engine"},
    {"bench", "export", "reproduce"},
    {"cli"},
]
# internal modules of their own, below every layer and importable from all of them
INTERNAL = {"_validation", "_version", "_tracing", "_locks"}
FACADE = {"__init__", "__main__"}

SRC = Path(torchstn.__file__).parent


def test_public_names():
    assert sorted(torchstn.__all__) == sorted(PUBLIC)
    for name in torchstn.__all__:
        assert hasattr(torchstn, name), name
    assert torchstn.clear_caches is torchstn.transforms.clear_caches  # one object under both names


@pytest.mark.parametrize("layer", sorted(LAYER_PUBLIC))
def test_layer_public_names(layer):
    module = importlib.import_module(f"torchstn.{layer}")
    assert sorted(module.__all__) == sorted(LAYER_PUBLIC[layer])
    for name in module.__all__:
        assert hasattr(module, name), name


def _package(path: Path) -> str:
    """The layer a source file belongs to: its subpackage, or a top-level module's own name."""
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def _modules() -> list[tuple[str, Path]]:
    """Every source file with its layer, the facade excepted."""
    return [(_package(path), path) for path in sorted(SRC.rglob("*.py")) if _package(path) not in FACADE]


def _imports(source: str, where: str) -> list[tuple[list[str], list[str], int]]:
    """``(module parts after "torchstn", imported names, line)`` of every torchstn import in a
    source, also those inside functions; ``from torchstn import data`` is ``(["data"], [], line)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{where}:{node.lineno}: relative import; torchstn spells imports in full")
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "torchstn":
            parts = node.module.split(".")[1:]
            names = [a.name for a in node.names]
            if not parts:  # from torchstn import X: each X is a module or a public name
                found += [([name], [], node.lineno) for name in names]
            else:
                found.append((parts, names, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1:], [], node.lineno) for a in node.names if a.name.split(".")[0] == "torchstn"]
    return found


def _rank(package: str) -> int:
    return next(i for i, peers in enumerate(RANKS) if package in peers)


def _layer_violations(package: str, source: str, where: str) -> list[str]:
    """Imports of a package of the same or a higher rank (internal modules may import no layer)."""
    known = set().union(*RANKS) | INTERNAL
    violations = []
    for parts, _, line in _imports(source, where):
        target = parts[0] if parts else None
        if target not in known or target == package or target in INTERNAL:
            continue  # a public name of the top-level package, itself, or an internal helper
        if package in INTERNAL or _rank(target) >= _rank(package):
            violations.append(f"{where}:{line} ({package}) imports torchstn.{'.'.join(parts)}")
    return violations


def _private_violations(package: str, source: str, where: str) -> list[str]:
    """Imports of a ``_private`` module or name of another subpackage (internal modules excepted)."""
    violations = []
    for parts, names, line in _imports(source, where):
        if not parts or parts[0] == package or parts[0] in INTERNAL:
            continue
        private = [p for p in parts if p.startswith("_")] + [n for n in names if n.startswith("_")]
        if private:
            imported = f"from torchstn.{'.'.join(parts)} import {', '.join(names)}" if names else f"torchstn.{'.'.join(parts)}"
            violations.append(f"{where}:{line} ({package}): {imported}")
    return violations


def test_every_package_has_a_rank():
    packages = {package for package, _ in _modules()} - INTERNAL
    assert packages == set().union(*RANKS), "place a new package in RANKS (and in docs/architecture.md)"


def test_layers_import_only_lower_layers():
    violations = []
    for package, path in _modules():
        violations += _layer_violations(package, path.read_text(), str(path.relative_to(SRC)))
    assert not violations, "\n".join(violations)


def test_no_private_name_crosses_packages():
    """A package uses another package's public names only: no ``_private`` module or name of
    another subpackage is imported (``from torchstn.engine._figures import plot_run`` inside
    cli is a violation, ``from torchstn.cli._common import x`` inside cli is not)."""
    violations = []
    for package, path in _modules():
        violations += _private_violations(package, path.read_text(), str(path.relative_to(SRC)))
    assert not violations, "\n".join(violations)


def test_the_checkers_catch_what_they_are_for():
    def layer(package: str, source: str) -> bool:
        return bool(_layer_violations(package, source, "example.py"))

    def private(package: str, source: str) -> bool:
        return bool(_private_violations(package, source, "example.py"))

    assert layer("sampling", "from torchstn.nn import SpatialTransformer")
    assert layer("engine", "def f():\n    import torchstn.cli")  # inside a function too
    assert layer("transforms", "from torchstn import sampling")
    assert layer("bench", "from torchstn.export import export_onnx")  # a peer
    assert layer("_tracing", "from torchstn.transforms import base_grid")  # internal: no layer at all
    assert not layer("cli", "from torchstn.reproduce import run_experiment\nfrom torchstn import data, _validation")
    assert not layer("nn", "from torchstn._tracing import cached\nfrom torchstn.sampling import warp")
    assert private("cli", "def f():\n    from torchstn.engine._figures import plot_run")
    assert private("bench", "from torchstn.sampling import BACKENDS, _fused")
    assert private("nn", "import torchstn.transforms._base")
    assert not private("cli", "from torchstn.cli._common import add_data_dir")
    assert not private("sampling", "from torchstn._tracing import cached\nfrom torchstn.transforms import matrix_grid")


def test_the_testing_module_comes_with_the_package_and_a_transformer_s_repr_names_its_backend():
    """The README writes ``torchstn.testing.check_transform`` and ``torchstn.engine.load_model``,
    which failed after a plain ``import torchstn`` (fresh interpreter); two transformers with different backends printed alike."""
    import subprocess
    import sys

    from torch import nn

    code = ("import torchstn; names = set(dir(torchstn)); "
            "print(torchstn.testing.check_transform.__name__, torchstn.engine.load_model.__name__, "
            "torchstn.export.export_onnx.__name__, torchstn.reproduce.EXPERIMENTS is not None, "
            "torchstn.bench.select_cases.__name__, torchstn.cli.main.__name__, hasattr(torchstn, 'nothing'), "
            "{'engine', 'export', 'warp'} <= names)")  # (dir() before their first use)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["check_transform", "load_model", "export_onnx", "True", "select_cases", "main",
                                  "False", "True"]
    st = torchstn.SpatialTransformer("affine", nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), backend="torch")
    assert st.extra_repr().endswith(", backend='torch'")
    plain = torchstn.SpatialTransformer("affine", nn.Sequential(nn.Flatten(), nn.Linear(16, 8)))
    assert "backend" not in plain.extra_repr()
