r"""The fused CPU backend: a C++/OpenMP bilinear and nearest sampler that reads θ instead of a grid.

For a 2-D matrix transform (translation, attention, similarity, affine, projective)
:func:`torchstn.warp` with this backend computes every output pixel's source point from
the ``(B, 2, 3)`` rows or the ``(B, 3, 3)`` homography inside the kernel, so the grid is
never written to memory, and its backward accumulates :math:`\partial L/\partial x` and
:math:`\partial L/\partial θ` in one pass over the output (no grid gradient either); for
planes of three or more channels under zeros padding, :math:`\partial L/\partial x` is
gathered per input pixel instead, where θ allows (float32, AVX-512).
:func:`torchstn.sample` with this backend runs the same kernel on a given grid.

The kernel is two registered PyTorch operators, ``torchstn::warp2d`` and
``torchstn::warp2d_backward`` (:mod:`torch.library`), each with a fake implementation,
and ``warp2d`` with an autograd formula, so ``torch.compile(fullgraph=True)`` and
``torch.export`` keep it (``torch.library.opcheck`` is in the tests).
Its backward is the closed-form kernel; when the gradient's own graph is asked for
(``create_graph=True``: gradient penalties, Hessians, ``torch.func.grad``) it is
recomputed through the grid path (:func:`~torchstn.transforms.matrix_grid` and
``F.grid_sample``), which is differentiable to every order, so higher-order gradients
are exact. The dispatcher's per-call cost (tens of µs, most of a batch-1 call) is paid
only where something may record or transform the call (``torch.compile``,
``torch.export``, fake tensors, tensor subclasses, torch function or dispatch modes):
plain eager calls run the same CPU implementation and autograd formula directly.

The source is ``csrc/fused_warp2d.cpp``: plain C++ with a C interface and no torch
headers, built on first use by :func:`torch.utils.cpp_extension.load` into torch's
extension cache under a name that holds the torch build, the flags and the source, and
called through :mod:`ctypes`. The first build prints one line on stderr when it starts
and ends it with its duration (10-12 s on an idle 2-core machine, see ``docs/benchmarks.md``).
A second, small extension module built beside it, ``csrc/fast_call.cpp`` (torch's tensor
and pybind11 headers: 12.5-18 s, once, where the kernel took 19-22 s; the two builds at once
took 26.0 s against 35.4 s one after the other on 2 cores), calls the same
kernel from Python without ctypes: :func:`fast_call`, the CPU implementation of
``warp2d`` and :func:`torchstn.warp`'s common call (checks, output and kernel call in one
compiled call: a batch-1 28x28 warp from 38.0 to 6.9 µs, ``docs/benchmarks.md``). Where it cannot be built (no
Python headers), one warning says so and the kernel is called through ctypes as before;
``TORCHSTN_FAST_CALL=0`` does the same silently.
Its arithmetic follows ATen's ``grid_sample`` so that it agrees with every other
backend. If the build fails (no compiler, no ``ninja``), that line ends in ``failed``,
one warning, shown at the caller's line, says why, and every call falls back to the
``"torch"`` backend.

Scope: CPU, float32/float64, bilinear and nearest (rounding half to even, as ATen; no
location gradient), every padding and both ``align_corners``; bicubic, other devices and
dtypes, and 3-D, use the grid path with ``F.grid_sample``, and so do
``torch.jit.trace`` and ONNX export, which cannot record a Python operator, and
``torch.func`` transforms, which ``torch.library`` autograd formulas do not support yet.
Threads: ``torch.get_num_threads()``; the forward splits output rows, the backward splits
the batch (each sample's input gradient and θ gradient belong to one thread).
Layouts: the input is read with its own strides (NCHW, channels_last or a view, no copy);
the output is channels_last when the input is. A channels_last float32 input of 2 to 4
channels (an RGB image from NumPy or OpenCV) has a path of its own, forward and backward:
a pixel's channels read, written and accumulated together, with the values of the same
image in NCHW bit for bit and its gradients to float32 rounding. They are the same bits
too where the NCHW image's :math:`\partial L/\partial x` is scattered as this path's is
(not where it is gathered) and its output gradient has the same layout: the sums of
:math:`\partial L/\partial θ` follow the output gradient's strides (2xCx9x11 for C = 2 to
4, zeros padding: up to 1.3e-6 apart in :math:`\partial L/\partial x` for three or four
channels, up to 1.9e-6 in :math:`\partial L/\partial θ` with the output gradient in the other
layout).
Non-finite locations (NaN, ±Inf) give NaN outputs and NaN location gradients.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import platform
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from torchstn._locks import exclusive
from torchstn._tracing import (
    EAGER_QUESTIONS,
    batched_gradient,
    constant_result,
    differentiable_vjp,
    direct_call,
    eager_tensors,
    forward_ad_active,
    functorch_active,
    profiling,
)
from torchstn._validation import caller_stacklevel
from torchstn.sampling._grid_sample import torch_sample
from torchstn.transforms import (
    Affine, Affine1D, Affine3D, Attention, Projective, Similarity, Transform, Translation, get_transform, matrix_grid,
    named_transforms,
)

__all__ = [
    "LOCATIONS",
    "EagerOperator",
    "FusedStatus",
    "LazyKernel",
    "bind_entries",
    "eager_operator",
    "eager_warp2d",
    "fast_call",
    "fused_applies",
    "fused_available",
    "fused_backward",
    "fused_sample",
    "fused_status",
    "fused_warp",
    "grid_path",
    "load_or_build",
    "operator_applies",
]

_SOURCE = Path(__file__).with_name("csrc") / "fused_warp2d.cpp"
_ABI = 6
_PADDING = {"zeros": 0, "border": 1, "reflection": 2}
_MODES = {"bilinear": 0, "nearest": 1}
#: the ``backend`` values under which a warp may take the fused kernels (the compiled call reads this tuple too)
_FUSED_BACKENDS = (None, "auto", "fused")
#: the modes in which ``backend="auto"`` samples a given 2-D grid with the fused kernel, each with
#: the most grid points (batch times output pixels) it takes there (``None``: any number). On a
#: nearest grid of more points ATen's vectorised sampler is mostly faster (0.66-0.97x at 50,000 to
#: 260,000 points); on fewer the fused kernel's compiled call is, where the torch backend's
#: checks for non-finite points cost more than the sampling (1.09x at 12,544 points, 2.97x at
#: 1,024: ``python benchmarks/bench_auto.py --mode nearest``, docs/benchmarks.md). The compiled
#: call reads this dict too; see ``_sample._backend_name``.
AUTO_GRID_MODES = {"bilinear": None, "nearest": 16384}
#: what the kernel reads to locate a point: a grid (B, Ho, Wo, 2), affine rows (B, 2, 3)
#: or a homography (B, 3, 3)
LOCATIONS = {"grid": 0, "affine": 1, "projective": 2}


_i64, _int, _dbl, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
_FORWARD_ARGS = [_ptr, _ptr, _ptr, _dbl, _ptr]  # geometry, x, loc, eps, out
_BACKWARD_ARGS = [_ptr, _ptr, _ptr, _dbl, _ptr, _ptr, _ptr]  # geometry, x, loc, eps, grad_out, grad_x, grad_loc
_GEOMETRY = _i64 * 19


# x86 builds are tuned for the building machine's CPU (-mtune=native: scheduling and instruction
# choices only, the instruction set stays the flags'; the same bits): 1.01-1.11x forward and
# 1.01-1.09x backward over GCC's generic tuning on eleven of the bench's cases, 0.92-0.94x for a
# packed grid's bordered pass (`python benchmarks/ab_flags.py --without=-mtune=native`, Intel
# Xeon, 2026-12-06; docs/benchmarks.md "2026-12-06 18:35"). The CPU's model is part of the
# build's name (_cpu_model).
_ISA_FLAGS = {
    "base": [],
    "avx2": ["-mavx2", "-mfma", "-mtune=native"],
    "avx512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mtune=native"],
}


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else ``platform.processor()``): a build tuned for
    one CPU is not taken from a shared extension cache by a machine with another."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _isa() -> str:
    """The kernels' build (a key of ``_ISA_FLAGS``): torch's CPU capability."""
    return {"AVX2": "avx2", "AVX512": "avx512"}.get(torch.backends.cpu.get_cpu_capability(), "base")


def _build_options(source: Path = _SOURCE, abi: int = _ABI) -> tuple[str, list[str]]:
    """The extension's cache name and compiler flags (for ``source``, by default the 2-D kernel's).

    The name holds everything the binary depends on (torch version and build, flags,
    source), so two environments sharing torch's extension cache never rebuild each
    other's copy. The instruction set is the one torch itself uses (its CPU capability,
    which ``ATEN_CPU_CAPABILITY`` can lower): AVX2 (its loops vectorise 8 floats at a time),
    AVX-512 on top where torch runs AVX-512 (the kernels' AVX2 code then gains two-source
    permutes and the compiler's loops wider vectors: 1.16-1.18x forward at 1x3x224x224,
    1.11x at 64x3x64x64, 1.03-1.09x for volumes, the same bits; ``docs/benchmarks.md``), else
    the baseline ISA; x86 builds tuned for this machine's CPU, whose model the name then holds.
    """
    isa = _isa()
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"] + _ISA_FLAGS[isa]
    tuned = [_cpu_model()] if "-mtune=native" in flags else []
    identity = "\n".join(
        [torch.__version__, str(torch.version.git_version), " ".join(flags), *tuned, source.read_text()]
    )
    return f"torchstn_{source.stem}_v{abi}_{isa}_{hashlib.sha256(identity.encode()).hexdigest()[:12]}", flags


def load_kernel(source: Path, abi: int, what: str) -> ctypes.CDLL:
    """Build the C++ ``source`` on first use (cached by torch) and load it.

    ``what`` names the kernel in the line printed while a first build runs. The library
    must export ``torchstn_<stem>_abi_version()`` (``<stem>``: the file's name without
    ``fused_``) returning ``abi``; a stale build raises. Shared by the 2-D kernel and
    :mod:`torchstn.sampling._fused3d`.

    A library already built under this name (which holds the torch build, the flags and
    the source) is loaded directly: ``cpp_extension.load`` takes a lock file in the build
    directory on every call, even when nothing is to be built, and waits without end for a
    lock that a killed process left behind (it hung the test suite here once). A build runs
    under an ``flock`` of its own in that directory (:func:`_build_lock`, which the system
    drops when its process ends, however it ends), so a second process waits for the first
    and then loads its library, and torch's lock file found there while this process holds
    the ``flock`` can only be a killed build's: it is removed (before, the next first use
    waited for it without end, silently).

    The source is compiled as two translation units, its float32 and its float64 half
    (``TORCHSTN_PART``), which ninja builds in parallel: on two cores the first build takes
    about the time of the larger half instead of both.
    """
    name, flags = _build_options(source, abi)

    def parts(directory: Path) -> list[str]:
        paths = []
        for bits in (32, 64):
            part = directory / f"{source.stem}_f{bits}.cpp"
            part.write_text(f'#define TORCHSTN_PART {bits}\n#include "{source.resolve()}"\n')
            paths.append(str(part))
        return paths

    return load_or_build(name, flags, parts, lambda path: _checked(ctypes.CDLL(path), source, abi), what)


def load_or_build(
    name: str, flags: list[str], sources: Callable[[Path], list[str]], load: Callable[[str], object] | None,
    what: str, *, python_module: bool = False,
) -> object:
    """Load the extension ``name`` from torch's extension cache, building it first if needed
    (:func:`load_kernel` says how and why; also the fast call's module).

    ``sources(directory)`` lists the files to compile, ``load(path)`` loads and checks the
    built library (an ``OSError`` means a library cut short by a killed build), ``what``
    names it in the line a build prints; ``python_module``: an extension module (pybind11)
    instead of a plain library. With ``load`` None it only builds (torch still imports a module it
    built), without a word, and returns None (:func:`_prebuild_fast_call`).
    """
    from torch.utils import cpp_extension  # imports setuptools; only when the backend is first used

    built = _built_path(name)
    directory = built.parent
    quiet = load is None  # (only build: see _prebuild_fast_call)
    lib = None if quiet else _load_built(built, load, remove_broken=False)  # (another process may be linking it)
    if lib is not None or (quiet and built.exists()):
        return lib
    with _build_lock(directory, what, quiet=quiet) as locked:
        lib = None if quiet else _load_built(built, load, remove_broken=locked)  # built by another process meanwhile
        if lib is not None or (quiet and built.exists()):
            return lib
        if locked:
            (directory / "lock").unlink(missing_ok=True)  # torch's: a killed build's (every build holds ours)
        if not quiet:
            print(f"torchstn: building {what} (first use, cached in {directory}) ...", end="", file=sys.stderr,
                  flush=True)
        start = time.perf_counter()
        try:
            path = cpp_extension.load(
                name=name, sources=sources(directory), extra_cflags=flags,
                extra_ldflags=[] if python_module else ["-fopenmp"], is_python_module=python_module, verbose=False,
            )
        except Exception:
            if not quiet:
                print(" failed", file=sys.stderr, flush=True)  # end the line; the warning that follows says why
            raise
        if quiet:
            return None
        print(f" done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        return load(str(built) if python_module else path)  # (a module: load returned it imported)


def _load_built(built: Path, load: Callable[[str], object], remove_broken: bool) -> object | None:
    """The library ``built``, loaded by ``load``, if it exists and loads, else ``None``.

    A library that does not load was cut short by a killed build, and ninja would call it up
    to date: ``remove_broken`` removes it (only under the build lock: without it, the file may
    be one another process is still linking)."""
    if built.exists():
        try:
            return load(str(built))
        except OSError:
            if remove_broken:
                built.unlink(missing_ok=True)
    return None


def _build_lock(directory: Path, what: str = "the kernel", quiet: bool = False) -> contextlib.AbstractContextManager[bool]:
    """Hold an exclusive ``flock`` on ``directory/torchstn-build.lock`` (waiting for another
    process's build, which one line on stderr says unless ``quiet``: the wait took a minute and
    more without a word, as if the process hung) and yield True; where ``fcntl`` is missing
    (Windows) nothing is locked, and False says so."""
    waiting = None if quiet else f"another process's build of {what} ({directory})"
    return exclusive(directory / "torchstn-build.lock", waiting=waiting)


def _checked(lib: ctypes.CDLL, source: Path, abi: int) -> ctypes.CDLL:
    """``lib`` if it exports ``source``'s ABI version ``abi``; a stale build raises."""
    version = getattr(lib, f"torchstn_{source.stem.removeprefix('fused_')}_abi_version")()
    if version != abi:
        raise RuntimeError(f"{lib._name} is a stale build (ABI {version}, expected {abi})")
    return lib


#: the errors of a build whose cache directory cannot be written: no permission, a read-only file
#: system, a file where a directory should be, a full disk or quota
_CACHE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC,
                           errno.EDQUOT})


