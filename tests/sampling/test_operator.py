"""The fused kernel as PyTorch operators, and exact higher-order gradients on every backend.

``torch.library.opcheck`` checks the operators' schema, fake implementation, autograd
registration and AOT dispatch; ``gradgradcheck`` (float64, central differences of the
first-order gradient) checks second-order gradients of every family, padding and
backend; Hessians and gradient penalties are compared across backends.
"""

import pytest
import torch

import torchstn as stn
from tests._helpers import random_theta
from tests.sampling.conftest import skip_unless_built
from torchstn.sampling import _fused, fused_status

PADDINGS = ["zeros", "border", "reflection"]
BACKENDS = ["fused", "torch", "reference"]
SCALE = 0.08  # θ near the identity, random enough that no point sits on a pixel edge
FAMILIES_2D = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(),
               stn.ThinPlateSpline(control=(3, 3))]


@pytest.fixture(autouse=True)
def _kernel():
    status = fused_status()
    if not status.available:
        skip_unless_built("the fused kernel", status.error)


def _location(name: str, batch: int, dtype: torch.dtype) -> torch.Tensor:
    if name == "grid":
        return torch.rand(batch, 5, 7, 2, generator=torch.Generator().manual_seed(1), dtype=dtype) * 2.4 - 1.2
    transform = stn.Affine() if name == "affine" else stn.Projective()
    matrix = transform.matrix(random_theta(transform, batch, dtype, scale=SCALE))
    return matrix[:, :2] if name == "affine" else matrix


def _opcheck(location, padding, align_corners, dtype, batch, test_utils, mode="bilinear"):
    x = torch.rand(batch, 2, 6, 8, dtype=dtype, requires_grad=True)
    loc = _location(location, batch, dtype).requires_grad_()
    eps = 1e-6 if location == "projective" else 0.0
    args = (x, loc, location, [5, 7], mode, padding, align_corners, eps)
    torch.library.opcheck(torch.ops.torchstn.warp2d.default, args, test_utils=test_utils)
    grad_out = torch.rand(batch, 2, 5, 7, dtype=dtype)
    for mask in ([True, True], [False, True], [True, False]):
        backward_args = (grad_out, x.detach(), loc.detach(), location, mode, padding, align_corners, eps, mask)
        torch.library.opcheck(torch.ops.torchstn.warp2d_backward.default, backward_args, test_utils=test_utils)


@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_opcheck_every_padding(location, padding, align_corners, mode):
    """Schema, autograd registration and fake implementation; the AOT compile below per dtype."""
    _opcheck(location, padding, align_corners, torch.float64, 3,
             ("test_schema", "test_autograd_registration", "test_faketensor"), mode)


@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [3, 0])
def test_opcheck_dtypes_and_empty_batches(location, dtype, batch):
    """Every opcheck test, with ``torch.compile``'s AOT dispatch of forward and backward."""
    _opcheck(location, "border", True, dtype, batch, ("test_schema", "test_autograd_registration", "test_faketensor",
                                                      "test_aot_dispatch_dynamic"))


def _warp_case(transform, backend, padding, batch=2, channels=1, size=(4, 5), device="cpu"):
    dtype = torch.float64
    x = torch.rand(batch, channels, 5, 6, dtype=dtype, generator=torch.Generator().manual_seed(2)).to(device)
    x.requires_grad_()
    theta = random_theta(transform, batch, dtype, device, scale=SCALE).requires_grad_()
    return (lambda x, t: stn.warp(x, t, transform, size, padding=padding, backend=backend)), (x, theta)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("transform", FAMILIES_2D, ids=lambda t: t.name)
def test_gradgradcheck_2d(transform, padding, backend, device):
    fn, inputs = _warp_case(transform, backend, padding, device=device)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_gradgradcheck_volumes_and_signals(padding, backend, device):
    dtype = torch.float64
    generator = torch.Generator().manual_seed(3)
    for transform, shape in [(stn.Affine3D(), (1, 1, 3, 4, 3)), (stn.Affine1D(), (2, 1, 7))]:
        x = torch.rand(*shape, dtype=dtype, generator=generator).to(device).requires_grad_()
        theta = random_theta(transform, shape[0], dtype, device, scale=SCALE).requires_grad_()
        fn = lambda x, t, tr=transform: stn.warp(x, t, tr, padding=padding, backend=backend)  # noqa: E731
        assert torch.autograd.gradgradcheck(fn, (x, theta), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck_sample_of_a_given_grid(backend, device):
    dtype = torch.float64
    x = torch.rand(1, 3, 4, 5, dtype=dtype, device=device).requires_grad_()  # 3 channels: "auto" takes the fused kernel
    grid = torch.rand(1, 3, 4, 2, dtype=dtype, generator=torch.Generator().manual_seed(4)) * 2.2 - 1.1
    grid = grid.to(device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, g: stn.sample(x, g, backend=backend), (x, grid), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective()], ids=lambda t: t.name)
