"""``torchstn reproduce``: cells, the committed record, skipping and resuming, the report."""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._helpers import MNIST_DIR as MNIST
from tests._helpers import needs_mnist
from torchstn.reproduce import BUDGETS, CellLock, Results, get_experiment, list_experiments, plan, run_experiment, summarize


def test_every_experiment_plans_every_budget_it_defines():
    for name in list_experiments():
        experiment = get_experiment(name)
        assert {"quick", "standard", "paper"} <= set(experiment.recipes) <= set(BUDGETS), name
        for budget in experiment.recipes:
            cells = plan(experiment, budget)
            assert cells, (name, budget)
            assert len({c.key for c in cells}) == len(cells)
            for cell in cells:  # every recipe is a valid engine config naming a registry model and dataset
                from torchstn import list_models
                from torchstn.data import list_datasets
                from torchstn.engine import TrainConfig

                TrainConfig(**cell.config)
                assert cell.config["model"] in list_models()
                # (the UCR sets are listed where aeon, which ships them, is installed: not by the README's install)
                data = cell.config["data"]
                assert data in list_datasets() or (data.startswith("ucr:") and importlib.util.find_spec("aeon") is None)


def test_a_budget_an_experiment_does_not_define_names_the_ones_it_does():
    with pytest.raises(ValueError, match="tutorial has no budget 'long'; its budgets are quick, standard, paper"):
        plan(get_experiment("tutorial"), "long")


def test_long_budget_is_ten_times_standard_with_fresh_distortions():
    experiment = get_experiment("stn-table1")
    for column in ("rts", "r"):
        standard = plan(experiment, "standard", only=["st-cnn-aff"], datasets=[column])[0].config
        long = plan(experiment, "long", only=["st-cnn-aff"], datasets=[column])[0].config
        assert long["steps"] == 10 * standard["steps"]
        assert long["online"] and not standard.get("online", False)


def test_table1_holds_the_papers_numbers_and_runs_rts_first():
    experiment = get_experiment("stn-table1")
    assert experiment.paper[("st-cnn-aff", "rts")] == 0.5
    assert experiment.paper[("fcn", "rts")] == 5.2
    assert len(experiment.paper) == 32
    cells = plan(experiment, "standard")
    assert [c.column.key for c in cells[:8]] == ["rts"] * 8
    assert all(c.config["model_args"] == {"pool": 2} for c in cells if c.column.key == "rts")
    paper = plan(experiment, "paper")
    assert {c.seed for c in paper} == {0, 1, 2}
    assert all(c.config["steps"] == 150_000 and c.config["lr_decay_every"] == 50_000 for c in paper)


def test_plan_filters_and_rejects_unknown_names():
    experiment = get_experiment("stn-table1")
    cells = plan(experiment, "quick", only=["cnn"], datasets=["rts", "e"], seeds=2, limit=64)
    assert [(c.row.key, c.column.key, c.seed) for c in cells] == [
        ("cnn", "rts", 0), ("cnn", "rts", 1), ("cnn", "e", 0), ("cnn", "e", 1)]
    assert all(c.config["train_limit"] == 64 and c.config["test_limit"] == 64 for c in cells)
    assert cells[0].digest != plan(experiment, "quick", only=["cnn"], datasets=["rts"])[0].digest
    with pytest.raises(ValueError, match="no model 'nope'"):
        plan(experiment, "quick", only=["nope"])
    with pytest.raises(ValueError, match="no dataset 'q'"):
        plan(experiment, "quick", datasets=["q"])
    with pytest.raises(ValueError, match="budget"):
        plan(experiment, "huge")
    # one string is one name (only="cnn" was the models 'c', 'n', 'n')
    assert plan(experiment, "quick", only="cnn", datasets="rts") == plan(experiment, "quick", only=["cnn"],
                                                                         datasets=["rts"])
    with pytest.raises(TypeError, match="only must be a str or a sequence of str"):
        plan(experiment, "quick", only=0)
    with pytest.raises(ValueError, match="only must name at least one entry"):  # (it chose every cell)
        plan(experiment, "quick", only=[])
    with pytest.raises(TypeError, match="seeds must be an int, got bool"):
        plan(experiment, "quick", seeds=True)
    with pytest.raises(ValueError, match="unknown experiment"):
        get_experiment("stn-table9")


def test_summarize():
    assert summarize([0.4, 0.6]) == pytest.approx((0.5, 0.1414213), rel=1e-5)
    assert summarize([0.7]) == (0.7, None)



@needs_mnist
def test_an_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    from torchstn.engine import TrainConfig, train

    cell = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["rts"], limit=64)[0]
    run_dir = tmp_path / "runs" / "stn-table1" / "quick" / cell.run_name
    config = TrainConfig(**cell.config, data_dir=str(MNIST))
    train(config, run_dir, progress=False, stop_after=1)  # as if killed after the first epoch
    straight = train(config, tmp_path / "straight", progress=False)

    lines: list[str] = []
    results = Results(tmp_path / "results", "stn-table1")
    (record,) = run_experiment([cell], results, tmp_path / "runs", data_dir=str(MNIST), progress=False,
                               log=lines.append)
    assert any("resuming" in line for line in lines)
    assert record["steps"] == 16
    assert record["error"] == pytest.approx(100 * straight.final["test_error"])
    assert Results(tmp_path / "results", "stn-table1").finished(cell) is not None


