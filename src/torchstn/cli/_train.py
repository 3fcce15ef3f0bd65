"""``torchstn train``: train a registry model on a dataset into a run directory."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator

from torchstn._validation import first_line
from torchstn.cli._common import (
    CLIError,
    add_data_args,
    add_device_arg,
    add_import_arg,
    add_threads_arg,
    check_data_options,
    check_data_seed,
    check_model,
    formatter,
    parse_data_options,
    parse_model_args,
)
from torchstn.engine import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, resume_config, train

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  torchstn train --model st-cnn-aff --data mnist-rts --epochs 10 --out runs/st-cnn-rts
  torchstn train --model cnn --data mnist-rts --model-arg pool=2 --epochs 10 --out runs/cnn-rts
  torchstn train --model st-cnn-aff --data mnist-rts --data-option supersample=4 --model-arg pool=2 --online
  torchstn train --model st-cnn-tps --data mnist-e --steps 150000 --loc-lr-mult 0.01
  torchstn train --model tutorial --data mnist --epochs 20 --batch-size 64 --lr 0.01
  torchstn train --model pstn-cnn1d-cpab --data ucr:GunPoint --optimizer adam --lr 1e-3 --batch-size 16 --epochs 200
  torchstn train --model st-cnn-3d-aff --data mnist-3d --model-arg pool=2 --train-limit 10000 --optimizer adam --lr 1e-3
  torchstn train --model st-cnn-cifar --data cifar10 --data-dir DIR --epochs 50 --batch-size 64 --lr 0.01 --momentum 0
  torchstn train --out runs/st-cnn-rts --resume                  # continue an interrupted run, bit-exactly
  torchstn train --out runs/st-cnn-rts --resume --epochs 20      # extend it (its schedule stretched to 20)
  torchrun --nproc_per_node=2 -m torchstn train --model st-cnn-aff --data mnist-rts --out runs/ddp

Data: MNIST and its distortions (downloaded where missing), mnist-3d (volumes), cifar10
(cifar-10-python.tar.gz in --data-dir) and ucr:<Name> (a UCR set: aeon's shipped ones, or
<Name>/ in --data-dir). The run directory holds config.json, metrics.jsonl (one line per
epoch: loss, error, lr, images/s, seconds, θ statistics) and checkpoints/{best,last}.safetensors.
"""

#: the options named like a TrainConfig field set that field; they default to None so the config's default applies
_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("model_args", "data_options")]
_DEFAULTS = {name: getattr(TrainConfig(), name) for name in _FIELDS}


