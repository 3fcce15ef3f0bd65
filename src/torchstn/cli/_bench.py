"""``torchstn bench``: time torchstn against affine_grid+grid_sample and kornia, interleaved."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from torchstn.cli._common import (
    add_device_arg,
    add_threads_arg,
    check_at_least_one,
    check_writable,
    command_line,
    formatter,
)

__all__ = ["register", "run"]

_EXAMPLES = """\
examples:
  torchstn bench                         # every case on the CPU (a few minutes)
  torchstn bench --quick                 # tiny sizes, 2 rounds: checks that everything runs
  torchstn bench --cases 'affine-*' tps-28 --json results/bench.json
  torchstn bench --device cuda --rounds 30

{cases}
Ratios are peer time / torchstn time per round (median over rounds): > 1 means torchstn
is faster. kornia, OpenCV and JAX are timed when installed: pip install 'torchstn[bench]'
installs all three (each is skipped with a note when absent).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand (no ``--data-dir``: every case times random tensors)."""
    from torchstn.bench import CASES, PEER_FLAGS

    cases = textwrap.fill(f"cases: {' '.join(c.name for c in CASES)} (shell patterns work).", width=88)
    parser = subparsers.add_parser(
        "bench",
        help="benchmark warps against affine_grid+grid_sample, kornia, OpenCV and JAX",
        description="Time torchstn, F.affine_grid+F.grid_sample, kornia, OpenCV and JAX on the same work, interleaved "
        "in the same rounds; print medians, per-round ratios, peak memory (CUDA), sampler bandwidth next "
        "to a memcpy, the ST-CNN training-step overhead and the speed targets.",
        epilog=_EXAMPLES.format(cases=cases),
        formatter_class=formatter,
    )
    add_device_arg(parser, default="cpu")
    add_threads_arg(parser)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds (a smoke test)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the measurements as JSON")
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="case names or shell patterns (default: all)")
    parser.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds per pass (default 15, quick 2)")
    parser.add_argument(
        "--backends", nargs="+", metavar="NAME",
        help="sampling backends timed alone (default: all registered but 'reference')",
    )
    for peer, flag in PEER_FLAGS.items():
        parser.add_argument(flag, action="store_true", help=f"do not time {peer} even when installed")
    parser.add_argument(
        "--no-components", action="store_true", help="skip the memcpy / sampler / grid breakdown"
    )
    parser.set_defaults(func=run)


def _recorded_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (for the report and the JSON)."""
    from torchstn.bench import PEER_FLAGS

    return command_line(
        args, ["bench", "--device", args.device],
        ["--quick", "--cases", "--rounds", "--threads", "--backends", *PEER_FLAGS.values(), "--no-components"],
    )


def _peers(args: argparse.Namespace) -> tuple[str, ...]:
    """Every peer but those left out by their flag (``--no-kornia``)."""
    from torchstn.bench import PEER_FLAGS, PEERS

    left_out = {peer for peer, flag in PEER_FLAGS.items() if getattr(args, flag.removeprefix("--").replace("-", "_"))}
    return tuple(p for p in PEERS if p not in left_out)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments and print the report."""
    from torchstn.bench import check_targets, format_report, run_benchmark

    check_at_least_one(args, "rounds")
    if args.backends is not None:  # (named as the flag: the library's message names its argument)
        from torchstn._validation import check_names
        from torchstn.sampling import BACKENDS

        check_names("--backends", args.backends, BACKENDS)
    if args.json is not None:
        check_writable(args.json, "--json")  # (before the minutes of timing, not after)
    report = run_benchmark(
        args.cases,
        device=args.device,
        quick=args.quick,
        rounds=args.rounds,
        peers=_peers(args),
        components=not args.no_components,
        backends=args.backends,
        progress=lambda label: print(f"  timing {label} ...", file=sys.stderr, flush=True),
    )
    report.meta["command"] = _recorded_command(args)
    print(format_report(report))
    if args.json is not None:
        data = report.to_dict()
        data["targets"] = [vars(t) for t in check_targets(report)]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
