"""Run the benchmark cases and collect the measurements (no printing; see ``_report``)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from torchstn._validation import check_names, first_line
from torchstn._version import __version__
from torchstn.bench import _jax, _opencv, _peers
from torchstn.bench._cases import (
    CASES,
    PEERS,
    Case,
    Workload,
    build_training_step,
    build_workload,
    select_cases,
)
from torchstn.bench._timing import Timings, interleaved, peak_memory
from torchstn.engine import resolve_device
from torchstn.sampling import BACKENDS

__all__ = ["BenchReport", "CaseResult", "Measurement", "default_backends", "run_benchmark", "run_case"]

#: the passes of a warp case and of the training case
PASSES: tuple[str, ...] = ("forward", "forward+backward")
STEP = "step"


@dataclass
class Measurement:
    """One contender in one pass of one case.

    Attributes:
        seconds: median seconds per call over the rounds.
        ratio: median over rounds of ``seconds / reference seconds`` in the same round
            (for peers the reference is torchstn, so > 1 means torchstn is faster);
            ``None`` for the reference itself.
        ratio_quartiles: lower and upper quartile of those per-round ratios.
        peak_bytes: peak device memory of one call above what was allocated before
            (CUDA only; ``None`` where the device does not report it).
        bandwidth: effective bytes per second of a sampler or memcpy (input + grid +
            output bytes over time), where it applies.
    """

    seconds: float
    ratio: float | None = None
    ratio_quartiles: tuple[float, float] | None = None
    peak_bytes: int | None = None
    bandwidth: float | None = None


@dataclass
class CaseResult:
    """The measurements of one case.

    Attributes:
        name, label, family: from the :class:`~torchstn.bench.Case`.
        passes: pass (``"forward"``, ``"forward+backward"``, or ``"step"`` for the
            training case) -> contender -> measurement.
        components: the forward pass taken apart, timed interleaved with a memcpy of
            the same traffic: ``"memcpy"``, ``"sample:<backend>"`` for every sampling
            backend (ratio to the default ``"sample:torch"``), ``"grid:<contender>"``
            (grid generation alone, ratio to ``"sample:torch"``).
        backends: pass -> ``"warp:fused"`` / ``"warp:torch"`` (``torchstn.warp`` with the
            fused kernel, and with grid + ``F.grid_sample``), timed interleaved; the
            ratio of ``"warp:torch"`` is its time over the fused kernel's (> 1: fused
            is faster). Only for the cases the fused kernel covers.
        notes: why a peer is missing, where the models came from, ...
        peer_errors: how far each peer outside torch (OpenCV, JAX) was from torch's warp
            in the check before it was timed: peer -> part (``"output"``, ``"d/dx"``,
            ``"d/dmatrix"``) -> ``max |peer - torch| / max(1, max |torch|)``.
    """

    name: str
    label: str
    family: str
    passes: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    components: dict[str, Measurement] = field(default_factory=dict)
    backends: dict[str, dict[str, Measurement]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    peer_errors: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class BenchReport:
    """A whole benchmark run: the machine and settings (``meta``) and one result per case."""

    meta: dict[str, object]
    cases: list[CaseResult]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-serialisable data."""
        return {"meta": self.meta, "cases": [asdict(c) for c in self.cases]}

    def case(self, name: str) -> CaseResult | None:
        """The result of the case called ``name``, if it was run."""
        return next((c for c in self.cases if c.name == name), None)


def _measurements(
    timings: Timings, reference: str, peaks: dict[str, int | None] | None = None
) -> dict[str, Measurement]:
    out = {}
    for name in timings.seconds:
        m = Measurement(seconds=timings.median(name), peak_bytes=(peaks or {}).get(name))
        if name != reference:
            m.ratio = timings.ratio(reference, name)
            m.ratio_quartiles = timings.ratio_spread(reference, name)
        out[name] = m
    return out


def default_backends() -> list[str]:
    """Every registered sampling backend but ``"reference"`` (the readable definition, 100x slower)."""
    return [name for name in BACKENDS if name != "reference"]


