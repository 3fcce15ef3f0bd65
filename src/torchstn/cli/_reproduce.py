"""``torchstn reproduce``: run a paper's table cell by cell and write ``OUT/EXPERIMENT.md``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchstn.cli._common import (
    CLIError,
    add_data_dir_arg,
    add_device_arg,
    add_threads_arg,
    check_at_least_one,
    check_writable,
    command_line,
    formatter,
)

if TYPE_CHECKING:
    from torchstn.reproduce import Cell, Experiment, Results

__all__ = ["recorded_command", "register", "run"]

EXAMPLES = """\
examples:
  torchstn reproduce stn-table1 --budget quick                    # the whole table in minutes (smoke test)
  torchstn reproduce stn-table1 --only cnn,st-cnn-aff --datasets rts --jobs 1 --threads 2
  torchstn reproduce stn-table1 --budget standard                 # 3-7 CPU minutes per ST-CNN cell
  torchstn reproduce stn-table1 --budget long --only cnn,st-cnn-aff --datasets rts   # 10x standard
  torchstn reproduce stn-cluttered --only cnn,st-cnn-aff
  torchstn reproduce tutorial
  torchstn reproduce stn-table1 --budget paper --seeds 3 --device cuda   # the paper's 150k iterations
  torchstn reproduce stn-table1 --out results     # add to the project's committed numbers (a checkout)

experiments: {experiments}.
Your runs are recorded in OUT (default {out}); the project's committed numbers are in
results/ of a checkout and are written only with --out results.
Finished cells are recorded in OUT/EXPERIMENT.json and skipped when the command is run
again; a cell that was interrupted resumes from its last checkpoint (runs live under
--runs). After each cell OUT/EXPERIMENT.md (our error beside the paper's, the machine,
the wall time per cell, the commands) and the figures of the transformers are rewritten.

