"""Warps by backend: the fused kernel against grid + F.grid_sample, the measurement behind "auto".

    python benchmarks/bench_auto.py [--mode bilinear|nearest] [--rounds 9] [--volumes] [--uniform-grid]

For each case: ``torchstn.warp(mode=...)`` of an affine θ with ``backend="fused"`` (θ read
in the kernel, no grid) against ``backend="torch"`` (torchstn's grid, then
``F.grid_sample``), forward (no gradient) and forward+backward (gradients wrt the image
and θ), and ``sample`` of a ready grid with each backend, forward and forward+backward (the image's
gradient), also against ``backend="auto"`` (``--uniform-grid``: points uniform over the image
instead of the warp's grid). One thread, interleaved rounds
(``torchstn.bench.interleaved``: who goes first rotates, each measurement repeated to
about 20 ms); prints median times and the median of the per-round ratios (torch time /
fused time, > 1: the kernel is faster). The thresholds of ``torchstn.sampling._sample``
(``FUSED_MIN_CHANNELS``, ``FUSED_MIN_POINTS``) and ``torchstn.sampling._fused.AUTO_GRID_MODES``
(the most points of a nearest grid) are set from it; with
``--volumes``, the same for ``Affine3D`` on volumes (where ``"auto"`` takes the kernel for every
volume: it measured faster from 4x4x4 on).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

import torchstn as stn
from torchstn.bench import interleaved

CASES = [(1, 1, 28, 28), (4, 1, 16, 16), (16, 1, 28, 28), (64, 1, 28, 28), (256, 1, 28, 28), (32, 1, 64, 64),
         (256, 1, 60, 60), (8, 2, 64, 64), (64, 3, 64, 64), (8, 3, 224, 224)]
VOLUMES = [(1, 1, 4, 4, 4), (1, 1, 8, 8, 8), (4, 1, 8, 8, 8), (1, 3, 8, 8, 8), (1, 1, 12, 12, 12), (1, 1, 16, 16, 16),
           (8, 1, 32, 32, 32)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("bilinear", "nearest"), default="bilinear")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--volumes", action="store_true", help="Affine3D on volumes instead of Affine on images")
    parser.add_argument("--uniform-grid", action="store_true",
                        help="sample a grid of points uniform over the image (default: the affine grid of the warp)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    affine = stn.Affine3D() if args.volumes else stn.Affine()
    print(f"mode={args.mode}: torch {torch.__version__}, 1 thread, {args.rounds} interleaved rounds; "
          "ratio = torch / fused")
    for shape in VOLUMES if args.volumes else CASES:
        b = shape[0]
        x, g = torch.rand(shape), torch.rand(shape)
        theta = affine.identity(b) + 0.1 * torch.randn(b, affine.identity(1).shape[1])
        grid = torch.rand(b, *shape[2:], len(shape) - 2) * 2 - 1 if args.uniform_grid else affine.grid(theta, shape[2:])

        def forward(backend: str) -> None:
            with torch.no_grad():
                stn.warp(x, theta, affine, mode=args.mode, backend=backend)

        def forward_backward(backend: str) -> None:
            xg, tg = x.clone().requires_grad_(), theta.clone().requires_grad_()
            stn.warp(xg, tg, affine, mode=args.mode, backend=backend).backward(g)

        def given_grid(backend: str) -> None:
            with torch.no_grad():
                stn.sample(x, grid, args.mode, backend=backend)

        def given_grid_backward(backend: str) -> None:  # (the image's gradient: a nearest grid's is 0)
            xg = x.clone().requires_grad_()
            stn.sample(xg, grid, args.mode, backend=backend).backward(g)

        for label, fn in (("warp forward", forward), ("warp forward+backward", forward_backward),
                          ("sample forward", given_grid), ("sample forward+backward", given_grid_backward)):
            # a given grid: also "auto", which may leave it to ATen from the compiled call (AUTO_GRID_MODES)
            backends = ("fused", "torch", "auto") if label.startswith("sample") else ("fused", "torch")
            timings = interleaved({backend: partial(fn, backend) for backend in backends}, rounds=args.rounds)
            dims = "x".join(map(str, shape))
            line = (f"{dims:14s} {label:23s} fused {timings.median('fused') * 1e3:8.3f} ms   "
                    f"torch {timings.median('torch') * 1e3:8.3f} ms   ratio {timings.ratio('fused', 'torch'):.2f}x")
            if "auto" in backends:
                line += f"   auto {timings.median('auto') * 1e3:8.3f} ms   ratio {timings.ratio('fused', 'auto'):.2f}x"
            print(line)


if __name__ == "__main__":
    main()
