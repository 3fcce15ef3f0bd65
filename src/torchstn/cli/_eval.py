"""``torchstn eval``: test error, loss and per-class error of a trained model."""

from __future__ import annotations

import argparse
import json
import math

from torchstn.cli._common import (
    add_checkpoint_args,
    add_data_args,
    add_device_arg,
    add_import_arg,
    add_threads_arg,
    check_at_least_one,
    formatter,
    load_checkpoint_and_data,
)

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  torchstn eval runs/st-cnn-rts                      # best checkpoint, on the data it was trained on
  torchstn eval runs/st-cnn-rts --which last --json
  torchstn eval runs/st-cnn-rts/checkpoints/best.safetensors --data-seed 1 --limit 2000   # fresh distortions
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="test error, loss and per-class error of a run or checkpoint",
        description="Evaluate a trained model on the test split of its dataset (or of --data).",
        epilog=EXAMPLES, formatter_class=formatter,
    )
    add_checkpoint_args(p, which="best")
    add_data_args(p, data_default="the checkpoint's")
    add_device_arg(p)
    add_threads_arg(p)
    add_import_arg(p)
    p.add_argument("--split", choices=("test", "train"), default="test", help="split to evaluate")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="evaluation batch size (default: the run's; a P-STN's draws depend on it)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object (null where a value is not finite)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torchstn.engine import evaluate, evaluation_draws

    check_at_least_one(args, "limit", "batch_size")
    model, config, info, device, dataset = load_checkpoint_and_data(args, args.split, args.limit)
    # (the run's batches: a P-STN's θ depend on them; 512 missed the record of a run evaluated in batches of 24)
    batch_size = config.eval_batch_size if args.batch_size is None else args.batch_size
    with evaluation_draws(info["path"], config.seed):
        metrics = evaluate(model, dataset, batch_size=batch_size, device=device, **config.call_options())
    metrics = {"checkpoint": str(info["path"]), "epoch": info["epoch"], "model": config.model,
               "data": config.data, "split": args.split, **metrics}
    if args.json:  # strict JSON: a value that is not finite (a diverged run's loss) is null, not NaN
        print(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in metrics.items()},
                         allow_nan=False))
        return 0
    n = metrics["n"]
    line = (f"{config.model} ({info['path']}, epoch {info['epoch']}) on {config.data} {args.split}: "
            f"error {metrics['error']:.2%} ({round(metrics['error'] * n)}/{n}), loss {metrics['loss']:.4f}")
    if "ece" in metrics:
        line += f", ECE {metrics['ece']:.4f}, NLL {metrics['nll']:.4f}"
    print(line)
    recorded = info["run_config"].test_limit
    own_data = args.data is None and not args.data_option and args.data_seed is None
    if args.split == "test" and args.limit is None and own_data and recorded is not None and recorded != n:
        print(f"(on all {n:,} test images; the run's record is of its first {recorded:,}: --limit {recorded})")
    per_class = "  ".join(
        f"{k}: {'-' if e is None else f'{e:.1%}'}" for k, e in enumerate(metrics["per_class_error"])
    )
    print(f"per-class error  {per_class}")
    return 0
