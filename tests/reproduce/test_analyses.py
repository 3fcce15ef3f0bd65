"""The report's per-bin analyses: the distortion shift of a sample, checked in closed form, and its table."""

import math

import pytest
import torch

from tests._helpers import MNIST_DIR, needs_mnist
from torchstn import Projective, ThinPlateSpline
from torchstn.data._geometry import homography_from_points
from torchstn.reproduce import Results, distortion_shift, get_experiment, plan, render_report

CORNERS = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)


def _turned(points: torch.Tensor) -> torch.Tensor:
    """Each point turned by 90° about the centre: a move orthogonal to any uniform scale."""
    return torch.stack([-points[..., 1], points[..., 0]], -1)


def _homography(sampled: torch.Tensor) -> torch.Tensor:
    """Canvas -> digit parameters whose canvas corners sample the given points of the digit."""
    n = len(sampled)
    return homography_from_points(CORNERS.expand(n, -1, -1), sampled).reshape(n, 9)[:, :8]


def test_a_uniform_scale_is_no_shift_and_an_orthogonal_move_is_its_length():
    scale = torch.tensor([0.75, 1.0, 1.2], dtype=torch.float64)
    pure = _homography(scale[:, None, None] * CORNERS)
    assert distortion_shift(Projective(), pure, 28).abs().max() < 1e-9
    eps = 0.05  # normalised: each corner moves eps * sqrt(2), i.e. 0.99 px on a 28-pixel canvas
    moved = _homography(scale[:, None, None] * CORNERS + eps * _turned(CORNERS))
    expected = eps * math.sqrt(2) * 14
    torch.testing.assert_close(distortion_shift(Projective(), moved, 28), torch.full((3,), expected, dtype=torch.float64))
    # the canvas size only converts units
    torch.testing.assert_close(distortion_shift(Projective(), moved, 56), torch.full((3,), 2 * expected, dtype=torch.float64))


def test_a_thin_plate_spline_shift_is_its_targets_against_the_scaled_grid():
    tps = ThinPlateSpline(control=(4, 4))
    grid = tps.identity(dtype=torch.float64).view(-1, 2)
    eps = 0.1
    params = torch.stack([0.9 * grid, 1.1 * grid + eps * _turned(grid)]).reshape(2, -1)
    rms = grid.pow(2).sum(-1).mean().sqrt()
    torch.testing.assert_close(distortion_shift(tps, params, 28),
                               torch.tensor([0.0, eps * 14 * float(rms)], dtype=torch.float64))


@needs_mnist
def test_the_p_data_shift_is_its_corner_noise():
    from torchstn.data import distorted_mnist

    ds = distorted_mnist("p", split="test", root=MNIST_DIR, limit=2000, cache=False)
    shift = distortion_shift(ds.transform, ds.params, 28)
    # N(0, 5 px) per axis at each corner, one degree of freedom taken by the scale
    assert 5.0 < float(shift.median()) < 7.0
    half = distorted_mnist("p", split="test", root=MNIST_DIR, limit=2000, cache=False, sigma=2.5)
    assert float(distortion_shift(half.transform, half.params, 28).median()) == pytest.approx(
        float(shift.median()) / 2, rel=0.15)