class LazyKernel:
    """A C++ kernel built on its first use and shared by the process (the 2-D and the 3-D one).

    Calling it returns the loaded library, building it the first time (under a lock: one
    build per process); ``None`` if the build failed, after one ``RuntimeWarning`` shown at
    the user's line that says why and what the callers fall back to. ``build`` is looked
    up when first needed, so a test may replace the module's builder.

    Args:
        build: returns the loaded library (and fills its entry points).
        what: the kernel's name in the warning.
        fallback: what happens instead, in the warning.
        needs: what the build needs, in the warning.
    """

    def __init__(self, build: Callable[[], ctypes.CDLL], what: str, fallback: str,
                 needs: str = "a C++ compiler with OpenMP (g++) and ninja (pip install ninja)") -> None:
        self.build, self.what, self.fallback, self.needs = build, what, fallback, needs
        self.state: dict[str, object] = {}  # "lib" once tried, "error" after a failure
        self._lock = threading.Lock()

    def __call__(self) -> ctypes.CDLL | None:
        if "lib" in self.state:
            return self.state["lib"]  # type: ignore[return-value]
        with self._lock:
            if "lib" not in self.state:
                try:
                    self.state["lib"] = self.build()
                except Exception as error:  # noqa: BLE001 - any build failure means: fall back
                    self.state["lib"], self.state["error"] = None, error
                    # (a cache that cannot be written is not a missing compiler)
                    needs = "a cache directory it can write (TORCH_EXTENSIONS_DIR)" if isinstance(
                        error, OSError) and error.errno in _CACHE_ERRNOS else self.needs
                    warnings.warn(
                        f"torchstn: {self.what} could not be built, so {self.fallback}. It needs {needs}. "
                        f"The error: {type(error).__name__}: {error}",
                        RuntimeWarning,
                        stacklevel=caller_stacklevel(),
                    )
        return self.state["lib"]  # type: ignore[return-value]

    def status(self) -> FusedStatus:
        """Whether it is available (building it now if needed) and, if its build failed, the error."""
        available = self() is not None
        return FusedStatus(available, None if available else str(self.state.get("error")))

    def unavailable(self, operator: str) -> RuntimeError:
        """The error of an operator called where the kernel could not be built."""
        return RuntimeError(f"{operator}: {self.what} could not be built ({self.state.get('error')})")


