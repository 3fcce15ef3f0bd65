"""Which digit each transformer of a trained MNIST-addition model straightens.

    python benchmarks/addition_transformers.py RUN [--images 2000] [--data-dir ../shared/data/mnist]

For every transformer k and channel c of a 2xST model (``st-fcn-aff`` or ``st-cnn-aff`` with
``num_transformers=2`` on ``mnist-addition``), the pose of digit c in ST k's output: the
digit's own similarity (the data's ground truth) composed with θ_k, read as its residual
rotation (median |degrees|; 0 = straightened) and where the digit's centre lands (median
distance from the output's centre, in half-widths of the output; 0 = centred). The digits as
drawn, without a transformer, come last for comparison. A transformer that picks out one
digit centres that digit and not the other.
"""

from __future__ import annotations

import argparse

import torch

import torchstn as stn
from torchstn.data import get_dataset
from torchstn.engine import load_model


def pose(matrix: torch.Tensor) -> tuple[float, float]:
    """Median |rotation| (degrees) and median distance of the digit's centre from the output's
    centre, for ``(N, 3, 3)`` maps from output points to the digit's points (normalised)."""
    angle = torch.rad2deg(torch.atan2(matrix[:, 1, 0] - matrix[:, 0, 1], matrix[:, 0, 0] + matrix[:, 1, 1]))
    origin = torch.tensor([0.0, 0.0, 1.0], dtype=matrix.dtype).expand(len(matrix), 3)
    centre = torch.linalg.solve(matrix, origin)[:, :2]
    return float(angle.abs().median()), float(centre.norm(dim=1).median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory or checkpoint of a 2xST model trained on mnist-addition")
    parser.add_argument("--images", type=int, default=2000, help="test images (default: 2000)")
    parser.add_argument("--data-dir", default=None, help="directory holding the MNIST files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, _, _ = load_model(args.run, "last")
    model.eval()
    data = get_dataset("mnist-addition", "test", root=args.data_dir)
    n = min(args.images, len(data))
    x = torch.stack([data[i][0] for i in range(n)])
    digits = stn.Similarity().matrix(data.params[:n].reshape(n * 2, 4)).reshape(n, 2, 3, 3)
    with torch.no_grad():
        for k, st in enumerate(model.transformers):
            theta = stn.Affine().matrix(st.predict_params(x))
            cells = [pose(digits[:, c] @ theta) for c in range(2)]
            print(f"ST {k + 1}: " + "   ".join(
                f"digit {c + 1}: |rotation| {r:5.1f}°, centre at {d:.2f}" for c, (r, d) in enumerate(cells)))
    for c in range(2):
        r, d = pose(digits[:, c])
        print(f"as drawn, digit {c + 1}: |rotation| {r:5.1f}°, centre at {d:.2f}")


if __name__ == "__main__":
    main()
