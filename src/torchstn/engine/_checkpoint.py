"""Checkpoints: weights in safetensors with the config as metadata, training state beside them.

Where they live in a run directory is :class:`torchstn.engine.RunDir`'s business. The ``.safetensors`` file alone is enough to rebuild and evaluate the model
(:func:`load_model`); the ``.state.pt`` file is only needed to continue training.
The two are written one after the other, so an interrupted save (or a file copied
in from elsewhere) can leave a pair from different epochs: both carry the epoch,
the step and a random write id, and :func:`read_training_state` refuses a pair
whose three disagree rather than resume with weights of one epoch and optimiser
state of another.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from torchstn._validation import first_line
from torchstn.engine._config import TrainConfig

__all__ = [
    "UNRECORDED",
    "CheckpointError",
    "atomic_write",
    "capture_rng",
    "evaluation_draws",
    "read_checkpoint",
    "read_training_state",
    "restore_rng",
    "save_checkpoint",
    "state_path",
]

FORMAT = "torchstn-checkpoint-1"


class _Unrecorded:
    def __repr__(self) -> str:
        return "UNRECORDED"


#: ``save_checkpoint(data_law=UNRECORDED)``: the law of the run's data is not known (sets given to
#: the trainer), so none is stored
UNRECORDED = _Unrecorded()


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not a torchstn checkpoint."""


