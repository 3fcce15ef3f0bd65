"""The sampler: reference kernel against grid_sample and finite differences, warp, 1-D signals."""

import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from tests._helpers import random_grid, random_input
from torchstn.testing import check_sampler

PADDINGS = ["zeros", "border", "reflection"]


def _grid_sample(x, grid, mode, padding, align_corners):
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_reference_matches_grid_sample_2d(mode, padding, align_corners, device, dtype):
    x = random_input((2, 3, 6, 7), dtype, device)
    grid = random_grid((2, 5, 9, 2), dtype, device)
    check_sampler(
        stn.reference_sample, _grid_sample, x, grid, mode=mode, padding=padding, align_corners=align_corners,
        atol=1e-5 if dtype == torch.float32 else 1e-10,
    )


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_reference_matches_grid_sample_3d(mode, padding, align_corners, device, dtype):
    x = random_input((2, 2, 4, 5, 6), dtype, device)
    grid = random_grid((2, 3, 4, 5, 3), dtype, device)
    check_sampler(
        stn.reference_sample, _grid_sample, x, grid, mode=mode, padding=padding, align_corners=align_corners,
        atol=1e-5 if dtype == torch.float32 else 1e-10,
    )


def test_check_sampler_bounds_the_grid_gradient_at_the_image_s_scale():
    """The grid's gradient is half the image's size times the pixel-coordinate one: check_sampler
    failed correct float32 samplers at 224 pixels (1.5e-3 apart where its bound was a fixed 1e-4)
    and still fails one whose grid gradient is off by a pixel-scale error."""
    x, grid = random_input((2, 3, 224, 224), torch.float32), random_grid((2, 224, 224, 2), torch.float32)
    # (atol 1e-4: a float32 pixel coordinate of 224 pixels is rounded to about 1e-5 of a pixel)
    options = {"mode": "bilinear", "padding": "zeros", "align_corners": False, "atol": 1e-4}
    check_sampler(stn.reference_sample, _grid_sample, x, grid, **options)

    class _Off(torch.autograd.Function):  # the grid's gradient off by 1e-3 of its largest pixel-scale value
        @staticmethod
        def forward(ctx, g):  # noqa: ANN001, ANN205
            return g.view_as(g)

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            return grad + 1e-3 * 112 * grad.abs().amax()

    with pytest.raises(AssertionError, match="gradient wrt grid"):
        check_sampler(lambda x_, g_, **o: _grid_sample(x_, _Off.apply(g_), **o), _grid_sample, x, grid, **options)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("ndim", [2, 3])
