"""What every layer needs to know about the execution mode, and the cache that must survive all of them.

torchstn's kernels take a hand-written fast path (custom autograd Functions, the fused
operator) on plain eager tensors and the plain differentiable expression everywhere else:
under ``torch.jit.trace``, ONNX export, ``torch.compile``, ``torch.export`` and inside
``torch.func`` transforms. The questions that decide it (:func:`eager_tensors`,
:func:`functorch_active`, :func:`in_functorch`), the differentiable fallback of a first-order backward
(:func:`differentiable_vjp`) and the cache of θ-independent tensors (:func:`cached`,
:func:`clear_caches`), whose entries must be usable in every one of those modes, live here,
once, next to :mod:`torchstn._validation`: an internal module every layer may import.
The public names are :func:`torchstn.clear_caches` and :func:`torchstn.transforms.clear_caches`.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

import torch

__all__ = [
    "autocast_enabled",
    "autocast_off",
    "batched_gradient",
    "cached",
    "clear_caches",
    "constant",
    "constant_result",
    "device_type_of",
    "differentiable_vjp",
    "direct_call",
    "eager_tensors",
    "exporting",
    "forward_ad_active",
    "functorch_active",
    "in_functorch",
    "nested_forward_ad",
    "outside_modes",
    "profiling",
    "tracing_or_faking",
]

_CACHE: dict[Hashable, tuple[torch.Tensor, int]] = {}
_CACHE_SIZE = 128
#: the most the cache holds in bytes (oldest entries dropped first): a thin-plate spline's grid
#: operator at 224x224 is 12 MB (49 MB with 8x8 control points), and 128 of them held gigabytes
_CACHE_BYTES = 256 * 2**20
_CACHE_LOCK = threading.Lock()  # (insertions and evictions; a lookup is one atomic dict read)


def cached(key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Return the θ-independent tensor stored under ``key``, building it on a miss.

    Entries are plain tensors that every mode can use: they are built with inference
    mode off (an inference tensor would poison a later training step), only real
    tensors built outside a tracer are stored (under ``torch.export`` or
    ``torch.compile`` a miss builds a fake/traced tensor, and inside a ``torch.func``
    transform it may build the transform's wrapper: returned, never kept), under a
    ``FakeTensorMode`` that refuses real tensors (a user's own, ``make_fx``'s) the real
    entry is lifted into the mode as a constant, and an entry
    modified in place since it was stored is rebuilt. The key
    holds everything the value depends on (size, device, dtype, ...); the oldest entries
    are dropped beyond 128 entries or 256 MB (a larger entry is kept alone), and
    :func:`clear_caches` empties the cache.
    """
    hit = _CACHE.get(key)
    if torch.compiler.is_compiling():  # a miss builds a traced tensor, never kept (and dynamo cannot ask the mode)
        return hit[0] if hit is not None else build()
    if _strict_fake_mode() is not None:  # the real entry (built outside the modes, kept), lifted into them
        return constant(lambda: cached(key, build))
    if hit is not None and hit[0]._version == hit[1]:
        return hit[0]
    # a dispatch mode that is not a tracer's (selective checkpointing's, a flop counter's) does not
    # see the entry built: it saved the builder's output in a forward and in the recompute, where the
    # cache hit, gave it to the next operation (silently wrong TPS gradients)
    aside = _dispatch_stack_length() > 0 and not _tracer_mode()
    with outside_modes() if aside else _NOTHING, (
            torch.inference_mode(False) if torch.is_inference_mode_enabled() else _NOTHING):
        value = build()
        if isinstance(value, torch.Tensor) and value.is_inference():  # (a .to() that returned its input)
            value = value.clone()
    # (a tensor built inside a torch.func transform may be its wrapper, dead once the transform
    # returns: kept, it broke a later torch.func.hessian with an internal assert of functorch)
    if type(value) is torch.Tensor and not torch.jit.is_tracing() and not in_functorch(value):
        size = _nbytes(value)
        with _CACHE_LOCK:  # (threads evicting at once dropped one key twice: a KeyError out of warp)
            _CACHE.pop(key, None)  # (a stale entry: modified in place)
            held = sum(_nbytes(entry) for entry, _ in _CACHE.values())
            # the newest is always kept, alone if it is larger than the bound (rebuilt at every call,
            # a TPS operator at 600x600 took 3 s where the cached one takes 37 ms)
            while _CACHE and (len(_CACHE) >= _CACHE_SIZE or held + size > _CACHE_BYTES):
                held -= _nbytes(_CACHE.pop(next(iter(_CACHE)))[0])
            _CACHE[key] = (value, value._version)
    return value


