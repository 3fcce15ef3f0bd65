"""``torchstn export``: a trained run or checkpoint as ONNX or TorchScript, checked against eager."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchstn.cli import CLIError

__all__ = ["register", "run"]

_EXAMPLES = """\
examples:
  torchstn export runs/demo-st --format onnx            writes runs/demo-st/export/best.onnx
  torchstn export runs/demo-st --format torchscript --out st.pt
  torchstn export runs/demo-st/checkpoints/last.safetensors --out model.onnx

The file runs without torchstn (onnxruntime, or torch.jit.load) with any batch size
(--fixed-batch to freeze it) at the input size the model was trained on. After writing,
the file is run on a batch of another size and compared with the eager model; a
difference above --atol is an error. ONNX needs: pip install 'torchstn[export]'.
"""

_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a trained model to ONNX or TorchScript",
        description="Rebuild the model of a run directory or checkpoint, export it (eval mode, dynamic batch) "
        "and check the exported file against eager PyTorch.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN_OR_CKPT", help="a run directory (runs/NAME) or a .safetensors checkpoint")
    parser.add_argument(
        "--format", choices=tuple(_SUFFIX), help="default: from --out's suffix (.onnx, else torchscript), else onnx"
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="default: RUN/export/<checkpoint>.onnx or .pt")
    parser.add_argument("--which", default="best", help="checkpoint of a run directory: best (default) or last")
    parser.add_argument("--fixed-batch", action="store_true", help="freeze the batch size at --batch")
    parser.add_argument("--batch", type=int, default=2, metavar="N", help="batch size of the example input (default 2)")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset version (default: the exporter's)")
    parser.add_argument(
        "--legacy-onnx", action="store_true", help="use torch's older TorchScript-based ONNX exporter (faster)"
    )
    parser.add_argument("--atol", type=float, default=1e-4, help="largest accepted |exported - eager| (default 1e-4)")
    parser.add_argument("--no-check", action="store_true", help="do not run the exported file against eager")
    parser.set_defaults(func=run)


def _default_out(run_or_ckpt: Path, checkpoint: Path, fmt: str) -> Path:
    base = run_or_ckpt if run_or_ckpt.is_dir() else checkpoint.parent
    return base / "export" / (checkpoint.name.removesuffix(".safetensors") + _SUFFIX[fmt])


def run(args: argparse.Namespace) -> int:
    """Export from parsed arguments; prints what was written and the parity check."""
    import torch

    from torchstn.engine import load_model
    from torchstn.export import check_export, export_onnx, export_torchscript

    if args.batch < 1:
        raise CLIError(f"--batch must be >= 1, got {args.batch}")
    fmt = args.format or ("onnx" if args.out is None or args.out.suffix == ".onnx" else "torchscript")
    try:
        model, config, info = load_model(args.run, which=args.which)
    except ValueError as err:  # CheckpointError: missing, unreadable, or not fitting its model
        raise CLIError(str(err)) from None
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise CLIError(f"model {config.model!r} does not say its input shape (no input_shape attribute)")
    out = args.out if args.out is not None else _default_out(Path(args.run), Path(info["path"]), fmt)
    generator = torch.Generator().manual_seed(0)
    example = torch.rand(args.batch, *shape, generator=generator)
    dynamic = not args.fixed_batch
    try:
        if fmt == "onnx":
            export_onnx(model, example, out, dynamic_batch=dynamic, opset=args.opset, dynamo=not args.legacy_onnx)
        else:
            export_torchscript(model, example, out, dynamic_batch=dynamic)
    except ImportError as err:
        raise CLIError(f"{fmt} export needs {err.name or 'a missing package'}: pip install 'torchstn[export]'") from None
    except OSError as err:
        raise CLIError(f"--out {out}: cannot write it ({err.strerror})") from None
    batch_note = "dynamic batch" if dynamic else f"batch fixed at {args.batch}"
    print(f"wrote {out} ({fmt}, {config.model}, input (B, {', '.join(map(str, shape))}), {batch_note})")
    if args.no_check:
        return 0
    check_batch = args.batch + 3 if dynamic else args.batch
    error = check_export(out, model, torch.rand(check_batch, *shape, generator=generator))
    print(f"max |exported - eager| = {error:.2e} on a batch of {check_batch} (atol {args.atol:g})")
    if not error <= args.atol:
        raise CLIError(f"the exported model differs from eager PyTorch by {error:.2e} > --atol {args.atol:g}")
    return 0
