"""The benchmark machinery runs and reports; no timing is asserted (the machine is shared)."""

import json

import pytest
import torch

from torchstn.bench import (
    CASES,
    PEERS,
    BenchReport,
    Case,
    CaseResult,
    Measurement,
    Timings,
    check_targets,
    format_report,
    interleaved,
    run_benchmark,
    run_case,
    select_cases,
)
from torchstn.sampling import fused_status


def test_cases_cover_every_family_and_the_training_step() -> None:
    names = {c.name for c in CASES}
    assert {"affine-28", "affine-60to30", "affine-64", "affine-224", "projective-64", "tps-28", "tps-224",
            "affine3d-32", "st-cnn"} <= names
    assert len(names) == len(CASES)


def test_latency_and_large_volume_cases() -> None:
    shapes = {c.name: c.shape for c in CASES}
    assert shapes["affine-b1-28"] == (1, 1, 28, 28)
    assert shapes["affine-b1-224"] == (1, 3, 224, 224) and shapes["affine-b1-224-gray"] == (1, 1, 224, 224)
    assert shapes["affine-b4-8"] == (4, 1, 8, 8) and shapes["affine-b4-16"] == (4, 3, 16, 16)
    assert shapes["affine3d-64"] == (2, 1, 64, 64, 64)
    assert [c.name for c in select_cases(["affine3d-*"])] == ["affine3d-32", "affine3d-64"]


def test_select_cases_by_pattern_keeps_report_order() -> None:
    assert [c.name for c in select_cases(["tps-*", "affine-28"])] == ["affine-28", "tps-28", "tps-224"]
    assert select_cases(None) == list(CASES)
    with pytest.raises(ValueError, match="no benchmark case matches 'nope'.*affine-28"):
        select_cases(["nope"])


def test_quick_cases_are_tiny() -> None:
    for case in CASES:
        small = case.quick()
        assert small.shape[0] <= 4 and small.family == case.family
        if case.family != "train":
            assert all(8 <= s <= 56 for s in small.out_size)


def test_interleaved_measures_every_contender_every_round() -> None:
    calls = {"a": 0, "b": 0}

    def make(name: str):
        def fn() -> None:
            calls[name] += 1

        return fn

    t = interleaved({"a": make("a"), "b": make("b")}, rounds=3, min_time=1e-4, max_calls=5)
    assert [len(t.seconds[n]) for n in "ab"] == [3, 3]
    assert t.calls["a"] >= 1 and t.calls["a"] <= 5
    assert calls["a"] == 2 + 3 * t.calls["a"]  # warm-up and calibration, then the rounds
    with pytest.raises(ValueError, match="rounds"):
        interleaved({"a": make("a")}, rounds=0)
    with pytest.raises(TypeError, match="rounds must be an int"):
        interleaved({"a": make("a")}, rounds=True)
    with pytest.raises(ValueError, match="max_calls must be >= 1"):
        interleaved({"a": make("a")}, rounds=1, max_calls=0)


def test_interleaved_varies_who_comes_before_whom() -> None:
    """What a contender leaves behind can slow the one timed next (JAX's warp slowed the next
    measurement by 5-10%): over the bench's 15 rounds of five contenders, none has the same
    predecessor in every round, each goes first at least once, and the order repeats from run
    to run (seeded)."""

    def orders() -> list[list[str]]:
        log: list[str] = []
        fns = {name: (lambda name=name: log.append(name)) for name in "abcde"}
        interleaved(fns, rounds=15, min_time=0.0, max_calls=1)
        timed = log[2 * len(fns):]  # (after each one's warm-up and calibration)
        return [timed[r * 5:(r + 1) * 5] for r in range(15)]

    rounds = orders()
    assert all(sorted(order) == list("abcde") for order in rounds)
    for name in "abcde":
        before = {order[order.index(name) - 1] if order.index(name) else None for order in rounds}
        assert len(before) > 2, (name, before)
    assert {order[0] for order in rounds} == set("abcde")
    assert orders() == rounds


def test_ratio_is_the_median_of_per_round_ratios() -> None:
    # round 2 is 10x slower for both (a noisy neighbour): per-round ratios ignore it
    t = Timings(seconds={"stn": [1.0, 10.0, 1.0], "peer": [2.0, 20.0, 3.0]}, calls={"stn": 1, "peer": 1})
    assert t.ratio("stn", "peer") == 2.0
    assert t.median("peer") == 3.0


