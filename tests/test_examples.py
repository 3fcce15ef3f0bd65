"""The gallery's scripts (``examples/*.py``) run, and do what their text says.

Each script is loaded as ``python examples/NAME.py`` would run it, and its ``main`` is
called (with fewer training steps where it trains); the checks compare its results with
references computed here (``F.grid_sample``, ``torch.rot90``, the warp by the known
parameters, a by-hand ECE).
"""

import re
import runpy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TESTED = {"warp.py", "own_classifier.py", "tps_landmarks.py", "pstn_calibration.py", "volume_warp.py"}


def load(name: str) -> dict:
    """The script's globals, as ``python examples/NAME`` defines them (without running its ``__main__`` part)."""
    return runpy.run_path(str(EXAMPLES / name), run_name="example")


def test_every_example_is_tested_and_titled():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    assert scripts == TESTED, f"examples without a test (or tests without an example): {scripts ^ TESTED}"
    for name in scripts:  # the gallery page takes its title and text from the docstring
        source = (EXAMPLES / name).read_text(encoding="utf-8")
        assert source.startswith('"""'), f"{name} has no module docstring for the gallery"


def test_warp_script(capsys):
    runpy.run_path(str(EXAMPLES / "warp.py"), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    for line in lines:
        assert float(line.split("identity error")[1]) < 1e-4, line
    mass = re.search(r"^Translation .*mass in\s+([\d.]+) -> out\s+([\d.]+)", lines[0])
    assert mass and mass[1] == mass[2] == "64.0", lines[0]  # the shifted square stays inside


def test_own_classifier_learns_with_two_learning_rates(capsys):
    result = load("own_classifier.py")["main"](steps=80)
    assert [name for name, _ in result["groups"]] == ["classifier", "localization"]
    assert result["groups"][1][1] == pytest.approx(0.1 * result["groups"][0][1])
    assert result["last_loss"] < 0.5 * result["first_loss"]
    assert result["test_accuracy"] > 0.7  # 3 classes: chance is 1/3
    assert result["theta_from_identity"] > 0  # the localisation group was trained (it starts exactly at the identity)
    assert "test accuracy" in capsys.readouterr().out


def test_tps_fit_maps_landmarks_and_warps_as_the_true_spline():
    result = load("tps_landmarks.py")["main"]()
    assert result["rms_before"] > 0.05  # there was something to fit
    assert result["max_landmark_error"] < 1e-3  # normalised units: 1/30 pixel on 64 pixels
    torch.testing.assert_close(result["theta"], result["true_theta"], atol=1e-2, rtol=0)
    # the warped image against F.grid_sample through the true spline's points at the pixel centres
    image, tps = result["image"], stn.ThinPlateSpline(control=(4, 4))
    h, w = image.shape[-2:]
    ys, xs = torch.meshgrid((2 * torch.arange(h) + 1) / h - 1, (2 * torch.arange(w) + 1) / w - 1, indexing="ij")
    points = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    grid = tps.transform_points(result["true_theta"], points).reshape(1, h, w, 2)
    expected = F.grid_sample(image, grid, padding_mode="border", align_corners=False)
    assert (result["warped"] - expected).abs().mean() < 1e-3


def _ece_by_hand(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    confidence, predicted = probs.max(1)
    total = 0.0
    for m in range(bins):
        lo, hi = m / bins, (m + 1) / bins
        inside = [i for i, c in enumerate(confidence.tolist()) if (lo < c <= hi) or (m == 0 and c == 0)]
        if inside:
            accuracy = sum(int(predicted[i] == labels[i]) for i in inside) / len(inside)
            mean_confidence = sum(float(confidence[i]) for i in inside) / len(inside)
            total += len(inside) / len(labels) * abs(accuracy - mean_confidence)
    return total


def test_pstn_trains_with_its_kl_and_reports_calibration():
    result = load("pstn_calibration.py")["main"](steps=60)
    kl = torch.tensor(result["kl"])
    assert torch.isfinite(kl).all() and (kl > 0).all()  # the KL term was in every step's loss
    assert result["last_loss"] < 0.8 * result["first_loss"]
    probs, labels = result["probs"], result["labels"]
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))  # marginalised over the samples
    assert result["accuracy"] > 0.5  # 4 classes
    assert result["ece"] == pytest.approx(_ece_by_hand(probs, labels), abs=1e-5)


def test_volume_warp_matches_rot90_and_affine_grid():
    result = load("volume_warp.py")["main"]()
    assert result["volume"].sum() > 0
    assert result["rot90_error"] < 1e-5
    assert result["affine_grid_error"] < 1e-5
    assert result["round_trip_error"] < 0.1
    assert result["transformer_output"] == (2, 1, 16, 16, 16)
    assert result["theta"] == (2, 12)


# -- the reference's docstring conventions (docs/_ext/torchstn_docs.py, run by the docs build in .ci/run) --


@pytest.fixture(scope="module")
def docs_ext():
    pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
    path = EXAMPLES.parent / "docs" / "_ext" / "torchstn_docs.py"
    return runpy.run_path(str(path), run_name="torchstn_docs")


def test_docs_wrapped_argument_names_are_joined(docs_ext):
    lines = [
        "Build it.",
        "",
        "Args:",
        "    a, b,",
        "        c, d,",
        "        e: as in ``f(x: int)``.",
        "    g: the next one,",
        "        wrapped.",
        "",
        "Returns:",
        "    h, i,",
        "        j.",
    ]
    joined = docs_ext["_join_wrapped_names"](lines)
    assert joined[3] == "    a, b, c, d, e: as in ``f(x: int)``."
    assert joined[4:] == lines[6:]  # an entry with its colon, and other sections, are left as they are


def test_docs_stars_of_shapes_and_argument_lists_are_literal(docs_ext):
    escape = docs_ext["_escape_shape_stars"]
    assert escape("x (B, C, *in) at grid (B, *out, n)") == r"x (B, C, \*in) at grid (B, \*out, n)"
    assert escape("split, seed, **options: as in") == r"split, seed, \*\*options: as in"
    assert escape("``(B, *size)`` and *emphasis* and **strong**") == "``(B, *size)`` and *emphasis* and **strong**"