@needs_mnist
def test_jobs_train_cells_in_one_thread_workers_with_the_same_numbers(tmp_path):
    cells = plan(get_experiment("stn-table1"), "quick", only=["fcn", "cnn"], datasets=["rts"], limit=64)
    lines: list[str] = []
    serial = run_experiment(cells, Results(tmp_path / "a", "stn-table1"), tmp_path / "runs-a", data_dir=str(MNIST),
                            progress=False, log=lines.append)
    parallel = run_experiment(cells, Results(tmp_path / "b", "stn-table1"), tmp_path / "runs-b",
                              data_dir=str(MNIST), jobs=2, log=lines.append, poll_seconds=0.5)
    assert any("in 2 one-thread worker processes" in line for line in lines)
    assert [r["error"] for r in parallel] == pytest.approx([r["error"] for r in serial])
    assert all(r["machine"]["threads"] == 1 for r in parallel)
    recorded = Results(tmp_path / "b", "stn-table1")
    assert all(recorded.finished(c) is not None for c in cells)  # both workers' cells merged into one record
    assert all(c.run_dir(tmp_path / "runs-b").log_path.read_text().count("epoch") >= 1 for c in cells)
    where = [line for line in lines if line.startswith("running: ")]  # a line when a cell moved, not every poll
    assert all(a != b for a, b in zip(where, where[1:]))




@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_an_interrupt_records_the_finished_cells_and_ends_the_running_workers_at_once(tmp_path):
    """Ctrl-C (or SIGINT to the parent alone) under --jobs: the cells that finished are recorded
    and a worker still training is ended at once (leaving the pool waited for it to finish its
    cell, a whole cell at `long`, and then the finished cells were not recorded)."""
    from tests.reproduce._work import quick_or_stuck
    from torchstn.reproduce._runner import _run_in_workers

    cells = plan(get_experiment("stn-table1"), "quick", only=["fcn", "cnn"], datasets=["rts"])
    runs, recorded = tmp_path / "runs", {}

    def claim(cell):
        lock = CellLock(cell.run_dir(runs))
        lock.acquire()
        return lock

    def interrupt_once_both_started(line):
        if line.startswith("running: ") and all((runs / f"{c.row.key}.pid").exists() for c in cells):
            time.sleep(0.5)  # (the FCN's result reaches the parent)
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _run_in_workers(cells, runs, {}, 2, claim, lambda cell, record: recorded.update({cell.row.key: record}),
                        interrupt_once_both_started, 0.2, work=quick_or_stuck)
    assert list(recorded) == ["fcn"]
    stuck = int((runs / "cnn.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(stuck) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(stuck) and time.monotonic() - started < 60
    assert all(CellLock(c.run_dir(runs)).holder() is None for c in cells)  # every lock let go


_ORPHAN_PARENT = """
import concurrent.futures as cf, multiprocessing, os, time
from torchstn.reproduce._runner import _worker_init
if __name__ == "__main__":
    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_worker_init, initargs=(os.getpid(), 0.1))
    print(pool.submit(os.getpid).result(), flush=True)
    pool.submit(time.sleep, 120)
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has ended


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_a_worker_ends_when_its_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(_ORPHAN_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        assert _alive(worker)
        parent.kill()  # no cleanup runs in the parent: only the worker's own watch can end it
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)
    finally:
        parent.kill()


def test_two_processes_recording_cells_keep_each_others(tmp_path):
    cells = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["rts", "r"])
    first, second = Results(tmp_path, "stn-table1"), Results(tmp_path, "stn-table1")
    first.add(cells[0], {"error": 1.0, "digest": cells[0].digest})
    second.add(cells[1], {"error": 2.0, "digest": cells[1].digest})
    again = Results(tmp_path, "stn-table1")
    assert again.finished(cells[0])["error"] == 1.0 and again.finished(cells[1])["error"] == 2.0


_RECORDER = """
import sys
from types import SimpleNamespace
from torchstn.reproduce import Results
out, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    Results(out, "stn-table1").add(SimpleNamespace(key=f"quick/cnn/r/{tag}{i:03d}"), {"error": 1.0, "digest": "x"})
"""


@pytest.mark.skipif(sys.platform == "win32", reason="records are locked with fcntl.flock, which Windows lacks")
def test_two_processes_recording_at_once_lose_no_cell(tmp_path):
    """Two commands adding cells to one record at the same moment: each add reads, merges and
    writes the file under a lock (without it, 409-505 of 600 cells survived, and some adds failed
    on each other's temporary file or read a half-written record)."""
    script = tmp_path / "record.py"
    script.write_text(_RECORDER)
    writers = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), tag, "150"]) for tag in "ab"]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    assert len(Results(tmp_path / "out", "stn-table1").cells) == 300
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["stn-table1.json"]  # no temporary file left


@pytest.mark.parametrize("text, problem", [
    ("[1, 2]", "not an object with 'experiment' and 'cells'"),
    ('{"experiment": "stn-table1", "cells": []}', "not an object with 'experiment' and 'cells'"),
    ('{"experiment": "stn-3d", "cells": {}}', "the record of 'stn-3d'"),
    ('{"experiment": "stn-table1", "cells": {"a": 5}}', "cell 'a' has no number 'error'"),
    ('{"experiment": "stn-table1", "cells": {"a": {"error": "1.2"}}}', "cell 'a' has no number 'error'"),
])
def test_a_file_that_is_not_this_experiments_record_is_named(tmp_path, text, problem):
    """JSON that parses but is no record of the experiment (another experiment's among them,
    which was merged into this one) was a traceback from deep in the report."""
    (tmp_path / "stn-table1.json").write_text(text)
    with pytest.raises(ValueError, match=f"stn-table1.json is not a record of stn-table1: {re.escape(problem)}"):
        Results(tmp_path, "stn-table1")


