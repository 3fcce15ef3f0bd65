"""Interleaved timing: every contender is timed in every round, so machine noise hits all alike.

On a shared machine absolute timings drift by several times within a minute. Timing
contender A for ten seconds and then contender B for ten seconds compares two different
machines; timing A, B, C, A, B, C, ... and taking the ratio *within each round*
compares them on the same machine, and the median of those per-round ratios is robust
to the rounds a noisy neighbour spoiled.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from torchstn._validation import check_int, check_number

__all__ = ["Timings", "interleaved", "peak_memory", "synchronizer"]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@dataclass
class Timings:
    """Seconds per call of each contender, one entry per round (rounds aligned across contenders).

    Attributes:
        seconds: contender name -> per-round seconds per call.
        calls: contender name -> calls per measurement (chosen so one measurement
            lasts about ``min_time``).
    """

    seconds: dict[str, list[float]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def median(self, name: str) -> float:
        """Median seconds per call of ``name``."""
        return statistics.median(self.seconds[name])

    def ratio(self, reference: str, other: str) -> float:
        """Median over rounds of ``time(other) / time(reference)``: > 1 means ``reference`` is faster."""
        return statistics.median(o / r for r, o in zip(self.seconds[reference], self.seconds[other]))

    def ratio_spread(self, reference: str, other: str) -> tuple[float, float]:
        """The lower and upper quartile of the per-round ratios (how much the rounds disagree)."""
        ratios = sorted(o / r for r, o in zip(self.seconds[reference], self.seconds[other]))
        if len(ratios) < 4:
            return ratios[0], ratios[-1]
        q = statistics.quantiles(ratios, n=4)
        return q[0], q[2]


def interleaved(
    contenders: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    min_time: float = 0.02,
    max_calls: int = 1000,
    device: torch.device | None = None,
) -> Timings:
    """Time every contender once per round, in an order shuffled each round.

    Each contender is warmed up, then calibrated: a measurement repeats it ``n`` times
    so that it lasts about ``min_time`` seconds (timer resolution and per-call jitter
    average out). The garbage collector is paused during measurements. The order is
    drawn anew each round (seeded: the same every run), so that no contender always
    comes right after the same one: what one leaves behind can slow the next (the
    measurement right after JAX's jitted warp ran 5-10% slower, docs/benchmarks.md
    "2026-12-06 21:40"), which a fixed cyclic order charged to one contender alone.

    Args:
        contenders: name -> zero-argument callable doing one unit of work.
        rounds: number of rounds (each contender is measured once per round).
        min_time: target seconds per measurement.
        max_calls: upper bound on ``n``.
        device: synchronised around each measurement (CUDA kernels are asynchronous).

    Returns:
        The per-round seconds per call of each contender.
    """
    check_int("rounds", rounds, 1)
    check_int("max_calls", max_calls, 1)
    check_number("min_time", min_time, 0.0)
    sync = synchronizer(device if device is not None else torch.device("cpu"))
    result = Timings()
    for name, fn in contenders.items():
        result.calls[name] = _calls_per_measurement(fn, sync, min_time, max_calls)
        result.seconds[name] = []
    order: list[str] = list(contenders)
    shuffle = random.Random(0).shuffle
    with _gc_paused():
        for _ in range(rounds):
            shuffle(order)
            for name in order:
                result.seconds[name].append(_seconds_per_call(contenders[name], result.calls[name], sync))
    return result


def _calls_per_measurement(fn: Callable[[], object], sync: Callable[[], None], min_time: float, max_calls: int) -> int:
    """Warm ``fn`` up, time one call, and return how many calls last about ``min_time`` (at most ``max_calls``)."""
    fn()  # warm-up: caches, allocator, lazy initialisation
    sync()
    start = time.perf_counter()
    fn()
    sync()
    once = time.perf_counter() - start
    return max(1, min(max_calls, math.ceil(min_time / max(once, 1e-7))))


def _seconds_per_call(fn: Callable[[], object], calls: int, sync: Callable[[], None]) -> float:
    """One measurement: ``calls`` calls of ``fn`` back to back, the device synchronised around them."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Collect garbage now, then keep the collector from running (and timing it) until the block ends."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated while ``fn`` runs, above what was allocated before; ``None`` where not reported.

    Only CUDA reports it (``torch.cuda.max_memory_allocated``); CPU allocations are not
    tracked by torch.
    """
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
