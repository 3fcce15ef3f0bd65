"""A/B of the fused 2-D kernel built with two sets of compiler flags, in one process.

    python benchmarks/ab_flags.py --without=-mtune=native [--grid] [--cases affine-28 affine-64 ...]

Builds this checkout's kernel twice, with torchstn's flags ("this") and with them changed by
``--without`` (flags removed) or ``--with`` (flags added; "base"), checks that both give the same
bits (``ab_kernel.bare_call``), and times their entry points alone (forward, and backward with
both gradients) on the bench cases' workloads as ``ab_kernel.py`` times two versions
(``ab_kernel.timed``): the speed-up is the other flags' time / torchstn's flags'.
"""

import argparse

import torch

import ab_kernel
from torchstn.bench._cases import build_workload, select_cases
from torchstn.sampling import _fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--without", nargs="*", default=[], help="flags the other build leaves out")
    parser.add_argument("--with", dest="extra", nargs="*", default=[], help="flags the other build adds")
    parser.add_argument("--cases", nargs="+", default=["affine-28", "affine-60to30", "affine-64", "affine-224",
                                                        "affine-b1-224", "affine-b1-224-cl"])
    parser.add_argument("--grid", action="store_true", help="the points given as the transform's grid")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    isa = _fused._isa()
    ours = list(_fused._ISA_FLAGS[isa])
    other = [f for f in ours if f not in args.without] + args.extra
    libraries = {}
    for name, flags in (("base", other), ("this", ours)):
        _fused._ISA_FLAGS[isa] = flags
        libraries[name] = ab_kernel.entry_points(_fused._SOURCE)
    _fused._ISA_FLAGS[isa] = ours
    print(f"this: torchstn's flags, {' '.join(ours)}\nbase: {' '.join(other)}")
    for case in args.cases:
        work = build_workload(select_cases([case])[0], peers=())
        x, params = work.x.detach(), work.contenders["torchstn"].leaves[1].detach()
        for backward in (False, True):
            call = ab_kernel.bare_call(x, params, work.transform, libraries, backward=backward,
                                       size=work.case.out_size, grid=args.grid)
            print(f"{case:18s} {'backward' if backward else 'forward':8s} {ab_kernel.timed(call, libraries, args.rounds)}",
                  flush=True)


if __name__ == "__main__":
    main()
