"""``torchstn reproduce``: run a paper's table cell by cell and write ``results/EXPERIMENT.md``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from torchstn.cli import CLIError
from torchstn.cli._common import apply_threads, check_data_args, formatter, user_errors

__all__ = ["command_line", "register", "run"]

EXAMPLES = """\
examples:
  torchstn reproduce stn-table1 --budget quick                    # the whole table in minutes (smoke test)
  torchstn reproduce stn-table1 --only cnn,st-cnn-aff --datasets rts --threads 2
  torchstn reproduce stn-table1 --budget standard                 # ~10-15 CPU minutes per cell
  torchstn reproduce stn-table1 --budget long --only cnn,st-cnn-aff --datasets rts   # 10x standard
  torchstn reproduce stn-cluttered --only cnn,st-cnn-aff
  torchstn reproduce tutorial
  torchstn reproduce stn-table1 --budget paper --seeds 3 --device cuda   # the paper's 150k iterations

experiments: stn-table1, stn-cluttered, stn-addition, tutorial, icstn-perturbed, pstn-subsets.
Finished cells are recorded in OUT/EXPERIMENT.json and skipped when the command is run
again; a cell that was interrupted resumes from its last checkpoint (runs live under
--runs). After each cell OUT/EXPERIMENT.md (our error beside the paper's, the machine,
the wall time per cell, the commands) and the figures of the transformers are rewritten.
"""


def _keys(text: str | None) -> list[str] | None:
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise CLIError("--only/--datasets expect a comma-separated list of names, e.g. cnn,st-cnn-aff")
    return keys


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces these cells: the experiment and every option that was given.

    Paths are written relative to the current directory, so the recorded command runs on
    another machine from the same place in a checkout (``--data-dir ../shared/data/mnist``),
    not only on the one that ran it.
    """
    parts = ["torchstn", "reproduce", args.experiment, "--budget", args.budget]
    paths = {"--data-dir", "--out", "--runs"}
    for flag, value, default in (
        ("--seeds", args.seeds, None), ("--only", args.only, None), ("--datasets", args.datasets, None),
        ("--data-dir", args.data_dir, None), ("--out", args.out, "results"), ("--runs", args.runs, "runs/reproduce"),
        ("--device", args.device, None), ("--threads", args.threads, None), ("--limit", args.limit, None),
    ):
        if value is not None and flag in paths:
            value = os.path.relpath(value)
        if value is not None and value != default:
            parts += [flag, str(value)]
    return shlex.join(parts)


def register(subparsers: argparse._SubParsersAction) -> None:
    from torchstn.reproduce import BUDGETS, list_experiments

    p = subparsers.add_parser(
        "reproduce", help="reproduce a paper's table (stn-table1, stn-cluttered, tutorial, ...)",
        description="Train every cell (model x dataset x seed) of a published table, resumably, and write "
        "our test errors beside the paper's into OUT/EXPERIMENT.md.",
        epilog=EXAMPLES, formatter_class=formatter,
    )
    p.add_argument("experiment", metavar="EXPERIMENT", help=f"one of: {', '.join(list_experiments())}")
    p.add_argument("--budget", choices=BUDGETS, default="standard",
                   help="quick: smoke test in minutes; standard: ~10-15 CPU minutes per cell; long: 4-10x "
                   "standard (stn-table1, stn-addition); paper: the paper's iterations")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds per cell (default: 1, or 3 for --budget paper)")
    p.add_argument("--only", metavar="MODEL,...", help="run only these rows, e.g. cnn,st-cnn-aff")
    p.add_argument("--datasets", metavar="NAME,...", help="run only these columns, e.g. rts,r")
    p.add_argument("--data-dir", metavar="DIR",
                   help="directory holding the MNIST files (default: $TORCHSTN_DATA, the cache, or a download)")
    p.add_argument("--out", default="results", metavar="DIR", help="where EXPERIMENT.json/.md and the figures go")
    p.add_argument("--runs", default="runs/reproduce", metavar="DIR", help="where the run directories go")
    p.add_argument("--list", action="store_true", help="print the cells and their state, train nothing")
    p.add_argument("--refresh", action="store_true",
                   help="redraw the figures and analyses of the finished cells from their runs and rewrite the "
                   "report, train nothing")
    p.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of torch (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    # a test subset: only the first N training and test images of every cell (not for results)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torchstn.reproduce import (
        Results,
        error_by_rotation,
        get_experiment,
        plan,
        run_experiment,
        write_figure,
        write_report,
    )

    check_data_args(None, args.data_dir)
    apply_threads(args)
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be at least 1, got {args.limit}")
    with user_errors():
        experiment = get_experiment(args.experiment)
        cells = plan(experiment, args.budget, seeds=args.seeds, only=_keys(args.only), datasets=_keys(args.datasets),
                     limit=args.limit)
        if not cells:
            raise CLIError(f"no cells of {experiment.name} match --only/--datasets")
        results = Results(args.out, experiment.name)
        if args.list:
            for cell in cells:
                record = results.finished(cell)
                state = f"{record['error']:.2f}%" if record else "pending"
                paper = "—" if cell.paper is None else f"{cell.paper:.1f}%"
                print(f"{cell.key:<40} {state:>8}  paper {paper}")
            return 0

        def after_cell(cell, record):  # type: ignore[no-untyped-def]
            try:  # analyses and figures must not cost the run
                record["by_rotation"] = error_by_rotation(cell, record, data_dir=args.data_dir)
                results.add(cell, record)
                if cell.seed == 0:
                    write_figure(cell, record, args.out, data_dir=args.data_dir)
            except Exception as err:
                print(f"warning: no figure or analysis for {cell.key}: {err}", file=sys.stderr)
            write_report(experiment, results, args.out, args.budget)

        if args.refresh:
            for cell in cells:
                record = results.finished(cell)
                if record is not None:
                    print(f"refreshing {cell.key}")
                    after_cell(cell, record)
            print(f"report: {write_report(experiment, results, args.out, args.budget)}")
            return 0

        run_experiment(cells, results, args.runs, data_dir=args.data_dir, device=args.device or "auto",
                       command=command_line(args),
                       progress=not args.no_progress and sys.stderr.isatty(), after_cell=after_cell)
        path = write_report(experiment, results, args.out, args.budget)
    print(f"report: {path}")
    return 0
