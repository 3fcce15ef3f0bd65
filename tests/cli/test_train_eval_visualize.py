"""The train, eval and visualize commands, end to end on one tiny run."""

import json
import shutil
import sys

import pytest
import torch

from torchstn.engine import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig


@pytest.fixture(scope="module")
def tiny(mnist_dir):
    return ["--data", "mnist-rts", "--data-dir", mnist_dir, "--train-limit", 256, "--test-limit", 128,
            "--batch-size", 32, "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(cli, tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "st"
    run = cli("train", "--model", "st-cnn-aff", "--model-arg", "pool=2", "--epochs", 1, "--out", out, *tiny)
    assert run.status == 0, run.err
    assert "done: st-cnn-aff on mnist-rts, 1 epoch / 8 steps" in run.out
    assert ", ECE 0." in run.out and ", NLL " in run.out  # calibration beside the error, every run
    return out


def test_train_writes_a_run_and_resume_extends_it(cli, run_dir):
    assert (run_dir / "checkpoints" / "best.safetensors").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["step"] == 8
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_args"] == {"pool": 2, "in_channels": 1, "input_size": [42, 42], "num_classes": 10}
    run = cli("train", "--out", run_dir, "--resume", "--epochs", 2, "--no-progress")
    assert run.status == 0, run.err
    assert "epoch   2/2" in run.out and "epoch   1/2" not in run.out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and records[1]["step"] == 16


def test_a_run_trained_with_a_relative_data_dir_is_evaluated_from_another_directory(cli, mnist_dir, tmp_path,
                                                                                    monkeypatch):
    """The recorded data directory is absolute: eval, visualize and --resume default to it, and a
    relative one ("mn", as given) was looked up against the directory they ran in."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mn").symlink_to(mnist_dir)
    monkeypatch.chdir(tmp_path / "work")
    run = cli("train", "--model", "fcn", "--data", "mnist", "--data-dir", "mn", "--steps", 2, "--train-limit", 64,
              "--test-limit", 32, "--batch-size", 32, "--out", "runs/rel", "--no-progress")
    assert run.status == 0, run.err
    assert json.loads((tmp_path / "work" / "runs" / "rel" / "config.json").read_text())["data_dir"] == str(
        tmp_path / "work" / "mn")
    monkeypatch.chdir(tmp_path)
    evaluated = cli("eval", "work/runs/rel", "--limit", 32)
    assert evaluated.status == 0 and "error" in evaluated.out, evaluated.err


def test_a_data_dir_under_home_is_expanded(cli, mnist_dir, tmp_path, monkeypatch):
    """``--data-dir=~/mn`` (a shell leaves ~ after "=") was refused: "data directory ~/mn does not exist"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mn").symlink_to(mnist_dir)
    run = cli("train", "--model", "fcn", "--data", "mnist", "--data-dir=~/mn", "--steps", 1, "--train-limit", 32,
              "--test-limit", 16, "--batch-size", 16, "--out", tmp_path / "run", "--no-progress")
    assert run.status == 0, run.err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"] == str(tmp_path / "mn")
    evaluated = cli("eval", tmp_path / "run", "--data-dir=~/mn", "--limit", 16)  # (every --data-dir is one flag)
    assert evaluated.status == 0, evaluated.err


def test_train_help_reads_defaults_and_choices_from_the_config(cli):
    text = " ".join(cli("train", "--help").out.split())
    help = text[text.index("options:"):]  # the option list, not the usage line
    defaults = TrainConfig()
    for flag, field in (("--epochs N", "epochs"), ("--batch-size N", "batch_size"), ("--lr LR", "lr"),
                        ("--momentum MOMENTUM", "momentum"), ("--lr-gamma LR_GAMMA", "lr_gamma"),
                        ("--loc-lr-mult LOC_LR_MULT", "loc_lr_mult"), ("--model NAME", "model")):
        assert flag in help and f"(default: {getattr(defaults, field)})" in help.split(flag, 1)[1].split(" --")[0]
    for choices in (OPTIMIZERS, SCHEDULES, PRECISIONS):
        assert "{" + ",".join(choices) + "}" in text
    assert "--warmup W" in help and "--channels-last" in help


# the engine says bf16 is slow on a CPU without native bfloat16 (tests/engine/test_rundir_and_options.py tests it)
@pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU without native bfloat16")
def test_train_options_set_the_new_config_fields(cli, mnist_dir, tmp_path):
    out = tmp_path / "run"
    run = cli("train", "--model", "cnn", "--data", "mnist", "--data-dir", mnist_dir, "--train-limit", 64,
              "--test-limit", 32, "--batch-size", 32, "--epochs", 1, "--out", out, "--no-progress",
              "--warmup", 0.25, "--channels-last", "--precision", "bf16")
    assert run.status == 0, run.err
    config = json.loads((out / "config.json").read_text())
    assert config["warmup"] == 0.25 and config["channels_last"] is True and config["precision"] == "bf16"
    # eval calls the model as the run did (in bf16): the run's own test loss, not float32's
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    evaluated = json.loads(cli("eval", out, "--data-dir", mnist_dir, "--limit", 32, "--which", "last", "--json").out)
    assert evaluated["loss"] == pytest.approx(logged["test_loss"], rel=1e-6)
    line = cli("train", "--model", "cnn", "--warmup", 1.5, "--out", tmp_path / "bad").error_line()
    assert "warmup" in line and "1.5" in line
    assert not (tmp_path / "bad").exists()


def test_data_option_renders_the_run_and_its_eval_with_the_recipe_option(cli, tiny, mnist_dir, tmp_path):
    """``--data-option`` is recorded in the run; eval measures on the same rendering unless given
    another ``--data-option`` or dataset."""
    out = tmp_path / "aa"
    run = cli("train", "--model", "cnn", "--model-arg", "pool=2", "--epochs", 1, "--out", out,
              "--data-option", "supersample=2", *tiny)
    assert run.status == 0, run.err
    assert json.loads((out / "config.json").read_text())["data_options"] == {"supersample": 2}
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test_loss"]

    def loss(*extra):
        run = cli("eval", out, "--data-dir", mnist_dir, "--limit", 128, "--json", *extra)
        assert run.status == 0, run.err
        return json.loads(run.out)["loss"]

    assert loss() == pytest.approx(logged, rel=1e-5)  # the run's own antialiased test images
    assert loss("--data-option", "supersample=1") != pytest.approx(logged, rel=1e-5)
    # another option merges with the run's (once replaced them: supersample dropped)
    assert loss("--data-option", "mode=bilinear") == pytest.approx(logged, rel=1e-5)
    assert loss("--data", "mnist-rts") == loss()  # the run's own data name keeps its options
    # another dataset takes only the options given: no "mnist has none" for the run's supersample
    line = cli("eval", out, "--data", "mnist", "--data-dir", mnist_dir, "--limit", 8).error_line()
    assert "(1, 28, 28)" in line and "(1, 42, 42)" in line


def test_key_values_take_pythons_spelling_of_true_false_none_and_tuples(cli, tiny, tmp_path):
    """``--data-option keep_inside=False`` (the docs' spelling) was the string "False", which the
    recipe refused ("must be a bool, got str"), and ``scale=(0.5, 1.5)`` a string too; JSON's
    spellings and strings are unchanged."""
    from torchstn.cli._common import parse_key_values

    items = ["a=False", "b=True", "c=None", "d=false", "e=nearest", "f=[1, 2]", "g=Falsey", "h=(0.5, 1.5)", "i=a,b"]
    parsed = parse_key_values(items, "--x", "")
    assert parsed == {"a": False, "b": True, "c": None, "d": False, "e": "nearest", "f": [1, 2], "g": "Falsey",
                      "h": (0.5, 1.5), "i": "a,b"}
    out = tmp_path / "uncond"
    run = cli("train", "--model", "cnn", *tiny, "--data", "mnist-p", "--steps", 1, "--data-option", "keep_inside=False",
              "--out", out)
    assert run.status == 0, run.err
    assert json.loads((out / "config.json").read_text())["data_options"] == {"keep_inside": False}


def test_an_online_run_is_evaluated_on_another_dataset(cli, tiny, mnist_dir, tmp_path):
    """eval --data mnist of a run trained --online passed the run's online=True on, which mnist refuses."""
    out = tmp_path / "online"
    run = cli("train", "--model", "cnn", "--steps", 2, "--online", "--data-option", "canvas=28", "--out", out,
              *tiny)
    assert run.status == 0, run.err
    for data in (["--data", "mnist"], []):
        run = cli("eval", out, *data, "--data-dir", mnist_dir, "--limit", 8, "--split", "train")
        assert run.status == 0, run.err


def test_eval_reports_error_loss_and_per_class_error(cli, run_dir, mnist_dir):
    run = cli("eval", run_dir, "--data-dir", mnist_dir, "--limit", 128)
    assert run.status == 0, run.err
    assert "on mnist-rts test: error" in run.out and "per-class error  0:" in run.out
    assert ", ECE 0." in run.out and ", NLL " in run.out
    run = cli("eval", run_dir, "--data-dir", mnist_dir, "--limit", 128, "--json", "--which", "last")
    metrics = json.loads(run.out)
    assert metrics["n"] == 128 and len(metrics["per_class_error"]) == 10
    assert 0 <= metrics["error"] <= 1 and metrics["loss"] > 0
    assert 0 <= metrics["ece"] <= 1 and metrics["nll"] > 0
    # the error eval measures is the one training logged for the same checkpoint and data
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert metrics["error"] == pytest.approx(logged["test_error"], abs=1 / 128 + 1e-9)


def test_visualize_writes_a_png(cli, run_dir, mnist_dir, tmp_path):
    out = tmp_path / "fig.png"
    run = cli("visualize", run_dir, "--data-dir", mnist_dir, "--out", out, "--num", 4, "--calibration-images", 128)
    assert run.status == 0, run.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    # it says the file it wrote: matplotlib adds .png to a name without a suffix (once printed as given)
    run = cli("visualize", run_dir, "--data-dir", mnist_dir, "--out", tmp_path / "plain", "--num", 2,
              "--calibration-images", 64)
    assert run.status == 0 and f"wrote {tmp_path / 'plain.png'}" in run.out and (tmp_path / "plain.png").is_file()
    line = cli("visualize", run_dir, "--data-dir", mnist_dir, "--out", tmp_path, "--num", 2,
               "--calibration-images", 64).error_line()
    assert f"{tmp_path} is a directory" in line and not (tmp_path.parent / f"{tmp_path.name}.png").exists()


@pytest.mark.skipif(__import__("torchstn.data").data.shipped_ucr_dir() is None,
                    reason="aeon is not installed (pip install --no-deps aeon ships the UCR sets)")
def test_visualize_a_series_run_draws_from_start_or_refuses_what_does_not_apply(cli, tmp_path, monkeypatch):
    """For a series (or volume) run --start was ignored, --num capped at 8 (12) and --calibration-images
    dropped without a word: --start and --warp-samples are drawn, the others refused on one line."""
    import torchstn.reproduce._figures as figures

    out = tmp_path / "gp"
    run = cli("train", "--data", "ucr:GunPoint", "--model", "st-cnn1d-aff", "--steps", 5, "--batch-size", 16,
              "--model-arg", "width=0.1", "--threads", 1, "--no-progress", "--out", out)
    assert run.status == 0, run.err
    pick, picked = figures._pick, []

    def spy(dataset, num, **kwargs):
        picked.append((num, kwargs))
        return pick(dataset, num, **kwargs)

    monkeypatch.setattr(figures, "_pick", spy)
    shown = cli("visualize", out, "--start", 140, "--num", 3, "--warp-samples", 2, "--out", tmp_path / "warps")
    assert shown.status == 0, shown.err
    assert picked == [(3, {"start": 140})] and (tmp_path / "warps.png").read_bytes()[:4] == b"\x89PNG"
    assert cli("visualize", out, "--out", tmp_path / "default").status == 0
    assert picked[-1] == (8, {"start": None})  # one series of each class in turn, as the reports draw them
    assert "--num must be at most 8 for series" in cli("visualize", out, "--num", 20).error_line()
    line = cli("visualize", out, "--calibration-images", 64).error_line()
    assert "--calibration-images" in line and "series" in line
    assert "--start 150 is past the 150 test examples" in cli("visualize", out, "--start", 150).error_line()


def test_an_out_that_is_a_file_is_one_line_naming_out(cli, tiny, tmp_path):
    """``--out`` naming a regular file said only "afile: File exists" (the system's error where the run
    directory was made); a new run and a resumed one both name --out and what it must be."""
    afile = tmp_path / "afile"
    afile.write_text("notes")
    for extra in ([], ["--resume"]):
        line = cli("train", "--model", "cnn", "--epochs", 1, "--out", afile, *extra, *tiny).error_line()
        assert line == (f"torchstn: error: --out {afile} is a file; give a directory for the run "
                        "(new or one to --resume)"), extra
    assert afile.read_text() == "notes"


def test_bad_arguments_are_one_line_errors(cli, tiny, tmp_path, run_dir, mnist_dir):
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    cut = tmp_path / "cut"  # a run interrupted before its first checkpoint
    cut.mkdir()
    (cut / "config.json").write_text((run_dir / "config.json").read_text())
    stateless = tmp_path / "stateless"  # a checkpoint without its training state
    (stateless / "checkpoints").mkdir(parents=True)
    (stateless / "config.json").write_text((run_dir / "config.json").read_text())
    shutil.copy(run_dir / "checkpoints" / "last.safetensors", stateless / "checkpoints")
    cases = [  # (arguments, fragments of the one-line error)
        (["train", "--model", "resnet9000", *tiny], ["unknown model 'resnet9000'", "st-cnn-aff"]),
        (["train", "--data", "imagenet"], ["unknown dataset 'imagenet'", "mnist-rts"]),
        (["train", "--data-dir", tmp_path / "nowhere"], ["does not exist"]),
        (["train", "--model", "cnn", "--model-arg", "widht=3", *tiny], ["widht"]),
        (["train", "--model", "cnn", "--data-option", "supersampel=4", *tiny],
         ["--data-option: unknown option(s) ['supersampel'] for kind 'rts'"]),
        (["train", "--model", "cnn", "--data", "mnist", "--data-option", "supersample=4"], ["mnist has none"]),
        (["eval", run_dir, "--data-option", "supersample=99"], ["supersample must be in [1, 16], got 99"]),
        (["train", "--resume", "--out", tmp_path], ["config.json is missing"]),
        (["train", "--resume", "--out", run_dir, "--lr", 1.0], ["cannot change lr"]),
        # (said to remove cut/checkpoints, which did not exist: the command without --resume starts it again)
        (["train", "--resume", "--out", cut], ["holds no checkpoint", "to start it again, give the command that "
                                                "started it without --resume, or choose another --out"]),
        (["train", "--resume", "--out", stateless],  # where a new run is refused: the checkpoints must go
         ["holds no checkpoint with its training state", f"remove {stateless / 'checkpoints'} or choose another"]),
        (["eval", garbage], ["cannot read checkpoint"]),
        (["visualize", garbage], ["cannot read checkpoint"]),
        (["eval", tmp_path / "missing"], ["does not exist"]),
        (["visualize", tmp_path], ["no checkpoint in"]),
        (["eval", run_dir, "--data", "mnist", "--data-dir", mnist_dir, "--limit", 8], ["(1, 28, 28)", "(1, 42, 42)"]),
        (["visualize", run_dir, "--num", 0], ["--num must be at least 1, got 0"]),
        (["visualize", run_dir, "--num", 500], ["--num must be at most 48", "--start"]),
        (["visualize", run_dir, "--start", -5], ["--start must be at least 0, got -5"]),
        (["visualize", run_dir, "--data-dir", mnist_dir, "--start", 20000], ["--start 20000 is past the 10,000 test"]),
        (["eval", run_dir, "--limit", 0], ["--limit must be at least 1, got 0"]),
        (["eval", run_dir, "--batch-size", 0], ["--batch-size must be at least 1, got 0"]),
        (["export", run_dir, "--format", "torchscript", "--out", "/proc/st.pt"], ["/proc: cannot write there"]),
        (["train", "--model", "cnn", "--model-arg", "pool=abc", "--out", tmp_path / "abc", *tiny],
         ["cannot build model 'cnn'", "pool must be an int, got str"]),
    ]
    for args, fragments in cases:
        line = cli(*args).error_line()
        for fragment in fragments:
            assert fragment in line, (args, line)


def test_visualize_title_names_the_images_the_run_was_measured_on(cli, run_dir, mnist_dir, tmp_path, monkeypatch):
    """The run's metrics are over its own 128 test images, not the 64 the figure's reliability panel loads."""
    import torchstn.engine

    titles = []
    monkeypatch.setattr(torchstn.engine, "plot_run", lambda *a, title=None, **k: titles.append(title) or tmp_path)
    run = cli("visualize", run_dir, "--data-dir", mnist_dir, "--out", tmp_path / "f.png", "--num", 2,
              "--calibration-images", 64)
    assert run.status == 0, run.err
    assert titles[0].endswith("on the first 128 test images"), titles


def test_visualize_on_other_data_says_whose_the_recorded_numbers_are(cli, run_dir, mnist_dir, tmp_path, monkeypatch):
    """The title quoted the run's test error on its own data (mnist-rts, data seed 0) above images of
    other data as if measured on them."""
    import torchstn.engine

    titles = []
    monkeypatch.setattr(torchstn.engine, "plot_run", lambda *a, title=None, **k: titles.append(title) or tmp_path)
    for other in (["--data-seed", 1], ["--data-option", "supersample=2"], ["--data", "mnist-rts"]):
        run = cli("visualize", run_dir, "--data-dir", mnist_dir, "--out", tmp_path / "f.png", "--num", 2,
                  "--calibration-images", 64, *other)
        assert run.status == 0, run.err
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    epoch, error = last["epoch"], f"test error {last['test_error']:.2%}, ECE "
    assert titles[0].startswith(f"st-cnn-aff on mnist-rts (data seed 1), epoch {epoch}; recorded on mnist-rts: {error}")
    assert titles[1].startswith(f"st-cnn-aff on mnist-rts (supersample=2), epoch {epoch}; recorded on mnist-rts: ")
    assert titles[2].startswith(f"st-cnn-aff on mnist-rts, epoch {epoch}: {error}")  # its own data


def test_visualize_errors_shows_the_first_misclassified_test_images(cli, run_dir, mnist_dir, tmp_path, monkeypatch):
    import torchstn.engine
    from torchstn.engine import load_model, load_split

    shown, titled = [], []

    def plot_run(*args, examples=None, predicted=None, **kwargs):
        shown.append(examples)
        titled.append(predicted)
        return tmp_path

    monkeypatch.setattr(torchstn.engine, "plot_run", plot_run)
    run = cli("visualize", run_dir, "--data-dir", mnist_dir, "--errors", "--start", 5, "--num", 3)
    assert run.status == 0, run.err
    model, config, _ = load_model(run_dir, "last")
    test = load_split(config.replace(data_dir=mnist_dir, test_limit=shown[0][-1] + 1), "test")
    model.eval()
    with torch.no_grad():
        wrong = [i for i in range(5, len(test)) if int(model(test[i][0][None]).argmax()) != test[i][1]]
    assert shown[0] == wrong[:3] and len(wrong) >= 3  # one epoch of 256 images: errors abound
    # and the predictions that made them errors, for the titles (a P-STN's next call draws anew)
    with torch.no_grad():
        assert titled[0] == [int(model(test[i][0][None]).argmax()) for i in wrong[:3]]


def test_eval_of_a_sampling_model_is_the_run_s_own_and_the_title_is_the_checkpoint_s_epoch(
        cli, tiny, mnist_dir, tmp_path, monkeypatch):
    """A P-STN draws its test-time θ: `eval` drew them from whatever state torch's generator had
    (three runs of one command, three errors, none the run's own); it draws from the state the
    run's last evaluation found, and (`--which best`) the state its best epoch's evaluation found:
    that was seeded instead (a 40-step run: 82.81% recorded, 85.16% given). And `visualize --which best` titled
    the best epoch's figure with the last epoch's numbers."""
    import torchstn.engine

    out = tmp_path / "pstn"
    run = cli("train", "--model", "p-stn", "--model-arg", "samples=2", "--model-arg", "test_samples=2", "--steps", 24,
              "--lr", "0.05", "--out", out, *tiny)
    assert run.status == 0, run.err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(cli("eval", out, "--which", "last", "--limit", 128, "--json", "--data-dir", mnist_dir).out)
             for _ in range(2)]
    assert evals[0]["error"] == evals[1]["error"] == pytest.approx(history[-1]["test_error"])
    assert evals[0]["loss"] == evals[1]["loss"] == pytest.approx(history[-1]["test_loss"])
    best = min(history, key=lambda r: r["test_error"])  # (the first of equal errors: the checkpoint kept)
    evaluated = json.loads(cli("eval", out, "--which", "best", "--limit", 128, "--json", "--data-dir", mnist_dir).out)
    assert evaluated["epoch"] == best["epoch"]
    assert (evaluated["error"], evaluated["loss"], evaluated["nll"]) == (best["test_error"], best["test_loss"],
                                                                         best["test_nll"])  # (the very same θ)
    titles = []
    monkeypatch.setattr(torchstn.engine, "plot_run", lambda *a, title=None, **k: titles.append(title) or tmp_path)
    assert cli("visualize", out, "--which", "best", "--data-dir", mnist_dir, "--out", tmp_path / "f.png").status == 0
    assert f"epoch {best['epoch']}: test error {best['test_error']:.2%}" in titles[0]