#: (backward, dtype) -> the kernel's entry point, filled by _build()
_ENTRY: dict[tuple[bool, torch.dtype], ctypes._CFuncPtr] = {}


def bind_entries(
    lib: ctypes.CDLL, name: str, forward_args: list, backward_args: list,
    entries: dict[tuple[bool, torch.dtype], ctypes._CFuncPtr],
) -> ctypes.CDLL:
    """Fill ``entries[backward, dtype]`` with ``lib``'s ``torchstn_<name>_<f32|f64>_<forward|backward>``
    (their argument types set, an int status returned); returns ``lib``."""
    for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
        for backward, argtypes in ((False, forward_args), (True, backward_args)):
            fn = getattr(lib, f"torchstn_{name}_{suffix}_{'backward' if backward else 'forward'}")
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
            entries[backward, dtype] = fn
    return lib


def _build() -> ctypes.CDLL:
    _start_fast_call_beside()
    return bind_entries(load_kernel(_SOURCE, _ABI, "the fused CPU sampler"), "warp2d", _FORWARD_ARGS, _BACKWARD_ARGS,
                        _ENTRY)


_library = LazyKernel(
    lambda: _build(), "the fused CPU sampler",
    "backend='fused' (and 'auto' where it would pick it) falls back to F.grid_sample",
)


_FAST_SOURCE = Path(__file__).with_name("csrc") / "fast_call.cpp"
_FAST_ABI = 5


def _fast_call_options() -> tuple[str, list[str]]:
    """The fast call's extension name and compiler flags."""
    flags = ["-O2"]
    identity = "\n".join([torch.__version__, str(torch.version.git_version), " ".join(flags), f"kernel ABI {_ABI}",
                          _FAST_SOURCE.read_text()])
    return f"torchstn_fast_call_v{_FAST_ABI}_{hashlib.sha256(identity.encode()).hexdigest()[:12]}", flags


def _build_fast_call() -> object:
    """The fast call's extension module (``csrc/fast_call.cpp``; :func:`fast_call` gives it the kernel).

    It includes torch's tensor, autograd-node and pybind11 headers (not ``torch/extension.h``,
    which alone takes 30-45 s to build here), so it needs Python's headers too, which the
    kernel does not."""
    import importlib.util

    def load(path: str) -> object:
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)  # (the extension's name)
        try:
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as error:  # (a library cut short by a killed build)
            raise OSError(str(error)) from error
        if module.abi_version() != _FAST_ABI:
            raise RuntimeError(f"{path} is a stale build (ABI {module.abi_version()}, expected {_FAST_ABI})")
        return module

    try:
        return _load_or_build_fast_call(load)
    finally:
        if _beside:
            _beside[0].poll()  # (reaped, if it has ended)


