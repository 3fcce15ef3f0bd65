"""The demo's numbers are a function of its command: the same command twice gives the same numbers."""

import subprocess
import sys

import pytest
import torch

from torchstn.engine import load_model, run_demo


def _demo(out, mnist_dir):
    return run_demo(out, progress=False, data_dir=str(mnist_dir), steps=12, batch_size=32, train_limit=512,
                    test_limit=256, device="cpu")


def test_the_demo_twice_in_one_process_gives_identical_numbers_and_weights(tmp_path, mnist_dir):
    a, b = _demo(tmp_path / "a", mnist_dir), _demo(tmp_path / "b", mnist_dir)
    assert [(r["model"], r["test_error"], r["test_loss"]) for r in a.rows] == [
        (r["model"], r["test_error"], r["test_loss"]) for r in b.rows]
    for model in ("st-cnn-aff", "cnn"):
        wa = load_model(tmp_path / "a" / model, "last")[0].state_dict()
        wb = load_model(tmp_path / "b" / model, "last")[0].state_dict()
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_the_demo_in_two_processes_gives_identical_numbers(tmp_path, mnist_dir):
    """What a user does: the same command twice (each process loads the fused kernel afresh)."""
    code = (
        "import sys, torch; torch.set_num_threads(1); from torchstn.engine import run_demo; "
        "r = run_demo(sys.argv[1], progress=False, data_dir=sys.argv[2], steps=12, batch_size=32, "
        "train_limit=512, test_limit=256, device='cpu'); "
        "print([(x['test_error'], x['test_loss']) for x in r.rows])"
    )
    outputs = [
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name), str(mnist_dir)], capture_output=True,
                       text=True, check=True).stdout.strip().splitlines()[-1]
        for name in ("a", "b")
    ]
    assert outputs[0] == outputs[1]
