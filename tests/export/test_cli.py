"""``torchstn export``: a checkpoint becomes a file that matches the eager model."""

from pathlib import Path

import pytest
import torch

from torchstn.cli import main

engine = pytest.importorskip("torchstn.engine", reason="the checkpoint loader lives in torchstn.engine")
pytest.importorskip("safetensors")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    from torchstn.engine import TrainConfig, save_checkpoint
    from torchstn.models import create_model

    config = TrainConfig(model="st-cnn-tps", model_args={"in_channels": 1, "input_size": 28, "num_classes": 10})
    model = create_model(config.model, **config.model_args)
    with torch.no_grad():  # a trained-looking transformer: θ depends on the input
        st = model.transformers[0]
        st.regressor.weight.copy_(0.05 * torch.randn(st.regressor.weight.shape, generator=torch.Generator().manual_seed(0)))
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "best.safetensors", model, config, epoch=1, step=10)


def test_torchscript_from_a_run_directory(checkpoint: Path, capsys) -> None:
    run = checkpoint.parent.parent
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    out = run / "export" / "best.pt"
    assert f"wrote {out} (torchscript, st-cnn-tps" in printed
    assert "max |exported - eager|" in printed
    assert torch.jit.load(str(out))(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_onnx_from_a_checkpoint_file(checkpoint: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--legacy-onnx"]) == 0  # format from the suffix
    assert out.is_file()
    assert "(onnx, st-cnn-tps" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path / "nothing"), "--format", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--batch", "0"]) == 2
