"""The one dialect of every ``torchstn`` subcommand: shared options, their checks, errors, help, recorded commands.

An option that more than one subcommand takes (``--data-dir``, ``--device``,
``--threads``, ``--data``, ``--which``, ``--import``) is declared here once, with one help text, and
:func:`apply_shared_args` gives it its meaning before any subcommand runs; :func:`main
<torchstn.cli.main>` turns the errors a user can fix into one line through
:func:`user_errors`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchstn._validation import first_line

__all__ = [
    "CLIError",
    "DATA_DIR_HELP",
    "add_checkpoint_args",
    "add_data_args",
    "add_data_dir_arg",
    "add_device_arg",
    "add_import_arg",
    "add_threads_arg",
    "apply_shared_args",
    "check_at_least_one",
    "check_data_options",
    "check_data_seed",
    "check_data_args",
    "check_model",
    "command_line",
    "formatter",
    "import_user_modules",
    "input_shape_of",
    "load_checkpoint_and_data",
    "parse_key_values",
    "parse_data_options",
    "parse_model_args",
    "user_errors",
]


class CLIError(Exception):
    """A user-facing error: printed as ``torchstn: error: <message>`` with exit status 2."""


class formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show the default of an option that takes a value, when it has one.

    A help text that states its default itself (``"(default: torch's)"``) keeps it. A
    subclass can show another default than the parser's by overriding :meth:`default_of`
    (``torchstn train`` shows :class:`~torchstn.engine.TrainConfig`'s: its options default
    to ``None`` so that the config's default applies).
    """

    def default_of(self, action: argparse.Action) -> Any:
        return action.default

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = self.default_of(action)
        if action.nargs == 0 or default is None or default is argparse.SUPPRESS or "(default" in help:
            return help
        return f"{help} (default: {str(default).replace('%', '%%')})"


# --- the shared options, each declared once ------------------------------------------------------


#: the help of ``--data-dir``, the same in every subcommand
DATA_DIR_HELP = ("directory holding the data: the MNIST files, the CIFAR-10 archive or UCR <Name>/ folders "
                 "(default: $TORCHSTN_DATA, the cache, or a download of MNIST)")


def add_data_dir_arg(parser: argparse.ArgumentParser, *, recorded: str | None = None) -> None:
    """``--data-dir``: where the MNIST files, the CIFAR-10 archive or the UCR folders are;
    ``recorded`` names a run's recorded directory where the command reads that first."""
    help = DATA_DIR_HELP if recorded is None else DATA_DIR_HELP.replace("(default: ", f"(default: {recorded}, then ")
    # (~ expanded: a shell leaves it in --data-dir=~/mnist, and the check below read it as a name)
    parser.add_argument("--data-dir", metavar="DIR", type=os.path.expanduser, help=help)


def add_device_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--device``; ``None`` (the default) means ``auto``."""
    help = "cpu, cuda, cuda:N or auto" + (" (default: auto)" if default is None else "")
    parser.add_argument("--device", metavar="DEV", default=default, help=help)


def add_import_arg(parser: argparse.ArgumentParser) -> None:
    """``--import MODULE`` (repeatable): the user's code that registers their own models."""
    parser.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                        help="import this Python module first: a dotted name (found from the working directory, as "
                             "with python -m) or a .py file; the code that registers your own models with "
                             "torchstn.register_model (repeatable)")


def import_user_modules(names: Sequence[str]) -> None:
    """Import each of ``names`` (``--import``): a ``.py`` file by its path, else a dotted module
    name with the working directory on ``sys.path`` (as ``python -m`` has it, which the
    console script does not). A module that cannot be found is a one-line :class:`CLIError`;
    an error raised by the module's own code keeps its traceback (it is the user's to read)."""
    for name in names:
        if name.endswith(".py"):
            path = Path(name).expanduser().resolve()
            spec = importlib.util.spec_from_file_location(path.stem, path) if path.is_file() else None
            if spec is None or spec.loader is None:
                raise CLIError(f"--import {name}: no such file")
            if getattr(sys.modules.get(spec.name), "__file__", None) == str(path):
                continue  # (imported already, as an import statement would find it)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # (as an import would: dataclasses and pickling look it up)
            spec.loader.exec_module(module)
            continue
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name and not name.startswith(f"{err.name}."):  # (one it imports: the traceback)
                raise
            raise CLIError(f"--import {name}: no module named {err.name!r} (from {os.getcwd()} or sys.path); "
                           "give a dotted module name or a .py file") from None


def add_threads_arg(parser: argparse.ArgumentParser, default: str = "torch's") -> None:
    """``--threads`` (applied by :func:`apply_shared_args`); ``default`` is what the help names when it is
    omitted (a command that sets its own)."""
    parser.add_argument("--threads", type=int, metavar="N",
                        help=f"CPU threads of torch (default: {default}; 1 is faster on a busy machine)")


