"""The fused 3-D kernel against F.affine_grid + F.grid_sample: values, gradients, operators, NaN, fallbacks."""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from tests._helpers import random_grid, random_input, random_theta
from tests.sampling.conftest import record_calls, skip_unless_built
from torchstn.sampling import _fused, _fused3d, _sample

PADDINGS = ["zeros", "border", "reflection"]
MODES = ["bilinear", "nearest"]
AFFINE3D = stn.Affine3D()


pytestmark = pytest.mark.usefixtures("fused3d_kernel")


@pytest.fixture
def calls(monkeypatch):
    """The fused 3-D operator's calls ("fused_warp3d" from θ, "fused_sample3d" of a grid), recorded;
    a volume warped or sampled by the compiled call (csrc/fast_call.cpp, the same kernel) counts as one."""
    record = record_calls(monkeypatch, _fused3d, "fused_warp3d", "fused_sample3d")
    for name, call in (("_compiled_warp", "fused_warp3d"), ("_compiled_sample", "fused_sample3d")):
        def recorded(x, *args, _compiled=getattr(_sample, name), _call=call):
            out = _compiled(x, *args)
            if out is not None and x.dim() == 5:
                record.append(_call)
            return out

        monkeypatch.setattr(_sample, name, recorded)
    return record


def _theta(batch, dtype, seed=0, scale=0.4):
    """(B, 3, 4) rows far enough from the identity that every padding is read."""
    return random_theta(AFFINE3D, batch, dtype, scale=scale, seed=seed).view(batch, 3, 4)


def _grads(fn, leaves, weight_seed=3):
    """fn's output and the gradients of a weighted sum of it with respect to ``leaves``."""
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*leaves)
    weight = random_input(out.shape, out.dtype, seed=weight_seed)
    return (out.detach(), *torch.autograd.grad(out, leaves, weight))


def _close(actual, expected, dtype, scale=1.0):
    tol = (1e-10 if dtype == torch.float64 else 1e-5) * scale
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


# (B, C, D, H, W) input, output (Do, Ho, Wo): cubic, non-cubic, resizing, a row longer than one block
SHAPES = [((2, 1, 6, 6, 6), (6, 6, 6)), ((2, 3, 5, 6, 7), (4, 9, 70)), ((1, 2, 3, 9, 4), (7, 2, 5))]


