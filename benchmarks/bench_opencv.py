"""torchstn's affine forward against the installed OpenCV's ``warpAffine``, best-of times in one process.

The bench (``torchstn bench``) gives medians of interleaved rounds; this gives the best of
many repetitions of each, which on a busy machine is the nearer estimate of what each warp
costs, and reports ns per output point, so that two OpenCV versions can be compared in
turn (one process each; OpenCV is imported once)::

    python benchmarks/bench_opencv.py
    pip install --target /tmp/cv50 --no-deps opencv-python-headless==5.0.0.93
    PYTHONPATH=/tmp/cv50 python benchmarks/bench_opencv.py

θ: the identity plus 0.05 N(0, 1), as the bench's, or one rotation/zoom (``--theta``).
OpenCV runs through the bench's own peer (``torchstn.bench._opencv``), its output checked
against torchstn's first.
"""

import argparse
import statistics
import time

import torch

import torchstn as stn
from torchstn.bench._opencv import opencv_version, opencv_warp

SHAPES = [(1, 1, 224, 224), (1, 3, 224, 224), (64, 3, 64, 64), (256, 1, 28, 28), (4, 3, 16, 16)]
THETAS = {
    "noise": None,
    "identity": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
    "zoom": [[0.8, 0.0, 0.0], [0.0, 0.8, 0.0]],
    "rotate-zoom": [[0.788, -0.139, 0.0], [0.139, 0.788, 0.0]],
}


def best(run, calls: int, reps: int) -> float:
    """The least mean time of ``calls`` calls of ``run`` over ``reps`` repetitions."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--theta", choices=sorted(THETAS), default="noise")
    parser.add_argument("--channels-last", action="store_true", help="the input in channels_last (OpenCV's HWC)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two; the median ratio is printed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, OpenCV {opencv_version()}, one thread, θ {args.theta}"
          f"{', channels_last' if args.channels_last else ''}; best of {args.reps} repetitions")
    for shape in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(shape, generator=g)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fixed = THETAS[args.theta]
        theta = (torch.eye(2, 3) + 0.05 * torch.randn(shape[0], 2, 3, generator=g) if fixed is None
                 else torch.tensor(fixed).expand(shape[0], 2, 3).contiguous())
        affine = stn.Affine()
        run_cv, to_torch = opencv_warp(x, theta, shape[2:], threads=1)
        with torch.no_grad():
            ours = stn.warp(x, theta.reshape(shape[0], 6), affine)
            error = (to_torch(run_cv()) - ours).abs().max().item()

            def run_ours() -> None:
                stn.warp(x, theta.reshape(shape[0], 6), affine)

            calls = max(1, int(2e5 // (shape[0] * shape[2] * shape[3])))
            ratios, mine, theirs = [], [], []
            for _ in range(args.rounds):
                mine.append(best(run_ours, calls, args.reps))
                theirs.append(best(run_cv, calls, args.reps))
                ratios.append(theirs[-1] / mine[-1])
        points = shape[0] * shape[2] * shape[3]
        print(f"{'x'.join(map(str, shape)):>14s}  torchstn {min(mine) * 1e9 / points:5.2f} ns/point  "
              f"OpenCV {min(theirs) * 1e9 / points:5.2f} ns/point  ratio {statistics.median(ratios):.2f}x "
              f"(> 1: torchstn faster; max |difference| {error:.1e})", flush=True)


if __name__ == "__main__":
    main()