@pytest.mark.parametrize("padding", PADDINGS)
def test_gradient_penalty_and_hessian_agree_on_every_backend(transform, padding):
    """The cases that were silently wrong: a penalty on dL/dx differentiated wrt θ, and the Hessian wrt θ."""
    dtype = torch.float64
    x0 = torch.rand(2, 3, 9, 11, dtype=dtype, generator=torch.Generator().manual_seed(5))
    theta0 = random_theta(transform, 2, dtype, scale=SCALE, seed=6)
    penalties, hessians = {}, {}
    for backend in BACKENDS:
        x, theta = x0.clone().requires_grad_(), theta0.clone().requires_grad_()
        out = stn.warp(x, theta, transform, padding=padding, backend=backend)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        (penalties[backend],) = torch.autograd.grad(out.mean() + gx.pow(2).sum(), theta)
        energy = lambda t, b=backend: stn.warp(x0, t, transform, padding=padding, backend=b).pow(2).sum()  # noqa: E731
        hessians[backend] = torch.autograd.functional.hessian(energy, theta0)
    assert hessians["torch"].abs().max() > 10  # a real second-order term, not all zeros
    for backend in ("fused", "reference"):
        torch.testing.assert_close(penalties[backend], penalties["torch"], atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(hessians[backend], hessians["torch"], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("transform", [stn.Affine(), stn.Affine3D()], ids=lambda t: t.name)
def test_a_penalty_through_a_nearest_warp_stays_on_the_graph_on_every_backend(transform):
    """Nearest sampling is piecewise constant in θ: a penalty on dL/dx has a zero derivative with
    respect to θ. The reference kernel's dL/dx was cut from θ's graph (its weights were
    ones_like), so that derivative raised "does not require grad" where the others give 0."""
    shape = (2, 2, 5, 6) if transform.ndim == 2 else (2, 2, 4, 5, 3)
    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    theta = (transform.identity(2, dtype=torch.float64) + 0.1).requires_grad_()
    for backend in BACKENDS:
        out = stn.warp(x, theta, transform, mode="nearest", backend=backend)
        (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        assert gx.requires_grad, backend
        (penalty,) = torch.autograd.grad(gx.pow(2).sum(), theta)
        assert torch.equal(penalty, torch.zeros_like(theta)), backend


@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.Affine3D()], ids=lambda t: t.name)
def test_a_penalty_on_the_input_when_theta_depends_on_it(transform):
    """In a spatial transformer θ is predicted from x. Under create_graph the fused kernel's
    backward recomputed the warp on the saved x and θ and took the gradient wrt x itself,
    which then held the path through θ as well, counted again by the outer backward: dL/dx
    0.14 off, a WGAN-GP penalty 31% high, the layers before the transformer wrong. The first-
    and second-order gradients equal the torch backend's (F.affine_grid + F.grid_sample)."""
    spatial = (5, 6, 7) if transform.ndim == 3 else (9, 11)
    x0 = torch.rand(2, 2, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    base = random_theta(transform, 2, torch.float64, scale=SCALE, seed=8)
    weight = torch.rand(transform.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    results = {}
    for backend in BACKENDS:
        pre = torch.nn.Parameter(torch.tensor(1.3, dtype=torch.float64))
        x = x0.clone().requires_grad_()
        scaled = pre * x
        theta = base + 0.3 * weight * scaled.flatten(1).mean(1, keepdim=True)  # θ from x, as a localisation net
        loss = stn.warp(scaled, theta, transform, backend=backend).pow(2).sum()
        (first,) = torch.autograd.grad(loss, x, retain_graph=True)
        gx, gpre = torch.autograd.grad(loss, (x, pre), create_graph=True)
        (penalty_grad,) = torch.autograd.grad(gx.pow(2).sum(), pre)
        results[backend] = (first, gx.detach(), gpre.detach(), penalty_grad)
        torch.testing.assert_close(gx.detach(), first, atol=1e-12, rtol=1e-12)  # create_graph changes nothing
    for backend in ("fused", "reference"):
        torch.testing.assert_close(results[backend], results["torch"], atol=1e-9, rtol=1e-9)


def test_first_order_still_takes_the_closed_form_kernels(monkeypatch):
    """Without create_graph the backward is the C++ kernel (one call), not the grid path."""
    calls = []
    real = _fused.grid_path
    monkeypatch.setattr(_fused, "grid_path", lambda *a: calls.append("grid") or real(*a))
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    theta = random_theta(stn.Affine(), 2, torch.float32, scale=SCALE).requires_grad_()
    stn.warp(x, theta, "affine", backend="fused").sum().backward()
    assert calls == []
    out = stn.warp(x, theta, "affine", backend="fused")
    torch.autograd.grad(out.sum(), theta, create_graph=True)
    assert calls == ["grid"]


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.Affine3D()], ids=lambda t: t.name)
def test_torch_func_matches_autograd(transform, padding, backend, mode):
    """grad, jacrev and vmap on every padding, mode and backend (the paths that branch on a
    grid's values or use an autograd.Function must take their transform-safe form)."""
    spatial, size = ((4, 5, 6), (3, 4, 5)) if transform.ndim == 3 else ((10, 12), (6, 7))
    x = torch.rand(3, 2, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    theta = random_theta(transform, 3, torch.float64, scale=SCALE, seed=8)
    warp = lambda xs, t: stn.warp(xs, t, transform, size, mode, padding, backend=backend)  # noqa: E731
    energy = lambda t: warp(x, t).pow(2).sum()  # noqa: E731
    leaf = theta.clone().requires_grad_()
    energy(leaf).backward()
    torch.testing.assert_close(torch.func.grad(energy)(theta), leaf.grad)
    jacobian = torch.func.jacrev(lambda t: warp(x, t))(theta)
    torch.testing.assert_close(jacobian, torch.autograd.functional.jacobian(lambda t: warp(x, t), theta))
    per_sample = torch.func.vmap(lambda xi, ti: warp(xi[None], ti[None])[0])(x, theta)
    torch.testing.assert_close(per_sample, warp(x, theta))


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.Affine3D()], ids=lambda t: t.name)
def test_batched_gradients_on_every_backend(transform, backend):
    """autograd's batched gradients (``jacobian(vectorize=True)``, ``gradcheck(check_batched_grad)``,
    ``grad(is_grads_batched=True)``) hand a backward an output gradient without memory: the
    fused kernel's ctypes call crashed on it, the reference's ``flatten`` and the projective
    grid's in-place backward had no rule for it. The same Jacobian as the loop over rows."""
    spatial = (3, 3, 4) if transform.ndim == 3 else (4, 5)
    x = torch.rand(2, 2, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    theta = random_theta(transform, 2, torch.float64, scale=SCALE, seed=10)
    warp = lambda xs, t: stn.warp(xs, t, transform, backend=backend)  # noqa: E731
    vectorized = torch.autograd.functional.jacobian(warp, (x, theta), vectorize=True)
    for got, expected in zip(vectorized, torch.autograd.functional.jacobian(warp, (x, theta))):
        torch.testing.assert_close(got, expected)
    leaves = (x.clone().requires_grad_(), theta.clone().requires_grad_())
    assert torch.autograd.gradcheck(warp, leaves, check_batched_grad=True)
    grid = transform.grid(theta, spatial).requires_grad_()
    out = stn.sample(x, grid, backend=backend)
    grads = torch.randn(3, *out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    (batched,) = torch.autograd.grad(out, grid, grads, retain_graph=True, is_grads_batched=True)
    for g, row in zip(grads, batched):
        torch.testing.assert_close(row, torch.autograd.grad(out, grid, g, retain_graph=True)[0])


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_vmap_over_a_dimension_that_is_not_the_first(backend):
    """``vmap`` with the mapped dimension of x and θ at 1: F.grid_sample's vmap rule labels the
    result (B, V, ...) when x and the grid carry it at different places (torch 2.13); the
    result is the loop's (V, B, ...)."""
    x = torch.rand(2, 4, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    theta = torch.stack([random_theta(stn.Affine(), 2, torch.float64, scale=SCALE, seed=s) for s in range(4)], 1)
    warp = lambda xs, t: stn.warp(xs, t, "affine", backend=backend)  # noqa: E731
    out = torch.func.vmap(warp, in_dims=(1, 1))(x, theta)
    torch.testing.assert_close(out, torch.stack([warp(x[:, v], theta[:, v]) for v in range(4)]))
    stacked = x.movedim(1, 0).contiguous().movedim(0, 1)  # (its per-sample slices contiguous: contiguous() kept it)
    torch.testing.assert_close(torch.func.vmap(warp, in_dims=(1, 1))(stacked, theta), out)
    grids = torch.stack([stn.Affine().grid(theta[:, v], (5, 6)) for v in range(4)])  # (V, B, ...)
    sampled = torch.func.vmap(lambda xs, g: stn.sample(xs, g, backend=backend), in_dims=(1, 0))(stacked, grids)
    torch.testing.assert_close(sampled, torch.stack([stn.sample(x[:, v], grids[v]) for v in range(4)]))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual's
@pytest.mark.parametrize("shape", [(0, 2, 3, 4), (2, 0, 3, 4), (0, 1, 2, 3, 4)], ids=str)
def test_the_reference_kernel_takes_empty_batches_and_channels(shape):
    """An empty batch or no channels: the empty output of F.grid_sample from the reference
    kernel, with its gradients, and inside forward-mode AD (which samples with it)."""
    import torch.autograd.forward_ad as fwad

    x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
    grid = torch.rand(shape[0], *shape[2:], len(shape) - 2, dtype=torch.float64, requires_grad=True)
    out = stn.sample(x, grid, backend="reference")
    expected = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    assert out.shape == expected.shape
    grads = torch.autograd.grad(out.sum(), (x, grid))
    assert grads[0].shape == x.shape and grads[1].shape == grid.shape
    with fwad.dual_level():
        dual = stn.sample(fwad.make_dual(x.detach(), torch.ones_like(x)), grid.detach())
        assert fwad.unpack_dual(dual).tangent.shape == expected.shape


def _jvp_by_reverse_mode(fn, inputs, tangents):
    """J @ tangent from the reverse-mode Jacobian (F.grid_sample's backward): independent of
    any forward derivative."""
    jacobians = torch.autograd.functional.jacobian(fn, inputs)
    out = fn(*inputs)
    return sum(j.reshape(out.numel(), -1) @ t.reshape(-1) for j, t in zip(jacobians, tangents)).reshape(out.shape)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual's
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.ThinPlateSpline(control=(3, 3)),
                                       stn.Affine3D(), stn.transforms.Affine1D()], ids=lambda t: t.name)
def test_forward_mode_ad_is_exact_on_every_backend(transform, padding, backend, mode):
    """Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) gives J @ tangent on every
    backend, for the input's and θ's tangents at once: the sampler hands dual tensors to the
    reference kernel, whose forward derivative is written out (F.grid_sample has none, nor
    have the fused kernels: they once dropped the tangent, read later as a zero derivative)."""
    import torch.autograd.forward_ad as fwad

    spatial = {1: (9,), 2: (6, 7), 3: (4, 5, 6)}[transform.ndim]
    x = torch.rand(2, 3, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    theta = random_theta(transform, 2, torch.float64, scale=SCALE, seed=4)
    tangents = (torch.randn_like(x), torch.randn_like(theta))
    warp = lambda xs, t: stn.warp(xs, t, transform, mode=mode, padding=padding, backend=backend)  # noqa: E731
    reverse = lambda xs, t: stn.warp(xs, t, transform, mode=mode, padding=padding, backend="torch")  # noqa: E731
    expected = _jvp_by_reverse_mode(reverse, (x, theta), tangents)
    out, tangent = torch.func.jvp(warp, (x, theta), tangents)
    torch.testing.assert_close(out, reverse(x, theta))
    torch.testing.assert_close(tangent, expected)
    with fwad.dual_level():
        dual = warp(fwad.make_dual(x, tangents[0]), fwad.make_dual(theta, tangents[1]))
        torch.testing.assert_close(fwad.unpack_dual(dual).tangent, expected)
    grid = transform.grid(theta, spatial)
    grid_tangent = torch.randn_like(grid)
    sample = lambda g: stn.sample(x, g, mode, padding, backend=backend)  # noqa: E731
    torch.testing.assert_close(
        torch.func.jvp(sample, (grid,), (grid_tangent,))[1],
        _jvp_by_reverse_mode(lambda g: stn.sample(x, g, mode, padding, backend="torch"), (grid,), (grid_tangent,)),
    )


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.Affine3D()], ids=lambda t: t.name)
def test_forward_over_reverse_hessians_and_jacfwd_match_reverse_mode(transform, backend):
    """``torch.func.hessian`` (forward over reverse) and ``jacfwd`` equal the reverse-mode
    Hessian and Jacobian, with respect to θ and to the input; ``gradcheck(check_forward_ad)``
    and ``gradgradcheck(check_fwd_over_rev)`` against finite differences."""
    spatial = (3, 3, 4) if transform.ndim == 3 else (4, 5)
    x = torch.rand(2, 1, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    theta = random_theta(transform, 2, torch.float64, scale=SCALE, seed=6)
    energy = lambda xs, t: stn.warp(xs, t, transform, backend=backend).pow(3).sum()  # noqa: E731
    reverse = lambda xs, t: stn.warp(xs, t, transform, backend="torch").pow(3).sum()  # noqa: E731
    torch.testing.assert_close(torch.func.hessian(energy, argnums=1)(x, theta),
                               torch.autograd.functional.hessian(lambda t: reverse(x, t), theta))
    torch.testing.assert_close(torch.func.hessian(energy)(x[:1], theta[:1]),
                               torch.autograd.functional.hessian(lambda xs: reverse(xs, theta[:1]), x[:1]))
    warp = lambda t: stn.warp(x, t, transform, backend=backend)  # noqa: E731
    torch.testing.assert_close(torch.func.jacfwd(warp)(theta), torch.func.jacrev(warp)(theta))
    if backend == "auto":  # (every backend hands dual tensors to the same kernel)
        leaves = (x.clone().requires_grad_(), theta.clone().requires_grad_())
        fn = lambda xs, t: stn.warp(xs, t, transform, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, leaves, check_forward_ad=True)
        assert torch.autograd.gradgradcheck(fn, leaves, check_fwd_over_rev=True)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.ThinPlateSpline(), stn.Affine3D(),
                                       stn.CPAB1D()], ids=lambda t: t.name)