def capture_rng() -> dict[str, Any]:
    """Every random generator's state (python, numpy, torch CPU and CUDA), as tensors and lists."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state["numpy"] = [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)]
    return state


def _restore_torch_rng(state: dict[str, Any]) -> None:
    """Restore torch's CPU and CUDA generators from a :func:`capture_rng` state: the CUDA devices
    both machines have (a run may resume, or be evaluated, on fewer)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    _restore_torch_rng(state)
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def state_path(weights: str | Path, suffix: str = ".state.pt") -> Path:
    """The training-state file written beside a weights file: ``<stem>.state.pt``."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + suffix)


def _previous_state_path(weights: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the state of the weights it is replacing until the new
    weights are written: ``<stem>.prev.state.pt`` (see :func:`read_training_state`)."""
    return state_path(weights, ".prev.state.pt")


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it over ``path``.

    A reader (or an interrupted writer) sees the old file or the new one, never half of one;
    the new file's bytes reach the disk before the rename, and the rename before the call
    returns (``fsync`` of the file, then of its directory), so a power cut or a crash of the
    system after it leaves the new file, not an empty one under its name. The file gets the
    mode Python gives a new file (from the umask, as ``config.json``'s): safetensors' writer
    made its files readable by their owner only.
    """
    path = Path(path)
    # a name of this write's own: two processes writing one file (two reproduce commands adding to
    # one record) once deleted and renamed each other's ".tmp"
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.touch()
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        _sync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # (a write that failed leaves no file behind)
    _sync(path.parent)
    return path


def _sync(path: Path) -> None:
    """``fsync`` a file or a directory (a directory where the system cannot sync one, as on
    Windows, is left as it is). A file is opened for writing: Windows syncs no other handle."""
    directory = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def _stored_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as safetensors stores it: a tensor that two keys share (tied
    parameters, one localisation net in two places) is copied for the second key, since
    safetensors refuses shared memory ('Some tensors share memory'); loading both keys
    restores the one tensor."""
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return tensors


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    config: TrainConfig,
    *,
    epoch: int,
    step: int,
    metrics: dict[str, Any] | None = None,
    training_state: dict[str, Any] | None = None,
    data_law: dict[str, Any] | None | _Unrecorded = UNRECORDED,
) -> Path:
    """Write ``path`` (``.safetensors``) and, with ``training_state``, ``<stem>.state.pt`` beside it.

    Args:
        path: the weights file, ending in ``.safetensors``.
        model: the model (unwrapped from DDP).
        config: the run's config; stored in the metadata, so the file rebuilds the model.
        epoch, step: epochs and iterations done.
        metrics: the last evaluation, stored in the metadata.
        training_state: optimiser/scheduler/RNG state (anything ``torch.save`` takes);
            it is stored with ``epoch``, ``step`` and a random ``write_id`` that the
            weights' metadata repeats, so that the pair can be checked on resume.
        data_law: the law the training data were drawn by (:func:`torchstn.data.data_law`; ``None``:
            a set drawn by no recipe), stored in the metadata; :data:`UNRECORDED` (a run trained on
            sets given to it) stores nothing.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = _stored_tensors(model)
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "epoch": str(epoch),
        "step": str(step),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
    }
    if data_law is not UNRECORDED:
        metadata["data_law"] = json.dumps(data_law, sort_keys=True)
    if training_state is not None:
        # from os.urandom: the id draws nothing from the generators a resumed run restores
        stamp = {"epoch": epoch, "step": step, "write_id": uuid.uuid4().hex}
        metadata["write_id"] = stamp["write_id"]
        # The old state is kept (renamed: atomic) until the new weights are written, so that a
        # kill between the two files leaves the old pair, which read_training_state takes
        # (the old state had been overwritten: the run could not be resumed at all)
        if state_path(path).is_file() and path.is_file():
            os.replace(state_path(path), _previous_state_path(path))
        atomic_write(state_path(path), lambda p: torch.save({**training_state, **stamp}, p))
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))
    if training_state is not None:
        _previous_state_path(path).unlink(missing_ok=True)
    return path


def read_checkpoint(
    path: str | Path, *, tensors: bool = True
) -> tuple[dict[str, torch.Tensor], TrainConfig, dict[str, Any]]:
    """Weights, config and ``{"epoch", "step", "metrics"}`` of a checkpoint file, and ``"data_law"``
    where the file records it (runs trained since 2026-12-05 on sets they loaded themselves);
    ``tensors=False`` reads the metadata alone (the weights ``{}``).

    Raises:
        CheckpointError: the file is not a readable torchstn checkpoint.
    """
    path = Path(path)
    metadata, weights = _read_safetensors(path, tensors=tensors)
    config = _metadata_field(path, metadata, "config", lambda text: TrainConfig.from_dict(_json_object(text)))
    info = {key: _metadata_field(path, metadata, key, int) for key in ("epoch", "step")}
    info["metrics"] = _metadata_field(path, metadata, "metrics", _json_object)
    if "data_law" in metadata:
        info["data_law"] = _metadata_field(path, metadata, "data_law", _json_law)
    return weights, config, info


def _metadata_field(path: Path, metadata: dict[str, str], key: str, parse: Callable[[str], Any]) -> Any:
    """``parse`` of the metadata field ``key`` of the checkpoint ``path``.

    Raises:
        CheckpointError: the field is missing or does not parse (a file of another version, or
            edited), naming the file and the field (a ``KeyError`` or the JSON parser's error
            named neither).
    """
    if key not in metadata:
        raise CheckpointError(f"{path} is not a readable torchstn checkpoint: its metadata has no {key!r}")
    try:
        return parse(metadata[key])
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable torchstn checkpoint: its metadata {key!r} does not parse ({first_line(err)})"
        ) from None


def _json_law(text: str) -> dict[str, Any] | None:
    """The law ``text`` holds: a JSON object, or ``null``."""
    return None if text == "null" else _json_object(text)


def _json_object(text: str) -> dict[str, Any]:
    """The JSON object ``text`` holds (a ``ValueError`` for anything else)."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"a JSON object was expected, got {type(value).__name__}")
    return value


def _read_safetensors(path: Path, *, tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and (if ``tensors``) the tensors of a torchstn checkpoint file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(err)}") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a torchstn checkpoint (no '{FORMAT}' metadata)")
    return metadata, loaded


def _load_state(state_file: Path) -> Any:
    try:
        return torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as err:  # (an empty file: EOFError(''), whose first line was looked up: IndexError)
        raise CheckpointError(f"cannot read training state {state_file}: {first_line(err)}") from None


