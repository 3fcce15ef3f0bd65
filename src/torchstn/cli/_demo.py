"""``torchstn demo``: an ST-CNN beside a plain CNN on RTS-distorted MNIST, in a few CPU minutes."""

from __future__ import annotations

import argparse
import inspect

from torchstn.cli._common import add_data_dir_arg, add_device_arg, add_threads_arg, formatter

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  torchstn demo                                   # MNIST from $TORCHSTN_DATA, the cache or a download
  torchstn demo --data-dir ../shared/data/mnist --out runs/demo
  torchstn demo --steps 300 --train-limit 5000    # a one-minute smoke run

It trains the affine ST-CNN and the same CNN without its transformer (both on the 2x
average-pooled image, as the paper's RTS models) for the same steps, prints their test
errors side by side, and writes OUT/demo.png: test digits with the predicted warp drawn on
them, what the transformer made of them, and the training curves.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from torchstn.engine import demo_configs

    default = {name: p.default for name, p in inspect.signature(demo_configs).parameters.items()}
    p = subparsers.add_parser(
        "demo", help="train an ST-CNN and a plain CNN on RTS MNIST and compare them (a few CPU minutes)",
        description="Get MNIST, train an ST-CNN and the same CNN without transformer on RTS-distorted "
        "MNIST, print their test errors and write the figure.",
        epilog=EXAMPLES, formatter_class=formatter,
    )
    add_data_dir_arg(p)
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where the two runs and demo.png go")
    p.add_argument("--steps", type=int, default=default["steps"], metavar="N",
                   help=f"training steps of each model (default {default['steps']})")
    p.add_argument("--batch-size", type=int, default=default["batch_size"], metavar="N",
                   help=f"batch size (default {default['batch_size']})")
    p.add_argument("--lr", type=float, default=default["lr"],
                   help=f"SGD learning rate, divided by 10 at 1/3 and 2/3 (default {default['lr']})")
    p.add_argument("--train-limit", type=int, metavar="N", help="use only the first N training images")
    p.add_argument("--test-limit", type=int, metavar="N", help="use only the first N test images")
    p.add_argument("--seed", type=int, default=default["seed"], help=f"seed of both runs (default {default['seed']})")
    add_device_arg(p)
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from torchstn.engine import run_demo

    result = run_demo(
        args.out, progress=not args.no_progress, data_dir=args.data_dir, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, train_limit=args.train_limit, test_limit=args.test_limit,
        seed=args.seed, device=args.device or "auto",
    )
    print()
    print(f"{'model':<12} {'test error':>10} {'test loss':>10} {'seconds':>8}")
    for row in result.rows:
        print(f"{row['model']:<12} {row['test_error']:>10.2%} {row['test_loss']:>10.4f} {row['seconds']:>8.0f}")
    print(f"figure: {result.figure}   runs: {', '.join(r['run'] for r in result.rows)}   "
          f"total {result.seconds / 60:.1f} min")
    return 0
