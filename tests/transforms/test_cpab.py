"""CPAB1D: the closed-form flow against a fine RK4 integration, exact gradients, invertibility, the prior."""

import copy
import math

import pytest
import torch
from torch import nn

import torchstn as stn
from tests._helpers import random_theta
from torchstn.testing import check_transform
from torchstn.transforms._cpab import _constraints

F64 = torch.float64


def _velocity(coefficients: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The piecewise-affine field at ``x`` ``(B, N)`` from the cell coefficients ``(B, K, 2)``, written out."""
    k = coefficients.shape[1]
    cell = ((x + 1) * k / 2).floor().clamp(0, k - 1).long()
    return coefficients[..., 0].gather(1, cell) * x + coefficients[..., 1].gather(1, cell)


def _rk4(coefficients: torch.Tensor, x: torch.Tensor, steps: int = 4000, time: float = 1.0) -> torch.Tensor:
    """The flow for ``time`` by classical RK4 with ``steps`` fixed steps (float64): the independent reference.

    Measured on K = 8, |θ| ~ 1.5: 5.5e-8 from the closed form at 1000 steps, 1.8e-9 at 4000, 5.5e-11 at 16000.
    """
    h = time / steps
    for _ in range(steps):
        k1 = _velocity(coefficients, x)
        k2 = _velocity(coefficients, x + h / 2 * k1)
        k3 = _velocity(coefficients, x + h / 2 * k2)
        k4 = _velocity(coefficients, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def _theta(cpab: stn.CPAB1D, batch: int, scale: float, seed: int = 0, dtype=F64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, cpab.num_params, generator=generator, dtype=F64)).to(dtype)


@pytest.mark.parametrize("cpab", [stn.CPAB1D(8), stn.CPAB1D(5, zero_boundary=False)], ids=repr)
def test_transform_properties(cpab, device, dtype):
    check_transform(cpab, random_theta(cpab, 3, dtype, device, scale=0.8), size=(13,), gradcheck=dtype == F64)


def _compiled_equals_eager(backend: str) -> None:
    cpab = stn.CPAB1D(4)  # the crossing loop unrolls into K - 1 steps: a small K keeps the compile short
    theta = _theta(cpab, 2, 1.5, dtype=torch.float32).requires_grad_()
    eager = cpab.grid(theta, (11,))  # first: fills the cache (a miss under dynamo is a graph break, as for every family)
    (grad,) = torch.autograd.grad(eager.sin().sum(), theta)
    compiled = torch.compile(lambda t: cpab.grid(t, (11,)), fullgraph=True, backend=backend)  # no graph break
    out = compiled(theta)
    torch.testing.assert_close(out, eager, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(out.sin().sum(), theta)[0], grad, atol=1e-5, rtol=0)


def test_dynamo_traces_grid_and_gradient_in_one_graph():
    _compiled_equals_eager("aot_eager")  # dynamo and AOT autograd, without inductor's C++ build (minutes cold here)


@pytest.mark.slow
def test_torch_compile_equals_eager():
    _compiled_equals_eager("inductor")


@pytest.mark.parametrize(("k", "zero_boundary", "p"), [(2, True, 1), (8, True, 7), (1, False, 2), (8, False, 9)])
def test_basis_is_an_orthonormal_basis_of_the_constraints_null_space(k, zero_boundary, p):
    cpab = stn.CPAB1D(k, zero_boundary)
    basis = cpab.basis(dtype=F64)
    constraints = _constraints(k, zero_boundary)
    rank = int(torch.linalg.matrix_rank(constraints)) if len(constraints) else 0  # SVD rank
    assert cpab.num_params == p == 2 * k - rank and basis.shape == (2 * k, p)
    torch.testing.assert_close(basis.T @ basis, torch.eye(p, dtype=F64), atol=1e-14, rtol=0)
    if len(constraints):
        torch.testing.assert_close(constraints @ basis, torch.zeros(len(constraints), p, dtype=F64), atol=1e-14, rtol=0)
    # the float32 copy on the cache is the float64 basis rounded
    torch.testing.assert_close(cpab.basis(dtype=torch.float32), basis.float(), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_boundary_keeps_the_ends_under_steep_fields(dtype):
    """With a zero boundary the ends are at rest exactly, however steep the field: B θ met
    v(-1) = 0 only to rounding (1e-15 in float64), and e^{ta} threw -1 to -2.7 at θ = 40 and
    to -4e101 at θ = 300 (float64); an aligned grid's first sample then read the padding."""
    cpab = stn.CPAB1D(4)
    ends = torch.tensor([[[-1.0], [1.0]]], dtype=dtype)
    for value in (1.0, 40.0, 300.0):
        theta = torch.full((1, 3), value, dtype=dtype)
        assert cpab.velocity(theta, ends).eq(0).all()
        torch.testing.assert_close(cpab.transform_points(theta, ends), ends, atol=0, rtol=0)
        grid = cpab.grid(theta, (9,), align_corners=True)
        assert grid.isfinite().all() and grid.min() >= -1 and grid.max() <= 1
        assert stn.warp(torch.ones(1, 1, 9, dtype=dtype), theta, cpab, align_corners=True).eq(1).all()


def test_velocity_is_continuous_and_zero_at_the_boundary():
    cpab = stn.CPAB1D(6)
    theta = _theta(cpab, 3, 1.0)
    coefficients = cpab.velocity_coefficients(theta)  # (B, K, 2)
    vertices = torch.linspace(-1, 1, 7, dtype=F64)
    left = coefficients[:, :-1, 0] * vertices[1:-1] + coefficients[:, :-1, 1]  # cell j-1 at vertex j
    right = coefficients[:, 1:, 0] * vertices[1:-1] + coefficients[:, 1:, 1]  # cell j at vertex j
    torch.testing.assert_close(left, right, atol=1e-14, rtol=0)
    ends = cpab.velocity(theta, torch.tensor([-1.0, 1.0], dtype=F64).expand(3, 2)[..., None])
    torch.testing.assert_close(ends, torch.zeros(3, 2, 1, dtype=F64), atol=1e-14, rtol=0)
    # the field is the linear interpolation of its vertex values
    values = torch.cat([left.new_zeros(3, 1), left, left.new_zeros(3, 1)], 1)  # (B, K + 1)
    x = torch.rand(3, 50, dtype=F64) * 2 - 1
    cell = ((x + 1) * 3).floor().clamp(0, 5).long()
    w = (x - vertices[cell]) * 3
    expected = (1 - w) * values.gather(1, cell) + w * values.gather(1, cell + 1)
    torch.testing.assert_close(cpab.velocity(theta, x[..., None])[..., 0], expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize(("k", "zero_boundary", "scale"), [(8, True, 1.5), (4, False, 1.0), (16, True, 3.0)])
def test_closed_form_equals_a_fine_numerical_integration(k, zero_boundary, scale):
    cpab = stn.CPAB1D(k, zero_boundary)
    theta = _theta(cpab, 3, scale, seed=k)
    x = torch.linspace(-1.2, 1.2, 61, dtype=F64).expand(3, -1).contiguous()  # also outside [-1, 1]
    ours = cpab.transform_points(theta, x[..., None])[..., 0]
    reference = _rk4(cpab.velocity_coefficients(theta), x)
    torch.testing.assert_close(ours, reference, atol=1e-8, rtol=0)
    # the warps cross cells (the test covers the hitting times), and move points a lot
    cells = lambda y: ((y + 1) * k / 2).floor().clamp(0, k - 1)  # noqa: E731
    assert (cells(ours) != cells(x)).sum() > 20 and (ours - x).abs().max() > 0.1


def test_one_cell_without_a_zero_boundary_is_one_affine_field():
    """K = 1 (accepted without zero_boundary): no edge to cross; once an index error."""
    cpab = stn.CPAB1D(1, zero_boundary=False)
    theta = _theta(cpab, 3, 1.0, seed=1)
    x = torch.linspace(-1.2, 1.2, 61, dtype=F64).expand(3, -1).contiguous()
    ours = cpab.transform_points(theta, x[..., None])[..., 0]
    torch.testing.assert_close(ours, _rk4(cpab.velocity_coefficients(theta), x), atol=1e-8, rtol=0)
    assert cpab.grid(theta, (9,)).shape == (3, 9, 1)


def test_points_stop_at_a_zero_of_the_velocity_and_vertices_are_ordinary_starts():
    # vertex velocities (0, 1, 0, -1, 0): everything flows towards x = 0, where v = 0, and never crosses it
    cpab = stn.CPAB1D(4)
    vertices = torch.linspace(-1, 1, 5, dtype=F64)
    values = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0], dtype=F64)
    slopes = (values[1:] - values[:-1]) / 0.5
    coefficients = torch.stack([slopes, values[:-1] - slopes * vertices[:-1]], 1).reshape(1, 8)
    theta = coefficients @ cpab.basis(dtype=F64)  # A lies in the span: B Bᵀ A = A
    torch.testing.assert_close(cpab.velocity_coefficients(theta).reshape(1, 8), coefficients, atol=1e-14, rtol=0)
    x = torch.cat([vertices, torch.linspace(-0.99, 0.99, 23, dtype=F64)])[None]
    ours = cpab.transform_points(theta, x[..., None])[..., 0]
    torch.testing.assert_close(ours, _rk4(cpab.velocity_coefficients(theta), x), atol=1e-8, rtol=0)
    # nobody crosses the zero, which stays put (to the rounding of A = B θ: v(0) ~ 1e-16)
    assert torch.equal(ours[x != 0].sign(), x[x != 0].sign()) and ours[0, 2].abs() < 1e-14
    assert (ours[0, [1, 3]] - x[0, [1, 3]]).abs().min() > 0.1  # points starting on vertices move on