def test_a_sampling_model_s_reliability_panel_is_the_run_s_evaluation(cli, mnist_dir, tmp_path, monkeypatch):
    """The panel drew a P-STN's θ after the examples' draws, in batches of 500: its ECE (0.067) was
    not the run's record (0.066) that the title quotes beside it. Also with --errors, whose search
    for the errors drew first."""
    import torchstn.engine._figures as figures
    from torchstn.engine import train
    from torchstn.engine.metrics import expected_calibration_error

    out = tmp_path / "pstn"
    config = TrainConfig(model="p-stn", model_args={"samples": 2, "test_samples": 2}, data="mnist-rts",
                         data_dir=str(mnist_dir), train_limit=64, test_limit=64, batch_size=32, steps=4, lr=0.05,
                         eval_batch_size=24)
    record = train(config, out, progress=False).history[-1]
    panels = []
    monkeypatch.setattr(figures, "_plot_reliability",
                        lambda fig, cell, probs, labels: panels.append(float(expected_calibration_error(probs, labels))))
    for errors in ([], ["--errors", "--num", "2"]):
        run = cli("visualize", out, "--calibration-images", 64, *errors, "--data-dir", mnist_dir,
                  "--out", tmp_path / "f.png")
        assert run.status == 0, run.err
    assert panels == [pytest.approx(record["test_ece"], abs=1e-7)] * 2


