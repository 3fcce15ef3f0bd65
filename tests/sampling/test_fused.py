"""The fused C++ backend against F.grid_sample, the reference sampler and the grid path of warp."""

import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from tests._helpers import random_grid, random_input, random_theta
from tests.sampling.conftest import record_calls
from torchstn import _locks
from torchstn.sampling import _fused, _sample, fused_applies, fused_status
from torchstn.testing import check_sampler

PADDINGS = ["zeros", "border", "reflection"]
MODES = ["bilinear", "nearest"]
FAMILIES_2D = [stn.Translation(), stn.Attention(), stn.Similarity(), stn.Affine(), stn.Projective()]


pytestmark = pytest.mark.usefixtures("fused_kernel")

#: the real one: the tests of this file that build with cpp_extension replaced must not start it
_START_BESIDE = _fused._start_fast_call_beside


@pytest.fixture(autouse=True)
def _no_build_beside(monkeypatch):
    monkeypatch.setattr(_fused, "_start_fast_call_beside", lambda: None)


def _fused_sample(x, grid, padding, align_corners, mode="bilinear"):
    return stn.sample(x, grid, mode, padding, align_corners, backend="fused")


def _reference_sample(x, grid, padding, align_corners, mode="bilinear"):
    return stn.reference_sample(x, grid, mode, padding, align_corners)


