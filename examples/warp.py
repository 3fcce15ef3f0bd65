"""Warp an image with each 2-D grid generator and check that the identity gives the image back
(up to float32 rounding: a few 1e-6 for the thin-plate spline, whose grid is solved for)."""

import math

import torch

import torchstn as stn

# a 1x1x32x32 test image: a bright square off-centre
x = torch.zeros(1, 1, 32, 32)
x[..., 8:16, 18:26] = 1.0

cases = {
    stn.Translation(): [[0.25, 0.0]],
    stn.Attention(): [[0.5, 0.25, -0.25]],
    stn.Similarity(): [[1.0, math.pi / 6, 0.0, 0.0]],
    stn.Affine(): [[1.0, 0.3, 0.0, 0.0, 1.0, 0.0]],
    stn.Projective(): [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.3, 0.0]],
    stn.ThinPlateSpline(): [stn.ThinPlateSpline().identity().add(0.05).tolist()],
}
for transform, params in cases.items():
    theta = torch.tensor(params)
    y = stn.warp(x, theta, transform)
    same = stn.warp(x, transform.identity(batch=1), transform)
    print(
        f"{transform.name:16s} P={transform.num_params:2d}  mass in {x.sum():6.1f} -> out {y.sum():6.1f}"
        f"   identity error {float((same - x).abs().max()):.1e}"
    )
