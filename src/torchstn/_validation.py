"""The one place where user input is checked.

Every public function validates its arguments through these helpers so that
messages read the same everywhere: they name the argument, say what was
expected and what arrived. ``TypeError`` for a wrong type, ``ValueError`` for
a wrong shape or value, ``NotImplementedError`` for an unsupported dimension.

Under ``torch.jit.trace`` (and the TorchScript-based ONNX export) a tensor's sizes are
themselves traced tensors: comparing one with a number would read it as a Python
value, which the tracer warns about and cannot record. The checks that compare sizes
are skipped there (:func:`sizes_traced`); the checks of rank, dtype and type still run.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import operator
import os
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from torchstn._tracing import eager_tensors

__all__ = [
    "HALF_DTYPES",
    "caller_stacklevel",
    "check_bool",
    "check_choice",
    "check_float_dtype",
    "check_floating",
    "check_input",
    "check_int",
    "check_module",
    "check_number",
    "check_params",
    "check_path",
    "check_positive",
    "check_same_batch",
    "check_scale_entry",
    "check_size",
    "check_strided",
    "check_tensor",
    "first_line",
    "sizes_traced",
]


#: the half-precision dtypes, which are computed in float32 where their precision or range does not do
#: (a homography's division, a matrix inverse, torch's CPU sampler on large planes, a tolerance)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def sizes_traced() -> bool:
    """True under ``torch.jit.trace``, where sizes are traced tensors and checks that compare them are skipped."""
    return torch.jit.is_tracing()


def check_tensor(name: str, value: object, *, ndim: int | Iterable[int] | None = None) -> torch.Tensor:
    """Check that ``value`` is a tensor, optionally of rank ``ndim`` (an int or a set of ints)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_type_name(value)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.dim() not in allowed:
            expected = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have {expected} dimensions, got shape {tuple(value.shape)}")
    return value


def check_floating(name: str, value: torch.Tensor) -> torch.Tensor:
    """Check that a tensor has a floating-point dtype (the sampler and grids are not defined on integers)."""
    if not value.is_floating_point():
        raise TypeError(
            f"{name} must have a floating-point dtype (float16, bfloat16, float32 or float64), "
            f"got {value.dtype}; convert it with .float() first"
        )
    return value


def check_float_dtype(name: str, dtype: object) -> torch.dtype:
    """Check a floating-point ``torch.dtype`` (a string such as ``"float32"`` is refused, as
    torch's factories refuse it)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype such as torch.float32, got {_type_name(dtype)}")
    if not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point dtype, got {dtype}")
    return dtype


def check_strided(name: str, value: torch.Tensor) -> torch.Tensor:
    """Check that a tensor is dense (strided): a sparse or MKL-DNN tensor has no strided memory for a
    kernel to read (the fused kernel asked for its data pointer; ``F.grid_sample`` has no kernel for it)."""
    if value.layout is not torch.strided:
        raise TypeError(
            f"{name} must be a strided (dense) tensor, got {value.layout}; convert it with .to_dense() first"
        )
    if value.is_nested:  # (torch.nested.nested_tensor's layout is torch.strided, its sizes ragged)
        raise TypeError(f"{name} must be a dense tensor, got a nested tensor; stack its samples with "
                        ".to_padded_tensor(0.0) or warp each one alone")
    return value


def check_input(x: object, shape: Sequence[int] | None, ndim: int, built: str) -> torch.Tensor:
    """Check a network's input ``x``: a floating tensor of rank ``ndim`` and, where the network
    declares one, of shape ``(B, *shape)``; the message names what ``built`` (``"the model"``,
    ``"the localisation net"``) was built for. Sizes traced by ``torch.jit.trace`` are not compared."""
    check_floating("x", check_tensor("x", x, ndim=ndim))
    if shape is not None and not sizes_traced() and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(
            f"x must have shape (B, {', '.join(map(str, shape))}), got {tuple(x.shape)}: {built} was built for "
            f"in_channels={shape[0]}, input_size={tuple(shape[1:])}"
        )
    return x


def check_params(name: str, params: object, num_params: int, family: str) -> torch.Tensor:
    """Check a ``(B, P)`` parameter tensor for a transform with ``num_params`` parameters."""
    params = check_strided(name, check_tensor(name, params, ndim=2))
    check_floating(name, params)
    if not sizes_traced() and params.shape[1] != num_params:
        raise ValueError(
            f"{name} for {family} must have shape (B, {num_params}), got {tuple(params.shape)}"
        )
    return params


def check_same_batch(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Check that two tensors share their batch size (nothing is broadcast silently)."""
    if not sizes_traced() and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same batch size, "
            f"got {a.shape[0]} ({name_a} shape {tuple(a.shape)}) and {b.shape[0]} ({name_b} shape {tuple(b.shape)})"
        )


def check_size(name: str, size: object, ndim: int) -> tuple[int, ...]:
    """Check an output spatial size: ``ndim`` positive ints, ``(H, W)`` or ``(D, H, W)``.

    Under ``torch.jit.trace`` the sizes of a traced tensor (``x.shape[2:]``, 0-d tensors)
    are accepted as they are, unread, so that the trace records them.
    """
    names = {1: "(L,)", 2: "(H, W)", 3: "(D, H, W)"}[ndim]
    if isinstance(size, torch.Size):
        size = tuple(size)
    if not isinstance(size, Sequence) or isinstance(size, str):
        raise TypeError(f"{name} must be a sequence of {ndim} ints {names}, got {_type_name(size)}")
    if sizes_traced() and len(size) == ndim and all(isinstance(s, torch.Tensor) and s.dim() == 0 for s in size):
        return tuple(size)  # type: ignore[return-value]
    ints = tuple(_index(s) for s in size)
    if len(size) != ndim or any(s is None for s in ints):
        raise ValueError(f"{name} must be {ndim} ints {names}, got {tuple(size)!r}")
    if any(s <= 0 for s in ints):  # type: ignore[operator]
        raise ValueError(f"{name} must be positive, got {tuple(size)!r}")
    return ints  # type: ignore[return-value]


