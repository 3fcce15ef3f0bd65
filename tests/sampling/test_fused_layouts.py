"""The fused kernel on every memory layout and row length: channels_last and strided inputs
read in place, the output in the input's memory format, rows longer than one block, and
images wide enough that most points take the vector path for interior points."""

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from tests._helpers import random_input, random_theta

PADDINGS = ["zeros", "border", "reflection"]

pytestmark = pytest.mark.usefixtures("fused_kernel")  # build it once, or skip


def _warp_and_grads(x0, p0, transform, backend, size, padding, align_corners):
    x, p = x0.detach().clone().requires_grad_(), p0.detach().clone().requires_grad_()
    out = stn.warp(x, p, transform, size=size, padding=padding, align_corners=align_corners, backend=backend)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()
    return out, x.grad, p.grad


def _assert_same(fused, torch_path, dtype):
    atol = 2e-5 if dtype == torch.float32 else 1e-10
    for name, a, b in zip(("output", "gradient wrt x", "gradient wrt params"), fused, torch_path):
        scale = 10 if name == "gradient wrt params" else 1
        torch.testing.assert_close(a, b, atol=atol * scale * max(1.0, b.abs().max().item()), rtol=1e-4, msg=name)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_channels_last_is_read_in_place_and_kept(padding, align_corners, dtype):
    transform = stn.Affine()
    x = random_input((2, 3, 9, 13), dtype).contiguous(memory_format=torch.channels_last)
    p = random_theta(transform, 2, dtype, scale=0.3, seed=4)
    fused = _warp_and_grads(x, p, transform, "fused", (7, 11), padding, align_corners)
    reference = _warp_and_grads(x.contiguous(), p, transform, "torch", (7, 11), padding, align_corners)
    _assert_same(fused, reference, dtype)
    assert fused[0].is_contiguous(memory_format=torch.channels_last)
    assert fused[1].stride() == x.stride()  # the input's gradient in the input's layout


@pytest.mark.parametrize("make", [
    lambda x: x[:, :, ::2, 1::2],  # a strided view
    lambda x: x[:1].expand(3, -1, -1, -1),  # a broadcast batch (stride 0)
    lambda x: x.transpose(2, 3),  # width stride != 1
], ids=["strided", "expanded", "transposed"])
def test_strided_inputs_equal_their_contiguous_copy(make, dtype):
    transform = stn.Projective()
    x = make(random_input((3, 2, 12, 10), dtype))
    p = random_theta(transform, 3, dtype, scale=0.05, seed=5)
    fused = _warp_and_grads(x, p, transform, "fused", (5, 6), "border", False)
    reference = _warp_and_grads(x.contiguous(), p, transform, "torch", (5, 6), "border", False)
    _assert_same(fused, reference, dtype)


@pytest.mark.parametrize("width", [1, 7, 8, 63, 64, 65, 150])
def test_every_row_length_matches_grid_sample(width, dtype):
    # rows shorter than a vector, exactly one, one block, and several blocks with a remainder;
    # a near-identity warp of a wide image puts most vectors of points inside (the pair path)
    transform = stn.Affine()
    x = random_input((2, 2, 11, width), dtype)
    p = random_theta(transform, 2, dtype, scale=0.02, seed=6)
    fused = _warp_and_grads(x, p, transform, "fused", None, "zeros", False)
    reference = _warp_and_grads(x, p, transform, "torch", None, "zeros", False)
    _assert_same(fused, reference, dtype)