def _stamp(state: Any) -> tuple[Any, ...]:
    """The (epoch, step, write id) a state file was written with."""
    return tuple(state.get(k) if isinstance(state, dict) else None for k in ("epoch", "step", "write_id"))


def _weights_stamp(path: Path) -> tuple[Any, ...]:
    """The (epoch, step, write id) the weights ``path`` were written with (as :func:`_stamp` reads a state's)."""
    metadata, _ = _read_safetensors(path, tensors=False)
    epoch, step = (_metadata_field(path, metadata, key, int) for key in ("epoch", "step"))
    return epoch, step, metadata.get("write_id")


def _stamp_text(epoch: object, step: object, write_id: object) -> str:
    return f"epoch {epoch}, step {step}, write id {write_id or 'none'}"


@contextlib.contextmanager
def evaluation_draws(checkpoint: str | Path, seed: int) -> Iterator[None]:
    """Inside: torch's generators (forked) as the run's evaluation of ``checkpoint`` found them.

    The trainer evaluates each epoch with the generators forked and saves them after, beside
    the ``last`` checkpoint and the ``best`` one; where no such state belongs to ``checkpoint``
    (a copied file, a ``best`` one older than that) they are seeded with ``seed``. A sampling
    model (P-STN) evaluated inside draws the test-time θ of the run's recorded metrics (on its
    test images and evaluation batch size), and the same θ every time: ``torchstn eval`` gave
    three errors in three runs of one command, none the run's own. The saved files are read and never touched (a
    training run may be saving them at that moment).
    """
    with torch.random.fork_rng():
        state = _saved_rng(Path(checkpoint))
        if state is None:
            torch.manual_seed(seed)
        else:
            _restore_torch_rng(state)
        yield


def _saved_rng(path: Path) -> dict[str, Any] | None:
    """The generators' state saved with the weights ``path`` (in the state file written with them,
    or the previous one an interrupted save left), or ``None``; read only (unlike
    :func:`read_training_state`, which repairs an interrupted save for ``--resume``)."""
    try:
        weights = _weights_stamp(path)
    except (CheckpointError, KeyError, ValueError):
        return None
    for candidate in (_previous_state_path(path), state_path(path)):
        if candidate.is_file():
            try:
                state = _load_state(candidate)
            except CheckpointError:
                continue
            if _stamp(state) == weights and isinstance(state.get("rng"), dict):
                return state["rng"]
    return None


def read_training_state(path: str | Path) -> dict[str, Any]:
    """The optimiser/scheduler/RNG state saved beside a checkpoint (for ``--resume``), checked against it.

    The state and the weights must have been written together: the same epoch, step
    and write id (see :func:`save_checkpoint`). Pairs written before the write id
    existed carry none in either file; they are accepted when their epochs and steps
    agree.

    Raises:
        CheckpointError: the state file is missing or unreadable, or it does not belong
            to the weights ``path`` (the message names both files and what each holds).
    """
    path = Path(path)
    state_file, previous = state_path(path), _previous_state_path(path)
    weights = _weights_stamp(path)
    if previous.is_file():  # a save interrupted before its weights were written: its old pair if whole
        kept = _load_state(previous)
        if _stamp(kept) == weights:
            os.replace(previous, state_file)  # (atomic: the pair is whole before and after)
            return kept
    if not state_file.is_file():
        raise CheckpointError(f"cannot resume: {state_file} is missing (only 'last' checkpoints hold training state)")
    state = _load_state(state_file)
    saved = _stamp(state)
    if saved != weights:
        raise CheckpointError(
            f"cannot resume: {path} ({_stamp_text(*weights)}) and {state_file} ({_stamp_text(*saved)}) were not "
            "written together (a save interrupted between the two files, or a file copied from another run or "
            "epoch); resuming would mix two epochs. Put back the matching pair or start a new run"
        )
    return state
