r"""The fused 3-D CPU backend: trilinear and nearest warps of volumes that read θ, not a grid.

For :class:`~torchstn.Affine3D`, :func:`torchstn.warp` with ``backend="auto"`` or
``"fused"`` computes every output voxel's source point from the ``(B, 3, 4)`` rows inside
the kernel, so the grid is never written to memory, and its backward accumulates
:math:`\partial L/\partial x` and :math:`\partial L/\partial θ` in one pass over the output.
:func:`torchstn.sample` of a volume with ``backend="fused"`` (or ``"auto"``) runs the same
kernel on a given ``(B, D, H, W, 3)`` grid. ``F.grid_sample``'s CPU 3-D sampler is a
scalar loop per voxel and channel; this kernel computes each row's locations, corners
and weights in vectorised loops and shares them between channels, and samples float32
voxels whose corners lie inside eight at a time.

The kernel is two registered operators, ``torchstn::warp3d`` and
``torchstn::warp3d_backward`` (:mod:`torch.library`), with fake implementations and an
autograd formula, so ``torch.compile(fullgraph=True)`` and ``torch.export`` keep it;
plain eager calls run the same implementation and formula without the dispatcher
(:func:`~torchstn.sampling._fused.eager_operator`), and :func:`torchstn.sample`'s common call of a
volume the same kernel from compiled code (``csrc/fast_call.cpp``, :func:`_hand_to_fast_call`). As for the 2-D kernel (:mod:`torchstn.sampling._fused`), the backward is the closed-form
kernel, and when the gradient's own graph is asked for (``create_graph=True``) it is
recomputed through the grid path (:func:`~torchstn.transforms.matrix_grid` and
``F.grid_sample``), so higher-order gradients are exact. The θ gradient is summed per
output slice in double and the slices are added in order: deterministic, and the same
for any number of threads.

The source is ``csrc/fused_warp3d.cpp``, built on first use and cached by torch as the
2-D kernel is (:func:`torchstn.sampling._fused.load_kernel`); if the build fails, one
warning says why and every call falls back to grid + ``F.grid_sample``.

Scope: CPU, float32/float64, ``"bilinear"`` (trilinear) and ``"nearest"``, every padding
and both ``align_corners``; its arithmetic follows ATen's 3-D ``grid_sample``. Other
devices and dtypes use the grid path, and so do ``torch.jit.trace``, ONNX export and
``torch.func`` transforms (:func:`~torchstn.sampling._fused.operator_applies`).
Threads: ``torch.get_num_threads()``; the forward splits (sample, output slice) pairs,
the backward the samples when the input's gradient is asked for, else the pairs.
Non-finite locations give NaN outputs and NaN location gradients, as on every backend.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import torch

from torchstn._tracing import cached, constant_result, differentiable_vjp
from torchstn.sampling import _fused
from torchstn.sampling._fused import (
    _MODE_NAMES,
    _MODES,
    _PADDING,
    _PADDING_NAMES,
    LazyKernel,
    _ptr_of,
    _setup_context,
    backward_entry,
    bind_entries,
    check_operator_args,
    eager_operator,
    fused_backward,
    load_kernel,
    refuse_forward_ad,
    resolved,
)
from torchstn.sampling._grid_sample import torch_sample
from torchstn.transforms import base_grid, matrix_grid

__all__ = ["fused3d_applies", "fused3d_available", "fused_sample3d", "fused_warp3d", "grid_path3d"]

_SOURCE = Path(__file__).with_name("csrc") / "fused_warp3d.cpp"
_ABI = 2
# the mode and padding codes are the 2-D kernel's (_fused._MODES, _PADDING): the operators' checks and
# the compiled call, which hands a volume's codes to this kernel, read those
#: what the kernel reads to locate a point: a grid (B, Do, Ho, Wo, 3) or affine rows (B, 3, 4)
_LOCATIONS = {"grid": 0, "affine": 1}

#: (backward, dtype) -> the kernel's entry point, filled by _build()
_ENTRY: dict[tuple[bool, torch.dtype], ctypes._CFuncPtr] = {}

_i64, _int, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_FORWARD_ARGS = [_int, _int] + [_ptr] * 4 + [_i64] * 8 + [_int] * 3
_BACKWARD_ARGS = [_int, _int] + [_ptr] * 6 + [_i64] * 8 + [_int] * 3


def _build() -> ctypes.CDLL:
    lib = bind_entries(load_kernel(_SOURCE, _ABI, "the fused 3-D CPU sampler"), "warp3d", _FORWARD_ARGS,
                       _BACKWARD_ARGS, _ENTRY)
    fast = _fused._library.state.get("fast")  # (the compiled call, where it was loaded first)
    if fast:
        _hand_to_fast_call(fast)
    return lib


def _hand_to_fast_call(fast: object) -> None:
    """Give the compiled call (``csrc/fast_call.cpp``) this kernel's entry points and
    :func:`_node_backward`, once both are loaded, so that it samples the volumes of
    :func:`torchstn.sample`'s common call itself: a batch-1 8x8x8 sample took 24 us through
    this module's ctypes call and Python autograd formula, where ``F.grid_sample`` takes 13,
    and 136 us forward+backward, where it takes 67 (timeit, 2026-12-05)."""
    if len(_ENTRY) == 4:  # (a build that failed half way gave it fewer)
        fast.set_kernels3d(*(ctypes.cast(_ENTRY[backward, dtype], ctypes.c_void_p).value
                             for backward in (False, True) for dtype in (torch.float32, torch.float64)),
                           _ABI, _node_backward)


_fused.FAST_CALL_LOADED.append(_hand_to_fast_call)


_library = LazyKernel(lambda: _build(), "the fused 3-D CPU sampler", "volumes are warped with F.grid_sample")


@constant_result
def fused3d_available() -> bool:
    """True if the fused 3-D kernel is built (building it now if needed); False after a failed build.

    A constant to ``torch.compile``: the answer does not change within a process.
    """
    return _library() is not None


def fused3d_applies(x: torch.Tensor, mode: str) -> bool:
    """Whether the fused 3-D kernel covers this input: ``"bilinear"`` or ``"nearest"``, a
    float32/float64 CPU volume (B, C, D, H, W) with non-empty D, H and W (F.grid_sample
    reports empty ones) of at most 2^30 voxels and int32 voxel offsets, outside ``torch.jit.trace``.

    Example:
        >>> fused3d_applies(torch.rand(1, 1, 4, 4, 4), "nearest")
        True
        >>> fused3d_applies(torch.rand(1, 1, 4, 4), "bilinear")  # an image: the 2-D kernel's
        False
    """
    if torch.jit.is_tracing() or mode not in _MODES or x.dim() != 5:
        return False
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.shape[2:].numel() > 0
            and _within_kernel_bounds(x))


def _within_kernel_bounds(x: torch.Tensor) -> bool:
    """Whether the kernel takes volume ``x`` (``csrc/fused_warp3d.cpp``'s ``run``, which returns 3
    otherwise): int32 voxel offsets, and every side at most 2^30 (it takes a point beyond 2^30 for
    one far outside)."""
    d, h, w = x.shape[2:]
    return max(d, h, w) <= 2**30 and d * h * w + h * w + w < 2**31


# ---------------------------------------------------------------------------------------------
# the kernel, called through ctypes


def _coordinates(size: tuple[int, int, int], align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """The output voxels' normalised x (Wo,), then y (Ho,), then z (Do,), taken from torchstn's base grid."""
    d, h, w = size

    def build() -> torch.Tensor:
        base = base_grid(size, align_corners, device=like.device, dtype=like.dtype)
        return torch.cat([base[:w, 0], base[: h * w : w, 1], base[:: h * w, 2]]).contiguous()

    return cached(("fused-xyz", size, bool(align_corners), like.device, like.dtype), build)


def _call(
    backward: bool, location: str, x: torch.Tensor, loc: torch.Tensor, buffer: torch.Tensor,
    grad_x: torch.Tensor | None, grad_loc: torch.Tensor | None, size: tuple[int, int, int], mode: str, padding: str,
    align_corners: bool,
) -> None:
    fn = _ENTRY.get((backward, x.dtype))
    if fn is None:
        if _library() is None:
            raise _library.unavailable("torchstn::warp3d")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"torchstn::warp3d: x must be float32 or float64, got {x.dtype}")
        fn = _ENTRY[backward, x.dtype]
    xyz = None if location == "grid" else _coordinates(size, align_corners, x)
    args = [_LOCATIONS[location], _MODES[mode], _ptr_of(x), _ptr_of(loc), _ptr_of(xyz), _ptr_of(buffer)]
    if backward:
        args += [_ptr_of(grad_x), _ptr_of(grad_loc)]
    status = fn(*args, *x.shape, *size, _PADDING[padding], int(align_corners), torch.get_num_threads())
    if status == 3:
        raise ValueError(_TOO_LARGE)
    if status != 0:
        raise RuntimeError(f"fused 3-D warp kernel failed with status {status}")


# ---------------------------------------------------------------------------------------------
# the operators

_LIB = torch.library.Library("torchstn", "FRAGMENT")  # noqa: TOR901 - _fused.py defines the namespace
_LIB.define(
    "warp3d(Tensor x, Tensor loc, str location, SymInt[] size, str mode, str padding, bool align_corners) -> Tensor"
)
_LIB.define(
    "warp3d_backward(Tensor grad_out, Tensor x, Tensor loc, str location, str mode, str padding, "
    "bool align_corners, bool[] output_mask) -> (Tensor, Tensor)"
)


def _warp3d_checked(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str, align_corners: bool
) -> torch.Tensor:
    refuse_forward_ad("warp3d")
    check_operator_args("warp3d", x, loc, location, size, mode, padding)
    if _library() is None:  # (a saved program that holds the operator, run where the kernel cannot be built)
        return grid_path3d(x, loc, location, size, mode, padding, align_corners)
    return _warp3d_cpu(x, loc, location, size, mode, padding, align_corners)


_TOO_LARGE = ("the volume is too large for the fused kernel (a side longer than 2^30 or offsets past int32): "
              "backend='torch' samples it")


def _contiguous_within_bounds(x: torch.Tensor) -> torch.Tensor:
    """``x`` contiguous, refused first where the kernel would refuse it (a stride-0 volume of 2^30
    voxels a side would be copied to gigabytes before)."""
    if not _within_kernel_bounds(x):
        raise ValueError(_TOO_LARGE)
    return x.contiguous()


def _warp3d_cpu(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str, align_corners: bool
) -> torch.Tensor:
    x, loc, size = _contiguous_within_bounds(resolved(x)), resolved(loc).contiguous(), tuple(int(s) for s in size)
    out = x.new_empty(x.shape[0], x.shape[1], *size)
    _call(False, location, x, loc, out, None, None, size, mode, padding, align_corners)
    return out


def _warp3d_backward_cpu(
    grad_out: torch.Tensor, x: torch.Tensor, loc: torch.Tensor, location: str, mode: str, padding: str,
    align_corners: bool, output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    check_operator_args("warp3d_backward", x, loc, location, grad_out.shape[2:], mode, padding, grad_out)
    x, loc = _contiguous_within_bounds(resolved(x)), resolved(loc).contiguous()
    grad_out = resolved(grad_out).contiguous()
    grad_x = torch.empty_like(x) if output_mask[0] else x.new_empty(0)  # zeroed by the kernel
    grad_loc = torch.empty_like(loc) if output_mask[1] else loc.new_empty(0)
    if output_mask[0] or output_mask[1]:
        _call(True, location, x, loc, grad_out, grad_x if output_mask[0] else None,
              grad_loc if output_mask[1] else None, tuple(grad_out.shape[2:]), mode, padding, align_corners)
    return grad_x, grad_loc


# the dispatcher's calls are checked; torchstn.warp's and sample's direct eager calls are not
_LIB.impl("warp3d", _warp3d_checked, "CPU")
_LIB.impl("warp3d_backward", _warp3d_backward_cpu, "CPU")


@torch.library.register_fake("torchstn::warp3d", lib=_LIB)
def _warp3d_fake(x, loc, location, size, mode, padding, align_corners):  # noqa: ANN001, ANN202
    check_operator_args("warp3d", x, loc, location, size, mode, padding)
    return x.new_empty(x.shape[0], x.shape[1], *size)


@torch.library.register_fake("torchstn::warp3d_backward", lib=_LIB)
def _warp3d_backward_fake(grad_out, x, loc, location, mode, padding, align_corners, output_mask):  # noqa: ANN001, ANN202
    check_operator_args("warp3d_backward", x, loc, location, grad_out.shape[2:], mode, padding, grad_out)
    return (x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
            loc.new_empty(loc.shape) if output_mask[1] else loc.new_empty(0))


def grid_path3d(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str, align_corners: bool
) -> torch.Tensor:
    """What ``torchstn::warp3d`` computes, as plain differentiable operations: the grid
    (:func:`~torchstn.transforms.matrix_grid`) and ``F.grid_sample`` with torchstn's
    policy for non-finite points. Its derivatives are the operator's."""
    grid = loc if location == "grid" else matrix_grid(loc, size, align_corners)
    return torch_sample(x, grid, mode, padding, align_corners)


