"""``torchstn reproduce`` on the command line: a quick table end to end, listing, errors, the recorded command."""

import argparse
import json

from torchstn.cli._reproduce import recorded_command


def test_reproduce_table1_quick_end_to_end(cli, mnist_dir, tmp_path):
    args = ["reproduce", "stn-table1", "--budget", "quick", "--only", "cnn,st-cnn-aff", "--datasets", "rts,r,p",
            "--limit", "64",
            "--data-dir", mnist_dir, "--out", tmp_path / "results", "--runs", tmp_path / "runs",
            "--no-progress"]
    run = cli(*args)
    assert run.status == 0, run.err
    record = json.loads((tmp_path / "results" / "stn-table1.json").read_text())
    assert sorted(record["cells"]) == sorted(
        f"quick/{m}/{d}/s0" for m in ("cnn", "st-cnn-aff") for d in ("r", "rts", "p"))
    for cell in record["cells"].values():
        assert 0.0 <= cell["error"] <= 100.0
        assert cell["steps"] == 16 and cell["wall_seconds"] >= 0
        assert cell["machine"]["torch"] and cell["command"].startswith("torchstn reproduce stn-table1")
    report = (tmp_path / "results" / "stn-table1.md").read_text()
    assert "| ST-CNN Aff |" in report and "| 0.5 |" in report  # the paper's RTS number beside ours
    assert "budget `quick`" in report and "cores" in report
    figure = tmp_path / "results" / "stn-table1" / "quick-st-cnn-aff-rts.png"
    assert figure.is_file() and figure.read_bytes()[:4] == b"\x89PNG"
    assert "quick-st-cnn-aff-rts.png" in report
    assert "by the rotation of the test digit" in report  # R and RTS have ground-truth angles
    assert "on P by the shift of the test digit's distortion" in report  # and P its homographies
    assert len(record["cells"]["quick/cnn/p/s0"]["by_shift"]) == 5 and not record["cells"]["quick/cnn/r/s0"]["by_shift"]
    assert "on RTS by the scale of the test digit" in report  # RTS's digits have a scale, R's one
    assert record["cells"]["quick/cnn/rts/s0"]["by_scale"] and not record["cells"]["quick/cnn/r/s0"]["by_scale"]

    run = cli(*args)
    assert run.status == 0, run.err  # everything is finished: nothing is trained again
    assert run.out.count("finished earlier") == 6 and "training" not in run.out.replace("training (", "")


def test_cli_errors_are_one_line(cli, tmp_path):
    assert "--jobs must be at least 1, got 0" in cli("reproduce", "stn-table1", "--jobs", "0").error_line()
    assert "--threads 2 applies to --jobs 1" in cli("reproduce", "stn-table1", "--jobs", "2", "--threads", "2",
                                                   "--out", tmp_path).error_line()
    assert "unknown experiment 'stn-table9'" in cli("reproduce", "stn-table9", "--out", tmp_path).error_line()
    assert "no model 'resnet'" in cli("reproduce", "stn-table1", "--only", "resnet", "--out", tmp_path).error_line()
    (tmp_path / "file").write_text("")  # before any cell trains (once found after the first)
    line = cli("reproduce", "stn-table1", "--budget", "quick", "--out", tmp_path / "file").error_line()
    assert f"--out {tmp_path / 'file'} is a file" in line
    line = cli("reproduce", "stn-table1", "--budget", "quick", "--out", tmp_path / "file" / "sub").error_line()
    assert f"{tmp_path / 'file' / 'sub'}: cannot write there (--out" in line  # (a parent that is a file)
    (tmp_path / "out" / "stn-table1.json").mkdir(parents=True)
    line = cli("reproduce", "stn-table1", "--budget", "quick", "--out", tmp_path / "out").error_line()
    assert "stn-table1.json: is a directory; --out names the file to write" in line
    # (--refresh was skipped without a word; a device torch cannot train on failed once a cell had started)
    line = cli("reproduce", "stn-table1", "--list", "--refresh", "--out", tmp_path / "new").error_line()
    assert "--list and --refresh do different things" in line
    line = cli("reproduce", "stn-table1", "--budget", "quick", "--device", "tpu", "--out", tmp_path / "new",
               "--runs", tmp_path / "runs").error_line()
    assert "--device: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "new").exists()


