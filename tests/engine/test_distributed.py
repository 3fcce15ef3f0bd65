"""DDP: ``torchrun --nproc_per_node=2 -m torchstn train`` gives the one-process result."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests._helpers import MNIST_DIR, needs_mnist
from torchstn.engine import load_model
from torchstn.models import create_model

ARGS = ["train", "--model", "st-cnn-aff", "--model-arg", "pool=2", "--data", "mnist-rts", "--data-dir", str(MNIST_DIR),
        "--train-limit", "256", "--test-limit", "128", "--epochs", "1", "--lr", "0.05",
        "--device", "cpu", "--no-progress"]


@needs_mnist
@pytest.mark.parametrize("batch", [32, 33])
def test_two_processes_match_one(tmp_path, batch):
    """Also with a batch that two processes split unevenly (17 + 16): each slice's loss then
    counts by its share (DDP's plain average of the two gradients was 0.25 off one process's
    at a batch of 5)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*ARGS, "--batch-size", str(batch)]
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "torchstn",
         *args, "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=600,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "2 processes" in ddp.stdout
    assert ddp.stdout.count("done:") == 1  # only rank 0 reports
    one = subprocess.run([sys.executable, "-m", "torchstn", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1]) for name in ("ddp", "one"))
    # each process takes half of every global batch and DDP averages the gradients, so the
    # runs differ only by floating-point summation order
    assert a["step"] == b["step"] == 256 // batch
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert abs(a["test_error"] - b["test_error"]) <= 1 / 128 + 1e-9
    (ma, config, _), (mb, _, _) = (load_model(tmp_path / name, "last") for name in ("ddp", "one"))
    wa, wb = ma.state_dict(), mb.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    torch.manual_seed(config.seed)  # the trainer's initialisation: training did move the weights
    init = create_model(config.model, **config.model_args).state_dict()
    assert max(float((wa[k] - init[k]).abs().max()) for k in wa) > 1e-2