def add_data_args(parser: argparse.ArgumentParser, *, data_default: str | None = None) -> None:
    """``--data``, ``--data-option``, ``--data-dir``, ``--data-seed``; ``data_default`` is what the help names
    when ``--data`` is omitted."""
    from torchstn.data import list_datasets

    shown = "" if data_default is None else f" (default: {data_default})"
    parser.add_argument("--data", metavar="NAME", help=f"dataset, one of: {', '.join(list_datasets())}{shown}")
    parser.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                        help="a distortion's recipe option, repeatable: supersample=4 (area antialiasing), sigma=3")
    add_data_dir_arg(parser, recorded=None if data_default is None else "the one the run recorded")
    parser.add_argument("--data-seed", type=int, metavar="N", help="seed of the dataset's distortions")


def add_checkpoint_args(parser: argparse.ArgumentParser, *, which: str) -> None:
    """The positional ``RUN_OR_CKPT`` and ``--which``."""
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run directory or a .safetensors checkpoint")
    parser.add_argument("--which", choices=("best", "last"), default=which, help="checkpoint of a run directory")


# --- what the shared options mean ------------------------------------------------------------------


def check_at_least_one(args: argparse.Namespace, *names: str) -> None:
    """A one-line error for each count option among ``names`` that was given below 1."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def check_data_args(data: str | None, data_dir: str | None) -> None:
    """One-line errors for an unknown dataset name or a data directory that does not exist.

    A UCR set ``ucr:<Name>`` is checked against the sets found (``$TORCHSTN_DATA``, the
    cache, aeon's shipped ones) only where some are found and ``--data-dir`` is not given
    (a typo then lists them); otherwise its loader looks for it and, when it is missing,
    says where it looked and how to get it (the files, or aeon, which ships some).
    ``cifar10`` also takes the archive file itself as ``--data-dir``.
    """
    from torchstn.data import UCR_PREFIX, list_datasets

    ucr = data is not None and data.lower().startswith(UCR_PREFIX)
    if ucr and not data[len(UCR_PREFIX):].strip():
        raise CLIError(f"--data {data!r} names no UCR data set; write it as {UCR_PREFIX}<Name>, e.g. {UCR_PREFIX}GunPoint")
    known = list_datasets()
    some_ucr = any(name.startswith(UCR_PREFIX) for name in known)
    # the loader's message says more than this check could
    to_loader = ucr and (data_dir is not None or not some_ucr or data.lower() in map(str.lower, known))
    if data is not None and data not in known and not to_loader:
        where = (f"; for another UCR set, give --data-dir DIR holding {data[len(UCR_PREFIX):]}/ with its _TRAIN and "
                 "_TEST files (.tsv or .ts)" if ucr else "")
        raise CLIError(f"unknown dataset {data!r}; choose one of: {', '.join(known)}{where}")
    if data_dir is not None and not (Path(data_dir).is_dir() or (data == "cifar10" and Path(data_dir).is_file())):
        if Path(data_dir).is_file():
            raise CLIError(f"--data-dir {data_dir} is a file: give the directory that holds the data "
                           f"({Path(data_dir).parent}?)")
        raise CLIError(f"data directory {data_dir} does not exist: {_what_to_put(data)}, or omit --data-dir to use "
                       "$TORCHSTN_DATA or the cache")


def _what_to_put(data: str | None) -> str:
    """What a missing ``--data-dir`` should hold for the dataset ``data``."""
    from torchstn.data import CIFAR10_URL, MNIST_FILES, UCR_PREFIX, UCR_URL

    if data == "cifar10":
        return (f"create it with cifar-10-python.tar.gz ({CIFAR10_URL}) or the cifar-10-batches-py/ folder it "
                "extracts to (or give the .tar.gz itself)")
    if data is not None and data.lower().startswith(UCR_PREFIX):
        name = data[len(UCR_PREFIX):]
        return f"create it holding {name}/ with {name}_TRAIN.tsv and {name}_TEST.tsv ({UCR_URL}) or the .ts files"
    files = ", ".join(f"{name}.gz" for name in MNIST_FILES)
    return (f"create it with the four MNIST files ({files}; a download where omitted), the CIFAR-10 archive "
            "(--data cifar10) or UCR <Name>/ folders (--data ucr:<Name>)")


def apply_shared_args(args: argparse.Namespace) -> None:
    """Give the shared options their meaning before a subcommand runs.

    ``--import`` imports the user's modules first (their models registered before any
    name is checked); ``--threads`` sets torch's CPU threads; ``--data`` and ``--data-dir`` are checked
    (cheaply: nothing is loaded) so that a typo is a one-line error before any work (a run
    records ``--data-dir`` absolute: :func:`~torchstn.engine.train` makes it so).
    """
    import_user_modules(getattr(args, "imports", None) or ())
    check_at_least_one(args, "threads")
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)
    check_data_args(getattr(args, "data", None), getattr(args, "data_dir", None))


def check_model(name: str | None, model_args: dict[str, Any] | None = None) -> None:
    """One-line errors for a model name the registry does not know or an argument its builder does not take.

    Cheap (:func:`torchstn.models.check_model_args` reads the builder's signature), so
    commands call it before loading any data.
    """
    from torchstn.models import check_model_args, list_models

    if name is None:
        return
    try:
        check_model_args(name, model_args or {})
    except (TypeError, ValueError) as err:
        your_own = "" if name in list_models() else " (your own model: --import the module that registers it)"
        raise CLIError(f"{err}{your_own}") from None


def check_data_options(name: str, options: dict[str, Any]) -> None:
    """One-line errors for ``--data-option``s the dataset does not take or accept.

    Cheap (:func:`torchstn.data.check_dataset_options` loads nothing), so commands call it
    before any data.
    """
    from torchstn.data import check_dataset_options

    if not options:
        return
    try:
        check_dataset_options(name, options)
    except (TypeError, ValueError) as err:
        raise CLIError(f"--data-option: {first_line(err)}") from None


def check_data_seed(given: bool, data: str) -> None:
    """Refuse ``--data-seed`` for a set without distortions to seed (mnist, cifar10, a UCR set:
    not :data:`torchstn.data.DISTORTED`): it was taken, recorded and ignored."""
    from torchstn.data import DISTORTED

    if given and data.lower() not in DISTORTED:
        raise CLIError(f"--data-seed seeds a distorted set's distortions; {data} is not distorted, "
                       "so it has none to seed")


def load_checkpoint_and_data(args: argparse.Namespace, split: str, limit: int | None) -> tuple[Any, Any, dict[str, Any], Any, Any]:
    """``(model, config, info, device, dataset)`` for :func:`add_checkpoint_args`, :func:`add_data_args` and ``--device``.

    The dataset is the checkpoint's own unless ``--data`` (``--data-option``, ``--data-dir``,
    ``--data-seed``) says otherwise, its first ``limit`` items; it must have the image size
    the model was built for. The run's recipe options belong to its own data: on it a
    ``--data-option`` changes that option and keeps the others; another ``--data`` takes only
    the ``--data-option`` given. ``config`` is the run's with those data options: its
    ``test_limit`` still says which images the run's metrics were measured on; ``info["run_config"]``
    is the run's own, as recorded. Without ``--data-option`` the run is measured on the law its data
    were drawn by (:func:`~torchstn.engine.run_data`: a note where a recipe has changed since).
    """
    from torchstn.engine import load_model, load_split, resolve_device, run_data

    device = resolve_device(args.device or "auto")
    model, config, info = load_model(args.checkpoint, args.which, map_location=device)
    info["run_config"] = config
    changes = {"data": args.data, "data_dir": args.data_dir, "data_seed": args.data_seed}
    if args.data is not None and args.data != config.data:  # another dataset: only the options given
        changes["data_options"] = parse_data_options(args.data_option)
    elif args.data_option:  # the run's own data: the options given change the run's, the others stay
        changes["data_options"] = {**config.data_options, **parse_data_options(args.data_option)}
    config = config.replace(**{k: v for k, v in changes.items() if v is not None})
    check_data_options(config.data, config.data_options)
    check_data_seed(args.data_seed is not None, config.data)
    # the law the run was trained on, where this torchstn draws another for its config (a recipe changed since)
    config, note = run_data(config, info, chosen="data_options" in changes)
    if note:
        print(f"note: {note}", file=sys.stderr)
    # the fixed set, also of an online run (its test split is fixed, its epoch 0 is the fixed set): another
    # --data may have nothing to redraw, and mnist refuses online=True
    dataset = load_split(config.replace(train_limit=limit, test_limit=limit, online=False), split)
    built_for = input_shape_of(model, config)
    if built_for is not None and tuple(dataset.input_shape) != built_for:
        raise ValueError(
            f"{config.data} images are {tuple(dataset.input_shape)} but the model was built for "
            f"{built_for}; use a dataset of the same size"
        )
    return model, config, info, device, dataset


def input_shape_of(model: Any, config: Any) -> tuple[int, ...] | None:
    """The ``(C, *size)`` a run's model was built for: its ``input_shape`` (the library's
    models declare it), else the ``in_channels`` and ``input_size`` its builder was given
    (a user's model: the engine fills them in from the data, unless given as model
    arguments; an int ``input_size`` does not say its rank), else ``None``."""
    shape = getattr(model, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    args = config.model_args
    channels, size = args.get("in_channels"), args.get("input_size")
    # (an int input_size, given by the user, does not say its rank: a signal's (L,) or an image's (L, L))
    if isinstance(channels, int) and isinstance(size, (list, tuple)):
        return (channels, *size)
    return None


# --- values, errors, recorded commands --------------------------------------------------------------


def parse_key_values(items: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of a repeated ``flag``; values are JSON (``2``, ``[64, 64]``, ``false``), else
    Python literals (``False``, ``None``, ``(0.5, 1.5)``: the Python API's spellings, which the docs
    use), else strings.

    (``keep_inside=False`` was the string "False", refused as "must be a bool, got str".) Dashes
    in keys become underscores, so ``--model-arg loc-hidden=32`` names ``loc_hidden``.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"{flag} expects KEY=VALUE (e.g. {example}), got {item!r}")
        out[key.replace("-", "_")] = _value(value)
    return out


def _value(text: str) -> Any:
    """A ``KEY=VALUE`` value: JSON, else a Python literal, else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_data_options(items: list[str] | None) -> dict[str, Any]:
    """The ``--data-option KEY=VALUE`` recipe options of a distortion (``supersample=4``, ``sigma=3``)."""
    return parse_key_values(items, "--data-option", "supersample=4")


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """The ``--model-arg KEY=VALUE`` overrides of a model builder (``pool=2``, ``hidden=[64,64]``)."""
    return parse_key_values(items, "--model-arg", "pool=2")


