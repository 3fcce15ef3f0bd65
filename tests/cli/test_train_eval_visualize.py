"""The train, eval and visualize commands, end to end through subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files expected in {MNIST}")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "torchstn", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=600)


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchstn: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


TINY = ["--data", "mnist-rts", "--data-dir", MNIST, "--train-limit", 256, "--test-limit", 128,
        "--batch-size", 32, "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "st"
    proc = cli("train", "--model", "st-cnn-aff", "--model-arg", "pool=2", "--epochs", 1, "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "done: st-cnn-aff on mnist-rts, 1 epochs / 8 steps" in proc.stdout
    assert ", ECE 0." in proc.stdout and ", NLL " in proc.stdout  # calibration beside the error, every run
    return out


@pytest.mark.parametrize("command", ["train", "eval", "visualize", "demo"])
def test_help_shows_examples(command):
    proc = cli(command, "--help")
    assert proc.returncode == 0
    assert "examples:" in proc.stdout and f"torchstn {command}" in proc.stdout


def test_train_writes_a_run_and_resume_extends_it(run_dir):
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 8
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_args"] == {"pool": 2, "in_channels": 1, "input_size": [42, 42], "num_classes": 10}
    proc = cli("train", "--out", run_dir, "--resume", "--epochs", 2, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "epoch   2/2" in proc.stdout and "epoch   1/2" not in proc.stdout
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["step"] == 16


def test_eval_reports_error_loss_and_per_class_error(run_dir):
    proc = cli("eval", run_dir, "--data-dir", MNIST, "--limit", 128)
    assert proc.returncode == 0, proc.stderr
    assert "on mnist-rts test: error" in proc.stdout and "per-class error  0:" in proc.stdout
    assert ", ECE 0." in proc.stdout and ", NLL " in proc.stdout
    proc = cli("eval", run_dir, "--data-dir", MNIST, "--limit", 128, "--json", "--which", "last")
    metrics = json.loads(proc.stdout)
    assert metrics["n"] == 128 and len(metrics["per_class_error"]) == 10
    assert 0 <= metrics["error"] <= 1 and metrics["loss"] > 0
    assert 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0
    # the error eval measures is the one training logged for the same checkpoint and data
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert metrics["error"] == pytest.approx(logged["test_error"], abs=1 / 128 + 1e-9)


def test_visualize_writes_a_png(run_dir, tmp_path):
    out = tmp_path / "fig.png"
    proc = cli("visualize", run_dir, "--data-dir", MNIST, "--out", out, "--num", 4, "--calibration-images", 128)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bad_arguments_are_one_line_errors(tmp_path, run_dir):
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    cases = [  # (arguments, fragments of the one-line error)
        (["train", "--model", "resnet9000", *TINY], ["unknown model 'resnet9000'", "st-cnn-aff"]),
        (["train", "--data", "imagenet"], ["unknown dataset 'imagenet'", "mnist-rts"]),
        (["train", "--data-dir", tmp_path / "nowhere"], ["does not exist"]),
        (["train", "--model", "cnn", "--model-arg", "widht=3", *TINY], ["widht"]),
        (["train", "--resume", "--out", tmp_path], ["config.json is missing"]),
        (["train", "--resume", "--out", run_dir, "--lr", 1.0], ["cannot change lr"]),
        (["eval", garbage], ["cannot read checkpoint"]),
        (["visualize", garbage], ["cannot read checkpoint"]),
        (["eval", tmp_path / "missing"], ["does not exist"]),
        (["visualize", tmp_path], ["no checkpoint in"]),
        (["eval", run_dir, "--data", "mnist", "--data-dir", MNIST, "--limit", 8], ["(1, 28, 28)", "(1, 42, 42)"]),
    ]
    # each case is its own process; they run side by side (most of each is importing torch)
    procs = [subprocess.Popen([sys.executable, "-m", "torchstn", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for args, _ in cases]
    for proc, (args, fragments) in zip(procs, cases):
        _, stderr = proc.communicate(timeout=600)
        assert_user_error(subprocess.CompletedProcess(args, proc.returncode, "", stderr), *fragments)