_LOCK_HOLDER = """
import sys, time
from pathlib import Path
from torchstn.engine import RunDir
from torchstn.reproduce import CellLock
lock = CellLock(RunDir(Path(sys.argv[1])))
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _hold_lock(tmp_path, run_dir):
    """A process that takes the cell's lock and keeps it (its pid is the lock's holder)."""
    script = tmp_path / "hold.py"
    script.write_text(_LOCK_HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.skipif(sys.platform == "win32", reason="cells are locked with fcntl.flock, which Windows lacks")
def test_a_cell_another_process_is_training_is_skipped_and_the_lock_dies_with_it(tmp_path, capsys):
    from torchstn.cli import main

    cells = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["rts", "r"], limit=64)
    runs = tmp_path / "runs"
    holder = _hold_lock(tmp_path, cells[0].run_dir(runs).path)
    try:
        assert CellLock(cells[0].run_dir(runs)).holder() == holder.pid
        lines: list[str] = []
        records = run_experiment(cells[:1], Results(tmp_path / "results", "stn-table1"), runs, progress=False,
                                 log=lines.append)
        assert records == [None]
        assert any(f"skipped: another process (pid {holder.pid}) is training it" in line for line in lines)
        assert not cells[0].run_dir(runs).holds_run()  # nothing trained into its run directory
        main(["reproduce", "stn-table1", "--budget", "quick", "--only", "cnn", "--datasets", "rts", "--limit", "64",
              "--runs", str(runs), "--out", str(tmp_path / "results"), "--list"])
        assert f"being trained by another process, pid {holder.pid}" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait()
    lock = CellLock(cells[0].run_dir(runs))
    assert lock.holder() is None  # a killed holder leaves no stale lock
    with lock:
        assert CellLock(cells[0].run_dir(runs)).holder() == os.getpid()


@needs_mnist
@pytest.mark.skipif(sys.platform == "win32", reason="cells are locked with fcntl.flock, which Windows lacks")
def test_jobs_skip_a_held_cell_and_train_the_others_under_their_locks(tmp_path):
    cells = plan(get_experiment("stn-table1"), "quick", only=["fcn"], datasets=["rts", "r"], limit=64)
    runs = tmp_path / "runs"
    holder = _hold_lock(tmp_path, cells[0].run_dir(runs).path)
    try:
        lines: list[str] = []
        records = run_experiment(cells, Results(tmp_path / "results", "stn-table1"), runs, data_dir=str(MNIST),
                                 jobs=2, log=lines.append, poll_seconds=0.5)
    finally:
        holder.kill()
        holder.wait()
    assert records[0] is None and records[1]["steps"] > 0
    assert any(f"skipped: another process (pid {holder.pid}) is training it" in line for line in lines)
    assert not cells[0].run_dir(runs).holds_run() and cells[1].run_dir(runs).holds_run()
    assert CellLock(cells[1].run_dir(runs)).holder() is None  # let go once the cell was recorded


def test_a_cell_another_process_recorded_meanwhile_is_not_trained_again(tmp_path):
    cell = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["rts"], limit=64)[0]
    ours = Results(tmp_path / "results", "stn-table1")  # read before the other process recorded the cell
    Results(tmp_path / "results", "stn-table1").add(cell, _record(cell, 3.25))
    lines: list[str] = []
    (record,) = run_experiment([cell], ours, tmp_path / "runs", progress=False, log=lines.append)
    assert record["error"] == 3.25
    assert any("finished by another process meanwhile, 3.25% error (skipped)" in line for line in lines)
    assert not cell.run_dir(tmp_path / "runs").holds_run()


def test_an_interrupt_before_a_cells_analysis_has_it_done_by_the_next_run_not_the_training(tmp_path, monkeypatch):
    """Ctrl-C right after a cell was recorded, before ``after_cell`` (its analyses, figure, report):
    the next run said "finished earlier (skipped)" and never made them; it makes them, training nothing."""
    from torchstn.reproduce import _runner

    cells = plan(get_experiment("stn-table1"), "quick", only=["cnn", "st-cnn-aff"], datasets=["rts"], limit=64)
    trained: list[str] = []

    def run_cell(cell, runs, **options):
        trained.append(cell.key)
        return {**_record(cell, 4.0), "run": str(cell.run_dir(runs).path)}

    monkeypatch.setattr(_runner, "run_cell", run_cell)
    analysed: list[str] = []

    def interrupted(cell, record):
        raise KeyboardInterrupt

    def after_cell(cell, record):
        analysed.append(cell.key)
        record["by_shift"] = ["measured"]
        results.add(cell, record)

    results = Results(tmp_path / "results", "stn-table1")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cells, results, tmp_path / "runs", progress=False, log=lambda line: None, after_cell=interrupted)
    assert trained == [cells[0].key]
    results = Results(tmp_path / "results", "stn-table1")
    lines: list[str] = []
    records = run_experiment(cells, results, tmp_path / "runs", progress=False, log=lines.append,
                             after_cell=after_cell)
    assert trained == [cells[0].key, cells[1].key]  # the interrupted cell was not trained again
    assert analysed == [cells[0].key, cells[1].key]
    assert any("completing its analyses" in line for line in lines)
    assert all(r["by_shift"] == ["measured"] for r in records)
    again = Results(tmp_path / "results", "stn-table1")
    assert all(again.finished(c)["by_shift"] == ["measured"] for c in cells)
    analysed.clear()
    run_experiment(cells, again, tmp_path / "runs", progress=False, log=lambda line: None, after_cell=after_cell)
    assert analysed == [] and trained == [cells[0].key, cells[1].key]  # done once


def _record(cell, error):
    return {"digest": cell.digest, "budget": cell.budget, "row": cell.row.key, "column": cell.column.key,
            "seed": cell.seed, "error": error, "best_error": error, "train_error": error, "epochs": 1, "steps": 10,
            "wall_seconds": 60.0, "images_per_s": 100.0, "config": cell.config}


def test_a_cell_trained_with_limit_is_marked_in_the_table(tmp_path):
    """A --limit cell counts as the budget's (its recipe otherwise), but its number was shown
    as the budget's without a word; it is marked, and the mark explained."""
    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    full = plan(experiment, "standard", only=["cnn"], datasets=["rts"])[0]
    results.add(full, _record(full, 5.26))
    assert "†" not in render_report(experiment, results, tmp_path, "standard")
    limited = plan(experiment, "standard", only=["cnn"], datasets=["rts"], limit=3000)[0]
    results.add(limited, _record(limited, 23.13))
    report = render_report(experiment, results, tmp_path, "standard")
    assert "**23.13** †" in report and "† trained or tested on fewer images than the budget's recipe" in report


