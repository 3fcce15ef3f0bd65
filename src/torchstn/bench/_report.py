"""Turn a :class:`~torchstn.bench.BenchReport` into the printed tables and the speed-target checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchstn.bench._cases import CASES, PEER_TOLERANCE, PEERS
from torchstn.bench._runner import PASSES, STEP, BenchReport, CaseResult, Measurement

__all__ = ["TargetCheck", "check_targets", "format_report"]

#: the affine-family cases of the "at least 1.5x on the 28-64 px cases" target
_SMALL_AFFINE = ("affine-28", "affine-60to30", "affine-64", "translation-28", "attention-28", "similarity-28")

#: every 2-D case of the affine family (OpenCV's warpAffine does their work)
_AFFINE_2D = ("affine-28", "affine-60to30", "affine-64", "affine-224", "affine-b1-28", "affine-b1-224",
              "affine-b1-224-cl", "affine-b1-224-gray", "affine-b4-8", "affine-b4-16", "translation-28",
              "attention-28", "similarity-28")

#: the small calls: batch 1 (latency) and batch 4 of small images, where per-call work dominates
_SMALL_CALLS = ("affine-b1-28", "affine-b1-224", "affine-b1-224-cl", "affine-b1-224-gray", "affine-b4-8",
                "affine-b4-16")

#: the volumes
_VOLUMES = ("affine3d-32", "affine3d-64")

_NOT_MEASURED = "not measured in this run"
_NOT_JUDGED = "not judged in a quick run (tiny sizes under the full cases' names): run without --quick"


@dataclass
class TargetCheck:
    """One speed target: what it asks, whether it is met (``None``: not measured in this run, or a quick run,
    which judges none), the numbers."""

    target: str
    met: bool | None
    detail: str


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f} ms"


def _mb(nbytes: int | None) -> str:
    return "" if nbytes is None else f" {nbytes / 2**20:7.1f} MiB"


def _cell(m: Measurement | None) -> str:
    if m is None:
        return "-"
    text = _ms(m.seconds) + _mb(m.peak_bytes)
    if m.ratio is not None:
        text += f" {m.ratio:6.2f}x"
    return text


def _aligned(rows: list[list[str]]) -> list[str]:
    """The rows of a table as lines: each column as wide as its widest cell and two spaces, so that no
    label or cell runs into the next column (quick labels are longer than the full cases')."""
    widths = [max(map(len, column)) + 2 for column in zip(*rows)]
    return ["".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def _warp_table(cases: list[CaseResult]) -> list[str]:
    peers = [p for p in PEERS if any(p in c.passes.get(PASSES[0], {}) for c in cases)]
    rows = [["case", "pass", "torchstn"] + [f"{p} (time, ratio)" for p in peers]]
    for case in cases:
        for i, pass_name in enumerate(PASSES):
            row = case.passes.get(pass_name, {})
            cells = [case.label if i == 0 else "", pass_name, _cell(row.get("torchstn"))]
            rows.append(cells + [_cell(row.get(p)) for p in peers])
    return _aligned(rows)


def _components_table(cases: list[CaseResult]) -> list[str]:
    names: list[str] = []
    for case in cases:
        names += [n for n in case.components if n not in names]
    samplers = [n for n in names if n.startswith("sample:")]
    grids = [n for n in names if n.startswith("grid:")]
    rows = [["case", "memcpy"] + samplers + grids]
    for case in cases:
        if not case.components:
            continue
        copy = case.components.get("memcpy")
        cells = [case.label, "-" if copy is None else f"{copy.bandwidth / 1e9:6.2f} GB/s{_ms(copy.seconds)}"]
        for name in samplers:
            m = case.components.get(name)
            if m is None or m.bandwidth is None:
                cells.append("-")
                continue
            share = f"{100 * m.bandwidth / copy.bandwidth:4.0f}%" if copy is not None and copy.bandwidth else ""
            cells.append(f"{m.bandwidth / 1e9:6.2f} GB/s {share}{_ms(m.seconds)}")
        for name in grids:
            m = case.components.get(name)
            cells.append("-" if m is None else _ms(m.seconds) + ("" if m.ratio is None else f" {m.ratio:5.2f}x"))
        rows.append(cells)
    return _aligned(rows)


def _backends_table(cases: list[CaseResult]) -> list[str]:
    rows = [["case", "pass", "warp:fused", "warp:torch (time, ratio)"]]
    for case in cases:
        if not case.backends:
            continue
        for i, pass_name in enumerate(PASSES):
            row = case.backends.get(pass_name, {})
            rows.append([case.label if i == 0 else "", pass_name, _cell(row.get("warp:fused")),
                         _cell(row.get("warp:torch"))])
    return _aligned(rows)


def _training_lines(case: CaseResult) -> list[str]:
    step = case.passes.get(STEP, {})
    st, plain, dx = step.get("torchstn"), step.get("cnn"), step.get("cnn+dx")
    if st is None or plain is None or plain.ratio is None:
        return []
    overhead = 1 / plain.ratio - 1  # plain.ratio = cnn time / st-cnn time, per round
    lines = [
        f"{case.label} (SGD, forward + cross-entropy + backward + update):",
        f"  ST-CNN{_ms(st.seconds)}{_mb(st.peak_bytes)}, CNN{_ms(plain.seconds)}{_mb(plain.peak_bytes)}: "
        f"ST overhead {100 * overhead:+.1f}% (median of per-round ratios)",
    ]
    if dx is not None and dx.ratio is not None:
        # dx.ratio = (cnn+dx time) / st-cnn time: the share of the overhead the CNN's input gradient explains
        lines.append(
            f"  CNN with the gradient wrt its input{_ms(dx.seconds)}: the gradient alone {100 * (dx.ratio / plain.ratio - 1):+.1f}%"
            f" over the CNN; the transformer itself (localisation net + grid + sampler) {100 * (1 / dx.ratio - 1):+.1f}%"
            " over that"
        )
    return lines + [f"  {n}" for n in case.notes]


def _foreign_lines(report: BenchReport) -> list[str]:
    """How the peers outside torch were run and how close they came to torch's warp (nothing when none ran)."""
    errors: dict[str, dict[str, float]] = {}
    for case in report.cases:
        for peer, parts in case.peer_errors.items():
            for part, error in parts.items():
                errors.setdefault(peer, {})[part] = max(error, errors.get(peer, {}).get(part, 0.0))
    if not errors:
        return []
    found = "; ".join(
        f"{peer} " + ", ".join(f"{part} {e:.1g}" for part, e in parts.items()) for peer, parts in errors.items()
    )
    bounds = ", ".join(f"{part} {t:g}" for part, t in PEER_TOLERANCE.items())
    lines = [
        "opencv (float32, one call per image, no gradient) and jax (jax.jit on the CPU) are checked against torch's "
        "warp before timing, max|peer - torch| / max(1, max|torch|),",
        f"  largest over the cases: {found} (tolerances: {bounds})",
    ]
    if report.meta.get("jax_setup"):
        lines.append(f"jax: {report.meta['jax_setup']}")
    return lines


def _grouped_notes(cases: list[CaseResult]) -> list[str]:
    """Each note once, after the names of the cases it concerns, in the order first seen."""
    where: dict[str, list[str]] = {}
    for case in cases:
        for note in case.notes:
            where.setdefault(note, []).append(case.name)
    return [f"  {', '.join(names)}: {note}" for note, names in where.items()]


def check_targets(report: BenchReport) -> list[TargetCheck]:
    """torchstn's speed targets, checked against the measured ratios.

    Targets (issue 8): affine family >= 1.5x ``affine_grid + grid_sample`` forward and
    forward+backward on the 28-64 px cases; never below 1.0x any peer on any case;
    projective >= 1.2x kornia forward+backward; TPS >= 20x kornia forward+backward on
    both TPS cases; ST overhead on the ST-CNN step < 15%. Issue 15: affine forward >= 1.2x
    OpenCV's float32 ``warpAffine`` on every 2-D case; forward+backward >= 2.5x
    ``affine_grid + grid_sample`` on the 28-64 px cases; 3-D forward >= 1.0x JAX's jitted
    warp and forward+backward >= 2.5x torch; batch-1 and batch-4 calls >= 1.0x torch; the fused
    sampler at >= 25% of the memcpy bandwidth on the 28-64 px affine cases.

    A quick run (``report.meta["quick"]``) judges none: each is ``met=None``, "not judged".
    """
    fwd, fwd_bwd = ("forward",), ("forward+backward",)
    checks = [
        _lowest_ratio("affine family >= 1.5x affine_grid+grid_sample on the 28-64 px cases, fwd and fwd+bwd",
                      _ratios(report, _SMALL_AFFINE, "torch", PASSES), 1.5),
        _never_slower(report),
        _lowest_ratio("projective >= 1.2x kornia warp_perspective, fwd+bwd",
                      _ratios(report, ("projective-64",), "kornia", fwd_bwd), 1.2),
        _lowest_ratio("TPS 4x4 >= 20x kornia get_tps_transform+warp_image_tps, fwd+bwd, both cases",
                      _ratios(report, ("tps-28", "tps-224"), "kornia", fwd_bwd), 20.0),
        _st_overhead(report),
        _lowest_ratio("affine forward >= 1.2x OpenCV warpAffine (float32) on every 2-D case",
                      _ratios(report, _AFFINE_2D, "opencv", fwd), 1.2),
        _lowest_ratio("affine family >= 2.5x affine_grid+grid_sample on the 28-64 px cases, fwd+bwd",
                      _ratios(report, _SMALL_AFFINE, "torch", fwd_bwd), 2.5),
        _lowest_ratio("3-D affine forward >= 1.0x JAX's jitted warp",
                      _ratios(report, _VOLUMES, "jax", fwd), 1.0),
        _lowest_ratio("3-D affine >= 2.5x affine_grid+grid_sample, fwd+bwd",
                      _ratios(report, _VOLUMES, "torch", fwd_bwd), 2.5),
        _lowest_ratio("batch-1 and batch-4 calls >= 1.0x affine_grid+grid_sample, fwd and fwd+bwd",
                      _ratios(report, _SMALL_CALLS, "torch", PASSES), 1.0),
        _lowest_ratio("sample:fused >= 25% of the memcpy bandwidth on the 28-64 px affine cases",
                      _bandwidth_shares(report, _SMALL_AFFINE, "sample:fused"), 0.25, unit="%"),
    ]
    if report.meta.get("quick"):  # (tiny cases under the full cases' names: a MISS there would say nothing)
        return [TargetCheck(c.target, None, _NOT_JUDGED) for c in checks]
    return checks


def _ratios(
    report: BenchReport, names: Sequence[str], peer: str, passes: Sequence[str]
) -> list[tuple[str, float | None]]:
    """``("<case> <pass>", ratio)`` of ``peer`` in each of ``passes`` of the cases ``names``; ``None``
    for one this run did not measure (a case left out by ``--cases``, a peer absent or rejected)."""
    out: list[tuple[str, float | None]] = []
    for name in names:
        case = report.case(name)
        for p in passes:
            m = None if case is None else case.passes.get(p, {}).get(peer)
            out.append((f"{name} {p}", None if m is None else m.ratio))
    return out


def _bandwidth_shares(report: BenchReport, names: Sequence[str], component: str) -> list[tuple[str, float | None]]:
    """``(case, share)``: ``component``'s bandwidth over the memcpy's in each of the cases ``names``;
    ``None`` for one that did not measure both."""
    out: list[tuple[str, float | None]] = []
    for name in names:
        case = report.case(name)
        parts = {} if case is None else case.components
        measured = component in parts and "memcpy" in parts and parts["memcpy"].bandwidth
        out.append((name, (parts[component].bandwidth or 0.0) / parts["memcpy"].bandwidth if measured else None))
    return out


def _lowest_ratio(target: str, found: list[tuple[str, float | None]], bound: float, unit: str = "x") -> TargetCheck:
    """Met when the lowest of the ratios ``found`` is at least ``bound``; the detail lists them all. A
    target whose cases were not all measured is not judged (one case of thirteen was once printed
    "met" for "every 2-D case"), but a measured ratio below ``bound`` is a miss all the same."""
    show = (lambda r: f"{100 * r:.0f}%") if unit == "%" else (lambda r: f"{r:.2f}x")  # noqa: E731
    measured = [(where, r) for where, r in found if r is not None]
    missing = [where for where, r in found if r is None]
    if not measured:
        return TargetCheck(target, None, _NOT_MEASURED)
    worst = min(measured, key=lambda t: t[1])
    summary = ", ".join(f"{where} {show(r)}" for where, r in measured)
    detail = f"lowest {show(worst[1])} ({worst[0]}); " + summary
    if missing and worst[1] >= bound:
        return TargetCheck(target, None, f"not judged: {', '.join(missing)} not measured in this run; {detail}")
    return TargetCheck(target, worst[1] >= bound, detail)


def _never_slower(report: BenchReport) -> TargetCheck:
    """torchstn at least as fast as every peer in every pass of every warp case (judged on a run
    of every case; the peers that ran)."""
    target = "never below 1.0x any peer on any case"
    every = []
    for case in report.cases:
        if case.family != "train":
            for peer in PEERS:
                every += [(f"{where} vs {peer}", r) for where, r in _ratios(report, [case.name], peer, PASSES)
                          if r is not None]
    if not every:
        return TargetCheck(target, None, _NOT_MEASURED)
    worst = min(every, key=lambda t: t[1])
    left_out = [case.name for case in CASES if report.case(case.name) is None]
    if left_out and worst[1] >= 1.0:
        return TargetCheck(target, None, f"not judged: {len(left_out)} of the {len(CASES)} cases not run; lowest "
                                         f"{worst[1]:.2f}x ({worst[0]})")
    return TargetCheck(target, worst[1] >= 1.0, f"lowest {worst[1]:.2f}x ({worst[0]})")


def _st_overhead(report: BenchReport) -> TargetCheck:
    """The ST-CNN training step at most 15% slower than the same CNN without the transformer."""
    target = "ST overhead on the ST-CNN training step < 15%"
    train = report.case("st-cnn")
    plain = None if train is None else train.passes.get(STEP, {}).get("cnn")
    if plain is None or plain.ratio is None:
        return TargetCheck(target, None, _NOT_MEASURED)
    overhead = 1 / plain.ratio - 1
    return TargetCheck(target, overhead < 0.15, f"{100 * overhead:+.1f}% over the bare CNN")


def format_report(report: BenchReport) -> str:
    """The benchmark's printed output: settings, the timing table, components, training step, targets."""
    meta = report.meta
    versions = ", ".join(f"{p} {meta.get(p) or 'not installed'}" for p in ("kornia", "opencv", "jax"))
    lines = [
        f"torchstn {meta['torchstn']} bench on {meta['device']}"
        + (f" ({meta['gpu']})" if "gpu" in meta else "")
        + f": torch {meta['torch']}, {versions}, {meta['threads']} threads, {meta['cpu_count']} cores"
        + (f" ({meta['cpu_capability']})" if meta.get("cpu_capability") else "")
        + f", {meta['machine']}",
        f"{meta['rounds']} interleaved rounds, ~{float(meta['min_time']) * 1e3:g} ms per measurement"
        + ("; QUICK (tiny sizes: checks the machinery, the numbers mean nothing)" if meta.get("quick") else ""),
        "time: median per call; ratio: median over rounds of (peer time / torchstn time) in the same round,"
        " > 1 means torchstn is faster",
        "forward runs under torch.no_grad() (entered once per timed pass, not per call); forward+backward takes"
        " gradients wrt the input and the parameters",
        *_foreign_lines(report),
        "",
    ]
    if meta.get("command"):
        lines.insert(0, f"$ {meta['command']}")
    warp_cases = [c for c in report.cases if c.family != "train"]
    if warp_cases:
        lines += _warp_table(warp_cases)
        notes = _grouped_notes(warp_cases)
        if notes:
            lines += ["", "notes:", *notes]
        if any(c.components for c in warp_cases):
            lines += [
                "",
                "forward taken apart, interleaved with a memcpy of the same traffic (input + grid + output bytes):",
                "sample:<backend> = bandwidth, % of memcpy, time; grid:<who> = time, ratio to sample:torch",
                *_components_table(warp_cases),
            ]
        if any(c.backends for c in warp_cases):
            lines += [
                "",
                "warp backends, interleaved: the fused kernel (θ in, no grid) against grid + F.grid_sample;",
                "ratio = warp:torch time / warp:fused time in the same round, > 1 means the fused kernel is faster",
                *_backends_table(warp_cases),
            ]
    for case in report.cases:
        if case.family == "train":
            lines += ["", *_training_lines(case)]
    lines += ["", "speed targets:"]
    if meta.get("quick"):  # (tiny cases under the full cases' names: a MISS there would say nothing)
        lines.append(f"  not judged in a quick run (tiny sizes, {meta.get('rounds')} rounds of "
                     f"~{1000 * float(meta.get('min_time') or 0):.0f} ms): run without --quick")
        return "\n".join(lines)
    for t in check_targets(report):
        status = {True: "met ", False: "MISS", None: "n/a "}[t.met]
        lines.append(f"  [{status}] {t.target}: {t.detail}")
    return "\n".join(lines)
