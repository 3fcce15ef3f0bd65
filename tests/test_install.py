"""The plain install (no extras) gives a `torchstn` command whose every subcommand runs."""

import os
import shutil
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["demo", "data", "train", "eval", "visualize", "bench", "export", "reproduce"]


@pytest.mark.slow
def test_plain_install_runs_every_subcommand(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=900, **kw)

    torch_pin = f"torch=={__import__('torch').__version__.split('+')[0]}"  # the CPU build on this machine
    assert run(str(python), "-m", "pip", "install", "-q", torch_pin).returncode == 0
    # from a copy of what the build reads: pip builds in the source tree (build/, the egg-info), and
    # CI runs this test beside the suite, which imports the package from ROOT/src
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    shutil.copytree(ROOT / "tests", source / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "conftest.py"):
        shutil.copy2(ROOT / name, source / name)
    installed = run(str(python), "-m", "pip", "install", "-q", str(source))  # no extras
    assert installed.returncode == 0, installed.stderr[-2000:]
    # the kernels' sources (compiled at run time) and the PEP 561 marker (type checkers skipped the package)
    package = run(str(python), "-c", "import torchstn, pathlib; print(pathlib.Path(torchstn.__file__).parent)")
    package_dir = Path(package.stdout.strip())
    assert (package_dir / "py.typed").is_file() and len(list((package_dir / "sampling" / "csrc").glob("*.cpp"))) == 3
    # the source distribution: the package, its C++ sources and the licence, none of the suite (setuptools
    # took tests/test*.py alone, without the helpers and conftest files they import: 6 collection errors)
    assert run(str(python), "-m", "pip", "install", "-q", "setuptools>=77").returncode == 0
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    built = run(str(python), "-c", build, str(tmp_path / "dist"), cwd=source)
    assert built.returncode == 0, built.stderr[-2000:]
    with tarfile.open(tmp_path / "dist" / built.stdout.split()[-1]) as sdist:
        members = [name.split("/", 1)[1] for name in sdist.getnames() if "/" in name]
    assert not [name for name in members if name.startswith("tests")], members
    assert "LICENSE" in members and sum(name.startswith("src/torchstn/sampling/csrc/") for name in members) == 3
    # the docstring examples are collected beside an installed, not editable, torchstn (pytest's default
    # import mode refused every module of src/torchstn there: "import file mismatch")
    assert run(str(python), "-m", "pip", "install", "-q", "pytest").returncode == 0
    collected = run(str(python), "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "src/torchstn",
                    cwd=source)
    assert collected.returncode == 0 and " error" not in collected.stdout, collected.stdout[-2000:]
    command = str(env_dir / "bin" / "torchstn")
    top = run(command, "--help")
    assert top.returncode == 0 and "reproduce" in top.stdout, top.stderr
    for name in SUBCOMMANDS:
        help_ = run(command, name, "--help")
        assert help_.returncode == 0 and "examples" in help_.stdout, f"{name}: {help_.stderr[-1000:]}"
    # a subcommand that does work, not only its help: a dataset preview (matplotlib) in a temporary dir
    data = Path(os.environ.get("TORCHSTN_TEST_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
    if data.is_dir():
        preview = run(command, "data", "preview", "rts", "--data-dir", str(data), "--out", str(tmp_path / "p.png"),
                      cwd=tmp_path)
        assert preview.returncode == 0, preview.stderr[-2000:]
        assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# typing's names that Python 3.10 (pyproject's requires-python) lacks
_TYPING_AFTER_3_10 = {"Unpack", "Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type",
                      "TypeVarTuple", "Required", "NotRequired", "dataclass_transform", "override", "TypeAliasType",
                      "get_overloads", "clear_overloads", "ReadOnly", "TypeIs", "get_protocol_members", "is_protocol"}


def test_no_module_imports_typing_names_python_3_10_lacks_at_runtime():
    """`from typing import Unpack` at import time made `import torchstn` fail on Python 3.10,
    which pyproject.toml accepts (CI runs 3.11); such names are imported under a version guard
    (or for type checking only)."""
    import ast

    guards = ("TYPE_CHECKING", "typing.TYPE_CHECKING", "sys.version_info >= (3, 11)")
    found = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) in guards
                   for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "typing" and id(node) not in guarded:
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name in _TYPING_AFTER_3_10]
    assert not found


def test_the_public_classes_type_hints_resolve():
    """Tools that read type hints (jsonargparse/LightningCLI, pydantic, sphinx-autodoc-typehints)
    call typing.get_type_hints; with Unpack imported for type checking only it raised NameError."""
    import inspect
    import typing

    import torchstn as stn

    for module in (stn, stn.nn, stn.transforms, stn.sampling):
        for name in module.__all__:
            obj = getattr(module, name)
            for target in ((obj, obj.__init__) if inspect.isclass(obj) else (obj,) if callable(obj) else ()):
                if inspect.isfunction(target) or inspect.isclass(target):
                    typing.get_type_hints(target)  # raises on a name that does not resolve