def test_reference_gradcheck(padding, align_corners, ndim, device):
    spatial = (4, 5) if ndim == 2 else (3, 4, 3)
    x = random_input((2, 2, *spatial), torch.float64, device).requires_grad_()
    grid = random_grid((2, *spatial[::-1][:ndim], ndim), torch.float64, device, spread=1.2).requires_grad_()
    fn = lambda x, g: stn.sample(x, g, "bilinear", padding, align_corners, backend="reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, grid), eps=1e-6, atol=1e-6)


def test_sub_gradient_at_integer_coordinates_is_right_sided():
    # one row 0, 1, 4, 9: at the pixel centre of column 1 (u = 1, an integer) the derivative
    # of the interpolant is taken from the right: U[2] - U[1] = 3, not from the left (1)
    x = torch.tensor([[[[0.0, 1.0, 4.0, 9.0]]]], dtype=torch.float64)
    u = 1.0
    gx = (2 * u + 1) / 4 - 1  # align_corners=False: normalised position of pixel centre 1
    grads = []
    for backend in ("reference", "torch"):
        grid = torch.tensor([[[[gx, 0.0]]]], dtype=torch.float64, requires_grad=True)
        stn.sample(x, grid, backend=backend).sum().backward()
        grads.append(grid.grad[0, 0, 0, 0].item())
    d_norm = 4 / 2  # du / d(grid)
    assert grads[0] == pytest.approx(3.0 * d_norm)
    assert grads[1] == pytest.approx(grads[0])
    # it is the one-sided finite difference from above, not the one from below
    h = 1e-7
    f = lambda g: stn.sample(x, torch.tensor([[[[g, 0.0]]]], dtype=torch.float64)).item()  # noqa: E731
    assert (f(gx + h) - f(gx)) / h == pytest.approx(grads[0], rel=1e-5)
    assert (f(gx) - f(gx - h)) / h == pytest.approx(1.0 * d_norm, rel=1e-5)


def test_nearest_has_zero_gradient_wrt_grid_and_routes_input_gradient():
    x = random_input((1, 2, 5, 5), torch.float64, "cpu").requires_grad_()
    grid = random_grid((1, 3, 3, 2), torch.float64, "cpu", spread=0.9).requires_grad_()
    out = stn.sample(x, grid, mode="nearest", backend="reference")
    out.sum().backward()
    assert torch.count_nonzero(grid.grad) == 0
    assert x.grad.sum().item() == pytest.approx(out.numel())  # each output reads exactly one pixel


@pytest.mark.parametrize("padding", PADDINGS)
def test_bicubic_default_backend_equals_grid_sample(padding):
    x = random_input((2, 3, 6, 7), torch.float64, "cpu")
    grid = random_grid((2, 4, 5, 2), torch.float64, "cpu")
    ref = F.grid_sample(x, grid, mode="bicubic", padding_mode=padding, align_corners=False)
    torch.testing.assert_close(stn.sample(x, grid, mode="bicubic", padding=padding), ref)


def test_reference_backend_rejects_bicubic():
    x, grid = torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="bicubic.*backend='torch'"):
        stn.sample(x, grid, mode="bicubic", backend="reference")


@pytest.mark.parametrize("out_size", [(3, 4), (12, 16)], ids=["downsample", "oversample"])
def test_output_has_the_grid_size(out_size):
    x = random_input((2, 3, 6, 8), torch.float32, "cpu")
    out = stn.warp(x, stn.Affine().identity(2), stn.Affine(), size=out_size)
    assert out.shape == (2, 3, *out_size)
    ref = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    if out_size[0] > 6:  # over-sampling the identity is plain bilinear up-sampling (antialiasing aside)
        torch.testing.assert_close(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])


TRANSFORMS = [
    stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective(),
    stn.ThinPlateSpline(control=(3, 3)), stn.Affine3D(), stn.Affine1D(),
]


@pytest.mark.parametrize("backend", ["torch", "fused", "reference"])
@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: t.name)
def test_warp_gradcheck_wrt_params_and_input(transform, backend, device):
    g = torch.Generator().manual_seed(3)
    b = 2
    p = transform.identity(b, dtype=torch.float64) + 0.1 * torch.randn(b, transform.num_params, generator=g, dtype=torch.float64)
    p = p.to(device).requires_grad_()
    spatial = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}[transform.ndim]
    x = torch.randn(b, 2, *spatial, generator=g, dtype=torch.float64).to(device).requires_grad_()
    fn = lambda x, p: stn.warp(x, p, transform, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, p), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("align_corners", [False, True])