def _prebuild_fast_call() -> None:
    """Build the fast call's module into the cache, without a word on stderr (what the process
    of :func:`_start_fast_call_beside` runs; torch imports the module there, not here)."""
    _load_or_build_fast_call(None)


def _load_or_build_fast_call(load: Callable[[str], object] | None) -> object:
    """The fast call's module from torch's extension cache, built there first if absent
    (:func:`load_or_build`; ``load`` ``None``: only built)."""
    name, flags = _fast_call_options()
    return load_or_build(name, flags, lambda _: [str(_FAST_SOURCE)], load, "the fused sampler's fast call",
                         python_module=True)


def _built_path(name: str) -> Path:
    """Where torch's extension cache holds the library of the extension ``name``."""
    from torch.utils import cpp_extension  # imports setuptools; only when the backend is first used

    return Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"


def _cached(name: str) -> bool:
    """Whether the extension ``name`` is in torch's extension cache already."""
    return _built_path(name).exists()


#: the process that builds the fast call's module beside the kernel's first build, once started
_beside: list[subprocess.Popen] = []


def _beside_command() -> list[str]:
    """The command of that process: this Python, this copy of torchstn (its directory first on
    the path), :func:`_prebuild_fast_call`."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); from torchstn.sampling import _fused; _fused._prebuild_fast_call()"
    return [sys.executable, "-c", code, str(Path(__file__).resolve().parents[2])]


def _start_fast_call_beside() -> None:
    """Where the kernel is about to be built and the fast call's module too (neither cached,
    the compiled call not turned off), start the module's build in a process of its own, so
    that the two compile at once: 36.2 -> 25.7 s for both on 2 cores (docs/benchmarks.md).
    Called by the kernel's builder. :func:`fast_call` then loads the module from the cache,
    waiting for that build under the cache's lock if it still runs (the line on stderr says
    so), or builds it itself, with the error of its own build, where that process failed. A
    process rather than a thread: the compiler's messages stay out of this one, which holds
    no lock of that build (a child forked from it could not inherit one) and whose own build
    of the module, if it comes to one, is not one that torch's extension loader already saw."""
    with contextlib.suppress(Exception):  # (an optimisation: never the kernel's build's failure)
        if _beside or "lib" in _fast_call_module.state or _fast_call_off():
            return
        if _cached(_build_options()[0]) or _cached(_fast_call_options()[0]):
            return
        _beside.append(subprocess.Popen(_beside_command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))


_fast_call_module = LazyKernel(
    lambda: _build_fast_call(), "the fused sampler's fast call",
    "the fused kernel is called through ctypes (about 30 µs more per batch-1 call)",
    "a C++ compiler, ninja and Python's headers (python3-dev)",
)


def _fast_call_setting() -> str:
    """``TORCHSTN_FAST_CALL``, stripped and in lower case ("" where unset)."""
    return os.environ.get("TORCHSTN_FAST_CALL", "").strip().lower()


def _fast_call_off() -> bool:
    """Whether ``TORCHSTN_FAST_CALL`` turns the compiled call off: 0, false, off or no (any case)."""
    return _fast_call_setting() in ("0", "false", "off", "no")


def _fast_call_wanted() -> bool:
    """``TORCHSTN_FAST_CALL``: off for 0, false, off or no (any case); on unset, empty or for 1,
    true, on or yes; anything else warns and leaves it on (only "0" turned it off, "off" silently
    not)."""
    if _fast_call_off():
        return False
    value = _fast_call_setting()
    if value not in ("", "1", "true", "on", "yes"):  # ("": set empty, as unset)
        warnings.warn(f"TORCHSTN_FAST_CALL={value!r} is neither 0/false/off/no nor 1/true/on/yes: the compiled call "
                      "stays on", RuntimeWarning, stacklevel=caller_stacklevel())
    return True


def fast_call() -> object | None:
    """The compiled call of the fused 2-D kernel (``csrc/fast_call.cpp``: its ``fast_warp`` and
    ``warp2d``), or ``None`` where the kernel or this module could not be built (or
    ``TORCHSTN_FAST_CALL=0``, for comparisons). Built on first use, beside the kernel (in a
    process of its own while the kernel's first build runs: :func:`_start_fast_call_beside`);
    the answer is kept in the kernel's state, so that it goes with the kernel it calls."""
    fast = _library.state.get("fast")
    if fast is None:  # not asked yet
        usable = _fast_call_wanted() and _library() is not None  # (its first build starts the module's)
        with _FAST_CALL_LOCK:  # (published when ready: another thread's warp used it half set up)
            fast = _library.state.get("fast")
            if fast is None:
                fast = (_fast_call_module() if usable else None) or False
                if fast:
                    fast.set_python(EAGER_QUESTIONS, (_COMPILED_FAMILIES, _NAMED, _named, _MODES, _PADDING,
                                                      _FUSED_BACKENDS, AUTO_GRID_MODES))
                    fast.set_backward_fallback(_node_backward)
                    _set_kernels(fast)
                    for hand_over in FAST_CALL_LOADED:
                        hand_over(fast)
                _library.state["fast"] = fast
    return fast or None


#: what gives the compiled call, once it is loaded, a kernel of its own (``_fused3d``'s 3-D one: each
#: called with the module when it loads, and by that kernel's own build where the module was first)
FAST_CALL_LOADED: list[Callable[[object], None]] = []


_FAST_CALL_LOCK = threading.Lock()


#: the families whose parameters the compiled call reads itself (exactly these types), and its code for each
#: (translation, attention and similarity: their rows made there, csrc/fast_call.cpp's family_rows)
_COMPILED_FAMILIES = {Affine: 0, Projective: 1, Affine1D: 2, Affine3D: 3, Translation: 4, Attention: 5, Similarity: 6}
#: family code -> the rows of its parameters (the families whose rows the compiled call makes)
_FAMILY_ROWS = {code: family()._rows for family, code in _COMPILED_FAMILIES.items() if code >= 4}
#: name -> its transform (default options), which a call that names its transform warps with:
#: every name :func:`~torchstn.transforms.get_transform` knows, made at import
#: (:func:`~torchstn.transforms.named_transforms`: before any torch.compile trace), and other
#: spellings as they come (:func:`_named`). The compiled call holds this dict (and _MODES,
#: _PADDING, _FUSED_BACKENDS) itself, from its first load: never rebind them.
_NAMED: dict[str, Transform] = named_transforms()