def _strict_fake_mode() -> Any:
    """The ``FakeTensorMode`` active here where it refuses real tensors (a user's own, and
    ``make_fx``'s: torch.export's takes them as constants), else ``None``. A real entry
    mixed with the mode's fake tensors failed with torch's "Please convert all Tensors to
    FakeTensors first", depending on whether an earlier call had filled the cache."""
    mode = _fake_mode()
    return mode if mode is not None and not mode.allow_non_fake_inputs else None


def _fake_mode() -> Any:
    """The ``FakeTensorMode`` active here, or ``None``."""
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE)


def _tracer_mode() -> bool:
    """Whether a tracer's dispatch mode is active here (fake tensors, ``make_fx``'s proxies,
    functionalisation: ``torch.export``, AOT autograd), which records what is built."""
    keys = torch._C._TorchDispatchModeKey
    return any(torch._C._get_dispatch_mode(k) is not None for k in (keys.FAKE, keys.PROXY, keys.FUNCTIONAL))


def constant(build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, a tensor made from an object's own values (a transform's identity); under a
    ``FakeTensorMode`` that refuses real tensors (a user's, ``make_fx``'s) made outside the
    modes and lifted into them as a constant, as :func:`cached` does its entries (as torch.tensor's
    data is: make_fx records it as one; lift_fresh_copy copied a 49 MB TPS operator at every call)."""
    if torch.compiler.is_compiling() or _strict_fake_mode() is None:
        return build()
    with outside_modes():
        real = build()
    return torch.ops.aten.lift_fresh.default(real)


def tracing_or_faking() -> bool:
    """Whether a compiler traces this call or a ``FakeTensorMode`` is active: tensors made here
    have no values to read, and no device work is done."""
    return torch.compiler.is_compiling() or _fake_mode() is not None


def outside_modes() -> contextlib.AbstractContextManager[Any]:
    """Inside: no dispatch mode is active, so tensors are real even under a ``FakeTensorMode``
    or ``make_fx`` (for values computed once from constants, such as a transform's start or a
    cached grid part, which shapes-only tracing would otherwise refuse to read)."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


