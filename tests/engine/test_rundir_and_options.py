"""The run directory's owner, and the engine options of the fast recipe (warm-up, channels_last, bf16)."""

import math
import warnings

import pytest
import torch

from torchstn.engine import RunDir, TrainConfig, evaluate, load_model, train
from torchstn.engine._trainer import _lr_lambda, warmup_steps


def _config(**kw):
    base = dict(model="tutorial", data="shapes", epochs=2, batch_size=32, lr=0.05, seed=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_rundir_layout_history_and_resume_check(tmp_path, shapes):
    run = RunDir(tmp_path / "r")
    assert not run.holds_run() and not run.can_resume() and run.history() == []
    result = train(_config(epochs=2), run.path, train_set=shapes[0], test_set=shapes[1], progress=False)
    assert run.holds_run() and run.can_resume()
    assert run.checkpoint("best").is_file() and run.checkpoint("last").is_file()
    assert [h["epoch"] for h in run.history()] == [1, 2]
    assert run.history()[-1]["test_error"] == result.history[-1]["test_error"]
    assert run.read_config() == result.config
    assert RunDir.of_checkpoint(run.checkpoint("last")).path == run.path
    # what may change on resume, and what may not
    assert run.resume_config(epochs=5, device="cpu").epochs == 5
    with pytest.raises(ValueError, match="cannot change lr when resuming"):
        run.resume_config(lr=0.1)
    assert RunDir.config_differences(result.config, result.config.replace(lr=0.1, epochs=9)) == ["lr"]
    # the starting command's model arguments, given again, are no change (the saved ones also
    # hold what the data filled in); a different value is
    some = dict(list(result.config.model_args.items())[:1])
    assert some and run.resume_config(model_args=some).model_args == result.config.model_args
    with pytest.raises(ValueError, match="cannot change model_args"):
        run.resume_config(model_args={**some, "not_an_arg": 1})
    # a record logged after the last checkpoint is dropped
    run.append({"epoch": 3})
    assert [h["epoch"] for h in run.keep_history(2)] == [1, 2]
    assert [h["epoch"] for h in run.history()] == [1, 2]
    with pytest.raises(ValueError, match="already holds a run"):
        run.start(result.config)
    run.remove()
    assert not run.path.exists()


def test_rundir_config_is_missing():
    with pytest.raises(ValueError, match="config.json is missing"):
        RunDir("/nonexistent/run").read_config()


@pytest.mark.parametrize("schedule", ["constant", "cosine", "step"])
def test_warmup_is_linear_then_the_schedule_over_the_rest(schedule):
    total = 100
    config = _config(schedule=schedule, warmup=0.1)
    assert warmup_steps(config, total) == 10 and warmup_steps(config.replace(warmup=25.0), total) == 25
    factor = _lr_lambda(config, total)
    assert [factor(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    plain = _lr_lambda(config.replace(warmup=0.0), total - 10)
    # after the warm-up the schedule runs over the remaining 90 steps as a run of 90 steps would
    assert [factor(10 + s) for s in range(90)] == pytest.approx([plain(s) for s in range(90)])
    if schedule == "cosine":
        assert factor(10) == 1.0 and factor(99) < 0.01


def test_warmup_reaches_the_peak_lr_in_training(shapes):
    # 8 steps per epoch; 4 warm-up steps then constant
    result = train(_config(schedule="constant", warmup=4.0, epochs=1), None, train_set=shapes[0],
                   test_set=shapes[1], progress=False)
    assert math.isclose(result.history[-1]["lr"], 0.05)
    assert result.config.warmup == 4.0


def test_channels_last_trains_to_the_same_numbers(tmp_path, shapes):
    base = train(_config(model="cnn"), None, train_set=shapes[0], test_set=shapes[1], progress=False)
    fast = train(_config(model="cnn", channels_last=True), tmp_path / "cl", train_set=shapes[0],
                 test_set=shapes[1], progress=False)
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    # the first convolution too, of one input channel: channels-last strides (as Module.to gives them),
    # not the NCHW ones that also count as channels-last for it and ran it NCHW; so its output is NHWC
    assert conv.in_channels == 1 and conv.weight.stride() == conv.weight.to(memory_format=torch.channels_last).stride()
    x = shapes[1].tensors[0][:2].contiguous(memory_format=torch.channels_last)
    out = conv(x)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    a, b = base.model.state_dict(), fast.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # the same maths, other kernels
    assert abs(base.history[-1]["test_loss"] - fast.history[-1]["test_loss"]) < 1e-3
    # the checkpoint holds the values, and loads as the run trained: channels-last weights
    model, config, _ = load_model(tmp_path / "cl", "last")
    assert config.channels_last and all(torch.equal(model.state_dict()[k], b[k]) for k in b)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_a_channels_last_run_is_evaluated_to_its_recorded_numbers(tmp_path, mnist_dir, monkeypatch):
    """load_model rebuilt a channels-last run with contiguous weights, and eval fed them
    channels-last images: other convolution kernels than training's (NLL 2.3043501284 against
    the recorded 2.3043501285). Both the Python evaluation and ``torchstn eval`` repeat the
    recorded test metrics exactly."""
    import contextlib
    import io
    import json

    from torchstn.cli import main
    from torchstn.engine import load_split

    monkeypatch.setenv("TORCHSTN_CACHE", str(tmp_path / "cache"))
    config = TrainConfig(model="st-cnn-aff", data="mnist-rts", data_dir=str(mnist_dir), train_limit=128,
                         test_limit=64, batch_size=32, epochs=1, device="cpu", seed=4, channels_last=True,
                         eval_batch_size=64, diagnostics_samples=0)
    recorded = train(config, tmp_path / "run", progress=False).history[-1]
    expected = {key: recorded[f"test_{key}"] for key in ("loss", "error", "per_class_error", "ece", "nll")}
    model, config, _ = load_model(tmp_path / "run", "last")
    evaluated = evaluate(model, load_split(config, "test"), batch_size=config.eval_batch_size,
                         **config.call_options())
    assert {key: evaluated[key] for key in expected} == expected
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["eval", str(tmp_path / "run"), "--which", "last", "--limit", "64", "--json"]) == 0
    evaluated = json.loads(out.getvalue())
    assert {key: evaluated[key] for key in expected} == expected


@pytest.mark.filterwarnings("ignore:precision='bf16' on a CPU without native bfloat16")
def test_bf16_autocast_trains_and_evaluates_close_to_fp32(shapes):
    torch.manual_seed(0)
    base = train(_config(model="st-cnn-aff"), None, train_set=shapes[0], test_set=shapes[1], progress=False)
    bf16 = train(_config(model="st-cnn-aff", precision="bf16"), None, train_set=shapes[0], test_set=shapes[1],
                 progress=False)
    assert bf16.config.precision == "bf16"
    assert all(math.isfinite(h["train_loss"]) for h in bf16.history)
    assert abs(base.history[-1]["train_loss"] - bf16.history[-1]["train_loss"]) < 0.1
    # the model's weights stay float32; evaluation under bf16 differs from fp32 only by rounding
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    fp32_eval = evaluate(bf16.model, shapes[1], batch_size=64)
    bf16_eval = evaluate(bf16.model, shapes[1], batch_size=64, precision="bf16")
    assert bf16_eval["loss"] != fp32_eval["loss"]  # autocast did run
    assert abs(bf16_eval["loss"] - fp32_eval["loss"]) < 0.05


def test_bf16_on_a_cpu_without_native_bfloat16_warns_once(monkeypatch):
    from torchstn.engine import _evaluate

    _evaluate._warn_slow_bf16.cache_clear()
    monkeypatch.setattr(_evaluate, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="several times slower than fp32"):
        _evaluate.precision_context("bf16", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _evaluate.precision_context("bf16", "cpu")  # once per process
        _evaluate.precision_context("fp32", "cpu")
    _evaluate._warn_slow_bf16.cache_clear()
    monkeypatch.setattr(_evaluate, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _evaluate.precision_context("bf16", "cpu")


def test_ema_is_the_moving_average_of_the_weights_after_each_step(tmp_path, shapes):
    """``ema``: the returned and checkpointed model is avg_1 = w_1, avg_t = d avg_(t-1) + (1 - d) w_t
    over the weights after each step, computed here from runs stopped after 1, 2, ... steps
    (a constant rate, so a shorter run's steps are the longer one's)."""
    decay, steps = 0.7, 6
    config = _config(model="cnn", schedule="constant", steps=steps)
    expected = None
    for k in range(1, steps + 1):
        weights = train(config.replace(steps=k), None, train_set=shapes[0], test_set=shapes[1],
                        progress=False).model.state_dict()
        expected = weights if expected is None else {n: decay * expected[n] + (1 - decay) * weights[n] for n in weights}
    averaged = train(config.replace(ema=decay), tmp_path / "ema", train_set=shapes[0], test_set=shapes[1],
                     progress=False)
    got = averaged.model.state_dict()
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)
    assert not all(torch.equal(got[n], weights[n]) for n in got)  # the average, not the last weights
    # the checkpoint holds the average; the epoch records also hold the raw weights' test error
    checkpoint = load_model(tmp_path / "ema", "last")[0].state_dict()
    assert all(torch.equal(checkpoint[n], got[n]) for n in got)
    record = averaged.history[-1]
    assert record["test_error"] == pytest.approx(evaluate(averaged.model, shapes[1])["error"])
    raw = train(config, None, train_set=shapes[0], test_set=shapes[1], progress=False)
    assert record["test_error_raw"] == pytest.approx(raw.history[-1]["test_error"])


def test_ema_resumes_bit_exact(tmp_path, shapes):
    config = _config(ema=0.9)
    straight = train(config, tmp_path / "a", train_set=shapes[0], test_set=shapes[1], progress=False)
    train(config, tmp_path / "b", train_set=shapes[0], test_set=shapes[1], progress=False, stop_after=1)
    resumed = train(config, tmp_path / "b", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(h["test_error"], h["test_error_raw"]) for h in straight.history] == [
        (h["test_error"], h["test_error_raw"]) for h in resumed.history
    ]


def test_label_smoothing_is_the_training_loss(shapes):
    """The recorded training loss is F.cross_entropy with the label smoothing (a rate of ~0
    leaves the weights as they start, so it can be recomputed from the returned model)."""
    from torchstn.engine._data import fetch_inputs

    config = _config(model="cnn", epochs=1, optimizer="sgd", lr=1e-30, momentum=0.0, label_smoothing=0.3)
    result = train(config, None, train_set=shapes[0], test_set=shapes[1], progress=False)
    x, y, _ = fetch_inputs(shapes[0], torch.arange(len(shapes[0])))
    with torch.no_grad():
        logits = result.model.train()(x)
    smoothed = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.3).item()
    plain = torch.nn.functional.cross_entropy(logits, y).item()
    assert result.history[0]["train_loss"] == pytest.approx(smoothed, rel=1e-5)
    assert result.history[0]["train_loss"] != pytest.approx(plain, rel=1e-4)  # (near-uniform logits: 1e-3 apart)


@pytest.mark.parametrize("field", ["ema", "label_smoothing", "momentum"])
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_ema_label_smoothing_and_momentum_refuse_values_outside_zero_one(field, value):
    # (momentum 1.5 was accepted and SGD diverged without a word: the velocity grows geometrically)
    with pytest.raises(ValueError, match=field):
        _config(**{field: value})
    assert getattr(_config(**{field: 0.0}), field) == 0.0 and getattr(_config(**{field: 0.99}), field) == 0.99


def test_data_options_render_the_data_the_recipe_does(mnist_dir):
    """``data_options`` reach the recipe: ``supersample=2`` is get_dataset's antialiased rendering, not the default."""
    from torchstn.data import get_dataset
    from torchstn.engine import load_split

    config = TrainConfig(data="mnist-rts", data_dir=str(mnist_dir), test_limit=4, data_options={"supersample": 2})
    loaded = load_split(config, "test")
    got = torch.stack([loaded[i][0] for i in range(4)])
    want = get_dataset("mnist-rts", "test", root=mnist_dir, limit=4, cache=False, supersample=2)
    plain = get_dataset("mnist-rts", "test", root=mnist_dir, limit=4, cache=False)
    assert torch.equal(got, torch.stack([want[i][0] for i in range(4)]))
    assert not torch.equal(got, torch.stack([plain[i][0] for i in range(4)]))
    assert TrainConfig.from_dict(config.to_dict()).data_options == {"supersample": 2}


@pytest.mark.parametrize("field", ["data_options", "model_args"])
def test_option_dicts_refuse_other_types(field):
    with pytest.raises(TypeError, match=field):
        _config(**{field: [("supersample", 4)]})


def test_a_run_being_trained_refuses_a_second_train_or_resume(tmp_path, shapes, monkeypatch):
    """Two trains on one directory both ran to the end: during the first's first epoch (RunDir.start
    refused only once checkpoints/ existed) the second rewrote config.json, emptied metrics.jsonl and
    both wrote checkpoints, a mixed run. The run being trained holds a lock (training.lock in it,
    gone when it ends): a second train or resume is refused, naming the directory and the process,
    and the first run ends as if alone."""
    import os
    import re

    from torchstn.engine import _trainer

    run, refusals = RunDir(tmp_path / "r"), []
    epoch = _trainer._train_epoch

    def with_a_second_command(session, *args):
        if not refusals:  # (in the first epoch, before any checkpoint)
            assert run.training_lock_path.read_text() == f"{os.getpid()}\n"
            for resume in (False, True):
                with pytest.raises(ValueError) as caught:
                    train(_config(epochs=3), run.path, train_set=shapes[0], test_set=shapes[1], progress=False,
                          resume=resume)
                refusals.append(str(caught.value))
        return epoch(session, *args)

    monkeypatch.setattr(_trainer, "_train_epoch", with_a_second_command)
    result = train(_config(), run.path, train_set=shapes[0], test_set=shapes[1], progress=False)
    busy = f"{run.path} is being trained by another process (pid {os.getpid()}): wait for it to end, or choose another"
    assert [r[: len(busy)] for r in refusals] == [busy, busy]
    assert [h["epoch"] for h in run.history()] == [1, 2] and run.read_config() == result.config
    assert not run.training_lock_path.exists() and run.can_resume()
    # the lock goes with its process, however it ends: a killed run's file (its pid, no flock) locks nothing
    run.training_lock_path.write_text("999999999\n")
    resumed = train(_config(epochs=3), run.path, train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3] and not run.training_lock_path.exists()
    # a command refused before its run started leaves no directory behind (the lock's is removed)
    with pytest.raises(TypeError, match=re.escape("got unknown argument 'widht'")):
        train(_config(model="cnn", model_args={"widht": 3}), tmp_path / "new" / "run", train_set=shapes[0],
              test_set=shapes[1], progress=False)
    assert not (tmp_path / "new").exists()


def test_a_new_run_refuses_a_directory_that_holds_something_else(tmp_path, shapes):
    """A directory without checkpoints/ had its config.json and metrics.jsonl overwritten
    (``--out .`` in someone's project). A new run starts in a new or empty directory, or one of a
    run cut before its first checkpoint (config.json of a run: it starts again there, as
    documented); anything else is refused and left as it was."""
    theirs = tmp_path / "project"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"learning_rate": 3}\n')
    (theirs / "notes.txt").write_text("mine")
    for holder in (theirs, tmp_path / "other"):
        if holder != theirs:
            holder.mkdir()
            (holder / "data.csv").write_text("1,2\n")
        before = {p.name: p.read_text() for p in holder.iterdir()}
        with pytest.raises(ValueError, match=f"{holder} is not empty and holds no torchstn run"):
            train(_config(epochs=1), holder, train_set=shapes[0], test_set=shapes[1], progress=False)
        assert {p.name: p.read_text() for p in holder.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "training.lock").write_text("999999999\n")  # (a process killed as it started: nothing else)
    assert [h["epoch"] for h in train(_config(epochs=1), empty, train_set=shapes[0], test_set=shapes[1],
                                      progress=False).history] == [1]
    cut = RunDir(tmp_path / "cut")  # a run interrupted in its first epoch: config.json and an empty history
    cut.start(_config(epochs=1, lr=0.1))
    assert train(_config(epochs=1), cut.path, train_set=shapes[0], test_set=shapes[1], progress=False).config.lr == 0.05
    assert cut.read_config().lr == 0.05


def test_a_directory_that_cannot_be_written_is_not_locked_and_says_why_as_before(tmp_path, monkeypatch):
    """The lock file of a run on a read-only file system cannot be made: a PermissionError out of
    the lock replaced the run's own "already holds a run"; such a directory is left unlocked (nothing
    can train into it) and the run's checks speak."""
    import builtins
    import errno

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    real_open = builtins.open

    def read_only(file, *args, **kwargs):
        if str(file) == str(run.training_lock_path):
            raise PermissionError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    with run.locked():  # (no lock, no error)
        assert not run.training_lock_path.exists()