def test_signal_sampling_equals_linear_interpolation(align_corners):
    length = 9
    x = random_input((2, 3, length), torch.float64, "cpu")
    grid = random_grid((2, 20, 1), torch.float64, "cpu", spread=0.95)
    out = stn.sample(x, grid, padding="border", align_corners=align_corners)
    u = (grid[..., 0] + 1) / 2 * (length - 1) if align_corners else ((grid[..., 0] + 1) * length - 1) / 2
    for b in range(2):
        for c in range(3):
            expected = np.interp(u[b].numpy(), np.arange(length), x[b, c].numpy())
            np.testing.assert_allclose(out[b, c].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("dtype16", [torch.float16, torch.bfloat16])
def test_half_precision_works(dtype16):
    x = random_input((2, 3, 8, 8), torch.float32, "cpu")
    theta = torch.tensor([[0.9, 0.1, 0.05, -0.1, 0.9, 0.0]] * 2)
    ref = stn.warp(x, theta, stn.Affine())
    out = stn.warp(x.to(dtype16), theta.to(dtype16), stn.Affine())
    assert out.dtype == dtype16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("dtype16", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
def test_half_precision_samples_large_planes_right_on_the_cpu(dtype16, backend):
    """torch 2.13's CPU grid_sample in float16/bfloat16 reads wrong pixels once a plane holds
    more than about 32,768 of them (a constant 2 came out NaN or 0 at 256x256, and a signal of
    40,000 read 0) and its backward corrupted memory; sample handed half inputs to it. They
    are sampled in float32 on the CPU, the output and gradient in their dtype."""
    x = torch.full((1, 2, 256, 256), 2.0, dtype=dtype16, requires_grad=True)
    grid = F.affine_grid(torch.tensor([[[0.9, 0.0, 0.0], [0.0, 0.9, 0.0]]]), (1, 1, 256, 256), align_corners=False)
    out = stn.sample(x, grid.to(dtype16), backend=backend)
    assert out.dtype == dtype16 and bool((out == 2).all())
    out.sum().backward()
    reference = x.detach().float().requires_grad_()
    F.grid_sample(reference, grid.to(dtype16).float(), align_corners=False).sum().backward()
    assert x.grad.dtype == dtype16
    torch.testing.assert_close(x.grad.float(), reference.grad.to(dtype16).float(), rtol=0, atol=0)
    signal = torch.full((1, 1, 40000), 2.0, dtype=dtype16)
    points = torch.linspace(-0.9, 0.9, 100, dtype=dtype16)[None, :, None]
    assert bool((stn.sample(signal, points, backend=backend) == 2).all())


def test_empty_batch():
    out = stn.warp(torch.rand(0, 3, 8, 8), torch.zeros(0, 6), stn.Affine(), backend="reference")
    assert out.shape == (0, 3, 8, 8)


# ---- bad input: each raises a clear error naming the argument, the expectation and what arrived


def test_wrong_parameter_count():
    with pytest.raises(ValueError, match=r"params for Affine must have shape \(B, 6\), got \(2, 5\)"):
        stn.warp(torch.rand(2, 1, 8, 8), torch.zeros(2, 5), stn.Affine())


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got shape \(1, 8, 8\)"):
        stn.warp(torch.rand(1, 8, 8), torch.zeros(1, 6), stn.Affine())
    with pytest.raises(ValueError, match=r"x must have 3 or 4 or 5 dimensions, got shape \(8, 8\)"):
        stn.sample(torch.rand(8, 8), torch.zeros(1, 2, 2, 2))


def test_wrong_grid_shape():
    with pytest.raises(ValueError, match=r"grid for a 4-D input must have shape \(B, H, W, 2\), got \(1, 2, 2, 3\)"):
        stn.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 3))


def test_mismatched_batch():
    with pytest.raises(ValueError, match=r"x and params must have the same batch size, got 3 .* and 2"):
        stn.warp(torch.rand(3, 1, 8, 8), torch.zeros(2, 6), stn.Affine())
    with pytest.raises(ValueError, match=r"x and grid must have the same batch size"):
        stn.sample(torch.rand(3, 1, 8, 8), torch.zeros(2, 4, 4, 2))
    # a matrix form is named by the shape the caller passed, not the (B, P) it stands for
    for transform, matrix in ((stn.Affine(), torch.eye(2, 3)), (stn.Projective(), torch.eye(3)),
                              (stn.Affine3D(), torch.eye(3, 4))):
        x = torch.rand(2, 1, *(4,) * transform.ndim)
        shape = re.escape(str(tuple(matrix[None].shape)))
        with pytest.raises(ValueError, match=rf"got 2 \(x shape .*\) and 1 \(params shape {shape}\)"):
            stn.warp(x, matrix[None], transform)