@contextlib.contextmanager
def outside_jit_trace() -> Iterator[None]:
    """Inside, ``torch.jit.trace`` records nothing (as :func:`outside_modes` for the dispatch
    modes): for a check computed once from constants, whose operations would take a trace's
    variables' names, so that the trace's sanity check, which traces again, finds another graph."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def clear_caches() -> None:
    """Drop every cached grid part (base grids, grid operators, TPS solutions) and the
    identities made off the CPU.

    torchstn keeps the θ-independent parts of its grids per (size, device, dtype, ...),
    at most 128 of them and 256 MB; call this to free their memory, e.g. after warping at
    many sizes. Later calls rebuild what they need.
    """
    with _CACHE_LOCK:
        _CACHE.clear()


def differentiable_vjp(
    fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], grad_output: torch.Tensor, needed: Sequence[bool]
) -> tuple[torch.Tensor | None, ...]:
    """The vector-Jacobian product of ``fn`` at ``inputs``, itself differentiable.

    What a hand-written backward returns when the graph of the gradient is asked for
    (``create_graph=True``: gradient penalties, Hessians, ``torch.func``): the closed-form
    kernels are first-order only, so the gradient is recomputed through ``fn``, plain
    differentiable operations, and autograd records it. ``needed`` says which inputs get
    a gradient (``ctx.needs_input_grad``); the others get ``None``.

    ``fn`` runs on aliases of the inputs (views, in the graph): the saved inputs may depend
    on each other in the caller's graph (θ predicted from x by a localisation net), and the
    gradient with respect to an input itself would then add the path through the other one,
    which the caller's backward counts again (a gradient penalty on an ST model's input
    came out 31% high). The gradient with respect to an alias is the partial derivative.
    """
    with torch.enable_grad():
        aliases = [t.view_as(t) if need else t for t, need in zip(inputs, needed)]
        out = fn(*aliases)
        wanted = [a for a, need in zip(aliases, needed) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_output, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needed)


#: whether a tensor is one of autograd's legacy batched tensors (private to torch; none if it moves)
_is_legacy_batched: Callable[[torch.Tensor], bool] = getattr(
    torch._C._functorch, "is_legacy_batchedtensor", lambda t: False
)


def batched_gradient(grad_output: torch.Tensor) -> bool:
    """True for an output gradient that stands for a batch of them: what a backward gets from
    autograd's batched gradients (``torch.autograd.grad(is_grads_batched=True)``,
    ``jacobian(vectorize=True)``, ``gradcheck(check_batched_grad=True)``, whose legacy batched
    tensors have no storage) and from ``torch.func.vmap``. A closed-form backward that reads
    memory (ctypes, in-place arithmetic) cannot take it: :func:`differentiable_vjp` can."""
    return _is_legacy_batched(grad_output) or in_functorch(grad_output)



def eager_tensors(*tensors: torch.Tensor) -> bool:
    """True when nothing can record, trace or transform an operation on ``tensors``: plain
    tensors (or Parameters; no subclass, no fake tensor) in eager mode, not under
    ``torch.jit.trace`` (which the TorchScript ONNX exporter runs), ``torch.compile`` or
    ``torch.export`` (whose fake tensors are subclasses; the dynamo ONNX exporter runs it),
    nor inside ``torch.func`` transforms, a forward-mode AD level (plain operations have
    forward derivatives) or a torch function or dispatch mode (which see the dispatcher's calls).

    The hand-written fast paths (custom autograd Functions, the fused operator called without
    the dispatcher) are taken only then; everywhere else the plain expression or the
    registered operator, which every tracer, exporter and transform understands. The one
    question for every layer, on the hot path: it asks torch's C flags only (not
    ``torch.onnx.is_in_onnx_export()``, which costs 3.5 µs, more than the rest).
    """
    for t in tensors:  # (a loop: a generator expression cost as much as the rest)
        if type(t) not in _PLAIN:
            return False
    return not (  # (the flags' own functions bound once: 1.1 -> 0.6 µs a call against their wrappers)
        _is_compiling()
        or _is_tracing()
        or (_function_mode_enabled() and _recording_function_mode())
        or _dispatch_stack_length() > 0
        or _functorch_transforms_active()
        or _FORWARD_AD._current_level >= 0
    )


def profiling() -> bool:
    """Whether ``torch.profiler`` records operators here."""
    return _profiler_enabled()


def direct_call(*tensors: torch.Tensor) -> bool:
    """Whether a fused kernel may be called without the dispatcher: :func:`eager_tensors`, and
    ``torch.profiler`` off (it records the dispatcher's calls: a direct one is missing from the
    profile). Only the choice between the direct call and the operator asks it; the other eager
    fast paths (value checks, hand-written autograd Functions) stay as they run unprofiled."""
    return eager_tensors(*tensors) and not profiling()


def constant_result(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`torch.compiler.assume_constant_result`, without importing ``torch._dynamo`` for it.

    The decorator only marks ``fn`` (an attribute that ``torch.compile`` reads when it meets
    the call, and runs ``fn`` once instead of tracing it), but to do so it imports
    ``torch._dynamo``, with sympy, in every process, compiled or not: ``import torchstn`` took
    2.91 s with it and takes 1.54 s without, ``import torch`` alone 1.42 s (medians of 9 runs,
    ``farm-bench -n 9 -- python -c "import torchstn"``, one Zen 4 core, 2026-12-04). Where
    dynamo is loaded already this is torch's decorator; elsewhere it sets
    the same mark (``tests/test_compile.py`` checks that the two agree, so a torch that marks
    another way fails there, not in a compiled graph).
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


# what eager_tensors asks, bound once: torch.compiler.is_compiling, torch.jit.is_tracing's C flag
# (the same in eager Python), functorch_active's and forward_ad_active's
_is_compiling, _is_tracing = torch.compiler.is_compiling, torch._C._is_tracing
_function_mode_enabled, _dispatch_stack_length = torch._C._is_torch_function_mode_enabled, torch._C._len_torch_dispatch_stack
_functorch_transforms_active, _FORWARD_AD = torch._C._are_functorch_transforms_active, torch.autograd.forward_ad
_profiler_enabled = torch._C._autograd._profiler_enabled


def _recording_function_mode() -> bool:
    """A torch function mode is active that is not ``torch.device``'s (``with torch.device(...)``,
    ``torch.set_default_device``), which only picks the device of factory functions and sees
    the fast paths' calls as it sees any: a call under it is still plain eager (measured: one
    8x8x8 warp 79 µs through the operator under ``torch.set_default_device``, 24 µs direct)."""
    return any(not isinstance(mode, _DEVICE_MODE) for mode in torch.overrides._get_current_function_mode_stack())


#: the torch function mode of ``torch.device`` as a context manager (private to torch; no mode is
#: taken as harmless if it moves)
_DEVICE_MODE: type | tuple = getattr(importlib.import_module("torch.utils._device"), "DeviceContext", ())


#: the tensor types :func:`eager_tensors` takes as plain (a module's weights are Parameters)
_PLAIN = (torch.Tensor, torch.nn.Parameter)

#: :func:`eager_tensors`' questions but compiling's, for compiled code that asks them itself
#: (``sampling/csrc/fast_call.cpp``, in this order, after its caller asked
#: ``torch.compiler.is_compiling()``, which ``torch.compile`` reads as true while it traces):
#: the plain tensor types; functions of no argument, each true when something would record or
#: transform a call (the second asked only when the first, a function mode, is on); and the
#: forward AD module, whose ``_current_level`` is -1 outside a dual level.
EAGER_QUESTIONS = (*_PLAIN, _is_tracing, _function_mode_enabled, _recording_function_mode, _dispatch_stack_length,
                   _functorch_transforms_active, _FORWARD_AD, _profiler_enabled)


def exporting() -> bool:
    """True inside ``torch.export`` (and the ONNX export built on it).

    Modules then keep no record of the pass (``last_params`` ...): an exported program
    has no module state, and torch warns about each tensor attribute assigned during export.
    """
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting is not None and is_exporting())


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...), also on torch
    2.3, whose query takes no device."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no per-device query
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    except RuntimeError:  # a device without autocast ("meta": "unknown device type for autocast")
        return False


def device_type_of(t: torch.Tensor) -> str:
    """``t.device.type``, cheaply for a CPU tensor (``is_cpu`` costs a third of ``device.type``'s
    0.7 µs), as the autocast queries of a sampling call ask it."""
    return "cpu" if t.is_cpu else t.device.type


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast where it is on: it would run a grid's or a composition's matmul in low
    precision (a bfloat16 grid misplaces points by up to 2^-8 of the image size)."""
    return torch.autocast(device_type, enabled=False) if autocast_enabled(device_type) else _NOTHING


