"""``torchstn bench``: time torchstn against affine_grid+grid_sample and kornia, interleaved."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torchstn.cli import CLIError

__all__ = ["register", "run"]

_EXAMPLES = """\
examples:
  torchstn bench                         every case on the CPU (a few minutes)
  torchstn bench --quick                 tiny sizes, 2 rounds: checks that everything runs
  torchstn bench --cases 'affine-*' tps-28 --json results/bench.json
  torchstn bench --device cuda --rounds 30

cases: affine-28 affine-60to30 affine-64 affine-224 translation-28 attention-28
similarity-28 projective-64 tps-28 tps-224 affine3d-32 st-cnn (shell patterns work).
Ratios are peer time / torchstn time per round (median over rounds): > 1 means torchstn
is faster. kornia is timed when installed: pip install 'torchstn[bench]'.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="benchmark warps against affine_grid+grid_sample and kornia",
        description="Time torchstn, F.affine_grid+F.grid_sample and kornia on the same work, interleaved "
        "in the same rounds; print medians, per-round ratios, peak memory (CUDA), sampler bandwidth next "
        "to a memcpy, the ST-CNN training-step overhead and the issue-8 targets.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds (a smoke test)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the measurements as JSON")
    parser.add_argument("--cases", nargs="+", metavar="CASE", help="case names or shell patterns (default: all)")
    parser.add_argument("--rounds", type=int, metavar="N", help="interleaved rounds per pass (default 15, quick 2)")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch intra-op threads (default: torch's, usually the core count)"
    )
    parser.add_argument(
        "--backends", nargs="+", metavar="NAME",
        help="sampling backends timed alone (default: all registered but 'reference')",
    )
    parser.add_argument("--no-kornia", action="store_true", help="do not time kornia even when installed")
    parser.add_argument(
        "--no-components", action="store_true", help="skip the memcpy / sampler / grid breakdown"
    )
    parser.set_defaults(func=run)


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (for the report and the JSON)."""
    words = ["torchstn", "bench", "--device", args.device]
    if args.quick:
        words.append("--quick")
    if args.cases:
        words += ["--cases", *args.cases]
    if args.rounds is not None:
        words += ["--rounds", str(args.rounds)]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    if args.backends:
        words += ["--backends", *args.backends]
    words += ["--no-kornia"] if args.no_kornia else []
    words += ["--no-components"] if args.no_components else []
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments and print the report."""
    import torch

    from torchstn.bench import check_targets, format_report, run_benchmark
    from torchstn.sampling import BACKENDS

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is available to torch (torch.cuda.is_available() is False)")
    if args.rounds is not None and args.rounds < 1:
        raise CLIError(f"--rounds must be >= 1, got {args.rounds}")
    unknown = sorted(set(args.backends or ()) - set(BACKENDS))
    if unknown:
        raise CLIError(f"--backends: unknown {unknown}; the registered backends are {sorted(BACKENDS)}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    peers = ("torch",) if args.no_kornia else ("torch", "kornia")
    try:
        report = run_benchmark(
            args.cases,
            device=args.device,
            quick=args.quick,
            rounds=args.rounds,
            peers=peers,
            components=not args.no_components,
            backends=args.backends,
            progress=lambda label: print(f"  timing {label} ...", file=sys.stderr, flush=True),
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    report.meta["command"] = _command(args)
    print(format_report(report))
    if args.json is not None:
        data = report.to_dict()
        data["targets"] = [vars(t) for t in check_targets(report)]
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(data, indent=2) + "\n")
        except OSError as err:
            raise CLIError(f"--json {args.json}: cannot write it ({err.strerror})") from None
        print(f"wrote {args.json}")
    return 0
