"""Arguments and error translation shared by the train, eval, visualize and demo commands."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchstn.cli import CLIError

__all__ = [
    "add_checkpoint_args",
    "add_data_args",
    "add_device_arg",
    "apply_threads",
    "check_data_args",
    "check_model",
    "formatter",
    "load_checkpoint_and_data",
    "parse_key_values",
    "parse_model_args",
    "user_errors",
]


class formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show the defaults that are values (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        hidden = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if not hidden and "%(default)" not in help:
            help += " (default: %(default)s)"
        return help


def add_data_args(parser: argparse.ArgumentParser, *, data_default: str | None = None) -> None:
    """``--data``, ``--data-dir``, ``--data-seed``."""
    parser.add_argument("--data", default=data_default, metavar="NAME",
                        help="dataset (torchstn data list shows them), e.g. mnist, mnist-rts, mnist-cluttered")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="directory holding the MNIST files (default: $TORCHSTN_DATA, the cache, or a download)")
    parser.add_argument("--data-seed", type=int, metavar="N", help="seed of the dataset's distortions")


def add_checkpoint_args(parser: argparse.ArgumentParser, *, which: str) -> None:
    """The positional ``RUN_OR_CKPT``, ``--which``, the data options and ``--device``."""
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run directory or a .safetensors checkpoint")
    parser.add_argument("--which", choices=("best", "last"), default=which, help="checkpoint of a run directory")
    add_data_args(parser)
    add_device_arg(parser)


def load_checkpoint_and_data(args: argparse.Namespace, split: str, limit: int | None) -> tuple[Any, Any, dict[str, Any], Any, Any]:
    """``(model, config, info, device, dataset)`` for the options of :func:`add_checkpoint_args`.

    The dataset is the checkpoint's own unless ``--data`` (``--data-dir``,
    ``--data-seed``) says otherwise; it must have the image size the model was built for.
    """
    from torchstn.engine import load_model, load_split
    from torchstn.engine._trainer import resolve_device

    check_data_args(args.data, args.data_dir)
    apply_threads(args)
    device = resolve_device(args.device or "auto")
    model, config, info = load_model(args.checkpoint, args.which, map_location=device)
    changes = {"data": args.data, "data_dir": args.data_dir, "data_seed": args.data_seed}
    config = config.replace(**{k: v for k, v in changes.items() if v is not None}, train_limit=limit, test_limit=limit)
    dataset = load_split(config, split)
    if tuple(dataset.input_shape) != tuple(model.input_shape):
        raise ValueError(
            f"{config.data} images are {tuple(dataset.input_shape)} but the model was built for "
            f"{tuple(model.input_shape)}; use a dataset of the same size"
        )
    return model, config, info, device, dataset


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--threads``."""
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads of torch (default: torch's; 1 is faster on a busy machine)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count from ``--threads``."""
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def check_model(name: str | None, model_args: dict[str, Any] | None = None) -> None:
    """One-line errors for a model name the registry does not know or an argument its builder does not take.

    Cheap (:func:`torchstn.models.check_model_args` reads the builder's signature), so
    commands call it before loading any data.
    """
    from torchstn.models import check_model_args

    if name is None:
        return
    try:
        check_model_args(name, model_args or {})
    except (TypeError, ValueError) as err:
        raise CLIError(str(err)) from None


def check_data_args(data: str | None, data_dir: str | None) -> None:
    """One-line errors for an unknown dataset name or a data directory that does not exist."""
    if data is not None:
        from torchstn.data import list_datasets

        if data not in list_datasets():
            raise CLIError(f"unknown dataset {data!r}; choose one of: {', '.join(list_datasets())}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise CLIError(
            f"data directory {data_dir} does not exist: create it with the four MNIST files "
            "(train-images-idx3-ubyte.gz, ...) or omit --data-dir to use the cache or download"
        )


def parse_key_values(items: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of a repeated ``flag``; values are JSON (``2``, ``[64, 64]``, ``false``) or else strings.

    Dashes in keys become underscores, so ``--model-arg loc-hidden=32`` names ``loc_hidden``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"{flag} expects KEY=VALUE (e.g. {example}), got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """The ``--model-arg KEY=VALUE`` overrides of a model builder (``pool=2``, ``hidden=[64,64]``)."""
    return parse_key_values(items, "--model-arg", "pool=2")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad values, missing files, bad checkpoints) into :class:`CLIError`.

    ``ValueError`` (which :class:`~torchstn.engine.CheckpointError` is) and
    ``FileNotFoundError`` become one line; anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except CLIError:
        raise
    except (ValueError, FileNotFoundError) as err:
        message = str(err).strip().splitlines()
        raise CLIError(message[0] if message else type(err).__name__) from None