def test_quick_run_reports_every_part() -> None:
    report = run_benchmark(["affine-28", "tps-28", "st-cnn"], quick=True)
    affine = report.case("affine-28")
    assert set(affine.passes) == {"forward", "forward+backward"}
    assert {"torchstn", "torch"} <= set(affine.passes["forward"])
    for m in affine.passes["forward+backward"].values():
        assert m.seconds > 0
    assert affine.passes["forward"]["torch"].ratio > 0
    assert affine.passes["forward"]["torchstn"].ratio is None
    assert affine.components["memcpy"].bandwidth > 0
    assert affine.components["sample:torch"].bandwidth > 0
    assert "grid:torchstn" in affine.components and "grid:torch" in affine.components
    if fused_status().available:  # the fused kernel against the grid path, both passes
        assert set(affine.backends) == {"forward", "forward+backward"}
        assert affine.backends["forward+backward"]["warp:torch"].ratio > 0
        assert not report.case("tps-28").backends  # the kernel does not cover TPS
    assert any("affine_grid cannot represent" in n for n in report.case("tps-28").notes)
    step = report.case("st-cnn").passes["step"]
    assert set(step) == {"torchstn", "cnn", "cnn+dx"}

    text = format_report(report)
    for expected in ("affine 4x1x8x8 (quick stand-in for 256x1x28x28)", "forward+backward", "memcpy", "ST overhead",
                     "speed targets:", "QUICK"):
        assert expected in text
    # (two cases shrink to one shape: each label names the case it shrinks)
    assert {c.quick().label for c in select_cases(["affine-28", "affine-b4-8"])} == {
        "affine 4x1x8x8 (quick stand-in for 256x1x28x28)", "affine 4x1x8x8 (quick stand-in for 4x1x8x8)"}
    # tiny cases under the full cases' names: the targets are not judged on them
    assert "not judged in a quick run" in text and "[MISS]" not in text and "[met ]" not in text
    assert f"cores ({torch.backends.cpu.get_cpu_capability()})," in text.splitlines()[0]  # the ISA the ratios depend on
    # check_targets (what --json writes) gives no verdict on a quick run either
    assert all(c.met is None and c.detail.startswith("not judged in a quick run") for c in check_targets(report))
    report.meta["quick"] = False
    checks = {c.target.split(" ")[0]: c for c in check_targets(report)}
    assert checks["ST"].met is not None
    assert checks["projective"].met is None  # not run
    json.dumps(report.to_dict())




def test_kornia_absent_is_a_note(monkeypatch) -> None:
    from torchstn.bench import _peers, build_workload

    monkeypatch.setattr(_peers, "kornia_available", lambda: False)
    work = build_workload(Case("t", "affine", (1, 1, 8, 8)), peers=("torch", "kornia"))
    assert set(work.contenders) == {"torchstn", "torch"}
    assert any("kornia: not installed" in n for n in work.notes)


def test_a_volume_case_without_the_fused_3d_kernel_says_what_it_timed(monkeypatch) -> None:
    from torchstn.bench import build_workload
    from torchstn.bench import _cases
    from torchstn.sampling import FusedStatus

    case = Case("v", "affine3d", (1, 1, 4, 4, 4))
    assert not any("3-D kernel" in n for n in build_workload(case, peers=("torch",)).notes)
    monkeypatch.setattr(_cases, "fused_status", lambda ndim=2: FusedStatus(ndim != 3, "no compiler" if ndim == 3 else None))
    (note,) = [n for n in build_workload(case, peers=("torch",)).notes if "3-D kernel" in n]
    assert "could not be built (no compiler)" in note and "grid + F.grid_sample" in note


def test_a_channels_last_case_warps_a_channels_last_image() -> None:
    from torchstn.bench import build_workload

    (case,) = [c for c in CASES if c.name == "affine-b1-224-cl"]
    assert case.channels_last and case.shape == (1, 3, 224, 224) and case.label.endswith(" CL")
    work = build_workload(Case("t", "affine", (1, 3, 9, 11), channels_last=True), peers=("torch",))
    x = work.contenders["torchstn"].leaves[0]
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    torch.testing.assert_close(work.contenders["torchstn"].forward(), work.contenders["torch"].forward())


def test_component_ratios_are_to_torchs_sampler_or_not_given() -> None:
    case = Case("t", "affine", (1, 1, 8, 8))
    # (a str device, as torch takes everywhere)
    kw = {"device": "cpu", "rounds": 2, "min_time": 1e-4, "peers": ()}
    with_torch = run_case(case, backends=("torch", "reference"), **kw).components
    assert with_torch["grid:torchstn"].ratio > 0 and with_torch["sample:reference"].ratio > 0
    # without sample:torch the ratios were to memcpy (the first part timed), printed as "ratio to sample:torch"
    result = run_case(case, backends="reference", **kw)
    assert {"memcpy", "sample:reference", "grid:torchstn"} <= set(result.components)
    assert all(m.ratio is None for m in result.components.values())
    assert any("no ratios, which are to sample:torch" in n for n in result.notes)


