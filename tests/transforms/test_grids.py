"""Every grid generator against a closed-form or independent reference."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from tests._helpers import random_theta
from torchstn.testing import check_transform

FAMILIES_2D = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.ThinPlateSpline()]


@pytest.mark.parametrize("transform", FAMILIES_2D + [stn.Affine3D(), stn.Affine1D()], ids=lambda t: t.name)
def test_transform_properties(transform, device, dtype):
    params = random_theta(transform, 3, dtype, device, scale=0.15)
    check_transform(transform, params, gradcheck=dtype == torch.float64)


MATRIX_FAMILIES = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.Affine3D()]


@pytest.mark.parametrize("transform", MATRIX_FAMILIES, ids=lambda t: t.name)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_a_matrix_grid_has_the_same_bits_in_any_batch(transform, dtype):
    """As F.affine_grid's: a sample's grid, and so its warp on the grid backends, is the same
    in a batch of 1 to 17 as alone (one matmul over the batch rounded batches of 1 to 3 other
    than larger ones in float32, and nearest sampling then read another pixel at ties)."""
    generator = torch.Generator().manual_seed(3)
    params = transform.identity(17, dtype=dtype) + 0.1 * torch.randn(17, transform.num_params, generator=generator,
                                                                      dtype=dtype)
    size = (5, 6, 7) if transform.ndim == 3 else (28, 30)
    alone = [transform.grid(params[i:i + 1], size) for i in range(17)]
    for batch in (2, 3, 4, 17):
        grid = transform.grid(params[:batch], size)
        assert all(torch.equal(grid[i:i + 1], alone[i]) for i in range(batch))
    if transform.ndim == 2:  # (the reviewer's case: a quarter-size warp whose points fall on ties)
        x = torch.arange(28 * 28, dtype=dtype).view(1, 1, 28, 28).repeat(5, 1, 1, 1)
        theta = torch.tensor([[3 / 28, 3 / 28, 0.25, 0.5, 0.25, -0.5]], dtype=dtype).repeat(5, 1)
        for backend in ("torch", "reference"):
            batched = stn.warp(x, theta, "affine", (14, 14), "nearest", backend=backend)
            assert torch.equal(batched[:1], stn.warp(x[:1], theta[:1], "affine", (14, 14), "nearest", backend=backend))


class _DoubledGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, p):  # noqa: ANN001, ANN205, D102
        return p.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205, D102
        return 2 * g


class _WrongGradient(stn.Affine):
    """Right values, twice the gradient, on the grid's path (_matrix) only: warp's fused
    kernel reads _rows and never sees it."""

    def _matrix(self, p):  # noqa: ANN001, ANN202
        return super()._matrix(_DoubledGradient.apply(p))


class _RowsDisagree(stn.Affine):
    """A warp (rows) that is not the warp of its grid (matrix): both redefined, inconsistently
    (one redefined alone is read through the other, see MatrixTransform.__init_subclass__)."""

    def _rows(self, p):  # noqa: ANN001, ANN202
        return super()._rows(p) * 1.1

    def _matrix(self, p):  # noqa: ANN001, ANN202
        return super()._matrix(p)


def test_check_transform_catches_what_warp_alone_hides_and_passes_the_identity_and_empty_batches():
    affine = stn.Affine()
    check_transform(affine, affine.identity(2, dtype=torch.float64))  # every point on a pixel centre
    check_transform(affine, affine.identity(0) + 0.1)
    near = affine.identity(2, dtype=torch.float64) + 0.1
    with pytest.raises(AssertionError, match="gradcheck of grid wrt params failed"):
        check_transform(_WrongGradient(), near)
    # (an affine grid reads the rows, as the warp does, since 2026-12-05: its points then disagree
    # with the map of the matrix, where until then the warp disagreed with the grid)
    with pytest.raises(AssertionError, match="grid vs transform_points"):
        check_transform(_RowsDisagree(), near)



class _SwappedCompose(stn.Affine):
    def compose(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return super().compose(second, first)


def test_check_transform_catches_compose_in_the_wrong_order_for_one_row_or_equal_rows():
    """Its second operand of compose was params reversed, equal to params for one row or equal rows
    (the module docstring's example), where compose in either order gives the same matrix."""
    params = stn.Affine().identity(3, dtype=torch.float64) + 0.1 * torch.randn(
        3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for rows in (params[:1], stn.Affine().identity(3, dtype=torch.float64) + 0.1):
        check_transform(stn.Affine(), rows)
        with pytest.raises(AssertionError, match="matrix of compose vs product of matrices"):
            check_transform(_SwappedCompose(), rows)


class _MatrixOfRows(stn.MatrixTransform):  # a user's bug: the (B, 2, 3) rows where (B, 3, 3) is due
    num_params = 6

    def _identity(self) -> torch.Tensor:
        return torch.tensor([1.0, 0, 0, 0, 1, 0], dtype=torch.float64)

    def _matrix(self, p: torch.Tensor) -> torch.Tensor:
        return p.reshape(-1, 2, 3)

    def _from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        return m[:, :2].flatten(1)


def test_check_transform_raises_assertion_errors_naming_the_check_for_a_transform_s_own_exceptions():
    """Its docstring promises AssertionError naming the property; a transform whose own code raised
    (a RuntimeError of shapes that do not broadcast) came out as that error, naming nothing."""
    failed = r"_MatrixOfRows failed while checking the matrix algebra .*: RuntimeError"
    with pytest.raises(AssertionError, match=failed) as info:
        check_transform(_MatrixOfRows(), stn.Affine().identity(2, dtype=torch.float64) + 0.1)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_equals_affine_grid(align_corners, device, dtype, atol):
    params = random_theta(stn.Affine(), 4, dtype, device, scale=0.5)
    ours = stn.Affine().grid(params, (5, 7), align_corners)
    ref = F.affine_grid(params.view(-1, 2, 3), [4, 1, 5, 7], align_corners=align_corners)
    torch.testing.assert_close(ours, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine3d_equals_affine_grid(align_corners, device, dtype, atol):
    params = random_theta(stn.Affine3D(), 2, dtype, device, scale=0.5)
    ours = stn.Affine3D().grid(params, (3, 4, 5), align_corners)
    ref = F.affine_grid(params.view(-1, 3, 4), [2, 1, 3, 4, 5], align_corners=align_corners)
    torch.testing.assert_close(ours, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("family", [stn.Translation(), stn.Attention(), stn.Similarity()], ids=lambda t: t.name)
def test_restricted_families_equal_affine_of_their_matrix(family, dtype, atol):
    params = random_theta(family, 3, dtype, "cpu", scale=0.4)
    matrix = family.matrix(params)
    affine = matrix[:, :2].reshape(-1, 6)
    torch.testing.assert_close(family.grid(params, (6, 5)), stn.Affine().grid(affine, (6, 5)), atol=atol, rtol=0)


def test_similarity_matrix_closed_form(dtype):
    s, a, tx, ty = 1.5, math.pi / 3, 0.2, -0.1
    matrix = stn.Similarity().matrix(torch.tensor([[s, a, tx, ty]], dtype=dtype))[0]
    expected = torch.tensor(
        [[s * math.cos(a), -s * math.sin(a), tx], [s * math.sin(a), s * math.cos(a), ty], [0, 0, 1]], dtype=dtype
    )
    torch.testing.assert_close(matrix, expected)


def test_attention_and_translation_closed_form(dtype):
    pts = torch.tensor([[[0.5, -0.25], [-1.0, 1.0]]], dtype=dtype)
    out = stn.Attention().transform_points(torch.tensor([[0.5, 0.1, -0.2]], dtype=dtype), pts)
    torch.testing.assert_close(out, pts * 0.5 + torch.tensor([0.1, -0.2], dtype=dtype))
    out = stn.Translation().transform_points(torch.tensor([[0.1, -0.2]], dtype=dtype), pts)
    torch.testing.assert_close(out, pts + torch.tensor([0.1, -0.2], dtype=dtype))


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_with_affine_h_equals_affine(align_corners, device, dtype, atol):
    affine = random_theta(stn.Affine(), 3, dtype, device, scale=0.5)
    homography = torch.cat([affine, torch.zeros(3, 2, dtype=dtype, device=device)], 1)
    torch.testing.assert_close(
        stn.Projective().grid(homography, (6, 4), align_corners),
        stn.Affine().grid(affine, (6, 4), align_corners),
        atol=atol,
        rtol=0,
    )


def test_projective_closed_form(dtype):
    h = torch.tensor([[1.1, 0.2, 0.1, -0.1, 0.9, 0.05, 0.3, -0.2]], dtype=dtype)
    grid = stn.Projective().grid(h, (3, 4))
    base = stn.base_grid((3, 4), dtype=dtype)
    x, y = base[:, 0], base[:, 1]
    w = 0.3 * x - 0.2 * y + 1
    expected = torch.stack([(1.1 * x + 0.2 * y + 0.1) / w, (-0.1 * x + 0.9 * y + 0.05) / w], -1)
    torch.testing.assert_close(grid.reshape(-1, 2), expected)


def test_projective_guard_keeps_grid_and_gradient_finite():
    # w = x + 1 is exactly 0 on the left edge with align_corners=True
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]], requires_grad=True)
    grid = stn.Projective().grid(h, (4, 5), align_corners=True)
    assert torch.isfinite(grid).all()
    assert grid[0, :, 0, 0].abs().min() >= 1e5  # the horizon lands far outside [-1, 1]
    out = stn.sample(torch.rand(1, 1, 4, 5), grid, align_corners=True)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_projective_guard_keeps_half_precision_grids_finite(dtype):
    """w = 1 + 8x is 0 at a pixel centre of an 8-wide image: p / eps = (1/8) / 1e-6 overflowed
    float16 (max 65504), 16 infinite grid values; they are computed in float32 and clamped."""
    transform = stn.Projective()
    h = transform.identity(1).index_fill(1, torch.tensor([6]), 8.0).to(dtype).requires_grad_()
    grid = transform.grid(h, (8, 8))
    points = transform.transform_points(h, stn.base_grid((8, 8), dtype=dtype)[None])
    assert grid.dtype == dtype and torch.isfinite(grid).all() and torch.isfinite(points).all()
    assert grid.abs().max() == torch.finfo(dtype).max or dtype == torch.bfloat16  # (bfloat16 holds 1.25e5)
    torch.testing.assert_close(grid.flatten(1, 2), points, atol=0, rtol=0)
    wide = transform.grid(h.detach().float(), (8, 8))  # the same points where float16 holds them
    held = wide.abs() < torch.finfo(dtype).max
    torch.testing.assert_close(grid[held].float(), wide[held], atol=0, rtol=2 ** -7)
    grid.float().sum().backward()
    assert torch.isfinite(h.grad).all()


def _projective_grid_both_ways(transform, h, size, align_corners, monkeypatch):
    """The grid and its gradient wrt ``h`` from the closed-form Function and from the plain expression."""
    import torchstn.transforms._base as base

    results = []
    for eager in (True, False):  # False: the expression tracers and exporters get
        with monkeypatch.context() as m:
            m.setattr(base, "eager_tensors", lambda *tensors: eager)
            p = h.detach().clone().requires_grad_()
            grid = transform.grid(p, size, align_corners)
            grad_out = torch.randn(grid.shape, generator=torch.Generator().manual_seed(5), dtype=grid.dtype)
            (grad,) = torch.autograd.grad(grid, p, grad_out)
            results.append((grid.detach(), grad))
    return results


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("eps", [1e-6, 0.3, 1.0])
def test_projective_closed_form_backward_equals_autograd(eps, align_corners, dtype, monkeypatch):
    # eps = 0.3: many points inside the guard; eps = 1.0 with h31 = h32 = 0 below: |w| == eps exactly,
    # where the guard is not active and w keeps its gradient
    transform = stn.Projective(eps=eps)
    h = random_theta(transform, 3, dtype, "cpu", scale=0.2)
    h[:, 6:] = torch.tensor([[-1.1, 0.2], [0.3, 1.0], [0.0, 0.0]], dtype=dtype)
    if eps == 0.3:
        w = 1 + stn.base_grid((5, 6), align_corners, dtype=dtype) @ h[:2, 6:].T
        assert ((w.abs() < eps).sum(0) > 0).all(), "the guard must be active in the first two samples"
    (grid, grad), (grid_plain, grad_plain) = _projective_grid_both_ways(transform, h, (5, 6), align_corners, monkeypatch)
    assert torch.equal(grid, grid_plain)  # the same forward, bit for bit
    torch.testing.assert_close(grad, grad_plain, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)


def test_projective_guard_signs_match_plain_expression(monkeypatch):
    # w = 1 - x: 0 exactly at x = 1 (counts as positive), negative beyond, inside the guard near it
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0]], dtype=torch.float64)
    transform = stn.Projective(eps=0.2)
    (grid, grad), (grid_plain, grad_plain) = _projective_grid_both_ways(transform, h, (3, 9), True, monkeypatch)
    assert torch.equal(grid, grid_plain)
    assert torch.equal(grid[0, 0, -1], torch.tensor([1 / 0.2, -1 / 0.2], dtype=torch.float64))
    torch.testing.assert_close(grad, grad_plain, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("align_corners", [False, True])
def test_projective_gradcheck_inside_the_guard(align_corners):
    transform = stn.Projective(eps=0.3)
    h = random_theta(transform, 2, torch.float64, "cpu", scale=0.2)
    h[:, 6:] = torch.tensor([[-1.05, 0.12], [0.3, 0.9]], dtype=torch.float64)
    h.requires_grad_()
    w = 1 + stn.base_grid((4, 5), align_corners, dtype=torch.float64) @ h[:, 6:].detach().T
    assert (w.abs() < transform.eps).any() and (w.abs() >= transform.eps).any()
    assert torch.autograd.gradcheck(lambda p: transform.grid(p, (4, 5), align_corners), (h,), eps=1e-7, atol=1e-6)


def test_tps_identity_is_identity_grid(dtype, atol):
    tps = stn.ThinPlateSpline()
    grid = tps.grid(tps.identity(2, dtype=dtype), (7, 9))
    torch.testing.assert_close(grid, stn.Affine().grid(stn.Affine().identity(2, dtype=dtype), (7, 9)), atol=atol, rtol=0)


@pytest.mark.parametrize("control", [(4, 4), (3, 5)])
def test_tps_maps_control_points_to_targets(control, dtype):
    tps = stn.ThinPlateSpline(control=control)
    params = random_theta(tps, 3, dtype, "cpu", scale=0.2)
    control_points = tps.control_points.to(dtype).expand(3, -1, -1)
    mapped = tps.transform_points(params, control_points)
    torch.testing.assert_close(mapped, params.view(3, -1, 2), atol=1e-5, rtol=0)


def test_tps_control_points_land_on_grid_pixels():
    # with align_corners=True and a 4x4 control grid, a 7x7 output has pixels on the control points
    tps = stn.ThinPlateSpline()
    params = random_theta(tps, 2, torch.float64, "cpu", scale=0.2)
    grid = tps.grid(params, (7, 7), align_corners=True)
    torch.testing.assert_close(grid[:, ::2, ::2].reshape(2, -1, 2), params.view(2, -1, 2), atol=1e-10, rtol=0)


@pytest.mark.parametrize("regularization", [0.0, 0.1])
def test_affine_only_tps_equals_affine_grid(regularization, dtype, atol):
    tps = stn.ThinPlateSpline(regularization=regularization)
    affine = random_theta(stn.Affine(), 2, dtype, "cpu", scale=0.3)
    targets = stn.Affine().transform_points(affine, tps.control_points.to(dtype).expand(2, -1, -1))
    torch.testing.assert_close(
        tps.grid(targets.reshape(2, -1), (6, 8)), stn.Affine().grid(affine, (6, 8)), atol=max(atol, 1e-6), rtol=0
    )


def test_tps_regularization_smooths_instead_of_interpolating():
    tps = stn.ThinPlateSpline(regularization=1.0)
    params = random_theta(tps, 1, torch.float64, "cpu", scale=0.2)
    mapped = tps.transform_points(params, tps.control_points.expand(1, -1, -1))
    assert (mapped - params.view(1, -1, 2)).abs().max() > 1e-3


def test_tps_explicit_control_points():
    points = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [0.0, 1.0], [0.2, 0.1]])
    tps = stn.ThinPlateSpline(control=points)
    assert tps.num_params == 8
    params = tps.identity(1) + 0.1
    torch.testing.assert_close(tps.transform_points(params, points[None]), params.view(1, 4, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "family", [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.Affine3D()],
    ids=lambda t: t.name,
)
def test_compose_inverse_round_trip(family, dtype):
    p = random_theta(family, 4, dtype, "cpu", scale=0.2)
    identity = family.identity(4, dtype=dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(family.compose(p, family.inverse(p)), identity, atol=atol, rtol=0)
    torch.testing.assert_close(family.compose(family.inverse(p), p), identity, atol=atol, rtol=0)
    torch.testing.assert_close(family.inverse(family.inverse(p)), p, atol=atol, rtol=0)


def test_inverse_names_a_singular_sample_and_compose_mixed_dtypes():
    """A singular matrix has no inverse: a ValueError naming the sample (torch.linalg.inv's
    own error named neither the argument nor, as a bare LinAlgError, the kind of mistake);
    NaN parameters give NaN. compose of float32 and float64 parameters: a TypeError naming
    both (torch's matmul said "expected scalar type Float but found Double")."""
    family = stn.Affine()
    params = family.identity(3)
    params[2] = torch.tensor([1.0, 2.0, 0.0, 2.0, 4.0, 0.0])  # rank 1
    with pytest.raises(ValueError, match="params: the matrix of sample 2 is singular"):
        family.inverse(params)
    assert family.inverse(torch.full((1, 6), float("nan"))).isnan().all()
    with pytest.raises(TypeError, match="a and b must have the same dtype and device.*float32.*float64"):
        family.compose(family.identity(2), family.identity(2, dtype=torch.float64))



@pytest.mark.parametrize(
    "family", [stn.Similarity(), stn.Affine(), stn.Projective(), stn.Affine3D()], ids=lambda t: t.name
)
def test_inverse_under_autocast_is_the_inverse_in_the_parameters_precision(family):
    """Under torch.autocast the residual check ran in bfloat16 and called mild, well-conditioned
    warps singular ("the matrix of sample 0 is singular"); compose already turned autocast off."""
    p = family.identity(1) + 0.1 * torch.arange(1, family.num_params + 1) / family.num_params
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inverse = family.inverse(p)
    assert inverse.dtype == torch.float32 and torch.equal(inverse, family.inverse(p))

@pytest.mark.parametrize("family", [stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective()], ids=lambda t: t.name)
def test_compose_is_matrix_product_and_warp_order(family):
    a = random_theta(family, 2, torch.float64, "cpu", scale=0.2)
    b = random_theta(family, 2, torch.float64, "cpu", scale=0.3).flip(0)
    product = family.matrix(a) @ family.matrix(b)
    torch.testing.assert_close(family.matrix(family.compose(a, b)), product / product[:, 2:, 2:])
    # warping by compose(a, b) reads the input at M_a M_b g: the points of a applied after those of b
    pts = torch.rand(2, 10, 2, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(
        family.transform_points(family.compose(a, b), pts), family.transform_points(a, family.transform_points(b, pts))
    )


@pytest.mark.parametrize("family", [stn.Similarity(), stn.Affine(), stn.Projective()], ids=lambda t: t.name)
def test_warp_then_inverse_returns_the_interior(family):
    # a smooth image, so that two bilinear resamplings differ from it by O(h^2) only
    pts = stn.base_grid((64, 64), dtype=torch.float64)
    image = torch.sin(3 * pts[:, 0]) * torch.cos(2 * pts[:, 1]) + pts[:, 1]
    x = image.reshape(1, 1, 64, 64).expand(2, 3, -1, -1)
    p = random_theta(family, 2, torch.float64, "cpu", scale=0.05)
    back = stn.warp(stn.warp(x, p, family), family.inverse(p), family)
    # the outer ring may hold padding; the interior is the input up to interpolation error
    inner = (slice(None), slice(None), slice(12, -12), slice(12, -12))
    assert (back[inner] - x[inner]).abs().max() < 5e-3
    # and the inverse is needed: warping by p twice does not come back
    twice = stn.warp(stn.warp(x, p, family), p, family)
    assert (twice[inner] - x[inner]).abs().max() > 5e-2


def test_identity_shapes_and_dtype():
    assert stn.Affine().identity().shape == (6,)
    p = stn.ThinPlateSpline().identity(5, dtype=torch.float64)
    assert p.shape == (5, 32) and p.dtype == torch.float64
    p[0, 0] = 3.0  # identity(batch) is a fresh tensor, not a view of a shared one
    assert stn.ThinPlateSpline().identity(5)[1, 0] != 3.0


def test_get_transform_by_name():
    assert isinstance(stn.get_transform("proj"), stn.Projective)
    assert stn.get_transform("tps", control=(3, 3)).num_params == 18
    with pytest.raises(ValueError, match="transform must be one of"):
        stn.get_transform("homography2")
    tps = stn.ThinPlateSpline()
    assert stn.get_transform(tps) is tps
    with pytest.raises(TypeError, match=r"keyword arguments \(control\) are for a transform named by a string"):
        stn.get_transform(tps, control=(3, 3))  # (once returned the 4x4 spline, the control ignored)


def test_a_transform_class_is_refused_saying_to_pass_an_instance():
    """stn.warp(x, p, stn.Affine) said "transform must be a Transform or a name, got ABCMeta"."""
    with pytest.raises(TypeError, match=r"got the class Affine: pass an instance, Affine\(\)"):
        stn.warp(torch.rand(1, 1, 4, 4), torch.zeros(1, 6), stn.Affine)


def test_identity_takes_an_integer_like_batch_as_sizes_do():
    """identity(batch=np.int64(2)) raised TypeError although sizes take numpy ints; bools and
    floats are still refused."""
    for batch in (np.int64(2), torch.tensor(2)):
        assert torch.equal(stn.Affine().identity(batch), stn.Affine().identity(2))
    for batch in (True, np.bool_(True), 2.0, np.float64(2.0), torch.tensor(2.0)):
        with pytest.raises(TypeError, match="batch must be an int"):
            stn.Affine().identity(batch)
    with pytest.raises(ValueError, match="batch must be >= 0"):
        stn.Affine().identity(np.int64(-1))


MATRIX_FAMILIES = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.Affine3D(),
                   stn.Affine1D()]


@pytest.mark.parametrize("family", MATRIX_FAMILIES, ids=lambda t: t.name)
def test_affine_rows_are_the_first_rows_of_the_matrix(family, dtype):
    params = random_theta(family, 3, dtype, "cpu", scale=0.4)
    rows = family.affine_rows(params)
    assert rows.shape == (3, family.ndim, family.ndim + 1) and rows.dtype == dtype
    torch.testing.assert_close(rows, family.matrix(params)[:, : family.ndim], rtol=0, atol=0)
    torch.testing.assert_close(family.affine_rows(params, check=False), rows, rtol=0, atol=0)
    torch.testing.assert_close(family.matrix(params, check=False), family.matrix(params), rtol=0, atol=0)


@pytest.mark.parametrize("family", [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine()],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_rows_are_affine_grid_theta(family, align_corners):
    params = random_theta(family, 2, torch.float64, "cpu", scale=0.4)
    ref = F.affine_grid(family.affine_rows(params), [2, 1, 5, 6], align_corners=align_corners)
    torch.testing.assert_close(family.grid(params, (5, 6), align_corners), ref)


@pytest.mark.parametrize("transform", FAMILIES_2D, ids=lambda t: t.name)
def test_unchecked_grid_equals_checked(transform):
    params = random_theta(transform, 2, torch.float32, "cpu", scale=0.15)
    torch.testing.assert_close(transform.grid(params, (4, 5), True, check=False), transform.grid(params, (4, 5), True),
                               rtol=0, atol=0)


@pytest.mark.parametrize("transform", [stn.Affine(), stn.ThinPlateSpline(), stn.CPAB1D(4)], ids=lambda t: t.name)
@pytest.mark.parametrize("value", ["False", 0, None])
def test_grid_refuses_a_non_bool_align_corners(transform, value):
    """As warp and sample do: "False" from a config file once gave the align_corners=True grid."""
    size = (5,) if transform.ndim == 1 else (4, 5)
    with pytest.raises(TypeError, match="align_corners must be a bool"):
        transform.grid(transform.identity(1), size, align_corners=value)
    with pytest.raises(TypeError, match="align_corners must be a bool"):
        stn.transforms.base_grid(size, value)


def test_checked_methods_name_the_bad_argument():
    with pytest.raises(ValueError, match=r"params for Affine must have shape \(B, 6\)"):
        stn.Affine().affine_rows(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="params must have a floating-point dtype"):
        stn.Projective().matrix(torch.zeros(2, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="size must be positive"):
        stn.Affine().grid(stn.Affine().identity(1), (0, 3))
    with pytest.raises(ValueError, match="batch must be >= 0, got -1"):
        stn.Affine().identity(-1)
    with pytest.raises(TypeError, match="batch must be an int, got float"):
        stn.Affine().identity(2.0)
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype, got torch.int64"):
        stn.Affine().identity(2, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype such as torch.float32, got str"):
        stn.Affine().identity(2, dtype="float32")  # (torch's factories refuse a name too; it failed in an attribute)
    with pytest.raises(TypeError, match="eps must be a number, got str"):
        stn.Projective(eps="1")


class _HalfTranslation(stn.Translation):
    """Translation in half units (t = p / 2): a user's subclass overriding ``_matrix`` alone."""

    def _matrix(self, params):
        return super()._matrix(params / 2)


class _MirroredAffine(stn.Affine):
    """Affine whose x is mirrored: a subclass overriding ``_matrix`` alone."""

    def _matrix(self, params):
        return super()._matrix(params) @ torch.diag(params.new_tensor([-1.0, 1.0, 1.0]))


class _ScaledRows3D(stn.Affine3D):
    """Affine3D whose rows are halved: a subclass overriding ``_rows`` alone."""

    def _rows(self, params):
        return super()._rows(params) / 2


@pytest.mark.parametrize("backend", [None, "fused", "torch", "reference"])
@pytest.mark.parametrize("family", [_HalfTranslation(), _MirroredAffine(), _ScaledRows3D()], ids=lambda t: type(t).__name__)
def test_a_subclass_that_redefines_its_matrix_is_warped_and_mapped_by_it(family, backend):
    """A family's shortcuts from its parameters (its rows, its point map) stood for its own
    matrix: a subclass with another matrix was warped with its parent's rows by the fused
    kernel (0.93 off on a helper's half-unit translation), and mapped its points with its
    parent's map. Every path now reads the subclass's matrix (or, for rows, the matrix of them)."""
    spatial = (5, 6, 7) if family.ndim == 3 else (8, 9)
    x = torch.rand(2, 2, *spatial, dtype=torch.float64)
    params = random_theta(family, 2, torch.float64, "cpu", scale=0.2)
    matrix = family.matrix(params)
    grid = F.affine_grid(matrix[:, : family.ndim], (2, 2, *spatial), align_corners=False)
    expected = F.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(stn.warp(x, params, family, backend=backend), expected)
    torch.testing.assert_close(family.grid(params, spatial), grid)
    torch.testing.assert_close(family.affine_rows(params), matrix[:, : family.ndim])
    points = torch.rand(2, 5, family.ndim, dtype=torch.float64) * 2 - 1
    homogeneous = torch.cat([points, torch.ones_like(points[..., :1])], -1)
    torch.testing.assert_close(family.transform_points(params, points), (homogeneous @ matrix.transpose(1, 2))[..., :-1])


@pytest.mark.parametrize("family", [_HalfTranslation(), _MirroredAffine(), _ScaledRows3D()], ids=lambda t: type(t).__name__)
def test_a_subclass_that_redefines_its_matrix_alone_cannot_compose_with_its_parents_parameters(family):
    """compose, inverse and params_from_matrix read a matrix back into parameters with the
    family's _from_matrix: a subclass with another matrix but its parent's _from_matrix got
    its parent's parameters back (a half-unit translation composed to half of a + b). Without
    its own _from_matrix it is told to define one, where its parent's does not invert its matrix
    (a subclass that only computes the same matrix otherwise, _WrongGradient, composes)."""
    params = random_theta(family, 2, torch.float64, "cpu", scale=0.2)
    name = type(family).__name__
    for call in (lambda: family.compose(params, params), lambda: family.inverse(params),
                 lambda: family.params_from_matrix(family.matrix(params))):
        with pytest.raises(NotImplementedError, match=f"{name} redefines its matrix .* but not _from_matrix"):
            call()
    same = _WrongGradient()
    a, b = random_theta(same, 2, torch.float64, "cpu", scale=0.2), random_theta(same, 2, torch.float64, "cpu", scale=0.3)
    torch.testing.assert_close(same.compose(a, b), stn.Affine().compose(a, b))


class _ScaledShift(stn.Translation):
    """A translation by ``strength`` times θ: the parent's _from_matrix inverts it at strength 1 only."""

    def __init__(self, strength: float = 1.0) -> None:
        self.strength = strength

    def _matrix(self, params):
        return super()._matrix(self.strength * params)


def test_whether_the_parent_inverts_the_matrix_follows_the_attributes_and_every_tracer():
    """Whether the parent's _from_matrix inverts a subclass's matrix was decided once per instance:
    after its attribute changed, the stored yes gave compose half of a + b (and deepcopy kept it);
    under torch.compile and torch.func the check was skipped, the same wrong compose where eager
    raised. Each state of the attributes is tried, whatever traces the call."""
    a = torch.tensor([[0.2, 0.1]], dtype=torch.float64)
    b = torch.tensor([[0.1, -0.3]], dtype=torch.float64)
    family = _ScaledShift(1.0)
    torch.testing.assert_close(family.compose(a, b), a + b)
    family.strength = 0.5
    refused = "_ScaledShift redefines its matrix .* but not _from_matrix"
    for call in (lambda: family.compose(a, b), lambda: family.inverse(a), lambda: copy.deepcopy(family).compose(a, b),
                 lambda: torch.func.vmap(lambda p, q: family.compose(p[None], q[None])[0])(a, b)):
        with pytest.raises(NotImplementedError, match=refused):
            call()
    with pytest.raises(Exception, match=refused) as raised:  # (dynamo wraps it: the cause is ours)
        torch.compile(lambda p, q: family.compose(p, q), fullgraph=True)(a, b)
    assert raised.type is NotImplementedError or "define _from_matrix" in repr(raised.value.__cause__)
    family.strength = 1.0
    torch.testing.assert_close(torch.compile(lambda p, q: family.compose(p, q), fullgraph=True)(a, b), a + b)


def test_the_parent_inverse_check_is_not_recorded_by_a_tracer_nor_reads_a_tensor_attribute():
    """Its first run inside torch.jit.trace took the tracer's variable names (the trace's sanity
    check, which traces again, found another graph), and keying the answer by a tensor
    attribute's values read it under make_fx's fake mode (and copied it every call)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    a = torch.tensor([[0.2, 0.1]])
    b = torch.tensor([[0.1, -0.3]])
    traced = torch.jit.trace(lambda p, q: _ScaledShift(1.0).compose(p, q), (a, b))  # (check_trace: traced twice)
    torch.testing.assert_close(traced(a, b), a + b)
    family = _ScaledShift(1.0)
    family.unused = torch.ones(3)  # (a tensor the matrix does not read)
    for mode in ("fake", "symbolic"):
        graph = make_fx(lambda p, q: family.compose(p, q), tracing_mode=mode)(a, b)
        torch.testing.assert_close(graph(a, b), a + b)


def test_a_users_identity_is_made_on_the_cpu_and_checked_for_its_shape():
    """A user's _identity made with the default device could not be built under
    torch.device("meta") (no values to copy); one of shape (1, P) passed check_transform and then
    broke the localisation net's bias with a broadcast error."""

    class ScaleXY(stn.MatrixTransform):
        num_params = 2

        def _identity(self):
            return torch.ones(2, dtype=torch.float64)

        def _matrix(self, params):
            return torch.diag_embed(torch.cat([params, params.new_ones(params.shape[0], 1)], 1))

        def _from_matrix(self, matrix):
            return torch.diagonal(matrix, dim1=1, dim2=2)[:, :2] / matrix[:, 2:, 2]

    with torch.device("meta"):
        st = stn.SpatialTransformer(ScaleXY(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8)))
        assert ScaleXY().identity().device.type == "meta"
    assert st.to_empty(device="cpu")(torch.rand(1, 1, 4, 4)).shape == (1, 1, 4, 4)

    class Wide(ScaleXY):
        def _identity(self):
            return torch.ones(1, 2, dtype=torch.float64)

    wanted = r"_identity\(\) must return a tensor of shape \(2,\) .* got shape \(1, 2\)"
    with pytest.raises(AssertionError, match=wanted):
        check_transform(Wide(), torch.tensor([[0.8, 1.1]]))


def test_check_transform_sees_an_in_place_op_that_keeps_the_values():
    """A _map that clamped θ in place (values unchanged) passed; every backward through it then
    failed. The check compares the version counter as check_sampler does."""

    class Barrel(stn.Transform):
        num_params = 1

        def _identity(self):
            return torch.zeros(1, dtype=torch.float64)

        def _map(self, params, points):
            params.clamp_(-0.5, 0.5)
            return points * (1 + params[:, None, :] * (points**2).sum(-1, keepdim=True))

    with pytest.raises(AssertionError, match="modified params in place"):
        check_transform(Barrel(), torch.tensor([[0.2], [-0.1]]), gradcheck=False)


def test_check_transform_checks_params_from_matrix_compose_and_inverse():
    class WrongFromMatrix(stn.Translation):
        def _matrix(self, params):
            return super()._matrix(params / 2)

        def _from_matrix(self, matrix):
            return matrix[:, :2, 2]  # the parent's: half the parameters it should give

    class Halved(WrongFromMatrix):
        def _from_matrix(self, matrix):
            return 2 * matrix[:, :2, 2]

    params = torch.tensor([[0.2, -0.4], [0.1, 0.3]])
    with pytest.raises(AssertionError, match="params_from_matrix"):
        check_transform(WrongFromMatrix(), params)
    check_transform(Halved(), params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_refuses_a_matrix_singular_to_working_precision(dtype):
    """inv_ex reported only an exact zero pivot: rank-deficient matrices whose rounding
    missed it were "inverted" to 1e8-1e16 entries (compose(p, inverse(p)) 1 to 16 off the
    identity). A matrix whose inverse does not give the identity back is refused as singular."""
    affine = stn.Affine()
    params = affine.identity(2, dtype=dtype)
    params[1] = torch.tensor([1 / 3, 1.0, 0.0, 1.0, 3.0, 0.0], dtype=dtype)  # rank 1, up to rounding
    with pytest.raises(ValueError, match="params: the matrix of sample 1 is singular"):
        affine.inverse(params)
    volume = stn.Affine3D()
    rank2 = torch.tensor([[1 / 3, 1.0, 0.5, 0.0, 1.0, 3.0, 1.5, 0.0, 0.2, 0.7, 0.1, 0.0]], dtype=dtype)
    with pytest.raises(ValueError, match="params: the matrix of sample 0 is singular"):
        volume.inverse(rank2)
    # ill-conditioned but invertible at this precision: inverted
    near = affine.identity(1, dtype=dtype)
    near[0, 4] = 1e-2
    torch.testing.assert_close(affine.compose(near, affine.inverse(near)), affine.identity(1, dtype=dtype))


@pytest.mark.parametrize("family", [stn.Affine(), stn.Affine3D(), stn.Affine1D(), stn.Projective()], ids=lambda t: t.name)
def test_inverse_of_non_finite_params_is_nan(family):
    """One infinite entry gave a finite degenerate inverse for some entries (an Affine with
    inf in θ[0] inverted to a map that sends every point to x = 0), NaN for others and a
    "singular" error for a triangular matrix of determinant 1: NaN in, NaN out."""
    for k in range(family.num_params):
        params = family.identity(2, dtype=torch.float64)
        params[0, k] = float("inf")
        inverse = family.inverse(params)
        assert inverse[0].isnan().all(), k
        torch.testing.assert_close(inverse[1], family.identity(1, dtype=torch.float64)[0])


def test_similarity_compose_has_finite_gradients_at_zero_scale():
    """hypot and atan2 at (0, 0) made every gradient of compose NaN where the product's scale
    is 0 (the translation's too, which is t_a + s_a R_a t_b there)."""
    similarity = stn.Similarity()
    a = torch.tensor([[0.0, 0.3, 0.1, 0.2]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(similarity.compose(a, b)[:, 2:].sum(), (a, b))
    expected = torch.autograd.grad((similarity.matrix(a) @ similarity.matrix(b))[:, :2, 2].sum(), (a, b))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "family", [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(), stn.Affine3D(),
               stn.Affine1D(), stn.ThinPlateSpline((2, 2)), stn.CPAB1D(4)], ids=lambda t: t.name)
def test_transform_points_refuses_mixed_dtypes_naming_both(family):
    """Some families promoted, the others failed in torch's matmul with "expected scalar type
    Float but found Double", naming neither argument: a TypeError naming both, as compose."""
    params = family.identity(1, dtype=torch.float64)
    points = torch.zeros(1, 3, family.ndim)
    for p, q in ((params, points), (params.float(), points.double())):
        with pytest.raises(TypeError, match="params and points must have the same dtype"):
            family.transform_points(p, q)


def test_base_grid_checks_its_size_and_dtype():
    """base_grid truncated 2.5 to 2, took 0 (an empty grid) and an integer dtype (a grid of
    zeros, cached), and blamed int() for a string: it checks as Transform.grid does."""
    for size, error in (((2.5, 3), ValueError), ((0, 3), ValueError), ((-1, 3), ValueError), ("ab", TypeError),
                        ((1, 2, 3, 4), ValueError)):
        with pytest.raises(error, match="size"):
            stn.base_grid(size)
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype, got torch.int64"):
        stn.base_grid((2, 3), dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype such as torch.float32, got str"):
        stn.base_grid((2, 3), dtype="float32")
    assert stn.base_grid((2, 3)).shape == (6, 2) and stn.base_grid((np.int64(2), 3)).shape == (6, 2)


def test_base_grid_checks_its_size_at_every_call_and_0d_tensor_sizes():
    """The size was checked only when a grid was first built, and never for 0-d tensors:
    (2.0, 3) passed once (2, 3) was cached, (True, 3) once (1, 3) was, and (tensor(2.5), 2)
    silently gave a grid of 3 rows. Integer 0-d tensors, as F.affine_grid takes them, pass."""
    stn.transforms.clear_caches()
    stn.base_grid((2, 3)), stn.base_grid((1, 3))
    for size in ((2.0, 3), (True, 3), (torch.tensor(2.5), 2), (torch.tensor(0), 2), (torch.tensor(-3), 2)):
        with pytest.raises(ValueError, match="size must be"):
            stn.base_grid(size)
    assert torch.equal(stn.base_grid((torch.tensor(2), 3)), stn.base_grid((2, 3)))


def test_a_grandchild_subclass_and_out_of_family_matrices():
    """A subclass of a subclass with its own matrix recursed forever (its parent's _from_matrix
    was the checking wrapper itself); a subclass that only computes its parent's matrix
    otherwise refused to project a matrix outside the family, which params_from_matrix does."""
    class Child(stn.Translation):
        def _matrix(self, params):
            return super()._matrix(params)

    class Grandchild(Child):
        def _matrix(self, params):
            return super()._matrix(params) * 1.0

    p = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    for family in (Child(), Grandchild()):
        torch.testing.assert_close(family.inverse(p), -p)
        affine = stn.Affine().matrix(torch.tensor([[1.1, 0.2, 0.2, 0.0, 0.9, -0.3]], dtype=torch.float64))
        torch.testing.assert_close(family.params_from_matrix(affine), stn.Translation().params_from_matrix(affine))


def test_inverse_does_not_count_the_translation_s_units():
    """The residual was taken on the whole homogeneous matrix, so a float32 rotation with a
    translation of 1e4 was refused as singular; the linear part decides for affine families."""
    angle = torch.tensor(0.3)
    params = torch.tensor([[angle.cos(), -angle.sin(), 1e4, angle.sin(), angle.cos(), -1e4]])
    torch.testing.assert_close(stn.Affine().compose(params, stn.Affine().inverse(params)), stn.Affine().identity(1),
                               atol=2e-3, rtol=0)


def test_base_grid_names_a_size_that_is_not_a_sequence():
    with pytest.raises(TypeError, match="size must be a sequence"):
        stn.base_grid(28)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_base_grid_holds_the_exact_pixel_centres_rounded_once(dtype, align_corners):
    """(2 i + 1 - n) / n (/ (n - 1) with align_corners) rounded once: torch.linspace was up to
    one unit in the last place off (24,637 of the float64 points of sizes 1-399), which moved
    nearest-mode ties by a pixel, and the fused kernel's copy of it was off elsewhere."""
    from fractions import Fraction

    for n in range(1, 130):
        span = max(n - 1, 1) if align_corners else n
        exact = torch.tensor([float(Fraction(2 * i + 1 - n, span)) for i in range(n)], dtype=torch.float64).to(dtype)
        assert torch.equal(stn.base_grid((n,), align_corners, dtype=dtype)[:, 0], exact), n


@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_rounds_half_way_points_half_to_even_on_every_backend(dtype, backend):
    """θ = 2 I and a downsampling by 2 at the identity put points exactly half-way between
    pixels: every backend reads the pixel that exact arithmetic and half-to-even rounding read
    (F.grid_sample of the exact grid; with 128 pixels every coordinate is a dyadic fraction).
    The fused kernel in float64 read 615 of 16,384 pixels one column off."""
    x = torch.rand(1, 2, 128, 128, dtype=dtype, generator=torch.Generator().manual_seed(0))

    def exact_grid(n: int, scale: float) -> torch.Tensor:  # (dyadic fractions: exact in float32 too)
        axis = torch.tensor([scale * (2 * i + 1 - n) / n for i in range(n)], dtype=dtype)
        return torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)[None]

    for theta, n, scale in ((torch.tensor([[2.0, 0, 0, 0, 2, 0]]), 128, 2.0), (stn.Affine().identity(1), 64, 1.0)):
        expected = F.grid_sample(x, exact_grid(n, scale), mode="nearest", align_corners=False)
        out = stn.warp(x, theta.to(dtype), "affine", (n, n), mode="nearest", backend=backend)
        assert torch.equal(out, expected)


def test_identity_and_base_grid_follow_the_default_device_and_inverse_runs_on_meta():
    """identity() and base_grid() made CPU tensors under torch's default device (torch.zeros
    follows it): with CUDA the default, warp(x, t.identity(B), t) refused θ on another device.
    inverse() of a meta tensor ran its singularity check, which needs values."""
    with torch.device("meta"):
        assert stn.Affine().identity(2).device.type == "meta"
        assert stn.base_grid((3, 4)).device.type == "meta"
        assert torch.zeros(1).device.type == "meta"
    assert stn.Affine().identity(2).device.type == "cpu" and stn.base_grid((3, 4)).device.type == "cpu"
    for family in (stn.Translation(), stn.Affine(), stn.Projective(), stn.Affine3D()):
        params = family.identity(2, device="meta")
        assert family.inverse(params).shape == params.shape and family.inverse(params).is_meta


def test_identity_and_base_grid_compile_into_one_graph():
    """torch.get_default_device, which they asked for the default device, breaks a
    torch.compile graph (an error with fullgraph=True)."""
    compiled = torch.compile(lambda x: x + stn.Affine().identity(2) + stn.base_grid((2, 3)).sum(), backend="eager",
                             fullgraph=True)
    torch.testing.assert_close(compiled(torch.zeros(2, 6)), stn.Affine().identity(2))


def test_matrix_grid_refuses_a_size_it_would_have_truncated_and_a_matrix_of_another_rank():
    """A float or bool size was truncated (5.7 -> 5, True -> 1) and a size of the wrong length
    ended in a matmul's shape error; F.affine_grid refuses both."""
    from torchstn.transforms import matrix_grid

    rows = stn.Affine().identity(2).view(2, 2, 3)
    assert matrix_grid(rows, [5, 3]).shape == (2, 5, 3, 2)  # lists, torch.Size and numpy ints still pass
    assert matrix_grid(rows, torch.Size([5, 3])).shape == (2, 5, 3, 2)
    for size in [(5.7, 3), (True, 3), ("5", 3), (0, 3)]:
        with pytest.raises(ValueError, match="size must be"):
            matrix_grid(rows, size)
    for size in [(5,), (5, 3, 2)]:
        with pytest.raises(ValueError, match=r"matrix must have shape \(B, \d, \d\) or"):
            matrix_grid(rows, size)


def test_matrix_grid_names_a_bad_matrix_or_eps():
    """Affine rows with eps failed in a matmul ("mat1 and mat2 shapes cannot be multiplied"), a
    list on .dim() (AttributeError), an integer matrix in the matmul; eps = 0 gave 16 non-finite
    points and eps < 0 was taken."""
    from torchstn.transforms import matrix_grid

    homography = torch.eye(3)[None].clone()
    homography[0, 2, 0] = 8.0  # w = 1 + 8x is 0 at a pixel centre
    with pytest.raises(ValueError, match=r"matrix must have shape \(B, 3, 3\) with eps .* got \(1, 2, 3\)"):
        matrix_grid(homography[:, :2], (4, 4), eps=1e-6)
    with pytest.raises(TypeError, match="matrix must be a torch.Tensor, got list"):
        matrix_grid([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], (4, 4))
    with pytest.raises(TypeError, match="matrix must have a floating-point dtype"):
        matrix_grid(torch.eye(2, 3, dtype=torch.int64)[None], (4, 4))
    for eps in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="eps must be"):
            matrix_grid(homography, (8, 8), eps=eps)
    assert torch.isfinite(matrix_grid(homography, (8, 8), eps=1e-6)).all()


@pytest.mark.parametrize("family", ["translation", "attention", "similarity", "affine", "projective", "affine3d"])
def test_params_from_matrix_refuses_a_last_entry_of_0_in_every_family(family):
    """Every family divides the matrix by its last entry (the parameters fix it to 1): where it
    is 0, translation ... affine returned inf or NaN parameters without a word (projective
    already refused). A NaN entry stays NaN."""
    t = stn.get_transform(family)
    m = t.matrix(t.identity(2, dtype=torch.float64))
    m[1, -1, -1] = 0.0
    with pytest.raises(ValueError, match=r"matrix\[1, (\d), \1\] is 0"):
        t.params_from_matrix(m)
    m[1, -1, -1] = float("nan")
    params = t.params_from_matrix(m)
    assert params[1].isnan().any() and torch.equal(params[0], t.identity(1, dtype=torch.float64)[0])


def test_get_transform_names_an_option_its_family_does_not_take():
    """``get_transform("affine", eps=1)`` failed with Python's "Affine() takes no arguments",
    which names neither the option nor what the family takes."""
    with pytest.raises(TypeError, match=r"get_transform\('affine'\): Affine takes no options, got eps"):
        stn.get_transform("affine", eps=1)
    with pytest.raises(TypeError, match=r"ThinPlateSpline takes control, regularization, got contrl"):
        stn.get_transform("tps", contrl=(3, 3))
    assert stn.get_transform("proj", eps=0.1).eps == 0.1


def test_arguments_checked_at_every_call_and_named():
    """The argument fuzz's finds: points on another device than params gave uninitialised memory
    (meta points: a CPU tensor from the matmul); matrix_grid checked align_corners only on a cache
    miss ("False" then gave the True grid); base_grid's homogeneous was never checked ("False" was
    True, a list failed as an unhashable key); check_transform reported a caller's wrong argument as
    the transform's failure."""
    from torchstn.transforms import matrix_grid

    with pytest.raises(ValueError, match=r"points must be on the device of params \(cpu\), got meta"):
        stn.Affine().transform_points(stn.Affine().identity(1), torch.zeros(1, 2, 2, device="meta"))
    m = torch.eye(2, 3)[None]
    matrix_grid(m, (2, 2), align_corners=True)
    with pytest.raises(TypeError, match="align_corners must be a bool, got str"):
        matrix_grid(m, (2, 2), align_corners="False")
    for bad in ("False", [0]):
        with pytest.raises(TypeError, match="homogeneous must be a bool"):
            stn.base_grid((2, 2), homogeneous=bad)
    with pytest.raises(TypeError, match="params must have a floating-point dtype"):
        check_transform(stn.Affine(), stn.Affine().identity(2).long())
    with pytest.raises(TypeError, match="align_corners must be a bool, got NoneType"):
        check_transform(stn.Affine(), stn.Affine().identity(2), align_corners=None)
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got NoneType"):
        stn.testing.check_sampler(stn.sample, stn.reference_sample, None, torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="atol must be >= 0"):
        stn.testing.check_sampler(stn.sample, stn.reference_sample, torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2),
                                  atol=-1.0)