def test_forward_over_forward_equals_reverse_over_reverse(transform, backend):
    """``jacfwd(jacfwd(f))`` (and so a ``jvp`` of a ``jvp``) equals the reverse-mode Hessian
    with respect to θ, and to the grid and the input at once: the reference kernel's ``jvp``
    lost its second-order terms between nested forward levels (the grid's mixed derivative
    and the input-grid term came out 0, with no error), so it runs as plain operations there."""
    spatial = {1: (9,), 2: (4, 5), 3: (3, 3, 4)}[transform.ndim]
    x = torch.rand(1, 2, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    theta = random_theta(transform, 1, torch.float64, scale=SCALE, seed=8)
    energy = lambda t: stn.warp(x, t, transform, backend=backend).pow(2).sum()  # noqa: E731
    expected = torch.func.jacrev(torch.func.jacrev(energy))(theta)
    assert expected.abs().amax() > 0.1  # (a Hessian with entries to lose)
    torch.testing.assert_close(torch.func.jacfwd(torch.func.jacfwd(energy))(theta), expected)
    grid = transform.grid(theta, spatial)
    both = lambda xs, g: stn.sample(xs, g, backend=backend).sum()  # noqa: E731
    # at the identity (every transformer's start) with border/reflection padding, whose clip bounds
    # hold the edge pixels: the plain operations' clamp passed 1 there, the Function 0 (hessian's)
    identity = transform.identity(1, dtype=torch.float64)
    for padding in ("border", "reflection"):
        edge = lambda t: stn.warp(x, t, transform, padding=padding, backend=backend).pow(2).sum()  # noqa: B023, E731
        torch.testing.assert_close(torch.func.jacfwd(torch.func.jacfwd(edge))(identity),
                                   torch.func.hessian(edge)(identity))
    # d/dx of d/d(grid), and d/d(grid) of d/d(grid) (a signal's linear interpolation has none)
    for outer in (0, 1) if transform.ndim > 1 else (0,):
        forward = torch.func.jacfwd(torch.func.jacfwd(both, argnums=1), argnums=outer)(x, grid)
        reverse = torch.func.jacrev(torch.func.jacrev(both, argnums=1), argnums=outer)(x, grid)
        assert reverse.abs().amax() > 0.1
        torch.testing.assert_close(forward, reverse)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual's
def test_forward_mode_ad_refuses_bicubic_and_keeps_nan_points():
    """Bicubic has no forward derivative anywhere (F.grid_sample's is missing): a clear error,
    not a dropped tangent. A grid point that is not finite has a NaN tangent, as its output
    and its gradient are NaN."""
    import torch.autograd.forward_ad as fwad

    x = torch.rand(1, 2, 5, 6, dtype=torch.float64)
    grid = torch.rand(1, 3, 4, 2, dtype=torch.float64) * 2 - 1
    grid[0, 1, 2, 0] = float("nan")
    with fwad.dual_level():
        for backend in ("auto", *BACKENDS):
            if backend != "reference":  # (which refuses bicubic as an option, everywhere)
                with pytest.raises(NotImplementedError, match="bicubic.* no forward derivative"):
                    stn.sample(fwad.make_dual(x, torch.ones_like(x)), grid, "bicubic", backend=backend)
            out = stn.sample(x, fwad.make_dual(grid, torch.ones_like(grid)), backend=backend)
            tangent = fwad.unpack_dual(out).tangent
            assert tangent[0, :, 1, 2].isnan().all()
            assert tangent.isnan().sum() == 2 and out.isnan().sum() == 2


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual's
def test_the_operators_refuse_forward_mode_ad():
    """Called directly inside forward-mode AD, the fused operators (whose autograd formula has no
    forward derivative) raise: torch dropped the tangent, and jacfwd of them was all zeros."""
    import torch.autograd.forward_ad as fwad

    x, x3 = torch.rand(2, 1, 4, 5, dtype=torch.float64), torch.rand(2, 1, 3, 4, 5, dtype=torch.float64)
    rows = torch.eye(2, 3, dtype=torch.float64).expand(2, 2, 3).contiguous()
    rows3 = torch.eye(3, 4, dtype=torch.float64).expand(2, 3, 4).contiguous()
    warp2d = lambda t: torch.ops.torchstn.warp2d(x, t, "affine", [4, 5], "bilinear", "zeros", False, 0.0)  # noqa: E731
    with pytest.raises(NotImplementedError, match="warp2d has no forward-mode derivative"):
        torch.func.jacfwd(warp2d)(rows)
    with fwad.dual_level(), pytest.raises(NotImplementedError, match="warp3d has no forward-mode derivative"):
        torch.ops.torchstn.warp3d(fwad.make_dual(x3, torch.ones_like(x3)), rows3, "affine", [3, 4, 5], "bilinear",
                                  "zeros", False)
    torch.testing.assert_close(warp2d(rows), x)  # (outside, as before)


def test_the_operators_refuse_arguments_that_do_not_fit():
    """Called directly (the README names them), the operators check what the kernel trusts, as
    F.grid_sample does; the fake implementations too, so torch.compile fails at trace time."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, x3 = torch.rand(4, 1, 4, 5, dtype=torch.float64), torch.rand(2, 1, 3, 4, 5, dtype=torch.float64)
    rows = torch.eye(2, 3, dtype=torch.float64).expand(4, 2, 3).contiguous()
    warp2d, warp3d = torch.ops.torchstn.warp2d, torch.ops.torchstn.warp3d
    options2d, options3d = ("bilinear", "zeros", False, 0.0), ("bilinear", "zeros", False)
    small_grid = torch.zeros(4, 1, 1, 2, dtype=torch.float64)
    bad = [
        (lambda: warp2d(x, rows[:1], "affine", [4, 5], *options2d), r"shape \(B, 2, 3\) with the batch B = 4"),
        (lambda: warp2d(x, rows.float(), "affine", [4, 5], *options2d), "must both be float32 or both float64"),
        (lambda: warp2d(x, small_grid, "grid", [50, 50], *options2d), r"loc \(grid\) must have shape \(B, 50, 50, 2\)"),
        (lambda: warp2d(x, rows, "rigid", [4, 5], *options2d), "location must be one of"),
        (lambda: warp2d(x, rows, "affine", [4, 5], "bicubic", "zeros", False, 0.0), "mode must be one of"),
        (lambda: warp2d(x3, rows, "affine", [4, 5], *options2d), "x must have 4 dimensions"),
        (lambda: torch.ops.torchstn.warp2d_backward(torch.rand(2, 1, 3, 3, dtype=torch.float64), x, rows, "affine",
                                                    *options2d, [True, True]), "grad_out must be"),
        (lambda: warp3d(x3, torch.rand(2, 2, 3, dtype=torch.float64), "affine", [3, 4, 5], *options3d),
         r"shape \(B, 3, 4\)"),
        (lambda: warp3d(x3, torch.rand(2, 3, 4, dtype=torch.float64), "projective", [3, 4, 5], *options3d),
         "location must be one of 'grid', 'affine'"),
        # no pixel to read (the 2-D kernel crashed the process; the 3-D one gave zeros, also with border padding)
        (lambda: warp2d(x[:, :, :0], rows, "affine", [4, 5], *options2d), "non-empty spatial dimensions"),
        (lambda: warp2d(x[..., :0], rows, "affine", [2, 3], "nearest", "border", False, 0.0),
         "non-empty spatial dimensions"),
        (lambda: torch.ops.torchstn.warp2d_backward(torch.rand(4, 1, 2, 3, dtype=torch.float64), x[:, :, :0], rows,
                                                    "affine", *options2d, [True, True]), "non-empty spatial"),
        (lambda: warp3d(x3[:, :, :0], torch.rand(2, 3, 4, dtype=torch.float64), "affine", [2, 2, 2], "bilinear",
                        "border", False), "non-empty spatial dimensions"),
        (lambda: torch.ops.torchstn.warp3d_backward(torch.rand(2, 1, 3, 4, 4), x3,  # float32
                                                    torch.rand(2, 3, 4, dtype=torch.float64), "affine", *options3d,
                                                    [True, True]), "grad_out must be"),
    ]
    for call, message in bad:
        with pytest.raises((ValueError, TypeError), match=message):
            call()
    # the fake implementation checks the same (torch.compile and torch.export fail while tracing)
    one = rows[:1].clone()
    with FakeTensorMode() as mode, pytest.raises(ValueError, match=r"shape \(B, 2, 3\) with the batch B = 4"):
        warp2d(mode.from_tensor(x), mode.from_tensor(one), "affine", [4, 5], "bilinear", "zeros", False, 0.0)


def test_the_operators_sample_through_the_grid_where_the_kernel_cannot_be_built(monkeypatch):
    """A saved torch.export program holds torchstn::warp2d / warp3d; run where the kernel cannot
    be built (no compiler, an unwritable cache) it raised. The operators fall back to the grid
    path, as torchstn.warp does, their gradients too."""
    import torch.nn.functional as F

    from torchstn.sampling import _fused3d

    monkeypatch.setattr(_fused, "_library", lambda: None)
    monkeypatch.setattr(_fused3d, "_library", lambda: None)
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    rows = random_theta(stn.Affine(), 2, torch.float64, scale=SCALE).view(2, 2, 3)
    rows.requires_grad_()
    out = torch.ops.torchstn.warp2d(x, rows, "affine", [4, 7], "bilinear", "zeros", False, 0.0)
    grid = F.affine_grid(rows, (2, 3, 4, 7), align_corners=False)
    expected = F.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), rows)[0], torch.autograd.grad(expected.sum(), rows)[0])
    x3 = torch.rand(2, 1, 3, 4, 5, dtype=torch.float64)
    rows3 = random_theta(stn.Affine3D(), 2, torch.float64, scale=SCALE).view(2, 3, 4)
    out3 = torch.ops.torchstn.warp3d(x3, rows3, "affine", [3, 4, 5], "bilinear", "zeros", False)
    grid3 = F.affine_grid(rows3, (2, 1, 3, 4, 5), align_corners=False)
    torch.testing.assert_close(out3, F.grid_sample(x3, grid3, align_corners=False))