def test_the_api_reads_a_single_name_and_refuses_unknown_ones() -> None:
    assert select_cases("affine-28") == select_cases(["affine-28"])  # one name, not its characters
    with pytest.raises(ValueError, match=r"peers must be one of \['torch', 'kornia', 'opencv', 'jax'\], got 'korina'"):
        run_benchmark("affine-28", peers=("torch", "korina"))
    with pytest.raises(ValueError, match=r"backends must be one of \[.*'fused'.*\], got 'nope'"):
        run_benchmark("affine-28", backends=["nope"])
    with pytest.raises(TypeError, match="cases must be a str or a sequence of str, got 28"):
        run_benchmark(28)
    with pytest.raises(TypeError, match="case must be a torchstn.bench.Case"):
        run_case("affine-28", device="cpu", rounds=1, min_time=1e-4)
    with pytest.raises(ValueError, match="peers must be one of"):
        run_case(CASES[0], device="cpu", rounds=1, min_time=1e-4, peers=["nope"])


def test_a_peer_left_out_is_noted_with_what_leaves_it_out() -> None:
    from torchstn.bench import PEER_FLAGS, build_workload

    notes = build_workload(Case("t", "affine", (1, 1, 8, 8)), peers=()).notes
    for peer in PEERS:
        (note,) = [n for n in notes if n.startswith(f"{peer}: not timed in this run")]
        assert "left out of peers=()" in note
        assert (PEER_FLAGS[peer] in note) if peer in PEER_FLAGS else ("--no-" not in note)  # no flag that is not there


def _measured(label: str, name: str) -> CaseResult:
    """A case result with every table filled (made up: the layout is what is tested)."""
    m = Measurement(1e-5, ratio=2.0, bandwidth=1e9)
    passes = {p: {"torchstn": Measurement(1e-5), "torch": m} for p in ("forward", "forward+backward")}
    components = {"memcpy": m, "sample:torch": m, "sample:fused": m, "grid:torchstn": m, "grid:torch": m}
    backends = {p: {"warp:fused": Measurement(1e-5), "warp:torch": m} for p in ("forward", "forward+backward")}
    return CaseResult(name, label, "affine", passes, components, backends)


def test_report_columns_fit_their_longest_cell() -> None:
    long = select_cases("affine-60to30")[0].quick().label  # a quick label is longer than the full ones'
    assert len(long) > 34
    meta = {"torchstn": "0", "torch": "0", "device": "cpu", "threads": 1, "cpu_count": 1, "machine": "m",
            "rounds": 2, "min_time": 0.001, "quick": True}
    lines = format_report(BenchReport(meta, [_measured("affine 8x8", "a"), _measured(long, "b")])).splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("case ")]
    assert len(headers) == 3  # the warp table, the components, the warp backends
    for i in headers:
        header = lines[i]
        starts = [j for j in range(2, len(header)) if header[j] != " " and header[j - 2:j] == "  "]  # the columns
        rows = [line for line in lines[i + 1:i + 5] if line.startswith(("affine", " "))]
        assert any(row.startswith(long) for row in rows)
        for row in rows:  # every cell ends before the next column starts; the label is the first cell alone
            assert all(len(row) <= s or row[s - 2:s] == "  " for s in starts), (header, row)
            assert row[:starts[0]].strip() in ("", "affine 8x8", long)



def test_a_target_over_a_set_of_cases_is_judged_only_when_every_case_was_measured() -> None:
    """"On every 2-D case" was printed met on one case of thirteen (``--cases affine-b4-8``, or
    a peer rejected on the others): a target whose cases were not all measured is not judged,
    unless one measured ratio already misses it."""
    def result(name: str, opencv: float | None) -> CaseResult:
        forward = {"torchstn": Measurement(1e-3)}
        if opencv is not None:
            forward["opencv"] = Measurement(1e-3, ratio=opencv)
        return CaseResult(name=name, label=name, family="affine", passes={"forward": forward})

    target = "affine forward >= 1.2x OpenCV warpAffine (float32) on every 2-D case"
    meta = {"quick": False}
    one = {c.target: c for c in check_targets(BenchReport(meta, [result("affine-b4-8", 2.0)]))}[target]
    assert one.met is None and "not judged: affine-28 forward" in one.detail
    assert "affine-b4-8 forward 2.00x" in one.detail
    rejected = BenchReport(meta, [result("affine-b4-8", 2.0), result("affine-b4-16", None)])
    assert {c.target: c for c in check_targets(rejected)}[target].met is None
    missed = {c.target: c for c in check_targets(BenchReport(meta, [result("affine-b4-8", 0.9)]))}[target]
    assert missed.met is False
    two_d = [result(c.name, 1.5) for c in CASES if c.family in ("affine", "translation", "attention", "similarity")]
    whole = {c.target: c for c in check_targets(BenchReport(meta, two_d))}
    assert whole[target].met is True
    assert whole["never below 1.0x any peer on any case"].met is None  # (the other families were not run)
