"""How far each transformer of a trained model straightens the digits it is given.

    python benchmarks/transformer_pose.py RUN [--images 2000] [--data-dir ../shared/data/mnist]

For a model with matrix transformers (affine, similarity, projective, ...) trained on data drawn with similarity transforms
(``mnist-r``, ``mnist-rts``: one digit; ``mnist-addition``: two digits on two channels),
the pose of each digit c in the output of each transformer k: the digit's own similarity
(the data's ground truth) composed with θ_k, read as

- its residual rotation: median |degrees| (0 = straightened);
- the share of the drawn rotation left: the slope of the residual rotation over the drawn
  angle (1 = the transformer leaves the rotation to the classifier, 0 = it undoes it all);
- where the digit's centre lands: median distance from the output's centre, in half-widths
  of the output (0 = centred).

The digits as drawn, without a transformer, come last for comparison. On addition, a
transformer that picks out one digit centres that digit and not the other.
"""

from __future__ import annotations

import argparse

import torch

import torchstn as stn
from torchstn.engine import load_model, load_split


def pose(matrix: torch.Tensor, drawn: torch.Tensor) -> tuple[float, float, float]:
    """Median |rotation| (degrees), the share of the ``drawn`` rotation (radians, ``(N,)``) left,
    and the median distance of the digit's centre from the output's centre, for ``(N, 3, 3)``
    maps from output points to the digit's points (normalised)."""
    angle = torch.rad2deg(stn.Similarity().params_from_matrix(matrix)[:, 1])  # the nearest similarity's angle
    drawn = torch.rad2deg(drawn.to(angle.dtype))
    design = torch.stack([drawn, torch.ones_like(drawn)], 1)
    left = torch.linalg.lstsq(design, angle[:, None]).solution[0, 0]
    origin = torch.tensor([0.0, 0.0, 1.0], dtype=matrix.dtype).expand(len(matrix), 3)
    centre = torch.linalg.solve(matrix, origin)[:, :2]
    return float(angle.abs().median()), float(left), float(centre.norm(dim=1).median())


def _line(name: str, cells: list[tuple[float, float, float]]) -> str:
    return f"{name}: " + "   ".join(
        f"digit {c + 1}: |rotation| {r:5.1f}°, rotation left {s:5.2f}, centre at {d:.2f}"
        for c, (r, s, d) in enumerate(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory or checkpoint of an ST model trained on mnist-r, -rts or -addition")
    parser.add_argument("--images", type=int, default=2000, help="test images (default: 2000)")
    parser.add_argument("--data-dir", default=None, help="directory holding the MNIST files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, config, _ = load_model(args.run, "last")
    model.eval()
    if config.data not in ("mnist-r", "mnist-rts", "mnist-addition"):
        parser.error(f"the run was trained on {config.data}: its digits are not drawn with similarity transforms")
    data = load_split(config.replace(data_dir=args.data_dir, test_limit=None), "test")  # the run's own rendering
    n = min(args.images, len(data))
    x = torch.stack([data[i][0] for i in range(n)])
    params = data.params[:n].double().reshape(n, -1, 4)  # (N, digits, 4): scale, angle, tx, ty
    digits = stn.Similarity().matrix(params.reshape(-1, 4)).reshape(n, -1, 3, 3)
    with torch.no_grad():
        for k, st in enumerate(model.transformers):
            theta = st.transform.matrix(st.predict_params(x).double())  # output -> input points, (N, 3, 3)
            print(_line(f"ST {k + 1}", [pose(digits[:, c] @ theta, params[:, c, 1]) for c in range(digits.shape[1])]))
    print(_line("as drawn", [pose(digits[:, c], params[:, c, 1]) for c in range(digits.shape[1])]))


if __name__ == "__main__":
    main()
