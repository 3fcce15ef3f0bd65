"""``sample`` and ``warp``: the sampler's public entry points and its backends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch

from torchstn._tracing import autocast_enabled, autocast_off, device_type_of, eager_tensors, forward_ad_active
from torchstn._validation import (
    HALF_DTYPES,
    check_bool,
    check_choice,
    check_floating,
    check_same_batch,
    check_size,
    check_strided,
    check_tensor,
    sizes_traced,
)
from torchstn.sampling import _fused, _fused3d
from torchstn.sampling._grid_sample import torch_sample
from torchstn.sampling._reference import reference_kernel
from torchstn.transforms import (
    Affine, Affine1D, Affine3D, Attention, MatrixTransform, Projective, Similarity, ThinPlateSpline, Transform,
    Translation, get_transform,
)

__all__ = [
    "BACKENDS", "BACKEND_CHOICES", "MODES", "PADDINGS", "Backend", "BackendName", "Mode", "Padding",
    "check_options", "check_sample_args", "reference_sample", "sample", "sample_checked_options", "warp",
    "warp_checked_options",
]

# Each option's choices are stated once, as a Literal (for type checkers); the tuples that
# validation and the CLI read are derived from it.
Mode = Literal["bilinear", "nearest", "bicubic"]
Padding = Literal["zeros", "border", "reflection"]
#: a kernel a caller can name
BackendName = Literal["torch", "fused", "reference"]
#: what ``backend=`` accepts: a kernel, or ``"auto"`` (the fastest correct one for the input)
Backend = Literal["auto", BackendName]
MODES: tuple[str, ...] = get_args(Mode)
PADDINGS: tuple[str, ...] = get_args(Padding)
#: the kernels, in the order the benchmarks list them (``"auto"`` is not one: it picks one)
BACKENDS: tuple[str, ...] = get_args(BackendName)
BACKEND_CHOICES: tuple[str, ...] = get_args(Backend)

SampleFn = Callable[[torch.Tensor, torch.Tensor, str, str, bool], torch.Tensor]


def _fused_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool) -> torch.Tensor:
    if _fused.fused_applies(x, mode) and _fused.operator_applies(x, grid) and _fused.fused_available():
        return _fused.fused_sample(x, grid, mode, padding, align_corners)
    if _fused3d.fused3d_applies(x, mode) and _fused.operator_applies(x, grid) and _fused3d.fused3d_available():
        return _fused3d.fused_sample3d(x, grid, mode, padding, align_corners)
    return torch_sample(x, grid, mode, padding, align_corners)  # what the fused kernels do not cover


#: backend name -> kernel; ``"auto"`` resolves to the fastest correct one for the device
_KERNELS: dict[str, SampleFn] = {
    "torch": torch_sample,
    "fused": _fused_sample,
    "reference": reference_kernel,
}


#: "auto" samples a given bilinear grid with the fused kernel from this many channels on
#: (1.83-2.12x F.grid_sample forward with 3 channels), and with fewer in an eager call where the
#: compiled call is built: its forward then costs that call's few µs, 1.22-1.67x
#: F.grid_sample in float32 and 1.08-1.49x in float64 from 1x1x8x8 to 64x1x28x28 without a
#: gradient to record; with one, roughly level forward+backward (0.69-1.24x, a noisy run, both
#: cores busy, before such calls took the compiled call's C++ autograd node), taken too so that
#: one call gives the same bits with a gradient and without (timeit, 2026-12-02). Where the
#: compiled call is unavailable, with fewer channels from FUSED_MIN_POINTS grid points on:
#: since the kernel reads a float32 grid in one pass, 1.13-1.39x forward and 1.03-1.27x
#: forward+backward with one or two channels from 64x28x28 points on, 0.98x at 16x28x28 and
#: 0.55x at 1x28x28 (through ctypes, whose per-call cost dominated there). On a given nearest
#: grid ATen's vectorised sampler is faster, 0.58-1.08x (python benchmarks/bench_auto.py
#: [--mode nearest], docs/benchmarks.md)
FUSED_MIN_CHANNELS = 3
FUSED_MIN_POINTS = 32768


def _few_channels_worth_it(x: torch.Tensor, grid: torch.Tensor) -> bool:
    """Whether the kernel is faster with fewer channels than FUSED_MIN_CHANNELS: where the
    compiled call is built (which then serves the calls itself, those that record a gradient
    through its C++ autograd node), or on
    a float32 grid of enough points. Eager calls only, the cases measured: under
    ``torch.compile`` or ``torch.export`` the count of a dynamic batch is symbolic, and a
    test of it would constrain the batch dimension (an ONNX export with a dynamic batch
    failed on "batch < 2048/49")."""
    if not eager_tensors(x, grid):
        return False
    return _fused.fast_call() is not None or (x.dtype == torch.float32 and grid.numel() >= 2 * FUSED_MIN_POINTS)


def _auto_grid_fused(x: object, grid: object, mode: object) -> bool:
    """Whether ``"auto"`` may sample this given grid with the fused kernel by its mode and its
    number of points (:data:`~torchstn.sampling._fused.AUTO_GRID_MODES`, which the compiled call
    reads too); a limited mode on eager tensors only, whose count is not symbolic (see
    :func:`_few_channels_worth_it`)."""
    if type(mode) is not str or mode not in _fused.AUTO_GRID_MODES:
        return False
    most = _fused.AUTO_GRID_MODES[mode]
    return most is None or (isinstance(x, torch.Tensor) and isinstance(grid, torch.Tensor) and grid.dim() > 0
                            and eager_tensors(x, grid) and grid.numel() // max(1, grid.shape[-1]) <= most)


def _backend_name(backend: str | None, x: torch.Tensor, grid: torch.Tensor, mode: str) -> str:
    if backend is None or backend == "auto":  # (nearest on a grid of many points: F.grid_sample's is faster)
        if _auto_grid_fused(x, grid, mode) and _fused.fused_applies(x, mode) and (
            x.shape[1] >= FUSED_MIN_CHANNELS or _few_channels_worth_it(x, grid)
        ):
            return "fused"
        if _fused3d.fused3d_applies(x, mode):  # every volume (see _fused3d_warp_applies)
            return "fused"
        return "torch"
    return backend


def check_options(mode: object, padding: object, backend: object, align_corners: object) -> None:
    """Validate the sampler's options: the strings, and ``align_corners`` a real ``bool``
    (as ``F.grid_sample`` wants it: ``"False"`` from a config file is not True).

    :func:`sample` and :func:`warp` call it once per call (their ``backend=None`` is
    ``"auto"``); a :class:`~torchstn.sampling.SamplerOptions` once, when it is made.
    """
    check_choice("mode", mode, MODES)
    check_choice("padding", padding, PADDINGS)
    check_choice("backend", backend, BACKEND_CHOICES)
    check_bool("align_corners", align_corners)
    if mode == "bicubic" and backend == "reference":  # (a SamplerOptions took it, and every call refused it)
        raise ValueError("mode 'bicubic' is not implemented by backend='reference' (bilinear and nearest are); "
                         "use backend='torch' for bicubic")


def _fused_warp_applies(backend: str | None, transform: Transform, x: torch.Tensor, params: torch.Tensor, mode: str) -> bool:
    """Whether :func:`warp` runs the fused kernel from θ: asked for (``"fused"``) or ``"auto"``,
    a 2-D matrix family (or a 1-D one: its signal warped as an image of height 1), bilinear or
    nearest, a float32/float64 CPU input, and a built kernel.

    ``"auto"`` takes it for every such case: measured faster than grid + ``F.grid_sample``
    from 1x1x28x28 to 8x3x224x224, bilinear 1.20-2.34x forward and 1.35-1.85x
    forward+backward, nearest 1.11-3.38x and 1.07-2.06x (``python
    benchmarks/bench_auto.py [--mode nearest]``).
    """
    if backend not in _fused._FUSED_BACKENDS or not isinstance(transform, MatrixTransform):
        return False
    if transform.ndim == 1:  # a signal (B, C, L): an image of height 1 (see _lift_rows_1d)
        image = x.unsqueeze(2) if x.dim() == 3 else x
    elif transform.ndim == 2:
        image = x
    else:
        return False
    return _fused.fused_applies(image, mode) and _fused.operator_applies(x, params) and _fused.fused_available()


def _fused3d_warp_applies(
    backend: str | None, transform: Transform, x: torch.Tensor, params: torch.Tensor, mode: str
) -> bool:
    """Whether :func:`warp` runs the fused 3-D kernel from θ (:mod:`torchstn.sampling._fused3d`):
    asked for (``"fused"``) or ``"auto"``, an affine 3-D family (:class:`~torchstn.Affine3D`),
    bilinear or nearest, a float32/float64 CPU volume, and a built kernel.

    ``"auto"`` takes it for every volume: faster than grid + ``F.grid_sample`` (whose CPU
    3-D sampler is a scalar loop) from one 4x4x4 volume on, bilinear and nearest: forward
    1.6-2.2x up to 16^3 and about 7x at 8x1x32x32x32, forward+backward 1.06-1.9x up to 16^3
    and 4-5x at 32^3 (``python benchmarks/bench_auto.py --volumes [--mode nearest]``, one
    thread, 2026-12-01). Until the 3-D operator's eager calls skipped the dispatcher, its
    per-call cost made the grid path faster below 4096 voxels, where ``"auto"`` took it. The
    common call is served by the compiled call before this is asked (:func:`_compiled_warp`).
    """
    if backend not in _fused._FUSED_BACKENDS:
        return False
    return (
        isinstance(transform, MatrixTransform)
        and transform.ndim == 3
        and not transform.projective
        and _fused3d.fused3d_applies(x, mode)
        and _fused.operator_applies(x, params)
        and _fused3d.fused3d_available()
    )


def check_sample_args(x: object, grid: object, mode: str) -> None:
    """Validate the tensors of :func:`sample` against each other and ``mode`` (the options
    themselves are :func:`check_options`')."""
    check_strided("x", check_tensor("x", x, ndim=(3, 4, 5)))
    check_floating("x", x)
    _check_spatial(x)
    check_strided("grid", check_tensor("grid", grid, ndim=x.dim()))
    check_floating("grid", grid)
    n = x.dim() - 2
    if not sizes_traced() and grid.shape[-1] != n:  # (a traced size is a tensor: the tracer warned)
        layout = {1: "L", 2: "H, W", 3: "D, H, W"}[n]
        raise ValueError(f"grid for a {x.dim()}-D input must have shape (B, {layout}, {n}), got {tuple(grid.shape)}")
    check_same_batch("x", x, "grid", grid)
    if grid.device != x.device:
        raise ValueError(f"grid must be on the device of x ({x.device}), got {grid.device}")
    if grid.dtype != x.dtype and not autocast_enabled(device_type_of(x)):  # (under autocast: _run_kernel)
        raise TypeError(f"grid must have the dtype of x ({x.dtype}), got {grid.dtype}")
    check_mode_fits(x.dim(), mode)


def _check_spatial(x: torch.Tensor) -> None:
    """An input with an empty spatial dimension has nothing to sample (F.grid_sample refuses it;
    the reference kernel indexed it, and warp's default size blamed ``size``)."""
    if not sizes_traced() and 0 in x.shape[2:]:  # (torch.jit.trace: sizes are tensors, a test would warn)
        raise ValueError(f"x must have non-empty spatial dimensions, got shape {tuple(x.shape)}")


def check_mode_fits(rank: int, mode: str) -> None:
    """Refuse a ``mode`` that cannot sample inputs of ``rank`` dimensions (bicubic volumes)."""
    if mode == "bicubic" and rank == 5:
        raise ValueError("mode='bicubic' is 2-D only (inputs (B, C, H, W)); got a 5-D input, use 'bilinear'")


def sample(
    x: torch.Tensor,
    grid: torch.Tensor,
    mode: Mode = "bilinear",
    padding: Padding = "zeros",
    align_corners: bool = False,
    *,
    backend: Backend | None = None,
) -> torch.Tensor:
    r"""Read ``x`` at the points of ``grid``: the STN's sampler.

    Args:
        x: input ``(B, C, H, W)``, ``(B, C, D, H, W)`` or a signal ``(B, C, L)``, floating point.
        grid: sampling points ``(B, H_out, W_out, 2)``, ``(B, D_out, H_out, W_out, 3)`` or
            ``(B, L_out, 1)``, in the dtype and on the device of ``x``.
        mode: ``"bilinear"`` (trilinear in 3-D), ``"nearest"`` or ``"bicubic"`` (images and
            signals, not volumes).
        padding: value read outside the input: ``"zeros"``, ``"border"`` (nearest edge
            pixel) or ``"reflection"``.
        align_corners: as in :func:`torch.nn.functional.grid_sample`; must be the value the
            grid was made with.
        backend: ``None``/``"auto"`` (the fastest correct kernel measured: ``"fused"``
            for bilinear float CPU images (eager calls, where the fused kernel's compiled
            call is built: at any size; else with 3 or more channels or on a float32 grid of
            32,768 points or more), for nearest ones on grids of at most 16,384 points (eager
            calls), and for bilinear or nearest float CPU volumes; else ``"torch"``),
            ``"torch"`` (``F.grid_sample``), ``"fused"`` (the C++/OpenMP CPU kernels,
            bilinear and nearest; other modes and devices use
            ``F.grid_sample``; see :mod:`torchstn.sampling._fused` and
            :mod:`torchstn.sampling._fused3d`) or ``"reference"`` (the hand-written kernel
            with its gradients, bilinear and nearest; see
            :mod:`torchstn.sampling._reference`).

    Returns:
        ``(B, C, *grid.shape[1:-1])``: the output has the grid's spatial size, so the
        sampler down- or over-samples as the grid says. A channels_last image gives a
        channels_last output on the fused backend (``"auto"`` on the CPU), as torch's
        convolutions keep that layout; ``"torch"`` and ``"reference"`` return it contiguous,
        as ``F.grid_sample`` does (flatten either with ``.reshape``/``.flatten``, not ``.view``).

    Convention:
        ``grid[..., 0]`` is x (along the width), ``grid[..., 1]`` is y (along the
        height), ``grid[..., 2]`` is z (depth); coordinates are normalised to [-1, 1]
        and give, for each output pixel, the input point to read (output to input).
        Gradients: exact with respect to ``x``; with respect to the grid the bilinear
        kernel has a sub-gradient at integer pixel coordinates (the right-sided
        difference), nearest has zero gradient with respect to the grid; second- and
        higher-order gradients are exact on every backend, and so is forward-mode AD
        (``torch.func.jvp``, ``jacfwd``, ``hessian``: a call inside a forward-mode level is
        sampled by the reference kernel; bicubic has no forward derivative). A grid point that is not
        finite (NaN, ±Inf) gives NaN in every channel and a NaN gradient for that point,
        and adds nothing to the gradient of ``x``, on every backend.
        float16 and bfloat16 inputs are sampled in their own dtype on a GPU and in float32 on
        the CPU (torch's CPU ``grid_sample`` in half precision reads wrong pixels in planes of
        more than about 32,768 pixels), the output in their dtype (float32 under
        ``torch.autocast``, as ``F.grid_sample`` returns it there); under ``torch.autocast``
        the grid may have another dtype than ``x`` (a float32 grid for a bfloat16 input,
        as ``F.grid_sample`` takes it there): both are then sampled in float32 (float64
        where either is), the output in that dtype (float32 with a bfloat16 ``x``, as
        ``F.grid_sample`` gives it).

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> grid = torch.tensor([[[[0.0, 0.0]]]])  # the centre of the image
        >>> sample(x, grid)
        tensor([[[[1.5000]]]])
    """
    out = _compiled_sample(x, grid, mode, padding, align_corners, backend)
    if out is not None:
        return out
    check_options(mode, padding, "auto" if backend is None else backend, align_corners)
    check_sample_args(x, grid, mode)
    return _run_kernel(x, grid, mode, padding, align_corners, backend)


def reference_sample(
    x: torch.Tensor, grid: torch.Tensor, mode: Mode = "bilinear", padding: Padding = "zeros", align_corners: bool = False
) -> torch.Tensor:
    """:func:`sample` with ``backend="reference"``: the hand-written kernel of
    :mod:`torchstn.sampling._reference` (bilinear and nearest, in 1-D, 2-D and 3-D), the readable
    definition every backend is tested against, its arguments checked as :func:`sample` checks
    them (a grid of another batch size was broadcast, an unknown padding read as zeros)."""
    return sample(x, grid, mode, padding, align_corners, backend="reference")


def sample_checked_options(
    x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool, backend: str | None
) -> torch.Tensor:
    """:func:`sample` for options validated already (:class:`~torchstn.sampling.SamplerOptions`):
    the tensors are checked, the options are not."""
    out = _compiled_sample(x, grid, mode, padding, align_corners, backend)
    if out is not None:
        return out
    check_sample_args(x, grid, mode)
    return _run_kernel(x, grid, mode, padding, align_corners, backend)


def _compiled_sample(
    x: object, grid: object, mode: object, padding: object, align_corners: object, backend: object
) -> torch.Tensor | None:
    """The common call of :func:`sample` in one call of compiled code (``csrc/fast_call.cpp``'s
    ``fast_sample``), or ``None`` for any other call, which the Python path then checks,
    explains or runs. Common here: a grid the fused kernels sample (an image, signal or volume
    they cover, bilinear or nearest, eager tensors; a gradient is recorded through the call's C++
    autograd node)
    under ``backend="fused"``, or under
    ``"auto"`` in the modes of :data:`~torchstn.sampling._fused.AUTO_GRID_MODES` (up to the
    number of points it gives the mode): with this
    call's cost, the kernel is faster than ``F.grid_sample`` on bilinear grids of every size
    measured, 1.22-1.67x from 1x1x8x8 to 64x1x28x28 (``timeit`` of both, 2026-12-02), where the
    Python path's checks had made a batch-1 ``sample`` 1.5-3x slower than ``F.grid_sample``. So too
    the images those backends leave to ``F.grid_sample`` (bicubic, and nearest beyond its most
    points), sampled by ATen's sampler there as :func:`~torchstn.sampling._grid_sample.torch_sample`
    would (its answer at non-finite points taken only where it is torchstn's, else the Python path)."""
    fast = _fused._library.state.get("fast") or _first_fast_call(
        backend, x, grid, type(mode) is str and mode in MODES and (backend is None or type(backend) is str)
    )
    if fast is None or _is_compiling():
        return None
    return fast.fast_sample(x, grid, mode, padding, align_corners, backend)


def _run_kernel(
    x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool, backend: str | None
) -> torch.Tensor:
    """Sample with the chosen backend, or with the reference kernel inside a forward-mode AD
    level (:func:`~torchstn._tracing.forward_ad_active`), the one kernel with a forward
    derivative; every argument is valid. A grid whose dtype is not the input's (allowed under
    autocast only, as ``F.grid_sample`` takes it there), and float16/bfloat16 on the CPU, are
    sampled in float32 (float64 where either is): the output in that dtype under autocast (as
    ``F.grid_sample`` returns it there, its inputs cast to float32), else in the input's dtype
    (as :func:`warp` returns it)."""
    if grid.dtype is not x.dtype or (x.dtype in HALF_DTYPES and x.is_cpu and not autocast_enabled("cpu")):
        # (torch 2.13's CPU grid_sample in float16/bfloat16 reads wrong pixels once a plane holds more
        # than about 32,768 of them: NaN or garbage at 256x256, and its backward corrupted memory;
        # under autocast it runs in float32, its output float32, as torch's own call returns it)
        dtype = torch.float64 if torch.float64 in (x.dtype, grid.dtype) else torch.float32  # (no export node)
        out = _run_kernel(x.to(dtype), grid.to(dtype), mode, padding, align_corners, backend)
        # (dtypes differ under autocast only: a bfloat16 x with a float32 grid gave bfloat16 there)
        return out if autocast_enabled(device_type_of(x)) else out.to(x.dtype)
    if x.dim() == 3:  # a signal is an image of height 1 read on its centre row (by that image's kernel)
        # y = 0 * x rather than zeros: a NaN x keeps its NaN gradient through either component (and
        # autocast off: its cat of a float16 grid under bfloat16 autocast failed inside torch);
        # the compiled call lifts a signal so too (csrc/fast_call.cpp's fast_sample)
        with autocast_off(device_type_of(x)):
            grid2d = torch.cat([grid, grid * 0], -1)[:, None]
        return _run_kernel(x[:, :, None], grid2d, mode, padding, align_corners, backend)[:, :, 0]
    if forward_ad_active():
        if mode == "bicubic":
            raise NotImplementedError(
                "sample: mode='bicubic' has no forward derivative (forward-mode AD: torch.autograd.forward_ad, "
                "torch.func.jvp/jacfwd/hessian; F.grid_sample has none): use 'bilinear' or 'nearest', whose "
                "forward derivative the reference kernel computes, or reverse mode (torch.func.jacrev)"
            )
        kernel = reference_kernel
    else:
        kernel = _KERNELS[_backend_name(backend, x, grid, mode)]
    return kernel(x, grid, mode, padding, align_corners)


def warp(
    x: torch.Tensor,
    params: torch.Tensor,
    transform: Transform | str,
    size: Sequence[int] | None = None,
    mode: Mode = "bilinear",
    padding: Padding = "zeros",
    align_corners: bool = False,
    *,
    backend: Backend | None = None,
) -> torch.Tensor:
    """Warp ``x`` by ``params`` of ``transform``: grid generation and sampling in one call.

    Args:
        x: input ``(B, C, H, W)`` (``(B, C, D, H, W)`` for 3-D transforms, a signal ``(B, C, L)``
            for 1-D ones: ``Affine1D``, ``CPAB1D``).
        params: ``(B, P)`` parameters of ``transform``, or the matrix of a family whose
            matrix is its parameters (see *Matrix form*); cast to the dtype of ``x`` (so a
            localisation net under autocast can drive a float32 sampler).
        transform: a :class:`~torchstn.transforms.Transform` or its name (``"affine"``, ...).
        size: output spatial size; ``None`` keeps the input's (also in a ``torch.jit.trace``
            of the call, which then computes the grid for each input's size).
        mode, padding, align_corners: as in :func:`sample`.
        backend: as in :func:`sample`, but ``None``/``"auto"`` and ``"fused"`` warp a
            2-D matrix family (translation ... projective) on the CPU with the fused
            kernel, bilinear or nearest, which computes each source point from θ and
            never writes the grid (:mod:`torchstn.sampling._fused`), and so ``Affine3D``
            volumes (:mod:`torchstn.sampling._fused3d`) and ``Affine1D`` signals (warped as
            images of height 1); everything else makes the grid and samples it with the
            backend :func:`sample` would choose.

    Returns:
        The warped tensor ``(B, C, *size)``, channels_last where ``x`` is and the fused
        backend warps it (as :func:`sample`'s).

    Convention:
        ``params`` map output points to input points (``src_from_dst``); the same
        ``align_corners`` is used for the grid and the sampler.
        At θ the identity (where a spatial transformer starts) every point lies on a pixel
        centre, where bilinear sampling has only one-sided derivatives. Every backend
        computes a point's pixel coordinate from its normalised coordinate, rounded once
        (torchstn's base grid, as ``F.affine_grid``'s), so some centres land a rounding
        below the integer, where the left-sided difference is taken, and the others on it
        or above, where the right-sided one is (:func:`sample`); which centres depends on
        the size and the dtype. Where two backends round a centre differently their
        θ-gradients at the exact identity differ in that point (each a valid
        sub-gradient); anywhere off a tie they agree to rounding. Other θ put points on ties
        too: short decimal entries in float64 (θ = [0.9, 0.1, 0.05, -0.1, 0.8, -0.05] on a 32x32
        image) land many exactly on pixel edges, where the fused kernel's and ``F.grid_sample``'s
        θ-gradients of the sum of a random image's warp differed by up to 27; with θ moved by
        1e-7 they agreed to 3e-13.

    Matrix form:
        :class:`~torchstn.Affine` also takes the ``(B, 2, 3)`` ``theta`` of
        ``F.affine_grid`` (``warp(x, theta, "affine")`` equals ``F.grid_sample(x,
        F.affine_grid(theta, x.shape))`` to rounding), :class:`~torchstn.Affine3D` the
        ``(B, 3, 4)`` and :class:`~torchstn.transforms.Affine1D` the ``(B, 1, 2)`` rows: their
        parameters are these rows, row-major (``theta.flatten(1)``). The pixel centres
        here are exact to one rounding on every backend, where ``affine_grid``'s
        ``torch.linspace`` is up to a unit in the last place off. ``mode="nearest"``
        rounds the computed pixel coordinate half to even; a point that lies exactly
        half-way between two pixels in exact arithmetic (θ = 2 I, a downsampling by 2 at
        the identity) is computed to rounding, so it can land on either side of the tie
        and read either pixel (a 12 -> 6 downsampling at the identity in float32 reads
        pixel 1 for output 0, where exact half-to-even reads 0). Only where every step is
        exact (those two cases with sizes that are powers of two) is it the pixel exact
        arithmetic rounds to; ``F.affine_grid + F.grid_sample`` can pick the other pixel.
        :class:`~torchstn.Projective` takes the homography ``H`` ``(B, 3, 3)``, divided by
        ``H[:, 2, 2]`` (a homography is defined up to scale; an ``H[2, 2]`` of 0 raises ``ValueError``),
        so it warps as ``Projective().params_from_matrix(H)`` does. Nothing else is
        accepted: a ``(B, 3, 3)`` matrix for ``Affine`` could hold a projective last row,
        and a matrix for translation, attention or similarity need not lie in the
        family; the error says what to pass instead.

    Precision:
        The grid and the sampling run in the dtype of ``x`` when it is float32 or
        float64, and in float32 for float16/bfloat16 inputs (the result is cast back),
        with autocast disabled inside: a bfloat16 grid would misplace points by up to
        ``2^-8`` of the image size. Under ``torch.autocast`` the localisation net runs in
        low precision; its θ is cast to the sampling dtype.

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> theta = stn.Affine().identity(batch=2)
        >>> torch.allclose(stn.warp(x, theta, stn.Affine()), x, atol=1e-6)
        True
        >>> matrix = torch.eye(2, 3).expand(2, 2, 3)  # the (B, 2, 3) theta of F.affine_grid
        >>> torch.equal(stn.warp(x, matrix, "affine"), stn.warp(x, matrix.flatten(1), "affine"))
        True
    """
    out = _compiled_warp(x, params, transform, size, mode, padding, align_corners, backend)
    if out is not None:
        return out
    check_options(mode, padding, "auto" if backend is None else backend, align_corners)
    return _warp_general(x, params, transform, size, mode, padding, align_corners, backend)


def warp_checked_options(
    x: torch.Tensor,
    params: torch.Tensor,
    transform: Transform | str,
    size: Sequence[int] | None,
    mode: str,
    padding: str,
    align_corners: bool,
    backend: str | None,
) -> torch.Tensor:
    """:func:`warp` for options validated already (:class:`~torchstn.sampling.SamplerOptions`):
    the tensors, the transform and the size are checked, each once; the options are not."""
    out = _compiled_warp(x, params, transform, size, mode, padding, align_corners, backend)
    if out is not None:
        return out
    return _warp_general(x, params, transform, size, mode, padding, align_corners, backend)


def _warp_general(x: torch.Tensor, params: torch.Tensor, transform: Transform | str, size: Sequence[int] | None,
                  mode: str, padding: str, align_corners: bool, backend: str | None) -> torch.Tensor:
    """:func:`warp_checked_options` once the compiled call declined (:func:`warp` asks it first too)."""
    named = _fused._named(transform) if isinstance(transform, str) else None  # (made at import: compile traces it)
    transform = get_transform(transform) if named is None else named  # (which says why a name is refused)
    if backend is None or backend == "auto" or backend == "fused":
        out = _eager_fused_warp(x, params, transform, size, mode, padding, align_corners)
        if out is not None:
            return out
    check_floating("x", check_strided("x", check_tensor("x", x, ndim=transform.ndim + 2)))
    _check_spatial(x)
    given, params = params, transform.check_params(_matrix_form(transform, params))
    tangents = forward_ad_active()  # the fused kernels have no forward derivative: grid + reference
    check_same_batch("x", x, "params", given)  # (the shape the caller passed, a matrix form's too)
    if params.device != x.device:
        raise ValueError(f"params must be on the device of x ({x.device}), got {params.device}")
    check_mode_fits(x.dim(), mode)
    size = _output_size(x, size, transform.ndim)
    # grids need more than 8 mantissa bits: low-precision inputs are warped in float32
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    with autocast_off(device_type_of(x)):
        xd = x if x.dtype is dtype else x.to(dtype)
        params = params if params.dtype is dtype else params.to(dtype)
        if not tangents and _fused_warp_applies(backend, transform, xd, params, mode):  # no grid in memory
            if transform.ndim == 1:
                rows = _lift_rows_1d(_kernel_matrix(transform, transform.affine_rows(params, check=False), xd))
                out = _fused.fused_warp(xd.unsqueeze(2), rows, (1, *size), mode, padding, align_corners).squeeze(2)
            elif transform.projective:
                matrix, eps = _kernel_matrix(transform, transform.matrix(params, check=False), xd), transform.eps
                out = _fused.fused_warp(xd, matrix, size, mode, padding, align_corners, True, eps)
            else:
                rows = _kernel_matrix(transform, transform.affine_rows(params, check=False), xd)
                out = _fused.fused_warp(xd, rows, size, mode, padding, align_corners)
        elif not tangents and _fused3d_warp_applies(backend, transform, xd, params, mode):
            rows = _kernel_matrix(transform, transform.affine_rows(params, check=False), xd)
            out = _fused3d.fused_warp3d(xd, rows, size, mode, padding, align_corners)
        else:
            grid = transform.grid(params, size, align_corners, check=False)
            # (the compiled call first, as sample asks it: the same choice of kernel and the same bits)
            out = None if tangents else _compiled_sample(xd, grid, mode, padding, align_corners, backend)
            if out is None:
                out = _run_kernel(xd, grid, mode, padding, align_corners, backend)
    return out if out.dtype is x.dtype else out.to(x.dtype)


def _lift_rows_1d(rows: torch.Tensor) -> torch.Tensor:
    """A 1-D family's rows ``(B, 1, 2)``, ``x_s = a x_t + b``, as the rows ``[[a, 0, b], [0, 1, 0]]``
    of an image of height 1 (its only row read at its centre: a signal sampled as :func:`sample`
    reads one), which the fused 2-D kernel warps: against a grid made by hand and
    ``F.grid_sample``, 1.45-2.96x forward and 1.08-1.54x forward+backward from 1x1x64 to
    32x1x1000, where the grid path had taken 2-3x as long as that (one thread, interleaved
    rounds, 2026-12-05). Made by a cat, so that a gradient reaches ``a`` and ``b`` by slicing alone (a product
    with 0 would turn an infinite one into NaN); the compiled call makes them so too
    (``csrc/fast_call.cpp``'s ``fast_warp1d``)."""
    zero = rows.new_zeros(rows.shape[0], 1)
    a, b = rows[:, 0, :1], rows[:, 0, 1:]
    return torch.cat([a, zero, b, zero, rows.new_ones(rows.shape[0], 1), zero], 1).view(-1, 2, 3)


def _kernel_matrix(transform: Transform, matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix`` (``transform.matrix`` or ``affine_rows``, unchecked) as the fused kernels read it:
    one per sample of ``x``, of the family's shape, in ``x``'s dtype. A user's family whose
    ``_matrix`` returned one matrix for the whole batch had the kernel read past its end (NaN or
    another call's values, without an error) where the grid path refused its points."""
    n = transform.ndim
    shape = (x.shape[0], 3, 3) if transform.projective else (x.shape[0], n, n + 1)
    if tuple(matrix.shape) != shape:
        raise ValueError(f"{type(transform).__name__}'s matrices must be one per sample, {shape} for params of "
                         f"batch {x.shape[0]}, got {tuple(matrix.shape)} (from its _matrix)")
    return matrix if matrix.dtype is x.dtype else matrix.to(x.dtype)


def _compiled_warp(
    x: object, params: object, transform: object, size: object, mode: object, padding: object, align_corners: object,
    backend: object,
) -> torch.Tensor | None:
    """The common call of :func:`warp` in one call of compiled code (``csrc/fast_call.cpp``'s
    ``fast_warp``, :func:`~torchstn.sampling._fused.fast_call`), or ``None`` for any other call,
    which :func:`_eager_fused_warp` or the general path then checks, explains or runs.

    Common here: :class:`~torchstn.Affine` or :class:`~torchstn.Projective` parameters (or
    Affine's ``(B, 2, 3)`` rows; the transform or its name) and what :func:`_eager_fused_warp`
    asks besides; a gradient is recorded through the call's C++ autograd node (Affine's; a
    Projective call that records one takes the Python path, which makes its matrix
    differentiably); so too :class:`~torchstn.transforms.Affine1D` signals and
    :class:`~torchstn.Affine3D` volumes (by the 3-D kernel, once it is built: a batch-1 8x8x8
    volume 1.51x -> 6.58x ``F.affine_grid + F.grid_sample`` forward, 1.15x -> 2.89x
    forward+backward against the Python path's operator call, interleaved, one thread,
    2026-12-05). The compiled call makes every test
    itself, :func:`~torchstn._tracing.eager_tensors`' included (its questions, in
    :data:`~torchstn._tracing.EAGER_QUESTIONS`); asked here: whether ``torch.compile``
    traces (it then traces the general path) and, before the module is first built, whether
    the call is one it could serve (eager tensors, a CPU float image). The kernel call is the
    same (the tests compare both). A batch-1 28x28 warp: 7.2 µs here, 40.0 through
    :func:`_eager_fused_warp` and ctypes, 13.6 for OpenCV's ``warpAffine`` in the same run
    (``benchmarks/bench_call_overhead.py``, ``docs/benchmarks.md``)."""
    if _is_compiling():  # (first: dynamo guarded on the state read below, which the first run then changed)
        return None
    fast = _fused._library.state.get("fast") or _first_fast_call(
        backend, x, params, type(transform) is str or type(transform) in _fused._COMPILED_FAMILIES
    )
    if fast is None:
        return None
    return fast.fast_warp(x, params, transform, size, mode, padding, align_corners, backend)


def _first_fast_call(backend: object, x: object, loc: object, served: bool) -> object | None:
    """The compiled call's module where it is not loaded yet (``_fused._library.state["fast"]``
    is ``None``): built now, for a call it could serve only (``served``: its transform or mode
    is one it takes; a backend that may take the kernel, eager tensors, a CPU float signal, image
    or volume), else
    ``None``; also ``None`` where it is unavailable (that state is ``False``)."""
    if _fused._library.state.get("fast") is False or not (
        served and (backend is None or type(backend) is str) and backend in _fused._FUSED_BACKENDS
        and eager_tensors(x, loc) and x.is_cpu and x.dtype in _fused._DTYPES and x.dim() in (3, 4, 5)
    ):
        return None
    return _fused.fast_call()


_is_compiling = torch.compiler.is_compiling


#: the 2-D matrix families the fused kernel warps from θ (exactly these: a subclass may
#: change the map, and takes the general path)
_FUSED_FAMILIES = (Translation, Attention, Similarity, Affine, Projective)
_STRIDED = torch.strided


def _eager_fused_warp(
    x: object, params: object, transform: Transform, size: Sequence[int] | None, mode: str, padding: str,
    align_corners: bool,
) -> torch.Tensor | None:
    """The common call of :func:`warp` with the fused backend, checked and run at the least
    per-call cost (a batch-1 warp spent most of its time in the general path's checks and
    dispatch), or ``None`` for any other call, which the general path then checks, explains
    or runs. Common: plain eager tensors (:func:`~torchstn._tracing.eager_tensors`), a
    float32/float64 CPU input ``(B, C, H, W)`` that the kernel covers
    (:func:`~torchstn.sampling._fused.fused_applies`) and ``(B, P)`` parameters of a 2-D
    matrix family in its dtype (or :class:`~torchstn.Affine`'s ``(B, 2, 3)`` rows), the size
    ``None`` or two positive ints, no autocast, the kernel built. Every test is one the
    general path makes too, and the kernel call is the one it makes (the tests compare both)."""
    if not (type(transform) in _FUSED_FAMILIES and eager_tensors(x, params)):  # (types first: eager_tensors
        return None  # accepts tensors only)
    if not (params.dtype is x.dtype and params.is_cpu and x.layout is _STRIDED and params.layout is _STRIDED
            and not (x.is_nested or params.is_nested) and _fused.fused_applies(x, mode) and _fused.fused_available()):
        return None
    b, _, h, w = x.shape
    if size is None:
        size = (h, w)
    elif not (type(size) is tuple and len(size) == 2 and type(size[0]) is int and type(size[1]) is int
              and size[0] > 0 and size[1] > 0):
        return None
    if autocast_enabled("cpu") or params.dim() < 2 or params.shape[0] != b:
        return None
    if params.dim() == 2 and params.shape[1] == transform.num_params:
        if transform.projective:
            matrix = transform.matrix(params, check=False)
            return _fused.fused_warp(x, matrix, size, mode, padding, align_corners, True, transform.eps, eager=True)
        rows = transform.affine_rows(params, check=False)
    elif type(transform) is Affine and params.dim() == 3 and params.shape[1] == 2 and params.shape[2] == 3:
        rows = params  # warp's matrix form: the rows themselves
    else:
        return None
    return _fused.fused_warp(x, rows, size, mode, padding, align_corners, eager=True)


def _output_size(x: torch.Tensor, size: Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """The checked output size of :func:`warp`: ``size``, or the input's for ``None``; a
    tuple of positive ints passes at once, anything else goes through :func:`check_size`."""
    if size is None:
        size = _spatial_size(x)
    if type(size) is tuple and len(size) == ndim and all(type(s) is int and s > 0 for s in size):
        return size
    return check_size("size", size, ndim)


def _matrix_form(transform: Transform, params: object) -> object:
    """``(B, P)`` parameters from the matrix form :func:`warp` accepts (its docstring, *Matrix
    form*); any other ``params`` unchanged, for ``check_params`` to judge. A 3-D tensor that is
    no accepted matrix form is refused with what to pass instead."""
    if not isinstance(params, torch.Tensor) or params.dim() != 3:
        return params
    check_floating("params", check_strided("params", params))
    n, shape = transform.ndim, tuple(params.shape[1:])
    own = type(transform) in (Affine, Affine1D, Affine3D)  # (a subclass's parameters need not be the rows)
    if isinstance(transform, (Affine, Affine1D, Affine3D)) and shape == (n, n + 1):
        if own:
            return params.flatten(1)  # the parameters are the rows
        last = torch.zeros(n + 1, dtype=params.dtype, device=params.device)
        last[n] = 1
        return transform.params_from_matrix(torch.cat([params, last.expand(params.shape[0], 1, n + 1)], 1))
    if isinstance(transform, Projective) and shape == (3, 3):  # (divided by H[2, 2], refused where it is 0)
        return transform.params_from_matrix(params, "params")
    raise ValueError(_matrix_form_error(transform, params))


def _matrix_form_error(transform: Transform, params: torch.Tensor) -> str:
    """What :func:`warp` says about a 3-D ``params`` it does not accept, and what to pass instead."""
    given = f"got shape {tuple(params.shape)}"
    expected = f"params for {transform.name} must have shape (B, {transform.num_params})"
    n = transform.ndim
    if isinstance(transform, (Affine, Affine1D, Affine3D)):
        takes = " (what F.affine_grid takes)" if n > 1 else ""
        message = f"{expected} or be the (B, {n}, {n + 1}) matrix of its rows{takes}, {given}"
        if params.shape[1:] == (n + 1, n + 1):
            message += f": for a matrix whose last row is [0, ..., 0, 1] pass theta[:, :{n}]"
            if n == 2:
                message += "; with another last row it is a homography, warp it with stn.Projective()"
        return message
    if isinstance(transform, Projective):
        return f"{expected} or be the (B, 3, 3) homography, {given}; a (B, 2, 3) affine matrix is warped with stn.Affine()"
    if isinstance(transform, ThinPlateSpline):
        k = transform.num_control_points
        return (f"{expected}: the targets (x, y) of its {k} control points, interleaved, {given}; "
                f"for targets of shape (B, {k}, 2) pass params.flatten(1)")
    if transform.ndim == 1:  # (a signal's families: the 2-D ones named below do not warp it)
        return (f"{expected}, {given}: a matrix need not lie in the {transform.name} family; warp a (B, 1, 2) "
                "matrix with stn.Affine1D()")
    return (f"{expected}, {given}: a matrix need not lie in the {transform.name} family; warp a (B, 2, 3) "
            "matrix with stn.Affine() (F.affine_grid's theta), or a (B, 3, 3) one with stn.Projective()")


def _spatial_size(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial size of ``x``, for ``size=None``: ints (checked still: a size may be 0), also
    under ``torch.compile``; under ``torch.jit.trace`` the traced sizes themselves, so that the
    trace computes the grid for each input's size instead of fixing the example's."""
    if torch.jit.is_tracing():
        return tuple(x.shape[2:])
    return tuple(int(s) for s in x.shape[2:])