def _index(value: object) -> int | None:
    """``value`` as a Python int where it is an integer: an ``int``, or an integer with
    ``__index__`` (a numpy integer, a 0-d integer tensor: ``F.affine_grid`` takes them); ``None``
    for anything else, bools included."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and (value.dim() != 0 or value.dtype == torch.bool or value.is_floating_point()):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Check a string option against its allowed values."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(choices)}, got {_type_name(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_names(name: str, value: str | Sequence[str], choices: Sequence[str] | None = None) -> tuple[str, ...]:
    """``value`` as a tuple of names: one string is one name (not its characters), else a sequence of
    strings, each one of ``choices`` where they are given.

    Raises:
        TypeError: ``value`` is not a string or a sequence of strings.
        ValueError: a name is not one of ``choices`` (the message lists them).
    """
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):  # (a set, a dict's keys)
        raise TypeError(f"{name} must be a str or a sequence of str, got {value!r}")
    return tuple(names) if choices is None else tuple(check_choice(name, n, choices) for n in names)


def _type_name(value: object) -> str:
    """The type of ``value`` as an error names it: qualified outside the builtins (NumPy 2's
    ``numpy.bool`` is named ``bool``: "must be a bool, got bool")."""
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def check_module(name: str, value: object) -> torch.nn.Module:
    """Check an ``nn.Module`` argument (anything else failed with an AttributeError on ``.modules()``)."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{name} must be an nn.Module, got {_type_name(value)}")
    return value


def check_path(name: str, value: object) -> object:
    """Check ``None``, a ``str`` or an ``os.PathLike`` (a path argument); returns it (``True``
    failed inside pathlib, naming no argument)."""
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (a str or an os.PathLike) or None, got {_type_name(value)}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Check a flag: a real ``bool`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_type_name(value)}")
    return value


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check an integer option, optionally within ``[minimum, maximum]``: an ``int`` or an integer
    with ``__index__`` (a numpy integer, a 0-d integer tensor, as sizes take them), returned as an
    ``int``; ``bool`` is refused."""
    index = _index(value)
    if index is None:
        raise TypeError(f"{name} must be an int, got {_type_name(value)}")
    if (minimum is not None and index < minimum) or (maximum is not None and index > maximum):
        raise ValueError(f"{name} must be {_bounds(minimum, maximum)}, got {index!r}")
    return index


def parse_json(text: str, source: str | Path) -> Any:
    """``json.loads(text)``; a ValueError naming ``source`` (the file, and the line where it is
    one record of a JSON-lines file) where it is not JSON (a half-written or emptied file).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON ({err}): a file cut short or edited?") from None


def figure_file(out: str | Path) -> Path:
    """The file a figure saved at ``out`` is written to: ``out``, with ``.png`` where it has no
    suffix (matplotlib adds it, and a caller that says what it wrote must name that file).

    Raises:
        ValueError: ``out`` is a directory (matplotlib would write ``out.png`` beside it).
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a directory; give the PNG file to write")
    return out if out.suffix else out.with_name(out.name + ".png")


def check_number(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """Check a finite real number (an int, a float or a numpy scalar; ``bool`` is refused), optionally
    within ``[low, high]``; returns a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_type_name(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {_bounds(low, high)}, got {value!r}")
    return value


def _bounds(low: float | None, high: float | None) -> str:
    """``">= low"``, ``"<= high"`` or ``"in [low, high]"``: the range of a number in a message."""
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f">= {low}" if low is not None else f"<= {high}"


def check_positive(name: str, value: object) -> float:
    """Check a finite real number ``> 0`` (a rate, a scale); returns a float."""
    value = check_number(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name where the message is empty
    (``torch.load`` of an empty file raises ``EOFError('')``): what a one-line error quotes."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def caller_stacklevel() -> int:
    """The ``stacklevel`` that shows a warning raised by this function's caller at the first
    line outside torchstn and torch: the user's call (``warp``, ``sample``, a module's
    forward, ``torch.compile``, ``distorted_mnist``...), however many frames lie in between."""
    inside = (str(Path(__file__).parent) + os.sep, str(Path(torch.__file__).parent) + os.sep)  # torchstn, torch
    frame, level = inspect.currentframe().f_back, 1  # the frame that calls warnings.warn: level 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


def check_scale_entry(name: str, matrix: torch.Tensor) -> None:
    """Refuse homogeneous matrices ``(B, n, n)`` whose last entry is 0 (eager calls): every matrix
    family's parameters fix it to 1, dividing by it, and such a matrix (one that sends the centre
    of the output to infinity) has none; the division gave NaN or inf without a word. A NaN entry
    stays NaN (NaN in, NaN out)."""
    if not eager_tensors(matrix) or matrix.is_meta:  # (under a tracer the values are not known)
        return
    zero = torch.nonzero(matrix[:, -1, -1] == 0)
    if len(zero):
        i, k = int(zero[0, 0]), matrix.shape[-1] - 1
        raise ValueError(f"{name}[{i}, {k}, {k}] is 0: a transform's parameters divide the matrix by that entry "
                         f"(they fix it to 1), and a matrix whose entry is 0 sends the centre of the output to "
                         f"infinity")
