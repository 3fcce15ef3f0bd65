"""``torchstn export``: a trained run or checkpoint as ONNX or TorchScript, checked against eager."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchstn._validation import first_line
from torchstn.cli._common import (
    CLIError,
    add_checkpoint_args,
    add_import_arg,
    add_threads_arg,
    check_at_least_one,
    check_writable,
    formatter,
    input_shape_of,
    user_errors,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["register", "run"]

_EXAMPLES = """\
examples:
  torchstn demo --out runs/demo                      # trains runs/demo/st-cnn-aff and runs/demo/cnn
  torchstn export runs/demo/st-cnn-aff               # writes runs/demo/st-cnn-aff/export/best.onnx
  torchstn export runs/demo/st-cnn-aff --format torchscript --out st.pt
  torchstn export runs/demo/cnn/checkpoints/last.safetensors --out cnn.onnx

The file runs without torchstn (onnxruntime, or torch.jit.load) with any batch size
(--fixed-batch to freeze it) at the input size the model was trained on. An ONNX file is
self-contained (weights inside) unless the weights exceed protobuf's 2 GB limit; then they
are written beside it and both files are named. After writing, the file is run on a batch
of another size and compared with the eager model; a difference above --atol is an error.
ONNX needs: pip install 'torchstn[export]'.
"""

_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand.

    No ``--data-dir`` (the example input is random) and no ``--device``: the model is
    traced on the CPU, where the exported file is checked (onnxruntime's CPU provider),
    so that no device is written into it.
    """
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript",
        description="Rebuild the model of a run directory or checkpoint, export it (eval mode, dynamic batch) "
        "and check the exported file against eager PyTorch.",
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    add_checkpoint_args(parser, which="best")
    parser.add_argument(
        "--format", choices=tuple(_SUFFIX), help="default: from --out's suffix (.onnx, else torchscript), else onnx"
    )
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="default: RUN/export/<checkpoint>.onnx or .pt (for a checkpoint file, export/ beside it)")
    parser.add_argument("--fixed-batch", action="store_true", help="freeze the batch size at --batch")
    parser.add_argument("--batch", type=int, default=2, metavar="N", help="batch size of the example input")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    parser.add_argument(
        "--legacy-onnx", action="store_true", help="use torch's older TorchScript-based ONNX exporter (faster)"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - eager|")
    parser.add_argument("--no-check", action="store_true", help="do not run the exported file against eager")
    add_threads_arg(parser)
    add_import_arg(parser)
    parser.set_defaults(func=run)


def _default_out(run_or_ckpt: Path, checkpoint: Path, fmt: str) -> Path:
    base = run_or_ckpt if run_or_ckpt.is_dir() else checkpoint.parent
    return base / "export" / (checkpoint.name.removesuffix(".safetensors") + _SUFFIX[fmt])


def run(args: argparse.Namespace) -> int:
    """Export from parsed arguments; prints what was written and the parity check."""
    import torch

    from torchstn.engine import load_model

    check_at_least_one(args, "batch")
    if not args.atol >= 0 or args.atol == float("inf"):  # (-1 or nan: the whole export ran, then the check failed)
        raise CLIError(f"--atol must be a finite number >= 0, got {args.atol}")
    fmt = args.format or ("onnx" if args.out is None or args.out.suffix == ".onnx" else "torchscript")
    _check_onnx_options(args, fmt)
    if args.opset is not None and not 7 <= args.opset <= _newest_opset():
        raise CLIError(f"--opset must be in [7, {_newest_opset()}] (the opsets of the installed onnx), "
                       f"got {args.opset}")
    model, config, info = load_model(args.checkpoint, which=args.which)
    # (a diverged run's weights: its export was written, then its check said "differs from eager by nan",
    # which read as the exporter's fault)
    broken = [name for name, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()]
    if broken:
        raise CLIError(f"{info['path']} holds weights that are not finite ({len(broken)} tensors, e.g. {broken[0]}): "
                       "the run diverged, so there is nothing to export")
    shape = input_shape_of(model, config)
    if shape is None:
        raise CLIError(f"model {config.model!r} does not say its input shape (no input_shape attribute, and the "
                       "run's model_args hold no in_channels and input_size list): give the model an input_shape "
                       "attribute, (C, H, W)")
    out = args.out if args.out is not None else _default_out(Path(args.checkpoint), Path(info["path"]), fmt)
    check_writable(out, "--out")
    generator = torch.Generator().manual_seed(0)
    _export(fmt, model, config.model, torch.rand(args.batch, *shape, generator=generator), out, args)
    # (a TorchScript trace keeps the batch symbolic wherever the model does: --fixed-batch fixes nothing there)
    batch_note = ("dynamic batch" if not args.fixed_batch else f"batch fixed at {args.batch}" if fmt == "onnx"
                  else f"traced at batch {args.batch}")
    batch = args.batch if args.fixed_batch else "B"
    _report_files(out, f"{fmt}, {config.model}, input ({batch}, {', '.join(map(str, shape))}), {batch_note}")
    for note in _differs_from_the_run(config):
        print(f"note: {note}")
    if not args.no_check:
        check_batch = args.batch if args.fixed_batch else args.batch + 3
        _check(out, model, torch.rand(check_batch, *shape, generator=generator), args.atol)
    return 0


def _differs_from_the_run(config: Any) -> list[str]:
    """What the exported model computes otherwise than the run's evaluation did (said, not hidden:
    the file's check compares it with the float32 model called on the image alone)."""
    notes = []
    if config.precision == "bf16":
        notes.append("the run evaluated under bf16 autocast (--precision bf16); the exported model computes in "
                     "float32, so its logits differ from the run's by bfloat16's rounding")
    if config.ground_truth_init:
        notes.append("the run was fed the undistorted digit and its ground-truth warp (--ground-truth-init); the "
                     "exported model takes the image alone and starts from the identity warp")
    return notes


def _check_onnx_options(args: argparse.Namespace, fmt: str) -> None:
    """Refuse the ONNX exporter's options for another format: they were ignored without a word
    (``--out model.bin --legacy-onnx`` wrote TorchScript)."""
    options = (("--legacy-onnx", args.legacy_onnx), (f"--opset {args.opset}", args.opset is not None))
    given = [flag for flag, on in options if on]
    if fmt == "onnx" or not given:
        return
    source = "--format torchscript" if args.format else f"from --out's suffix {args.out.suffix or '(none)'}"
    several = len(given) > 1
    raise CLIError(f"{' and '.join(given)} {'apply' if several else 'applies'} to ONNX exports only, and this export "
                   f"is torchscript ({source}); give --format onnx or leave {'them' if several else 'it'} out")


def _export(fmt: str, model: nn.Module, name: str, example: torch.Tensor, out: Path, args: argparse.Namespace) -> None:
    from torchstn.export import export_onnx, export_torchscript

    dynamic = not args.fixed_batch
    # (onnxscript logs the traceback of a failed conversion before it raises: the error below says it in one line)
    with user_errors(extra="export"), _silenced("onnxscript"), _noticing_interrupts() as interrupted:
        try:  # (onnx, onnxscript: the export extra)
            if fmt == "onnx":
                export_onnx(model, example, out, dynamic_batch=dynamic, opset=args.opset, dynamo=not args.legacy_onnx)
            else:
                export_torchscript(model, example, out, dynamic_batch=dynamic)
        except (ImportError, OSError, ValueError):  # (the extra missing, the file, our own checks: said as they are)
            raise
        except Exception as err:  # the exporter cannot express the model (an op, a 3-D GridSample, ...): one line
            if interrupted:  # (Ctrl-C inside torch's imports was swallowed there, and a half-imported module then
                # failed: "cannot be exported with onnx: module 'torch._dynamo' has no attribute 'exc'")
                raise KeyboardInterrupt from None
            how = "the legacy ONNX exporter" if fmt == "onnx" and args.legacy_onnx else fmt
            raise CLIError(f"{name} cannot be exported with {how}: {_reason(err)} "
                           f"(torchstn.export in Python shows the exporter's traceback)") from None


def _reason(err: BaseException) -> str:
    """The exporter's reason in one line: the first line of the innermost cause (torch's ONNX
    exporter wraps it in "Failed to convert ... This is step 3/3 ... Next steps:", with
    terminal colours), colour codes removed."""
    while err.__cause__ is not None:
        err = err.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(err))


