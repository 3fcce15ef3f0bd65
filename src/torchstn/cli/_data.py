"""``torchstn data``: list, preview and generate the distorted-MNIST data sets."""

from __future__ import annotations

import argparse
from typing import Any

from torchstn.cli._common import CLIError, add_data_dir_arg, add_threads_arg, formatter, parse_key_values, user_errors

__all__ = ["register"]

#: the most samples one preview draws (a 16 x 16 grid)
MAX_PREVIEW = 256

_EXAMPLES = """examples:
  torchstn data list
  torchstn data preview rts --out rts.png
  torchstn data preview e --split test --seed 1 -n 25 --option sigma=2.5 --out e.png
  torchstn data generate rts                  # both splits, cached under ~/.cache/torchstn
  torchstn data generate mnist-p --split train --seed 3 --data-dir ../shared/data/mnist
"""


def _options(pairs: list[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs -> recipe options (``canvas=36``, ``scale=[0.7, 1.2]``, ``keep_inside=false``)."""
    return parse_key_values(pairs, "--option", "sigma=2.5")


def _kind(value: str) -> str:
    from torchstn.data import KINDS

    key = value.lower().removeprefix("mnist-")
    if key not in KINDS:
        raise argparse.ArgumentTypeError(f"unknown kind {value!r}; choose from {', '.join(KINDS)}")
    return key


def _run_list(args: argparse.Namespace) -> int:
    from torchstn.data import KINDS

    print("mnist            the undistorted digits (1x28x28, 10 classes)")
    for kind, recipe in KINDS.items():
        print(f"mnist-{kind:<10s} {recipe.summary}")
    return 0


def _run_preview(args: argparse.Namespace) -> int:
    from torchstn.data import preview

    if not 1 <= args.n <= MAX_PREVIEW:  # one figure: 100,000 samples drew for minutes
        raise CLIError(f"-n must be 1 to {MAX_PREVIEW} (one figure of samples), got {args.n}")

    with user_errors(TypeError):  # a misspelt --option reaches the recipe's signature
        path = preview(
            args.kind, args.out, split=args.split, seed=args.seed, n=args.n, originals=args.originals,
            root=args.data_dir, columns=args.columns, **_options(args.option),
        )
    print(path)
    return 0


def _progress_bar(description: str, quiet: bool):  # type: ignore[no-untyped-def]
    """A tqdm bar, or ``None`` when ``quiet`` or tqdm is not installed (progress is optional)."""
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=description, unit="img", leave=False)


def _run_generate(args: argparse.Namespace) -> int:
    from torchstn.data import distorted_mnist

    if args.kind.removeprefix("mnist-") == "3d":  # (distorted_mnist's hint, limit=, is the Python call's)
        raise CLIError("mnist-3d is too large to cache whole (several GB as uint8) and has nothing to generate: "
                       "training renders it batch by batch (torchstn train --data mnist-3d)")
    splits = ("train", "test") if args.split == "all" else (args.split,)
    options = _options(args.option)
    for split in splits:
        bar = _progress_bar(f"mnist-{args.kind} {split}", args.quiet)
        try:
            with user_errors(TypeError):  # a misspelt --option reaches the recipe's signature
                data = distorted_mnist(
                    args.kind, split, args.data_dir, args.seed, cache_dir=args.cache_dir,
                    progress=bar.update if bar is not None else None, **options,
                )
        finally:
            if bar is not None:
                bar.close()
        c, h, w = data.images.shape[1:]
        print(f"mnist-{args.kind} {split}: {len(data)} images {c}x{h}x{w}, params {tuple(data.params.shape)} -> {data.path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``torchstn data`` and its actions."""
    parser = subparsers.add_parser(
        "data",
        help="list, preview and generate the distorted-MNIST data sets",
        description="The distorted-MNIST data sets of the STN papers: list them, preview samples, generate caches.",
        epilog=_EXAMPLES,
        formatter_class=formatter,
    )
    actions = parser.add_subparsers(title="actions", metavar="ACTION")

    p = actions.add_parser("list", help="the data set names and what each one is", epilog=_EXAMPLES,
                           formatter_class=formatter)
    p.set_defaults(func=_run_list, command_parser=p)  # (a misspelt option: this usage, not data's)

    p = actions.add_parser("preview", help="a figure of samples with labels and their originals", epilog=_EXAMPLES,
                           formatter_class=formatter)
    _add_recipe_args(p)
    p.add_argument("--split", choices=("train", "test"), default="train", help="split of the original digits")
    p.add_argument("--out", default="preview.png", metavar="PNG", help="image file to write")
    p.add_argument("-n", type=int, default=16, help=f"number of samples (at most {MAX_PREVIEW})")
    p.add_argument("--columns", type=int, default=None, help="samples per row (default: about square)")
    p.add_argument("--no-originals", dest="originals", action="store_false", help="do not show the undistorted digits")
    p.set_defaults(func=_run_preview, command_parser=p)

    p = actions.add_parser("generate", help="generate a split (or both) into the cache and print where",
                           epilog=_EXAMPLES, formatter_class=formatter)
    _add_recipe_args(p)
    p.add_argument("--split", choices=("train", "test", "all"), default="all", help="split to generate")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache root (default: $TORCHSTN_CACHE or ~/.cache/torchstn)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_generate, command_parser=p)

    parser.set_defaults(func=lambda args: parser.print_help() or 0)


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The distortion, its seed and options, where MNIST is and torch's threads (no --device: rendering is on the CPU)."""
    from torchstn.data import KINDS

    p.add_argument("kind", type=_kind, help=f"{', '.join(KINDS)} (an mnist- prefix is fine)")
    p.add_argument("--seed", type=int, default=0, help="seed of the distortions")
    add_data_dir_arg(p)
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a recipe option, e.g. canvas=36, sigma=2.5, keep_inside=false (repeatable)")
    add_threads_arg(p)