def test_the_public_reference_sampler_checks_its_arguments_as_sample_does():
    """stn.reference_sample broadcast a grid of batch 1 over x's batch, dropped a third grid
    coordinate of a 2-D input, read an unknown padding as zeros and integer pixels as floats."""
    x, grid = torch.rand(2, 1, 6, 7), torch.rand(2, 3, 3, 2) * 2 - 1
    torch.testing.assert_close(stn.reference_sample(x, grid, "bilinear", "border", True),
                               F.grid_sample(x, grid, padding_mode="border", align_corners=True))
    with pytest.raises(ValueError, match=r"x and grid must have the same batch size"):
        stn.reference_sample(x, grid[:1])
    with pytest.raises(ValueError, match=r"grid for a 4-D input must have shape \(B, H, W, 2\)"):
        stn.reference_sample(x, torch.rand(2, 3, 3, 3))
    with pytest.raises(ValueError, match=r"padding must be one of .* got 'wrap'"):
        stn.reference_sample(x, grid, "bilinear", "wrap")
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype"):
        stn.reference_sample(x.long(), grid)


def test_integer_dtype():
    with pytest.raises(TypeError, match=r"x must have a floating-point dtype .* got torch.uint8"):
        stn.warp(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(1, 6), stn.Affine())
    with pytest.raises(TypeError, match=r"params must have a floating-point dtype .* got torch.int64"):
        stn.warp(torch.rand(1, 1, 8, 8), torch.zeros(1, 6, dtype=torch.long), stn.Affine())


@pytest.mark.parametrize("backend", [None, "fused", "torch", "reference"])
@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "_mkldnn"])
def test_a_tensor_without_strides_is_refused_by_name(layout, backend):
    """A sparse or MKL-DNN tensor has no storage the kernels can read: the default backend's fused
    kernel failed on its data pointer ("Cannot access data pointer of Tensor that doesn't have
    storage"), the others somewhere inside torch; every backend now names the argument."""
    convert = {"sparse_coo": torch.Tensor.to_sparse, "sparse_csr": torch.Tensor.to_sparse_csr,
               "_mkldnn": torch.Tensor.to_mkldnn}[layout]
    x, grid, theta = torch.rand(2, 3, 8, 8), torch.zeros(2, 4, 4, 2), stn.Affine().identity(2)
    volume, signal = torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 5)
    with warnings.catch_warnings():  # (torch's "Sparse CSR tensor support is in beta state")
        warnings.simplefilter("ignore", UserWarning)
        calls = [
            ("x", stn.sample, (convert(x), grid)),
            ("x", stn.sample, (convert(signal), torch.zeros(1, 3, 1))),
            ("x", stn.warp, (convert(x), theta, "affine")),
            ("x", stn.warp, (convert(x), theta.view(2, 2, 3), stn.Affine())),
            ("x", stn.warp, (convert(x), stn.Projective().identity(2), "projective")),
            ("x", stn.warp, (convert(volume), stn.Affine3D().identity(1), "affine3d")),
            ("grid", stn.sample, (x, convert(grid))),
            ("params", stn.warp, (x, convert(theta), "affine")),
            ("params", stn.warp, (x, convert(theta.view(2, 2, 3)), "affine")),
        ]
    for name, function, args in calls:
        message = rf"{name} must be a strided \(dense\) tensor, got torch\.{layout}; convert it with \.to_dense\(\)"
        with pytest.raises(TypeError, match=message):
            function(*args, backend=backend)


@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
def test_nested_tensors_are_refused_by_name(backend):
    """A nested tensor has torch.strided's layout but ragged sizes: refused with a TypeError that
    names the argument (it reached the kernels' own "Internal error ... doesn't support strides")."""
    x, grid, theta = torch.rand(2, 3, 8, 8), torch.zeros(2, 4, 4, 2), stn.Affine().identity(2)
    nested = torch.nested.nested_tensor  # (a warning: the prototype's API)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        calls = [("x", stn.sample, (nested(list(x)), grid)), ("x", stn.warp, (nested(list(x)), theta, "affine")),
                 ("grid", stn.sample, (x, nested(list(grid)))), ("params", stn.warp, (x, nested(list(theta)), "affine"))]
        for name, function, args in calls:
            with pytest.raises(TypeError, match=rf"^{name} must be a dense tensor, got a nested tensor"):
                function(*args, backend=backend)


def test_mismatched_grid_dtype():
    with pytest.raises(TypeError, match=r"grid must have the dtype of x \(torch.float32\), got torch.float64"):
        stn.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.float64))