_NOTHING = contextlib.nullcontext()  # (reusable: one fewer object per call)


def forward_ad_active() -> bool:
    """True inside ``torch.autograd.forward_ad.dual_level()`` (which ``torch.func.jvp``,
    ``jacfwd`` and ``hessian`` open too), where dual tensors may exist (torch keeps the open
    level in a module attribute; it has no public query). Asked of the level, not of the
    tensors: inside ``torch.func.hessian``'s inner ``jacrev`` a tangent of the outer level is
    hidden from ``unpack_dual``."""
    return torch.autograd.forward_ad._current_level >= 0


def nested_forward_ad() -> bool:
    """True inside two or more ``torch.func`` forward-mode transforms (``jacfwd(jacfwd(f))``,
    a ``jvp`` of a ``jvp``), where an ``autograd.Function``'s ``jvp`` loses the inner level's
    tangent-of-tangent terms: torch 2.13 does not carry the outer tangent through the tensors
    the Function saved for its forward derivative, so a second derivative came out 0 without
    an error (``x ** 3`` written as a Function with its ``jvp``: ``jacfwd(jacfwd(f))(2.)`` 0,
    not 12). torch has no public query of the transforms' stack."""
    if torch.autograd.forward_ad._current_level < 0 or not torch._C._are_functorch_transforms_active():
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return sum(level.key() == TransformType.Jvp for level in retrieve_all_functorch_interpreters()) >= 2


def functorch_active() -> bool:
    """True inside any ``torch.func`` transform (``grad``, ``vmap``, ...), whichever tensors it
    wraps: a tensor made inside (an identity θ, a constant) is plain but meets wrapped ones,
    and an ``autograd.Function`` without ``setup_context`` or a branch on a value fails there."""
    return torch._C._are_functorch_transforms_active()


def in_functorch(*tensors: torch.Tensor) -> bool:
    """True if a tensor is inside a ``torch.func`` transform (``grad``, ``vmap``, ...).

    torchstn's operators take the plain-expression path there: ``torch.library``'s
    autograd formulas do not support ``torch.func`` in torch 2.13.
    """
    if torch.compiler.is_compiling():  # dynamo handles torch.func itself
        return False
    # torch has no public "is this tensor wrapped by a torch.func transform?" query (the
    # answer is torch._C._functorch.is_functorch_wrapped_tensor). The public
    # torch.func.debug_unwrap returns a wrapped tensor's inner tensor and any other tensor
    # itself, so identity tells; its result is only compared, never computed with (which
    # its documentation warns against), and it costs what the private query does.
    return any(torch.func.debug_unwrap(t, recurse=False) is not t for t in tensors)
