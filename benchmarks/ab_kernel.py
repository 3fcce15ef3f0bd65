"""A/B of two versions of the fused 2-D kernel in one process: this checkout's and another's.

Both libraries are loaded side by side and ``torchstn.warp``'s entry points are swapped
every round (in alternating order), so both versions see the same machine load; prints,
per case and pass, the median time of each and the median and quartiles of the per-round
speed-ups (base time / this checkout's time, > 1 = this checkout is faster). Give
``--base`` the ``src`` directory of another checkout, for example a worktree of the
previous commit (it must have the same kernel ABI; its source is compiled with this
checkout's flags)::

    git worktree add --detach /tmp/base HEAD~1
    python benchmarks/ab_kernel.py --base /tmp/base/src --cases projective
    python benchmarks/ab_kernel.py --base src        # an A/A: the harness's own bias

Run it with nothing else on the machine if you can, one thread (``--threads``).

``--bare`` times the kernels' entry points themselves (through ctypes, the outputs
allocated once), without ``torchstn.warp``'s call around them, and checks that both give the
same bits: the "A/B of the bare kernel" that the kernel's comments quote. Its forward+backward
pass is the backward entry point alone (both gradients, ``--grads x`` or ``theta`` for one)::

    python benchmarks/ab_kernel.py --base /tmp/base/src --bare --noise 0.05 --cases 224
    python benchmarks/ab_kernel.py --base /tmp/base/src --bare --forward-only   # no backward
    python benchmarks/ab_kernel.py --base /tmp/base/src --bare --close           # rounds differently
    python benchmarks/ab_kernel.py --base /tmp/base/src --bare --probe           # what a part costs

``--probe`` compares nothing: for a change that breaks the values on purpose (a part of the
kernel left out, or replaced by something cheaper) to see what that part costs.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch

import torchstn as stn
from torchstn.sampling import _fused

SHAPES = [((1, 1, 28, 28), False), ((256, 1, 28, 28), False), ((64, 3, 64, 64), False), ((1, 3, 224, 224), True),
          ((1, 3, 224, 224), False),
          ((32, 3, 224, 224), False), ((64, 8, 32, 32), False), ((64, 3, 64, 64), True), ((32, 3, 224, 224), True),
          ((8, 2, 64, 64), True), ((4, 4, 64, 64), True)]


def entry_points(source: Path) -> dict:
    """The kernel built from ``source`` (cached like torchstn's own), its entry points bound."""
    entries: dict = {}
    _fused.bind_entries(_fused.load_kernel(source, _fused._ABI, f"the kernel of {source}"), "warp2d",
                        _fused._FORWARD_ARGS, _fused._BACKWARD_ARGS, entries)
    return entries


def use(entries: dict) -> None:
    """Make ``entries`` the kernel that ``torchstn.warp`` calls, through ctypes and the compiled call."""
    _fused._ENTRY.update(entries)
    _fused.rebind_fast_call()


def bare_call(x: torch.Tensor, theta: torch.Tensor, transform: stn.Transform, libraries: dict,
              backward: bool = False, grads: str = "both", grid: bool = False, mode: str = "bilinear",
              size: tuple[int, int] | None = None, close: bool = False, probe: bool = False):
    """A call of the forward (or backward) entry point that ``_fused._ENTRY`` holds now
    (swapped by ``use``), on ``x`` warped by ``theta`` to ``size`` (default: its own; ``mode``, zeros
    padding), into outputs allocated once; the backward for a fixed random output gradient,
    ``grads`` ``"both"``, ``"x"`` or ``"theta"`` (with ``grid``, the grid's). With ``grid``,
    the points are given as ``transform``'s grid (the sampling of a grid, ``torchstn.sample``).
    Raises unless every library in ``libraries`` gives the same bits (with ``close``, the same
    to 1e-4 relative to the largest value, NaN where the first gives NaN: for a change that
    rounds differently; the largest difference is printed; with ``probe``, compares nothing)."""
    projective = transform.num_params == 8
    size = tuple(x.shape[-2:]) if size is None else tuple(size)
    if grid:
        matrix, location = transform.grid(theta, size).contiguous(), "grid"
    else:
        matrix = (transform.matrix(theta) if projective else transform.affine_rows(theta)).contiguous()
        location = "projective" if projective else "affine"
    # (the kernel writes the input's layout; the backward reads grad_out so)
    layout = torch.contiguous_format if x.is_contiguous() else torch.channels_last
    out = x.new_empty(x.shape[:2] + size).contiguous(memory_format=layout)
    geometry = _fused._geometry(location, mode, x, out, size, "zeros", False)
    eps = float(transform.eps) if projective else 0.0
    grad_x = torch.empty_like(x) if backward and grads != "theta" else None
    grad_matrix = torch.empty_like(matrix) if backward and grads != "x" else None
    if backward:
        out.copy_(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))

    def call() -> None:
        if backward:
            _fused._ENTRY[True, torch.float32](geometry, x.data_ptr(), matrix.data_ptr(), eps, out.data_ptr(),
                                               _fused._ptr_of(grad_x), _fused._ptr_of(grad_matrix))
        else:
            _fused._ENTRY[False, torch.float32](geometry, x.data_ptr(), matrix.data_ptr(), eps, out.data_ptr())

    results = []
    for entries in libraries.values():
        use(entries)
        call()
        results.append([t.clone() for t in (out, grad_x, grad_matrix) if t is not None])
    if probe:
        return call
    if close:
        worst = max(((a - b).abs().nan_to_num().max() / b.abs().nan_to_num().max().clamp_min(1)).item()
                    for r in results[1:] for a, b in zip(r, results[0]))
        if worst > 1e-4 or any(not torch.equal(a.isnan(), b.isnan()) for r in results for a, b in zip(r, results[0])):
            raise AssertionError(f"the two kernels give different results (largest relative difference {worst:.2g})")
        print(f"  ({'backward' if backward else 'forward'}: largest difference {worst:.2g} of the largest value)")
    elif any(not all(torch.equal(a, b) for a, b in zip(r, results[0])) for r in results):
        raise AssertionError("the two kernels give different results")
    return call