def test_a_record_from_an_earlier_recipe_is_listed_apart_not_in_the_table(tmp_path):
    from torchstn.reproduce import recipe_changes, render_report

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    aff, cnn = plan(experiment, "standard", only=["cnn", "st-cnn-aff"], datasets=["rts"])[::-1]
    old = _record(aff, 3.46)
    old["config"] = {**aff.config, "batch_size": 128, "lr": 1e-3}
    results.add(aff, old)
    results.add(cnn, _record(cnn, 5.26))
    assert recipe_changes(experiment, old) == {"batch_size": (128, 64), "lr": (1e-3, 2e-3)}
    assert recipe_changes(experiment, _record(cnn, 5.26)) == {}
    limited = plan(experiment, "standard", only=["cnn"], datasets=["rts"], limit=64)[0]
    assert recipe_changes(experiment, _record(limited, 50.0)) == {}  # a test subset is today's recipe
    from torchstn.reproduce._report import figure_path

    figure = figure_path(tmp_path, "stn-table1", "standard", "st-cnn-aff", "rts")
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.write_bytes(b"")  # the earlier run's figure: not shown beside today's table
    text = render_report(experiment, results, tmp_path, "standard")
    table = text[: text.index("### Runs")]
    assert "| ST-CNN Aff | — | 0.7 | — | 0.5 |" in table and "3.46" not in table and "**5.26**" in table
    assert figure.name not in text
    assert ("- ST-CNN Aff on RTS, seed 0: 3.46% (undated); since changed: `batch_size` 128 → 64, `lr` 0.001 → 0.002"
            in text)


def test_report_orders_budgets_fixed_and_compares_a_longer_run_with_standard(tmp_path):
    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    standard = plan(experiment, "standard", only=["st-cnn-aff"], datasets=["rts"])[0]
    long = plan(experiment, "long", only=["st-cnn-aff"], datasets=["rts"])[0]
    results.add(standard, _record(standard, 3.46))
    results.add(long, _record(long, 0.86))
    texts = [render_report(experiment, results, tmp_path, budget) for budget in ("long", "standard")]
    assert texts[0] == texts[1]  # the same file whichever budget ran last
    text = texts[0]
    assert text.index("budget `standard`") < text.index("budget `long`")
    out = tmp_path.as_posix()
    assert f"--budget standard --out {out}\ntorchstn reproduce stn-table1 --budget long --out {out}" in text
    assert "The same cells at budget `standard`, then at `long`: ST-CNN Aff on RTS 3.46% → 0.86%." in text


def test_an_experiment_without_published_numbers_has_no_column_of_dashes(tmp_path):
    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-3d")
    assert all(v is None for v in experiment.paper.values())
    results = Results(tmp_path, "stn-3d")
    cnn = next(c for c in plan(experiment, "standard") if c.row.key == "cnn-3d" and c.seed == 0)
    results.add(cnn, _record(cnn, 21.3))
    text = render_report(experiment, results, tmp_path, "standard")
    assert "no paper number is entered for these cells" in text and "beside each, the paper's number" not in text
    assert "| model | MNIST 3-D |\n|---|---:|\n| CNN on the projection | **21.30** |" in text
    assert "| 3-D ST-CNN (Affine3D, then projection) | — |" in text
    # with a published number the paper's column stays (stn-table1 above)
    table1 = render_report(get_experiment("stn-table1"), Results(tmp_path, "stn-table1"), tmp_path, "standard")
    assert "RTS ours | RTS paper" in table1


