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
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = base.model.state_dict(), fast.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)  # the same maths, other kernels
    assert abs(base.history[-1]["test_loss"] - fast.history[-1]["test_loss"]) < 1e-3
    # the checkpoint is written contiguous and loads into a plain model
    model, config, _ = load_model(tmp_path / "cl", "last")
    assert config.channels_last and all(torch.equal(model.state_dict()[k], b[k]) for k in b)


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
