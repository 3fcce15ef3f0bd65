"""A/B of forward+backward through the fused kernel's two autograd formulas, in one process.

    python benchmarks/ab_autograd_node.py [CASE ...] [--rounds 15]

The same ``torchstn bench`` workloads (default: the 2-D affine cases), forward+backward as the
bench times it (``torch.autograd.grad`` of the warp for a dense output gradient), alternately
through the compiled call's C++ autograd node (``csrc/fast_call.cpp``'s ``torchstn::Warp2dBackward``,
what a call that records a gradient takes) and through the Python ``autograd.Function`` it
replaced (the compiled call made to decline such calls, as before 2026-12-04). Both give the
same bits (checked first). Prints each side's median time and the median of the per-round
speed-ups (Python formula's time / the node's, > 1 = the node is faster). One thread.

``--family-rows`` compares instead, on the translation, attention and similarity cases, the
compiled call making those families' rows itself (``csrc/fast_call.cpp``'s ``family_rows``,
since 2026-12-06) against the same families left to the Python path (their rows made there,
then the same C++ node through the operator's eager call), as before::

    python benchmarks/ab_autograd_node.py translation-28 attention-28 similarity-28 --family-rows

``--same-rows`` compares, on the same cases, the family's warp (the bench's call) with a warp
of the same rows given to ``Affine`` as ``(B, 2, 3)`` parameters (the same output, checked
first; speed-up = the rows' time / the family's, 1 = the family's parameters cost nothing)::

    python benchmarks/ab_autograd_node.py translation-28 attention-28 similarity-28 --same-rows
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from torchstn.bench._cases import build_workload, select_cases
from torchstn.sampling import _fused, _sample

_COMPILED_WARP, _RECORDED = _sample._compiled_warp, _fused._warp2d_recorded


def _python_formula(x: torch.Tensor, params: torch.Tensor, *args: object) -> torch.Tensor | None:
    """The compiled call as it was before the node: it declined every call that records a gradient."""
    if torch.is_grad_enabled() and (x.requires_grad or params.requires_grad):
        return None
    return _COMPILED_WARP(x, params, *args)


def _use_node(node: bool) -> None:
    """Route recorded calls through the C++ node (``node``) or the Python ``autograd.Function``."""
    _sample._compiled_warp = _COMPILED_WARP if node else _python_formula
    # the operator's eager call holds _warp2d_recorded in its closure
    (cell,) = [c for c in _fused.eager_warp2d.__closure__ if c.cell_contents in (_RECORDED, _declined)]
    cell.cell_contents = _RECORDED if node else _declined


def _declined(*args: object) -> None:
    return None


_FAMILY_CODES = {family: code for family, code in _fused._COMPILED_FAMILIES.items() if code >= 4}


def _use_family_rows(compiled: bool) -> None:
    """Let the compiled call make translation, attention and similarity rows (``compiled``), or
    leave those families to the Python path (the dict it reads, changed in place)."""
    for family, code in _FAMILY_CODES.items():
        if compiled:
            _fused._COMPILED_FAMILIES[family] = code
        else:
            _fused._COMPILED_FAMILIES.pop(family, None)


def _against_same_rows(cases: list[str], rounds: int) -> None:
    """``--same-rows``: each family case's forward+backward against ``Affine``'s of the same rows."""
    import torchstn as stn

    for case in select_cases(cases):
        if case.family not in ("translation", "attention", "similarity") or len(case.shape) != 4:
            continue
        work = build_workload(case, peers=())
        family = work.contenders["torchstn"]
        x = work.x.detach().clone().requires_grad_(True)
        rows = work.transform.affine_rows(family.leaves[1].detach()).clone().requires_grad_(True)

        def with_rows() -> tuple[torch.Tensor, ...]:
            return torch.autograd.grad(stn.warp(x, rows, stn.Affine(), case.out_size), (x, rows), work.grad_out)

        if not torch.equal(family.forward(), stn.warp(x, rows, stn.Affine(), case.out_size)):
            raise AssertionError(f"{case.name}: the family and its rows warp differently")
        rows_ms, family_ms, speedup = _alternated(
            {"rows": (_nothing, with_rows), "family": (_nothing, lambda: family.forward_backward(work.grad_out))},
            rounds)
        print(f"{case.label:30s} Affine rows {rows_ms:8.4f} ms   {case.family} {family_ms:8.4f} ms   "
              f"speed-up {speedup:.3f}x")


def _alternated(sides: dict, rounds: int) -> tuple[float, float, float]:
    """Two sides, ``{name: (enter, call)}``, timed in alternating order for ``rounds`` rounds (about
    20 ms per measurement, ``enter`` run before each side's): the median time of each (ms) and the
    median of the per-round speed-ups (the first side's time / the second's)."""
    (first, (enter_first, call_first)), (second, _) = sides.items()
    enter_first()
    calls = max(5, int(0.02 / _per_call(call_first, 3)))
    times: dict = {first: [], second: []}
    speedups = []
    for r in range(rounds):
        for name in (second, first) if r % 2 else (first, second):
            enter, call = sides[name]
            enter()
            _per_call(call, 2)
            times[name].append(_per_call(call, calls) * 1e3)
        speedups.append(times[first][-1] / times[second][-1])
    return statistics.median(times[first]), statistics.median(times[second]), statistics.median(speedups)


def _nothing() -> None:
    pass


def _per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=["affine-*"], help="bench case names or patterns")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--family-rows", action="store_true",
                        help="translation, attention and similarity rows made by the compiled call or in Python")
    parser.add_argument("--same-rows", action="store_true",
                        help="translation, attention and similarity warps against Affine given their rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.same_rows:
        _against_same_rows(args.cases, args.rounds)
        return
    switch, names = (_use_family_rows, ("Python rows", "C++ rows")) if args.family_rows else (
        _use_node, ("python formula", "C++ node"))
    for case in select_cases(args.cases):
        wanted = ("translation", "attention", "similarity") if args.family_rows else ("affine",)
        if case.family not in wanted or len(case.shape) != 4:
            continue
        work = build_workload(case, peers=())
        contender = work.contenders["torchstn"]

        def forward_backward() -> tuple[torch.Tensor, ...]:
            return contender.forward_backward(work.grad_out)

        results = {}
        for node in (True, False):
            switch(node)
            results[node] = forward_backward()
        if not all(torch.equal(a, b) for a, b in zip(results[True], results[False])):
            raise AssertionError(f"{case.name}: the two paths give different gradients")
        sides = {False: (lambda: switch(False), forward_backward), True: (lambda: switch(True), forward_backward)}
        before_ms, after_ms, speedup = _alternated(sides, args.rounds)
        switch(True)
        print(f"{case.label:30s} {names[0]} {before_ms:8.4f} ms   {names[1]} {after_ms:8.4f} ms   "
              f"speed-up {speedup:.3f}x")


if __name__ == "__main__":
    main()
