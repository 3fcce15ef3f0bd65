"""Per-call cost of small warps: torchstn.warp, the registered operator alone, the bare kernel and torch.

    python benchmarks/bench_call_overhead.py [--batch 4] [--size 16] [--rounds 15]

Interleaved rounds of 500 calls each at one thread; prints the median time per call in µs,
without and with a gradient for θ: ``torchstn.warp``, the same with the compiled call
switched off (the kernel called through ctypes, as before 2026-12-02), the compiled call
alone and the kernel's pieces; and without a gradient, ``torchstn.sample`` of the same points as a
given grid (with the compiled call and without it) against ``F.grid_sample`` alone. What
issue 15 calls per-call overhead: at these sizes the kernel itself takes a few µs, the rest
is Python, dispatch and autograd. Where OpenCV
is installed (the ``bench`` extra), its ``warpAffine`` of the same images (float32, one call
per image, forward only: it has no gradient) is the floor a torch call is compared with.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.bench import _opencv
from torchstn.sampling import _fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not _fused.fused_available():
        raise SystemExit("the fused kernel could not be built here")
    b, n = args.batch, args.size
    x = torch.rand(b, 1, n, n)
    theta = stn.Affine().identity(b) + 0.05 * torch.randn(b, 6)
    rows = theta.view(b, 2, 3)
    kernel = _fused._warp2d_cpu  # the CPU implementation, called without the dispatcher
    out = kernel(x, rows, "affine", [n, n], "bilinear", "zeros", False, 0.0)
    entry = _fused._ENTRY[False, torch.float32]  # the C function alone, its arguments prepared
    ready = (_fused._geometry("affine", "bilinear", x, out, (n, n), "zeros", False), x.data_ptr(), rows.data_ptr(),
             0.0, out.data_ptr())
    fast = _fused.fast_call()  # the compiled call (csrc/fast_call.cpp), or None where it could not be built
    contenders = {
        "torchstn.warp": lambda t: stn.warp(x, t, "affine"),
        "torchstn.warp through ctypes": lambda t: stn.warp(x, t, "affine"),  # the compiled call off: see below
        "torch.ops.torchstn.warp2d": lambda t: torch.ops.torchstn.warp2d(x, t.view(b, 2, 3), "affine", [n, n],
                                                                        "bilinear", "zeros", False, 0.0),
        "warp2d's CPU implementation": lambda t: kernel(x, rows, "affine", [n, n], "bilinear", "zeros", False, 0.0),
        "its ctypes call, args ready": lambda t: entry(*ready),
        "the compiled call (fast_warp)": lambda t: fast.fast_warp(x, t, "affine", None, "bilinear", "zeros", False, None),
        "torch.empty_like (the output)": lambda t: torch.empty_like(x),
        "affine_grid+grid_sample": lambda t: F.grid_sample(x, F.affine_grid(t.view(b, 2, 3), list(x.shape),
                                                                            align_corners=False), align_corners=False),
        # a given grid (the same points), without a gradient: torchstn.sample against F.grid_sample alone
        "torchstn.sample of a grid": lambda t: stn.sample(x, grid),
        "torchstn.sample, no compiled call": lambda t: stn.sample(x, grid),
        "F.grid_sample of the grid": lambda t: F.grid_sample(x, grid, align_corners=False),
    }
    grid = F.affine_grid(rows, list(x.shape), align_corners=False)
    no_grad_only = ("OpenCV", "its ", "torch.empty", "the compiled", "torchstn.sample", "F.grid_sample")
    if _opencv.opencv_version() is not None:
        opencv, _ = _opencv.opencv_warp(x, rows, (n, n), threads=1)
        contenders["OpenCV warpAffine (no θ grad)"] = lambda t: opencv()
    for grad in (False, True):
        t = theta.clone().requires_grad_(grad)
        times: dict[str, list[float]] = {
            k: [] for k in contenders
            if not (grad and k.startswith(no_grad_only)) and (fast or "compiled" not in k)
        }
        for _ in range(args.rounds):
            for name in times:
                fn = contenders[name]
                _fused._library.state["fast"] = False if name.endswith(("through ctypes", "no compiled call")) else fast or False
                for _ in range(50):
                    fn(t)
                start = time.perf_counter()
                for _ in range(500):
                    fn(t)
                times[name].append((time.perf_counter() - start) / 500 * 1e6)
        print(f"{b}x1x{n}x{n} affine, forward, θ requires_grad={grad}: median µs per call")
        for name, values in times.items():
            print(f"  {name:34s} {statistics.median(values):8.1f}")


if __name__ == "__main__":
    main()