def test_list_shows_state_without_training(cli, tmp_path):
    run = cli("reproduce", "stn-table1", "--list", "--only", "st-cnn-aff", "--datasets", "rts", "--out", tmp_path)
    assert run.status == 0, run.err
    assert "standard/st-cnn-aff/rts/s0" in run.out and "pending" in run.out and "paper 0.5%" in run.out


def test_list_says_how_far_an_interrupted_cell_has_trained(cli, mnist_dir, tmp_path):
    from torchstn.engine import TrainConfig, train
    from torchstn.reproduce import get_experiment, plan

    cell = plan(get_experiment("stn-table1"), "quick", only=["cnn"], datasets=["rts"], limit=64)[0]
    config = TrainConfig(**cell.config, data_dir=str(mnist_dir))
    result = train(config, cell.run_dir(tmp_path / "runs").path, progress=False, stop_after=1)  # killed after epoch 1
    run = cli("reproduce", "stn-table1", "--budget", "quick", "--list", "--only", "cnn", "--datasets", "rts,r",
              "--limit", 64, "--out", tmp_path / "results", "--runs", tmp_path / "runs")
    assert run.status == 0, run.err
    interrupted, untouched = run.out.splitlines()
    step = result.history[-1]["step"]
    assert interrupted.startswith("quick/cnn/rts/s0") and " pending " in interrupted
    assert f"(trained {step} of 16 iterations, epoch 1: test error " in interrupted and "resumes there" in interrupted
    assert untouched.startswith("quick/cnn/r/s0") and "trained" not in untouched


def test_list_counts_epochs_for_a_recipe_given_in_epochs(cli, mnist_dir, tmp_path):
    from torchstn.engine import TrainConfig, train
    from torchstn.reproduce import get_experiment, plan

    cell = plan(get_experiment("tutorial"), "standard", limit=64)[0]  # 20 epochs, no iteration count
    assert cell.config.get("steps") is None and cell.config["epochs"] == 20
    train(TrainConfig(**cell.config, data_dir=str(mnist_dir)), cell.run_dir(tmp_path / "runs").path, progress=False,
          stop_after=1)
    run = cli("reproduce", "tutorial", "--list", "--limit", 64, "--out", tmp_path / "results", "--runs",
              tmp_path / "runs")
    assert run.status == 0, run.err
    assert "(trained 1 of 20 epochs: test error " in run.out


def test_by_default_a_user_records_their_own_runs_not_the_committed_ones(cli, tmp_path, monkeypatch):
    from torchstn.reproduce import DEFAULT_OUT

    from torchstn.reproduce import Results, get_experiment, plan

    cell = plan(get_experiment("stn-table1"), "standard", only=["st-cnn-aff"], datasets=["rts"])[0]
    committed = Results(tmp_path / "results", "stn-table1")  # a checkout's record, with the cell finished
    committed.add(cell, {"digest": cell.digest, "error": 2.18, "config": cell.config})
    monkeypatch.chdir(tmp_path)
    assert "2.18%" in cli("reproduce", "stn-table1", "--list", "--only", "st-cnn-aff", "--datasets", "rts",
                          "--out", "results").out
    run = cli("reproduce", "stn-table1", "--list", "--only", "st-cnn-aff", "--datasets", "rts")
    assert run.status == 0, run.err
    assert "pending" in run.out
    assert DEFAULT_OUT == "runs/reproduce/results"
    assert "--out results" in cli("reproduce", "--help").out  # how to add to the committed numbers