@pytest.mark.parametrize(("shape", "size"), SHAPES, ids=["cubic", "resize", "flat"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_equals_affine_grid_and_grid_sample(shape, size, mode, padding, align_corners, dtype, calls):
    """Output, input gradient and θ gradient of warp(Affine3D) against F.affine_grid + F.grid_sample."""
    x, theta = random_input(shape, dtype), _theta(shape[0], dtype)

    def torch_warp(x, theta):
        grid = F.affine_grid(theta, [*shape[:2], *size], align_corners=align_corners)
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)

    def fused(x, theta):
        return stn.warp(x, theta, AFFINE3D, size, mode, padding, align_corners, backend="fused")

    out, grad_x, grad_theta = _grads(fused, (x, theta))
    expected = _grads(torch_warp, (x, theta))
    assert calls == ["fused_warp3d"]
    _close(out, expected[0], dtype)
    _close(grad_x, expected[1], dtype)
    # dθ sums thousands of terms of either sign: relative to its size
    _close(grad_theta, expected[2], dtype, scale=max(1.0, expected[2].abs().max().item()))
    if mode == "nearest":
        assert not grad_theta.any()  # nearest has no location gradient


@pytest.mark.parametrize(("shape", "size"), SHAPES[1:], ids=["resize", "flat"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_sample_of_a_grid_equals_grid_sample(shape, size, mode, padding, align_corners, dtype, calls):
    x, grid = random_input(shape, dtype), random_grid((shape[0], *size, 3), dtype, spread=1.3)

    def fused(x, grid):
        return stn.sample(x, grid, mode, padding, align_corners, backend="fused")

    def reference(x, grid):
        return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)

    results, expected = _grads(fused, (x, grid)), _grads(reference, (x, grid))
    assert calls == ["fused_sample3d"]
    for a, b in zip(results, expected):
        _close(a, b, dtype, scale=10)  # the grid gradient is 1/2 (size - 1) times the voxel one


def test_right_sided_sub_gradient_at_integer_coordinates():
    # as grid_sample: at an integer voxel coordinate the derivative is U[k+1] - U[k]
    x = torch.tensor([0.0, 1.0, 4.0, 9.0], dtype=torch.float64).view(1, 1, 1, 1, 4)
    grid = torch.tensor([(2 * 1.0 + 1) / 4 - 1, 0.0, 0.0], dtype=torch.float64).view(1, 1, 1, 1, 3).requires_grad_()
    stn.sample(x, grid, padding="border", backend="fused").sum().backward()
    assert grid.grad[0, 0, 0, 0, 0].item() == pytest.approx(3.0 * 4 / 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_gradcheck_and_gradgradcheck(mode, padding):
    """float64 finite differences of the kernel's first-order gradients, and of the second
    order (the grid path takes over under create_graph)."""
    x = random_input((2, 2, 3, 4, 5), torch.float64).requires_grad_()
    theta = _theta(2, torch.float64, seed=1, scale=0.1).requires_grad_()

    def fn(x, theta):
        return stn.warp(x, theta, AFFINE3D, (3, 2, 4), mode, padding, backend="fused")

    assert torch.autograd.gradcheck(fn, (x, theta), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x, theta), eps=1e-6, atol=1e-5)
    grid = random_grid((2, 2, 3, 4, 3), torch.float64, spread=1.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, g: stn.sample(x, g, mode, padding, backend="fused"), (x, grid),
                                    eps=1e-6, atol=1e-6)


def test_first_order_is_the_kernel_and_create_graph_hands_over(monkeypatch):
    calls = []
    real = _fused3d.grid_path3d
    monkeypatch.setattr(_fused3d, "grid_path3d", lambda *a: calls.append("grid") or real(*a))
    x = random_input((1, 1, 4, 4, 4), torch.float64).requires_grad_()
    theta = _theta(1, torch.float64, scale=0.1).requires_grad_()
    stn.warp(x, theta, AFFINE3D, backend="fused").sum().backward()
    assert calls == []
    (grad,) = torch.autograd.grad(stn.warp(x, theta, AFFINE3D, backend="fused").pow(2).sum(), theta, create_graph=True)
    assert calls == ["grid"] and grad.requires_grad
    (expected,) = torch.autograd.grad(stn.warp(x, theta, AFFINE3D, backend="torch").pow(2).sum(), theta,
                                      create_graph=True)
    torch.testing.assert_close(torch.autograd.grad(grad.sum(), x)[0],
                               torch.autograd.grad(expected.sum(), x)[0], atol=1e-10, rtol=1e-10)


def _opcheck(location, mode, padding, align_corners, dtype, batch, test_utils):
    x = random_input((batch, 2, 4, 5, 3), dtype).requires_grad_()
    if location == "grid":
        loc = random_grid((batch, 3, 2, 4, 3), dtype).requires_grad_()
    else:
        loc = _theta(batch, dtype, scale=0.1).requires_grad_()
    args = (x, loc, location, [3, 2, 4], mode, padding, align_corners)
    torch.library.opcheck(torch.ops.torchstn.warp3d.default, args, test_utils=test_utils)
    grad_out = random_input((batch, 2, 3, 2, 4), dtype, seed=5)
    for mask in ([True, True], [False, True], [True, False]):
        backward_args = (grad_out, x.detach(), loc.detach(), location, mode, padding, align_corners, mask)
        torch.library.opcheck(torch.ops.torchstn.warp3d_backward.default, backward_args, test_utils=test_utils)


@pytest.mark.parametrize("location", ["affine", "grid"])
@pytest.mark.parametrize(("mode", "padding", "align_corners"), list(itertools.product(MODES, PADDINGS, [False, True])))
def test_opcheck_every_option(location, mode, padding, align_corners):
    _opcheck(location, mode, padding, align_corners, torch.float64, 2,
             ("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("location", ["affine", "grid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [2, 0])
def test_opcheck_aot_dispatch(location, dtype, batch):
    _opcheck(location, "bilinear", "border", True, dtype, batch,
             ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
def test_non_finite_locations_give_nan_as_every_backend(mode, padding):
    """NaN and ±Inf grid points: NaN in every channel and in the point's gradient, nothing
    added to the input's gradient: as the grid path (torchstn's policy for F.grid_sample)."""
    x = random_input((2, 2, 4, 5, 6), torch.float64)
    grid = random_grid((2, 3, 4, 5, 3), torch.float64)
    grid[0, 1, 2, 3, 0] = float("nan")
    grid[1, 0, 0, 0, 2] = float("inf")
    grid[1, 2, 3, 4, 1] = -float("inf")
    results = [_grads(lambda x, g, b=b: stn.sample(x, g, mode, padding, backend=b), (x, grid))
               for b in ("fused", "torch")]
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, equal_nan=True)
    out, _, grad_grid = results[0]
    assert out[0, :, 1, 2, 3].isnan().all() and out[1, :, 0, 0, 0].isnan().all() and out[1, :, 2, 3, 4].isnan().all()
    assert out.isnan().sum() == 3 * 2 and grad_grid.isnan().any(-1).sum() == 3


def test_nan_theta_and_nan_voxels():
    x = random_input((2, 1, 4, 4, 4), torch.float64)
    theta = _theta(2, torch.float64, scale=0.1)
    theta[1, 2, 0] = float("nan")
    out, _, grad_theta = _grads(lambda x, t: stn.warp(x, t, AFFINE3D, backend="fused"), (x, theta))
    assert not out[0].isnan().any() and out[1].isnan().all()
    assert not grad_theta[0].isnan().any() and grad_theta[1].isnan().all()
    # a NaN voxel reaches exactly the outputs F.grid_sample gives NaN (its corners, even at weight 0)
    x[0, 0, 1, 2, 3] = float("nan")
    theta[1, 2, 0] = 0.0
    fused = stn.warp(x, theta, AFFINE3D, backend="fused")
    reference = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    assert fused.isnan().any() and torch.equal(fused.isnan(), reference.isnan())


def test_voxels_read_eight_at_a_time_equal_one_at_a_time_bit_for_bit():
    """float32 voxels whose corners all lie inside are sampled eight at a time (corner pairs
    along x loaded together, the interpolation in vector lanes), the others one at a time:
    the same points given as rows of 16 and as rows of 1 (one at a time) are the same bits,
    with points inside, near the faces and outside, and an infinite voxel."""
    x = random_input((2, 3, 7, 9, 11), torch.float32)
    x[1, 2, 3, 4, 5] = float("inf")
    theta = _theta(2, torch.float32, scale=0.15)
    grid = AFFINE3D.grid(theta.flatten(1), (5, 6, 16))  # (2, 5, 6, 16, 3)
    grid[0, 1, 2, 3] = 1.5  # outside
    wide = stn.sample(x, grid, backend="fused")
    narrow = stn.sample(x, grid.reshape(2, 5, 6 * 16, 1, 3), backend="fused")
    torch.testing.assert_close(wide, narrow.reshape(wide.shape), rtol=0, atol=0, equal_nan=True)
    assert wide.isinf().any() and wide.isfinite().float().mean() > 0.9


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_an_infinite_voxel_gives_what_grid_sample_gives(sign):
    """A ±Inf voxel: ±Inf where it weighs more than 0, NaN where it lies in a point's footprint
    with weight 0, as F.grid_sample's sum of weighted corners (the kernel's nested lerps once
    gave NaN wherever the infinite voxel was a point's lower corner)."""
    x = random_input((1, 2, 6, 7, 8), torch.float32)
    x[0, 1, 3, 4, 5] = sign * float("inf")
    shift = torch.zeros(1, 3, 4)
    shift[0, :, :3] = torch.eye(3)
    theta = shift.clone()
    theta[0, :, 3] = torch.tensor([0.5 / 8, 0.5 / 7, 0.5 / 6])  # a quarter voxel along each axis: all weights > 0
    for t in (theta, shift):  # (shift: the identity, where a point's upper corners weigh exactly 0)
        fused = stn.warp(x, t, AFFINE3D, backend="fused")
        reference = F.grid_sample(x, F.affine_grid(t, x.shape, align_corners=False), align_corners=False)
        assert torch.equal(fused.isinf(), reference.isinf()) and torch.equal(fused.isnan(), reference.isnan())
        assert torch.equal(fused[fused.isinf()], reference[reference.isinf()])
        finite = fused.isfinite()
        torch.testing.assert_close(fused[finite], reference[finite], atol=1e-6, rtol=1e-6)
    assert fused.isinf().sum() == 1 and fused.isnan().sum() == 7  # the identity: the voxel, and its 7 neighbours below


def test_theta_gradient_is_deterministic_and_independent_of_threads_and_of_the_input_gradient():
    x = random_input((3, 2, 9, 10, 11), torch.float32)
    theta = _theta(3, torch.float32, scale=0.2)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n, need_x in [(1, True), (1, False), (2, True), (2, False), (2, False)]:
            torch.set_num_threads(n)
            leaves = [t.clone().requires_grad_(need) for t, need in ((x, need_x), (theta, True))]
            out = stn.warp(*leaves, AFFINE3D, backend="fused")
            grads.append(torch.autograd.grad(out, leaves[1], random_input(out.shape, out.dtype))[0])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


def test_compile_export_and_inference_mode():
    x = random_input((2, 2, 16, 16, 16), torch.float32)  # ("auto" takes the kernel for every volume)
    theta = _theta(2, torch.float32, scale=0.1)
    module = stn.SpatialTransformer(AFFINE3D, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 16**3, 8)))
    eager = module(x)
    compiled = torch.compile(lambda x, t: stn.warp(x, t, AFFINE3D), fullgraph=True)
    torch.testing.assert_close(compiled(x, theta), stn.warp(x, theta, AFFINE3D))
    program = torch.export.export(module, (x,))
    assert "torchstn.warp3d" in str(program.graph)
    torch.testing.assert_close(program.module()(x), eager)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), eager)
        assert stn.warp(x, theta, AFFINE3D).is_inference()