def test_eval_batches_a_run_as_its_evaluation_did(cli, mnist_dir, tmp_path):
    """`eval` batched by 512 whatever the run's ``eval_batch_size``: a P-STN's draws, and so its
    numbers, depend on the batches (85.94% recorded in batches of 24, 89.06% given in batches of 512)."""
    from torchstn.engine import train

    out = tmp_path / "pstn"
    config = TrainConfig(model="p-stn", model_args={"samples": 2, "test_samples": 2}, data="mnist-rts",
                         data_dir=str(mnist_dir), train_limit=64, test_limit=64, batch_size=32, steps=4, lr=0.05,
                         eval_batch_size=24)
    record = train(config, out, progress=False).history[-1]
    evaluated = json.loads(cli("eval", out, "--which", "last", "--limit", 64, "--json", "--data-dir", mnist_dir).out)
    assert (evaluated["error"], evaluated["loss"]) == (record["test_error"], record["test_loss"])


def test_resuming_a_run_in_steps_with_more_epochs_is_refused(cli, tiny, tmp_path):
    """A run given in steps ignores epochs: --resume --epochs 50 said "nothing to do", exited 0 and
    recorded epochs 50 in config.json."""
    out = tmp_path / "steps"
    assert cli("train", "--model", "cnn", "--steps", 2, "--out", out, *tiny).status == 0
    before = (out / "config.json").read_text()
    line = cli("train", "--out", out, "--resume", "--epochs", 50, "--no-progress").error_line()
    assert "is a run of 2 steps: epochs do not change its length" in line
    assert (out / "config.json").read_text() == before


