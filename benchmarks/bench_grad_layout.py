"""Forward+backward of a warp by the layout of the gradient that reaches it.

    python benchmarks/bench_grad_layout.py [--rounds 11]

``loss = warp(x).sum()`` hands the warp an expanded gradient (every stride 0);
``autograd.grad(out, inputs, w)`` with a dense ``w`` hands it a contiguous one, as a
convolution after the transformer does. Times both for torchstn (affine, projective, TPS,
3-D affine; the default backend) and for ``F.affine_grid + F.grid_sample``, interleaved
at one thread, and prints the median per-call times and the ratio expanded / dense
(1.0: the gradient's layout costs nothing).
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.bench import interleaved

CASES = [("affine", (256, 1, 28, 28)), ("affine", (64, 3, 64, 64)), ("affine", (32, 3, 64, 64)),
         ("projective", (256, 1, 28, 28)), ("tps", (256, 1, 28, 28)), ("affine3d", (8, 1, 32, 32, 32))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    for family, shape in CASES:
        transform = {"affine": stn.Affine(), "projective": stn.Projective(), "tps": stn.ThinPlateSpline(),
                     "affine3d": stn.Affine3D()}[family]
        x = torch.rand(shape, generator=generator).requires_grad_()
        theta = transform.identity(shape[0]) + 0.05 * torch.randn(shape[0], transform.num_params, generator=generator)
        theta.requires_grad_()
        dense = torch.ones(shape)
        contenders = {
            "torchstn expanded": lambda: torch.autograd.grad(stn.warp(x, theta, transform).sum(), (x, theta)),
            "torchstn dense": lambda: torch.autograd.grad(stn.warp(x, theta, transform), (x, theta), dense),
        }
        if family in ("affine", "affine3d"):
            def torch_warp() -> torch.Tensor:
                rows = transform.affine_rows(theta)
                return F.grid_sample(x, F.affine_grid(rows, list(shape), align_corners=False), align_corners=False)

            contenders["torch expanded"] = lambda: torch.autograd.grad(torch_warp().sum(), (x, theta))
            contenders["torch dense"] = lambda: torch.autograd.grad(torch_warp(), (x, theta), dense)
        times = interleaved(contenders, rounds=args.rounds).seconds
        medians = {name: statistics.median(t) for name, t in times.items()}
        parts = [f"{name} {1e3 * t:.3f} ms" for name, t in medians.items()]
        for who in ("torchstn", "torch"):
            if f"{who} dense" in medians:
                ratios = [e / d for e, d in zip(times[f"{who} expanded"], times[f"{who} dense"])]
                parts.append(f"{who} expanded/dense {statistics.median(ratios):.2f}x")
        print(f"{family} {'x'.join(map(str, shape))}: " + ", ".join(parts), flush=True)


if __name__ == "__main__":
    main()