class _formatter(formatter):
    """Show the :class:`~torchstn.engine.TrainConfig` default of an option that sets a config field."""

    def default_of(self, action: argparse.Action) -> object:
        return _DEFAULTS.get(action.dest, action.default)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (ST-CNN, CNN, ...) on a dataset",
        description="Train a registry model on a dataset, with evaluation each epoch, θ diagnostics and checkpoints.",
        epilog=EXAMPLES, formatter_class=_formatter, argument_default=None,
    )
    p.add_argument("--model", metavar="NAME", help="registry model (torchstn.list_models() lists them)")
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
    _add_optimisation_args(p)
    add_device_arg(p)
    add_threads_arg(p)
    add_import_arg(p)
    p.add_argument("--channels-last", action="store_const", const=True,
                   help="channels-last memory format for images and convolutions (faster on CPU, same values)")
    p.add_argument("--precision", choices=PRECISIONS, help="bf16: autocast the network's matmuls and convolutions (faster only on a CPU with native bfloat16, AVX-512 BF16 or AMX; elsewhere a warning says it is slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _add_optimisation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (defaults: the STN paper's SGD recipe)")
    length = g.add_mutually_exclusive_group()  # (--epochs beside --steps was ignored without a word)
    length.add_argument("--epochs", type=int, metavar="N", help="passes over the training set")
    length.add_argument("--steps", type=int, metavar="N", help="total iterations instead of --epochs")
    g.add_argument("--batch-size", type=int, metavar="N", help="global batch size")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd uses --momentum")
    g.add_argument("--lr", type=float, help="learning rate")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, help="L2 weight decay")
    g.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule")
    g.add_argument("--lr-decay-every", type=int, metavar="STEPS", help="step schedule period (default a third of the run)")
    g.add_argument("--lr-gamma", type=float, help="step schedule factor")
    g.add_argument("--warmup", type=float, metavar="W",
                   help="linear learning-rate warm-up: a fraction of the run's steps if < 1, else a number of steps")
    g.add_argument("--loc-lr-mult", type=float, help="learning-rate multiplier of the localisation nets")
    g.add_argument("--identity-reg", type=float, help="weight of the mean((θ - identity)^2) penalty")
    g.add_argument("--label-smoothing", type=float, metavar="EPS", help="label smoothing of the training loss")
    g.add_argument("--ema", type=float, metavar="DECAY",
                   help="evaluate, checkpoint and keep a moving average of the weights with this decay per step "
                        "(e.g. 0.9995); the raw weights' test error is printed beside it")
    g.add_argument("--grad-clip", type=float, metavar="NORM", help="clip the gradient norm (default off)")
    g.add_argument("--seed", type=int, help="seed of initialisation, shuffling and dropout")
    g.add_argument("--deterministic", action="store_const", const=True, help="deterministic kernels only")


def run(args: argparse.Namespace) -> int:
    if args.out is not None and not args.out.strip():  # ("" trained into runs/MODEL-DATA without a word)
        raise CLIError("--out is empty: give the run directory, or leave --out out for runs/MODEL-DATA")
    model_args = parse_model_args(args.model_arg)
    given = {name: getattr(args, name) for name in _FIELDS if getattr(args, name, None) is not None}
    if model_args:
        given["model_args"] = model_args
    if args.data_option:
        given["data_options"] = parse_data_options(args.data_option)
    if args.resume:
        if args.out is None:
            raise CLIError("--resume needs --out DIR, the run directory to continue")
        with _flag_named(given):
            config = resume_config(args.out, **given)
    else:
        with _flag_named(given):
            config = TrainConfig(**given)
        check_model(config.model, config.model_args)
        check_data_options(config.data, config.data_options)
    _check_used(given, config)
    out = args.out or f"runs/{config.model}-{config.data}"
    train(config, out, resume=args.resume, progress=not args.no_progress)
    return 0


@contextlib.contextmanager
def _flag_named(given: dict[str, object]) -> Iterator[None]:
    """A config field's error, such as ``lr_decay_every must be >= 1, got 0``, prefixed with the flag
    that sets the field (``--lr-decay-every: ...``; ``--train-limit`` also for its alias ``--limit``)."""
    try:
        yield
    except (TypeError, ValueError) as err:
        message = first_line(err)
        field = next((name for name in given if message.startswith(f"{name} ")), None)
        if field is None or field in ("model_args", "data_options"):
            raise
        raise CLIError(f"--{field.replace('_', '-')}: {message}") from None


def _check_used(given: dict[str, object], config: TrainConfig) -> None:
    """Refuse the options given that this run would not use: config.json recorded them (an Adam
    run's ``--momentum 0.5``, a cosine schedule's ``--lr-gamma``, mnist's ``--data-seed 5``) and
    the run went on without them, as ``--online`` on mnist is refused."""
    if "momentum" in given and config.optimizer != "sgd":
        raise CLIError(f"--momentum is SGD's; this run's optimizer is {config.optimizer} (--optimizer sgd uses it)")
    for field in ("lr_decay_every", "lr_gamma"):
        if field in given and config.schedule != "step":
            raise CLIError(f"--{field.replace('_', '-')} sets the step schedule; this run's schedule is "
                           f"{config.schedule} (--schedule step uses it)")
    check_data_seed("data_seed" in given, config.data)
