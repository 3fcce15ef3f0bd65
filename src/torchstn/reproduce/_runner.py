"""Run an experiment's cells with the training engine, resumably, and record what they gave.

State lives in two places:

* ``<results>/<experiment>.json`` (committed): one record per *finished* cell (its
  config, test error, wall time, machine, the command that ran it). A finished cell
  whose recorded config equals the current one is skipped.
* ``<runs>/<experiment>/<budget>/<cell>-<hash>/`` (not committed): the engine's run
  directory. A cell interrupted mid-run continues from its last checkpoint with the
  engine's bit-exact resume; ``<hash>`` is of the config, so a changed recipe starts
  a fresh run instead of resuming a different one.

A cell being trained is locked (``<run>.lock`` beside its run directory, see
:class:`CellLock`): two commands whose cells overlap (under the same runs root) never
train one cell at once; the second skips it and says which process holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchstn._locks import LockBusy, PidLock, exclusive
from torchstn._validation import check_int, check_names, parse_json
from torchstn.engine import RunDir, atomic_write, law_label, wall_seconds
from torchstn.reproduce._experiments import BUDGETS, Column, Experiment, Row

__all__ = [
    "DEFAULT_OUT", "DEFAULT_RUNS", "GONE_KEYS", "SUBSET_KEYS", "Cell", "CellBusy", "CellLock", "Results", "WorkersLost",
    "default_jobs", "limit_changes", "machine_info", "plan", "recipe_changes", "run_cell", "run_experiment",
    "subset_sizes",
]


@dataclass(frozen=True)
class Cell:
    """One training run of an experiment: a row, a column, a seed, under a budget.

    Attributes:
        experiment, row, column, seed, budget: what it is.
        config: the :class:`~torchstn.engine.TrainConfig` fields (without ``data_dir``,
            which does not change what is computed).
        limit: the ``--limit`` its subset sizes come from (:func:`subset_sizes`), if one was given.
    """

    experiment: Experiment
    row: Row
    column: Column
    seed: int
    budget: str
    config: dict[str, Any]
    limit: int | None = None

    @property
    def key(self) -> str:
        """``budget/row/column/seed``: the cell's name in the results file."""
        return f"{self.budget}/{self.row.key}/{self.column.key}/s{self.seed}"

    @property
    def digest(self) -> str:
        """A short hash of the config: a changed recipe is a different cell."""
        text = json.dumps(self.config, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def run_name(self) -> str:
        """The run directory's name: ``<row>-<column>-s<seed>-<digest>``."""
        return f"{self.row.key}-{self.column.key}-s{self.seed}-{self.digest}"

    def run_dir(self, runs: str | Path) -> RunDir:
        """The engine's run directory of this cell: ``<runs>/<experiment>/<budget>/<run_name>``."""
        return RunDir(Path(runs) / self.experiment.name / self.budget / self.run_name)

    @property
    def paper(self) -> float | None:
        """The paper's test error (%) for this row and column, if it has one."""
        return self.experiment.paper.get((self.row.key, self.column.key))


#: where ``torchstn reproduce`` writes unless told: the user's own record and report, and the runs.
#: The project's committed numbers live in ``results/`` and are written only with ``--out results``.
DEFAULT_OUT, DEFAULT_RUNS = "runs/reproduce/results", "runs/reproduce"

#: the config fields ``plan(limit=...)`` sets: a test subset, not a different recipe
SUBSET_KEYS = ("train_limit", "test_limit", "diagnostics_samples")


def subset_sizes(config: dict[str, Any], limit: int) -> dict[str, int]:
    """The :data:`SUBSET_KEYS` of a recipe's ``config`` trained on the first ``limit`` images (``--limit``)."""
    return {"train_limit": min(limit, config.get("train_limit") or limit),
            "test_limit": min(limit, config.get("test_limit") or limit),
            "diagnostics_samples": min(limit, config.get("diagnostics_samples", 512))}


#: what :func:`config_changes` names of a record's that the experiment no longer has
GONE_KEYS = ("budget", "row", "column", "cell")


def _gone(experiment: Experiment, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The budget, row, column or cell (:data:`GONE_KEYS`) of ``record`` that ``experiment`` no longer
    has: ``{what: (then, None)}``."""
    if record.get("budget") not in experiment.recipes:
        return {"budget": (record.get("budget"), None)}
    rows, columns = {r.key for r in experiment.rows}, {c.key for c in experiment.columns}
    gone = {k: (record.get(k), None) for k, known in (("row", rows), ("column", columns))
            if record.get(k) not in known}
    if not gone and (record["row"], record["column"]) not in {(r.key, c.key) for r, c in experiment.pairs()}:
        gone["cell"] = (f"{record['row']} on {record['column']}", None)
    return gone


def _law_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The law by which this torchstn draws a cell's data (:func:`torchstn.data.data_law` of its
    ``data`` and ``data_options``): a record keeps it, so that a recipe's later version is not
    taken for the one its cell was trained on."""
    from torchstn.data import data_law

    return data_law(config["data"], config.get("data_options") or {})


def config_changes(experiment: Experiment, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every field in which a recorded cell's config differs from its budget's recipe today,
    subset sizes included: ``{field: (then, now)}``; a budget, row, column or cell the experiment
    no longer has is such a field (:func:`_gone`); so is the law of its data (``"data law"``), where
    the record keeps one (since 2026-12-05) and this torchstn draws another for the same config; else
    empty for a record without its config."""
    gone = _gone(experiment, record)
    if gone or "config" not in record:
        return gone
    row, column = experiment.row(record["row"]), experiment.column(record["column"])
    now = {**experiment.recipe(record["budget"], row, column), "seed": record["seed"]}
    then = record["config"]
    changes = {k: (then.get(k), now.get(k)) for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)}
    if "data_law" in record:
        law = _law_of(now)
        if record["data_law"] != law:
            before, after = law_label(record["data_law"]), law_label(law)
            changes["data law"] = (before, after if after != before else f"{after} (other options)")
    return changes


def limit_changes(experiment: Experiment, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The subset sizes (:data:`SUBSET_KEYS`) in which ``record`` differs from its budget's recipe
    because of a ``--limit``: ``{field: (then, now)}``.

    A record stores the ``limit`` it was trained with; its sizes must be :func:`subset_sizes` of
    today's recipe with it. A record from before that field (none of the committed ones has a size
    that differs) is read as conservatively as it was: a size that some ``--limit`` gives, i.e. no
    larger than the recipe's, is one; a larger one, or none where the recipe has one, is a recipe change.
    """
    changes = {k: v for k, v in config_changes(experiment, record).items() if k in SUBSET_KEYS}
    now = {k: after for k, (_, after) in changes.items() if after is not None}
    stored = record.get("limit")
    return {k: (then, after) for k, (then, after) in changes.items() if then is not None
            and subset_sizes(now, stored if stored is not None else then)[k] == then}


def recipe_changes(experiment: Experiment, record: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """How a recorded cell's config differs from its budget's recipe today: ``{field: (then, now)}``.

    Empty for a cell trained with today's recipe (a test subset of ``--limit`` aside:
    :func:`limit_changes`) and for a record without its config (nothing to compare); a record
    from an earlier recipe, or of a budget, row, column or cell the experiment no longer has,
    is reported apart from today's table, never mixed into it.
    """
    limited = limit_changes(experiment, record)
    return {k: v for k, v in config_changes(experiment, record).items() if k not in limited}


def plan(
    experiment: Experiment,
    budget: str,
    *,
    seeds: int | None = None,
    only: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[Cell]:
    """The cells to run, in order (columns by the experiment's ``order``, then rows, then seeds).

    Args:
        experiment: the experiment.
        budget: one of :data:`BUDGETS` (``"quick"``, ``"standard"``, ``"long"``, ``"paper"``).
        seeds: seeds per cell (``0 .. seeds-1``); default the budget's.
        only: row keys to keep (``None``: all).
        datasets: column keys to keep (``None``: all).
        limit: use only the first ``limit`` training and test images (a test subset).

    Raises:
        ValueError: an unknown budget, row or column key (the message lists the known ones).
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    row_keys = [r.key for r in experiment.rows]
    col_keys = [c.key for c in experiment.columns]
    # (one string is one name: only="cnn" was read as the models 'c', 'n', 'n')
    only = None if only is None else check_names("only", only)
    datasets = None if datasets is None else check_names("datasets", datasets)
    for name, given, known, what in (("only", only, row_keys, "model"), ("datasets", datasets, col_keys, "dataset")):
        if given is not None and not given:  # (an empty one chose every cell)
            raise ValueError(f"{name} must name at least one entry (None: all of them), got none")
        unknown = [k for k in given or () if k not in known]
        if unknown:
            raise ValueError(
                f"{experiment.name} has no {what} {', '.join(map(repr, unknown))}; choose from: {', '.join(known)}"
            )
    n_seeds = experiment.seeds.get(budget, 1) if seeds is None else check_int("seeds", seeds, 1)  # (True passed)
    cells = []
    for row, column in experiment.pairs():
        if (only and row.key not in only) or (datasets and column.key not in datasets):
            continue
        for seed in range(n_seeds):
            config = {**experiment.recipe(budget, row, column), "seed": seed}
            if limit is not None:
                config.update(subset_sizes(config, limit))
            cells.append(Cell(experiment, row, column, seed, budget, config, limit))
    return cells


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, and the versions of python, torch and torchstn."""
    import torch

    from torchstn._version import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = "cpu"
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": device,
        "torch": torch.__version__,
        "torchstn": __version__,
        "python": platform.python_version(),
    }


class Results:
    """The committed record of finished cells: ``<dir>/<experiment>.json``.

    Args:
        directory: the results directory (``results/``).
        experiment: the experiment's name.
    """

    def __init__(self, directory: str | Path, experiment: str) -> None:
        self.path = Path(directory) / f"{experiment}.json"
        self.experiment = experiment
        self.cells: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.cells = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's cells, checked to be a record of this experiment (a file that parses but is
        not one, another experiment's included, gave tracebacks or was merged into this one)."""
        data = parse_json(self.path.read_text(), self.path)
        cells = data.get("cells") if isinstance(data, dict) else None
        problem = (
            "not an object with 'experiment' and 'cells'" if not isinstance(cells, dict)
            else f"the record of {data.get('experiment')!r}" if data.get("experiment") != self.experiment
            else next((f"cell {key!r} has no number 'error'" for key, cell in cells.items()
                       if not isinstance(cell, dict) or type(cell.get("error")) not in (int, float)), None)
        )
        if problem:
            raise ValueError(f"{self.path} is not a record of {self.experiment}: {problem} (move it away or give "
                             f"another --out)")
        return dict(cells)

    def finished(self, cell: Cell) -> dict[str, Any] | None:
        """The record of ``cell`` if it finished with the same config and, where the record keeps it,
        on the law this torchstn draws for that config (:func:`_law_of`), else ``None``."""
        record = self.cells.get(cell.key)
        if record is None or record.get("digest") != cell.digest:
            return None
        if "data_law" in record and record["data_law"] != _law_of(cell.config):
            return None
        return record

    def add(self, cell: Cell, record: dict[str, Any]) -> None:
        """Record a finished cell and write the file (atomically).

        The file is read again first, so cells that another process recorded
        meanwhile (another ``--only`` or ``--datasets`` run) are kept.
        """
        with self.locked():
            self.reload()
            self.cells[cell.key] = record
            self.save()

    def locked(self) -> contextlib.AbstractContextManager[bool]:
        """An exclusive ``flock`` of the record's directory for one read-merge-write: two commands
        adding cells to one record at once lost up to a sixth of them (each wrote the file it had
        read). Blocking, held for a file's write; where ``fcntl`` is missing nothing is locked."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return exclusive(self.path.parent)

    def reload(self) -> None:
        """Take in the cells that other processes recorded since this record was read (the
        file's records win; cells only this one holds are kept)."""
        if self.path.is_file():
            on_disk = self._read()
            self.cells = {**on_disk, **{k: v for k, v in self.cells.items() if k not in on_disk}}

    def save(self) -> None:
        """Write the file, cells sorted by key."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"experiment": self.experiment, "cells": dict(sorted(self.cells.items()))}
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n"))


class CellBusy(LockBusy):
    """Another process is training the cell: it holds the cell's :class:`CellLock` (``pid`` names it)."""

    what = "is training it"


class WorkersLost(RuntimeError):
    """A worker process of ``--jobs`` ended abruptly (killed, e.g. by the out-of-memory killer), which
    ends every worker: the message names the cells that were running (they resume when rerun)."""


class CellLock(PidLock):
    """The lock a cell is trained under: ``<run>.lock`` beside its run directory.

    A ``PidLock`` (``torchstn._locks``, as the trainer's own lock in the directory): an
    exclusive ``flock``, which the system drops when its process ends, however it ends
    (no stale lock after a kill), of a file holding the pid of its holder, removed when
    the lock is let go. :func:`run_experiment` takes it before a cell trains and lets it go
    when the cell is recorded, so two commands whose cells overlap (the same ``--only``
    twice, a ``--jobs`` run beside another) skip each other's cells instead of training one
    into the same run directory (the lock lives under the runs root: commands with
    different ``--runs`` do not see each other). With ``--jobs N`` the parent holds its
    workers' locks; a worker outlives a killed parent by up to the 2 s of its watch
    (:func:`_worker_init`). Where ``fcntl`` is missing (Windows) nothing is locked.

    Args:
        run_dir: the cell's run directory.
    """

    def __init__(self, run_dir: RunDir) -> None:
        super().__init__(run_dir.lock_path, busy=CellBusy)


def _set_aside_another_law(cell: Cell, run_dir: RunDir, log: Callable[[str], None]) -> None:
    """Move the cell's run directory aside (``<name>.law-<n>``) where its checkpoint records a law other
    than the one this torchstn draws for the cell (a recipe changed since): the cell starts again beside
    it, where resuming would be refused (the engine's check)."""
    from torchstn.engine import read_checkpoint

    last = run_dir.checkpoint("last")
    if not last.is_file():
        return
    info, law = read_checkpoint(last, tensors=False)[2], _law_of(cell.config)
    if "data_law" not in info or info["data_law"] == law:
        return
    n = 1
    while run_dir.path.with_name(f"{run_dir.path.name}.law-{n}").exists():
        n += 1
    aside = run_dir.path.rename(run_dir.path.with_name(f"{run_dir.path.name}.law-{n}"))
    log(f"  {run_dir.path} was trained on {law_label(info['data_law'])}; this torchstn draws "
        f"{law_label(law)} for the cell: moved to {aside}, the cell starts again")


def run_cell(
    cell: Cell,
    runs: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one cell with :func:`torchstn.engine.train` (resuming an interrupted run) and return its record.

    Args:
        cell: the cell.
        runs: the runs root; the run directory is ``runs/<experiment>/<budget>/<run_name>``.
        data_dir: where the cell's data are: MNIST's files, the CIFAR-10 archive or the UCR folders
            (``None``: ``TORCHSTN_DATA``, the cache, or a download of MNIST).
        device: where to train (not part of the cell: a run may resume on another device).
        progress: the engine's progress bar.
        log: where progress lines go.

    Returns:
        the record :class:`Results` stores: ``error`` (last-iteration test error, %),
        ``loss``, ``nll`` and ``ece`` (the test calibration), ``best_error``, ``steps``, ``epochs``, ``wall_seconds``, ``images_per_s``,
        ``run``, ``digest``, ``config`` and the ``theta`` diagnostics of the last epoch.
    """
    from torchstn.engine import TrainConfig, train

    run_dir = cell.run_dir(runs)
    config = TrainConfig(**cell.config, data_dir=data_dir, device=device)
    _set_aside_another_law(cell, run_dir, log)
    resume = run_dir.can_resume()
    if resume:
        log(f"  resuming {run_dir.path} from its last checkpoint")
    elif run_dir.holds_run():  # interrupted before its first whole checkpoint: start again
        run_dir.remove()
    history = train(config, run_dir.path, resume=resume, progress=progress).history
    if not history:
        raise RuntimeError(f"{run_dir.path}: training recorded no epoch")
    return _record(cell, run_dir, history)


def _record(cell: Cell, run_dir: RunDir, history: list[dict[str, Any]]) -> dict[str, Any]:
    """What :class:`Results` keeps of a finished cell (see :func:`run_cell`)."""
    final = history[-1]
    return {
        "row": cell.row.key,
        "column": cell.column.key,
        "seed": cell.seed,
        "budget": cell.budget,
        "error": 100.0 * float(final["test_error"]),
        "loss": float(final["test_loss"]),
        **{k: float(final[f"test_{k}"]) for k in ("nll", "ece") if f"test_{k}" in final},
        "best_error": 100.0 * min(float(h["test_error"]) for h in history),
        "train_error": 100.0 * float(final["train_error"]),
        "steps": int(final["step"]),
        "epochs": int(final["epoch"]),
        "wall_seconds": round(wall_seconds(history), 1),
        "images_per_s": round(sum(float(h["images_per_s"]) for h in history) / len(history), 1),
        "theta": final.get("theta", []),
        "warnings": final.get("warnings", []),
        "paper": cell.paper,
        "run": str(run_dir.path),
        "digest": cell.digest,
        "config": cell.config,
        "data_law": _law_of(cell.config),
        **({} if cell.limit is None else {"limit": cell.limit}),
    }


def default_jobs() -> int:
    """One worker per core this process may run on (the default of ``--jobs``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: the mark of a record whose ``after_cell`` (analyses, figure, report) of :func:`run_experiment` has not
#: run yet: the next run does it (a cell is recorded first, so an interrupt never costs its training)
_AFTER_CELL_DUE = "after_cell_due"


def run_experiment(
    cells: Sequence[Cell],
    results: Results,
    runs: str | Path,
    *,
    data_dir: str | None = None,
    device: str = "auto",
    command: str | None = None,
    jobs: int = 1,
    progress: bool = True,
    log: Callable[[str], None] = print,
    after_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
    poll_seconds: float = 60.0,
) -> list[dict[str, Any] | None]:
    """Run the cells not yet finished, recording each as it finishes.

    Args:
        cells: from :func:`plan`.
        results: the record (finished cells are skipped; new ones are added as they finish).
        runs: the runs root.
        data_dir: where the MNIST files are.
        device: where to train.
        command: the command line to record with each cell (default: ``sys.argv``).
        jobs: ``1`` trains the cells one after the other in this process (at its torch
            thread count); ``N > 1`` trains up to N cells at once, each in a worker
            process with one thread (its output goes to the run directory's log,
            ``<run>.log`` beside it).
            On a loaded 2-core machine two one-thread processes trained 1.8x the images of
            one, where one two-thread process fell to 0.2x of one thread.
        progress: the engine's progress bar (``jobs == 1`` only).
        log: where progress lines go.
        after_cell: called with each newly finished cell and its record (e.g. to
            rewrite the report), and with each recorded cell whose call was interrupted
            (before anything is trained); the record is stored again after it.
        poll_seconds: with ``jobs > 1``, how often a line shows where each running cell is.

    Returns:
        the records of every cell in ``cells`` (finished before or now), in order; ``None``
        for a cell skipped because another process was training it (:class:`CellLock`).
    """
    check_int("jobs", jobs, minimum=1)
    command = command or shlex.join(["torchstn", *sys.argv[1:]])
    done = {c.key: results.finished(c) for c in cells}
    todo = [c for c in cells if done[c.key] is None]
    _announce(cells, done, len(todo), jobs, log)
    started = time.perf_counter()

    def analyse(cell: Cell, record: dict[str, Any]) -> None:
        """``after_cell``, then the record without its :data:`_AFTER_CELL_DUE` mark."""
        if after_cell is not None:
            after_cell(cell, record)
            results.add(cell, record)

    def finished(cell: Cell, record: dict[str, Any]) -> None:
        record.update(command=command, finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        # recorded before its analyses, so that a cell's training is never lost, with the mark that they
        # are due: interrupted before them, the cell was skipped by every later run and never had them
        results.add(cell, record if after_cell is None else {**record, _AFTER_CELL_DUE: True})
        done[cell.key] = record
        log(f"{_cell_name(cell, cells.index(cell) + 1, len(cells))}: {record['error']:.2f}% test error{_paper_text(cell)} in "
            f"{record['wall_seconds'] / 60:.1f} min of training (this command so far: "
            f"{(time.perf_counter() - started) / 60:.1f} min)")  # (a resumed cell's training spans its sessions)
        analyse(cell, record)

    for i, cell in enumerate(cells, 1):
        record = done[cell.key]
        if after_cell is not None and record is not None and record.get(_AFTER_CELL_DUE):
            done[cell.key] = record = {k: v for k, v in record.items() if k != _AFTER_CELL_DUE}
            log(f"{_cell_name(cell, i, len(cells))}: completing its analyses and figure (interrupted before them)")
            analyse(cell, record)

    def claim(cell: Cell) -> CellLock | None:
        """The cell's lock, taken; ``None`` (and a line) when another process is training the
        cell or recorded it since this command read the record."""
        name, lock = _cell_name(cell, cells.index(cell) + 1, len(cells)), CellLock(cell.run_dir(runs))
        try:
            lock.acquire()
        except CellBusy as busy:
            log(f"{name}: skipped: {busy}")
            return None
        results.reload()
        record = results.finished(cell)
        if record is None:
            return lock
        lock.release()
        done[cell.key] = record
        log(f"{name}: finished by another process meanwhile, {record['error']:.2f}% error (skipped)")
        return None

    options = {"data_dir": data_dir, "device": device}
    if jobs == 1 or len(todo) <= 1:
        for cell in todo:
            lock = claim(cell)
            if lock is None:
                continue
            with lock:
                log(f"{_cell_name(cell, cells.index(cell) + 1, len(cells))}: training{_paper_text(cell)} ...")
                record = run_cell(cell, runs, **options, progress=progress, log=log)
                finished(cell, {**record, "machine": machine_info()})
    else:
        _run_in_workers(todo, runs, options, jobs, claim, finished, log, poll_seconds)
    return [done[c.key] for c in cells]


def _announce(
    cells: Sequence[Cell], done: dict[str, dict[str, Any] | None], todo: int, jobs: int, log: Callable[[str], None]
) -> None:
    """What will run and how, and a line for every cell finished earlier."""
    log(f"{cells[0].experiment.name if cells else '?'} ({cells[0].budget if cells else '?'}): "
        f"{len(cells)} cell{'' if len(cells) == 1 else 's'}, {len(cells) - todo} already finished, {todo} to run"
        + (f" in {min(jobs, todo)} one-thread worker processes" if jobs > 1 and todo > 1 else ""))
    for i, cell in enumerate(cells, 1):
        record = done[cell.key]
        if record is not None:
            log(f"{_cell_name(cell, i, len(cells))}: finished earlier, {record['error']:.2f}% error (skipped)")


def _cell_name(cell: Cell, index: int, total: int) -> str:
    return f"[{index}/{total}] {cell.row.label} on {cell.column.label}, seed {cell.seed}"


def _paper_text(cell: Cell) -> str:
    return f" (paper {cell.paper:.1f}%)" if cell.paper is not None else ""


def _worker_init(parent: int, poll_seconds: float = 2.0) -> None:
    """A worker trains at one thread (see :func:`run_experiment`) and ends when ``parent`` does.

    A pool's workers outlive a parent ended by a signal and would go on training a cell nobody
    records, writing its checkpoints while a new run resumes the same cell: a daemon thread
    ends the worker once its parent is gone (the cell resumes from its last checkpoint).
    """
    import signal
    import threading

    import torch

    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent ends the workers itself (an idle one
    # printed a KeyboardInterrupt traceback from its queue)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # and ends them with SIGTERM, unwound as an exit (a kill left the semaphores of their
    # progress bars' locks behind: "resource_tracker: ... leaked semaphore objects")
    signal.signal(signal.SIGTERM, _exit_on_signal)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        for stream in (sys.stdout, sys.stderr):  # (a cell's log: os._exit flushes nothing)
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(1)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _run_in_worker(cell: Cell, runs: str | Path, options: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_cell` in a worker process, its output in the run directory's log file."""
    import contextlib

    log_path = cell.run_dir(runs).log_path
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # line-buffered: the log shows each epoch as it ends, and keeps it when the worker is ended
    # with os._exit (its parent gone), which flushes nothing
    with open(log_path, "a", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        record = run_cell(cell, runs, **options, progress=False, log=print)
    return {**record, "machine": machine_info()}


def _run_in_workers(
    todo: Sequence[Cell], runs: str | Path, options: dict[str, Any], jobs: int,
    claim: Callable[[Cell], CellLock | None], finished: Callable[[Cell, dict[str, Any]], None],
    log: Callable[[str], None], poll_seconds: float, work: Callable[..., dict[str, Any]] | None = None,
) -> None:
    """Train ``todo`` in ``jobs`` one-thread processes, each cell under the lock ``claim`` takes
    (a cell it cannot claim is skipped); record each cell as it finishes.

    An interrupt (``KeyboardInterrupt``: Ctrl-C, or SIGINT to this process alone) records the
    cells that finished meanwhile and ends the workers at once: leaving the pool waited for
    every running cell to finish (a whole cell at ``long``), and then dropped them. Their
    cells resume from their last checkpoints. A worker killed from outside breaks the pool,
    whose other workers end with it: :class:`WorkersLost` names the cells that were running
    (a healthy one was reported failed, and a ``BrokenProcessPool`` traceback ended the
    command). ``work`` replaces :func:`_run_in_worker` (tests).
    """
    import concurrent.futures as cf
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or state
    failures: list[BaseException] = []
    waiting = list(todo)
    last_report = ""
    running: dict[cf.Future[dict[str, Any]], tuple[Cell, CellLock]] = {}
    lost: list[Cell] = []  # running when the pool broke

    def collect(future: cf.Future[dict[str, Any]]) -> None:
        cell, lock = running.pop(future)
        try:
            if isinstance(future.exception(), BrokenProcessPool):
                lost.append(cell)
            else:
                finished(cell, future.result())
        except Exception as err:  # one failed cell does not stop the others
            log(f"{cell.key}: failed: {err}")
            failures.append(err)
        finally:
            lock.release()

    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init,
                                  initargs=(os.getpid(),))
    try:
        while waiting or running:
            while waiting and len(running) < jobs:  # submit as workers free up: `running` is what runs
                cell = waiting.pop(0)
                lock = claim(cell)
                if lock is None:
                    continue
                try:
                    running[pool.submit(work or _run_in_worker, cell, runs, options)] = (cell, lock)
                except BaseException:
                    lock.release()
                    raise
            if not running:
                break
            ready, _ = cf.wait(running, timeout=poll_seconds, return_when=cf.FIRST_COMPLETED)
            for future in ready:
                collect(future)
            if lost or _a_worker_ended(pool):
                raise BrokenProcessPool
            if not ready:
                report = _where_they_are([cell for cell, _ in running.values()], runs)
                if report != last_report:  # a line when a cell has moved, not every poll
                    log(report)
                    last_report = report
    except BaseException as err:
        for future in [f for f in running if f.done() and not f.cancelled()]:
            collect(future)
        # (no public call ends running work: shutdown waits for it, or leaves it running)
        workers = _workers(pool)
        for process in workers:
            process.terminate()
        # a worker that SIGTERM unwinds may then block for good handing its exception back, on the
        # result queue's lock that a killed worker held: the test of a killed worker hung 20 min
        for process in workers:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)  # (quick: no worker is left to wait for)
        if isinstance(err, BrokenProcessPool):  # (also from a submit to a pool broken meanwhile)
            cells = ", ".join(cell.key for cell in [*lost, *(c for c, _ in running.values())])
            raise WorkersLost(f"a worker process was killed (e.g. out of memory), which ends every worker, while "
                              f"training {cells or 'no cell'}: run the same command again to resume them from their "
                              "last checkpoints") from None
        raise
    else:
        pool.shutdown()
    finally:  # the cells still running are let go (their workers have ended)
        for _, lock in running.values():
            lock.release()
    if failures:
        raise failures[0]


def _a_worker_ended(pool: Any) -> bool:
    """Whether a worker of ``pool`` has ended (workers end only when the pool shuts down).

    The pool watches its workers for a death only while its manager thread waits, and a worker
    spawned while that thread was already waiting is not among those it watches until some
    other event wakes it: killed then, it went unnoticed until the other worker's cell finished
    (two minutes in a test, a whole cell in a run), and the message left that cell out.
    """
    return any(process.exitcode is not None for process in _workers(pool))


def _workers(pool: Any) -> list[Any]:
    """The processes of ``pool`` (private to the pool: no public call ends or inspects its workers)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _where_they_are(cells: Any, runs: str | Path) -> str:
    """One line: the epoch each running cell has finished (read from its run directory)."""
    parts = []
    for cell in cells:
        history = cell.run_dir(runs).history()
        state = f"epoch {history[-1]['epoch']}, {100 * history[-1]['test_error']:.2f}%" if history else "epoch 0"
        parts.append(f"{cell.row.label} on {cell.column.label} s{cell.seed}: {state}")
    return "running: " + "; ".join(parts)