def _backward(ctx, grad_out: torch.Tensor, direct: bool = False):  # noqa: ANN001, ANN202
    """The kernel's gradients; the grid path's, differentiable, under ``create_graph``
    (:func:`~torchstn.sampling._fused.fused_backward`)."""
    location, size, mode, padding, align_corners = ctx.options
    backward = backward_entry(direct, grad_out, _warp3d_backward_cpu, torch.ops.torchstn.warp3d_backward)
    return fused_backward(
        ctx, grad_out,
        lambda x, loc: grid_path3d(x, loc, location, size, mode, padding, align_corners),
        None if _library() is None
        else lambda g, x, loc, needed: backward(g, x, loc, location, mode, padding, align_corners, needed),
    )


torch.library.register_autograd("torchstn::warp3d", _backward, setup_context=_setup_context, lib=_LIB)

def _node_backward(
    x: torch.Tensor, loc: torch.Tensor, grad_out: torch.Tensor, location: int, size: tuple[int, int, int], mode: int,
    padding: int, align_corners: bool, eps: float, need_x: bool, need_loc: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients the compiled call's ``torchstn::Warp3dBackward`` node leaves to Python (its
    options as the kernel's codes, as the 2-D node's: ``eps`` unused): under ``create_graph`` and
    for a batched ``grad_out``, the gradient of the grid path, as
    :func:`~torchstn.sampling._fused.fused_backward` takes it. Affine ``loc`` may be Affine3D's
    ``(B, 12)`` parameters, which the kernel reads as the rows."""
    name = _LOCATION_NAMES[location]
    options = (name, size, _MODE_NAMES[mode], _PADDING_NAMES[padding], align_corners)

    def reference(x_: torch.Tensor, loc_: torch.Tensor) -> torch.Tensor:
        return grid_path3d(x_, loc_.reshape(-1, 3, 4) if name == "affine" else loc_, *options)

    return differentiable_vjp(reference, (x, loc), grad_out, (need_x, need_loc))


_LOCATION_NAMES = {code: name for name, code in _LOCATIONS.items()}


#: ``torchstn::warp3d(x, loc, location, size, mode, padding, align_corners)``, eager calls direct
_warp3d = eager_operator("warp3d", _warp3d_cpu, _backward).call


def fused_sample3d(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool) -> torch.Tensor:
    """Sampling of ``x`` (B, C, D, H, W) at ``grid`` (B, Do, Ho, Wo, 3) with the fused kernel (no validation)."""
    return _warp3d(x, grid, "grid", list(grid.shape[1:4]), mode, padding, align_corners)


def fused_warp3d(
    x: torch.Tensor, rows: torch.Tensor, size: Sequence[int], mode: str, padding: str, align_corners: bool
) -> torch.Tensor:
    """Warp of ``x`` (B, C, D, H, W) by ``src_from_dst`` affine rows ``(B, 3, 4)``, no grid
    in memory (no validation)."""
    return _warp3d(x, rows, "affine", list(size), mode, padding, align_corners)
