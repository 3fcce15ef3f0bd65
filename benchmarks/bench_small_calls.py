"""Small public calls against what a user would write instead with plain PyTorch.

    python benchmarks/bench_small_calls.py [--rounds 9] [NAME ...]

The calls the bench's cases leave out, where per-call work outside the kernel decides who is
faster: ``sample`` of a given volume, ``warp`` of ``Affine3D`` volumes and of a
``ThinPlateSpline`` on one to four small images, bicubic ``sample`` and ``warp``, nearest
``sample`` of more points than ``"auto"`` gives the fused kernel, and a given grid's gradient
alone. Each against the plain call (``F.grid_sample``, ``F.affine_grid``, a
thin-plate spline's ``G @ θ`` with ``G`` made once, as a user caches it), forward under
``torch.no_grad()`` and forward+backward (``.sum().backward()``). One thread, interleaved rounds
(``torchstn.bench.interleaved``); prints median times and the median of per-round ratios (plain
time / torchstn time, > 1: torchstn is faster). ``NAME``: run only the cases whose name
contains one of them (``sample3d``, ``affine3d``, ``tps``, ``bicubic``, ``nearest``, ``grid-grad``).
``TORCHSTN_FAST_CALL=0`` gives the calls without the compiled call, for a before/after.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.bench import interleaved
from torchstn.transforms import base_grid


def _no_grad(fn: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            fn()

    return run


def _cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """name -> (torchstn's call, the plain call)."""
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    affine3d = stn.Affine3D()
    for shape in [(1, 1, 8, 8, 8), (4, 1, 8, 8, 8), (1, 1, 16, 16, 16)]:
        b = shape[0]
        x = torch.rand(shape)
        theta = affine3d.identity(b) + 0.1 * torch.randn(b, 12)
        grid = affine3d.grid(theta, shape[2:])
        xg, gg, tg = x.clone().requires_grad_(), grid.clone().requires_grad_(), theta.clone().requires_grad_()
        cases[f"sample3d fwd {shape}"] = (_no_grad(lambda x=x, g=grid: stn.sample(x, g)),
                                          _no_grad(lambda x=x, g=grid: F.grid_sample(x, g, align_corners=False)))
        cases[f"sample3d f+b {shape}"] = (lambda x=xg, g=gg: stn.sample(x, g).sum().backward(),
                                          lambda x=xg, g=gg: F.grid_sample(x, g, align_corners=False).sum().backward())

        def plain3d(x: torch.Tensor, t: torch.Tensor, shape: tuple[int, ...] = shape) -> torch.Tensor:
            return F.grid_sample(x, F.affine_grid(t.view(-1, 3, 4), shape, align_corners=False), align_corners=False)

        cases[f"affine3d warp fwd {shape}"] = (_no_grad(lambda x=x, t=theta: stn.warp(x, t, affine3d)),
                                               _no_grad(lambda x=x, t=theta, p=plain3d: p(x, t)))
        cases[f"affine3d warp f+b {shape}"] = (lambda x=xg, t=tg: stn.warp(x, t, affine3d).sum().backward(),
                                               lambda x=xg, t=tg, p=plain3d: p(x, t).sum().backward())
    tps = stn.ThinPlateSpline((4, 4))
    k = tps.num_control_points
    for shape in [(1, 1, 28, 28), (4, 1, 28, 28), (4, 3, 32, 32)]:
        b = shape[0]
        x = torch.rand(shape)
        theta = tps.identity(b) + 0.05 * torch.randn(b, 2 * k)
        # a user's own spline: G (H W, K) solved once in float64, the grid G @ targets per call
        g = (tps_basis(base_grid(shape[2:], False, dtype=torch.float64), tps.control_points) @ tps._solution64).float()

        def plain_tps(x: torch.Tensor, t: torch.Tensor, g: torch.Tensor = g, shape: tuple[int, ...] = shape) -> object:
            grid = torch.matmul(g, t.view(t.shape[0], k, 2)).view(t.shape[0], *shape[2:], 2)
            return F.grid_sample(x, grid, align_corners=False)

        xg, tg = x.clone().requires_grad_(), theta.clone().requires_grad_()
        cases[f"tps warp fwd {shape}"] = (_no_grad(lambda x=x, t=theta: stn.warp(x, t, tps)),
                                          _no_grad(lambda x=x, t=theta, p=plain_tps: p(x, t)))
        cases[f"tps warp f+b {shape}"] = (lambda x=xg, t=tg: stn.warp(x, t, tps).sum().backward(),
                                          lambda x=xg, t=tg, p=plain_tps: p(x, t).sum().backward())
    affine = stn.Affine()
    for shape in [(1, 1, 28, 28), (4, 3, 16, 16)]:
        b = shape[0]
        x = torch.rand(shape)
        theta = affine.identity(b) + 0.1 * torch.randn(b, 6)
        grid = affine.grid(theta, shape[2:])
        cases[f"bicubic sample fwd {shape}"] = (
            _no_grad(lambda x=x, g=grid: stn.sample(x, g, "bicubic")),
            _no_grad(lambda x=x, g=grid: F.grid_sample(x, g, "bicubic", align_corners=False)))
        cases[f"bicubic warp fwd {shape}"] = (
            _no_grad(lambda x=x, t=theta: stn.warp(x, t, affine, mode="bicubic")),
            _no_grad(lambda x=x, t=theta, s=shape: F.grid_sample(
                x, F.affine_grid(t.view(-1, 2, 3), s, align_corners=False), "bicubic", align_corners=False)))
    for shape in [(16, 1, 64, 64), (64, 1, 28, 28), (8, 3, 64, 64)]:  # more points than "auto" gives the kernel
        b = shape[0]
        x = torch.rand(shape)
        grid = affine.grid(affine.identity(b) + 0.1 * torch.randn(b, 6), shape[2:])
        cases[f"nearest sample fwd {shape}"] = (
            _no_grad(lambda x=x, g=grid: stn.sample(x, g, "nearest")),
            _no_grad(lambda x=x, g=grid: F.grid_sample(x, g, "nearest", align_corners=False)))
    for shape in [(1, 1, 28, 28), (2, 1, 17, 23)]:
        b = shape[0]
        x = torch.rand(shape)
        grid = affine.grid(affine.identity(b) + 0.1 * torch.randn(b, 6), shape[2:]).requires_grad_()
        cases[f"grid-grad sample f+b {shape}"] = (
            lambda x=x, g=grid: stn.sample(x, g).sum().backward(),
            lambda x=x, g=grid: F.grid_sample(x, g, align_corners=False).sum().backward())
    return cases


def tps_basis(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """``[U(|p - c_k|)_k, 1, x, y]`` with ``U(r) = r² log r²``: the spline's basis, as a user writes it."""
    d2 = (points[:, None, :] - control).pow(2).sum(-1)
    u = torch.where(d2 > 0, d2 * torch.log(torch.where(d2 > 0, d2, torch.ones_like(d2))), torch.zeros_like(d2))
    return torch.cat([u, torch.ones_like(points[:, :1]), points], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("names", nargs="*", help="run only the cases whose name contains one of these")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, torchstn {stn.__version__}, 1 thread, {args.rounds} interleaved rounds; "
          "ratio = plain / torchstn")
    for name, (ours, plain) in _cases().items():
        if args.names and not any(n in name for n in args.names):
            continue
        t = interleaved({"torchstn": ours, "plain": plain}, rounds=args.rounds)
        print(f"{name:38s} torchstn {t.median('torchstn') * 1e6:8.1f} us   plain {t.median('plain') * 1e6:8.1f} us   "
              f"ratio {t.ratio('torchstn', 'plain'):.2f}x", flush=True)


if __name__ == "__main__":
    main()