def test_the_scale_split_reads_the_digit_scale_from_the_similarity_and_skips_a_constant_one():
    from types import SimpleNamespace

    from torchstn import Similarity
    from torchstn.reproduce._report import _splits

    scale = torch.linspace(0.7, 1.2, 100, dtype=torch.float64)
    # canvas -> digit parameters of a 42-pixel canvas: their scale is (42 / 28) / the digit's
    params = torch.stack([1.5 / scale, torch.zeros(100), torch.zeros(100), torch.zeros(100)], 1).float()
    wrong = (scale < 0.8).float()  # every digit below 0.8 wrong
    rts = SimpleNamespace(transform=Similarity(), params=params, input_shape=(1, 42, 42))
    bins = _splits(rts, wrong)["by_scale"]
    assert [b["n"] for b in bins] == [20, 20, 20, 20, 20]
    assert bins[0]["scale"][0] == pytest.approx(0.7, abs=1e-5) and bins[-1]["scale"][1] == pytest.approx(1.2, abs=1e-5)
    assert [b["error"] for b in bins] == pytest.approx([100.0, 0.0, 0.0, 0.0, 0.0])
    assert _splits(rts, wrong)["by_rotation"] == [{"degrees": [0.0, 15.0], "n": 100, "error": pytest.approx(20.0)}]
    # a rotation-only set (mnist-r) has one scale: no split
    r = SimpleNamespace(transform=Similarity(), params=torch.tensor([[1.0, 0.3, 0.0, 0.0]]).repeat(100, 1),
                        input_shape=(1, 28, 28))
    assert _splits(r, wrong)["by_scale"] == []
    homographies = Projective().identity(100) + 0.01 * torch.randn(100, 8)
    p = SimpleNamespace(transform=Projective(), params=homographies, input_shape=(1, 28, 28))
    assert _splits(p, wrong)["by_scale"] == []


@pytest.mark.parametrize("column, key, bins, title, table", [
    ("p", "by_shift",
     [{"pixels": [1.25, 4.93], "n": 2500, "error": 0.8}, {"pixels": [4.93, 13.75], "n": 7500, "error": 3.2}],
     "Test error (%) on P by the shift of the test digit's distortion",
     "| model | seed | 1.2-4.9 | ≥ 4.9 |\n|---|---:|---:|---:|\n| ST-CNN Aff | 0 | 0.80 | 3.20 |"),
    ("rts", "by_scale",
     [{"scale": [0.7, 0.8], "n": 2000, "error": 1.3}, {"scale": [0.8, 1.2], "n": 8000, "error": 0.7}],
     "Test error (%) on RTS by the scale of the test digit",
     "| model | seed | 0.70-0.80 | 0.80-1.20 |\n|---|---:|---:|---:|\n| ST-CNN Aff | 0 | 1.30 | 0.70 |"),
])
def test_the_report_shows_each_split_per_column(tmp_path, column, key, bins, title, table):
    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    cell = plan(experiment, "standard", only=["st-cnn-aff"], datasets=[column])[0]
    results.add(cell, {"digest": cell.digest, "budget": "standard", "row": "st-cnn-aff", "column": column, "seed": 0,
                       "error": 2.6, "best_error": 2.6, "train_error": 2.4, "epochs": 1, "steps": 10,
                       "wall_seconds": 60.0, "images_per_s": 100.0, "config": cell.config, key: bins})
    text = render_report(experiment, results, tmp_path, "standard")
    assert title in text and table in text
    assert "by the rotation" not in text  # no other split without its record


@needs_mnist
def test_a_sampling_model_s_bins_add_up_to_its_recorded_error(tmp_path):
    """A P-STN draws its test-time θ: the report's per-rotation table drew them from whatever
    state the generator had (84.20% recorded, bins adding up to 83.80%, then 83.60% on the
    next --refresh); from the state the run's last evaluation found, saved with its checkpoint,
    they add up to the recorded error, every time."""
    from torchstn.engine import TrainConfig, train
    from torchstn.reproduce import error_by_rotation

    config = TrainConfig(model="p-stn", data="mnist-r", data_dir=str(MNIST_DIR), train_limit=128, test_limit=96,
                         batch_size=32, steps=3, optimizer="adam", lr=1e-3, device="cpu", diagnostics_samples=8,
                         model_args={"samples": 2, "test_samples": 2})
    result = train(config, tmp_path / "run", progress=False)
    tables = [error_by_rotation(None, {"run": str(tmp_path / "run")}, data_dir=str(MNIST_DIR)) for _ in range(2)]
    assert tables[0] == tables[1] and sum(b["n"] for b in tables[0]) == 96
    total = sum(b["n"] * b["error"] for b in tables[0]) / 96
    assert total == pytest.approx(100 * result.final["test_error"])