def test_eval_refuses_a_data_seed_for_data_without_distortions(cli, run_dir, mnist_dir):
    """eval --data mnist --data-seed 3 measured the one mnist test split, as if seeded."""
    line = cli("eval", run_dir, "--data", "mnist", "--data-seed", 3, "--data-dir", mnist_dir).error_line()
    assert "--data-seed seeds a distorted set's distortions; mnist is not distorted" in line


def test_eval_of_the_whole_split_says_the_run_measured_fewer_images(cli, mnist_dir, tmp_path):
    """eval measures the whole test split unless --limit is given: its error differed from the run's
    record (of its --test-limit images) without a word."""
    out = tmp_path / "few"
    run = cli("train", "--model", "fcn", "--data", "mnist", "--data-dir", mnist_dir, "--steps", 1, "--train-limit", 32,
              "--test-limit", 16, "--batch-size", 16, "--no-progress", "--out", out)
    assert run.status == 0, run.err
    note = "(on all 10,000 test images; the run's record is of its first 16: --limit 16)"
    assert note in cli("eval", out).out
    assert "the run's record" not in cli("eval", out, "--limit", 16).out
    assert "the run's record" not in cli("eval", out, "--split", "train", "--limit", 100).out


_MY_MODELS = '''
import torch.nn as nn
import torchstn as stn


@stn.register_model("test-my-net")
def my_net(*, in_channels=1, input_size=(42, 42), num_classes=10):
    st = stn.SpatialTransformer("affine", stn.conv_localization(in_channels, input_size), output_size=(28, 28))
    return nn.Sequential(st, nn.Flatten(), nn.Linear(in_channels * 28 * 28, num_classes))
'''