def test_sample_of_a_given_grid_with_channels_last_input(dtype):
    x = random_input((2, 4, 10, 12), dtype).contiguous(memory_format=torch.channels_last)
    grid = stn.Affine().grid(random_theta(stn.Affine(), 2, dtype, scale=0.2, seed=7), (6, 9))
    out = stn.sample(x, grid, padding="reflection", backend="fused")
    expected = F.grid_sample(x.contiguous(), grid, padding_mode="reflection", align_corners=False)
    torch.testing.assert_close(out, expected, atol=2e-5 if dtype == torch.float32 else 1e-10, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_a_given_grid_on_channels_last_images_in_one_pass(channels, padding):
    # float32 grids of 2-4 channels side by side take the one-pass path: wide rows near the
    # identity (vectors of points inside) and points outside at the image's edges
    x = random_input((2, channels, 17, 40), torch.float32).contiguous(memory_format=torch.channels_last)
    grid = stn.Affine().grid(random_theta(stn.Affine(), 2, torch.float32, scale=0.1, seed=8), (13, 37))
    out = stn.sample(x, grid, padding=padding, backend="fused")
    expected = F.grid_sample(x.contiguous(), grid, padding_mode=padding, align_corners=False)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_opcheck():
    x = random_input((2, 3, 6, 7), torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    theta = torch.eye(2, 3, dtype=torch.float64).repeat(2, 1, 1) + 0.1
    torch.library.opcheck(torch.ops.torchstn.warp2d.default, (x, theta.requires_grad_(), "affine", [5, 4], "bilinear", "zeros", False, 0.0))


@pytest.mark.parametrize("ndim", [2, 3])
def test_eager_call_equals_the_operator_and_modes_see_the_operator(ndim):
    """Plain eager calls skip the dispatcher (the same kernel and formula), for images and
    volumes; a dispatch mode sees the operator."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shape, family = ((2, 3, 8, 9), "affine") if ndim == 2 else ((2, 2, 16, 16, 16), "affine3d")
    x0 = random_input(shape, torch.float64)
    theta0 = torch.eye(ndim, ndim + 1, dtype=torch.float64).repeat(2, 1, 1)
    theta0 = theta0 + 0.05 * random_input(theta0.shape, torch.float64)
    if ndim == 2:
        operator = lambda x, t: torch.ops.torchstn.warp2d(x, t, "affine", [8, 9], "bilinear", "reflection", False, 0.0)
    else:
        operator = lambda x, t: torch.ops.torchstn.warp3d(x, t, "affine", [16, 16, 16], "bilinear", "reflection", False)
    results = []
    for call in (lambda x, t: stn.warp(x, t, family, padding="reflection"), operator):
        x, theta = x0.clone().requires_grad_(), theta0.clone().requires_grad_()
        out = call(x, theta)
        (gx, gt) = torch.autograd.grad(out, (x, theta), torch.ones_like(out), create_graph=True)
        (ggt,) = torch.autograd.grad(gt.square().sum(), theta)  # second order: through the grid path
        results.append((out, gx, gt, ggt))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record() as record:
        stn.warp(x0, theta0, family)
    assert f"torchstn.warp{ndim}d.default" in record.ops


@pytest.mark.parametrize("channels", [2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("location", ["affine", "projective"])
def test_channels_side_by_side_give_the_channel_by_channel_values(channels, mode, location, dtype):
    """channels_last inputs of up to 4 channels take a path of their own in float32 (a pixel's
    channels in one load, written with one store), for affine rows and homographies: exactly
    the values of the NCHW input, NaN where a location is not finite, and a non-finite pixel
    read only where a corner is inside."""
    transform = stn.Projective() if location == "projective" else stn.Affine()
    x = random_input((2, channels, 17, 23), dtype)
    theta = random_theta(transform, 2, dtype, scale=0.6 if location == "affine" else 0.2, seed=8)
    for padding in PADDINGS:
        for align_corners in (False, True):
            options = {"size": (19, 21), "mode": mode, "padding": padding, "align_corners": align_corners}
            side_by_side = stn.warp(x.contiguous(memory_format=torch.channels_last), theta, transform, **options,
                                    backend="fused")
            assert side_by_side.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(side_by_side, stn.warp(x, theta, transform, **options, backend="fused"),
                                       rtol=0, atol=0)
            if location == "affine":
                grid = F.affine_grid(theta.view(2, 2, 3), [2, channels, 19, 21], align_corners=align_corners)
            else:  # (torch has no homography grid; torchstn's own is checked against closed forms elsewhere)
                grid = transform.grid(theta, (19, 21), align_corners)
            expected = F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)
            torch.testing.assert_close(side_by_side, expected, atol=2e-5 if dtype == torch.float32 else 1e-10,
                                       rtol=1e-5)
    x[:, :, 0, 0] = float("inf")  # the first pixel: where a corner outside points, never read
    theta[1, 0] = float("nan")
    side_by_side = stn.warp(x.contiguous(memory_format=torch.channels_last), theta, transform, size=(19, 21),
                            mode=mode, backend="fused")
    nchw = stn.warp(x, theta, transform, size=(19, 21), mode=mode, backend="fused")
    torch.testing.assert_close(side_by_side, nchw, rtol=0, atol=0, equal_nan=True)
    assert side_by_side[1].isnan().all() and side_by_side[0].isinf().sum() < side_by_side[0].numel() / 10


def _gathers_x(location, mode, padding, channels):
    """Whether the kernel may gather an NCHW float32 input's dL/dx per pixel (fused_warp2d.cpp's
    gather_x_gradient) instead of scattering it, with both gradients wanted."""
    return location == "affine" and mode == "bilinear" and padding == "zeros" and channels >= 3


def _gradients(x, theta, location, grad_out, **options):
    x, theta = x.detach().clone().requires_grad_(), theta.detach().clone().requires_grad_()
    if location == "grid":
        out = stn.sample(x, theta, **options, backend="fused")
    else:
        out = stn.warp(x, theta, location, **options, backend="fused")
    return torch.autograd.grad(out, (x, theta), grad_out(out))


@pytest.mark.parametrize("channels", [2, 3, 4, 5])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
def test_channels_side_by_side_give_the_channel_by_channel_gradients(channels, mode, location):
    """The backward of channels_last inputs of up to 4 channels takes a path of its own in
    float32 (a pixel's channels read and accumulated together): exactly the gradients of the
    NCHW input, whatever the layout of the output's gradient (NCHW, channels_last, a
    broadcast; a narrow NCHW one packs rows into blocks), NaN where a location is not finite,
    and a non-finite pixel read only where a corner is inside. Except dL/dx where the NCHW
    input's is gathered per pixel (affine, bilinear, zeros padding, three channels or more,
    an output gradient of unit width stride: NCHW, or the broadcast made so): the same to
    float32's rounding there."""
    dtype = torch.float32
    x = random_input((2, channels, 17, 23), dtype)
    theta = random_theta(stn.Projective() if location == "projective" else stn.Affine(), 2, dtype, scale=0.3, seed=9)
    if location == "grid":
        theta = stn.Affine().grid(theta, (19, 21))
    layouts = {
        "nchw": lambda out: torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape),
        "channels_last": lambda out: torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape).contiguous(
            memory_format=torch.channels_last),
        "broadcast": lambda out: torch.full((1, 1, 1, 1), 0.5, dtype=dtype).expand(out.shape),
    }
    sizes = {} if location == "grid" else {"size": (19, 21)}
    for padding in PADDINGS:
        for align_corners in (False, True):
            options = {**sizes, "mode": mode, "padding": padding, "align_corners": align_corners}
            for name, grad_out in layouts.items():
                side_by_side = _gradients(x.contiguous(memory_format=torch.channels_last), theta, location, grad_out,
                                          **options)
                nchw = _gradients(x, theta, location, grad_out, **options)
                assert side_by_side[0].stride() == x.contiguous(memory_format=torch.channels_last).stride()
                gathered = _gathers_x(location, mode, padding, channels) and name != "channels_last"
                for a, b, what in zip(side_by_side, nchw, ("x", "location")):
                    tolerance = 1e-5 if gathered and what == "x" else 0
                    torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance,
                                               msg=f"{what}, {name} {padding} {align_corners}")
    x[:, :, 0, 0] = float("inf")  # the first pixel: where a corner outside points, never read
    theta[1, 0] = float("nan")
    options = {**sizes, "mode": mode}
    side_by_side = _gradients(x.contiguous(memory_format=torch.channels_last), theta, location, layouts["nchw"],
                              **options)
    nchw = _gradients(x, theta, location, layouts["nchw"], **options)
    for a, b, what in zip(side_by_side, nchw, ("x", "location")):
        tolerance = 1e-5 if _gathers_x(location, mode, "zeros", channels) and what == "x" else 0
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, equal_nan=True)
    if mode == "bilinear":  # (sample 0 reads the inf pixel: its gradient may be NaN as well)
        assert side_by_side[1][1, 0].isnan().all() if location == "grid" else side_by_side[1][1].isnan().all()