def _grid_sample(x, grid, padding, align_corners, mode="bilinear"):
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=align_corners)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_fused_sample_matches_grid_sample_and_reference(mode, padding, align_corners, dtype, calls):
    x = random_input((2, 3, 6, 7), dtype)
    grid = random_grid((2, 5, 9, 2), dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    for reference in (_grid_sample, _reference_sample):
        check_sampler(lambda *a, **k: _fused_sample(*a, **k, mode=mode), lambda *a, **k: reference(*a, **k, mode=mode),
                      x, grid, padding=padding, align_corners=align_corners, atol=atol)
    assert set(calls) == {"fused_sample"}  # the kernel itself, not a fallback


def test_fused_sample_right_sided_sub_gradient_at_integer_coordinates():
    # as the reference and grid_sample: at an integer pixel coordinate the derivative is U[k+1] - U[k]
    x = torch.tensor([[[[0.0, 1.0, 4.0, 9.0]]]], dtype=torch.float64)
    grid = torch.tensor([[[[(2 * 1.0 + 1) / 4 - 1, 0.0]]]], dtype=torch.float64, requires_grad=True)
    stn.sample(x, grid, backend="fused").sum().backward()
    assert grid.grad[0, 0, 0, 0].item() == pytest.approx(3.0 * 4 / 2)


# output sizes: narrower than the kernel's block of 64 points (rows packed into blocks), and
# rows of more than one block (one block and a part of one per row)
SIZES = [(6, 11), (3, 70)]


@pytest.mark.parametrize("size", SIZES, ids=["packed-rows", "wide-rows"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("transform", FAMILIES_2D, ids=lambda t: t.name)
def test_fused_warp_equals_grid_path(transform, padding, align_corners, mode, size, dtype, calls):
    """Values, input gradient and θ gradient of warp(backend='fused') against grid + F.grid_sample
    (nearest: the θ gradient is 0 on both)."""
    x0 = random_input((3, 2, 7, 9), dtype)
    p0 = random_theta(transform, 3, dtype, scale=0.3, seed=2)
    results = []
    for backend in ("fused", "torch"):
        x, p = x0.clone().requires_grad_(), p0.clone().requires_grad_()
        out = stn.warp(x, p, transform, size=size, mode=mode, padding=padding, align_corners=align_corners,
                       backend=backend)
        weight = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
        (out * weight).sum().backward()
        results.append((out.detach(), x.grad, p.grad))
    assert calls == ["fused_warp"]
    if mode == "nearest":
        assert torch.equal(results[0][2], torch.zeros_like(p0))
    atol = 2e-5 if dtype == torch.float32 else 1e-10
    for name, a, b in zip(("output", "gradient wrt x", "gradient wrt params"), *results):
        torch.testing.assert_close(a, b, atol=atol * (10 if name == "gradient wrt params" else 1), rtol=1e-4, msg=name)


@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
def test_packed_and_row_by_row_blocks_agree(location):
    """A narrow output whose rows follow each other in memory is read in blocks across rows;
    a gradient of the output with other strides (here transposed) takes the blocks row by row."""
    transform = stn.Projective() if location == "projective" else stn.Affine()
    x = random_input((2, 3, 9, 10), torch.float64)
    p = random_theta(transform, 2, torch.float64, scale=0.3, seed=2).requires_grad_()
    grad_out = random_input((2, 3, 13, 7), torch.float64, seed=5)  # (B, C, Wo, Ho): the transpose of the output
    grads = []
    for weight in (grad_out.transpose(2, 3).contiguous(), grad_out.transpose(2, 3)):
        xg = x.clone().requires_grad_()
        if location == "grid":
            out = stn.sample(xg, transform.grid(p, (7, 13)), padding="border", backend="fused")
        else:
            out = stn.warp(xg, p, transform, size=(7, 13), padding="border", backend="fused")
        grads.append(torch.autograd.grad(out, (xg, p), weight))
    for packed, by_row in zip(*grads):
        torch.testing.assert_close(packed, by_row, atol=1e-12, rtol=1e-12)


def test_a_sample_smaller_and_one_larger_than_l2_equal_the_grid_path():
    """A sample of 42 KB and one of 1.4 MB (beyond a 1 MB L2, where the forward fetches rows
    ahead) against the grid path (float64, where the two paths' locations agree to rounding;
    the loops are the same code for float32)."""
    for shape in [(2, 3, 40, 44), (1, 3, 240, 250)]:  # 42 KB / 1.4 MB per sample
        x = random_input(shape, torch.float64)
        p = random_theta(stn.Affine(), shape[0], torch.float64, scale=0.3, seed=2)
        fused = stn.warp(x, p, stn.Affine(), size=(30, 70), padding="border", backend="fused")
        grid_path = stn.warp(x, p, stn.Affine(), size=(30, 70), padding="border", backend="torch")
        torch.testing.assert_close(fused, grid_path, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("location", ["affine", "projective"])
def test_float32_rows_in_one_pass_equal_the_two_passes_bit_for_bit(padding, align_corners, location):
    """Rows of a float32 affine or projective warp with 1 to 4 channels are sampled in one
    pass (the corners read as windows of a row where they lie close, as pairs, or gathered);
    5 channels take the two passes. The first channels of a 5-channel warp must be the same
    bits: near the identity (windows), shifted and rotated (pairs, the edges), flipped,
    far out, a NaN θ, an inf pixel, and an input that is a view (row stride > width); for
    homographies also one whose w crosses 0 inside the output (the guard); for affine rows
    the same points given as a grid."""
    n = 8
    transform = stn.Projective(eps=0.05) if location == "projective" else stn.Affine()
    wide = random_input((n, 5, 50, 90), torch.float32, seed=3)
    x = wide[..., :70]  # a view: rows 90 apart
    x[1, :, 20, 30] = float("inf")
    p = random_theta(stn.Affine(), n, torch.float64, scale=0.02, seed=4)
    p[2:4] += random_theta(stn.Affine(), 2, torch.float64, scale=0.3, seed=5) - stn.Affine().identity(2)
    p[4] = torch.tensor([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # flipped: x falls along a row
    p[5] = torch.tensor([0.7, 0.7, 0.1, -0.7, 0.7, 0.0])  # rotated by 45 degrees
    p[6] = torch.tensor([1.0, 0.0, 3.0, 0.0, 1.0, 0.0])  # entirely outside
    p[7, 2] = float("nan")
    if location == "projective":  # perspective terms; sample 3's w = 1 - 1.3 x + 0.4 y crosses 0
        perspective = 0.05 * random_input((n, 2), torch.float64, seed=6)
        perspective[3] = torch.tensor([-1.3, 0.4], dtype=torch.float64)
        p = torch.cat([p, perspective], 1)
    p = p.float()
    # rows of 64 + 16 points, of 64 + 6 (a part-filled vector), and narrow rows packed into blocks of
    # 64 points across rows (27 and 40 wide: vectors that span two rows; 13 x 27 ends part-filled)
    for size in [(40, 80), (12, 70), (13, 27), (8, 40)]:
        five = stn.warp(x, p, transform, size=size, padding=padding, align_corners=align_corners, backend="fused")
        for c in (1, 2, 3, 4):
            out = stn.warp(x[:, :c], p, transform, size=size, padding=padding, align_corners=align_corners,
                           backend="fused")
            torch.testing.assert_close(out, five[:, :c], atol=0, rtol=0, equal_nan=True)
        assert five[7].isnan().all()
        if location == "projective":
            continue
        # the same points given as a grid (its (x, y) pairs read in the same pass), with an Inf point
        grid = stn.Affine().grid(p, size, align_corners)
        grid[0, 1, 2, 0] = float("inf")
        five = stn.sample(x, grid, padding=padding, align_corners=align_corners, backend="fused")
        for c in (1, 2, 3, 4):
            out = stn.sample(x[:, :c], grid, padding=padding, align_corners=align_corners, backend="fused")
            torch.testing.assert_close(out, five[:, :c], atol=0, rtol=0, equal_nan=True)
        assert five[0, :, 1, 2].isnan().all() and five[7].isnan().all()
        five = stn.warp(x, p, transform, size=size, padding=padding, align_corners=align_corners, backend="fused")
    grid_path = stn.warp(x, p, transform, size=size, padding=padding, align_corners=align_corners, backend="torch")
    finite = torch.isfinite(grid_path) & torch.isfinite(five)  # (the paths' float32 locations differ by rounding)
    if location == "projective":  # (and near w = 0 a rounding moves a point by pixels)
        finite[3] = False
    torch.testing.assert_close(five[finite], grid_path[finite], atol=1e-4, rtol=0)


def test_offsets_past_float32s_exact_integers_read_the_right_pixels():
    """A plane of more than 2^24 pixels, whose offsets float32 no longer holds exactly (the
    one-pass kernel computes them in float below that size, by integer multiplication above
    it): every output point equals F.grid_sample's, the bottom rows' (offsets near 2^24.3) too."""
    x = torch.rand(1, 1, 5000, 4099, generator=torch.Generator().manual_seed(0))
    theta = torch.tensor([[0.9, 0.0, 0.0013, 0.0, 0.999, 0.0021]])
    out = stn.warp(x, theta, stn.Affine(), size=(24, 40), backend="fused")
    expected = F.grid_sample(x, F.affine_grid(theta.view(1, 2, 3), [1, 1, 24, 40], align_corners=False),
                             align_corners=False)
    # (float32 locations of pixels ~4000 apart round differently by 2.4e-4 pixels; a wrong pixel is ~0.3 off)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.parametrize("tall", [True, False])
def test_images_taller_or_wider_than_2_to_the_30_equal_f_grid_sample(backend, tall):
    """The kernel takes a pixel coordinate beyond 2^30 for a point far outside: an image
    that tall or wide (stride 0 along it: no memory) goes to F.grid_sample instead of
    reading its far rows or columns as padding, through warp and through sample."""
    n = 2**30 + 2**29
    line = torch.linspace(0, 1, 3, dtype=torch.float64)
    x = line.view(1, 1, 1, 3).expand(1, 1, n, 3) if tall else line.view(1, 1, 3, 1).expand(1, 1, 3, n)
    theta = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    grid = F.affine_grid(theta.view(1, 2, 3), [1, 1, 3, 3], align_corners=False)
    expected = F.grid_sample(x, grid, align_corners=False)
    assert fused_applies(x, "bilinear") is False
    torch.testing.assert_close(stn.warp(x, theta, stn.Affine(), size=(3, 3), backend=backend), expected)
    torch.testing.assert_close(stn.sample(x, grid, backend=backend), expected)
    with pytest.raises(ValueError, match="too large for the fused kernel"):  # (the operator itself, called directly)
        torch.ops.torchstn.warp2d(x, theta.view(1, 2, 3), "affine", [3, 3], "bilinear", "zeros", False, 0.0)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_neighbouring_pixels_read_whole_equal_the_two_passes_bit_for_bit(padding, align_corners):
    """At a scale of 1 (a translation, the identity) eight output points read eight
    neighbouring pixels, which the one-pass forward reads as whole vectors (unpermuted in
    NCHW; in channels_last 2-4 channels side by side as C whole vectors): the same bits as
    the two passes of a 5-channel warp, and as the rotated or zoomed warps' other reads."""
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(3, 5, 30, 80, generator=generator)
    theta = stn.Affine().identity(3)
    theta[:, 2] = torch.tensor([0.013, 0.0, -0.2])  # sub-pixel and whole shifts along the row
    theta[:, 5] = torch.tensor([-0.021, 0.0, 0.1])
    theta[2, 0] = 1.02  # a slight zoom: some vectors skip a pixel
    options = {"size": (30, 80), "padding": padding, "align_corners": align_corners, "backend": "fused"}
    five = stn.warp(x, theta, stn.Affine(), **options)
    for c in (1, 2, 3, 4):
        torch.testing.assert_close(stn.warp(x[:, :c].contiguous(), theta, stn.Affine(), **options), five[:, :c],
                                   atol=0, rtol=0)
        if c > 1:
            side_by_side = x[:, :c].contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(stn.warp(side_by_side, theta, stn.Affine(), **options), five[:, :c],
                                       atol=0, rtol=0)
    expected = F.grid_sample(x, F.affine_grid(theta.view(3, 2, 3), [3, 5, 30, 80], align_corners=align_corners),
                             padding_mode=padding, align_corners=align_corners)
    torch.testing.assert_close(five, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_rotated_rows_and_edges_read_as_windows_equal_the_two_passes_bit_for_bit(padding, channels_last):
    """Sixteen points of a rotated row step down one or two input rows, and near the image's
    edges some of them lie outside it: the AVX-512 build reads such vectors as windows of up
    to four input rows (zeros padding: the corners outside set to 0, the windows of a
    channel's first and last rows read only its own floats). The values of 1 to 4 planes, and
    of 2 to 4 channels side by side, must be the two passes' (5 channels) bit for bit, for
    slopes of 0.05 to 0.2 pixels per point, warps moved off every side, inf and NaN pixels
    along the edges; and F.grid_sample's."""
    generator = torch.Generator().manual_seed(13)
    x = torch.rand(8, 5, 64, 64, generator=generator)
    x[:, :, 0, 7], x[:, 1, -1, 30], x[:, 2, 20, 0], x[:, 3, 40, -1] = float("inf"), float("nan"), -float("inf"), 9.0
    x[:, :, 0, 0], x[:, :, -1, -1] = float("nan"), float("inf")  # (each plane's first and last floats)
    theta = stn.Affine().identity(8)
    for i, slope in enumerate((0.05, -0.09, 0.12, -0.14, 0.2)):  # rows stepping down (or up) 0.75 to 3 rows per 16 points
        theta[i, [1, 3]] = torch.tensor([-slope, slope])
    theta[1, 5], theta[2, 2], theta[3, 5], theta[4, 2] = -0.3, 0.4, 0.25, -0.35  # partly off each side
    theta[5, [0, 3, 4, 5]] = torch.tensor([1.3, 0.1, 1.2, -0.05])  # zoomed out: every edge crossed
    theta[6, [3, 5]] = torch.tensor([0.11, -0.95])  # rows across the top edge
    theta[7, [0, 3, 4]] = torch.tensor([0.5, 0.08, 0.5])  # zoomed in: all inside
    options = {"size": (64, 80), "padding": padding, "backend": "fused"}
    five = stn.warp(x, theta, stn.Affine(), **options)
    for c in (1, 2, 3, 4):
        xc = x[:, :c].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if channels_last and c == 1:
            continue
        torch.testing.assert_close(stn.warp(xc, theta, stn.Affine(), **options), five[:, :c], atol=0, rtol=0,
                                   equal_nan=True)
    # (at θ's own locations: affine_grid's round a point onto a row holding -inf otherwise)
    expected = F.grid_sample(x, stn.Affine().grid(theta, (64, 80), False), padding_mode=padding, align_corners=False)
    assert torch.equal(five.isnan(), expected.isnan()) and torch.equal(five.isinf(), expected.isinf())
    finite = five.isfinite()
    torch.testing.assert_close(five[finite], expected[finite], atol=1e-4, rtol=1e-3)


def test_vectors_beside_the_image_by_about_a_pixel_equal_the_two_passes_bit_for_bit():
    """Zeros padding: sixteen points with no corner inside the image are written as 0 at once
    (the AVX-512 build), those a pixel or less outside still read their corners there (a
    point at -1 reads column 0 with weight 0: NaN where the column holds inf). Rows moved
    right, left, down and up by 15 to 17 pixels, so that a vector's points end just short
    of, at, or just beyond -1 and W (H): planes and RGB side by side the same bits as the two
    passes (5 channels), and F.grid_sample's non-finite points."""
    x = torch.rand(4, 5, 24, 64, generator=torch.Generator().manual_seed(3)) + 1.0
    x[:, :, :, 0], x[:, :, :, -1], x[:, :, 0, :], x[:, :, -1, :] = float("inf"), -float("inf"), float("nan"), 5.0
    shifts = [16.0 + d for d in (-1.0, -1e-5, 0.0, 1e-5, 1.0)]
    theta = stn.Affine().identity(4 * len(shifts))
    for i, s in enumerate(shifts):  # (align_corners: a pixel is 2 / 63 of the width, 2 / 23 of the height)
        theta[4 * i, 2], theta[4 * i + 1, 2] = s * 2 / 63, -s * 2 / 63
        theta[4 * i + 2, 5], theta[4 * i + 3, 5] = (s - 8) * 2 / 23, -(s - 8) * 2 / 23
    x = x.repeat(len(shifts), 1, 1, 1)
    options = {"size": (24, 64), "padding": "zeros", "align_corners": True, "backend": "fused"}
    five = stn.warp(x, theta, stn.Affine(), **options)
    for c in (1, 3):
        for layout in (torch.contiguous_format, torch.channels_last):
            xc = x[:, :c].contiguous(memory_format=layout)
            torch.testing.assert_close(stn.warp(xc, theta, stn.Affine(), **options), five[:, :c], atol=0, rtol=0,
                                       equal_nan=True)
    expected = F.grid_sample(x, stn.Affine().grid(theta, (24, 64), True), padding_mode="zeros", align_corners=True)
    assert torch.equal(five.isnan(), expected.isnan()) and torch.equal(five.isinf(), expected.isinf())
    assert (five == 0).any(dim=(1, 2, 3)).all()  # (every sample has points wholly outside)


def test_homography_rows_running_level_across_a_pixel_row_read_the_right_rows():
    """A homography's row that runs almost level, at a pixel row's boundary: its points'
    rounding (w's and the quotient's) may put a point between the row's ends a row above or
    below both (49, 48, 49, ...), which the AVX-512 build's windows, reading the rows between
    the first and last point's, took from the wrong row (values a row apart, no error). Rows
    made level at a random output row, 400 samples, pixel rows 10 apart: every layout within
    float rounding of F.grid_sample at torchstn's grid."""
    projective, g = stn.Projective(), torch.Generator().manual_seed(0)
    n = 400
    c = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 6e-3
    level_at = (2 * torch.randint(0, 64, (n,), generator=g) + 1) / 64 - 1  # an output row's y
    boundary = (2 * torch.randint(5, 58, (n,), generator=g).double() + 1) / 64 - 1  # an input pixel's y
    theta = projective.identity(n).double()
    theta[:, 6] = c  # w = c x + 1 ...
    theta[:, 3] = c * level_at  # ... and y (c y0 x + y + b) / w: level along row y0 ...
    theta[:, 5] = boundary - level_at + (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 2e-6  # ... there
    theta = theta.float()
    x = torch.rand(n, 3, 64, 64, generator=g) + torch.arange(64.0).view(1, 1, 64, 1) * 10
    expected = F.grid_sample(x, projective.grid(theta, (64, 64), False), align_corners=False)
    for layout in (torch.contiguous_format, torch.channels_last):
        for c in (1, 3):
            got = stn.warp(x[:, :c].contiguous(memory_format=layout), theta, projective, backend="fused")
            torch.testing.assert_close(got, expected[:, :c], atol=0.01, rtol=0)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("eps", [1e-6, 0.3])
def test_homography_rows_read_as_windows_equal_the_two_passes_bit_for_bit(padding, eps):
    """A homography's rows of sixteen points are read as windows too (the AVX-512 build),
    where its w keeps one sign over them, outside the guard: a row whose w crosses 0 (a pole
    between two points, which may both lie inside the image) or comes within eps of it must
    not be. The values of 1 to 4 planes, and of 2 and 3 channels side by side, are the two
    passes' (5 channels) bit for bit, for near-identity homographies, rows curving over the
    image's edges, a pole inside the output and inf and NaN pixels along the edges; the
    non-finite points are F.grid_sample's at the same locations."""
    generator = torch.Generator().manual_seed(14)
    x = torch.rand(7, 5, 48, 72, generator=generator)
    x[:, :, 0, 7], x[:, 1, -1, 30], x[:, 2, 20, 0], x[:, 3, 40, -1] = float("inf"), float("nan"), -float("inf"), 9.0
    transform = stn.Projective(eps=eps)
    h = transform.identity(7)
    h[0, 6:] = torch.tensor([0.02, -0.03])  # near the identity: every inside vector as windows
    h[1, [1, 3, 6, 7]] = torch.tensor([-0.1, 0.1, 0.15, 0.05])  # rotated rows that curve
    h[2, [2, 5, 6]] = torch.tensor([0.4, -0.3, 0.3])  # partly off two sides
    h[3, 6:] = torch.tensor([1.4, 0.0])  # w = 1.4 x + 1 crosses 0 at x = -0.71: a pole inside each row
    h[4, [0, 4, 6, 7]] = torch.tensor([0.2, 0.2, -1.1, 0.2])  # the pole at x = 0.73 to 1.09, zoomed in around it
    h[5, [6, 7]] = torch.tensor([0.5, -0.5])  # w from 0 to 2 across the image: the guard's band on a diagonal
    # g = (0.2, -0.1) w + (0, 0.0015): every point in column 0.2 and near row -0.1, above it left
    # of the pole at x = -0.5 and below it right of it, so a vector across the pole lies inside
    # with its rows out of order
    h[6] = torch.tensor([0.4, 0.0, 0.2, -0.2, 0.0, -0.0985, 2.0, 0.0])
    options = {"size": (40, 96), "padding": padding, "backend": "fused"}
    five = stn.warp(x, h, transform, **options)
    for c in (1, 2, 3, 4):
        torch.testing.assert_close(stn.warp(x[:, :c].contiguous(), h, transform, **options), five[:, :c],
                                   atol=0, rtol=0, equal_nan=True)
        if c in (2, 3):
            side_by_side = x[:, :c].contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(stn.warp(side_by_side, h, transform, **options), five[:, :c],
                                       atol=0, rtol=0, equal_nan=True)
    expected = F.grid_sample(x, transform.grid(h, (40, 96), False), padding_mode=padding, align_corners=False)
    assert torch.equal(five.isnan(), expected.isnan()) and torch.equal(five.isinf(), expected.isinf())
    # values away from the poles (near one a float32 location is far from the image's scale, and
    # two computations of it round apart)
    finite = five[:3].isfinite()
    torch.testing.assert_close(five[:3][finite], expected[:3][finite], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("padding", PADDINGS)
def test_rgb_side_by_side_equals_the_planes_bit_for_bit(padding):
    """Three channels side by side (channels_last RGB), whose AVX-512 build reads sixteen
    points' corners as 64-float windows of each corner row: the same bits as the planes'
    warp (NCHW), for θ near the identity, rotated (vectors that step down a row), zoomed in
    and out (windows too narrow: the pairs), and for a slice whose rows are padded (row
    stride above 3 W: written NCHW), against F.grid_sample as well."""
    generator = torch.Generator().manual_seed(11)
    x = torch.rand(5, 3, 61, 97, generator=generator)
    theta = stn.Affine().identity(5) + 0.03 * torch.randn(5, 6, generator=generator)
    angle = torch.tensor(0.35)
    theta[1] = torch.tensor([angle.cos(), -angle.sin(), 0.05, angle.sin(), angle.cos(), -0.1])
    theta[2, [0, 4]] = torch.tensor([0.6, 0.7])  # zoomed in
    theta[3, [0, 4]] = torch.tensor([1.4, 1.3])  # zoomed out: 16 points span more than 19 pixels
    theta[4, 1] = 0.2  # a shear
    options = {"size": (47, 133), "padding": padding, "backend": "fused"}
    planes = stn.warp(x, theta, stn.Affine(), **options)
    wide = torch.rand(5, 61, 101, 3, generator=generator)
    wide[:, :, :97] = x.permute(0, 2, 3, 1)
    for side_by_side in (x.contiguous(memory_format=torch.channels_last), wide[:, :, :97].permute(0, 3, 1, 2)):
        got = stn.warp(side_by_side, theta, stn.Affine(), **options)
        torch.testing.assert_close(got, planes, atol=0, rtol=0)
    expected = F.grid_sample(x, F.affine_grid(theta.view(5, 2, 3), [5, 3, 47, 133], align_corners=False),
                             padding_mode=padding, align_corners=False)
    # (float32 locations computed otherwise than affine_grid's round a few points' corners apart)
    torch.testing.assert_close(planes, expected, atol=1e-4, rtol=1e-3)


def test_rgb_side_by_side_along_the_edges_equals_the_planes_bit_for_bit():
    """Sixteen channels_last RGB points of which some lie outside the image (zeros padding):
    the AVX-512 build reads them as windows too, the corners outside set to 0 and the windows
    of the first and last rows read only the sample's own floats. The same bits as the planes'
    warp, with inf and NaN pixels along the image's edges and in its corners, for warps moved
    partly off every side (rows that cross the top or bottom edge at a shallow angle, points
    far outside) and rotated, and the same non-finite points as F.grid_sample."""
    generator = torch.Generator().manual_seed(12)
    x = torch.rand(6, 3, 40, 70, generator=generator)
    x[:, :, 0, 5], x[:, 1, -1, 9], x[:, 2, 17, 0], x[:, 0, 21, -1] = float("inf"), float("nan"), -float("inf"), 7.0
    x[:, :, 0, 0], x[:, :, -1, -1] = float("nan"), float("inf")  # (the sample's first and last floats)
    theta = stn.Affine().identity(6)
    theta[0, 5], theta[1, 5], theta[2, 2], theta[3, 2] = -0.9, 0.95, -0.7, 1.2  # up, down, left, right
    theta[4, [0, 1, 3, 4]] = torch.tensor([1.05, -0.3, 0.3, 1.05])  # rotated and a little zoomed out
    theta[5, [1, 3, 5]] = torch.tensor([0.01, 0.02, -0.98])  # rows along the top edge
    options = {"size": (37, 96), "padding": "zeros", "backend": "fused"}
    planes = stn.warp(x, theta, stn.Affine(), **options)
    got = stn.warp(x.contiguous(memory_format=torch.channels_last), theta, stn.Affine(), **options)
    torch.testing.assert_close(got, planes, atol=0, rtol=0, equal_nan=True)
    expected = F.grid_sample(x, F.affine_grid(theta.view(6, 2, 3), [6, 3, 37, 96], align_corners=False),
                             align_corners=False)
    assert torch.equal(planes.isnan(), expected.isnan()) and torch.equal(planes.isinf(), expected.isinf())
    finite = planes.isfinite()
    torch.testing.assert_close(planes[finite], expected[finite], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("location", ["affine", "grid"])
def test_a_wide_row_in_one_pass_past_its_first_block(padding, channels_last, location):
    """A float32 output row wider than a block (64 points) is sampled in one pass as a whole
    (one span per row): its vectors past the first 64 points that cross the image's edge,
    or hold a single NaN or inf point, go through the block at their own place in it. Every
    point equals the reference sampler's value (NaN only where its location is not
    finite), with 1 to 4 channels, NCHW and channels_last alike."""
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(2, 4, 31, 45, generator=generator) + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p = stn.Affine().identity(2) + 0.1 * torch.randn(2, 6, generator=generator)
    grid = stn.Affine().grid(p, (9, 150), False)
    grid[0, 2, [70, 101, 149], 0] = float("nan")  # single points in the second and third blocks of a row
    grid[1, 5, 130, 1] = float("inf")
    grid[1, 7, 64:72] = torch.tensor([1.2, 0.3])  # a whole vector outside, past the first block
    for c in (1, 2, 3, 4):
        xc = x[:, :c]
        if channels_last:
            xc = xc.contiguous(memory_format=torch.channels_last)
        if location == "grid":
            got = stn.sample(xc, grid, padding=padding, backend="fused")
        else:  # (only θ's own points: no NaN)
            got = stn.warp(xc, p, stn.Affine(), size=(9, 150), padding=padding, backend="fused")
            grid_c = stn.Affine().grid(p, (9, 150), False)
        expected = stn.reference_sample(xc, grid if location == "grid" else grid_c, "bilinear", padding, False)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, equal_nan=True)
        assert got.isnan().sum() == (3 + 1) * c if location == "grid" else not got.isnan().any()


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
def test_small_images_warped_from_a_bordered_copy_equal_the_two_passes_bit_for_bit(align_corners, location):
    """Under zeros padding, a small image warped to packed rows (or sampled at a grid of them)
    is read from a copy with a border of zeros (the kernel's Bordered), so that the points
    along its edges read their outer corners from memory. The values must be the two passes'
    (5 channels), bit for bit: points just outside the edges, far out, an inf pixel on the
    edge, a NaN θ; after the image changes in place; with the batch split over two threads
    (each thread's own copy). The 17x9 output (more input pixels than twice its points) is
    read without the copy: a control."""
    n = 6
    transform = stn.Projective(eps=0.05) if location == "projective" else stn.Affine()

    def warp(x, p, size, backend):  # (a grid: θ's, sampled)
        if location == "grid":
            return stn.sample(x, transform.grid(p, size, align_corners), align_corners=align_corners, backend=backend)
        return stn.warp(x, p, transform, size=size, align_corners=align_corners, backend=backend)

    wide = random_input((n, 5, 20, 30), torch.float32, seed=7)
    x = wide[..., :26]  # a view: rows 30 apart
    x[1, :, 0, 5] = float("inf")  # on the top edge
    x[2, :, 7, 25] = float("inf")  # on the right edge
    p = random_theta(stn.Affine(), n, torch.float64, scale=0.1, seed=8)  # edges moved by up to a few pixels
    p[3] = torch.tensor([1.0, 0.0, 0.2, 0.0, 1.0, -0.15])  # shifted by 2-3 pixels
    p[4] = torch.tensor([1.0, 0.0, 3.0, 0.0, 1.0, 0.0])  # entirely outside
    p[5, 2] = float("nan")
    if location == "projective":
        p = torch.cat([p, 0.05 * random_input((n, 2), torch.float64, seed=9)], 1)
    p = p.float()
    threads = torch.get_num_threads()
    try:
        for size in [(20, 26), (13, 27), (17, 9)]:
            for step in range(2):
                if step:
                    x.mul_(-2.0)  # the same storage, new values: no copy of the last call may be reused
                five = warp(x, p, size, "fused")
                for c in (1, 2, 3, 4):
                    torch.set_num_threads(1 + c % 2)
                    out = warp(x[:, :c], p, size, "fused")
                    torch.testing.assert_close(out, five[:, :c], atol=0, rtol=0, equal_nan=True)
                    torch.set_num_threads(threads)
                assert five[5].isnan().all() and (five[4] == 0).all()
                grid_path = warp(x, p, size, "torch")
                finite = torch.isfinite(grid_path) & torch.isfinite(five)
                torch.testing.assert_close(five[finite], grid_path[finite], atol=1e-4, rtol=0)
    finally:
        torch.set_num_threads(threads)
    one = x[:1, :1].clone()  # one image: the next call's first sample is the last call's last
    before = warp(one, p[:1], tuple(one.shape[2:]), "fused")
    one.mul_(-2.0)
    after = warp(one, p[:1], tuple(one.shape[2:]), "fused")
    torch.testing.assert_close(after, -2.0 * before, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("location", ["affine", "projective", "grid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(200, 240), (480, 480)], ids=["1.2MB", "5.5MB"])
def test_an_input_beyond_l2_fetches_rows_ahead_with_the_same_values_and_gradients(location, dtype, size):
    """Where the whole input exceeds 1 MB, its planes 64 KiB and an output row crosses input
    rows, forward and backward prefetch the pixels four output rows ahead (the float32 bilinear
    forward takes its single passes instead, fetching nothing ahead up to 5 MiB and the next
    sample's input beyond): values and gradients are still the grid path's, for a rotated map, a
    non-finite one and one that reads far outside (whose rows ahead are not fetched)."""
    transform = stn.Projective() if location == "projective" else stn.Affine()
    x = random_input((3, 2, *size), dtype, seed=4)  # float32: 1.15 MB / 5.5 MB
    p = random_theta(transform, 3, torch.float64, scale=0.3 if location != "projective" else 0.05, seed=3)
    p[1, 3] = float("nan")
    p[2, :6] = p[2, :6] * 1e4
    p = p.to(dtype)
    weight = torch.randn(3, 2, 150, 190, dtype=dtype, generator=torch.Generator().manual_seed(5))
    results = []
    for backend in ["fused", "torch"]:
        xg, pg = x.clone().requires_grad_(), p.clone().requires_grad_()
        if location == "grid":
            out = stn.sample(xg, transform.grid(pg, (150, 190)), backend=backend)
        else:
            out = stn.warp(xg, pg, transform, size=(150, 190), backend=backend)
        results.append((out, *torch.autograd.grad(out, (xg, pg), weight)))
    tol = 2e-3 if dtype == torch.float32 else 1e-9  # (float32: the paths round locations and sums apart)
    for fused, grid_path in zip(*results):
        torch.testing.assert_close(fused, grid_path, atol=tol, rtol=tol, equal_nan=True)
    assert results[0][0][1].isnan().all() and not results[0][0][0].isnan().any()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("location", ["affine", "grid"])
def test_a_batch_beyond_5_mib_warps_each_sample_as_alone(location, channels_last):
    """Beyond 5 MiB the float32 forward fetches the next sample's input ahead as it warps a
    sample (its single passes, where they take the rows): each sample's output is the bits of
    the same sample warped alone (1.7 MB: no prefetch), the rotated and the NaN map alike."""
    x = random_input((4, 3, 300, 500), torch.float32, seed=8)  # 7.2 MB
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    theta = random_theta(stn.Affine(), 4, torch.float32, scale=0.3, seed=9)
    theta[2, 4] = float("nan")
    grid = stn.Affine().grid(theta, (280, 510))  # (made once: a batch's matmul rounds apart from one sample's)

    def warp(b):
        if location == "grid":
            return stn.sample(x[b], grid[b], backend="fused")
        return stn.warp(x[b], theta[b], stn.Affine(), size=(280, 510), backend="fused")

    batch = warp(slice(None))
    for b in range(4):
        torch.testing.assert_close(batch[b:b + 1], warp(slice(b, b + 1)), atol=0, rtol=0, equal_nan=True)
    assert batch[2].isnan().all() and not batch[3].isnan().any()
    # (from θ the kernel locates the points itself: 500 pixels wide, they round 1e-4 pixels apart)
    tol = 1e-4 if location == "grid" else 1e-3  # (a grid: its coordinates unnormalised in another order)
    reference = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(batch, reference, atol=tol, rtol=0, equal_nan=True)


def test_one_image_beyond_5_mib_fetches_its_rows_ahead():
    """One float32 image beyond 5 MiB has no next sample to fetch: its forward keeps the block
    with the rows of its points fetched ahead, and gives the grid path's values."""
    x = random_input((1, 2, 1100, 1300), torch.float32, seed=10)  # 11.4 MB
    theta = random_theta(stn.Affine(), 1, torch.float32, scale=0.3, seed=11)
    out = stn.warp(x, theta, stn.Affine(), size=(900, 1000), backend="fused")
    reference = stn.warp(x, theta, stn.Affine(), size=(900, 1000), backend="torch")
    torch.testing.assert_close(out, reference, atol=2e-3, rtol=0)  # (locations rounded apart at 1300 px)


@pytest.mark.parametrize("size", [(40, 80), (13, 27)], ids=["wide-rows", "packed-rows"])
def test_a_homographys_w_of_zero_or_nan_in_one_pass(size):
    """The one-pass forward's guard on the homography's w, against the two passes (5
    channels) bit for bit and against closed forms: w = +0.0 or -0.0 everywhere (the guard
    puts +eps there, so H = diag(0.01, 0.01, ±0) with eps 0.05 is a zoom by 0.2, not its
    mirror image), and a NaN in a perspective term (NaN everywhere: an unordered compare
    would have guarded it to a finite w)."""
    x = random_input((4, 5, 30, 70), torch.float32, seed=7)
    h = torch.zeros(4, 3, 3)
    h[:, 0, 0] = h[:, 1, 1] = 0.01
    h[0, 2, 2] = 0.0
    h[1, 2, 2] = -0.0
    h[2, 2] = torch.tensor([float("nan"), 0.0, 1.0])
    h[3, 2] = torch.tensor([0.0, float("nan"), 1.0])
    for padding in PADDINGS:
        def warp(channels):
            return torch.ops.torchstn.warp2d(x[:, :channels], h, "projective", list(size), "bilinear", padding, False,
                                             0.05)
        five = warp(5)
        for c in (1, 2, 3, 4):
            torch.testing.assert_close(warp(c), five[:, :c], atol=0, rtol=0, equal_nan=True)
        zoom = stn.warp(x[:2], torch.tensor([[0.2, 0.0, 0.0, 0.0, 0.2, 0.0]]).expand(2, 6), "affine", size=size,
                        padding=padding)
        torch.testing.assert_close(five[:2], zoom, atol=1e-4, rtol=0)  # (0.01 / 0.05 rounds apart from 0.2)
        assert five[2:].isnan().all()


@pytest.mark.parametrize("eps", [1e-6, 0.3])
def test_fused_projective_inside_the_guard(eps):
    # w crosses 0 inside the image: eps = 0.3 puts a band of points inside the guard
    transform = stn.Projective(eps=eps)
    h0 = random_theta(transform, 2, torch.float64, scale=0.1, seed=2)
    # (no output pixel has w within rounding of 0 or of ±eps, where the two paths may round apart)
    h0[:, 6:] = torch.tensor([[-1.05, 0.12], [0.35, 0.9]], dtype=torch.float64)
    x0 = random_input((2, 2, 6, 7), torch.float64)
    results = []
    for backend in ("fused", "torch"):
        x, h = x0.clone().requires_grad_(), h0.clone().requires_grad_()
        out = stn.warp(x, h, transform, padding="border", align_corners=True, backend=backend)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape))
        results.append((out.detach(), x.grad, h.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def _grid_sample_x_gradient(x, p, size, align_corners, grad_out):
    """dL/dx of ``F.grid_sample(x, F.affine_grid(p))`` (zeros padding) for ``grad_out``, in the dtype of ``x``."""
    x = x.clone().requires_grad_()
    grid = F.affine_grid(p.view(-1, 2, 3), [x.shape[0], x.shape[1], *size], align_corners=align_corners)
    return torch.autograd.grad(F.grid_sample(x, grid, padding_mode="zeros", align_corners=align_corners), x, grad_out)[0]


def _gathered_thetas() -> torch.Tensor:
    """Affine θs, one per sample: near the identity, zoomed in and out, rotated by 10 degrees,
    shifted half out of the image, flipped, rotated by 60 degrees (too steep for the gather:
    the scatter), near the identity again (with a NaN output gradient in the test), zoomed
    out 20 times and sheared by 6."""
    p = random_theta(stn.Affine(), 10, torch.float64, scale=0.05, seed=7)
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    p[1] = torch.tensor([0.8, 0.0, 0.05, 0.0, 0.8, -0.1])
    p[2] = torch.tensor([1.25, 0.05, 0.0, -0.03, 1.2, 0.1])
    p[3] = torch.tensor([c, -s, 0.1, s, c, 0.0])
    p[4] = torch.tensor([1.0, 0.02, 0.93, 0.0, 1.0, -0.6])
    p[5] = torch.tensor([-1.0, 0.0, 0.013, 0.0, 1.0, 0.021])  # (off the pixels: θ's sub-gradient there differs)
    c, s = math.cos(math.radians(60)), math.sin(math.radians(60))
    p[6] = torch.tensor([c, -s, 0.0, s, c, 0.0])
    p[8] = torch.tensor([20.0, 0.01, 0.3, 0.02, 20.0, -0.2])
    p[9] = torch.tensor([1.0, -6.0, 0.1, 0.0, 1.0, 0.0])
    return p


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("wanted", ["both", "x"])
@pytest.mark.parametrize(("shape", "size"), [((10, 3, 37, 70), None), ((10, 5, 20, 9), None), ((10, 4, 33, 40), (40, 50)),
                                             ((10, 3, 48, 48), (40, 36)), ((10, 2, 17, 66), None),
                                             ((10, 1, 21, 80), (24, 64))],
                         ids=["3x37x70", "5x20x9", "4x33x40-to-40x50", "3x48x48-to-40x36", "2x17x66", "1x21x80-to-24x64"])
def test_an_x_gradient_gathered_per_pixel_equals_grid_samples(shape, size, wanted, align_corners):
    """The float32 kernel gathers dL/dx per input pixel (fused_warp2d.cpp's gather_x_gradient)
    for planes of unit width stride under zeros padding where a sample's θ allows it: with
    three or more channels, or for dL/dx alone two channels or rows of 64 pixels or more.
    Against F.grid_sample's gradients in float64, sample by sample (_gathered_thetas; rows
    that end in a part-filled vector, sizes that grow and shrink the image, more channels
    than four), with a NaN output gradient in one sample: NaN at that point's corners alone,
    as F.grid_sample gives them (where a gather would spread it, the sample is scattered).
    θ's gradient is the same bits as where dL/dx is not wanted, and both are the same bits on
    one thread and two."""
    x = random_input(shape, torch.float64, seed=8)
    p = _gathered_thetas()
    size = shape[2:] if size is None else size
    grad_out = random_input((shape[0], shape[1], *size), torch.float64, seed=9)
    grad_out[7, -1, size[0] // 2, size[1] // 3] = float("nan")
    x32, p32 = x.float().requires_grad_(), p.float().requires_grad_(wanted == "both")
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):  # the samples split over threads: the same bits
            torch.set_num_threads(n)
            out = stn.warp(x32, p32, stn.Affine(), size=size, align_corners=align_corners, backend="fused")
            runs.append(torch.autograd.grad(out, (x32, p32) if wanted == "both" else (x32,), grad_out.float()))
    finally:
        torch.set_num_threads(threads)
    grads = runs[0]
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)
    ref_x = _grid_sample_x_gradient(x, p, size, align_corners, grad_out)
    assert ref_x[7].isnan().any() and not ref_x[7].isnan().all()
    torch.testing.assert_close(grads[0].double(), ref_x, atol=1e-4, rtol=1e-4, equal_nan=True)
    if wanted == "both":  # θ's gradient as where dL/dx is not wanted (the passes without their scatter)
        p_alone = p.float().requires_grad_()
        out = stn.warp(x.float(), p_alone, stn.Affine(), size=size, align_corners=align_corners, backend="fused")
        torch.testing.assert_close(grads[1], torch.autograd.grad(out, p_alone, grad_out.float())[0], atol=0, rtol=0,
                                   equal_nan=True)


@pytest.mark.parametrize("align_corners", [False, True])
def test_a_zoomed_out_warps_x_gradient_keeps_float32s_precision(align_corners):
    """Zoomed out 20 times, a warp's output points lie a thousand pixels apart in the input's
    pixels: dL/dx stays within 2e-5 of float64's (the gather takes its distances relative to
    a window nearby: 1.8e-6; the scatter 4.5e-6 and 1.1e-5; the gather's first version, from floats of
    that size, 1.1e-4)."""
    x = random_input((2, 3, 64, 64), torch.float64, seed=10)
    p = torch.tensor([[20.0, 0.01, 0.3, 0.02, 20.0, -0.2]] * 2, dtype=torch.float64)
    grad_out = random_input((2, 3, 64, 64), torch.float64, seed=11)
    x32 = x.float().requires_grad_()
    out = stn.warp(x32, p.float(), stn.Affine(), align_corners=align_corners, backend="fused")
    grad_x = torch.autograd.grad(out, x32, grad_out.float())[0]
    ref = _grid_sample_x_gradient(x, p.float().double(), (64, 64), align_corners, grad_out)
    assert ref.abs().max() > 1
    torch.testing.assert_close(grad_x.double(), ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("transform", [stn.Similarity(), stn.Affine(), stn.Projective(eps=0.3)], ids=lambda t: t.name)
def test_fused_warp_gradcheck(transform, padding, align_corners):
    x = random_input((2, 2, 4, 5), torch.float64).requires_grad_()
    p = random_theta(transform, 2, torch.float64, scale=0.1, seed=2)
    if transform.projective:  # points inside the guard and outside it
        p[:, 6:] = torch.tensor([[-1.05, 0.12], [0.3, 0.9]], dtype=torch.float64)
    p.requires_grad_()
    fn = lambda x, p: stn.warp(x, p, transform, size=(3, 6), padding=padding, align_corners=align_corners, backend="fused")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, p), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_fused_nearest_gradcheck_wrt_the_input(padding, align_corners, calls):
    """Nearest is linear in x (its θ gradient is 0: the tests above)."""
    x = random_input((2, 2, 4, 5), torch.float64).requires_grad_()
    p = random_theta(stn.Affine(), 2, torch.float64, scale=0.3, seed=2)
    fn = lambda x: stn.warp(x, p, stn.Affine(), size=(3, 6), mode="nearest", padding=padding,  # noqa: E731
                            align_corners=align_corners, backend="fused")
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradgradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    assert set(calls) == {"fused_warp"}


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("gradient", ["nchw", "channels-last"])
def test_nearest_on_a_float32_grid_equals_f_grid_sample_bit_for_bit(padding, align_corners, gradient, calls):
    """Nearest on a float32 grid takes one pass forward and one backward (no block): the same
    pixels as F.grid_sample, points on half pixels (rounded half to even) included, and the same
    input gradient bit for bit (each point's gradient added to its pixel in the points' order;
    a channels_last output gradient takes the block path, compared the same way). A
    point that is not finite gives NaN values and a NaN grid gradient and adds nothing to the
    input's (F.grid_sample answers it with a pixel: compared on the finite points, its gradient
    given 0 there); the finite points' grid gradient is 0."""
    B, C, H, W, Ho, Wo = 2, 3, 9, 11, 13, 70
    generator = torch.Generator().manual_seed(0)
    pixels = torch.stack([torch.randint(-3, W + 3, (B, Ho, Wo), generator=generator),
                          torch.randint(-3, H + 3, (B, Ho, Wo), generator=generator)], -1).float() + 0.5
    size = torch.tensor([W, H], dtype=torch.float32)
    grid = pixels / (size - 1) * 2 - 1 if align_corners else (2 * pixels + 1) / size - 1
    grid[:, 1::2] = random_grid((B, Ho // 2, Wo, 2), torch.float32)  # every other row anywhere
    grid[0, 0, 0, 0], grid[1, -1, -1, 1], grid[1, 5, 3, 0] = float("nan"), float("inf"), -float("inf")
    finite = grid.isfinite().all(-1)
    grad_out = random_input((B, C, Ho, Wo), torch.float32, seed=3)
    if gradient == "channels-last":
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    x, g = random_input((B, C, H, W), torch.float32).requires_grad_(), grid.clone().requires_grad_()
    out = stn.sample(x, g, "nearest", padding, align_corners, backend="fused")
    grad_x, grad_grid = torch.autograd.grad(out, (x, g), grad_out)
    assert set(calls) == {"fused_sample"}
    xr = x.detach().clone().requires_grad_()
    expected = F.grid_sample(xr, grid.nan_to_num(0.0, 0.0, 0.0), mode="nearest", padding_mode=padding,
                             align_corners=align_corners)
    (expected_grad_x,) = torch.autograd.grad(expected, xr, grad_out * finite[:, None])
    at = finite[:, None].expand_as(out)
    assert torch.equal(out[at], expected[at]) and out[~at].isnan().all()
    assert torch.equal(grad_x, expected_grad_x)
    assert torch.equal(grad_grid[finite], torch.zeros_like(grad_grid[finite])) and grad_grid[~finite].isnan().all()


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_nearest_affine_rows_in_one_pass_equal_the_block_bit_for_bit(padding, align_corners):
    """A float32 nearest warp of affine rows takes the nearest passes forward and backward
    (NCHW: rows, or runs of packed rows across them); a channels_last input takes the block.
    The same pixels and each pixel's gradient added in the same order, so the same bits: near
    the identity, rotated, flipped, entirely outside, a NaN θ (NaN everywhere, and a NaN θ
    gradient; the others 0), on wide rows and on narrow ones packed across rows."""
    n = 6
    x = random_input((n, 3, 30, 41), torch.float32, seed=3)
    p = random_theta(stn.Affine(), n, torch.float32, scale=0.02, seed=4)
    p[1] += random_theta(stn.Affine(), 1, torch.float32, scale=0.3, seed=5)[0] - stn.Affine().identity(1)[0]
    p[2] = torch.tensor([-1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # flipped
    p[3] = torch.tensor([0.7, 0.7, 0.1, -0.7, 0.7, 0.0])  # rotated by 45 degrees
    p[4] = torch.tensor([1.0, 0.0, 3.0, 0.0, 1.0, 0.0])  # entirely outside
    p[5, 2] = float("nan")
    for size in [(20, 90), (13, 27)]:  # rows of a vector and more; narrow rows packed across rows
        grad_out = random_input((n, 3, *size), torch.float32, seed=6)
        results = []
        for image in (x, x.contiguous(memory_format=torch.channels_last)):
            xg, pg = image.clone().requires_grad_(), p.clone().requires_grad_()
            out = stn.warp(xg, pg, stn.Affine(), size=size, mode="nearest", padding=padding,
                           align_corners=align_corners, backend="fused")
            results.append((out, *torch.autograd.grad(out, (xg, pg), grad_out)))
        for one_pass, block in zip(*results):
            torch.testing.assert_close(one_pass, block, atol=0, rtol=0, equal_nan=True)
        out, grad_x, grad_p = results[0]
        assert out[5].isnan().all() and not out[:5].isnan().any()
        assert grad_p[5].isnan().all() and torch.equal(grad_p[:5], torch.zeros_like(grad_p[:5]))
        assert grad_x[:5].abs().sum() > 0


@pytest.mark.parametrize("padding", PADDINGS)
def test_fused_sample_gradcheck(padding):
    x = random_input((2, 2, 4, 5), torch.float64).requires_grad_()
    grid = random_grid((2, 3, 4, 2), torch.float64, spread=1.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, g: _fused_sample(x, g, padding, False), (x, grid), eps=1e-6, atol=1e-6)


def test_only_the_gradients_asked_for():
    transform = stn.Affine()
    x = random_input((2, 3, 8, 8), torch.float32)
    p = random_theta(transform, 2, torch.float32, scale=0.2, seed=2)
    ref_p = p.clone().requires_grad_()
    stn.warp(x, ref_p, transform, backend="torch").sum().backward()
    p.requires_grad_()
    out = stn.warp(x, p, transform, backend="fused")  # the image needs no gradient: the STN case
    out.sum().backward()
    torch.testing.assert_close(p.grad, ref_p.grad, atol=1e-4, rtol=1e-4)
    xg = x.clone().requires_grad_()
    stn.warp(xg, p.detach(), transform, backend="fused").sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


@pytest.fixture
def calls(monkeypatch):
    """The fused kernel's calls ("fused_warp" from θ, "fused_sample" of a grid, through the
    operator or the compiled call), recorded (the compiled call's volumes are the 3-D kernel's, and
    the grids it leaves to ATen's sampler, bicubic and nearest beyond AUTO_GRID_MODES, ATen's)."""
    record = record_calls(monkeypatch, _fused, "fused_warp", "fused_sample")
    for name, what in (("_compiled_warp", "fused_warp"), ("_compiled_sample", "fused_sample")):

        def recorded(*args, compiled=getattr(_sample, name), what=what):
            out = compiled(*args)
            aten = what == "fused_sample" and not (args[2] in _fused._MODES and (
                args[5] == "fused" or _sample._auto_grid_fused(args[0], args[1], args[2])))
            if out is not None and out.dim() != 5 and not aten:
                record.append(what)
            return out

        monkeypatch.setattr(_sample, name, recorded)
    return record


def test_default_backend_takes_the_fused_kernel_where_it_was_measured_faster(calls):
    x = torch.rand(2, 1, 8, 8)
    for transform in FAMILIES_2D:
        stn.warp(x, transform.identity(2), transform)
    assert calls == ["fused_warp"] * len(FAMILIES_2D)
    calls.clear()
    grid = stn.Affine().grid(stn.Affine().identity(2), (8, 8)).requires_grad_()
    tps = stn.ThinPlateSpline()
    stn.sample(x, grid)
    stn.warp(x.double(), tps.identity(2, dtype=torch.float64).requires_grad_(), tps)
    stn.sample(x, grid.detach())
    with torch.no_grad():
        stn.warp(x.double(), tps.identity(2, dtype=torch.float64), tps)
    # 1 channel, a small grid: the kernel where its compiled call is built (with a gradient to
    # record or without: the same bits either way), else F.grid_sample
    assert calls == (["fused_sample"] * 4 if _fused.fast_call() is not None else [])
    calls.clear()
    stn.warp(torch.rand(1, 1, 4, 4, 4), stn.Affine3D().identity(1), stn.Affine3D())
    x3 = torch.rand(2, 3, 8, 8)
    stn.sample(x3, grid)
    stn.warp(x3, tps.identity(2), tps)
    stn.sample(x3, grid.detach(), mode="bicubic")
    stn.sample(x3, stn.Affine().grid(stn.Affine().identity(2), (100, 100)), mode="nearest")  # F.grid_sample's is faster
    assert calls == ["fused_sample"] * 2
    calls.clear()
    stn.sample(x3, grid.detach(), mode="nearest")  # a few points: the kernel's compiled call (else F.grid_sample)
    assert calls == (["fused_sample"] if _fused.fast_call() is not None else [])
    calls.clear()
    stn.warp(x, stn.Affine().identity(2), stn.Affine(), mode="nearest")  # nearest from θ: the kernel too
    assert calls == ["fused_warp"]
    calls.clear()
    signal = torch.rand(2, 3, 9)
    stn.warp(signal, stn.Affine1D().identity(2), "affine1d")  # a signal: an image of height 1
    stn.warp(signal, stn.Affine1D().identity(2).requires_grad_(), stn.Affine1D(), size=(5,))
    assert calls == ["fused_warp"] * 2


def test_auto_nearest_on_a_few_points_equals_the_torch_backend():
    """"auto" samples a nearest grid of a few points with the fused kernel (its checks for
    non-finite points cost F.grid_sample's path more than the sampling): the same values and
    gradients as the torch backend, NaN and inf points included (NaN in every channel)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 8, 8, generator=generator).requires_grad_()
    grid = torch.rand(2, 5, 5, 2, generator=generator) * 2.4 - 1.2
    grid[0, 1, 1, 0], grid[1, 2, 2, 1] = float("nan"), float("inf")
    grid.requires_grad_()
    g = torch.rand(2, 3, 5, 5, generator=generator)
    got, expected = stn.sample(x, grid, "nearest"), stn.sample(x, grid, "nearest", backend="torch")
    torch.testing.assert_close(got, expected, atol=0, rtol=0, equal_nan=True)
    assert got[0, :, 1, 1].isnan().all() and got[1, :, 2, 2].isnan().all()
    for a, b in zip(torch.autograd.grad(got, (x, grid), g), torch.autograd.grad(expected, (x, grid), g)):
        torch.testing.assert_close(a, b, atol=0, rtol=0, equal_nan=True)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_signals_warped_by_the_fused_kernel_equal_the_grid_path(padding, align_corners, mode):
    """An Affine1D warp of signals (B, C, L) runs the fused 2-D kernel on an image of height 1
    (its compiled call, and the general path alike, bit for bit): the values and gradients of
    the grid path (F.grid_sample), a NaN θ giving NaN, an inf sample read where it is read, a
    resampled length, float64 gradchecks of the first and second order."""
    generator = torch.Generator().manual_seed(21)
    x = torch.rand(3, 2, 40, dtype=torch.float64, generator=generator)
    x[1, 0, 17] = float("inf")
    theta = torch.tensor([[0.93, 0.031], [1.21, -0.17], [0.7, 0.4]], dtype=torch.float64)
    options = {"size": (53,), "mode": mode, "padding": padding, "align_corners": align_corners}
    expected = stn.warp(x, theta, "affine1d", backend="torch", **options)
    for backend in ("auto", "fused"):
        got = stn.warp(x, theta, stn.Affine1D(), backend=backend, **options)
        torch.testing.assert_close(got, expected, equal_nan=True)
        general = _sample._warp_general(x, theta, stn.Affine1D(), (53,), mode, padding, align_corners, backend)
        torch.testing.assert_close(general, got, atol=0, rtol=0, equal_nan=True)
    nan = theta.clone()
    nan[2, 1] = float("nan")
    assert stn.warp(x, nan, "affine1d", **options)[2].isnan().all()
    xs, ts = x[:, :, :12].clone().requires_grad_(), theta.clone().requires_grad_()
    xs.data[1, 0, 5] = 0.3  # (finite for the gradchecks)
    fn = lambda a, t: stn.warp(a, t, "affine1d", size=(9,), mode=mode, padding=padding, align_corners=align_corners)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (xs, ts), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradgradcheck(fn, (xs, ts), eps=1e-6, atol=1e-5)
    reference = lambda a, t: stn.warp(a, t, "affine1d", size=(9,), mode=mode, padding=padding,  # noqa: E731
                                      align_corners=align_corners, backend="torch")
    g = torch.rand(3, 2, 9, dtype=torch.float64, generator=generator)
    for a, b in zip(torch.autograd.grad(fn(xs, ts), (xs, ts), g), torch.autograd.grad(reference(xs, ts), (xs, ts), g)):
        torch.testing.assert_close(a, b)


def test_non_contiguous_input_and_empty_batch():
    transform = stn.Affine()
    x = random_input((2, 8, 9, 3), torch.float32).permute(0, 3, 1, 2)  # channels-last view
    p = random_theta(transform, 2, torch.float32, scale=0.2, seed=2)
    torch.testing.assert_close(stn.warp(x, p, transform, backend="fused"), stn.warp(x, p, transform, backend="torch"))
    assert stn.warp(torch.rand(0, 3, 8, 8), torch.zeros(0, 6), transform, backend="fused").shape == (0, 3, 8, 8)
    assert stn.warp(torch.rand(2, 0, 8, 8), torch.zeros(2, 6), transform, backend="fused").shape == (2, 0, 8, 8)
    # no channels in channels_last (strides (0, 1, 0, 0)): an output with those strides crashed the kernel
    empty = torch.rand(2, 0, 6, 7).contiguous(memory_format=torch.channels_last)
    assert stn.warp(empty, stn.Affine().identity(2), "affine").shape == (2, 0, 6, 7)
    with pytest.raises(ValueError, match="x must have non-empty spatial dimensions"):  # (F.grid_sample: RuntimeError)
        stn.warp(torch.rand(1, 1, 0, 8), torch.zeros(1, 6), transform, size=(4, 4), backend="fused")


def test_far_away_points_read_padding():
    # a homography whose horizon crosses the image sends points to |coordinate| ~ 1e6 or more
    h = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0]])
    x = torch.rand(1, 2, 5, 6)
    for padding in PADDINGS:
        fused = stn.warp(x, h, stn.Projective(), padding=padding, align_corners=True, backend="fused")
        ref = stn.warp(x, h, stn.Projective(), padding=padding, align_corners=True, backend="torch")
        assert torch.isfinite(fused).all()
        torch.testing.assert_close(fused, ref)


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(_fused._library, "state", {})
    monkeypatch.setattr(_fused, "_build", broken)
    x, p = torch.rand(2, 1, 8, 8), stn.Affine().identity(2) + 0.1
    with pytest.warns(RuntimeWarning, match="could not be built.*RuntimeError: no compiler here"):
        out = stn.warp(x, p, stn.Affine(), backend="fused")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        out2 = stn.sample(x, stn.Affine().grid(p, (8, 8)), backend="fused")
    torch.testing.assert_close(out, stn.warp(x, p, stn.Affine(), backend="torch"))
    torch.testing.assert_close(out2, out)
    assert fused_status() == (False, "no compiler here")


def test_fused_status_and_coverage():
    assert fused_status() == (True, None)  # the module's fixture built it
    assert fused_applies(torch.rand(1, 1, 4, 4), "bilinear")
    assert fused_applies(torch.rand(1, 1, 4, 4), "nearest")
    assert not fused_applies(torch.rand(1, 1, 4, 4), "bicubic")
    assert not fused_applies(torch.rand(1, 1, 4, 4, dtype=torch.float16), "bilinear")
    assert not fused_applies(torch.rand(1, 1, 2, 4, 4), "bilinear")  # 3-D


def test_the_extension_name_separates_torch_builds_flags_and_sources(monkeypatch):
    name, flags = _fused._build_options()
    assert name.startswith(f"torchstn_fused_warp2d_v{_fused._ABI}_") and "-O3" in flags
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert _fused._build_options()[0] != name


def test_a_build_tuned_for_this_cpu_is_named_after_it(monkeypatch):
    """x86 builds are tuned for the building CPU (-mtune=native): a machine with another CPU sharing
    the extension cache builds its own instead of taking one tuned for another."""
    name, flags = _fused._build_options()
    if "-mtune=native" not in flags:
        pytest.skip("the portable build is not tuned")
    monkeypatch.setattr(_fused, "_cpu_model", lambda: "another CPU")
    other, other_flags = _fused._build_options()
    assert other != name and other_flags == flags


def _built_library() -> tuple[str, Path]:
    """The 2-D kernel's extension name and the library the ``fused_kernel`` fixture built."""
    from torch.utils import cpp_extension

    name = _fused._build_options()[0]
    return name, Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"


def test_the_first_build_says_so_on_stderr_with_its_duration(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    library = str(_built_library()[1])
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: library)
    _fused._build()
    err = capsys.readouterr().err
    assert err.startswith(f"torchstn: building the fused CPU sampler (first use, cached in {tmp_path}) ... done in ")
    assert err.rstrip().endswith(" s") and err.count("\n") == 1
    shutil.copy(library, tmp_path / f"{_fused._build_options()[0]}.so")  # now cached: silent
    _fused._build()
    assert capsys.readouterr().err == ""


def _no_ninja():
    raise RuntimeError("Ninja is required to load C++ extensions")


def test_a_build_only_call_builds_without_a_word(monkeypatch, tmp_path, capsys):
    """load_or_build without a loader (the fast call's build beside the kernel's): it compiles
    into the cache, prints nothing, returns None, and does nothing once the library is there."""
    from torch.utils import cpp_extension

    built = []

    def fake_load(**kwargs):
        built.append(kwargs["name"])
        (tmp_path / f"{kwargs['name']}.so").write_bytes(b"")
        return str(tmp_path / f"{kwargs['name']}.so")

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    assert _fused.load_or_build("probe", [], lambda _: [], None, "a probe", python_module=True) is None
    assert _fused.load_or_build("probe", [], lambda _: [], None, "a probe", python_module=True) is None
    assert built == ["probe"] and capsys.readouterr().err == ""


def test_a_failed_build_only_call_raises_without_a_word(monkeypatch, tmp_path, capsys):
    """(In the process beside the kernel's build, whose failure is then the loading build's to
    meet: that one builds in this process and warns with its own error.)"""
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: _no_ninja())
    with pytest.raises(RuntimeError, match="Ninja is required"):
        _fused._prebuild_fast_call()
    assert capsys.readouterr().err == ""


def test_the_kernels_builder_starts_the_modules_build_in_a_process_beside_it(monkeypatch):
    """Where neither is cached, the kernel's build starts the fast call's module's build in a
    process of its own (the two took 25.7 s together against 36.2 s one after the other on 2
    cores), once; fast_call() then loads the module from the cache (waiting for that build
    under its lock: test_a_build_that_waits_for_another_process_s_says_so)."""
    started = []
    monkeypatch.setattr(_fused.subprocess, "Popen", lambda command, **kwargs: started.append((command, kwargs)) or 1)
    monkeypatch.setattr(_fused, "_start_fast_call_beside", _START_BESIDE)
    monkeypatch.setattr(_fused, "_beside", [])
    monkeypatch.setattr(_fused, "_cached", lambda name: False)
    monkeypatch.setattr(_fused._fast_call_module, "state", {})
    monkeypatch.delenv("TORCHSTN_FAST_CALL", raising=False)
    monkeypatch.setattr(_fused, "load_kernel", lambda *args: _no_ninja())
    with pytest.raises(RuntimeError, match="Ninja is required"):  # (the kernel's own build: its failure stays its)
        _fused._build()
    _fused._start_fast_call_beside()
    assert [command for command, _ in started] == [_fused._beside_command()]
    assert all(started[0][1][stream] is _fused.subprocess.DEVNULL for stream in ("stdin", "stdout", "stderr"))


@pytest.mark.parametrize("why", ["turned off", "kernel cached", "module cached", "module loaded", "no process"])
def test_nothing_is_built_beside_the_kernel_where_it_need_not_be(monkeypatch, why):
    monkeypatch.setattr(_fused, "_beside", [])
    popen = (lambda *args, **kwargs: pytest.fail("built beside the kernel")) if why != "no process" else _no_ninja
    monkeypatch.setattr(_fused.subprocess, "Popen", popen)
    kernel, module = _fused._build_options()[0], _fused._fast_call_options()[0]
    monkeypatch.setattr(_fused, "_cached", lambda name: {"kernel cached": kernel, "module cached": module}.get(why) == name)
    monkeypatch.setattr(_fused._fast_call_module, "state", {"lib": None} if why == "module loaded" else {})
    if why == "turned off":
        monkeypatch.setenv("TORCHSTN_FAST_CALL", "off")
    else:
        monkeypatch.delenv("TORCHSTN_FAST_CALL", raising=False)
    _START_BESIDE()  # (a process that cannot start: nothing either, and no error)
    assert _fused._beside == []


def test_the_process_beside_runs_this_copy_of_torchstn():
    """Its command is this Python on this checkout's torchstn; run here, where the module is
    cached already, it ends at once and says nothing."""
    if _fused.fast_call() is None:  # (built and cached, where it can be)
        pytest.skip("the compiled call cannot be built here")
    command = _fused._beside_command()
    assert command[0] == sys.executable
    assert (Path(command[3]) / "torchstn" / "sampling" / "_fused.py").resolve() == Path(_fused.__file__).resolve()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_failed_build_warns_at_the_callers_line(monkeypatch):
    """The warning names the user's line, not torchstn's, through warp and through a module."""
    x, p = torch.rand(2, 3, 8, 8), stn.Affine().identity(2)
    st = stn.SpatialTransformer("affine", stn.conv_localization(3, (8, 8)))
    for call in (lambda: stn.warp(x, p, "affine"), lambda: st(x)):
        monkeypatch.setattr(_fused._library, "state", {})
        monkeypatch.setattr(_fused, "_build", _no_ninja)
        with pytest.warns(RuntimeWarning, match="could not be built.*Ninja is required") as caught:
            call()
        assert [(w.filename, w.lineno) for w in caught] == [(__file__, call.__code__.co_firstlineno)]


def test_the_build_compiles_each_dtype_as_its_own_translation_unit(monkeypatch, tmp_path):
    """Two translation units, the float32 and the float64 half of the source, which ninja
    compiles in parallel (15.5 s -> 10.2 s for the first build of the 2-D kernel on an idle
    2-core machine); the library built from them exports both."""
    from torch.utils import cpp_extension

    name, real = _built_library()
    seen = {}
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: seen.update(kwargs) or str(real))
    lib = _fused._build()
    assert [Path(p).name for p in seen["sources"]] == ["fused_warp2d_f32.cpp", "fused_warp2d_f64.cpp"]
    for bits, part in zip((32, 64), seen["sources"]):
        assert Path(part).read_text() == f'#define TORCHSTN_PART {bits}\n#include "{_fused._SOURCE.resolve()}"\n'
    assert lib.torchstn_warp2d_f32_forward and lib.torchstn_warp2d_f64_forward


def test_a_failed_first_build_ends_its_line(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: _no_ninja())
    with pytest.raises(RuntimeError, match="Ninja is required"):
        _fused._build()
    err = capsys.readouterr().err
    assert err.startswith("torchstn: building the fused CPU sampler") and err.endswith(" ... failed\n")


@pytest.mark.skipif(_locks.fcntl is None, reason="no fcntl: builds are not locked here")
def test_a_build_that_waits_for_another_process_s_says_so(tmp_path, capsys):
    """A process whose kernel another one was building waited a minute and more without a word."""
    import threading

    holder = open(tmp_path / "torchstn-build.lock", "a")  # (another open file: another lock owner)
    _locks.fcntl.flock(holder, _locks.fcntl.LOCK_EX)
    threading.Timer(0.3, holder.close).start()  # the other build ends
    with _fused._build_lock(tmp_path, "the fused CPU sampler") as locked:
        assert locked
    err = capsys.readouterr().err
    assert err.startswith("torchstn: waiting for another process's build of the fused CPU sampler (")
    assert " ... done in " in err
    with _fused._build_lock(tmp_path, "the fused CPU sampler"):  # nobody else building: no line
        pass
    assert capsys.readouterr().err == ""


def test_a_built_library_loads_without_torchs_build_lock(monkeypatch, tmp_path):
    """A lock file left by a killed process made cpp_extension.load wait forever; a library
    already built under its exact name is loaded without it (and without calling load)."""
    from torch.utils import cpp_extension

    name, real = _built_library()
    shutil.copy(real, tmp_path / f"{name}.so")
    (tmp_path / "lock").touch()
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: pytest.fail("cpp_extension.load was called"))
    assert _fused._build().torchstn_warp2d_abi_version() == _fused._ABI
    cut = tmp_path / "cut"  # a build killed while linking: removed, so that the build makes it again
    cut.mkdir()
    (cut / f"{name}.so").write_bytes(b"cut short")
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(cut))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: str(real))
    assert _fused._build().torchstn_warp2d_abi_version() == _fused._ABI
    assert not (cut / f"{name}.so").exists()


@pytest.mark.skipif(_locks.fcntl is None, reason="no fcntl (Windows): builds are not locked")
def test_a_build_holds_its_own_lock_and_removes_a_killed_builds_lock(monkeypatch, tmp_path):
    """A first build killed while compiling left torch's lock file, and the next first use
    waited for it without end; a build now runs under an flock of torchstn's own (dropped
    when its process ends), so the torch lock found while holding it is stale and removed."""
    import fcntl

    from torch.utils import cpp_extension

    name, real = _built_library()
    (tmp_path / "lock").touch()  # what a killed build leaves
    seen = {}

    def load(**kwargs):
        seen["torch's lock"] = (tmp_path / "lock").exists()
        with open(tmp_path / "torchstn-build.lock") as other:  # another process's attempt, as flock sees it
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["held"] = False
            except BlockingIOError:
                seen["held"] = True
        return str(real)

    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", load)
    assert _fused._build().torchstn_warp2d_abi_version() == _fused._ABI
    assert seen == {"torch's lock": False, "held": True}
    with open(tmp_path / "torchstn-build.lock") as after:  # let go once built
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_without_flock_torchs_lock_file_is_left_alone(monkeypatch, tmp_path):
    """Where there is no fcntl (Windows) nothing holds torchstn's lock, so torch's lock file may
    be a running build's: it is not removed, and torch's own lock orders the builds."""
    from torch.utils import cpp_extension

    name, real = _built_library()
    (tmp_path / "lock").touch()
    seen = []
    monkeypatch.setattr(_locks, "fcntl", None)
    monkeypatch.setattr(cpp_extension, "_get_build_directory", lambda name, verbose: str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: seen.append((tmp_path / "lock").exists()) or str(real))
    assert _fused._build().torchstn_warp2d_abi_version() == _fused._ABI
    assert seen == [True]


def test_auto_samples_a_given_grid_with_the_kernel_where_it_is_faster(calls, monkeypatch):
    """``"auto"`` on a given bilinear grid: the kernel from 3 channels on, with fewer channels
    where its compiled call is built, and else on a float32 grid of ``FUSED_MIN_POINTS`` points
    or more (below, the kernel's per-call cost through ctypes loses to F.grid_sample's);
    nearest grids go to F.grid_sample."""
    from torchstn.sampling._sample import FUSED_MIN_POINTS

    theta = stn.Affine().identity(64)
    large = stn.Affine().grid(theta, (28, 28)).requires_grad_()  # 50,176 points
    small = large[:16]  # 12,544
    assert small[..., 0].numel() < FUSED_MIN_POINTS <= large[..., 0].numel()
    compiled = _fused.fast_call() is not None
    for fast in (False, True) if compiled else (False,):
        calls.clear()
        with monkeypatch.context() as m:
            if not fast:  # (as where it could not be built)
                m.setitem(_fused._library.state, "fast", False)
            stn.sample(torch.rand(64, 1, 28, 28), large)
            stn.sample(torch.rand(16, 3, 28, 28), small)
            assert calls == ["fused_sample", "fused_sample"]
            calls.clear()
            stn.sample(torch.rand(16, 1, 28, 28), small)
            stn.sample(torch.rand(64, 1, 28, 28, dtype=torch.float64), large.double())
            with torch.no_grad():
                stn.sample(torch.rand(16, 1, 28, 28), small)
            stn.sample(torch.rand(64, 1, 28, 28), large, mode="nearest")
            assert calls == (["fused_sample"] * 3 if fast else [])


def _warp_both_ways(monkeypatch, x0, p0, transform, **options):
    """(output, x's gradient, θ's gradient) of ``stn.warp`` by its fast paths (the compiled call,
    which records Affine's gradient itself, and the eager one) and, with them switched off, by
    the general one."""
    from torchstn.sampling import _sample

    results = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(_sample, "_compiled_warp", lambda *args: None)
            monkeypatch.setattr(_sample, "_eager_fused_warp", lambda *args: None)
        x, p = x0.clone().requires_grad_(), p0.clone().requires_grad_()
        out = stn.warp(x, p, transform, **options)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
        results.append((out.detach(), x.grad, p.grad))
    monkeypatch.undo()
    return results


@pytest.mark.parametrize("transform", FAMILIES_2D, ids=lambda t: t.name)
@pytest.mark.parametrize("case", ["same-size", "resized", "channels-last", "nearest-float64", "matrix-form"])
def test_warp_fast_path_equals_the_general_path(transform, case, monkeypatch):
    """warp's common call skips the general path's checks and dispatch: the same kernel call, the
    same bits (values and both gradients), and the general path's checks are not run."""
    dtype = torch.float64 if case == "nearest-float64" else torch.float32
    x0 = random_input((3, 2, 7, 9), dtype)
    if case == "channels-last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    p0 = random_theta(transform, 3, dtype, scale=0.3, seed=2)
    if case == "matrix-form":
        if not isinstance(transform, stn.Affine):
            pytest.skip("the (B, 2, 3) matrix form is Affine's")
        p0 = p0.view(3, 2, 3)
    options = {"size": (5, 11)} if case == "resized" else {"mode": "nearest"} if case == "nearest-float64" else {}
    checked = []
    real = stn.Transform.check_params
    monkeypatch.setattr(stn.Transform, "check_params", lambda self, *a, **k: checked.append(1) or real(self, *a, **k))
    (fast, general) = _warp_both_ways(monkeypatch, x0, p0, transform, **options)
    assert len(checked) == 1  # the general path's call only
    for name, a, b in zip(("output", "gradient wrt x", "gradient wrt params"), fast, general):
        assert torch.equal(a, b), name
    assert fast[0].stride() == general[0].stride()


@pytest.mark.filterwarnings("ignore:torch.is_autocast_cpu_enabled:DeprecationWarning")  # (torch 2.3's query, here)
def test_warp_fast_path_declines_sparse_tensors_and_runs_on_torch_2_3s_autocast_query(monkeypatch):
    from torchstn.sampling import _sample

    x, theta = torch.rand(2, 1, 6, 7), stn.Affine().identity(2).view(2, 2, 3)
    assert _sample._eager_fused_warp(x, theta.to_sparse(), stn.Affine(), None, "bilinear", "zeros", False) is None
    assert _sample._eager_fused_warp(x.to_sparse(), theta, stn.Affine(), None, "bilinear", "zeros", False) is None
    expected = stn.warp(x, theta, "affine")
    real = torch.is_autocast_enabled

    def torch_2_3(*device):  # torch 2.3's query takes no device
        if device:
            raise TypeError("is_autocast_enabled() takes 0 positional arguments but 1 was given")
        return real()

    monkeypatch.setattr(torch, "is_autocast_enabled", torch_2_3)
    assert torch.equal(stn.warp(x, theta, "affine"), expected)


@pytest.mark.parametrize("case", ["list-size", "float16", "other-dtype-params", "subclass", "wrong-width", "0-d",
                                  "no-grad"])
def test_warp_fast_path_leaves_every_other_call_to_the_general_path(case, monkeypatch):
    """A call outside the fast path's common case is checked (and explained) by the general path."""
    class Shifted(stn.Affine):
        pass

    x, transform = torch.rand(2, 3, 6, 7), stn.Affine()
    p, options = transform.identity(2), {}
    if case == "list-size":
        options["size"] = [4, 5]
    elif case == "float16":
        x = x.half()
    elif case == "other-dtype-params":
        p = p.double()
    elif case == "subclass":
        transform = Shifted()
    elif case == "wrong-width":
        p = p[:, :5]
    elif case == "0-d":
        p = p[0, 0]
    expected = None if case in ("wrong-width", "0-d", "no-grad") else stn.warp(
        x.float(), p.float(), stn.Affine(), backend="torch", **options)
    checked = []
    real = stn.Transform.check_params
    monkeypatch.setattr(stn.Transform, "check_params", lambda self, *a, **k: checked.append(1) or real(self, *a, **k))
    if case in ("wrong-width", "0-d"):
        with pytest.raises(ValueError, match=r"params must have 2 dimensions|params for Affine must have shape \(B, 6\)"):
            stn.warp(x, p, transform)
    elif case == "no-grad":  # the common case itself: no check by the general path
        with torch.no_grad():
            stn.warp(x, p, transform)
        assert checked == []
        return
    else:
        torch.testing.assert_close(stn.warp(x, p, transform, **options).float(), expected, atol=2e-3, rtol=0)
    assert checked == [1]


def test_the_output_points_kept_between_calls_follow_size_corners_and_packing():
    """The kernel keeps the last call's output coordinates on its thread: every change of the
    output's size, align_corners or packing (a channels_last output of several channels is
    not packed) must remake them."""
    transform = stn.Affine()
    theta = random_theta(transform, 2, torch.float32, scale=0.2, seed=3)
    x = random_input((2, 3, 9, 8), torch.float32)
    calls = [((5, 7), False, x), ((7, 5), False, x), ((7, 5), True, x), ((5, 7), True, x),
             ((5, 7), True, x.contiguous(memory_format=torch.channels_last)), ((5, 7), True, x[:, :1]),
             ((70, 3), False, x), ((3, 70), False, x), ((5, 7), False, x)]
    for size, align_corners, image in calls * 2:
        fused = stn.warp(image, theta, transform, size, align_corners=align_corners, backend="fused")
        torch.testing.assert_close(fused, stn.warp(image, theta, transform, size, align_corners=align_corners,
                                                   backend="torch"), atol=1e-5, rtol=1e-5)



def test_the_output_points_are_kept_per_thread():
    """Threads warping to different sizes at once each keep their own points."""
    from concurrent.futures import ThreadPoolExecutor

    transform = stn.Affine()
    theta = random_theta(transform, 2, torch.float32, scale=0.2, seed=3)
    x = random_input((2, 1, 64, 64), torch.float32)  # (outputs of 16,384 values and more run without the GIL)
    sizes = [(64, 96), (96, 64), (128, 128), (20, 30)]
    expected = {size: stn.warp(x, theta, transform, size, backend="fused") for size in sizes}  # one at a time
    for size in sizes:
        torch.testing.assert_close(expected[size], stn.warp(x, theta, transform, size, backend="torch"),
                                   atol=1e-4, rtol=1e-4)

    def run(size):
        return all(torch.equal(stn.warp(x, theta, transform, size, backend="fused"), expected[size]) for _ in range(20))

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, sizes * 3))


@pytest.mark.parametrize("shape", [(2, 1, 8, 8), (2, 3, 8, 8), (2, 1, 4, 5, 6)], ids=["1ch", "3ch", "volume"])
def test_a_negative_view_is_read_with_its_sign(shape):
    """``z.conj().imag`` is a view with torch's negative bit: the kernels, which read memory,
    apply it as torch's own do (values, the image's and the grid's gradients, and a gradient
    that is such a view itself), with and without a gradient to record."""
    def both(backend):
        z = torch.randn(*shape, dtype=torch.cdouble, generator=torch.Generator().manual_seed(3))
        g = random_grid({4: (2, 3, 4, 2), 5: (2, 3, 4, 5, 3)}[len(shape)], torch.float64, seed=4)
        z.requires_grad_(), g.requires_grad_()
        x = z.conj().imag
        assert x.is_neg()
        out = stn.sample(x, g, backend=backend)
        weights = torch.randn(*out.shape, dtype=torch.cdouble, generator=torch.Generator().manual_seed(5)).conj().imag
        out.backward(weights)
        with torch.no_grad():
            plain = stn.sample(x, g.detach(), backend=backend)
        return out.detach(), plain, z.grad, g.grad

    for got, expected in zip(both("fused"), both("torch")):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    theta = stn.Affine().identity(2, dtype=torch.float64) + 0.2 * torch.randn(2, 6, dtype=torch.float64)
    theta = torch.complex(torch.zeros_like(theta), -theta).conj().imag  # θ's values, with the bit
    x = torch.randn(2, 3, 8, 8, dtype=torch.cdouble).conj().imag
    assert theta.is_neg() and x.is_neg()
    torch.testing.assert_close(stn.warp(x, theta, "affine"), stn.warp(x, theta, "affine", backend="torch"),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_expanded_or_strided_output_gradient_gives_the_dense_ones_gradients(channels_last):
    """``warp(x).sum()`` hands the backward an expanded gradient (stride 0), which the kernel
    read through its two passes (1.3-1.5x the time of forward+backward); it is made dense first.
    The gradients are those of a dense gradient of the same values, bit for bit, as are
    those of a gradient whose rows lie a slice apart."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 20, 30, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    theta = (stn.Affine().identity(4) + 0.05 * torch.randn(4, 6, generator=generator)).requires_grad_()
    out = stn.warp(x, theta, stn.Affine(), backend="fused")
    dense = torch.autograd.grad(out, (x, theta), torch.ones(4, 3, 20, 30), retain_graph=True)
    expanded = torch.autograd.grad(out.sum(), (x, theta), retain_graph=True)
    torch.testing.assert_close(expanded, dense, atol=0, rtol=0)
    # (an expanded value other than 1, which the compiled call's node writes out itself)
    dense = torch.autograd.grad(out, (x, theta), torch.full((4, 3, 20, 30), 0.375), retain_graph=True)
    expanded = torch.autograd.grad(out.sum() * 0.375, (x, theta), retain_graph=True)
    torch.testing.assert_close(expanded, dense, atol=0, rtol=0)
    sliced = torch.rand(4, 3, 20, 31, generator=generator)[..., :30]
    reference = torch.autograd.grad(out, (x, theta), sliced.contiguous(), retain_graph=True)
    torch.testing.assert_close(torch.autograd.grad(out, (x, theta), sliced), reference, atol=0, rtol=0)


_FORKED_CHILD = """
import multiprocessing, sys, torch, torchstn as stn

def small_warps():
    stn.warp(torch.rand(2, 1, 8, 8), torch.eye(2, 3).repeat(2, 1, 1), "affine", backend="fused")
    stn.warp(torch.rand(1, 1, 6, 6, 6), torch.eye(3, 4)[None], "affine3d", backend="fused")

torch.set_num_threads(2)  # the parent's warps start OpenMP's thread team
stn.warp(torch.rand(4, 3, 128, 128), torch.eye(2, 3).repeat(4, 1, 1), "affine", backend="fused")
stn.warp(torch.rand(2, 1, 40, 40, 40), torch.eye(3, 4).repeat(2, 1, 1), "affine3d", backend="fused")
child = multiprocessing.get_context("fork").Process(target=small_warps)
child.start()
child.join(120)
if child.is_alive():
    child.kill()
    sys.exit("the forked child hung in a small warp")
sys.exit(child.exitcode)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_warps_small_inputs_after_the_parent_warped_at_two_threads():
    """GNU OpenMP's thread team does not survive fork(): a child forked after a warp at two
    threads (multiprocessing's default start on Linux before Python 3.14) waited forever in its
    first warp, however small, where F.grid_sample returns (torch runs small work on the calling
    thread). The kernels do too, below ATen's grain size, in 2-D and in 3-D."""
    run = subprocess.run([sys.executable, "-c", _FORKED_CHILD], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
