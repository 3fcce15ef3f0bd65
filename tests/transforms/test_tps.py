"""Thin-plate spline control points whose spline system is singular fail at construction, saying why."""

import numpy as np
import pytest
import torch

import torchstn as stn
from torchstn.transforms import _tps

COLLINEAR = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [0.5, 0.5]]
DUPLICATE = [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("regularization", [0.0, 0.5])
@pytest.mark.parametrize("points", [COLLINEAR, [[0.0, 0.0]] * 4, [[-1.0, 0.3], [0.0, 0.3], [1.0, 0.3]]],
                         ids=["diagonal", "one-point", "horizontal"])
def test_collinear_control_points_are_refused_whatever_the_regularization(points, regularization, dtype):
    with pytest.raises(ValueError, match=r"control must hold points not all on one line, got \d+ points on one line"):
        stn.ThinPlateSpline(control=torch.tensor(points, dtype=dtype), regularization=regularization)


@pytest.mark.parametrize("value, error, message", [
    (-1.0, ValueError, "regularization must be >= 0, got -1.0"),
    (float("inf"), ValueError, "regularization must be a finite number, got inf"),
    (float("nan"), ValueError, "regularization must be a finite number, got nan"),
    ("0.1", TypeError, "regularization must be a number, got str"),
])
def test_regularization_must_be_a_finite_number_at_least_0(value, error, message):
    """inf was taken, then reported as control points that give an ill-conditioned system."""
    with pytest.raises(error, match=message):
        stn.ThinPlateSpline(regularization=value)


def test_duplicate_control_points_need_regularization(dtype):
    control = torch.tensor(DUPLICATE, dtype=dtype)
    with pytest.raises(ValueError, match=r"control must hold distinct points when regularization=0, "
                                         r"got points 0 and 3 both at \(0, 0\): .*singular"):
        stn.ThinPlateSpline(control=control)
    # λ > 0 makes the kernel block definite: the system is solvable and the grid finite
    tps = stn.ThinPlateSpline(control=control, regularization=0.1)
    grid = tps.grid(tps.identity(2, dtype=dtype) + 0.05, (5, 6))
    assert grid.dtype == dtype and torch.isfinite(grid).all()


def test_non_finite_control_points_are_refused():
    with pytest.raises(ValueError, match=r"control must hold finite points, got \[\(0, nan\)"):
        stn.ThinPlateSpline(control=torch.tensor([[0.0, float("nan")], [1.0, 0.0], [0.0, 1.0]]))


def test_control_points_may_be_an_array_or_nested_lists_and_other_types_are_refused_by_name():
    """The docs promise explicit (K, 2) points: an array or nested lists of them were read as a
    (rows, cols) size and refused as one; an int or None failed with "object is not iterable"."""
    points = [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [0.0, 0.5]]
    expected = stn.ThinPlateSpline(torch.tensor(points)).control_points
    for given in (points, np.array(points), tuple(map(tuple, points))):
        torch.testing.assert_close(stn.ThinPlateSpline(given).control_points, expected, rtol=0, atol=0)
    for bad in (4, None, "ab"):
        with pytest.raises(TypeError, match=r"control must be \(rows, cols\) or \(K, 2\) points"):
            stn.ThinPlateSpline(bad)
    assert stn.ThinPlateSpline((np.int64(3), 2)).num_params == 12  # a size stays a size


def test_control_points_on_the_meta_device_are_refused_by_name():
    """A module built under torch.device("meta") makes its tensors there: a spline's control
    points hold no values then (the ValueError names them; torch's own error did not)."""
    with torch.device("meta"):
        points = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
        with pytest.raises(ValueError, match=r"control is on the meta device"):
            stn.ThinPlateSpline(points)
        assert stn.ThinPlateSpline((2, 2)).num_params == 8  # (a size makes its points on the CPU)


def test_a_failing_solve_becomes_a_value_error(monkeypatch):
    def singular(control, regularization):
        raise torch.linalg.LinAlgError("torch.linalg.solve: The solver failed because the input matrix is singular.")

    monkeypatch.setattr(_tps, "_solve", singular)
    with pytest.raises(ValueError, match=r"control \[\(-1, -1\), .*\] gives a singular spline system \(torch.linalg"):
        stn.ThinPlateSpline(control=(3, 3))


def test_valid_control_points_are_unchanged(dtype, atol):
    # the fewest points that determine a spline (a triangle), and a scattered set; both interpolate their targets
    triangle = [[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5]]
    scattered = [[-0.9, 0.1], [0.2, -0.7], [0.8, 0.9], [-0.3, 0.4], [0.0, 0.0]]
    for points in (triangle, scattered):
        control = torch.tensor(points, dtype=dtype)
        tps = stn.ThinPlateSpline(control=control)
        params = tps.identity(1, dtype=dtype) + 0.1 * torch.arange(2 * len(points), dtype=dtype)
        mapped = tps.transform_points(params, control[None])
        torch.testing.assert_close(mapped, params.view(1, -1, 2), atol=max(atol, 1e-6), rtol=0)


@pytest.mark.parametrize("eps", [1e-8, 1e-9, 1e-12])
def test_nearly_collinear_control_points_are_refused(eps):
    """Exactly collinear points were refused, nearly collinear ones accepted and solved to
    garbage (the identity θ warped 0.5 to 2.8 off the identity): a system too ill-conditioned
    for float64 is refused, naming its condition number."""
    control = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5 + eps], [-1.0, -1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"too ill-conditioned to solve \(condition number [\d.e+]+"):
        stn.ThinPlateSpline(control=control)