def test_a_difference_within_the_seeds_spread_is_called_so(tmp_path):
    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-3d")
    cells = {(c.row.key, c.seed): c for c in plan(experiment, "standard")}

    def report(errors):
        results = Results(tmp_path / str(errors), "stn-3d")
        for (row, seed), error in errors.items():
            results.add(cells[row, seed], _record(cells[row, seed], error))
        return render_report(experiment, results, tmp_path, "standard")

    close = report({("cnn-3d", 0): 20.0, ("cnn-3d", 1): 30.0, ("st-cnn-3d-aff", 0): 18.0, ("st-cnn-3d-aff", 1): 26.0})
    assert ("22.00% beats CNN on the projection (25.00%). The difference is within the spread between seeds "
            "(standard deviation up to 7.07): not a clear difference." in close)
    clear = report({("cnn-3d", 0): 21.0, ("cnn-3d", 1): 22.0, ("st-cnn-3d-aff", 0): 9.0, ("st-cnn-3d-aff", 1): 9.5})
    assert "9.25% beats CNN on the projection (21.50%)." in clear and "not a clear difference" not in clear
    one_seed = report({("cnn-3d", 0): 20.0, ("st-cnn-3d-aff", 0): 19.9})
    assert "within the spread between seeds" not in one_seed  # no spread to compare with (the test set's noise: below)


def test_a_one_seed_difference_within_the_test_sets_noise_is_called_so(tmp_path):
    """A quick report said "ST-CNN Aff on RTS: 91.00% beats CNN (91.40%)": two of 500 test images, one
    seed each. Where the records give their test set's size, twice its sampling noise is the bar."""
    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-3d")
    cells = {(c.row.key, c.seed): c for c in plan(experiment, "standard")}

    def report(errors, limit):
        results = Results(tmp_path / f"{errors}-{limit}", "stn-3d")
        for (row, seed), error in errors.items():
            cell = cells[row, seed]
            results.add(cell, {**_record(cell, error), "config": {**cell.config, "test_limit": limit}})
        return render_report(experiment, results, tmp_path, "standard")

    noisy = report({("cnn-3d", 0): 91.4, ("st-cnn-3d-aff", 0): 91.0}, 500)
    assert ("91.00% beats CNN on the projection (91.40%). The difference is within twice the sampling noise "
            "of 500 test images (3.58 points): not a clear difference." in noisy)
    clear = report({("cnn-3d", 0): 20.0, ("st-cnn-3d-aff", 0): 9.0}, 500)
    assert "9.00% beats CNN on the projection (20.00%)." in clear and "not a clear difference" not in clear


def test_a_cell_0_3_points_above_the_paper_as_printed_is_not_a_miss(tmp_path):
    """80 wrong of 10,000 in float32 is 0.800000038%: printed "+0.30 points" above the paper's 0.5 but
    listed among the cells "more than 0.3 points above"; the comparison is made at the precision printed."""
    import torch

    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-table1")
    cell = plan(experiment, "standard", only=["st-cnn-aff"], datasets=["rts"])[0]
    assert cell.paper == 0.5
    wrong = torch.zeros(10_000)
    wrong[:80] = 1

    def report(error):
        results = Results(tmp_path / str(error), "stn-table1")
        results.add(cell, _record(cell, error))
        return render_report(experiment, results, tmp_path, "standard")

    edge = report(100.0 * float(wrong.float().mean()))
    assert "ST-CNN Aff on RTS: +0.30 points" in edge and "Cells more than 0.3 points above" not in edge
    above = report(0.81)
    assert "+0.31 points" in above and "- ST-CNN Aff on RTS: 0.81% (paper 0.5%)" in above


def test_a_worker_s_log_holds_each_line_as_it_is_printed(tmp_path, monkeypatch):
    """A worker's log was block-buffered: empty while its cell trained, and empty for good when
    the parent was killed (the worker then ends with os._exit, which flushes nothing)."""
    from torchstn.reproduce import _runner

    cell = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["r"])[0]
    log_path = cell.run_dir(tmp_path).log_path
    seen = []

    def run_cell(cell, runs, progress, log, **options):
        log("epoch 1: test error 9.00%")
        seen.append(log_path.read_text())
        return {"error": 9.0}

    monkeypatch.setattr(_runner, "run_cell", run_cell)
    _runner._run_in_worker(cell, tmp_path, {})
    assert seen == ["epoch 1: test error 9.00%\n"]


def test_a_report_holds_the_cells_another_command_recorded_meanwhile(tmp_path):
    """Two commands adding to one record (two --only runs side by side): the one that wrote its
    report last rendered it from its own copy, and the other's cell was missing from the
    report while the record held it."""
    from torchstn.reproduce import write_report

    import shlex

    experiment = get_experiment("stn-table1")
    cells = {c.key: c for c in plan(experiment, "quick", only=["cnn", "fcn"], datasets=["r"])}
    out = tmp_path / "out sp"  # (and the command to rerun quotes it: "--out out sp" ran another command)
    first, second = Results(out, experiment.name), Results(out, experiment.name)
    for results, key, error in ((first, "quick/cnn/r/s0", 12.34), (second, "quick/fcn/r/s0", 56.78)):
        cell = cells[key]
        results.add(cell, {"digest": cell.digest, "budget": "quick", "row": cell.row.key, "column": "r", "seed": 0,
                           "error": error, "best_error": error, "train_error": error, "epochs": 1, "steps": 16,
                           "wall_seconds": 1.0, "images_per_s": 1.0, "config": cell.config})
    write_report(experiment, second, out, "quick")
    report = write_report(experiment, first, out, "quick").read_text()
    assert "12.34" in report and "56.78" in report
    assert f"--out {shlex.quote(str(out))}" in report