Cells train in --jobs worker processes of one thread each (default: one per core): on a
loaded 2-core machine two one-thread processes trained 1.8x the images of one, while one
two-thread process fell to 0.2x of one thread. --jobs 1 trains in this process, at
--threads (default 1).
"""


def _keys(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise CLIError("--only/--datasets expect a comma-separated list of names, e.g. cnn,st-cnn-aff")
    return keys




def recorded_command(args: argparse.Namespace) -> str:
    """The command that reproduces these cells: the experiment and every option that was given.

    Paths are written relative to the current directory, so the recorded command runs on
    another machine from the same place in a checkout (``--data-dir ../shared/data/mnist``),
    not only on the one that ran it; an absolute path outside that directory stays absolute
    (:func:`~torchstn.cli._common.command_line`).
    """
    from torchstn.reproduce import DEFAULT_OUT, DEFAULT_RUNS

    return command_line(
        args, ["reproduce", args.experiment, "--budget", args.budget],
        ["--seeds", "--only", "--datasets", "--data-dir", "--out", "--runs", "--device", "--jobs", "--threads",
         "--limit"],
        paths={"--data-dir", "--out", "--runs"}, defaults={"--out": DEFAULT_OUT, "--runs": DEFAULT_RUNS},
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from torchstn.reproduce import BUDGETS, DEFAULT_OUT, DEFAULT_RUNS, default_jobs, list_experiments

    p = subparsers.add_parser(
        "reproduce", help="reproduce a paper's table (stn-table1, stn-cluttered, tutorial, ...)",
        description="Train every cell (model x dataset x seed) of a published table, resumably, and write "
        "our test errors beside the paper's into OUT/EXPERIMENT.md.",
        epilog=EXAMPLES.format(experiments=", ".join(list_experiments()), out=DEFAULT_OUT), formatter_class=formatter,
    )
    p.add_argument("experiment", metavar="EXPERIMENT", help=f"one of: {', '.join(list_experiments())}")
    p.add_argument("--budget", choices=BUDGETS, default="standard",
                   help="quick: smoke test in minutes; standard: 3-7 CPU minutes per ST-CNN cell at one thread; "
                   "long: 10x standard (15x for stn-addition; stn-table1, stn-cluttered, stn-addition and "
                   "icstn-perturbed have it); paper: the paper's iterations")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="seeds per cell (default: the experiment's for the budget, which --list shows; with --list "
                   "and --refresh also every other seed recorded)")
    p.add_argument("--only", metavar="MODEL,...", help="run only these rows, e.g. cnn,st-cnn-aff")
    p.add_argument("--datasets", metavar="NAME,...", help="run only these columns, e.g. rts,r")
    add_data_dir_arg(p, recorded="with --refresh the one each run recorded")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help="where EXPERIMENT.json/.md and the figures go (default %(default)s; 'results' in a checkout "
                   "adds to the project's committed numbers)")
    p.add_argument("--runs", default=DEFAULT_RUNS, metavar="DIR", help="where the run directories go (default %(default)s)")
    p.add_argument("--list", action="store_true",
                   help="print the cells and their state (an interrupted cell: how far it trained), train nothing")
    p.add_argument("--refresh", action="store_true",
                   help="redraw the figures and analyses of the finished cells from their runs and rewrite the "
                   "report, train nothing")
    add_device_arg(p)
    p.add_argument("--jobs", type=int, metavar="N",
                   help=f"cells trained at once, each in a one-thread worker process (default: one per core, "
                   f"{default_jobs()} here)")
    add_threads_arg(p, default="1")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # a test subset: only the first N training and test images of every cell (not for results)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from torchstn.reproduce import (
        Results,
        WorkersLost,
        default_jobs,
        get_experiment,
        plan,
        run_experiment,
        write_report,
    )

    check_at_least_one(args, "limit", "jobs")
    jobs = args.jobs if args.jobs is not None else default_jobs()
    if jobs > 1 and args.threads not in (None, 1):
        raise CLIError(f"--threads {args.threads} applies to --jobs 1; with --jobs {jobs} every cell trains at one "
                       "thread in its own process")
    if args.list and args.refresh:  # (--refresh was skipped without a word)
        raise CLIError("--list and --refresh do different things (list the cells; redo their analyses): give one")
    if args.device is not None and not args.list:  # (a CUDA-less --device cuda failed once a cell had started)
        from torchstn.engine import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as err:
            raise CLIError(f"--device: {err}") from None
    if args.threads is None:
        torch.set_num_threads(1)  # one thread per process: see --help
    experiment = get_experiment(args.experiment)
    cells = plan(experiment, args.budget, seeds=args.seeds, only=_keys(args.only), datasets=_keys(args.datasets),
                 limit=args.limit)
    if not cells:
        raise CLIError(f"no cells of {experiment.name} match --only/--datasets")
    if Path(args.out).exists() and not Path(args.out).is_dir():  # (found once a cell had trained, before)
        raise CLIError(f"--out {args.out} is a file; it names the directory of the record and the report")
    results = Results(args.out, experiment.name)
    if args.seeds is None and (args.list or args.refresh):
        cells = _with_recorded_seeds(cells, results, args)
    if args.list:
        _print_cells(cells, results, args.runs)
        return 0
    check_writable(results.path, "--out")  # (a parent that is a file was found once a cell had trained)
    after_cell = _after_cell(args, experiment, results)
    if args.refresh:
        for cell in cells:
            record = results.finished(cell)
            if record is not None:
                print(f"refreshing {cell.key}")
                after_cell(cell, _located(cell, record, args.runs))
    else:
        try:
            run_experiment(cells, results, args.runs, data_dir=args.data_dir, device=args.device or "auto",
                           command=recorded_command(args), jobs=jobs,
                           progress=not args.no_progress and sys.stderr.isatty(), after_cell=after_cell)
        except WorkersLost as err:
            raise CLIError(str(err)) from None
    print(f"report: {write_report(experiment, results, args.out, args.budget)}")
    return 0


def _with_recorded_seeds(cells: list[Cell], results: Results, args: argparse.Namespace) -> list[Cell]:
    """``cells`` (the seeds the budget plans) and the other finished seeds of the same cells in ``results``
    (``--seeds 2`` once: its seed 1 was neither listed nor refreshed without ``--seeds`` again)."""
    from torchstn.reproduce import plan

    seeds = [r.get("seed") for r in results.cells.values() if r.get("budget") == args.budget]
    most = max([s for s in seeds if isinstance(s, int)], default=0) + 1
    if most <= max(cell.seed for cell in cells) + 1:
        return cells
    planned = {cell.key for cell in cells}
    more = plan(cells[0].experiment, args.budget, seeds=most, only=_keys(args.only), datasets=_keys(args.datasets),
                limit=args.limit)
    return [cell for cell in more if cell.key in planned or results.finished(cell) is not None]


def _located(cell: Cell, record: dict[str, Any], runs: str) -> dict[str, Any]:
    """``record`` with its run where it is: under ``--runs`` (the recorded path may be relative to
    another directory, or from another machine), else where it was recorded; a warning when
    neither holds it (the cell's figure and analyses then stay as they were)."""
    from torchstn.engine import RunDir

    here = cell.run_dir(runs)
    if here.holds_run():
        return {**record, "run": str(here.path)}
    if not RunDir(record["run"]).holds_run():
        print(f"warning: the run of {cell.key} is neither under --runs {runs} nor at {record['run']}: its figure "
              "and analyses are kept as they were", file=sys.stderr)
    return record


def _print_cells(cells: list[Cell], results: Results, runs: str) -> None:
    """One line per cell: its key, our error (or ``pending``) and the paper's; for a pending cell
    that another process is training, that process; else, if its run has a checkpoint under
    ``runs``, how far it has trained (it resumes from there)."""
    from torchstn.reproduce import CellLock

    for cell in cells:
        record = results.finished(cell)
        state = f"{record['error']:.2f}%" if record else "pending"
        paper = "—" if cell.paper is None else f"{cell.paper:.1f}%"
        line = f"{cell.key:<40} {state:>8}  paper {paper}"
        run_dir = cell.run_dir(runs)
        holder = CellLock(run_dir).holder() if record is None else None
        if holder is not None:
            line += f"  (being trained by another process{f', pid {holder}' if holder else ''})"
        elif record is None and run_dir.can_resume() and (history := run_dir.history()):
            last, steps = history[-1], cell.config.get("steps")
            done = (f"{last['step']:,} of {steps:,} iterations, epoch {last['epoch']}" if steps
                    else f"{last['epoch']} of {cell.config.get('epochs', '?')} epochs")
            line += f"  (trained {done}: test error {100 * last['test_error']:.2f}%; resumes there)"
        print(line)


def _after_cell(
    args: argparse.Namespace, experiment: Experiment, results: Results
) -> Callable[[Cell, dict[str, Any]], None]:
    """What follows a finished cell: its analyses and figure (which must not cost the run), then the report."""
    from torchstn.reproduce import draws_figure, error_splits, write_figure, write_report

    def after_cell(cell: Cell, record: dict[str, Any]) -> None:
        try:
            splits = error_splits(cell, record, data_dir=args.data_dir)
            # ([] where the run is gone, e.g. a refresh of cells trained on another machine: what
            # was measured from it when it was there stays)
            record.update({key: bins for key, bins in splits.items() if bins or not record.get(key)})
            if draws_figure(experiment, results.cells, cell):
                write_figure(cell, record, args.out, data_dir=args.data_dir)
        except Exception as err:
            print(f"warning: no figure or analysis for {cell.key}: {err}", file=sys.stderr)
        # stored once, with the stamp of its figure: stored before the figure, a record interrupted while
        # it was drawn lost the runner's mark that its after_cell is due, and the figure for good
        results.add(cell, record)
        write_report(experiment, results, args.out, args.budget)

    return after_cell
