"""``torchstn visualize``: a figure of what a trained spatial transformer does."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from torchstn.cli._common import (
    CLIError,
    add_checkpoint_args,
    add_data_args,
    add_device_arg,
    add_import_arg,
    add_threads_arg,
    check_at_least_one,
    formatter,
    load_checkpoint_and_data,
)

if TYPE_CHECKING:
    from torchstn.engine import TrainConfig

__all__ = ["register", "run"]

EXAMPLES = """\
examples:
  torchstn visualize runs/st-cnn-rts --out st-cnn-rts.png
  torchstn visualize runs/st-cnn-rts --num 12 --start 100 --which last --out fig.png
  torchstn visualize runs/st-cnn-rts --errors --num 10 --out errors.png   # what it gets wrong
  torchstn visualize runs/st-cnn-rts/checkpoints/best.safetensors --data-seed 1 --out fresh.png

The figure shows test inputs with the predicted warp drawn on them (the border of the
transformer's output frame mapped into the input: a quadrilateral, or a bent grid for a
thin-plate spline), what the transformer made of each, the training curves of the run and
a reliability diagram (accuracy per confidence bin; ECE) of the first --calibration-images
test images. For a P-STN, a row draws --warp-samples sampled warps on each input.
A run on series or volumes is drawn as the reproduce reports draw it: --num of its test
items (one of each class in turn, or those from --start), at most 8 series or 12 volumes;
--errors and --calibration-images apply to image runs only.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "visualize", help="figure: inputs, predicted warps, transformer outputs, training curves",
        description="Draw what a trained spatial transformer does to test images, and its training curves.",
        epilog=EXAMPLES, formatter_class=formatter,
    )
    add_checkpoint_args(p, which="last")
    add_data_args(p, data_default="the checkpoint's")
    add_device_arg(p)
    add_threads_arg(p)
    add_import_arg(p)
    p.add_argument("--out", default="visualize.png", metavar="PNG", help="figure to write")
    p.add_argument("--num", type=int, default=8, metavar="N", help=f"examples shown (at most {MAX_NUM}: one row of panels)")
    p.add_argument("--start", type=int, metavar="I",
                   help="index of the first test example shown (default 0; for series and volumes one of each class "
                   "in turn)")
    p.add_argument("--errors", action="store_true",
                   help="show the first --num test examples from --start that the model classifies wrongly")
    p.add_argument("--calibration-images", type=int, metavar="N",
                   help=f"test images (from the first) in the reliability diagram (default {CALIBRATION_IMAGES})")
    p.add_argument("--warp-samples", type=int, metavar="S",
                   help=f"sampled warps drawn per input (P-STN; default {WARP_SAMPLES})")
    p.set_defaults(func=run)


#: the most examples one figure shows (one row of panels, about 1.5 inch each)
MAX_NUM = 48
#: the most series and volumes one figure shows (one row of wider panels: 3.4 and 1.9 inch)
MAX_NUM_OF = {2: 8, 4: 12}
#: the defaults of --calibration-images and --warp-samples (``None`` when not given: the options that
#: do not apply to a run on series or volumes are refused there, not dropped)
CALIBRATION_IMAGES = 2000
WARP_SAMPLES = 8


def run(args: argparse.Namespace) -> int:
    from torchstn.engine import RunDir, evaluation_draws, plot_run

    check_at_least_one(args, "num", "calibration_images", "warp_samples")
    if args.num > MAX_NUM:  # one row of panels: 500 made a PNG 80,000 pixels wide
        raise CLIError(f"--num must be at most {MAX_NUM} (the examples are one row of panels), got {args.num}; "
                       "page through the test set with --start")
    if args.start is not None and args.start < 0:
        raise CLIError(f"--start must be at least 0, got {args.start}")
    start, calibration_images = args.start or 0, args.calibration_images or CALIBRATION_IMAGES
    limit = None if args.errors else max(start + args.num, calibration_images)
    model, config, info, device, dataset = load_checkpoint_and_data(args, "test", limit)
    if start >= len(dataset):
        raise CLIError(f"--start {start} is past the {len(dataset):,} test examples")
    dims = dataset[0][0].dim()
    with evaluation_draws(info["path"], config.seed):  # (a P-STN's draws: the same figure every time)
        if dims != 3:  # (C, L) series, (C, D, H, W) volumes: the figures `torchstn reproduce` draws of them
            out = _draw_series_or_volumes(model, config, info, dataset, args, dims)
            print(f"wrote {out}")
            return 0
        examples, predicted = _misclassified(model, config, dataset, device, start, args.num) if args.errors else (
            None, None)
        history = RunDir.of_checkpoint(info["path"]).history()
        out = plot_run(model, dataset, args.out, history=history, num=args.num, start=start, examples=examples,
                       predicted=predicted,
                       title=_title(config, info, history), device=device, calibration_images=calibration_images,
                       warp_samples=args.warp_samples or WARP_SAMPLES, label_smoothing=config.label_smoothing,
                       eval_batch_size=config.eval_batch_size, **config.call_options())
    print(f"wrote {out}")
    return 0


