"""One policy for non-finite grid points on every backend: a NaN in is a NaN out.

A grid point with a NaN or ±Inf coordinate gives NaN in every channel, a NaN gradient
for θ (and for that point of a given grid), and adds nothing to the gradient of the
input; the finite points are untouched. ``F.grid_sample`` itself is the reference for
the finite points; for the others it is not (it reads 0 or an arbitrary pixel, or
crashes with border padding), so the policy is asserted directly.
"""

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn

BACKENDS = ["fused", "torch", "reference"]
PADDINGS = ["zeros", "border", "reflection"]
BAD = [float("nan"), float("inf"), -float("inf")]


def _grid(value: float, dims: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A (2, 3, 4[, 2], dims) grid with two non-finite points, and the mask of those points."""
    shape = (2, 3, 4) if dims == 2 else (2, 2, 3, 4) if dims == 3 else (2, 5)
    grid = torch.rand(*shape, dims, generator=torch.Generator().manual_seed(0), dtype=dtype) * 2.2 - 1.1
    bad = torch.zeros(shape, dtype=torch.bool)
    bad.view(2, -1)[0, 1] = bad.view(2, -1)[1, -1] = True
    grid.view(2, -1, dims)[0, 1, 0] = value
    grid.view(2, -1, dims)[1, -1, -1] = value
    return grid, bad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dims", [2, 3, 1])
def test_non_finite_points_give_nan_and_nothing_else(dims, value, mode, padding, backend, device, dtype):
    grid, bad = (t.to(device) for t in _grid(value, dims, dtype))
    shape = (2, 3, 5, 6) if dims == 2 else (2, 3, 4, 5, 6) if dims == 3 else (2, 3, 7)
    x = torch.rand(*shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device).requires_grad_()
    g = grid.clone().requires_grad_()
    out = stn.sample(x, g, mode=mode, padding=padding, backend=backend)
    nan_points = out.isnan().all(1)
    assert torch.equal(nan_points, bad) and not out.isnan().any(1)[~bad].any()
    # the finite points are exactly what grid_sample reads there
    safe = torch.where(bad[..., None], 0.0, grid)
    if dims == 1:
        x_ref, safe = x.detach()[:, :, None], torch.cat([safe, torch.zeros_like(safe)], -1)[:, None]
        ref = F.grid_sample(x_ref, safe, mode=mode, padding_mode=padding, align_corners=False)[:, :, 0]
    else:
        ref = F.grid_sample(x.detach(), safe, mode=mode, padding_mode=padding, align_corners=False)
    torch.testing.assert_close(out.detach().masked_fill(bad[:, None], 0), ref.masked_fill(bad[:, None], 0))
    out.masked_fill(bad[:, None], 0).sum().backward()  # a loss that ignores the NaN points
    assert not x.grad.isnan().any()  # the non-finite points read no pixel
    if mode == "bilinear":
        assert g.grad[bad].isnan().all() and not g.grad[~bad].isnan().any()  # both coordinates


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("transform", [stn.Affine(), stn.Projective(), stn.ThinPlateSpline(control=(3, 3))],
                         ids=lambda t: t.name)
def test_a_nan_theta_gives_a_nan_output_and_gradient(transform, padding, backend, device):
    """A diverging localisation net shows up as a NaN loss and NaN gradients, not blank images."""
    x = torch.rand(2, 3, 8, 9, device=device).requires_grad_()
    theta = transform.identity(2, device=device).clone()
    theta[1, 0] = float("nan")
    theta.requires_grad_()
    out = stn.warp(x, theta, transform, padding=padding, backend=backend)
    assert not out[0].isnan().any() and out[1].isnan().all()
    out.sum().backward()
    assert not theta.grad[0].isnan().any() and theta.grad[1].isnan().all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", [0, 2, 6, 7])
@pytest.mark.parametrize("value", [float("inf"), -float("inf")], ids=["inf", "-inf"])
def test_an_infinite_homography_entry_gives_nan_not_the_centre(value, entry, backend):
    """An infinite perspective entry (h31, h32) makes every w infinite and x / w = 0: the
    centre read for every point, a finite output of a non-finite θ. The whole sample is NaN
    instead, on every backend and on the compiled call (a batch-1 warp without gradient)."""
    transform = stn.Projective()
    x = torch.rand(2, 3, 8, 9).requires_grad_()
    theta = transform.identity(2).clone()
    theta[1, entry] = value
    theta.requires_grad_()
    out = stn.warp(x, theta, transform, backend=backend)
    assert not out[0].isnan().any() and out[1].isnan().all()
    out.sum().backward()
    assert not theta.grad[0].isnan().any() and theta.grad[1].isnan().all()
    with torch.no_grad():
        assert stn.warp(x[1:], theta[1:], transform, backend=backend).isnan().all()
        assert stn.warp(x[1:].double(), theta[1:].double(), transform, backend=backend).isnan().all()


def test_a_traced_torch_backend_gives_both_coordinates_a_nan_gradient():
    """Under a tracer (here torch.compile) the torch backend cannot branch on the grid's
    values; a point with one non-finite coordinate still gets NaN in both (the in-graph
    path, the one CUDA takes too)."""
    x = torch.rand(1, 2, 5, 6)
    grid = torch.tensor([[[[float("nan"), 0.2], [0.1, 0.1]], [[0.3, float("inf")], [-0.4, 0.5]]]], requires_grad=True)
    sample = torch.compile(lambda x, g: stn.sample(x, g, backend="torch"), backend="eager", fullgraph=True)
    out = sample(x, grid)
    out.sum().backward()
    bad = torch.tensor([[[True, False], [True, False]]])
    assert out.isnan().all(1).eq(bad).all()
    assert grid.grad[bad].isnan().all() and not grid.grad[~bad].isnan().any()


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("entry", ["sample", "warp"])
def test_inductor_keeps_a_non_finite_point_nan_with_a_nan_gradient(entry, backend):
    """Compiled by inductor (torch.compile's default backend), a NaN or Inf point still gives NaN
    and a NaN gradient in both coordinates (in every θ of its sample for warp): inductor's
    grid_sampler_2d reads such a point as one outside (0), and folds ``g * 0`` to 0, which
    hid the NaN term added for it. Without a gradient to record (where the torch backend's
    eager call goes straight to the CPU's F.grid_sample) and with one; the finite points
    and their gradients are F.grid_sample's."""
    torch._dynamo.reset()
    transform = stn.Similarity()
    x0 = torch.rand(2, 2, 5, 6, generator=torch.Generator().manual_seed(5))
    if entry == "sample":
        def run(x, loc):
            return stn.sample(x, loc, backend=backend)

        def grid_of(loc):
            return loc
    else:
        def run(x, loc):
            return stn.warp(x, loc, transform, backend=backend)

        def grid_of(loc):
            return transform.grid(loc, (5, 6))
    compiled = torch.compile(run, backend="inductor", fullgraph=True)
    for value in (float("nan"), float("inf")):
        if entry == "sample":
            loc, bad = _grid(value, 2, torch.float32)
        else:
            loc = transform.identity(2) + torch.tensor([[0.1, 0.2, -0.1, 0.05]])
            loc[1, 0] = value
            bad = torch.zeros(2, 5, 6, dtype=torch.bool)
            bad[1] = True
        for requires_grad in (False, True):
            x, l = x0.clone().requires_grad_(requires_grad), loc.clone().requires_grad_(requires_grad)
            out = compiled(x, l)
            assert torch.equal(out.isnan().all(1), bad) and not out.isnan().any(1)[~bad].any(), (value, requires_grad)
            xr = x0.clone().requires_grad_(requires_grad)
            safe = torch.where(bad[..., None], 0.0, grid_of(loc)).requires_grad_(requires_grad)
            ref = F.grid_sample(xr, safe, align_corners=False)
            torch.testing.assert_close(out.masked_fill(bad[:, None], 0), ref.masked_fill(bad[:, None], 0))
            if not requires_grad:
                continue
            out.masked_fill(bad[:, None], 0).sum().backward()  # a loss that ignores the NaN points
            ref.masked_fill(bad[:, None], 0).sum().backward()
            torch.testing.assert_close(x.grad, xr.grad)  # (the non-finite points read no pixel)
            if entry == "sample":
                assert l.grad[bad].isnan().all(), (value, l.grad[bad])  # both coordinates
                torch.testing.assert_close(l.grad[~bad], safe.grad[~bad])
            else:
                assert l.grad[1].isnan().all() and l.grad[0].isfinite().all(), (value, l.grad)


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
def test_off_the_cpu_a_non_finite_point_gives_nan_where_grid_sample_gives_zero(monkeypatch, value, requires_grad):
    """CUDA's grid_sample reads a non-finite point as a point far outside (0, with a zero
    gradient), where the CPU's returns NaN: emulated here (that rule, and the path a CUDA grid
    takes), the output and both coordinates' gradients are still NaN exactly there."""
    from torchstn.sampling import _grid_sample

    def cuda_rule(x, grid, **options):  # (GridSampler.cuh: a non-finite coordinate becomes pixel -100)
        return F.grid_sample(x, torch.where(grid.isfinite(), grid, -1e4), **options)

    monkeypatch.setattr(_grid_sample, "_on_cpu", lambda grid: False)
    monkeypatch.setattr(_grid_sample, "F", type("F", (), {"grid_sample": staticmethod(cuda_rule)}))
    grid, bad = _grid(value, 2, torch.float32)
    grid.requires_grad_(requires_grad)
    x = torch.rand(2, 3, 5, 6, requires_grad=True)
    out = _grid_sample.torch_sample(x, grid, "bilinear", "zeros", False)
    assert torch.equal(out.isnan().all(1), bad) and not out.isnan().any(1)[~bad].any()
    safe = torch.where(bad[..., None], 0.0, grid.detach())
    expected = F.grid_sample(x.detach(), safe, align_corners=False).masked_fill(bad[:, None], 0)
    torch.testing.assert_close(out.detach().masked_fill(bad[:, None], 0), expected)
    out.masked_fill(bad[:, None], 0).sum().backward()
    assert not x.grad.isnan().any()
    if requires_grad:
        assert grid.grad[bad].isnan().all() and not grid.grad[~bad].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("value", BAD, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dims", [2, 3])
def test_a_non_finite_pixel_is_read_where_grid_sample_reads_it_only(dims, value, mode, align_corners, backend):
    """Zeros padding: a corner outside the image reads 0, not 0 times the edge pixel nearest
    to it, so a NaN or Inf pixel at the edge of the image stays out of the points beside it
    that lie outside (forward and both gradients, against F.grid_sample's)."""
    shape = (2, 2, 4, 5) if dims == 2 else (2, 2, 3, 4, 5)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[(0, 0) + (0,) * dims] = value  # a corner pixel of one channel
    x[(1, 1) + (-1,) * dims] = value
    grid = torch.rand(2, *shape[2:], dims, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3.4 - 1.7
    beside = torch.tensor([-1.3, -1.6, -2.5, -0.9], dtype=torch.float64)[:, None]  # outside the corner, then on it
    grid.view(2, -1, dims)[0, :4] = beside
    grid.view(2, -1, dims)[1, :4] = -beside
    grad_out = torch.rand(2, 2, *shape[2:], generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    results = []
    for sampler in (lambda x, g: stn.sample(x, g, mode, "zeros", align_corners, backend=backend),
                    lambda x, g: F.grid_sample(x, g, mode, "zeros", align_corners)):
        xl, gl = x.clone().requires_grad_(), grid.clone().requires_grad_()
        out = sampler(xl, gl)
        results.append((out, *torch.autograd.grad(out, (xl, gl), grad_out)))
    (out, grad_x, grad_grid), (ref, ref_x, ref_grid) = results
    assert ref.isfinite().any() and not ref.isfinite().all()
    torch.testing.assert_close(out, ref, equal_nan=True)
    torch.testing.assert_close(grad_x, ref_x, equal_nan=True)
    if mode == "bilinear":
        torch.testing.assert_close(grad_grid, ref_grid, equal_nan=True)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims", [2, 3])
def test_a_finite_point_whose_pixel_coordinate_overflows_reads_what_a_far_point_reads(dims, backend, mode, padding):
    """A float32 grid value near 3e38 overflows the pixel coordinate (F.grid_sample then
    gives NaN with zeros padding, and its backward of 2-D bilinear reflection crashes the
    process); it is a finite point far outside and reads what a point far outside reads:
    nothing with zeros padding, the edge with border, a pixel of the image with reflection.
    No error, no NaN, finite gradients."""
    x = torch.arange(24.0).view(1, 1, 2, 3, 4)[..., 0, :, :] if dims == 2 else torch.arange(24.0).view(1, 1, 2, 3, 4)
    x = x.clone().requires_grad_()
    far = torch.tensor([[3e38, 0.1, 0.2], [0.0, -3e38, 0.1], [3e38, 3e38, -3e38], [0.1, 0.2, 0.3]])[:, :dims]
    far = far.view(1, *(1,) * (dims - 1), 4, dims)
    grid = far.clone().requires_grad_()
    out = stn.sample(x, grid, mode=mode, padding=padding, backend=backend)
    nearer = torch.where(far.abs() > 1e30, far.sign() * 1e6, far)  # the same points, no overflow
    if padding == "reflection":  # (where it lands is rounding: any pixel of the image)
        assert ((out >= 0) & (out <= 23)).all()
    else:
        torch.testing.assert_close(out, F.grid_sample(x, nearer, mode=mode, padding_mode=padding, align_corners=False))
    out.sum().backward()
    assert x.grad.isfinite().all() and grid.grad.isfinite().all()