def test_your_own_model_trains_evaluates_visualizes_and_exports_with_import(cli, tiny, tmp_path, monkeypatch):
    """A model registered by the user's code: ``--import`` (a dotted name found from the
    working directory, as with python -m, or a .py file) registers it before train, eval,
    visualize and export build it; without it, train and eval say what to pass."""
    from torchstn.models._registry import _REGISTRY

    (tmp_path / "my_models.py").write_text(_MY_MODELS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])

    def forget():  # (a fresh process: the model not registered, the module not imported)
        _REGISTRY.pop("test-my-net", None)
        sys.modules.pop("my_models", None)

    out = tmp_path / "run"
    try:
        train = ["train", "--model", "test-my-net", "--steps", 2, "--out", out, *tiny]
        assert "--import the module that registers it" in cli(*train).error_line()
        run = cli(train[0], "--import", "my_models", *train[1:])
        assert run.status == 0, run.err
        assert "done: test-my-net on mnist-rts" in run.out
        forget()
        assert "--import MODULE" in cli("eval", out, "--limit", 16).error_line()
        for module in ("my_models.py", str(tmp_path / "my_models.py"), "my_models"):
            forget()
            run = cli("eval", out, "--limit", 16, "--json", "--import", module)
            assert run.status == 0, run.err
            assert 0 <= json.loads(run.out)["error"] <= 100
        run = cli("eval", out, "--limit", 16, "--import", "my_models.py")  # (imported already: not again)
        assert run.status == 0, run.err
        run = cli("visualize", out, "--import", "my_models", "--num", 2, "--out", tmp_path / "v.png")
        assert run.status == 0 and (tmp_path / "v.png").is_file(), run.err
        forget()
        run = cli("export", out, "--import", "my_models", "--format", "torchscript", "--out", tmp_path / "m.pt")
        assert run.status == 0 and (tmp_path / "m.pt").is_file(), run.err
        assert "no module named 'not_mine'" in cli("eval", out, "--import", "not_mine").error_line()
        assert "--import missing.py: no such file" in cli("eval", out, "--import", "missing.py").error_line()
    finally:
        forget()


def test_a_diverged_run_is_said_so_and_its_json_stays_json(cli, tiny, tmp_path):
    """--lr 1e30 trained to NaN with "done" and no warning, and eval --json printed NaN, which strict
    JSON readers (jq, JavaScript) refuse: now a warning per epoch, null for a value not finite, and
    an export refused for its weights."""
    out = tmp_path / "nan"
    run = cli("train", "--model", "cnn", "--epochs", 1, "--lr", 1e30, "--out", out, *tiny)
    assert run.status == 0 and "warning: the training loss is nan" in run.err and "diverged" in run.err
    shown = cli("eval", out, "--data-dir", tiny[tiny.index("--data-dir") + 1], "--limit", 64, "--json")
    assert shown.status == 0, shown.err

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    metrics = json.loads(shown.out, parse_constant=refuse)
    assert metrics["loss"] is None and metrics["error"] > 0.5
    # its export: refused before anything is written (it wrote the file, then "differs from eager by nan")
    exported = cli("export", out, "--out", tmp_path / "nan.pt")
    assert "weights that are not finite" in exported.error_line() and "diverged" in exported.error_line()
    assert not (tmp_path / "nan.pt").exists()