def _draw_series_or_volumes(model: Any, config: TrainConfig, info: dict[str, Any], dataset: Any,
                            args: argparse.Namespace, dims: int) -> Any:
    """A series run's warps (each series and its warped versions, the time maps) or a volume
    run's views, as the reproduce reports draw them: ``plot_run`` draws images only (it crashed
    on a series run with "not enough values to unpack"). The options of image figures that these
    have no use for are refused (they were dropped without a word, and --num capped)."""
    from torchstn._validation import figure_file
    from torchstn.engine import RunDir
    from torchstn.reproduce import plot_series_warps, plot_volume_views

    kind = "series" if dims == 2 else "volumes"
    if args.errors:
        raise CLIError(f"--errors draws image runs only; this run's inputs are {kind}")
    if args.calibration_images is not None:
        raise CLIError(f"--calibration-images sizes the reliability diagram of image runs; this run's inputs are "
                       f"{kind}")
    if dims == 4 and args.warp_samples is not None:
        raise CLIError("--warp-samples draws the sampled warps of a P-STN on images or series; this run's inputs are "
                       "volumes")
    if args.num > MAX_NUM_OF[dims]:
        raise CLIError(f"--num must be at most {MAX_NUM_OF[dims]} for {kind} (one row of panels), got {args.num}; "
                       "page through the test set with --start")
    if dims == 2 and not len(getattr(model, "transformers", ())):
        raise CLIError(f"{config.model} has no transformer: visualize draws a transformer's warps of series")
    if dims == 4 and not len(getattr(model, "transformers", ())):  # (cnn-3d's transform_volume returns x)
        raise CLIError(f"{config.model} has no 3-D transformer: visualize draws a transformer's views of volumes")
    draw = plot_series_warps if dims == 2 else plot_volume_views
    title = _title(config, info, RunDir.of_checkpoint(info["path"]).history())
    samples = {"warp_samples": args.warp_samples} if args.warp_samples is not None else {}
    return draw(model.cpu(), dataset, figure_file(args.out), num=args.num, start=args.start, title=title, **samples)


def _misclassified(model: Any, config: TrainConfig, dataset: Any, device: Any, start: int,
                   num: int) -> tuple[list[int], list[int]]:
    """Indices of the first ``num`` examples of ``dataset`` from ``start`` that ``model`` gets wrong, and
    the predictions that got them wrong (the figure shows these: a P-STN's next call draws anew).
    The generators are forked: the figure's reliability diagram then draws what the run's
    evaluation drew, as without ``--errors``."""
    import torch

    from torchstn.engine import predict
    from torchstn.engine.metrics import misclassified

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        logits, labels = predict(model, dataset, batch_size=config.eval_batch_size, device=device,
                                 **config.call_options())
    predictions = logits.argmax(1)
    wrong = misclassified(logits, labels).nonzero().flatten()
    wrong = wrong[wrong >= start][:num]
    if not len(wrong):
        raise CLIError(f"the model classifies every test example from {start} correctly: no errors to show")
    return wrong.tolist(), predictions[wrong].tolist()


#: the config fields that say which images a run was measured on (``--data-dir`` only says where they are)
DATA_FIELDS = ("data", "data_options", "data_seed")


def _title(config: TrainConfig, info: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """``MODEL on DATA, epoch E: test error ..., ECE ..., NLL ... on <which test images>`` from the
    record of the checkpoint's epoch (``--which best`` quoted the last epoch's beside the best's number).

    The images are the run's own (``config.test_limit``) and are named because the
    figure's reliability panel reports its own ECE on its own (first
    ``--calibration-images``) images. Shown other data (``--data``, ``--data-option``,
    ``--data-seed``), the title says that the numbers are the run's on its own data: they were
    quoted as if measured on the images shown (a run on mnist-rts drawn on mnist was titled
    with its mnist-rts error).
    """
    title = f"{config.model} on {_data_text(config)}, epoch {info['epoch']}"
    record = next((r for r in reversed(history) if r.get("epoch") == info["epoch"]), None)
    if record is not None:
        run = info["run_config"]  # (the config the run was measured with, before --data ...)
        if any(getattr(run, name) != getattr(config, name) for name in DATA_FIELDS):
            title += f"; recorded on {_data_text(run)}"
        images = "all test images" if run.test_limit is None else f"the first {run.test_limit:,} test images"
        title += f": test error {record['test_error']:.2%}"
        if "test_ece" in record:
            title += f", ECE {record['test_ece']:.3f}, NLL {record['test_nll']:.3f}"
        title += f" on {images}"
    return title


def _data_text(config: TrainConfig) -> str:
    """``mnist-rts``, or ``mnist-rts (data seed 1, supersample=2)`` for other distortions than the recipe's first."""
    details = [f"data seed {config.data_seed}"] * (config.data_seed != 0)
    details += [f"{k}={v}" for k, v in sorted(config.data_options.items())]
    return config.data + (f" ({', '.join(details)})" if details else "")
