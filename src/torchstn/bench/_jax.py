"""JAX as a benchmark peer: a ``jax.jit`` warp that makes its sampling points inside the kernel.

What a JAX user would write for torchstn's work: the output pixels' normalised
coordinates are generated in the jitted function (XLA fuses them with the matrix
product, nothing like a grid is passed in), each source point is unnormalised to pixels
as ``F.grid_sample`` does, and the 2^n corners are gathered and weighted (bilinear in
2-D, trilinear in 3-D) with zeros padding. Forward and forward+backward (``jax.vjp``,
gradients with respect to the image and the matrix) are each one ``jax.jit``.

JAX is pinned to the CPU and, when torch runs on one thread, to one core too: XLA sizes
its CPU thread pool by the process's CPU affinity when its client is made (its flags do
not limit it: ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``, the
usual recipe, left JAX 0.10 on both cores of a 2-core machine), so :func:`import_jax`
makes the client with the calling thread pinned to one CPU, whose affinity the pool's
threads keep, and says so in its note (or that jax was imported too early for it).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import torch

__all__ = ["import_jax", "jax_setup", "jax_version", "jax_warp", "jax_warp_and_vjp"]

#: how :func:`import_jax` found or set JAX up, the first time it was called
_SETUP: list[str] = []


def jax_version() -> str | None:
    """JAX's version, or ``None`` when it is not installed (no import: its flags are set at import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jax")
    except PackageNotFoundError:
        return None


def import_jax() -> ModuleType:
    """jax, imported on the CPU and on one thread when torch uses one (:func:`jax_setup` says how).

    Raises:
        ImportError: jax is not installed.
    """
    note = None if _SETUP else _first_import()
    import jax  # (imported already where _first_import had to, to make its client on one core)

    if note is not None:  # (said once jax imported: a missing jax says nothing of its setup)
        _SETUP.append(note)
    return jax


def _first_import() -> str:
    """Set JAX up before its first import, importing it here where its client must be made on one
    core (torch on one thread, the process on several CPUs); how, for :func:`jax_setup`."""
    if "jax" in sys.modules:
        return "imported before the benchmark: its platform and threads as they were set then"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if torch.get_num_threads() != 1 or cpus is None or len(cpus) == 1:
        single = cpus is not None and len(cpus) == 1
        return "on the CPU, " + ("one core (the process's affinity)" if single else "XLA's default threads")
    cpu = min(cpus)
    os.sched_setaffinity(0, {cpu})  # (this thread only: its threads made meanwhile keep the mask)
    try:
        import jax

        jax.devices("cpu")  # the client, and its thread pool sized and pinned by the affinity
    finally:
        os.sched_setaffinity(0, cpus)
    return f"on the CPU, one core (its thread pool made while pinned to CPU {cpu}: XLA sizes it by the affinity)"


def jax_setup() -> str | None:
    """How the benchmark set JAX up (platform, threads), or ``None`` before it imported jax."""
    return _SETUP[0] if _SETUP else None


def _coordinates(jnp: Any, n: int, align_corners: bool) -> Any:
    """The normalised coordinates of ``n`` output pixels along one axis (as torchstn's base grid)."""
    i = jnp.arange(n, dtype=jnp.float32)
    if align_corners:
        return i * (2 / (n - 1)) - 1 if n > 1 else i * 0
    return (2 * i + 1) / n - 1


def jax_warp(x: Any, matrix: Any, size: Sequence[int], align_corners: bool = False) -> Any:
    """Warp ``x`` ``(B, C, *spatial)`` by the ``src_from_dst`` ``matrix`` with zeros padding, in jax.numpy.

    Args:
        x: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` array.
        matrix: ``(B, n, n + 1)`` affine rows (``F.affine_grid``'s θ) or an ``(B, n + 1, n + 1)``
            homography, mapping normalised output points ``(x, y[, z])`` to input points.
        size: output spatial size, ``(H, W)`` or ``(D, H, W)``.
        align_corners: as in ``F.grid_sample``.

    Convention:
        torch's: normalised [-1, 1] coordinates, x along the last axis, ``align_corners``
        as in :func:`torch.nn.functional.grid_sample`; bilinear (2-D) or trilinear (3-D)
        interpolation; points outside the input read zeros.
    """
    import jax
    import jax.numpy as jnp

    b, c, *spatial = x.shape
    n = len(size)
    # output coordinate k (0: x, the last axis) as an array broadcasting over the output's axes
    base = []
    for k in range(n):
        shape = [1] * n
        shape[n - 1 - k] = size[n - 1 - k]
        base.append(_coordinates(jnp, size[n - 1 - k], align_corners).reshape(shape))

    def row(k: int) -> Any:
        entry = lambda j: matrix[:, k, j].reshape(b, *[1] * n)  # noqa: E731
        out = entry(n)
        for j in range(n):
            out = out + entry(j) * base[j]
        return out

    points = [row(k) for k in range(n)]
    if matrix.shape[1] == n + 1:  # a homography: divide by w
        w = row(n)
        points = [p / w for p in points]
    lows, fracs = [], []
    for k, p in enumerate(points):
        side = spatial[n - 1 - k]
        u = (p + 1) * ((side - 1) / 2) if align_corners else ((p + 1) * side - 1) / 2
        low = jnp.floor(u)
        lows.append(low.astype(jnp.int32))
        fracs.append(u - low)
    strides = [1]
    for k in range(1, n):
        strides.append(strides[-1] * spatial[n - k])
    flat = x.reshape(b, c, -1)
    gather = jax.vmap(lambda image, index: image[:, index])  # (C, HW)[:, (N,)] per sample
    out = 0
    for corner in itertools.product((0, 1), repeat=n):
        weight, valid, index = 1, True, 0
        for k, step in enumerate(corner):
            i = lows[k] + step
            side = spatial[n - 1 - k]
            weight = weight * (fracs[k] if step else 1 - fracs[k])
            valid = valid & (i >= 0) & (i < side)
            index = index + jnp.clip(i, 0, side - 1) * strides[k]
        weight = jnp.where(valid, weight, 0).reshape(b, 1, -1)
        out = out + gather(flat, index.reshape(b, -1)) * weight
    return out.reshape(b, c, *size)


def jax_warp_and_vjp(
    size: Sequence[int], align_corners: bool = False
) -> tuple[Callable[[Any, Any], Any], Callable[[Any, Any, Any], Any]]:
    """``(forward, forward_backward)``, each one ``jax.jit``.

    ``forward(x, matrix)`` is :func:`jax_warp`; ``forward_backward(x, matrix, grad_out)``
    returns the gradients ``(d/dx, d/dmatrix)`` of ``sum(warp(x, matrix) * grad_out)``
    (``jax.vjp``: the forward runs inside it).
    """
    import jax

    size = tuple(size)

    def warp(x: Any, matrix: Any) -> Any:
        return jax_warp(x, matrix, size, align_corners)

    def forward_backward(x: Any, matrix: Any, grad_out: Any) -> Any:
        _, vjp = jax.vjp(warp, x, matrix)
        return vjp(grad_out)

    return jax.jit(warp), jax.jit(forward_backward)