def test_channels_side_by_side_gradients_match_grid_sample():
    """The same path against F.grid_sample's own gradients (an independent reference)."""
    x = random_input((3, 3, 20, 26), torch.float32).contiguous(memory_format=torch.channels_last)
    theta = random_theta(stn.Affine(), 3, torch.float32, scale=0.4, seed=10)
    fused = _warp_and_grads(x, theta, stn.Affine(), "fused", (15, 70), "zeros", False)
    reference = _warp_and_grads(x.contiguous(), theta, stn.Affine(), "torch", (15, 70), "zeros", False)
    _assert_same(fused, reference, torch.float32)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("grid", [False, True], ids=["theta", "grid"])
def test_points_wholly_outside_read_nothing_and_give_zero(channels, channels_last, grid):
    """Zeros padding: the eight-point vectors with no corner inside the image write 0 without
    reading it (the single passes' shortcut); the image moved half out of view and rotated, so
    rows hold wholly outside, mixed and inside vectors, and a NaN θ row must still give NaN."""
    x = torch.rand(3, channels, 40, 72) + 1.0  # no zero pixel: a missed corner would show
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    angle = torch.tensor(0.3)
    theta = torch.tensor([[[angle.cos(), -angle.sin(), 0.9], [angle.sin(), angle.cos(), -0.4]]]).repeat(3, 1, 1)
    theta[1, 0, 2] = -1.7  # mostly outside
    theta[2, 1, 1] = float("nan")
    size = (24, 80)
    if grid:
        points = F.affine_grid(theta, (3, channels, *size), align_corners=False)
        got, expected = stn.sample(x, points, backend="fused"), F.grid_sample(x, points, align_corners=False)
    else:  # (the same points as grid + F.grid_sample: torchstn's base grid)
        got, expected = (stn.warp(x, theta, "affine", size, backend=b) for b in ("fused", "torch"))
    torch.testing.assert_close(got[:2], expected[:2], atol=5e-5, rtol=1e-4)
    assert got[2].isnan().all()
    assert (got[:2] == 0).float().mean() > 0.3  # the shortcut was exercised


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_channels_last_edge_vectors_with_single_non_finite_points(channels, padding, align_corners):
    """channels_last: eight-point vectors across the image's edge (some corners inside, some
    outside: read point by point through the block, with masked corner loads), with single
    NaN and inf points among finite ones: every point gets its own value, NaN only where its
    location is not finite, as the reference sampler gives."""
    generator = torch.Generator().manual_seed(1)
    x = (torch.rand(2, channels, 37, 53, generator=generator) + 0.5).contiguous(memory_format=torch.channels_last)
    points = torch.rand(2, 19, 64, 2, generator=generator) * 2.6 - 1.3  # a fifth of them outside
    points[torch.rand(2, 19, 64, generator=generator) < 0.02] = float("nan")
    points[0, 3, 5, 0] = float("inf")
    got = stn.sample(x, points, padding=padding, align_corners=align_corners, backend="fused")
    expected = stn.sample(x, points, padding=padding, align_corners=align_corners, backend="reference")
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert 0 < got.isnan().float().mean() < 0.1


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
@pytest.mark.parametrize("wanted", ["both", "x", "theta"])
def test_the_one_pass_backward_equals_the_two_passes_bit_for_bit(channels, location, wanted):
    """The float32 backward of NCHW inputs runs in one pass, each vector of points located in
    registers (wide rows longer than a block, and narrow rows packed into blocks); an output
    gradient whose width stride is not 1 takes the two passes (located into a block, then
    read back). Both must give the same bits, for every padding, with points outside the
    image, a NaN θ and an infinite pixel."""
    dtype = torch.float32
    transform = stn.Projective() if location == "projective" else stn.Affine()
    for shape, size in (((3, channels, 20, 90), (17, 100)), ((2, channels, 9, 11), (7, 12))):
        x = random_input(shape, dtype)
        x[0, :, 3, 5] = float("inf")
        theta = random_theta(transform, shape[0], dtype, scale=0.3, seed=11)
        theta[0, 0] += 0.4  # (zoomed out: more of the first sample's points outside)
        theta[1, 2] = float("nan")
        if shape[0] > 2:  # the identity: with align_corners, points exactly on the first pixel (border's clip)
            theta[2] = transform.identity(1, dtype=dtype)[0]
        loc = stn.Affine().grid(theta, size) if location == "grid" else theta
        for padding in PADDINGS:
            for align_corners in (False, True):
                options = {"padding": padding, "align_corners": align_corners}
                if location != "grid":
                    options["size"] = size
                grads = []
                for width_step in (1, 2):
                    xg = x.detach().clone().requires_grad_(wanted != "theta")
                    lg = loc.detach().clone().requires_grad_(wanted != "x")
                    out = (stn.sample(xg, lg, **options, backend="fused") if location == "grid"
                           else stn.warp(xg, lg, transform, **options, backend="fused"))
                    grad_out = torch.zeros(*out.shape[:3], out.shape[3] * width_step, dtype=dtype)[..., ::width_step]
                    grad_out.copy_(torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape))
                    assert grad_out.stride(-1) == width_step
                    leaves = [t for t in (xg, lg) if t.requires_grad]
                    grads.append(torch.autograd.grad(out, leaves, grad_out))
                for a, b in zip(*grads):
                    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True,
                                               msg=f"{shape} {padding} {align_corners}")
                if wanted != "x":
                    assert grads[0][-1][1].isnan().all()