def _named(name: str) -> Transform | None:
    """The transform named ``name``, kept in :data:`_NAMED`; ``None`` for a name
    :func:`~torchstn.transforms.get_transform` refuses (the general path says why)."""
    hit = _NAMED.get(name)
    if hit is not None:
        return hit
    try:
        transform = get_transform(name)
    except (TypeError, ValueError):
        return None
    if len(_NAMED) < 128:  # (the names made at import and up to a hundred other spellings)
        _NAMED[name] = transform
    return transform


def rebind_fast_call() -> None:
    """Point the compiled call (once loaded) at the kernel's entry points in ``_ENTRY``
    as they are now: when :func:`fast_call` first loads it, and after a caller replaced them
    (``benchmarks/ab_kernel.py`` swaps two builds)."""
    fast = _library.state.get("fast")
    if fast:
        _set_kernels(fast)


def _set_kernels(fast: object) -> None:
    fast.set_kernels(*(ctypes.cast(_ENTRY[backward, dtype], ctypes.c_void_p).value
                       for backward in (False, True) for dtype in _DTYPES), _ABI)


@constant_result
def fused_available() -> bool:
    """True if the fused kernel is built (building it now if needed); False after a failed build.

    A constant to ``torch.compile``: the answer does not change within a process.
    """
    return _library() is not None


class FusedStatus(NamedTuple):
    """Whether the fused kernel can run in this process, and if not why."""

    #: the kernel is built and loaded
    available: bool
    #: the build error (``None`` when available)
    error: str | None


def fused_status(ndim: int = 2) -> FusedStatus:
    """Whether the fused CPU kernel for images (``ndim=2``) or volumes (``ndim=3``) is
    available (building it now if needed) and, if its build failed, the error (also given
    once as a ``RuntimeWarning``).

    Example:
        >>> from torchstn.sampling import fused_status
        >>> status = fused_status()
        >>> status.available or status.error is not None
        True
        >>> fused_status(ndim=3).available == (fused_status(ndim=3).error is None)
        True
    """
    if ndim == 2:
        return _library.status()
    if ndim == 3:
        from torchstn.sampling import _fused3d  # imports this module

        return _fused3d._library.status()
    raise ValueError(f"ndim must be 2 (images) or 3 (volumes), got {ndim!r}")


def fused_applies(x: torch.Tensor, mode: str) -> bool:
    """Whether the fused kernel covers this input: bilinear or nearest, a float32/float64 CPU image
    (B, C, H, W), any strides (NCHW and channels_last are read in place), with non-empty H
    and W (F.grid_sample reports empty ones) of at most 2^30 pixels (the kernel takes a point
    beyond 2^30 for one far outside) and int32 pixel offsets, outside ``torch.jit.trace``
    (which cannot record the operator, and whose sizes are traced tensors this test would
    read). Where it does not, ``backend="fused"`` falls back to ``F.grid_sample``."""
    if mode not in _MODES or x.dtype not in _DTYPES or x.dim() != 4 or not x.is_cpu or torch.jit.is_tracing():
        return False
    _, _, h, w = x.shape
    _, _, sh, sw = x.stride()
    return 0 < h <= 2**30 and 0 < w <= 2**30 and (h + 1) * sh + (w + 1) * sw < 2**31


_DTYPES = (torch.float32, torch.float64)


def operator_applies(*tensors: torch.Tensor) -> bool:
    """Whether the operator may run on these tensors: not under ``torch.jit.trace`` or ONNX
    export (which cannot record a Python operator), nor inside ``torch.func`` transforms
    (``torch.library``'s autograd formulas do not support them in torch 2.13); those take
    the grid path, whose values and gradients are the same."""
    if eager_tensors(*tensors):
        return True  # (the answer at once: asking the ONNX exporter costs µs per call)
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or functorch_active())


# ---------------------------------------------------------------------------------------------
# the kernel, called through ctypes