def test_auto_takes_the_fused_kernel_for_volumes(calls):
    x = random_input((2, 1, 16, 16, 16), torch.float32)
    theta = _theta(2, torch.float32, scale=0.1)
    stn.warp(x, theta, AFFINE3D)
    stn.warp(x, theta, AFFINE3D, mode="nearest", padding="reflection")
    stn.sample(x, AFFINE3D.grid(theta.flatten(1), (16, 16, 16)))
    assert calls == ["fused_warp3d", "fused_warp3d", "fused_sample3d"]
    stn.warp(x, theta, AFFINE3D, backend="torch")
    stn.warp(x.half(), theta, AFFINE3D)  # warped in float32: still the kernel
    stn.warp(x.double(), theta.double(), AFFINE3D, backend="reference")
    assert calls == ["fused_warp3d", "fused_warp3d", "fused_sample3d", "fused_warp3d"]
    stn.warp(x[:, :, :4, :4, :4], theta, AFFINE3D)  # small volumes too (faster from 4x4x4 on)
    stn.sample(x[:, :, :4, :4, :4], AFFINE3D.grid(theta.flatten(1), (3, 3, 3)))
    assert calls == ["fused_warp3d", "fused_warp3d", "fused_sample3d", "fused_warp3d", "fused_warp3d", "fused_sample3d"]