def test_a_usable_ill_conditioned_spline_is_kept():
    # points 1e-4 off one line, and a cluster 2e-4 wide: conditioned far worse than a grid, still solved well
    for control in ([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5001], [-1.0, -1.0]],
                    (torch.rand(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2e-4).tolist()):
        tps = stn.ThinPlateSpline(control=torch.tensor(control, dtype=torch.float64))
        grid = tps.grid(tps.identity(1, dtype=torch.float64), (5, 6))
        torch.testing.assert_close(grid, stn.Affine().grid(stn.Affine().identity(1, dtype=torch.float64), (5, 6)))


def test_transform_points_in_float32_is_as_accurate_as_the_grid():
    """transform_points evaluated the kernel and multiplied by the solution in float32 (4e-4
    off for clustered landmarks, where the grid, built in float64 and rounded once, was 2e-6
    off): both now round once."""
    generator = torch.Generator().manual_seed(1)
    control = torch.rand(8, 2, generator=generator, dtype=torch.float64) * 0.4 - 0.2
    tps64 = stn.ThinPlateSpline(control=control)
    tps32 = stn.ThinPlateSpline(control=control.float())
    params = tps64.identity(2, dtype=torch.float64) + 0.02 * torch.randn(2, 16, generator=generator, dtype=torch.float64)
    points = torch.rand(2, 50, 2, generator=generator, dtype=torch.float64) * 2 - 1
    exact = tps64.transform_points(params, points)
    error = (tps32.transform_points(params.float(), points.float()).double() - exact).abs().max()
    assert error < 1e-5


def test_control_counts_may_be_numpy_integers():
    """(np.int64(3), 3) was refused as "not >= 2" although warp's sizes take numpy integers."""
    import numpy as np

    assert stn.ThinPlateSpline(control=(np.int64(3), 3)).num_control_points == 9
    with pytest.raises(ValueError, match="control must be"):
        stn.ThinPlateSpline(control=(True, 3))


def test_the_conditioning_does_not_count_units():
    """The condition number was taken unscaled: λ = 1e8 or control points 300 times wider
    were refused as 'nearly on one line', though their solution is exact to 1e-14."""
    tps = stn.ThinPlateSpline(control=(4, 4), regularization=1e8)
    assert tps.num_control_points == 16
    wide = stn.ThinPlateSpline(control=stn.ThinPlateSpline(control=(4, 4)).control_points * 300)
    torch.testing.assert_close(wide.transform_points(wide.identity(1, dtype=torch.float64),
                                                     wide.control_points[None]), wide.control_points[None])