@contextlib.contextmanager
def user_errors(*also: type[Exception], extra: str = "cli") -> Iterator[None]:
    """Turn the errors a user can fix into :class:`CLIError` (one line, exit status 2).

    Those are ``ValueError`` (which :class:`~torchstn.engine.CheckpointError` is),
    ``OSError`` (a missing file, a directory that cannot be written), ``ImportError`` (an
    optional dependency: the message names the ``extra`` that installs it) and the types
    in ``also`` (``TypeError`` where a user's ``KEY=VALUE`` reaches a signature).
    Anything else is a bug and keeps its traceback. :func:`~torchstn.cli.main` runs every
    subcommand inside it; a subcommand nests another to widen it.
    """
    try:
        yield
    except (CLIError, BrokenPipeError):  # (the reader of stdout left: main's, not the user's, to end quietly)
        raise
    except ImportError as err:
        message = first_line(err)  # (the library's own messages may name the extra already)
        hint = "" if "pip install" in message else f"; install the extra: pip install 'torchstn[{extra}]'"
        raise CLIError(message + hint) from None
    except OSError as err:  # our FileNotFoundErrors carry a message; the system's a file name and a reason
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else err.filename  # (a rename names both)
        message = f"{where}: {err.strerror}" if err.filename and err.strerror else first_line(err)
        raise CLIError(message) from None
    except (ValueError, *also) as err:
        raise CLIError(first_line(err)) from None