def test_closed_form_of_a_field_affine_on_the_whole_line():
    # without the zero boundary one affine field over every cell is allowed: T(x) = e^a x + (e^a - 1) b / a,
    # and a constant field (a = 0) translates: T(x) = x + b
    cpab = stn.CPAB1D(5, zero_boundary=False)
    basis = cpab.basis(dtype=F64)
    x = torch.linspace(-1, 1, 21, dtype=F64)[None, :, None]
    for a, b in [(0.7, -0.2), (-1.3, 0.4), (0.0, 0.35), (1e-9, 0.3)]:
        theta = (basis.T @ torch.tensor([a, b], dtype=F64).repeat(5))[None]  # A = B θ exactly (A in the span)
        expected = x + (math.expm1(a) / a if a else 1.0) * (a * x + b)
        torch.testing.assert_close(cpab.transform_points(theta, x), expected, atol=1e-13, rtol=0)


def test_gradients_are_exact(device):
    cpab = stn.CPAB1D(6)
    theta = _theta(cpab, 2, 2.0).to(device).requires_grad_()
    points = (torch.rand(2, 15, 1, dtype=F64, device=device) * 2 - 1).requires_grad_()
    assert torch.autograd.gradcheck(cpab.transform_points, (theta, points), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(lambda t: cpab.grid(t, (9,)), (theta,), eps=1e-6, atol=1e-6)


def test_gradients_equal_finite_differences_of_the_numerical_integration():
    cpab = stn.CPAB1D(8)
    theta = _theta(cpab, 1, 1.5)
    x = torch.linspace(-0.95, 0.95, 20, dtype=F64)[None]
    jacobian = torch.autograd.functional.jacobian(lambda t: cpab.transform_points(t, x[..., None])[0, :, 0], theta)[:, 0]
    eps, p = 1e-3, cpab.num_params
    shifted = torch.cat([theta + eps * torch.eye(p, dtype=F64), theta - eps * torch.eye(p, dtype=F64)])
    flows = _rk4(cpab.velocity_coefficients(shifted), x.expand(2 * p, -1).contiguous())
    finite_differences = ((flows[:p] - flows[p:]) / (2 * eps)).T  # (N, P)
    # measured 2.8e-6 (the differences' O(eps²) and the integrator's error); the largest entries are ~0.36
    torch.testing.assert_close(jacobian, finite_differences, atol=1e-5, rtol=0)
    # without the hitting times' dependence on θ the gradient would be far off: the check can fail
    assert jacobian.abs().max() > 0.3


def test_minus_theta_inverts_and_the_warp_is_an_increasing_map_fixing_the_ends(dtype):
    cpab = stn.CPAB1D(8)
    theta = _theta(cpab, 4, 2.0, dtype=dtype)
    x = torch.linspace(-1, 1, 101, dtype=dtype).expand(4, -1)[..., None]
    warped = cpab.transform_points(theta, x)
    back = cpab.transform_points(-theta, warped)
    torch.testing.assert_close(back, x, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    assert (warped.diff(dim=1) > 0).all()
    torch.testing.assert_close(warped[:, [0, -1]], x[:, [0, -1]], atol=1e-6 if dtype == torch.float32 else 1e-14, rtol=0)
    assert (warped - x).abs().max() > 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_steep_field_keeps_the_ends_fixed_and_its_gradient_finite(dtype):
    """With zero_boundary the ends are at rest for every θ: where e^{ta} overflows there the
    closed form is 0 · inf; the ends must stay put (once NaN from θ[0] ≈ 300 in float32)."""
    cpab = stn.CPAB1D(tessellation=4)
    ends = torch.tensor([[[-1.0], [1.0]]], dtype=dtype)
    for value in (300.0, 1e4):
        params = torch.tensor([[value, 0.0, 0.0]], dtype=dtype)
        torch.testing.assert_close(cpab.transform_points(params, ends), ends)
    params = torch.tensor([[300.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    out = stn.warp(torch.randn(1, 1, 8, dtype=dtype), params, cpab, align_corners=True)  # its grid holds -1 and 1
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(params.grad).all()


@pytest.mark.parametrize("tessellation, zero_boundary, theta", [
    (3, False, [1.0, 0.0, 0.0, 0.0]),  # the field vanishes on the vertex -1/3, up to rounding
    (10, True, [-1.7908231004313722, -2.5836834007241576, 0.38798218585478206, -0.532823627153315,
                -0.08329023620043303, 1.1397073424890283, -0.579577432188242, -0.9830501110903949,
                1.212890440588631]),  # v(-1) = -2e-16, not 0, with the zero boundary
])
def test_a_vertex_where_the_field_rounds_to_zero_gives_a_finite_gradient(tessellation, zero_boundary, theta):
    """A cell whose far end's velocity is a rounding residue of 0 with the sign of its near
    end's is never crossed (its time log(v_end / v) / a is infinite): its log1p(-1) made
    the whole row's float64 gradient NaN (0 x inf through the unused crossing)."""
    cpab = stn.CPAB1D(tessellation=tessellation, zero_boundary=zero_boundary)
    params = torch.tensor([theta], dtype=torch.float64, requires_grad=True)
    size = (11,) if tessellation == 3 else (150,)
    grad = torch.autograd.grad(cpab.grid(params, size).sum(), params)[0]
    assert torch.isfinite(grad).all()
    h, eye = 1e-6, torch.eye(len(theta), dtype=torch.float64)
    central = [(cpab.grid(params.detach() + h * e, size).sum() - cpab.grid(params.detach() - h * e, size).sum()) / (2 * h)
               for e in eye]
    torch.testing.assert_close(grad[0], torch.stack(central), rtol=1e-5, atol=1e-5)


def test_identity_is_zero_and_gives_the_base_grid(dtype):
    cpab = stn.CPAB1D(8)
    assert torch.equal(cpab.identity(), torch.zeros(7))
    grid = cpab.grid(cpab.identity(2, dtype=dtype), (10,))
    assert grid.shape == (2, 10, 1) and grid.dtype == dtype
    assert torch.equal(grid, stn.base_grid((10,), dtype=dtype).expand(2, -1, -1).view(2, 10, 1))


def test_nan_in_theta_gives_nan_out_for_that_sample_only():
    cpab = stn.CPAB1D(8)
    theta = _theta(cpab, 3, 1.0, dtype=torch.float32)
    theta[1, 2] = float("nan")
    grid = cpab.grid(theta, (16,))
    assert torch.isnan(grid[1]).all() and torch.isfinite(grid[[0, 2]]).all()
    out = stn.warp(torch.rand(3, 2, 16), theta, cpab)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()
    points = torch.tensor([[[float("nan")], [0.2]]]).expand(3, -1, -1)
    mapped = cpab.transform_points(theta.nan_to_num(0.1), points)
    assert torch.isnan(mapped[:, 0]).all() and torch.isfinite(mapped[:, 1]).all()


def test_warp_of_signals_samples_the_grid_and_reaches_theta():
    cpab = stn.CPAB1D(8)
    x = torch.rand(2, 3, 40, dtype=F64)
    theta = _theta(cpab, 2, 1.0).requires_grad_()
    out = stn.warp(x, theta, cpab)
    grid = cpab.grid(theta, (40,))
    # 1-D sampling is 2-D sampling of a one-row image at y = 0
    grid2d = torch.cat([grid, torch.zeros_like(grid)], -1)[:, None]
    expected = torch.nn.functional.grid_sample(x[:, :, None], grid2d, align_corners=False)[:, :, 0]
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    torch.testing.assert_close(stn.warp(x, cpab.identity(2, dtype=F64), cpab), x, atol=1e-12, rtol=0)
    assert stn.warp(x, theta.detach(), "cpab", size=(25,)).shape == (2, 3, 25)  # by name (8 cells by default)


def _transformer() -> stn.SpatialTransformer:
    torch.manual_seed(0)
    loc = nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32, 16), nn.Tanh())
    return stn.SpatialTransformer(stn.CPAB1D(8), loc)


def test_spatial_transformer_starts_at_the_identity_and_learns_theta():
    st = _transformer()
    x = torch.rand(4, 2, 32)
    torch.testing.assert_close(st(x), x, atol=1e-6, rtol=0)
    assert torch.equal(st.predict_params(x), torch.zeros(4, 7))
    st(x).sin().sum().backward()
    assert st.regressor.bias.grad.abs().sum() > 0 and st.regressor.weight.grad.abs().sum() > 0


def test_module_survives_deepcopy_inference_mode_and_vmap():
    st = _transformer()
    with torch.no_grad():
        st.regressor.weight.normal_(0, 0.1)
    x = torch.rand(3, 2, 32)
    expected = st(x)
    torch.testing.assert_close(copy.deepcopy(st)(x), expected, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(st(x), expected, atol=0, rtol=0)
    out = st(x)  # the cache handed no inference tensor to autograd
    out.sum().backward()
    # torch.func: jacrev of the grid equals autograd's jacobian; vmap over stacked parameter batches
    cpab = stn.CPAB1D(8)
    theta = _theta(cpab, 2, 1.0)
    jac = torch.func.jacrev(lambda t: cpab.grid(t, (12,)))(theta)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(lambda t: cpab.grid(t, (12,)), theta))
    stacked = _theta(cpab, 6, 1.0, seed=3).view(3, 2, 7)
    torch.testing.assert_close(
        torch.func.vmap(lambda t: cpab.grid(t, (12,)))(stacked), cpab.grid(stacked.flatten(0, 1), (12,)).view(3, 2, 12, 1)
    )


def test_prior_covariance_is_the_projected_squared_exponential_kernel():
    cpab = stn.CPAB1D(6)
    ell, var = 0.4, 0.7
    cov = cpab.prior_covariance(length_scale=ell, variance=var, dtype=F64)
    assert cov.shape == (5, 5) and torch.equal(cov, cov.T) and torch.linalg.eigvalsh(cov).min() > 0
    # θᵀ Σ_θ θ = Aᵀ Σ_A A for the cell coefficients A = B θ, Σ_A written out entry by entry
    centres = [-1 + (i + 0.5) / 3 for i in range(6)]
    sigma_a = torch.zeros(12, 12, dtype=F64)
    for i in range(6):
        for j in range(6):
            for p in range(2):
                sigma_a[2 * i + p, 2 * j + p] = var * math.exp(-((centres[i] - centres[j]) ** 2) / (2 * ell**2))
    for seed in range(3):
        theta = _theta(cpab, 1, 1.0, seed=seed)
        a = cpab.velocity_coefficients(theta).reshape(12)
        torch.testing.assert_close(theta[0] @ cov @ theta[0], a @ sigma_a @ a)
    # cells far apart relative to the length scale are independent: σ² I (the basis is orthonormal)
    torch.testing.assert_close(cpab.prior_covariance(1e-3, 0.7, dtype=F64), 0.7 * torch.eye(5, dtype=F64))
    # longer length scales correlate neighbouring cells' velocities in samples
    draws = torch.distributions.MultivariateNormal(torch.zeros(5, dtype=F64), cov).sample((4000,))
    v = cpab.velocity(draws, torch.tensor(centres, dtype=F64).expand(4000, -1)[..., None])[..., 0]
    assert torch.corrcoef(v[:, 2:4].T)[0, 1] > 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"tessellation must be >= 2, got 1"):
        stn.CPAB1D(1)
    with pytest.raises(TypeError, match="tessellation must be an int"):
        stn.CPAB1D(4.0)
    with pytest.raises(TypeError, match="zero_boundary must be a bool"):
        stn.CPAB1D(4, zero_boundary=1)
    with pytest.raises(ValueError, match="length_scale must be > 0"):
        stn.CPAB1D(4).prior_covariance(length_scale=0.0)
    with pytest.raises(ValueError, match=r"params for CPAB1D must have shape \(B, 3\), got \(2, 4\)"):
        stn.CPAB1D(4).grid(torch.zeros(2, 4), (8,))
    assert isinstance(stn.get_transform("cpab1d", tessellation=4), stn.CPAB1D)
    assert repr(stn.CPAB1D(4, zero_boundary=False)) == "CPAB1D(tessellation=4, zero_boundary=False)"


def test_velocity_checks_its_points_as_transform_points_does():
    """velocity took any points: one set for three parameter sets gave sample 0's field alone,
    a last size of 2 and integer points were taken."""
    cpab = stn.CPAB1D(4)
    theta = torch.randn(3, cpab.num_params)
    with pytest.raises(ValueError, match=r"points must have shape \(3, N, 1\)"):
        cpab.velocity(theta, torch.rand(1, 4, 1))
    with pytest.raises(ValueError, match=r"points must have shape \(3, N, 1\)"):
        cpab.velocity(theta, torch.rand(3, 4, 2))
    with pytest.raises(TypeError, match="points"):
        cpab.velocity(theta, torch.zeros(3, 4, 1, dtype=torch.int64))
    assert cpab.velocity(theta, torch.rand(3, 4, 1)).shape == (3, 4, 1)


def test_velocity_under_autocast_is_computed_in_the_parameters_dtype():
    """Under torch.autocast the coefficients B θ came back in bfloat16 (off by 7e-3) and the
    velocity lost as much precision; grid and transform_points already turned autocast off."""
    cpab = stn.CPAB1D(8)
    theta = torch.randn(2, cpab.num_params, generator=torch.Generator().manual_seed(0))
    points = torch.rand(2, 5, 1, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        coefficients, velocity = cpab.velocity_coefficients(theta), cpab.velocity(theta, points)
    assert coefficients.dtype == torch.float32 and torch.equal(coefficients, cpab.velocity_coefficients(theta))
    assert torch.equal(velocity, cpab.velocity(theta, points))


def test_a_flow_that_carries_points_far_out_stays_finite_in_float32():
    """Without zero_boundary a large θ carries points out exponentially: in float32 e^{ta}
    overflowed (67 of 256 draws at θ ~ 100 N(0, 1)), the grid held ±inf and the warp NaN, with
    a NaN θ-gradient, where float64 finds a finite point far outside: the border value."""
    transform = stn.CPAB1D(4, zero_boundary=False)
    theta = torch.randn(256, transform.num_params, generator=torch.Generator().manual_seed(0)) * 100
    grid = transform.grid(theta, (16,))
    assert torch.isfinite(grid).all()
    exact = transform.grid(theta.double(), (16,))
    far = exact.abs() > 1e6
    assert far.any() and torch.equal(grid.abs() > 1e6, far)  # (far out in both)
    torch.testing.assert_close(grid[~far], exact[~far].float(), rtol=1e-4, atol=1e-4)
    x = torch.randn(256, 1, 16, generator=torch.Generator().manual_seed(1))
    leaf = theta.clone().requires_grad_()
    out = stn.warp(x, leaf, transform, padding="border")
    torch.testing.assert_close(out, stn.warp(x.double(), theta.double(), transform, padding="border").float())
    out.sum().backward()
    assert torch.isfinite(leaf.grad).all()
