"""The ``torchstn`` command: a thin layer of argument parsing over importable functions.

Each subcommand lives in its own module ``torchstn.cli._<name>`` that defines
``register(subparsers)`` (adding its parser and setting ``func``) and is listed in
:data:`SUBCOMMANDS`. They speak one dialect, ``torchstn.cli._common``: the options they
share are declared and applied there, and the errors a user can fix (raised as
:class:`CLIError`, or a ``ValueError``/``OSError``/``ImportError`` from below) are printed
as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence

from torchstn._version import __version__
from torchstn.cli._common import CLIError, apply_shared_args, user_errors

__all__ = ["CLIError", "SUBCOMMANDS", "build_parser", "main"]

EXAMPLES = """\
examples:
  torchstn demo --data-dir ../shared/data/mnist      # an ST-CNN beside a CNN in a few CPU minutes
  torchstn train --model st-cnn-aff --data mnist-rts --epochs 10 --out runs/st-cnn-rts
  torchstn reproduce stn-table1 --budget quick

Run 'torchstn COMMAND --help' for the examples of each command.
"""

#: modules under ``torchstn.cli`` that each register one subcommand, in help order
SUBCOMMANDS: list[str] = ["demo", "data", "train", "eval", "visualize", "bench", "export", "reproduce"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchstn",
        description="Spatial transformer networks for PyTorch: train, inspect, benchmark and reproduce.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"torchstn {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"torchstn.cli._{name}").register(subparsers)
    for sub in subparsers.choices.values():  # a misspelt option is reported with its command's usage
        sub.set_defaults(command_parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchstn`` console script; returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage for 'torchstn train --stepz 5'
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not hasattr(args, "func"):
        parser.print_help()
        return 0
    try:
        with user_errors(), _one_line_warnings():
            apply_shared_args(args)
            return int(args.func(args) or 0)
    except CLIError as err:
        print(f"torchstn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchstn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader left (`torchstn export RUN | head -1`): ended quietly, as other commands
        # end, not with "error: [Errno 32] Broken pipe"; stdout pointed at devnull so that the flush at
        # exit fails no more (Python's advice, in the signal module's notes on SIGPIPE)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    return f"torchstn: warning: {message}\n"


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Print the command's warnings as ``torchstn: warning: MESSAGE``, not as Python does (the path of
    torchstn's source file and the line that warned, which say nothing to a user of the command).

    Only the format is replaced, for the command's run: filters (``-W``, ``PYTHONWARNINGS``) still decide
    which warnings show, a capture (``catch_warnings(record=True)``, pytest) still receives them, and
    ``main()`` called from Python leaves the library's warnings as Python prints them afterwards.
    """
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous
