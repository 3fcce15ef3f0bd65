"""The run directory: the one place that knows its layout.

A run directory looks like::

    runs/NAME/
        config.json                    the TrainConfig
        metrics.jsonl                  one line per epoch
        checkpoints/last.safetensors   weights + config + epoch/step/metrics (metadata)
        checkpoints/last.state.pt      optimiser, scheduler and RNG state (for resuming)
        checkpoints/best.safetensors   the weights of the epoch with the lowest test error
        checkpoints/best.state.pt      the RNG state its evaluation drew from (``evaluation_draws``)
        training.lock                  while a process trains the run: its pid (``RunDir.locked``)

The trainer, ``torchstn reproduce``, ``eval`` and ``visualize`` reach these files only
through :class:`RunDir`: the paths, the metrics history, atomic writes and the
question "may this run be resumed with that config?".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchstn._locks import LockBusy, PidLock
from torchstn._validation import check_choice, first_line, parse_json
from torchstn.engine._checkpoint import (
    UNRECORDED,
    CheckpointError,
    _Unrecorded,
    _previous_state_path,
    atomic_write,
    read_checkpoint,
    save_checkpoint,
    state_path,
)
from torchstn.engine._config import TrainConfig
from torchstn.engine._data import to_channels_last
from torchstn.models import create_model, list_models

__all__ = ["RESUMABLE_CHANGES", "RunDir", "load_model", "resolve_checkpoint"]

#: config fields a resumed run may change: its length, and where it runs or finds MNIST
RESUMABLE_CHANGES = ("epochs", "steps", "device", "data_dir", "eval_batch_size")


class RunDir:
    """A run directory (it need not exist yet).

    Example:
        >>> run = RunDir("runs/st-cnn-rts")
        >>> run.checkpoint("best").as_posix()
        'runs/st-cnn-rts/checkpoints/best.safetensors'
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run directory a ``checkpoints/<name>.safetensors`` file belongs to."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log_path(self) -> Path:
        """Where a run trained in the background writes its output: ``<run>.log`` beside the directory
        (outside it, so that restarting the run does not delete its log)."""
        return self.path.with_name(self.path.name + ".log")

    @property
    def lock_path(self) -> Path:
        """The lock of the process training the run (``torchstn reproduce``'s ``CellLock``):
        ``<run>.lock`` beside the directory (outside it, so that restarting the run keeps it)."""
        return self.path.with_name(self.path.name + ".lock")

    @property
    def training_lock_path(self) -> Path:
        """The lock of the process training the run (:meth:`locked`): ``training.lock`` in the
        directory. (``torchstn reproduce`` holds :attr:`lock_path` for a cell while the cell is
        trained, in its own process or in a worker: the trainer takes this one of its own.)"""
        return self.path / "training.lock"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, which: str) -> Path:
        """The weights file ``checkpoints/<which>.safetensors`` (``"best"`` or ``"last"``)."""
        return self.checkpoints / f"{which}.safetensors"

    def holds_run(self) -> bool:
        """Whether a run has written checkpoints here."""
        return self.checkpoints.exists()

    def can_resume(self) -> bool:
        """Whether the ``last`` checkpoint and its training state are both here (the state of an
        interrupted save's old pair counts: resuming takes it, see ``read_training_state``)."""
        last = self.checkpoint("last")
        return last.is_file() and (state_path(last).is_file() or _previous_state_path(last).is_file())

    def remove(self) -> None:
        """Delete the directory (a run interrupted before its first checkpoint)."""
        shutil.rmtree(self.path, ignore_errors=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Inside: this process holds the run's lock, which :func:`~torchstn.engine.train` takes for
        a new or resumed run, so that a second process is refused rather than training into the same
        directory (two commands on one ``--out`` both ended with status 0: the second rewrote
        config.json and emptied metrics.jsonl during the first's first epoch, and both wrote checkpoints).

        The lock is a ``PidLock`` (``torchstn._locks``) of :attr:`training_lock_path`: an exclusive
        ``flock`` of a file that holds the pid of its process and is removed when the lock is let go;
        the system drops a ``flock`` when its process ends, however it ends (the file a killed run
        leaves locks nothing). The directory is made for
        it, and removed again where nothing else was written into it (a run refused before it
        started). Where ``fcntl`` is missing (Windows) nothing is locked.

        Raises:
            ValueError: another process holds the lock (the message names the directory and that
                process's pid), or the path is a file.
        """
        self._check_not_a_file()
        made = [p for p in (self.path, *self.path.parents) if not p.exists()]  # (innermost first)
        lock = PidLock(self.training_lock_path)
        try:
            try:
                lock.acquire()
            except LockBusy as busy:
                holder = f"another process (pid {busy.pid})" if busy.pid else "another process"
                raise ValueError(f"{self.path} is being trained by {holder}: wait for it to end, or choose another "
                                 "--out") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            for directory in made:
                with contextlib.suppress(OSError):  # (not empty: the run, or another process, wrote there)
                    directory.rmdir()

    def _holds_something_else(self) -> bool:
        """Whether the directory holds files (its lock aside) but no ``config.json`` of a run."""
        if not self.path.is_dir() or all(p == self.training_lock_path for p in self.path.iterdir()):
            return False
        try:
            TrainConfig.load(self.config_path)
        except (OSError, TypeError, ValueError):  # (none, or someone else's)
            return True
        return False

    def _check_not_a_file(self) -> None:
        """Refuse a regular file where the run's directory goes, new or resumed (making the directory
        said only "PATH: File exists", and resuming blamed a missing PATH/config.json)."""
        if self.path.is_file():
            raise ValueError(f"--out {self.path} is a file; give a directory for the run (new or one to --resume)")

    # --- config -------------------------------------------------------------------------
    def start(self, config: TrainConfig) -> None:
        """Create the directory for a new run: ``config.json`` and an empty history.

        A new or empty directory, or one of a run interrupted before its first checkpoint (its
        ``config.json``, no ``checkpoints/``), which starts again; anything else is refused
        (``--out .`` in a project had its config.json and metrics.jsonl overwritten).

        Raises:
            ValueError: a run is already here, a file, or a directory that holds something else.
        """
        self._check_not_a_file()
        if self.holds_run():
            raise ValueError(f"{self.path} already holds a run: resume it (--resume) or choose another --out")
        if self._holds_something_else():
            raise ValueError(f"{self.path} is not empty and holds no torchstn run (no config.json of one): give a "
                             "new or empty directory as --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.record_config(config)
        atomic_write(self.metrics_path, lambda p: p.write_text(""))

    def record_config(self, config: TrainConfig) -> None:
        """Write ``config.json``: a new run's, or a resumed run's given other values of
        :data:`RESUMABLE_CHANGES` (a longer run, another device), so that it says what the
        run now trains."""
        atomic_write(self.config_path, config.save)

    def read_config(self) -> TrainConfig:
        """The run's config.

        Raises:
            CheckpointError: no ``config.json`` here.
            ValueError: the path is a file.
        """
        self._check_not_a_file()
        if not self.config_path.is_file():
            raise CheckpointError(f"cannot resume: {self.config_path} is missing (is {self.path} a run directory?)")
        return TrainConfig.load(self.config_path)

    @staticmethod
    def config_differences(saved: TrainConfig, config: TrainConfig) -> list[str]:
        """The fields, outside :data:`RESUMABLE_CHANGES`, in which two configs differ, each as
        config.json holds it (a tuple in ``model_args`` is read back as a list: resuming with
        the very config that started the run was refused)."""
        ours, theirs = (json.loads(json.dumps(c.to_dict())) for c in (config, saved))
        return sorted(k for k, v in theirs.items() if k not in RESUMABLE_CHANGES and ours[k] != v)

    def resume_config(self, **changes: Any) -> TrainConfig:
        """The saved config with ``changes`` (``None`` values ignored) applied.

        ``model_args`` given again are merged into the saved ones, which also hold what the
        data filled in (``in_channels``, ``input_size``, ...): the command that started a run,
        repeated with ``--resume``, changes nothing.

        Raises:
            ValueError: a change to a field outside :data:`RESUMABLE_CHANGES`.
        """
        saved = self.read_config()
        changes = {k: v for k, v in changes.items() if v is not None}
        if "model_args" in changes:
            changes["model_args"] = {**saved.model_args, **changes["model_args"]}
        changed = saved.replace(**changes)
        bad = self.config_differences(saved, changed)
        if bad:
            raise ValueError(
                f"cannot change {', '.join(bad)} when resuming {self.path}: "
                f"only {', '.join(RESUMABLE_CHANGES)} may change"
            )
        if changed.steps is not None and changed.epochs != saved.epochs:  # (it said "nothing to do" and recorded them)
            raise ValueError(f"{self.path} is a run of {changed.steps:,} steps: epochs do not change its length; "
                             "give more steps (--steps) to extend it")
        return changed

    # --- metrics history ----------------------------------------------------------------
    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl`` (``[]`` when there is none), the first
        ``limit`` only when given (the lines after them are not read)."""
        if not self.metrics_path.is_file():
            return []
        lines = [(i, line) for i, line in enumerate(self.metrics_path.read_text().splitlines(), 1) if line]
        return [parse_json(line, f"{self.metrics_path}, line {i}") for i, line in lines[:limit]]

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's record to ``metrics.jsonl``, on the disk before the call returns (the
        trainer saves the epoch's checkpoint next, and a checkpoint whose epoch a power cut took
        from the history could not be resumed)."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def keep_history(self, epochs: int) -> list[dict[str, Any]]:
        """Drop the records after ``epochs`` (logged after the last checkpoint, the last of them
        perhaps cut short by the interruption) and return the rest.

        Raises:
            ValueError: the records of epochs 1 to ``epochs`` are not all there (a ``metrics.jsonl``
                emptied, removed or replaced: the resumed run's history lost the epochs before its
                checkpoint), or a line among them is cut short.
        """
        history = self.history(epochs)
        found = [record.get("epoch") if isinstance(record, dict) else None for record in history]
        if found != list(range(1, epochs + 1)):
            held = (f"the records of epochs {', '.join(map(str, found[:5]))}{', ...' if len(found) > 5 else ''}"
                    if found else "no epoch record")
            raise ValueError(f"cannot resume {self.path}: {self.metrics_path} holds {held}, but its last checkpoint "
                             f"was written after epoch {epochs} (was the file emptied, removed or replaced?); put "
                             "back the run's own metrics.jsonl, or start a new run")
        atomic_write(self.metrics_path, lambda p: p.write_text("".join(json.dumps(h) + "\n" for h in history)))
        return history

    # --- checkpoints --------------------------------------------------------------------
    def save(
        self, model: nn.Module, config: TrainConfig, *, epoch: int, step: int, metrics: dict[str, Any],
        training_state: dict[str, Any], best: bool, data_law: dict[str, Any] | None | _Unrecorded = UNRECORDED,
    ) -> None:
        """Write the ``last`` checkpoint with its training state, and ``best`` too when ``best``, with
        the state's ``rng`` alone: the generators the epoch's evaluation drew from, which
        :func:`~torchstn.engine.evaluation_draws` restores (``eval --which best`` of a P-STN drew
        other θ than the run's and missed the best epoch's recorded error). Both record ``data_law``."""
        if best:
            save_checkpoint(self.checkpoint("best"), model, config, epoch=epoch, step=step, metrics=metrics,
                            training_state={"rng": training_state["rng"]}, data_law=data_law)
        save_checkpoint(self.checkpoint("last"), model, config, epoch=epoch, step=step, metrics=metrics,
                        training_state=training_state, data_law=data_law)


def resolve_checkpoint(run_or_ckpt: str | Path, which: str = "best") -> Path:
    """The weights file meant by a run directory or a checkpoint path.

    A ``.safetensors`` file is returned as is; a run directory gives
    ``checkpoints/<which>.safetensors`` (falling back to ``last``).

    Raises:
        CheckpointError: nothing usable at that path (the message says what is expected).
        ValueError: ``which`` other than ``"best"`` or ``"last"`` (``"bset"`` loaded ``last``).
    """
    check_choice("which", which, ("best", "last"))
    path = Path(run_or_ckpt)
    if path.is_dir():
        for name in (which, "last"):
            candidate = RunDir(path).checkpoint(name)
            if candidate.is_file():
                return candidate
        raise CheckpointError(
            f"no checkpoint in {path}: expected {path}/checkpoints/{which}.safetensors "
            "(a run directory written by 'torchstn train --out DIR')"
        )
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run directory or a .safetensors checkpoint")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path} is not a .safetensors checkpoint or a run directory")
    return path