def _shape(text: str) -> tuple:
    """``--shapes``' ``BxCxHxW[cl][->HoxWo]``: (shape, channels_last) or (shape, channels_last, (Ho, Wo))."""
    given, _, out = text.partition("->")
    shape = (tuple(int(d) for d in given.removesuffix("cl").split("x")), given.endswith("cl"))
    return shape + ((tuple(int(d) for d in out.split("x")),) if out else ())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="the other checkout's src directory")
    parser.add_argument("--cases", default="", help="only the cases whose label contains this text")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.1, help="θ: the identity plus this times N(0, 1)")
    parser.add_argument("--forward-only", action="store_true", help="skip the forward+backward pass")
    parser.add_argument("--bare", action="store_true",
                        help="the entry points alone (the backward for forward+backward)")
    parser.add_argument("--grads", choices=("both", "x", "theta"), default="both",
                        help="--bare's backward: the gradients it computes")
    parser.add_argument("--grid", action="store_true", help="--bare: the points given as a grid (torchstn.sample)")
    parser.add_argument("--close", action="store_true",
                        help="--bare: both versions' results the same to 1e-4 of the largest value, not the same bits "
                             "(a change that rounds differently)")
    parser.add_argument("--probe", action="store_true",
                        help="--bare: compare nothing (a probe that breaks the values to time a part of the kernel)")
    parser.add_argument("--mode", choices=("bilinear", "nearest"), default="bilinear",
                        help="--bare: the forward's interpolation (the backward's stays bilinear)")
    parser.add_argument("--shapes", nargs="+", metavar="BxCxHxW[cl][->HoxWo]",
                        help="these inputs instead of the default cases (cl: channels_last; ->HoxWo: warped to "
                             "that size instead of their own, as 256x1x60x60->30x30)")
    args = parser.parse_args()
    shapes = SHAPES if args.shapes is None else [_shape(s) for s in args.shapes]
    torch.set_num_threads(args.threads)
    # torchstn's own loading of its kernel binds _ENTRY (and the compiled call) on the first
    # warp: done first, so that the swaps below are what the calls run
    _fused.fused_status()
    _fused.fast_call()
    libraries = {"base": entry_points(args.base / "torchstn/sampling/csrc/fused_warp2d.cpp"),
                 "this": entry_points(_fused._SOURCE)}
    for transform in (stn.Affine(), stn.Projective()):
        for shape, channels_last, *out in shapes:
            size = tuple(out[0]) if out else shape[-2:]
            label = (f"{transform.name.lower()} {'x'.join(map(str, shape))}{' channels_last' if channels_last else ''}"
                     + (f"->{'x'.join(map(str, size))}" if out else ""))
            if args.cases not in label:
                continue
            g = torch.Generator().manual_seed(0)
            x = torch.rand(shape, generator=g)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            theta = transform.identity(shape[0]) + args.noise * torch.randn(shape[0], transform.num_params, generator=g)
            if transform.num_params == 8:
                theta[:, 6:] *= 0.3
            xg, tg = x.clone().requires_grad_(), theta.clone().requires_grad_()

            def forward() -> None:
                stn.warp(x, theta, transform, size=size, backend="fused")

            def forward_backward() -> None:
                torch.autograd.grad(stn.warp(xg, tg, transform, size=size, backend="fused").sum(), (xg, tg))

            if args.bare:
                forward = bare_call(x, theta, transform, libraries, grid=args.grid, mode=args.mode, size=size,
                                    close=args.close, probe=args.probe)
                if not args.forward_only:
                    forward_backward = bare_call(x, theta, transform, libraries, backward=True, grads=args.grads,
                                                 grid=args.grid, size=size, close=args.close, probe=args.probe)
            second = f"backward ({args.grads})" if args.bare else "forward+backward"
            passes = [("forward", forward)] + ([] if args.forward_only else [(second, forward_backward)])
            for name, run in passes:
                print(f"{label:38s} {name:17s} {timed(run, libraries, args.rounds)}", flush=True)
    use(libraries["this"])


def timed(run, libraries: dict, rounds: int) -> str:
    """``run`` timed with each of the two kernels in ``libraries`` (``"base"`` and ``"this"``, swapped
    in by ``use``), alternating their order every round, ~10 ms per measurement: their median
    times and the median and quartiles of the per-round speed-ups (base / this), as one line."""
    for entries in libraries.values():  # warm both
        use(entries)
        run()
        run()
    start = time.perf_counter()
    run()
    calls = max(1, int(0.01 / (time.perf_counter() - start)))
    times: dict[str, list[float]] = {"base": [], "this": []}
    speedups = []
    for r in range(rounds):
        for version in ("base", "this") if r % 2 == 0 else ("this", "base"):
            use(libraries[version])
            start = time.perf_counter()
            for _ in range(calls):
                run()
            times[version].append((time.perf_counter() - start) / calls)
        speedups.append(times["base"][-1] / times["this"][-1])
    q = statistics.quantiles(speedups, n=4)
    return (f"base {statistics.median(times['base']) * 1e3:8.3f} ms  this {statistics.median(times['this']) * 1e3:8.3f} ms"
            f"  speed-up {statistics.median(speedups):.3f}x (quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
