"""Mixed precision: ``torch.autocast`` on CPU (bfloat16) runs the spatial transformer without dtype errors.

Under autocast the localisation net runs in bfloat16; ``warp`` makes the grid and samples
in float32 (a bfloat16 grid would misplace points by up to 2^-8 of the image) and returns
the input's dtype, so the result matches eager float32 to the rounding of θ.
"""

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from tests._helpers import perturb

FAMILIES = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.ThinPlateSpline()]


def _transformer(transform: stn.Transform) -> stn.SpatialTransformer:
    return perturb(stn.SpatialTransformer(transform, stn.conv_localization(1, (28, 28))))


def _smooth_images() -> torch.Tensor:
    """Images without pixel-scale noise, so a bfloat16-rounded grid moves values little."""
    coarse = torch.rand(4, 1, 7, 7, generator=torch.Generator().manual_seed(1))
    return torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear", align_corners=False)


def _interior(y: torch.Tensor) -> torch.Tensor:
    """Away from the border, where zero padding makes a jump that any grid rounding can cross."""
    return y[..., 3:-3, 3:-3]


@pytest.mark.parametrize("transform", FAMILIES, ids=str)
def test_autocast_bfloat16_float32_input(transform: stn.Transform) -> None:
    st = _transformer(transform)
    x = _smooth_images()
    expected = st(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, params = st(x, return_params=True)
    assert params.dtype == torch.bfloat16  # the localisation net really ran in bfloat16
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # θ is rounded to bfloat16 (8 bits of mantissa): a grid error of ~1e-2 px, not more
    torch.testing.assert_close(_interior(out), _interior(expected), atol=0.05, rtol=0)
    out.sum().backward()  # and the backward pass runs too
    assert st.regressor.bias.grad is not None and torch.isfinite(st.regressor.bias.grad).all()


@pytest.mark.parametrize("transform", FAMILIES, ids=str)
def test_autocast_bfloat16_input(transform: stn.Transform) -> None:
    # a bfloat16 input is warped in float32 and returned in bfloat16
    st = _transformer(transform)
    x = _smooth_images()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(_interior(out.float()), _interior(st(x)), atol=0.05, rtol=0)


@pytest.mark.parametrize("compositional", [True, False])
def test_a_cascade_composes_its_bfloat16_steps_in_float32(compositional: bool) -> None:
    """Under autocast each step's Δθ comes from a bfloat16 localisation net; the total θ is
    composed in float32 (it once raised a dtype error, and before that a bfloat16 matmul
    made the total itself bfloat16, its grid off by up to 2^-8 of the image). The total is
    the float64 composition of the steps as they were predicted."""
    torch.manual_seed(0)
    cascade = stn.CascadedSpatialTransformer("affine", stn.conv_localization(1, (28, 28)), steps=3,
                                             compositional=compositional)
    perturb(cascade)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cascade(_smooth_images())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(step.dtype == torch.bfloat16 for step in cascade.last_step_params)
    assert cascade.last_params.dtype == torch.float32
    affine = stn.Affine()
    total = affine.identity(4, dtype=torch.float64)
    for step in cascade.last_step_params:
        total = affine.compose(total, step.double())
    torch.testing.assert_close(cascade.last_params.double(), total, atol=1e-6, rtol=0)


@pytest.mark.parametrize("transform", FAMILIES, ids=str)
def test_grids_and_points_made_under_autocast_keep_the_parameters_dtype(transform: stn.Transform) -> None:
    """A grid made under autocast was bfloat16 (up to 0.8 px off at 224 px for Affine), and the
    README's grid-then-sample snippet then failed with a dtype error: grids and points are
    computed in the parameters' dtype, as outside autocast, and sample takes a grid of another
    dtype there (as F.grid_sample does), sampling in float32; the output is then float32, as
    F.grid_sample's (it was x's bfloat16)."""
    noise = torch.randn(2, transform.num_params, generator=torch.Generator().manual_seed(0))
    theta = transform.identity(2) + 0.02 * noise
    points = torch.rand(2, 7, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    expected_grid, expected_points = transform.grid(theta, (33, 40)), transform.transform_points(theta, points)
    x = _smooth_images()[:2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grid = transform.grid(theta, (33, 40))
        assert grid.dtype == torch.float32 and torch.equal(grid, expected_grid)
        assert torch.equal(transform.transform_points(theta, points), expected_points)
        torch.testing.assert_close(stn.sample(x, grid.bfloat16()), stn.sample(x, grid.bfloat16().float()))
        low = stn.sample(x.bfloat16(), grid)
        assert low.dtype == F.grid_sample(x.bfloat16(), grid, align_corners=False).dtype == torch.float32
        torch.testing.assert_close(low, stn.sample(x.bfloat16().float(), grid))
        assert stn.sample(x.bfloat16(), grid.double()).dtype == torch.float64
    with pytest.raises(TypeError, match="grid must have the dtype of x"):  # outside autocast: refused as before
        stn.sample(x, grid.double())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_every_backend_samples_low_precision_inputs_under_autocast_as_grid_sample(ndim: int, dtype) -> None:
    """x and grid both bfloat16 (or float16) under autocast: every backend gives F.grid_sample's
    float32 output and gradients in the inputs' dtypes; the reference backend's backward raised
    "scatter(): Expected self.dtype to be equal to src.dtype" (its forward ran in float32 under
    autocast, its backward without it)."""
    generator = torch.Generator().manual_seed(ndim)
    x = torch.rand(1, 2, *(5, 6, 4)[:ndim], generator=generator).to(dtype)
    grid = (torch.rand(1, *(3, 4, 2)[:ndim], ndim, generator=generator) * 2 - 1).to(dtype)
    results = {}
    for backend in ("torch", "reference", "auto"):
        leaves = x.clone().requires_grad_(), grid.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = stn.sample(*leaves, backend=backend)
        out.float().square().sum().backward()
        results[backend] = out, leaves[0].grad, leaves[1].grad
    for backend in ("reference", "auto"):
        for got, expected in zip(results[backend], results["torch"]):
            assert got.dtype == expected.dtype
            torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
    assert results["torch"][0].dtype == torch.float32 and results["torch"][1].dtype == dtype