def _ptr_of(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() else None


#: (the shapes, strides and options of a call) -> the kernel's geometry argument: building it
#: costs µs, a lookup a fraction of one
_GEOMETRY_MADE: dict[tuple, ctypes.Array] = {}


def _geometry(
    location: str, mode: str, x: torch.Tensor, buffer: torch.Tensor, size: tuple[int, int], padding: str,
    align_corners: bool,
) -> ctypes.Array:
    """The kernel's first argument: location, mode, B, C, H, W, Ho, Wo, padding, align_corners,
    threads and the strides of ``x`` and ``buffer`` (``csrc/fused_warp2d.cpp`` says the order)."""
    threads = torch.get_num_threads()
    key = (location, mode, x.shape, x.stride(), buffer.stride(), size, padding, align_corners, threads)
    made = _GEOMETRY_MADE.get(key)
    if made is None:
        if len(_GEOMETRY_MADE) >= 256:
            _GEOMETRY_MADE.clear()
        made = _GEOMETRY_MADE[key] = _GEOMETRY(
            LOCATIONS[location], _MODES[mode], *x.shape, *size, _PADDING[padding], align_corners, threads,
            *x.stride(), *buffer.stride(),
        )
    return made


def _call(
    backward: bool, location: str, x: torch.Tensor, loc: torch.Tensor, buffer: torch.Tensor,
    grad_x: torch.Tensor | None, grad_loc: torch.Tensor | None, size: tuple[int, int], mode: str, padding: str,
    align_corners: bool, eps: float,
) -> None:
    """Run the kernel. ``x`` and ``buffer`` (the output, or the output's gradient) with any
    strides, ``grad_x`` with the strides of ``x``; ``loc`` and ``grad_loc`` contiguous."""
    fn = _ENTRY.get((backward, x.dtype))
    if fn is None:
        if _library() is None:
            raise _library.unavailable("torchstn::warp2d")
        if x.dtype not in _DTYPES:
            raise TypeError(f"torchstn::warp2d: x must be float32 or float64, got {x.dtype}")
        fn = _ENTRY[backward, x.dtype]
    geometry = _geometry(location, mode, x, buffer, size, padding, align_corners)
    # (the pointers of empty tensors are never read: the kernel's loops run zero times)
    if backward:
        status = fn(geometry, x.data_ptr(), loc.data_ptr(), eps, buffer.data_ptr(), _ptr_of(grad_x), _ptr_of(grad_loc))
    else:
        status = fn(geometry, x.data_ptr(), loc.data_ptr(), eps, buffer.data_ptr())
    if status == 3:
        raise ValueError("the image is too large for the fused kernel (a side longer than 2^30 or offsets past "
                         "int32): backend='torch' samples it")
    if status != 0:
        raise RuntimeError(f"fused warp kernel failed with status {status}")


# ---------------------------------------------------------------------------------------------
# the operators

_LIB = torch.library.Library("torchstn", "DEF")  # noqa: TOR901 - the module owns the namespace
_LIB.define(
    "warp2d(Tensor x, Tensor loc, str location, SymInt[] size, str mode, str padding, bool align_corners, float eps) "
    "-> Tensor"
)
_LIB.define(
    "warp2d_backward(Tensor grad_out, Tensor x, Tensor loc, str location, str mode, str padding, "
    "bool align_corners, float eps, bool[] output_mask) -> (Tensor, Tensor)"
)


def resolved(t: torch.Tensor) -> torch.Tensor:
    """``t`` with its negative bit applied: a view such as ``z.conj().imag`` carries one, which
    torch's own kernels apply when they read it, and the fused kernels (which read the memory)
    must too. The eager direct calls skip the dispatcher, whose fallback would apply it."""
    return t.resolve_neg() if t.is_neg() else t


def _warp2d_cpu(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str,
    align_corners: bool, eps: float,
) -> torch.Tensor:
    x, loc = resolved(x), resolved(loc)
    fast = fast_call()
    if fast is not None:
        return fast.warp2d(x, loc, LOCATIONS[location], int(size[0]), int(size[1]), _MODES[mode], _PADDING[padding],
                           align_corners, eps)
    loc, size = loc.contiguous(), (int(size[0]), int(size[1]))
    out = _new_output(x, size)
    _call(False, location, x, loc, out, None, None, size, mode, padding, align_corners, eps)
    return out


def _new_output(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The output of ``warp2d``: ``(B, C, *size)`` in the memory format of ``x`` (channels_last
    stays channels_last for the next convolution)."""
    if x.is_contiguous() and x.numel():  # (NCHW, and a single channel: both formats are contiguous then;
        # an empty x counts as contiguous with any strides, which empty_like would copy)
        if x.shape[2:] == size:
            return torch.empty_like(x)  # (0.9 µs; empty with a shape, dtype and format: 2-3 µs)
        return x.new_empty((x.shape[0], x.shape[1], *size))
    channels_last = x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
    if x.shape[2:] == size:  # (a tuple of ints here; the fake's list of sizes does not compare equal)
        # half the time of torch.empty with a format (1.3 against 2.8 µs); the same strides
        return torch.empty_like(x, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    # allocated in its format (a copy of an NCHW one cost 117 µs at 1x3x224x224)
    return torch.empty((x.shape[0], x.shape[1], *size), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _dense(grad_out: torch.Tensor) -> torch.Tensor:
    """``grad_out`` if it is dense (NCHW or channels_last), else an NCHW copy: an expanded
    gradient (``.sum()``'s, stride 0) or a strided view took the kernel's two-pass backward
    (1.27-1.49x the time of forward+backward with a dense one; 1.05-1.11x copied, as torch's
    own 1.04-1.16x: ``python benchmarks/bench_grad_layout.py``, 2026-12-03), whose θ gradient
    sums in another order than the one pass of the same values."""
    if grad_out.is_contiguous() or grad_out.is_contiguous(memory_format=torch.channels_last):
        return grad_out
    return grad_out.contiguous()


def _gradient_buffer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and a tensor for its gradient with the same strides (the kernel indexes both
    alike): ``empty_like`` keeps the strides of a dense ``x``; any other ``x`` (expanded,
    a strided view) is made contiguous first."""
    grad_x = torch.empty_like(x)
    if grad_x.stride() != x.stride():
        x = x.contiguous()
        grad_x = torch.empty_like(x)
    return x, grad_x


def _warp2d_backward_cpu(
    grad_out: torch.Tensor, x: torch.Tensor, loc: torch.Tensor, location: str, mode: str, padding: str,
    align_corners: bool, eps: float, output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    grad_out, x, loc = _dense(resolved(grad_out)), resolved(x), resolved(loc).contiguous()
    if output_mask[0]:
        x, grad_x = _gradient_buffer(x)  # zeroed by the kernel
    else:
        grad_x = x.new_empty(0)
    grad_loc = torch.empty_like(loc) if output_mask[1] else loc.new_empty(0)
    if output_mask[0] or output_mask[1]:
        size = (grad_out.shape[2], grad_out.shape[3])
        _call(True, location, x, loc, grad_out, grad_x if output_mask[0] else None,
              grad_loc if output_mask[1] else None, size, mode, padding, align_corners, eps)
    return grad_x, grad_loc


def check_operator_args(
    op: str, x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str,
    grad_out: torch.Tensor | None = None,
) -> None:
    """Check the arguments of ``torchstn::warp2d`` / ``warp3d`` (``op``) and their backwards
    against each other, as ``F.grid_sample`` checks its own: the kernel trusts them (a
    wrong shape would read past a buffer). The operators run it whenever the dispatcher
    calls them (a direct ``torch.ops`` call, ``torch.compile``, ``torch.export``, and their
    fake implementations); :func:`torchstn.warp` has checked the same before its direct call."""
    volumes = op.startswith("warp3d")
    n = 3 if volumes else 2
    locations = ("grid", "affine") if volumes else tuple(LOCATIONS)
    for name, value, allowed in (("location", location, locations), ("mode", mode, tuple(_MODES)),
                                 ("padding", padding, tuple(_PADDING))):
        if value not in allowed:
            raise ValueError(f"torchstn::{op}: {name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    if x.dim() != n + 2:
        raise ValueError(f"torchstn::{op}: x must have {n + 2} dimensions, got shape {tuple(x.shape)}")
    if any(s == 0 for s in x.shape[2:]):  # (no pixel to read: the 2-D kernel read past its buffer)
        raise ValueError(f"torchstn::{op}: x must have non-empty spatial dimensions, as F.grid_sample asks, got "
                         f"shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES or loc.dtype != x.dtype:
        raise TypeError(
            f"torchstn::{op}: x and loc must both be float32 or both float64, got {x.dtype} and {loc.dtype}"
        )
    if loc.device != x.device:
        raise ValueError(f"torchstn::{op}: loc must be on the device of x ({x.device}), got {loc.device}")
    if len(size) != n or any(s < 0 for s in size):
        raise ValueError(f"torchstn::{op}: size must be {n} sizes, got {list(size)}")
    expected = {"grid": (*size, n), "affine": (n, n + 1), "projective": (3, 3)}[location]
    if loc.dim() != len(expected) + 1 or loc.shape[0] != x.shape[0] or tuple(loc.shape[1:]) != tuple(expected):
        shape = ", ".join(map(str, ("B", *expected)))
        raise ValueError(f"torchstn::{op}: loc ({location}) must have shape ({shape}) with the batch B = {x.shape[0]} "
                         f"of x, got {tuple(loc.shape)}")
    if grad_out is not None and (grad_out.dtype != x.dtype or tuple(grad_out.shape) != (*x.shape[:2], *size)):
        raise ValueError(f"torchstn::{op}: grad_out must be {x.dtype} of shape {(*x.shape[:2], *size)}, "
                         f"got {grad_out.dtype} {tuple(grad_out.shape)}")


def refuse_forward_ad(op: str) -> None:
    """Raise inside a forward-mode AD level: the fused operators' autograd formula
    (``torch.library.register_autograd``) has no forward derivative, and torch would drop the
    tangent without a word (``jacfwd`` of ``torch.ops.torchstn.warp2d`` gave zeros).
    :func:`torchstn.warp` and :func:`torchstn.sample` never call an operator there."""
    if forward_ad_active():
        raise NotImplementedError(
            f"torchstn::{op} has no forward-mode derivative (forward AD, torch.func.jvp/jacfwd/hessian); call "
            "torchstn.warp or torchstn.sample, which sample with the reference kernel there"
        )


def _warp2d_checked(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str,
    align_corners: bool, eps: float,
) -> torch.Tensor:
    refuse_forward_ad("warp2d")
    check_operator_args("warp2d", x, loc, location, size, mode, padding)
    if _library() is None:  # (a saved program that holds the operator, run where the kernel cannot be built)
        return grid_path(x, loc, location, size, mode, padding, align_corners, eps)
    return _warp2d_cpu(x, loc, location, size, mode, padding, align_corners, eps)


def _warp2d_backward_checked(
    grad_out: torch.Tensor, x: torch.Tensor, loc: torch.Tensor, location: str, mode: str, padding: str,
    align_corners: bool, eps: float, output_mask: Sequence[bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    check_operator_args("warp2d_backward", x, loc, location, grad_out.shape[2:], mode, padding, grad_out)
    return _warp2d_backward_cpu(grad_out, x, loc, location, mode, padding, align_corners, eps, output_mask)


# the dispatcher's calls are checked; torchstn.warp's direct eager call of _warp2d_cpu is not
_LIB.impl("warp2d", _warp2d_checked, "CPU")
_LIB.impl("warp2d_backward", _warp2d_backward_checked, "CPU")


@torch.library.register_fake("torchstn::warp2d", lib=_LIB)
def _warp2d_fake(x, loc, location, size, mode, padding, align_corners, eps):  # noqa: ANN001, ANN202
    check_operator_args("warp2d", x, loc, location, size, mode, padding)
    return _new_output(x, size)


@torch.library.register_fake("torchstn::warp2d_backward", lib=_LIB)
def _warp2d_backward_fake(  # noqa: ANN202
    grad_out, x, loc, location, mode, padding, align_corners, eps, output_mask  # noqa: ANN001
):
    check_operator_args("warp2d_backward", x, loc, location, grad_out.shape[2:], mode, padding, grad_out)
    return (_gradient_buffer(x)[1] if output_mask[0] else x.new_empty(0),
            loc.new_empty(loc.shape) if output_mask[1] else loc.new_empty(0))


def grid_path(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str,
    align_corners: bool, eps: float,
) -> torch.Tensor:
    """What ``torchstn::warp2d`` computes, as plain differentiable operations: the grid
    (:func:`~torchstn.transforms.matrix_grid`) and ``F.grid_sample`` with torchstn's
    policy for non-finite points. Its derivatives are the operator's."""
    if location == "grid":
        grid = loc
    else:
        grid = matrix_grid(loc, size, align_corners, eps=eps if location == "projective" else None)
    return torch_sample(x, grid, mode, padding, align_corners)


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
    x, loc, *options = inputs
    # an inference tensor (θ of a localisation net run under inference_mode) cannot be saved
    # for backward; what F.grid_sample saves is computed from it, so a copy keeps the same rule
    ctx.save_for_backward(*(t.clone() if t.is_inference() else t for t in (x, loc)))
    ctx.options = options


def fused_backward(  # noqa: ANN001 - ctx is autograd's
    ctx, grad_out: torch.Tensor, reference: Callable[..., torch.Tensor], kernel_backward: Callable[..., tuple] | None
) -> tuple[torch.Tensor | None, ...]:
    """The autograd formula of a fused operator ``(x, loc, *options)`` (2-D and 3-D alike).

    The kernel's gradients, ``kernel_backward(grad_out, x, loc, needed)``; under
    ``create_graph`` the kernel is first-order, and a batched ``grad_out`` (autograd's batched
    gradients, ``vmap``) has no memory for it, so the gradient of ``reference(x, loc)``, the
    operator as plain differentiable operations, is taken instead; so it is where the kernel
    could not be built (``kernel_backward`` ``None``: a saved program run without a compiler).
    ``None`` for the options (``ctx`` as :func:`_setup_context` fills it).
    """
    x, loc = ctx.saved_tensors
    needed = tuple(ctx.needs_input_grad[:2])
    if grad_out._is_zerotensor():  # an efficient zero has no memory for the kernel (the 3-D one crashed on it)
        grads = tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) if need else None
                      for t, need in zip((x, loc), needed))
    elif kernel_backward is None or torch.is_grad_enabled() or batched_gradient(grad_out):
        grads = differentiable_vjp(reference, (x, loc), grad_out, needed)
    else:
        grad_x, grad_loc = kernel_backward(grad_out, x, loc, list(needed))
        grads = (grad_x if needed[0] else None, grad_loc if needed[1] else None)
    return *grads, *(None for _ in ctx.options)


def backward_entry(direct: bool, grad_out: torch.Tensor, cpu: Callable[..., tuple], operator: object) -> object:
    """A fused operator's backward for its autograd formula to call: its CPU implementation where
    the call was direct (:func:`eager_operator`) and ``grad_out`` a plain tensor, else the registered
    operator, whose dispatcher hands a tensor subclass (``TwoTensor``) its own components: the CPU
    implementation had handed such a wrapper, with no storage of its own, to the kernel as a null
    pointer and crashed the process (2-D and 3-D alike; the compiled call's C++ nodes had sent it
    to the differentiable expression)."""
    return cpu if direct and type(grad_out) is torch.Tensor else operator


def _backward(ctx, grad_out: torch.Tensor, direct: bool = False):  # noqa: ANN001, ANN202
    location, size, mode, padding, align_corners, eps = ctx.options
    backward = backward_entry(direct, grad_out, _warp2d_backward_cpu, torch.ops.torchstn.warp2d_backward)
    return fused_backward(
        ctx, grad_out,
        lambda x, loc: grid_path(x, loc, location, size, mode, padding, align_corners, eps),
        None if _library() is None
        else lambda g, x, loc, needed: backward(g, x, loc, location, mode, padding, align_corners, eps, needed),
    )


torch.library.register_autograd("torchstn::warp2d", _backward, setup_context=_setup_context, lib=_LIB)


class EagerOperator(NamedTuple):
    """The calls of a fused operator ``torchstn::<name>(x, loc, *options)`` (:func:`eager_operator`)."""

    #: through the dispatcher where something may record or transform the call, else direct
    call: Callable[..., torch.Tensor]
    #: direct, for a caller that knows its tensors are plain eager ones (:func:`eager_tensors`)
    direct: Callable[..., torch.Tensor]


def eager_operator(
    name: str, cpu: Callable[..., torch.Tensor], backward: Callable[..., tuple],
    recorded: Callable[..., torch.Tensor | None] | None = None,
) -> EagerOperator:
    """The calls of the fused operator ``torchstn::<name>(x, loc, *options)``: through the
    dispatcher where something may record or transform the call (``torch.compile``,
    ``torch.export``, tensor subclasses, fake tensors, torch function or dispatch modes),
    else directly: ``cpu`` (its CPU implementation, unchecked: the callers checked their
    arguments) and, where a gradient is wanted, an ``autograd.Function`` with the operator's
    own formula (``backward(ctx, grad_out, direct=True)``), minus the operator's per-call
    cost (tens of µs, which dominated batch-1 calls); or ``recorded(x, loc, *options)``, the
    same formula as a C++ node, where it gives an output (not ``None``). Shared by the 2-D and
    3-D operators."""
    operator = getattr(torch.ops.torchstn, name)

    def forward(ctx, x, loc, *options):  # noqa: ANN001, ANN202
        _setup_context(ctx, (x, loc, *options), None)
        return cpu(x, loc, *options)

    def backward_of(ctx, grad_out):  # noqa: ANN001, ANN202
        return backward(ctx, grad_out, direct=True)

    # (named when made: torch names the backward node after the class then, e.g. TorchstnWarp3dBackward,
    # which anomaly mode's messages and grad_fn.name() show)
    Eager = type(f"Torchstn{name[0].upper()}{name[1:]}", (torch.autograd.Function,),
                 {"forward": staticmethod(forward), "backward": staticmethod(backward_of)})

    def direct(x: torch.Tensor, loc: torch.Tensor, *options: object) -> torch.Tensor:
        if (x.requires_grad or loc.requires_grad) and torch.is_grad_enabled():
            out = None if recorded is None else recorded(x, loc, *options)
            return Eager.apply(x, loc, *options) if out is None else out
        return cpu(x, loc, *options)

    def call(x: torch.Tensor, loc: torch.Tensor, *options: object) -> torch.Tensor:
        return direct(x, loc, *options) if direct_call(x, loc) else operator(x, loc, *options)

    return EagerOperator(call, direct)


def _warp2d_recorded(
    x: torch.Tensor, loc: torch.Tensor, location: str, size: Sequence[int], mode: str, padding: str,
    align_corners: bool, eps: float,
) -> torch.Tensor | None:
    """A call of ``torchstn::warp2d`` that records a gradient, through the compiled call's C++
    autograd node (``csrc/fast_call.cpp``'s ``torchstn::Warp2dBackward``: this operator's formula,
    :func:`_backward`, without Python in its backward), or ``None`` where it is not built."""
    fast = fast_call()
    if fast is None:
        return None
    return fast.warp2d_recorded(x, loc, LOCATIONS[location], int(size[0]), int(size[1]), _MODES[mode],
                                _PADDING[padding], align_corners, eps)


def _node_backward(
    x: torch.Tensor, loc: torch.Tensor, grad_out: torch.Tensor, location: int, size: tuple[int, int], mode: int,
    padding: int, align_corners: bool, eps: float, need_x: bool, need_loc: bool, family: int = 0,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients the C++ node's backward leaves to Python (its options as the kernel's
    codes): under ``create_graph`` and for a batched ``grad_out``, the gradient of the
    operator's plain differentiable expression, as :func:`fused_backward` takes it. An affine
    ``loc`` may be Affine's ``(B, 6)`` parameters, which the kernel reads as the rows, or with
    ``family`` (a code of :data:`_COMPILED_FAMILIES`) that family's parameters, whose rows its
    ``_rows`` makes (as the compiled call's ``family_rows``)."""
    options = (_LOCATION_NAMES[location], size, _MODE_NAMES[mode], _PADDING_NAMES[padding], align_corners, eps)
    rows = _FAMILY_ROWS[family] if family else None

    def reference(x_: torch.Tensor, loc_: torch.Tensor) -> torch.Tensor:
        if rows is not None:
            loc_ = rows(loc_)
        return grid_path(x_, loc_.reshape(-1, 2, 3) if loc_.dim() == 2 else loc_, *options)

    return differentiable_vjp(reference, (x, loc), grad_out, (need_x, need_loc))


_LOCATION_NAMES, _MODE_NAMES, _PADDING_NAMES = ({code: name for name, code in codes.items()}
                                                for codes in (LOCATIONS, _MODES, _PADDING))


#: ``torchstn::warp2d(x, loc, location, size, mode, padding, align_corners, eps)``, eager calls direct
_warp2d, eager_warp2d = eager_operator("warp2d", _warp2d_cpu, _backward, _warp2d_recorded)


def fused_sample(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, align_corners: bool) -> torch.Tensor:
    """Sampling of ``x`` (B, C, H, W) at ``grid`` (B, Ho, Wo, 2) with the fused kernel (no validation)."""
    return _warp2d(x, grid, "grid", list(grid.shape[1:3]), mode, padding, align_corners, 0.0)


def fused_warp(
    x: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int], mode: str, padding: str, align_corners: bool,
    projective: bool = False, eps: float = 0.0, *, eager: bool = False,
) -> torch.Tensor:
    """Warp of ``x`` (B, C, H, W) by a ``src_from_dst`` matrix, bilinear or nearest, no grid in memory.

    ``matrix``: the rows ``(B, 2, 3)`` of an affine map, or with ``projective`` the
    homography ``(B, 3, 3)`` whose ``w`` is guarded by ``eps`` as :class:`~torchstn.Projective` does.
    ``eager``: the caller has found ``x`` and ``matrix`` plain eager tensors
    (:func:`~torchstn._tracing.eager_tensors`), so the operator is called directly without asking
    again (through the dispatcher where ``torch.profiler`` records it).
    """
    location = "projective" if projective else "affine"
    if eager and not profiling():
        return eager_warp2d(x, matrix, location, size, mode, padding, align_corners, eps)
    return _warp2d(x, matrix, location, list(size), mode, padding, align_corners, eps)