def test_unknown_mode():
    with pytest.raises(ValueError, match=r"mode must be one of \['bilinear', 'nearest', 'bicubic'\], got 'linear'"):
        stn.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), mode="linear")


def test_unknown_padding():
    with pytest.raises(ValueError, match=r"padding must be one of \['zeros', 'border', 'reflection'\], got 'wrap'"):
        stn.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), padding="wrap")


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of .*got 'cuda-magic'"):
        stn.sample(torch.rand(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), backend="cuda-magic")


@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
@pytest.mark.parametrize("value", ["False", None, 1, 0.0])
def test_align_corners_must_be_a_bool(value, backend):
    """A flag read from a config file ("False") is not taken as True: F.grid_sample and
    SpatialTransformer refuse anything but a bool, and so do warp and sample, on every path
    (the compiled call included)."""
    x, grid = torch.rand(1, 1, 8, 9), torch.rand(1, 3, 4, 2) * 2 - 1
    with pytest.raises(TypeError, match=r"align_corners must be a bool, got "):
        stn.sample(x, grid, align_corners=value, backend=backend)
    for transform in ("affine", stn.Projective()):
        with pytest.raises(TypeError, match=r"align_corners must be a bool, got "):
            stn.warp(x, transform.identity(1) if not isinstance(transform, str) else torch.eye(2, 3)[None],
                     transform, align_corners=value, backend=backend)


def test_bicubic_in_3d():
    with pytest.raises(ValueError, match=r"mode='bicubic' is 2-D only .* got a 5-D input"):
        stn.sample(torch.rand(1, 1, 4, 4, 4), torch.zeros(1, 2, 2, 2, 3), mode="bicubic")


def test_bad_size():
    with pytest.raises(ValueError, match=r"size must be 2 ints \(H, W\), got \(4, 4, 4\)"):
        stn.Affine().grid(torch.zeros(1, 6), (4, 4, 4))
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor, got numpy\.ndarray"):
        stn.sample(np.zeros((1, 1, 4, 4)), torch.zeros(1, 2, 2, 2))
    for bad in ((2.0, 3), (True, 3), (torch.tensor(2.0), 3), (torch.tensor([2]), 3), (np.float64(2), 3)):
        with pytest.raises(ValueError, match="size must be 2 ints"):
            stn.warp(torch.rand(1, 1, 4, 4), torch.zeros(1, 6), "affine", bad)


@pytest.mark.parametrize("backend", [None, "torch", "fused", "reference"])
def test_sizes_as_numpy_ints_or_integer_tensors_read_as_f_affine_grid_reads_them(backend):
    """np.int64 and 0-d integer tensors (what shapes and arrays hand out) were refused as not ints,
    though F.affine_grid and F.interpolate take them."""
    x, theta = torch.rand(2, 3, 6, 7), stn.Affine().identity(2) + 0.05
    expected = stn.warp(x, theta, "affine", (3, 5), backend=backend)
    for size in ((np.int64(3), np.int64(5)), [np.int32(3), 5], (torch.tensor(3), torch.tensor(5))):
        torch.testing.assert_close(stn.warp(x, theta, "affine", size, backend=backend), expected, atol=0, rtol=0)
        assert stn.Affine().grid(theta, size).shape == (2, 3, 5, 2)


@pytest.mark.parametrize("backend", [None, "torch", "fused", "reference"])
def test_an_input_with_an_empty_spatial_dimension_is_named(backend):
    """F.grid_sample refuses it; the reference kernel raised "index -3 is out of bounds", and
    warp's default size blamed `size`, which the caller had not given."""
    for shape in ((2, 3, 0, 5), (2, 3, 4, 0), (1, 1, 0, 4, 4), (1, 2, 0)):
        x = torch.rand(shape)
        grid = torch.zeros(shape[0], *([3] * (len(shape) - 2)), len(shape) - 2)
        with pytest.raises(ValueError, match=re.escape(f"x must have non-empty spatial dimensions, got shape {shape}")):
            stn.sample(x, grid, backend=backend)
    with pytest.raises(ValueError, match="x must have non-empty spatial dimensions"):
        stn.warp(torch.rand(2, 3, 0, 5), stn.Affine().identity(2), "affine", backend=backend)