def test_refresh_keeps_the_analyses_of_a_cell_whose_run_is_gone(cli, mnist_dir, tmp_path):
    """``--refresh`` redraws what it can from the runs under ``--runs``; a cell whose run is not
    there (trained on another machine) keeps the per-bin errors measured when it was."""
    from torchstn.reproduce import Results, get_experiment, plan

    cell = plan(get_experiment("stn-table1"), "standard", only=["cnn"], datasets=["p"])[0]
    bins = [{"pixels": [1.2, 1.9], "n": 2500, "error": 1.28}, {"pixels": [1.9, 2.1], "n": 2500, "error": 1.96}]
    Results(tmp_path / "results", "stn-table1").add(cell, {
        "digest": cell.digest, "error": 7.72, "config": cell.config, "run": str(tmp_path / "runs" / "gone"),
        "by_rotation": [], "by_scale": [], "by_shift": bins})
    run = cli("reproduce", "stn-table1", "--refresh", "--only", "cnn", "--datasets", "p", "--data-dir", mnist_dir,
              "--out", tmp_path / "results", "--runs", tmp_path / "runs")
    assert run.status == 0, run.err
    assert "refreshing standard/cnn/p/s0" in run.out
    record = json.loads((tmp_path / "results" / "stn-table1.json").read_text())["cells"]["standard/cnn/p/s0"]
    assert record["by_shift"] == bins and record["error"] == 7.72
    assert "the run of standard/cnn/p/s0 is neither under --runs" in run.err


def test_refresh_finds_a_run_under_runs_where_it_was_moved(cli, mnist_dir, tmp_path):
    """A cell records its run's path as given (relative with the default --runs): a refresh
    with --runs where the runs now are drew nothing and said nothing. It reads them there."""
    import shutil

    args = ["reproduce", "stn-table1", "--budget", "quick", "--only", "st-cnn-aff", "--datasets", "r", "--limit", "64",
            "--data-dir", mnist_dir, "--out", tmp_path / "results", "--no-progress"]
    assert cli(*args, "--runs", tmp_path / "runs").status == 0
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    figure = tmp_path / "results" / "stn-table1" / "quick-st-cnn-aff-r.png"
    figure.unlink()
    # without --data-dir the runs' recorded data directory is read (it looked for a download)
    refresh = [a for a in args if a not in ("--data-dir", mnist_dir)]
    run = cli(*refresh, "--refresh", "--runs", tmp_path / "moved")
    assert run.status == 0, run.err
    assert figure.is_file() and "neither under --runs" not in run.err and "no figure" not in run.err
    record = json.loads((tmp_path / "results" / "stn-table1.json").read_text())["cells"]["quick/st-cnn-aff/r/s0"]
    assert record["run"].startswith(str(tmp_path / "moved")) and record["by_rotation"]


def test_a_cell_interrupted_before_its_figure_has_it_and_its_analyses_made_by_the_next_run(cli, mnist_dir, tmp_path,
                                                                                           monkeypatch):
    """Ctrl-C once a cell was recorded, while its figure was drawn: the next run said "finished earlier
    (skipped)" and the cell never had its per-bin errors nor its figure (only --refresh made them)."""
    import torchstn.reproduce

    draw = torchstn.reproduce.write_figure

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    args = ["reproduce", "stn-table1", "--budget", "quick", "--only", "st-cnn-aff", "--datasets", "r", "--limit", "64",
            "--data-dir", mnist_dir, "--out", tmp_path / "results", "--runs", tmp_path / "runs", "--no-progress"]
    monkeypatch.setattr(torchstn.reproduce, "write_figure", interrupted)
    assert cli(*args).status == 130
    monkeypatch.setattr(torchstn.reproduce, "write_figure", draw)
    figure = tmp_path / "results" / "stn-table1" / "quick-st-cnn-aff-r.png"
    assert not figure.exists()
    run = cli(*args)
    assert run.status == 0, run.err
    assert "training" not in run.out.replace("training (", "") and "completing its analyses and figure" in run.out
    record = json.loads((tmp_path / "results" / "stn-table1.json").read_text())["cells"]["quick/st-cnn-aff/r/s0"]
    assert record["by_rotation"] and record["figure"] and figure.is_file()
    assert figure.name in (tmp_path / "results" / "stn-table1.md").read_text()
    assert "completing" not in cli(*args).out  # once