def load_model(run_or_ckpt: str | Path, which: str = "best", map_location: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights.

    Returns:
        ``(model, config, info)`` with the model in eval mode, its weights in the memory
        format the run trained them in (channels-last 4-D weights for ``config.channels_last``:
        with contiguous ones the convolutions took other kernels than training's and
        evaluation missed the recorded NLL, 2.3043501284 for 2.3043501285; such weights are not
        contiguous: ``safetensors.torch.save_file`` of the state dict wants
        ``{k: v.contiguous() for k, v in state.items()}``, as the run's checkpoints are written); ``info`` has
        ``epoch``, ``step``, ``metrics`` and ``path``.

    Example:
        >>> model, config, info = load_model("runs/demo/st-cnn-aff")  # doctest: +SKIP
    """
    path = resolve_checkpoint(run_or_ckpt, which)
    tensors, config, info = read_checkpoint(path)
    try:
        model = create_model(config.model, **config.model_args)
    except (TypeError, ValueError) as err:  # (an argument the builder does not take: a TypeError out of `eval`)
        if config.model not in list_models():  # (a user's model: its builder is registered by their code)
            hint = (f"a model registered by your code with register_model: import the module that registers "
                    f"{config.model!r} before loading the run (the torchstn command: --import MODULE)")
        else:
            hint = "a checkpoint of another torchstn version?"
        raise CheckpointError(f"{path} cannot rebuild model {config.model!r}: {first_line(err)} ({hint})") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit model {config.model!r}: {_misfit(model, tensors, err)}"
                              ) from None
    model.to(map_location, torch.float32).eval()  # (as trained, whatever torch's default dtype)
    if config.channels_last:
        model = to_channels_last(model)
    info["path"] = path
    return model, config, info


def _misfit(model: nn.Module, tensors: dict[str, torch.Tensor], err: RuntimeError) -> str:
    """What keeps ``tensors`` out of ``model``, on one line: the keys missing (in the model's order),
    unexpected (sorted: a file's keys have no order of their own) and of another size, each kind
    counted and its first three named. torch's ``err`` lists them all, a kind a line, after a first
    line that says only "Error(s) in loading state_dict for ...:"; its lines, joined, where these
    find nothing (a module's own loading hook refused)."""
    expected = model.state_dict()
    kinds = [  # (what, its plural ending, a note, the names)
        ("missing key", "s", "", [k for k in expected if k not in tensors]),
        ("unexpected key", "s", "", sorted(k for k in tensors if k not in expected)),
        ("size mismatch", "es", " (checkpoint vs model)", [f"{k} {list(tensors[k].shape)} vs {list(v.shape)}"
                                                           for k, v in expected.items()
                                                           if k in tensors and tensors[k].shape != v.shape]),
    ]
    parts = [f"{len(names)} {what}{plural if len(names) > 1 else ''}{note}: {', '.join(names[:3])}"
             + (f" and {len(names) - 3} more" if len(names) > 3 else "")
             for what, plural, note, names in kinds if names]
    return "; ".join(parts) or " ".join(line.strip() for line in str(err).splitlines()[1:]) or first_line(err)