# ---------------------------------------------------------------------------------------------
# warp's matrix form: the theta that F.affine_grid users hold


def _theta(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A random map near the identity: eye rows plus noise, of ``shape`` (B, n, n + 1) or (B, n, n)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.eye(*shape[1:], dtype=dtype) + 0.15 * torch.randn(shape, generator=g, dtype=dtype)).requires_grad_()


@pytest.mark.parametrize("backend", [None, "torch", "reference"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_takes_affine_grid_theta(backend, align_corners, dtype):
    x = random_input((4, 3, 9, 11), dtype, "cpu").requires_grad_()
    theta = _theta((4, 2, 3), dtype, seed=1)
    out = stn.warp(x, theta, "affine", align_corners=align_corners, backend=backend)
    expected = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=align_corners), align_corners=align_corners)
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)
    weights = torch.randn_like(out)
    ours = torch.autograd.grad((out * weights).sum(), (x, theta))
    theirs = torch.autograd.grad((expected * weights).sum(), (x, theta))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=100 * atol)


@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_takes_affine_grid_theta_for_volumes(align_corners):
    x = random_input((2, 2, 4, 5, 6), torch.float64, "cpu")
    theta = _theta((2, 3, 4), torch.float64, seed=2)
    out = stn.warp(x, theta, "affine3d", size=(3, 4, 5), align_corners=align_corners)
    grid = F.affine_grid(theta, (2, 2, 3, 4, 5), align_corners=align_corners)
    torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=align_corners), rtol=0, atol=1e-10)


def test_warp_takes_the_rows_of_a_1d_affine_map():
    x = random_input((3, 2, 13), torch.float64, "cpu")
    theta = _theta((3, 1, 2), torch.float64, seed=3)
    torch.testing.assert_close(stn.warp(x, theta, "affine1d"), stn.warp(x, theta.flatten(1), "affine1d"))


@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
def test_a_homography_whose_last_entry_is_0_is_refused_by_name(backend):
    """H[2, 2] = 0 is a homography (it sends the output's centre to infinity) that no parameters
    with H[2, 2] = 1 describe: dividing by it gave NaN everywhere without a word. A NaN entry
    stays NaN in, NaN out."""
    h = torch.eye(3).repeat(2, 1, 1)
    h[1, 2, 2], h[1, 2, 0] = 0.0, 0.5
    x = torch.rand(2, 1, 5, 5)
    with pytest.raises(ValueError, match=r"params\[1, 2, 2\] is 0"):
        stn.warp(x, h, "projective", backend=backend)
    with pytest.raises(ValueError, match=r"matrix\[1, 2, 2\] is 0"):
        stn.Projective().params_from_matrix(h)
    h[1, 2, 2] = float("nan")
    out = stn.warp(x, h, "projective", backend=backend)
    assert out[1].isnan().all() and not out[0].isnan().any()