@pytest.mark.parametrize("batch", [7, 1])
@pytest.mark.parametrize("location", ["affine", "grid"])
def test_the_bordered_backward_on_two_threads_equals_one_thread_bit_for_bit(location, batch):
    """The backward of narrow rows with dL/dx under zeros padding reads each sample from a
    bordered copy and adds its dL/dx into a bordered buffer, both the calling thread's own:
    the batch split over two threads gives the one thread's gradients bit for bit, and two
    backwards in a row (two images, their forwards first; with one sample each, the second
    call's sample 0 is the sample the thread copied last) never read each other's copies."""
    transform = stn.Affine()
    images = [random_input((batch, 3, 9, 11), torch.float32, seed=s) for s in (5, 15)]
    theta = random_theta(transform, batch, torch.float32, scale=0.2, seed=6)
    loc = transform.grid(theta, (7, 12)) if location == "grid" else theta
    grad_out = torch.linspace(-1, 1, batch * 3 * 7 * 12).reshape(batch, 3, 7, 12)
    threads = torch.get_num_threads()

    def forward(x):
        xg, lg = x.detach().clone().requires_grad_(), loc.detach().clone().requires_grad_()
        out = (stn.sample(xg, lg, backend="fused") if location == "grid"
               else stn.warp(xg, lg, transform, size=(7, 12), backend="fused"))
        return out, (xg, lg)

    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            alone = [torch.autograd.grad(*forward(x), grad_out) for x in images]
            both = [forward(x) for x in images]  # both forwards, then both backwards
            in_a_row = [torch.autograd.grad(out, leaves, grad_out) for out, leaves in both]
            if n == 1:
                reference = alone
            for got in (alone, in_a_row):
                for a, b in zip(sum(map(list, got), []), sum(map(list, reference), [])):
                    torch.testing.assert_close(a, b, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)