def test_what_the_kernel_covers():
    assert _fused3d.fused3d_applies(torch.rand(1, 1, 2, 3, 4), "bilinear")
    assert _fused3d.fused3d_applies(torch.rand(1, 1, 2, 3, 4, dtype=torch.float64), "nearest")
    assert not _fused3d.fused3d_applies(torch.rand(1, 1, 2, 3, 4), "bicubic")
    assert not _fused3d.fused3d_applies(torch.rand(1, 1, 2, 3, 4, dtype=torch.float16), "bilinear")
    assert not _fused3d.fused3d_applies(torch.rand(1, 1, 0, 3, 4), "bilinear")  # F.grid_sample's error
    assert not _fused3d.fused3d_applies(torch.rand(1, 1, 3, 4), "bilinear")
    # a depth longer than 2^30 (whose far voxels the kernel would take for points far outside),
    # though the volume has fewer than 2^31 voxels: F.grid_sample's values, the operator refuses it
    deep = torch.linspace(0, 1, 3, dtype=torch.float64).view(1, 1, 1, 1, 3).expand(1, 1, 2**30 + 2**29, 1, 3)
    assert not _fused3d.fused3d_applies(deep, "bilinear")
    theta = AFFINE3D.identity(1, dtype=torch.float64)
    expected = F.grid_sample(deep, F.affine_grid(theta.view(1, 3, 4), [1, 1, 3, 1, 3], align_corners=False),
                             align_corners=False)
    torch.testing.assert_close(stn.warp(deep, theta, AFFINE3D, (3, 1, 3)), expected)
    with pytest.raises(ValueError, match="too large for the fused kernel"):
        torch.ops.torchstn.warp3d(deep, theta.view(1, 3, 4), "affine", [3, 1, 3], "bilinear", "zeros", False)
    # empty batches and channels
    for shape, size in [((0, 1, 3, 4, 5), (3, 4, 5)), ((2, 0, 3, 4, 5), (3, 4, 5))]:
        x = torch.rand(shape, requires_grad=True)
        theta = AFFINE3D.identity(shape[0]).requires_grad_()
        out = stn.warp(x, theta, AFFINE3D, size, backend="fused")
        assert out.shape == (shape[0], shape[1], *size)
        out.sum().backward()
        assert not theta.grad.any() and not x.grad.any()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, calls):
    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(_fused3d._library, "state", {})
    monkeypatch.setattr(_fused3d, "_build", broken)
    fast = _fused.fast_call()  # the compiled call as where the build failed: no 3-D kernel handed to it
    if fast is not None:
        fast.set_kernels3d(0, 0, 0, 0, _fused3d._ABI, _fused3d._node_backward)
    x, theta = random_input((2, 1, 4, 5, 6), torch.float32), _theta(2, torch.float32, scale=0.1)
    try:
        with pytest.warns(RuntimeWarning, match="3-D CPU sampler could not be built.*RuntimeError: no compiler here"):
            out = stn.warp(x, theta, AFFINE3D, backend="fused")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once: no second warning
            out2 = stn.sample(x, AFFINE3D.grid(theta.flatten(1), (4, 5, 6)), backend="fused")
    finally:
        if fast is not None:
            _fused3d._hand_to_fast_call(fast)
    assert calls == []
    torch.testing.assert_close(out, stn.warp(x, theta, AFFINE3D, backend="torch"))
    torch.testing.assert_close(out2, out)
    assert not _sample._fused3d_warp_applies("fused", AFFINE3D, x, theta, "bilinear")


def test_fused_status_reports_the_3d_kernel_apart(monkeypatch):
    from torchstn.sampling import fused_status

    assert fused_status(ndim=3) == (True, None)  # the module's fixture built it
    monkeypatch.setattr(_fused3d._library, "state", {})
    monkeypatch.setattr(_fused3d, "_build", lambda: (_ for _ in ()).throw(RuntimeError("no compiler here")))
    with pytest.warns(RuntimeWarning, match="fused 3-D CPU sampler could not be built"):
        assert fused_status(ndim=3) == (False, "no compiler here")
    assert fused_status() == (True, None)  # the 2-D kernel is another library
    with pytest.raises(ValueError, match="ndim must be 2 .* or 3"):
        fused_status(ndim=1)