def test_the_recorded_command_has_no_absolute_paths(tmp_path, monkeypatch):
    """A results file records a command another user can run from the same place in a checkout (a path
    given relative stays relative; an absolute one outside the current directory stays absolute)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    args = argparse.Namespace(experiment="stn-table1", budget="standard", seeds=None, only=None, datasets="rts",
                              data_dir=str(tmp_path / "data"), out=str(tmp_path / "results"),
                              runs=str(tmp_path / "elsewhere"), device=None, jobs=2, threads=None, limit=None)
    assert recorded_command(args) == ("torchstn reproduce stn-table1 --budget standard --datasets rts "
                                      "--data-dir data --out results --runs elsewhere --jobs 2")
    # an absolute path outside the current directory stays so: "../../x" ran from this directory only
    args.data_dir, args.runs = str(tmp_path.parent / "mnist"), "../runs"
    assert recorded_command(args) == ("torchstn reproduce stn-table1 --budget standard --datasets rts "
                                      f"--data-dir {tmp_path.parent / 'mnist'} --out results --runs ../runs --jobs 2")


def test_list_and_refresh_cover_every_recorded_seed_without_seeds(cli, tmp_path):
    """A cell recorded with --seeds 2: --list and --refresh without --seeds saw only the seeds the budget
    plans (seed 0), so seed 1 was neither listed nor refreshed."""
    from torchstn.reproduce import Results, get_experiment, plan

    results = Results(tmp_path / "results", "stn-table1")
    for cell in plan(get_experiment("stn-table1"), "standard", only=["cnn"], datasets=["p", "r"], seeds=2):
        if cell.column.key == "p":  # (R: only seed 0 is planned and nothing recorded)
            results.add(cell, {"digest": cell.digest, "budget": "standard", "row": "cnn", "column": "p",
                               "seed": cell.seed, "error": 7.0 + cell.seed, "best_error": 7.0, "train_error": 7.0,
                               "epochs": 1, "steps": 10, "wall_seconds": 60.0, "images_per_s": 100.0,
                               "config": cell.config, "run": str(tmp_path / "gone")})
    options = ["--only", "cnn", "--datasets", "p,r", "--out", tmp_path / "results", "--runs", tmp_path / "runs"]
    run = cli("reproduce", "stn-table1", "--list", *options)
    assert run.status == 0, run.err
    assert [line.split()[:2] for line in run.out.splitlines()] == [
        ["standard/cnn/r/s0", "pending"], ["standard/cnn/p/s0", "7.00%"], ["standard/cnn/p/s1", "8.00%"]]
    run = cli("reproduce", "stn-table1", "--refresh", *options)
    assert run.status == 0, run.err
    assert "refreshing standard/cnn/p/s0" in run.out and "refreshing standard/cnn/p/s1" in run.out
    run = cli("reproduce", "stn-table1", "--list", "--seeds", "1", *options)  # (--seeds: those only)
    assert "standard/cnn/p/s1" not in run.out


def test_help_states_the_defaults_of_seeds_and_threads(cli):
    """--seeds said "default: 1, or 3 for --budget paper" (wrong for 6 of 9 experiments); --threads
    "default: torch's" where reproduce sets 1."""
    text = " ".join(cli("reproduce", "--help").out.split())
    assert "3 for --budget paper" not in text and "default: the experiment's for the budget, which --list shows" in text
    assert "CPU threads of torch (default: 1;" in text
    assert "(default: torch's;" in " ".join(cli("train", "--help").out.split())
