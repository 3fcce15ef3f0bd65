"""Benchmarks: torchstn against ``F.affine_grid + F.grid_sample``, kornia, OpenCV and JAX, interleaved in one run.

Every case times all contenders in the same rounds and reports the median of the
per-round ratios (peer time / torchstn time, > 1 means torchstn is faster), forward and
forward+backward, peak memory where the device reports it, and each sampler's effective
bandwidth next to a memcpy measured in the same run. ``torchstn bench`` and
``benchmarks/bench_warp.py`` print :func:`format_report` of :func:`run_benchmark`.

Example:
    >>> from torchstn.bench import run_benchmark, format_report
    >>> report = run_benchmark(["tps-28"], quick=True, peers=(), components=False)
    >>> report.cases[0].passes["forward"]["torchstn"].seconds > 0
    True
"""

from __future__ import annotations

from torchstn.bench._cases import (
    CASES,
    PEER_FLAGS,
    PEER_TOLERANCE,
    PEERS,
    Case,
    Contender,
    ForeignContender,
    Workload,
    build_training_step,
    build_workload,
    select_cases,
)
from torchstn.bench._report import TargetCheck, check_targets, format_report
from torchstn.bench._runner import BenchReport, CaseResult, Measurement, run_benchmark, run_case
from torchstn.bench._timing import Timings, interleaved, peak_memory

__all__ = [
    "CASES",
    "PEERS",
    "PEER_FLAGS",
    "PEER_TOLERANCE",
    "BenchReport",
    "Case",
    "CaseResult",
    "Contender",
    "ForeignContender",
    "Measurement",
    "TargetCheck",
    "Timings",
    "Workload",
    "build_training_step",
    "build_workload",
    "check_targets",
    "format_report",
    "interleaved",
    "peak_memory",
    "run_benchmark",
    "run_case",
    "select_cases",
]