def test_the_wall_time_of_a_resumed_cell_counts_every_session():
    """Sessions were told apart by elapsed going down: a session killed after a short first
    epoch and resumed with a longer one counted 5 s for 2 + 5. The engine's records say the
    epoch their session started at; older records keep the old rule."""
    from torchstn.engine import wall_seconds

    assert wall_seconds([{"elapsed": 2.0, "session": 0}, {"elapsed": 5.0, "session": 1}]) == 7.0
    assert wall_seconds([{"elapsed": 2.0, "session": 0}, {"elapsed": 5.0, "session": 0},
                          {"elapsed": 1.0, "session": 2}, {"elapsed": 3.0, "session": 2}]) == 8.0
    assert wall_seconds([{"elapsed": 2.0}, {"elapsed": 5.0}, {"elapsed": 1.0}]) == 6.0  # (records without it)


def test_the_icstn_paper_budget_is_the_authors_code():
    """Their options.py: the classifier at lr 1e-2; the geometric predictor at 1e-2 for an STN
    and 1e-4 for an IC-STN (the STN got 1e-4 until 2026-12-04); 500,000 iterations."""
    experiment = get_experiment("icstn-perturbed")
    column = experiment.column("perturbed")
    for key, predictor in (("icstn-stn", 1e-2), ("ic-stn-1", 1e-4), ("ic-stn-4", 1e-4)):
        recipe = experiment.recipe("paper", experiment.row(key), column)
        assert recipe["lr"] == 1e-2 and recipe["lr"] * recipe["loc_lr_mult"] == pytest.approx(predictor), key
        assert recipe["steps"] == 500_000 and recipe["batch_size"] == 100
    standard = experiment.recipe("standard", experiment.row("icstn-stn"), column)
    assert standard["loc_lr_mult"] == 0.1  # the paper budget's override only


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from Linux's /proc")
def test_a_killed_worker_ends_the_command_with_the_running_cells_named(tmp_path):
    """A worker of --jobs killed from outside (the OOM killer) ended the command with a traceback of
    BrokenProcessPool, the other worker's healthy cell reported failed."""
    from tests.reproduce._work import killed_or_stuck
    from torchstn.reproduce import WorkersLost
    from torchstn.reproduce._runner import _run_in_workers

    cells = plan(get_experiment("stn-table1"), "quick", only=["fcn", "cnn"], datasets=["rts"])
    runs, lines = tmp_path / "runs", []

    def claim(cell):
        lock = CellLock(cell.run_dir(runs))
        lock.acquire()
        return lock

    with pytest.raises(WorkersLost) as lost:
        _run_in_workers(cells, runs, {}, 2, claim, lambda cell, record: None, lines.append, 0.2, work=killed_or_stuck)
    message = str(lost.value)
    assert "quick/fcn/rts/s0" in message and "quick/cnn/rts/s0" in message and "run the same command again" in message
    assert not any("failed" in line for line in lines)
    stuck = int((runs / "cnn.pid").read_text())
    deadline = time.monotonic() + 10
    while _alive(stuck) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(stuck)
    assert all(CellLock(c.run_dir(runs)).holder() is None for c in cells)


def test_the_same_cells_at_standard_are_those_of_the_standard_table(tmp_path):
    """The sentence "The same cells at budget `standard`, then at `long`" averaged every standard
    record of the cell, an earlier recipe's included."""
    from torchstn.reproduce import render_report

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    standard = plan(experiment, "standard", only=["st-cnn-aff"], datasets=["rts"], seeds=2)
    long = plan(experiment, "long", only=["st-cnn-aff"], datasets=["rts"])[0]
    results.add(standard[0], _record(standard[0], 3.46))
    old = _record(standard[1], 12.68)
    old["config"] = {**standard[1].config, "batch_size": 128}
    results.add(standard[1], old)
    results.add(long, _record(long, 0.86))
    text = render_report(experiment, results, tmp_path, "long")
    assert "The same cells at budget `standard`, then at `long`: ST-CNN Aff on RTS 3.46% → 0.86%." in text


