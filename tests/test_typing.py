"""The package as a type-checked user sees it: torchstn ships ``py.typed``, so mypy and pyright
read its annotations into the user's program. Two of them had hidden the real signatures:
``stn.engine``, ``stn.export``... (the layers imported on first use) read as ``object``, and
``stn.data.get_dataset`` as ``def (*Any, **Any) -> Any`` (a decorator typed ``Callable[..., Any]``)."""

import subprocess
import sys

import pytest

pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")

USER = """\
import torch
import torchstn as stn

config = stn.engine.TrainConfig(model="st-cnn-aff", lr=0.01)
onnx = stn.export.export_onnx
reveal_type(stn.engine.train)
reveal_type(stn.data.get_dataset("mnist-rts", "test"))
warped: torch.Tensor = stn.warp(torch.rand(1, 1, 8, 8), stn.Affine().identity(1), "affine")
kl: float = stn.nn.total_kl(torch.nn.Linear(2, 2)).item()
"""

WRONG = """\
import torchstn as stn

stn.engine.TrainConfig(model=3)
stn.data.get_dataset("mnist-rts", seed="zero")
name: str = stn.data.get_dataset("mnist-rts").num_classes
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mypy-cache")  # (shared: torch's stubs read once, about 12 s)


def _mypy(tmp_path, cache, source: str) -> subprocess.CompletedProcess:
    program = tmp_path / "user.py"
    program.write_text(source)
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary", str(program)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_a_correct_user_program_type_checks_with_the_real_signatures(tmp_path, cache):
    result = _mypy(tmp_path, cache, USER)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert not errors, result.stdout
    assert 'Revealed type is "def (config: torchstn.engine._config.TrainConfig' in result.stdout, result.stdout
    assert "MNISTDataset | torchstn.data._datasets.OnlineDistortedMNIST" in result.stdout, result.stdout


def test_a_wrong_user_program_is_caught(tmp_path, cache):
    result = _mypy(tmp_path, cache, WRONG)
    errors = [line.split(": error: ")[1] for line in result.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 3, result.stdout
    assert 'Argument "model" to "TrainConfig" has incompatible type "int"' in errors[0]
    assert 'Argument "seed" to "get_dataset" has incompatible type "str"' in errors[1]
    assert 'Incompatible types in assignment (expression has type "int", variable has type "str")' in errors[2]