@contextlib.contextmanager
def _noticing_interrupts() -> Iterator[list[int]]:
    """A list that holds the signal number once SIGINT arrived inside (the handler before it still
    runs: KeyboardInterrupt, as always), so that an interrupt a library swallowed is still known.
    Where signals cannot be handled (not the main thread), an empty list that stays so."""
    import signal
    import threading

    noticed: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield noticed
        return
    previous = signal.getsignal(signal.SIGINT)

    def notice(signum: int, frame: Any) -> None:
        noticed.append(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, notice)
    try:
        yield noticed
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _silenced(name: str) -> Iterator[None]:
    """The logger ``name`` says nothing below CRITICAL inside."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)



def _newest_opset() -> int:
    """The newest opset the installed ``onnx`` defines (any, where it is not installed: the export
    then names the extra to install)."""
    try:
        import onnx
    except ImportError:
        return 10**9
    return int(onnx.defs.onnx_opset_version())


def _report_files(out: Path, what: str) -> None:
    """Say what was written: one self-contained file, or the file and the external data it needs."""
    from torchstn.export import exported_files

    with user_errors(extra="export"):  # onnx reads the file's external-data references
        model_file, *data = exported_files(out)
    print(f"wrote {model_file} ({what}): {_size(model_file)}" + ("" if data else ", self-contained"))
    if data:
        where = ", ".join(f"{d} ({_size(d)})" for d in data)
        print(f"the weights are over protobuf's 2 GB limit for one file, so they are in {where}: "
              f"copy {model_file.name} and {', '.join(d.name for d in data)} together")


def _size(path: Path) -> str:
    size = path.stat().st_size if path.is_file() else 0
    return f"{size / 1e3:.0f} kB" if size < 1e6 else f"{size / 1e6:.1f} MB" if size < 1e9 else f"{size / 1e9:.2f} GB"


def _check(out: Path, model: nn.Module, example: torch.Tensor, atol: float) -> None:
    """Run the exported file on ``example`` beside the eager model; an error above ``atol`` is a user error."""
    from torchstn.export import check_export

    with user_errors(extra="export"):  # onnxruntime: the export extra
        error = check_export(out, model, example)
    print(f"max |exported - eager| = {error:.2e} on a batch of {len(example)} (atol {atol:g})")
    if not error <= atol:
        raise CLIError(f"the exported model differs from eager PyTorch by {error:.2e} > --atol {atol:g}")
