"""How fast can the fused forward's sampling get on this CPU: prototypes against the kernel.

    python benchmarks/sampling_floor.py [--shapes 256x28x28 64x64x64] [--noise 0.1] [--rounds 11]

Builds ``benchmarks/sampling_floor.cpp`` with ``g++`` (AVX2 and FMA) into a temporary
directory and times, interleaved at one thread (``torchstn.bench.interleaved``), the
library's fused kernel (``torchstn.warp`` of an affine θ, forward, bilinear, zeros padding)
against the prototypes of that file: a single pass in registers with hardware gathers,
with scalar loads, with row-coherent loads and permutes, and without any input read (the
arithmetic and the store alone). Inputs are ``(B, 1, H, W)``; θ is the identity plus
``noise`` times a standard normal. Each prototype's output is checked against
``F.grid_sample`` first. Prints ns per output point and the ratio to the kernel (> 1:
the prototype is faster), and the share of the memcpy bandwidth a sampler of the same
traffic (input, grid and output bytes) would reach at that time.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.bench import interleaved

VARIANTS = {"gathers": 1, "scalar loads": 0, "row-coherent": 2, "no reads (floor)": 3}


def build(directory: Path) -> ctypes.CDLL:
    source = Path(__file__).with_suffix(".cpp")
    library = directory / "sampling_floor.so"
    subprocess.run(["g++", "-O3", "-mavx2", "-mfma", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    lib = ctypes.CDLL(str(library))
    lib.proto_forward.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5 + [ctypes.c_int]
    return lib


def memcpy_seconds(nbytes: int, rounds: int) -> float:
    src, dst = torch.empty(nbytes // 4), torch.empty(nbytes // 4)
    return interleaved({"memcpy": lambda: dst.copy_(src)}, rounds=rounds).median("memcpy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["256x28x28", "64x64x64"], help="BxHxW, one channel")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp))
        for shape in args.shapes:
            b, h, w = (int(s) for s in shape.split("x"))
            x = torch.rand(b, 1, h, w)
            theta = (torch.eye(2, 3) + args.noise * torch.randn(b, 2, 3)).contiguous()
            reference = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
            outputs = {name: torch.empty_like(x) for name in VARIANTS}

            def prototype(name: str) -> None:
                lib.proto_forward(x.data_ptr(), theta.data_ptr(), outputs[name].data_ptr(), b, h, w, h, w,
                                  VARIANTS[name])

            def kernel() -> None:
                with torch.no_grad():
                    stn.warp(x, theta, "affine", backend="fused")

            contenders = {"torchstn kernel": kernel, **{n: (lambda n=n: prototype(n)) for n in VARIANTS}}
            for name in VARIANTS:
                prototype(name)
                if name != "no reads (floor)":
                    torch.testing.assert_close(outputs[name], reference, atol=1e-4, rtol=1e-4)
            timings = interleaved(contenders, rounds=args.rounds)
            points = b * h * w
            traffic = x.numel() * 4 + points * 8 + points * 4
            copy = memcpy_seconds(traffic, args.rounds)
            print(f"{b}x1x{h}x{w}, noise {args.noise}: memcpy of the traffic {copy * 1e9 / points:.2f} ns/pt")
            for name in contenders:
                t = timings.median(name)
                print(f"  {name:18s} {t * 1e9 / points:6.2f} ns/pt   kernel/this "
                      f"{timings.ratio(name, 'torchstn kernel'):5.2f}x   {100 * copy / t:4.0f}% of memcpy")


if __name__ == "__main__":
    main()
