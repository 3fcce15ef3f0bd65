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
    # (torch's spurious DDP warning for the localisation net's one-channel weight: _grads_in_bucket_layout)
    assert "Grad strides do not match bucket view strides" not in ddp.stderr
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


_DRAWS = '''
import os, sys, torch
from torchstn.engine import TrainConfig, train
from torchstn.nn import ProbabilisticSpatialTransformer

mode, out, data_dir, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
draws, noise = [], ProbabilisticSpatialTransformer._noise

def recorded(self, shape, like):
    n = noise(self, shape, like)
    if self.training:
        draws.append(n)
    return n

ProbabilisticSpatialTransformer._noise = recorded
config = TrainConfig(model="p-stn", data="mnist-rts", data_dir=data_dir, train_limit=60, test_limit=32, epochs=2,
                     batch_size=batch, lr=0.05, device="cpu")
options = {"stop_after": 1} if mode == "stop" else {"resume": True} if mode == "resume" else {}
train(config, out, progress=False, **options)
torch.save(draws, f"{out}.draws{os.environ['RANK']}.pt")
'''


@needs_mnist
def test_processes_draw_their_own_noise_and_resume_bit_exactly_with_uneven_slices(tmp_path):
    """Every process drew the same P-STN noise (the same seed), so images 2i and 2i + 1 of a global
    batch shared theirs; and a resumed run restored rank 0's RNG state in every process, which
    with a batch split unevenly (8 + 7 draws) moved rank 1's stream: its weights then differed
    from the uninterrupted run's by 1.6e-4."""
    script = tmp_path / "draws.py"
    script.write_text(_DRAWS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(mode: str, out: str, batch: int = 15) -> None:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), mode, str(tmp_path / out), str(MNIST_DIR), str(batch)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    run("full", "even", batch=16)
    first, second = (torch.load(tmp_path / f"even.draws{r}.pt") for r in (0, 1))
    assert len(first) == len(second) >= 4 and not any(torch.equal(a, b) for a, b in zip(first, second))
    run("full", "full")
    run("stop", "part")
    run("resume", "part")
    (a, _, _), (b, _, _) = (load_model(tmp_path / name, "last") for name in ("full", "part"))
    wa, wb = a.state_dict(), b.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@needs_mnist
def test_a_run_resumed_by_more_processes_than_started_it_draws_a_stream_per_process(tmp_path):
    """Its checkpoint holds one process's RNG state: every process restored it, and all drew the
    same noise again; the processes beyond the first now draw their own."""
    script = tmp_path / "draws.py"
    script.write_text(_DRAWS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for mode, processes in (("stop", 1), ("resume", 2)):
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc_per_node={processes}", str(script), mode, str(tmp_path / "run"),
                               str(MNIST_DIR), "16"], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    first, second = (torch.load(tmp_path / f"run.draws{r}.pt") for r in (0, 1))
    assert len(first) == len(second) >= 2 and not any(torch.equal(a, b) for a, b in zip(first, second))