def test_a_record_of_a_row_column_budget_or_cell_no_longer_there_is_an_earlier_recipe(tmp_path):
    """Such a record crashed every report with a KeyError (a gone row, column or budget), or was
    counted as finished but shown in no table (a cell the table no longer has)."""
    from torchstn.reproduce import recipe_changes, render_report

    experiment = get_experiment("stn-3d")
    results = Results(tmp_path, "stn-3d")
    cnn = plan(experiment, "standard", only=["cnn-3d"])[0]
    results.add(cnn, _record(cnn, 21.3))
    gone = {"standard/cnn-old/3d/s0": {**_record(cnn, 30.0), "row": "cnn-old"},
            "standard/cnn-3d/4d/s0": {**_record(cnn, 31.0), "column": "4d"},
            "long/cnn-3d/3d/s0": {**_record(cnn, 32.0), "budget": "long"},
            "medium/cnn-3d/3d/s0": {**_record(cnn, 33.0), "budget": "medium"}}
    results.cells.update(gone)
    assert recipe_changes(experiment, gone["standard/cnn-old/3d/s0"]) == {"row": ("cnn-old", None)}
    import dataclasses

    without = dataclasses.replace(experiment, paper={("st-cnn-3d-aff", "3d"): None})  # (CNN on 3-D dropped)
    assert recipe_changes(without, _record(cnn, 21.3)) == {"cell": ("cnn-3d on 3d", None)}
    dropped = render_report(without, results, tmp_path, "standard")
    assert "0 finished run(s)" in dropped
    assert "21.30% (undated); since changed: cell 'cnn-3d on 3d' no longer in stn-3d" in dropped
    # (no command reruns a record of a row, column, budget or cell that is gone: it said "rerunning replaces them")
    gone_only = "earlier recipe (in none of the tables above; they are of a budget, row, column or cell"
    assert gone_only in dropped and "rerunning" not in dropped
    text = render_report(experiment, results, tmp_path, "standard")
    assert "1 finished run(s)" in text
    assert "- cnn-old on MNIST 3-D, seed 0: 30.00% (undated); since changed: row 'cnn-old' no longer in stn-3d" in text
    assert "- CNN on the projection on 4d, seed 0: 31.00% (undated); since changed: column '4d' no longer in" in text
    assert gone_only in text and "rerunning" not in text
    cnn_seed1 = plan(experiment, "standard", only=["cnn-3d"], seeds=2)[1]
    results.add(cnn_seed1, {**_record(cnn_seed1, 22.0), "config": {**cnn_seed1.config, "batch_size": 7}})
    mixed = render_report(experiment, results, tmp_path, "standard")
    assert ("rerunning the command replaces them, but for those of a budget, row, column or cell the experiment no "
            "longer has, which no command reruns") in mixed
    assert "## Budget `long`, which stn-3d no longer has" in text and "32.00%" in text
    assert "## Budget `medium`, which stn-3d no longer has" in text and "33.00%" in text
    assert "--budget long" not in text and "--budget medium" not in text


def test_a_training_set_size_that_no_limit_explains_is_a_recipe_change(tmp_path):
    """stn-3d's standard recipe trains on 10,000 volumes: a record trained on 20,000 entered today's
    table marked "fewer images (--limit)"; a record now stores the --limit it was trained with."""
    from torchstn.reproduce import recipe_changes, render_report

    experiment = get_experiment("stn-3d")
    cnn = plan(experiment, "standard", only=["cnn-3d"])[0]
    assert cnn.config["train_limit"] == 10_000
    more = {**_record(cnn, 12.34), "config": {**cnn.config, "train_limit": 20_000}}
    assert recipe_changes(experiment, more) == {"train_limit": (20_000, 10_000)}
    fewer = {**_record(cnn, 12.34), "config": {**cnn.config, "train_limit": 5_000}}
    assert recipe_changes(experiment, {**fewer, "limit": 5_000}) == {}  # what --limit 5000 gives
    assert recipe_changes(experiment, {**fewer, "limit": 3_000}) == {"train_limit": (5_000, 10_000)}
    assert recipe_changes(experiment, fewer) == {}  # a record from before the stored limit: read as a --limit
    limited = plan(experiment, "standard", only=["cnn-3d"], limit=300)[0]
    from torchstn.reproduce._runner import _record as record_of

    assert limited.limit == 300 and record_of(limited, cnn.run_dir(tmp_path), [_epoch()])["limit"] == 300
    results = Results(tmp_path, "stn-3d")
    results.cells[cnn.key] = more
    text = render_report(experiment, results, tmp_path, "standard")
    assert "12.34" not in text[: text.index("### Runs")] and "†" not in text
    assert ("- CNN on the projection on MNIST 3-D, seed 0: 12.34% (undated); since changed: `train_limit` 20000 → "
            "10000") in text


def _epoch():
    return {"test_error": 0.1, "test_loss": 0.3, "train_error": 0.1, "step": 10, "epoch": 1, "elapsed": 1.0,
            "images_per_s": 100.0}


def test_the_recipe_line_names_a_rows_overrides_of_the_budget(tmp_path):
    """icstn-perturbed's STN trains at loc_lr_mult=1.0 at budget paper; the recipe line named no override."""
    from torchstn.reproduce import render_report

    experiment = get_experiment("icstn-perturbed")
    line = next(line for line in render_report(experiment, Results(tmp_path, experiment.name), tmp_path,
                                               "paper").splitlines() if line.startswith("Recipe:"))
    assert "per-row overrides: STN: `ground_truth_init=True`, `loc_lr_mult=1`;" in line


def test_a_figure_is_shown_only_while_the_record_it_was_drawn_from_is_in_the_table(tmp_path):
    """The figure is drawn from seed 0; with seed 0 of an earlier recipe and seed 1 of today's, the
    earlier model's figure headed the table of today's."""
    from torchstn.reproduce import render_report
    from torchstn.reproduce._report import draws_figure, figure_path

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    s0, s1 = plan(experiment, "quick", only=["st-cnn-aff"], datasets=["rts"], seeds=2)
    old = {**_record(s0, 91.0), "config": {**s0.config, "lr": 0.05}}
    results.add(s0, old)
    results.add(s1, _record(s1, 89.0))
    figure = figure_path(tmp_path, "stn-table1", "quick", "st-cnn-aff", "rts")
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.write_bytes(b"")  # drawn from seed 0 (before the stamp)
    assert figure.name not in render_report(experiment, results, tmp_path, "quick")
    assert draws_figure(experiment, results.cells, s1) and not draws_figure(experiment, results.cells, s0)
    results.add(s1, {**results.cells[s1.key], "figure": "2026-12-04 10:00:00 UTC"})  # drawn from seed 1
    assert f"![ST-CNN Aff on RTS](stn-table1/{figure.name})" in render_report(experiment, results, tmp_path, "quick")
    results.add(s0, {**_record(s0, 90.0), "figure": "2026-12-04 11:00:00 UTC"})  # seed 0 again, today's recipe
    assert draws_figure(experiment, results.cells, s0) and not draws_figure(experiment, results.cells, s1)
    assert figure.name in render_report(experiment, results, tmp_path, "quick")