def check_writable(file: Path, option: str) -> None:
    """A one-line error, before any work, where ``file`` cannot be written (found after the work,
    they were tracebacks or errors that lost it): a directory in its place, or a parent that
    cannot be made or written (a file made and removed there: asking for permission would be
    wrong for root). ``option`` names the flag that gave the path."""
    if file.is_dir():
        raise CLIError(f"{file}: is a directory; {option} names the file to write")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=file.parent).close()
    except OSError as err:
        raise CLIError(f"{file.parent}: cannot write there ({option} {file}): {err.strerror}") from None


def command_line(
    args: argparse.Namespace,
    words: Sequence[str],
    options: Sequence[str],
    *,
    paths: Collection[str] = (),
    defaults: Mapping[str, object] | None = None,
) -> str:
    """The command that reproduces a run, as one shell line: ``torchstn WORDS`` and the ``options`` that were given.

    An option is written when its value is not ``None``, ``False`` or its entry in
    ``defaults``: a flag (``True``) alone, a list as its items. The values of the options
    in ``paths`` are written relative to the current directory, so the command runs on
    another machine from the same place in a checkout (``--data-dir ../shared/data/mnist``),
    except an absolute path outside it, which stays absolute (``../../data/mnist`` from
    ``/tmp/me`` runs from ``/tmp/me`` only; the path as given runs from anywhere).

    Example:
        >>> args = argparse.Namespace(experiment="tutorial", budget="quick", seeds=None, quick=True, cases=["t*"])
        >>> command_line(args, ["reproduce", args.experiment, "--budget", args.budget], ["--seeds", "--quick", "--cases"])
        "torchstn reproduce tutorial --budget quick --quick --cases 't*'"
    """
    parts = ["torchstn", *words]
    for flag in options:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None and flag in paths:
            relative = os.path.relpath(value)
            value = str(value) if os.path.isabs(value) and relative.split(os.sep)[0] == os.pardir else relative
        if value is None or value is False or value == (defaults or {}).get(flag):
            continue
        parts += [flag] if value is True else [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return shlex.join(parts)