@pytest.mark.parametrize("align_corners", [False, True])
def test_warp_takes_a_homography_of_any_scale(align_corners):
    x = random_input((3, 2, 8, 10), torch.float64, "cpu")
    h = _theta((3, 3, 3), torch.float64, seed=4).detach() * 0.2
    h[:, 2, :2] *= 0.3  # a mild perspective: w stays far from 0 on the image
    out = stn.warp(x, 2.5 * h, "projective", align_corners=align_corners)  # the scale of H does not matter
    # reference: F.affine_grid's identity points mapped through H by hand, then F.grid_sample
    base = F.affine_grid(torch.eye(2, 3, dtype=torch.float64).expand(3, 2, 3), x.shape, align_corners=align_corners)
    points = torch.cat([base, torch.ones_like(base[..., :1])], -1) @ h.transpose(1, 2)[:, None]
    grid = points[..., :2] / points[..., 2:]
    torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=align_corners), rtol=0, atol=1e-10)
    params = stn.Projective().params_from_matrix(h)
    torch.testing.assert_close(out, stn.warp(x, params, "projective", align_corners=align_corners), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("transform", "shape", "says"),
    [
        ("affine", (2, 3, 3), r"\(B, 2, 3\) matrix .* pass theta\[:, :2\]; with another last row .* stn.Projective\(\)"),
        ("affine3d", (2, 4, 4), r"\(B, 3, 4\) matrix .* pass theta\[:, :3\]"),
        ("similarity", (2, 2, 3), r"must have shape \(B, 4\), got shape \(2, 2, 3\).* stn.Affine\(\)"),
        ("translation", (2, 3, 3), r"must have shape \(B, 2\).* \(B, 3, 3\) one with stn.Projective\(\)"),
        ("projective", (2, 2, 3), r"\(B, 3, 3\) homography, got shape \(2, 2, 3\); .* stn.Affine\(\)"),
        ("tps", (2, 16, 2), r"must have shape \(B, 32\): the targets .* pass params.flatten\(1\)"),
        # (a signal's: the 2-D families were named)
        (stn.CPAB1D(tessellation=4), (2, 1, 2), r"must have shape \(B, 3\), .* \(B, 1, 2\) matrix with "
                                                r"stn.Affine1D\(\)$"),
    ],
)
def test_warp_says_which_matrix_it_takes_and_what_to_pass_instead(transform, shape, says):
    x = {"affine3d": torch.rand(2, 1, 3, 4, 5)}.get(transform, torch.rand(2, 1, 6, 6))
    if isinstance(transform, stn.Transform) and transform.ndim == 1:
        x = torch.rand(2, 1, 9)
    with pytest.raises(ValueError, match=says):
        stn.warp(x, torch.rand(shape), transform)


def test_warp_refuses_an_integer_matrix():
    with pytest.raises(TypeError, match=r"params must have a floating-point dtype"):
        stn.warp(torch.rand(2, 1, 6, 6), torch.eye(2, 3, dtype=torch.int64).expand(2, 2, 3), "affine")


@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
@pytest.mark.parametrize("dims", [2, 3])
def test_the_output_can_be_modified_in_place(dims, backend):
    """out.relu_() (nn.ReLU(inplace=True) after a transformer) with a gradient recorded: the
    reference kernel's output was a view made inside its autograd Function, which autograd
    refuses to modify in place. The same gradients as F.grid_sample's followed by relu."""
    spatial = (4, 5, 6) if dims == 3 else (5, 6)
    x = (torch.rand(2, 3, *spatial, dtype=torch.float64) - 0.5).requires_grad_()
    grid = (torch.rand(2, *spatial, dims, dtype=torch.float64) * 2.2 - 1.1).requires_grad_()
    out = stn.sample(x, grid, backend=backend).relu_()
    expected = torch.nn.functional.grid_sample(x, grid, align_corners=False).relu()
    torch.testing.assert_close(out, expected)
    for got, want in zip(torch.autograd.grad(out.sum(), (x, grid)), torch.autograd.grad(expected.sum(), (x, grid))):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", ["auto", "fused", "torch", "reference"])
def test_the_matrix_form_of_a_subclass_goes_through_its_parameters(backend):
    """warp's matrix form handed an Affine subclass the flattened rows as its parameters, which
    a subclass's need not be (here half the rows): 0.908 off F.affine_grid on every backend."""
    class HalfAffine(stn.Affine):
        def _rows(self, p):
            return (2 * p).view(-1, 2, 3)

        def _from_matrix(self, m):
            return m[:, :2].flatten(1) / 2

        def _identity(self):
            return super()._identity() / 2

    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    theta = torch.tensor([[0.8, 0.1, 0.1], [-0.1, 0.9, 0.0]], dtype=torch.float64).expand(2, 2, 3)
    expected = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), align_corners=False)
    torch.testing.assert_close(stn.warp(x, theta, HalfAffine(), backend=backend), expected)
    with torch.no_grad():  # (the compiled call)
        torch.testing.assert_close(stn.warp(x[:1].float(), theta[:1].float(), HalfAffine(), backend=backend),
                                   expected[:1].float())


