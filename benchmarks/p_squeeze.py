"""Where on P a model errs, by how much each test digit's homography squeezes it.

    python benchmarks/p_squeeze.py RUN [RUN ...] [--ideal IDEAL_RUN] [--data-dir ../shared/data/mnist]

The squeeze of a P test digit is the ratio of the singular values of its homography's
Jacobian at the digit's centre (1: shapes kept; 0.2: the digit flattened to a fifth of its
extent across one axis), as docs/data.md measures it. For each RUN (a model trained on
``mnist-p``, read with its own rendering options) it prints the test error in bands of
squeeze and each band's share of the errors; for an ST model with a matrix transformer
(affine, projective) also how squeezed the digit is in the transformer's output (the same
ratio for the map from the digit's frame to the output: the ground truth composed with
θ), so a band the transformer leaves squeezed shows. ``--ideal`` takes a run of
``benchmarks/ideal_transformer.py --kind p`` (the classifier given each digit warped back
by its own homography) and prints the same bands for it: the errors a perfect
transformer would leave.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from torchstn.engine import load_model, load_split, predict

BANDS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01))


def squeeze(matrices: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """How much ``(N, 3, 3)`` maps from image points to the digit's frame squeeze the digit: the
    ratio of the singular values of their inverse's Jacobian at the digit's centre."""
    probe = torch.tensor([[h, 0.0, 1.0], [-h, 0.0, 1.0], [0.0, h, 1.0], [0.0, -h, 1.0]], dtype=matrices.dtype)
    q = torch.einsum("nij,kj->nki", torch.linalg.inv(matrices), probe)
    q = q[..., :2] / q[..., 2:]
    s = torch.linalg.svdvals(torch.stack([q[:, 0] - q[:, 1], q[:, 2] - q[:, 3]], -1))
    return s[:, 1] / s[:, 0]


def squeezes(model: torch.nn.Module, test: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The squeeze of every digit of a P ``test`` split as drawn and, for an ST model with a
    matrix transformer (its first), in the transformer's output (else ``None``)."""
    canvas_to_digit = test.transform.matrix(test.params.double())
    transformers = getattr(model, "transformers", None)
    if not transformers or not hasattr(transformers[0].transform, "matrix"):
        return squeeze(canvas_to_digit), None
    st = transformers[0]
    model.eval()
    x = test.images.float().div(255)
    with torch.no_grad():
        theta = torch.cat([st.transform.matrix(st.predict_params(x[i : i + 1000]).double())
                           for i in range(0, len(x), 1000)])
    return squeeze(canvas_to_digit), squeeze(canvas_to_digit @ theta)  # (output -> the digit's frame)


def report(name: str, wrong: torch.Tensor, drawn: torch.Tensor, after: torch.Tensor | None = None) -> None:
    print(f"{name}: test error {wrong.mean():.2%}")
    for lo, hi in BANDS:
        k = (drawn >= lo) & (drawn < hi)
        line = (f"  squeeze {lo:.1f}-{min(hi, 1.0):.1f}: {k.float().mean():6.2%} of the digits, "
                f"error {wrong[k].mean():6.2%}, {wrong[k].sum() / wrong.sum():4.0%} of the errors")
        if after is not None:
            line += f"; median squeeze {drawn[k].median():.2f} as drawn, {after[k].median():.2f} after the transformer"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories of models trained on mnist-p")
    parser.add_argument("--ideal", default=None, help="a run of benchmarks/ideal_transformer.py --kind p")
    parser.add_argument("--data-dir", default=None, help="directory holding the MNIST files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        model, config, _ = load_model(run, "last")
        if config.data != "mnist-p":
            parser.error(f"{run} was trained on {config.data}, not mnist-p")
        test = load_split(config.replace(data_dir=args.data_dir, test_limit=None), "test")  # the run's own rendering
        logits, labels = predict(model, test)
        report(run, (logits.argmax(1) != labels).float(), *squeezes(model, test))
    if args.ideal:
        sys.path.insert(0, str(Path(__file__).parent))
        from ideal_transformer import Undistorted

        model, config, _ = load_model(args.ideal, "last")
        test = Undistorted("p", "test", args.data_dir, model.input_shape[-1], config.data_options)  # its own law
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(test.images[i : i + 1000]) for i in range(0, len(test), 1000)])
        drawn, _ = squeezes(model, load_split(config.replace(data_dir=args.data_dir, test_limit=None), "test"))
        report(f"{args.ideal} (ideal transformer)", (logits.argmax(1) != test.labels).float(), drawn)


if __name__ == "__main__":
    main()