def test_a_figure_older_than_its_unstamped_record_is_not_shown(tmp_path):
    """A record without a figure stamp (drawn before the stamp, or its figure failed or was interrupted)
    fell back to seed 0's figure: after seed 0 was retrained, the PNG of the previous model (its title
    the old error) was shown beside the new number. Only a PNG written after the record finished is."""
    import calendar

    from torchstn.reproduce import render_report
    from torchstn.reproduce._report import figure_path

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    s0 = plan(experiment, "quick", only=["st-cnn-aff"], datasets=["rts"])[0]
    results.add(s0, {**_record(s0, 89.0), "finished": "2026-12-04 12:00:00 UTC"})
    figure = figure_path(tmp_path, "stn-table1", "quick", "st-cnn-aff", "rts")
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.write_bytes(b"")
    finished = calendar.timegm((2026, 12, 4, 12, 0, 0))
    os.utime(figure, (finished - 3600, finished - 3600))  # drawn from the model before this one
    assert figure.name not in render_report(experiment, results, tmp_path, "quick")
    os.utime(figure, (finished + 5, finished + 5))  # drawn from this record (before the stamp)
    assert figure.name in render_report(experiment, results, tmp_path, "quick")


def test_no_recipe_asks_for_a_batch_larger_than_its_training_set():
    """pstn-subsets' 30-image column asked for batches of 32 and 64: the engine trained on all 30, warned at
    every cell of a documented command, and the report's recipe line named a batch that never ran."""
    for experiment in map(get_experiment, list_experiments()):
        for budget in experiment.recipes:
            for cell in plan(experiment, budget):
                limit = cell.config.get("train_limit")
                assert limit is None or cell.config["batch_size"] <= limit, (cell.key, cell.config["batch_size"], limit)


def _law_of_version(cell, version):
    from torchstn.data import data_law

    law = data_law(cell.config["data"], cell.config.get("data_options") or {})
    return {**law, "version": version}


def test_a_record_of_another_data_law_is_an_earlier_recipe_and_not_finished(tmp_path):
    """A cell recorded with the law of an earlier recipe version (its config unchanged: a recipe's
    default changed under it, as p's on 2026-12-05) is listed apart and trained again."""
    from torchstn.reproduce import recipe_changes, render_report

    experiment = get_experiment("stn-table1")
    results = Results(tmp_path, "stn-table1")
    cell = plan(experiment, "standard", only=["st-cnn-aff"], datasets=["p"])[0]
    today = {**_record(cell, 0.9), "data_law": _law_of_version(cell, 2)}
    assert today["data_law"]["kind"] == "p" and today["data_law"]["version"] == 2  # (the version of this test)
    results.add(cell, today)
    assert recipe_changes(experiment, today) == {} and results.finished(cell) is not None
    older = {**_record(cell, 1.9), "data_law": _law_of_version(cell, 1)}
    results.add(cell, older)
    assert recipe_changes(experiment, older) == {"data law": ("mnist-p recipe version 1", "mnist-p recipe version 2")}
    assert results.finished(cell) is None
    assert recipe_changes(experiment, _record(cell, 1.9)) == {}  # a record from before laws were kept: as it was
    text = render_report(experiment, results, tmp_path, "standard")
    assert ("ST-CNN Aff on P, seed 0: 1.90% (undated); since changed: `data law` 'mnist-p recipe version 1' → "
            "'mnist-p recipe version 2'") in text
    assert "1.90" not in text[: text.index("### Runs")]


@needs_mnist
def test_a_cell_whose_run_has_another_law_is_trained_again_beside_it(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from torchstn.engine import read_checkpoint

    cell = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["p"], limit=64)[0]
    runs, lines = tmp_path / "runs", []
    results = Results(tmp_path / "results", "stn-table1")
    (record,) = run_experiment([cell], results, runs, data_dir=str(MNIST), progress=False, log=lines.append)
    assert record["data_law"] == _law_of_version(cell, 2)
    run = cell.run_dir(runs).path
    for path in (run / "checkpoints").glob("*.safetensors"):  # as if trained on version 1
        with safe_open(str(path), "pt") as f:
            metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        metadata["data_law"] = json.dumps(_law_of_version(cell, 1))
        save_file(tensors, str(path), metadata=metadata)
    results.add(cell, {**record, "data_law": _law_of_version(cell, 1)})
    (again,) = run_experiment([cell], results, runs, data_dir=str(MNIST), progress=False, log=lines.append)
    assert any("was trained on mnist-p recipe version 1" in line and ".law-1, the cell starts again" in line
               for line in lines)
    assert read_checkpoint(run.with_name(run.name + ".law-1") / "checkpoints" / "last.safetensors")[2]["data_law"] == \
        _law_of_version(cell, 1)
    assert read_checkpoint(run / "checkpoints" / "last.safetensors")[2]["data_law"] == _law_of_version(cell, 2)
    assert again["data_law"] == _law_of_version(cell, 2) and again["error"] == pytest.approx(record["error"])