def test_the_checkers_hold_in_any_grad_mode_and_name_what_a_sampler_lacks():
    """check_transform under no_grad/inference_mode failed a correct transform's gradcheck;
    check_sampler crashed (AttributeError of None) on a sampler that gives the grid no
    gradient, which is what it should report, and could not take NaN points."""
    from torchstn.testing import check_transform

    def reference(x, grid):
        return F.grid_sample(x, grid, align_corners=False)

    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            check_transform(stn.Affine(), stn.Affine().identity(2) + 0.05)
            check_sampler(lambda x, g: stn.sample(x, g), reference, torch.rand(1, 1, 5, 6),
                          torch.rand(1, 4, 4, 2) * 2 - 1)
    x, grid = torch.rand(1, 2, 5, 6), torch.rand(1, 4, 4, 2) * 2 - 1
    with pytest.raises(AssertionError, match="gives no gradient with respect to the grid"):
        check_sampler(lambda x, g: reference(x, g.detach()), reference, x, grid)
    with pytest.raises(AssertionError, match="gives an output without a gradient"):
        check_sampler(lambda x, g: reference(x, g).detach(), reference, x, grid)
    grid[0, 1, 2] = float("nan")
    check_sampler(lambda x, g: stn.sample(x, g, padding="zeros"), reference, x, grid)  # (NaN where both have it)


def test_options_that_cannot_go_together_and_low_precision_and_user_projective_families():
    """SamplerOptions(mode="bicubic", backend="reference") was made, and every call refused it;
    a matrix family's inverse in float16/bfloat16 raised torch's "Low precision dtypes not
    supported" (its grid and compose work there); a user's projective family without an eps
    failed every grid with an AttributeError."""
    from torchstn.transforms import MatrixTransform

    with pytest.raises(ValueError, match="bicubic.*backend='torch'"):
        stn.sampling.SamplerOptions(mode="bicubic", backend="reference")
    for dtype in (torch.float16, torch.bfloat16):
        params = stn.Affine().identity(2, dtype=dtype) + 0.05
        inverse = stn.Affine().inverse(params)
        assert inverse.dtype == dtype
        torch.testing.assert_close(inverse, stn.Affine().inverse(params.float()).to(dtype))

    class Homography(MatrixTransform):
        num_params, projective = 8, True

        def _identity(self):
            return torch.tensor([1.0, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float64)

        def _matrix(self, p):
            return torch.cat([p, torch.ones_like(p[:, :1])], 1).view(-1, 3, 3)

        def _from_matrix(self, m):
            return (m / m[:, 2:, 2:]).flatten(1)[:, :8]

    theta = stn.Projective().identity(2) + 0.02
    torch.testing.assert_close(Homography().grid(theta, (4, 5)), stn.Projective().grid(theta, (4, 5)))


@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.parametrize(("ndim", "projective"), [(2, False), (2, True), (3, False)])
def test_a_user_family_with_one_matrix_for_the_batch_is_refused_by_the_fused_path(backend, ndim, projective):
    """A user's MatrixTransform whose _matrix ignores the batch: the grid path refused its points,
    the fused kernels read B matrices from one (NaN or another call's values, without an error)."""
    class OneForAll(stn.MatrixTransform):
        num_params = 1

        def _identity(self) -> torch.Tensor:
            return torch.zeros(1, dtype=torch.float64)

        def _matrix(self, p: torch.Tensor) -> torch.Tensor:
            return torch.eye(ndim + 1, dtype=p.dtype)[None]

        def _from_matrix(self, m: torch.Tensor) -> torch.Tensor:
            return m[:, 0, :1] * 0

    transform = OneForAll()
    transform.ndim, transform.projective = ndim, projective
    x = torch.rand(16, 1, *(6,) * ndim)
    with pytest.raises(ValueError, match=rf"OneForAll's matrices must be one per sample, \(16, .*got \(1, "):
        stn.warp(x, torch.zeros(16, 1), transform, backend=backend)
    with pytest.raises(ValueError, match="must return points"):  # (the grid path's own refusal)
        stn.warp(x, torch.zeros(16, 1), transform, backend="torch")