def _component_fns(work: Workload, backends: Sequence[str]) -> tuple[dict[str, Callable[[], object]], int]:
    """memcpy, every sampler backend and each grid generator, for the component breakdown."""
    traffic = work.traffic_bytes()
    element = work.x.element_size()
    src = torch.rand(max(1, traffic // (2 * element)), device=work.x.device, dtype=work.x.dtype)
    dst = torch.empty_like(src)
    fns: dict[str, Callable[[], object]] = {"memcpy": lambda: dst.copy_(src)}
    for name, fn in work.sampler_fns(backends).items():
        fns[f"sample:{name}"] = fn
    for name, fn in work.grid_fns.items():
        fns[f"grid:{name}"] = fn
    return fns, traffic


def run_case(
    case: Case,
    *,
    device: torch.device | str,
    rounds: int,
    min_time: float,
    peers: str | Sequence[str] = PEERS,
    components: bool = True,
    backends: str | Sequence[str] | None = None,
) -> CaseResult:
    """Time one case: every pass interleaved over ``rounds``, then (warp cases) its components.

    ``device``, ``peers`` and ``backends`` are read as by :func:`run_benchmark`.
    """
    if not isinstance(case, Case):
        raise TypeError(f"case must be a torchstn.bench.Case (select_cases(names) makes them), got {case!r}")
    device = resolve_device(str(device))
    peers = check_names("peers", peers, PEERS)
    backends = default_backends() if backends is None else check_names("backends", backends, BACKENDS)
    result = CaseResult(case.name, case.label, case.family)
    if case.family == "train":
        steps, source = build_training_step(case, device)
        result.notes.append(f"models: {source}")
        peaks = {name: peak_memory(fn, device) for name, fn in steps.items()}
        result.passes[STEP] = _measurements(
            interleaved(steps, rounds=rounds, min_time=min_time, device=device), "torchstn", peaks
        )
        return result

    work = build_workload(case, device, peers=peers)
    result.notes += work.notes
    result.peer_errors = dict(work.peer_errors)
    for pass_name in PASSES:
        fns = work.timed(pass_name)
        with _pass_mode(pass_name):
            peaks = {name: peak_memory(fn, device) for name, fn in fns.items()}
            timings = interleaved(fns, rounds=rounds, min_time=min_time, device=device)
        result.passes[pass_name] = _measurements(timings, "torchstn", peaks)

    if components and work.warp_backends:
        result.backends = _time_warp_backends(work, rounds=rounds, min_time=min_time, device=device)
    if components:
        _time_components(result, work, backends, rounds=rounds, min_time=min_time, device=device)
    return result


def _pass_mode(pass_name: str) -> contextlib.AbstractContextManager:
    """What a pass of :meth:`Workload.timed` runs under: ``torch.no_grad()`` for the forward
    pass, entered once around its timed loops (as an inference loop holds it), nothing else."""
    return torch.no_grad() if pass_name == "forward" else contextlib.nullcontext()


def _time_warp_backends(
    work: Workload, *, rounds: int, min_time: float, device: torch.device
) -> dict[str, dict[str, Measurement]]:
    """``torchstn.warp`` with the fused kernel against grid + ``F.grid_sample``, both passes."""
    out = {}
    for pass_name in PASSES:
        fns = work.timed(pass_name, work.warp_backends)
        with _pass_mode(pass_name):
            timings = interleaved(fns, rounds=rounds, min_time=min_time, device=device)
        out[pass_name] = _measurements(timings, "warp:fused")
    return out


def _time_components(
    result: CaseResult, work: Workload, backends: Sequence[str], *, rounds: int, min_time: float,
    device: torch.device,
) -> None:
    """The forward pass taken apart (memcpy, each sampler, each grid generator) into ``result.components``.

    A part that cannot run on this case (a backend without this mode, say) is skipped with a note. The
    ratios are to ``"sample:torch"``; without it (not among ``backends``, or skipped) there are none, and a
    note says so.
    """
    fns, traffic = _component_fns(work, backends)
    usable = {}
    # under one torch.no_grad() for the whole loop, as the forward pass (entered per call it cost ~1.5 µs a
    # call, which the memcpy was not charged: half the bandwidth of a 4x1x8x8 sampler)
    with _pass_mode("forward"):
        for name, fn in fns.items():
            try:
                fn()
            except (NotImplementedError, ValueError, RuntimeError) as err:
                result.notes.append(f"{name}: skipped ({first_line(err)})")
                continue
            usable[name] = fn
        timings = interleaved(usable, rounds=rounds, min_time=min_time, device=device)
    reference = "sample:torch"
    if reference not in usable:  # (the ratios were to whatever came first, memcpy say, under its name)
        result.notes.append(f"components: no ratios, which are to {reference}: not among the backends, or skipped")
    for name in usable:
        m = Measurement(seconds=timings.median(name))
        if reference in usable and name not in (reference, "memcpy"):
            m.ratio = timings.ratio(reference, name)
            m.ratio_quartiles = timings.ratio_spread(reference, name)
        if name == "memcpy" or name.startswith("sample:"):
            m.bandwidth = traffic / m.seconds
        result.components[name] = m


def _meta(device: torch.device, rounds: int, min_time: float, quick: bool) -> dict[str, object]:
    meta: dict[str, object] = {
        "command": None,
        "torchstn": __version__,
        "torch": torch.__version__,
        "kornia": _peers.kornia_version(),
        "opencv": _opencv.opencv_version(),
        "jax": _jax.jax_version(),
        "jax_setup": _jax.jax_setup(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # torch's vector instruction set here (AVX2, AVX512...), which the fused kernels are built
        # for and peers such as JAX vectorise with: ratios move with it between machines
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "processor": platform.processor() or platform.machine(),
        "rounds": rounds,
        "min_time": min_time,
        "quick": quick,
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def run_benchmark(
    cases: str | Sequence[str] | None = None,
    *,
    device: torch.device | str = "cpu",
    quick: bool = False,
    rounds: int | None = None,
    min_time: float | None = None,
    peers: str | Sequence[str] = PEERS,
    components: bool = True,
    backends: str | Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the benchmark: every selected case, every contender interleaved in the same rounds.

    Args:
        cases: case names or shell patterns (``["affine-*", "tps-28"]``, or one as a string:
            ``"affine-28"``); ``None``: all of :data:`~torchstn.bench.CASES`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available),
            as :func:`torchstn.engine.resolve_device` reads it.
        quick: tiny sizes and few rounds: checks the machinery, measures nothing useful.
        rounds: interleaved rounds per pass (default 15, quick 2).
        min_time: target seconds per measurement (default 0.02, quick 0.001).
        peers: which of :data:`~torchstn.bench.PEERS` to time (``"torch"``, ``"kornia"``,
            ``"opencv"``, ``"jax"``); one that is not installed or cannot do a case's work is
            skipped with a note, OpenCV and JAX also when they differ from torch's warp. A name
            that is not a peer is a ``ValueError``.
        components: also time memcpy, the sampler backends and each grid generator
            alone (bandwidths and the grid/sampler split).
        backends: the sampling backends of the components, among
            :data:`torchstn.sampling.BACKENDS` (default: every one but ``"reference"``); their
            ratios are to ``"torch"``'s, and there are none without it.
        progress: called with the label of each case before it runs.

    Returns:
        The :class:`BenchReport`; print it with :func:`~torchstn.bench.format_report`.

    Example:
        >>> from torchstn.bench import run_benchmark
        >>> report = run_benchmark(["affine-28"], quick=True, peers=("torch",), components=False)
        >>> sorted(report.cases[0].passes["forward"])
        ['torch', 'torchstn']
    """
    device = resolve_device(str(device))
    peers = check_names("peers", peers, PEERS)  # (before the minutes of timing, not at the case they reach)
    backends = None if backends is None else check_names("backends", backends, BACKENDS)
    selected = select_cases(cases, CASES)
    if quick:
        selected = [c.quick() for c in selected]
    rounds = rounds if rounds is not None else (2 if quick else 15)
    min_time = min_time if min_time is not None else (0.001 if quick else 0.02)
    results = []
    for case in selected:
        if progress is not None:
            progress(case.label)
        results.append(
            run_case(
                case, device=device, rounds=rounds, min_time=min_time, peers=peers, components=components,
                backends=backends,
            )
        )
    return BenchReport(_meta(device, rounds, min_time, quick), results)
