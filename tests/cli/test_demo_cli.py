"""``torchstn demo`` end to end on a tiny budget."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def demo(*args):
    return subprocess.run([sys.executable, "-m", "torchstn", "demo", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files expected in {MNIST}")
def test_demo_trains_both_models_and_writes_the_figure(tmp_path):
    proc = demo("--data-dir", MNIST, "--out", tmp_path, "--steps", 12, "--train-limit", 192, "--test-limit", 64,
                "--batch-size", 16, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("model "):]
    assert "st-cnn-aff" in table and "cnn " in table and "%" in table
    png = tmp_path / "demo.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    for name in ("st-cnn-aff", "cnn"):
        assert (tmp_path / name / "checkpoints" / "last.safetensors").is_file()
    # a second demo into the same directory replaces its runs instead of failing
    again = demo("--data-dir", MNIST, "--out", tmp_path, "--steps", 4, "--train-limit", 64, "--test-limit", 16,
                 "--batch-size", 16, "--no-progress")
    assert again.returncode == 0, again.stderr


def test_demo_with_a_missing_data_dir_is_a_one_line_error(tmp_path):
    proc = demo("--data-dir", tmp_path / "nowhere")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
