"""``torchstn train``: train a registry model on a dataset into a run directory."""

from __future__ import annotations

import argparse
import dataclasses

from torchstn.cli import CLIError
from torchstn.cli._common import (
    add_data_args,
    add_device_arg,
    apply_threads,
    check_data_args,
    check_model,
    formatter,
    parse_model_args,
    user_errors,
)
from torchstn.engine import TrainConfig, resume_config, train

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  torchstn train --model st-cnn-aff --data mnist-rts --epochs 10 --out runs/st-cnn-rts
  torchstn train --model cnn --data mnist-rts --model-arg pool=2 --epochs 10 --out runs/cnn-rts
  torchstn train --model st-cnn-tps --data mnist-e --steps 150000 --loc-lr-mult 0.01
  torchstn train --model tutorial --data mnist --epochs 20 --batch-size 64 --lr 0.01
  torchstn train --out runs/st-cnn-rts --resume --epochs 20      # continue (bit-exactly) and extend
  torchrun --nproc_per_node=2 -m torchstn train --model st-cnn-aff --data mnist-rts --out runs/ddp

The run directory holds config.json, metrics.jsonl (one line per epoch: loss, error, lr,
images/s, seconds, θ statistics) and checkpoints/{best,last}.safetensors.
"""

#: the options named like a TrainConfig field set that field
_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model_args"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (ST-CNN, CNN, ...) on a dataset",
        description="Train a registry model on a dataset, with evaluation each epoch, θ diagnostics and checkpoints.",
        epilog=EXAMPLES, formatter_class=formatter, argument_default=None,
    )
    p.add_argument("--model", metavar="NAME", help="registry model (default st-cnn-aff; see torchstn.list_models())")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE",
                   help="builder argument, repeatable: pool=2, hidden=128, num_transformers=2")
    add_data_args(p)
    p.add_argument("--online", action="store_const", const=True,
                   help="fresh distortions of the training images every epoch")
    p.add_argument("--ground-truth-init", action="store_const", const=True,
                   help="IC-STN protocol: feed the undistorted digit and its ground-truth distortion as "
                   "init_params (mnist-perturbed with the ic-stn/c-stn/icstn-stn models)")
    p.add_argument("--train-limit", "--limit", type=int, metavar="N", help="use only the first N training images")
    p.add_argument("--test-limit", type=int, metavar="N", help="use only the first N test images")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/MODEL-DATA)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g = p.add_argument_group("optimisation (defaults: the STN paper's SGD recipe)")
    g.add_argument("--epochs", type=int, metavar="N", help="epochs (default 10)")
    g.add_argument("--steps", type=int, metavar="N", help="total iterations instead of --epochs")
    g.add_argument("--batch-size", type=int, metavar="N", help="global batch size (default 256)")
    g.add_argument("--optimizer", choices=("sgd", "adam"), help="default sgd (momentum 0.9)")
    g.add_argument("--lr", type=float, help="learning rate (default 0.01)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="default 0")
    g.add_argument("--schedule", choices=("step", "cosine", "constant"), help="default step")
    g.add_argument("--lr-decay-every", type=int, metavar="STEPS", help="step schedule period (default a third of the run)")
    g.add_argument("--lr-gamma", type=float, help="step schedule factor (default 0.1)")
    g.add_argument("--loc-lr-mult", type=float, help="learning-rate multiplier of the localisation nets (default 0.1)")
    g.add_argument("--identity-reg", type=float, help="weight of the mean((θ - identity)^2) penalty (default 0)")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm (default off)")
    g.add_argument("--seed", type=int, help="seed of initialisation, shuffling and dropout (default 0)")
    g.add_argument("--deterministic", action="store_const", const=True, help="deterministic kernels only")
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model_args = parse_model_args(args.model_arg)
    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None}
    if model_args:
        given["model_args"] = model_args
    check_data_args(args.data, args.data_dir)
    apply_threads(args)
    with user_errors():
        if args.resume:
            if args.out is None:
                raise CLIError("--resume needs --out DIR, the run directory to continue")
            config = resume_config(args.out, **given)
        else:
            config = TrainConfig(**given)
            check_model(config.model, config.model_args)
            check_data_args(config.data, None)
        out = args.out or f"runs/{config.model}-{config.data}"
        train(config, out, resume=args.resume, progress=not args.no_progress)
    return 0
