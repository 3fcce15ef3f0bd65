"""``torchstn export``: a checkpoint becomes a file that matches the eager model."""

from pathlib import Path

import pytest
import torch

from tests._helpers import perturb

engine = pytest.importorskip("torchstn.engine", reason="the checkpoint loader lives in torchstn.engine")
pytest.importorskip("safetensors")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    from torchstn.engine import TrainConfig, save_checkpoint
    from torchstn.models import create_model

    config = TrainConfig(model="st-cnn-tps", model_args={"in_channels": 1, "input_size": 28, "num_classes": 10})
    model = perturb(create_model(config.model, **config.model_args))  # a trained-looking transformer
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", model, config, epoch=1, step=10)


def test_torchscript_from_a_run_directory(cli, checkpoint: Path) -> None:
    run = checkpoint.parent.parent
    result = cli("export", run, "--format", "torchscript")
    assert result.status == 0, result.err
    out = run / "export" / "best.pt"
    assert f"wrote {out} (torchscript, st-cnn-tps" in result.out
    assert "max |exported - eager|" in result.out
    assert torch.jit.load(str(out))(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_onnx_from_a_checkpoint_file(cli, checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    result = cli("export", checkpoint, "--out", out, "--legacy-onnx")  # format from the suffix
    assert result.status == 0, result.err
    assert out.is_file()
    assert "(onnx, st-cnn-tps" in result.out


def test_errors_are_one_line(cli, checkpoint: Path, tmp_path: Path) -> None:
    assert "does not exist" in cli("export", tmp_path / "nothing", "--format", "onnx").error_line()
    assert "--batch must be at least 1, got 0" in cli("export", tmp_path, "--batch", "0").error_line()
    assert "invalid choice: 'first'" in cli("export", checkpoint, "--which", "first").err  # a choice, as in eval
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the output's folder should be
    line = cli("export", checkpoint, "--format", "torchscript", "--out", blocked / "m.pt").error_line()
    assert str(blocked) in line
