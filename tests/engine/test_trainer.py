import json
import math
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from torchstn.engine import TrainConfig, build_optimizer, identity_penalty, load_model, resume_config, train
from torchstn.engine._data import epoch_batches, shard


def _config(**kw):
    base = dict(model="tutorial", data="shapes", epochs=2, batch_size=32, lr=0.05, seed=3, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_resume_is_bit_exact(tmp_path, shapes):
    # tutorial has dropout, so the RNG state must be restored too
    train_set, test_set = shapes
    config = _config(loc_lr_mult=0.5)
    straight = train(config, tmp_path / "a", train_set=train_set, test_set=test_set, progress=False)
    train(config, tmp_path / "b", train_set=train_set, test_set=test_set, progress=False, stop_after=1)
    halfway = load_model(tmp_path / "b", "last")[0].state_dict()
    resumed = train(config, tmp_path / "b", train_set=train_set, test_set=test_set, progress=False, resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], halfway[k]) for k in a)  # the resumed epoch did train
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert (tmp_path / "b" / "metrics.jsonl").read_text().count("\n") == 2


def test_resume_refuses_a_changed_config(tmp_path, shapes):
    train(_config(epochs=1), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False)
    assert resume_config(tmp_path / "r", epochs=3).epochs == 3
    with pytest.raises(ValueError, match="cannot change lr"):
        resume_config(tmp_path / "r", lr=0.5)
    with pytest.raises(ValueError, match="already holds a run"):
        train(_config(epochs=1), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False)


def test_an_extended_run_records_its_new_length(tmp_path, shapes):
    """config.json says what the run trains: a resume that extends it rewrites it (once it
    kept the old length, and the next resume printed "at epoch 3 of 2")."""
    train(_config(epochs=1), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False)
    train(_config(epochs=2), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    assert TrainConfig.load(tmp_path / "r" / "config.json").epochs == 2
    assert resume_config(tmp_path / "r").epochs == 2


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_an_extended_run_steps_at_the_longer_schedules_rate_from_its_first_resumed_step(tmp_path, shapes, schedule):
    """The optimiser's saved state holds the rates the saved schedule set: the first step after an
    extension ran at the shorter schedule's next rate (0 at a cosine's end), the rest at the longer one's."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    rates = []
    hook = register_optimizer_step_pre_hook(lambda opt, args, kwargs: rates.append(
        [g["lr"] for g in opt.param_groups]))
    try:
        config = _config(schedule=schedule, loc_lr_mult=0.5)
        train(config.replace(epochs=2), None, train_set=shapes[0], test_set=shapes[1], progress=False)
        straight, rates[:] = rates[:], []
        train(config.replace(epochs=1), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False)
        train(config.replace(epochs=2), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False,
              resume=True)
    finally:
        hook.remove()
    half = len(straight) // 2
    assert len(rates) == len(straight) and rates[half:] == straight[half:]


def test_a_run_in_steps_extends_within_its_cut_last_epoch_and_never_shortens(tmp_path, shapes):
    """256 images of batch 32 are 8 steps an epoch: a run of 3 steps, resumed for 5, trains the 2
    steps left in one more (cut) epoch (it once said "nothing to do" and still wrote 5 steps into
    config.json); a resume for fewer steps than trained is refused and config.json kept."""
    from torchstn.engine import read_checkpoint

    run = tmp_path / "r"
    train(_config(steps=3), run, train_set=shapes[0], test_set=shapes[1], progress=False)
    result = train(_config(steps=5), run, train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    assert read_checkpoint(run / "checkpoints" / "last.safetensors")[2]["step"] == 5
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert TrainConfig.load(run / "config.json").steps == 5
    with pytest.raises(ValueError, match=r"cannot resume .* for 4 steps: it has trained 5 steps"):
        train(_config(steps=4), run, train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    assert TrainConfig.load(run / "config.json").steps == 5


def test_a_run_without_training_state_says_how_to_start_again(tmp_path, shapes):
    """Its checkpoints hold no training state (an interruption between the two files): the
    advice must work (once "start it again without resuming", which then refused the folder)."""
    train(_config(epochs=1), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False)
    next((tmp_path / "r" / "checkpoints").glob("last*.state.pt")).unlink()
    with pytest.raises(ValueError, match=r"remove .*checkpoints or choose another --out"):
        train(_config(epochs=2), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)


def test_a_cut_history_line_is_dropped_on_resume_and_a_cut_file_named(tmp_path, shapes):
    """A line of metrics.jsonl cut short after the last checkpoint (an interruption) is dropped
    by the resume, as the whole lines after it are; a cut line the run needs, or an emptied
    config.json, is an error that names the file (once the bare JSON parser's message)."""
    train(_config(epochs=1), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False)
    metrics = tmp_path / "r" / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + '{"epoch": 2, "test_')
    train(_config(epochs=2), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    metrics.write_text('{"epoch": 1, "tes\n' + metrics.read_text().splitlines()[1] + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 1 is not valid JSON"):
        train(_config(epochs=3), tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    (tmp_path / "r" / "config.json").write_text("")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        resume_config(tmp_path / "r")


def _tiny_run(run, shapes, **kw):
    return train(_config(), run, train_set=shapes[0], test_set=shapes[1], progress=False, **kw)


@pytest.mark.parametrize("damage", ["emptied", "removed", "another run's"])
def test_resume_refuses_a_history_without_the_epochs_before_its_checkpoint(tmp_path, shapes, damage):
    """A metrics.jsonl emptied, removed or replaced after the checkpoint: the resume went on and the
    history lost the epochs trained before it (it held epochs [2], or [2, 3, 4] after more), where a
    half-written line is refused. The resume is refused, naming metrics.jsonl, and nothing written."""
    run = tmp_path / "r"
    _tiny_run(run, shapes, stop_after=1)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    if damage == "removed":
        metrics.unlink()
    else:
        metrics.write_text("" if damage == "emptied" else whole.replace('"epoch": 1,', '"epoch": 5,'))
    held = "no epoch record" if damage != "another run's" else "the records of epochs 5"
    with pytest.raises(ValueError, match=rf"cannot resume {re.escape(str(run))}: {re.escape(str(metrics))} holds "
                                         rf"{held}, but its last checkpoint was written after epoch 1 "):
        _tiny_run(run, shapes, resume=True)
    assert load_model(run, "last")[2]["epoch"] == 1 and metrics.is_file() == (damage != "removed")
    metrics.write_text(whole)  # the run's own history back: it resumes
    assert [h["epoch"] for h in _tiny_run(run, shapes, resume=True).history] == [1, 2]


def test_resume_refuses_weights_and_state_from_different_saves(tmp_path, shapes):
    run = tmp_path / "r"
    weights, state = run / "checkpoints" / "last.safetensors", run / "checkpoints" / "last.state.pt"
    _tiny_run(run, shapes, stop_after=1)
    epoch_one = state.read_bytes()
    _tiny_run(run, shapes, resume=True)
    state.write_bytes(epoch_one)  # as a save interrupted between its two files would leave them
    pattern = (re.escape(f"cannot resume: {weights} (epoch 2, step 16, write id ") + r"\w+"
               + re.escape(f") and {state} (epoch 1, step 8, write id ") + r"\w+\) were not written together")
    with pytest.raises(ValueError, match=pattern):
        train(_config(epochs=3), run, train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    # the same epoch and step from another run: only the write id tells them apart
    _tiny_run(tmp_path / "other", shapes, stop_after=1)
    _tiny_run(tmp_path / "same", shapes, stop_after=1)
    shutil.copy(tmp_path / "other" / "checkpoints" / "last.state.pt", tmp_path / "same" / "checkpoints")
    stamp = r"\(epoch 1, step 8, write id \w+\)"
    with pytest.raises(ValueError, match=f"{stamp} and .* {stamp} were not written together"):
        _tiny_run(tmp_path / "same", shapes, resume=True)
    assert load_model(tmp_path / "same", "last")[2]["epoch"] == 1  # the weights alone still evaluate


@pytest.mark.parametrize("kill_at", ["before the new state", "between the two files"])
def test_a_save_killed_between_its_two_files_resumes_from_the_old_pair(tmp_path, shapes, monkeypatch, kill_at):
    """A kill while 'last' is replaced: the old state is kept until the new weights are
    written, and the resume takes the old pair, ending as an uninterrupted run does (the old
    state had been overwritten, and such a run could never be resumed)."""
    from torchstn.engine import _checkpoint

    straight = _tiny_run(tmp_path / "straight", shapes).model.state_dict()
    run = tmp_path / "r"
    _tiny_run(run, shapes, stop_after=1)
    write = _checkpoint.atomic_write

    def killed(path, fn):
        name = Path(path).name
        if name == ("last.state.pt" if kill_at == "before the new state" else "last.safetensors"):
            raise KeyboardInterrupt  # (what a kill leaves: nothing after this point)
        return write(path, fn)

    monkeypatch.setattr(_checkpoint, "atomic_write", killed)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(run, shapes, resume=True)
    monkeypatch.setattr(_checkpoint, "atomic_write", write)
    resumed = _tiny_run(run, shapes, resume=True).model.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.safetensors", "best.state.pt", "last.safetensors", "last.state.pt"]


def test_resume_accepts_an_old_pair_without_write_ids(tmp_path, shapes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = tmp_path / "old"
    weights, state_path = run / "checkpoints" / "last.safetensors", run / "checkpoints" / "last.state.pt"
    _tiny_run(run, shapes, stop_after=1)
    with safe_open(str(weights), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    assert metadata.pop("write_id") == torch.load(state_path, weights_only=True)["write_id"]
    save_file(tensors, str(weights), metadata=metadata)  # as written before the write id existed
    with pytest.raises(ValueError, match="write id none.*were not written together"):  # one file without, one with
        _tiny_run(run, shapes, resume=True)
    state = torch.load(state_path, weights_only=True)
    del state["write_id"]
    torch.save(state, state_path)
    assert load_model(run, "last")[2]["epoch"] == 1
    resumed = _tiny_run(run, shapes, resume=True)  # epochs and steps agree: accepted
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    straight = _tiny_run(tmp_path / "straight", shapes).model.state_dict()
    assert all(torch.equal(v, straight[k]) for k, v in resumed.model.state_dict().items())  # still bit-exact


def test_run_directory_contents(tmp_path, shapes):
    result = train(_config(model="st-cnn-aff", epochs=2), tmp_path / "run", train_set=shapes[0],
                   test_set=shapes[1], progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "checkpoints/best.safetensors", "checkpoints/last.safetensors",
                 "checkpoints/last.state.pt"):
        assert (run / name).is_file(), name
    assert TrainConfig.load(run / "config.json").model_args == {"in_channels": 1, "input_size": [28, 28], "num_classes": 4}
    record = result.history[-1]
    for key in ("epoch", "step", "lr", "train_loss", "train_error", "test_loss", "test_error", "test_per_class_error",
                "images_per_s", "seconds", "theta", "warnings"):
        assert key in record
    assert record["step"] == 2 * (256 // 32)
    assert len(record["test_per_class_error"]) == 4
    theta = record["theta"][0]
    assert len(theta["mean"]) == 6 and theta["finite"] and 0 <= theta["outside"] <= 1
    model, config, info = load_model(run, "last")
    x = shapes[1].tensors[0][:5]
    assert torch.allclose(model(x), result.model(x))
    assert info["epoch"] == 2 and config.model == "st-cnn-aff"


def test_steps_and_step_schedule(tmp_path, shapes):
    # 256 images / batch 32 = 8 steps per epoch; 12 steps = 2 epochs, the second one cut short;
    # lr divided by 10 every ceil(12 / 3) = 4 steps: the last step (the 12th) ran at 0.05 * 0.1 ** 2,
    # the last of the first epoch (the 8th) at 0.05 * 0.1
    result = train(_config(model="cnn", steps=12), None, train_set=shapes[0], test_set=shapes[1], progress=False)
    assert [h["step"] for h in result.history] == [8, 12]
    assert math.isclose(result.history[0]["lr"], 0.05 * 0.1)
    assert math.isclose(result.history[-1]["lr"], 0.05 * 0.1**2)


def test_a_batch_larger_than_the_training_set_runs_whole_and_says_so(tmp_path, shapes):
    # batch_size 100 on 40 images runs batches of 40: a warning names both numbers, metrics.jsonl
    # records the 40 and config.json keeps the 100 asked for (reproduce compares configs)
    small = TensorDataset(*(t[:40] for t in shapes[0].tensors))
    small.num_classes, small.input_shape = shapes[0].num_classes, shapes[0].input_shape
    with pytest.warns(UserWarning, match=r"batch_size 100 is more than the 40 training examples"):
        result = train(_config(model="cnn", batch_size=100), tmp_path / "r", train_set=small, test_set=shapes[1],
                       progress=False)
    assert [h["step"] for h in result.history] == [1, 2]
    assert [h["batch_size"] for h in result.history] == [40, 40]
    assert json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])["batch_size"] == 40
    assert TrainConfig.load(tmp_path / "r" / "config.json").batch_size == 100
    with warnings.catch_warnings():  # a batch that fits: no warning, and the record says it
        warnings.simplefilter("error", UserWarning)
        assert train(_config(model="cnn", batch_size=40, steps=1), None, train_set=small, test_set=shapes[1],
                     progress=False).history[-1]["batch_size"] == 40


def test_loc_lr_multiplier_makes_two_groups():
    import torchstn as stn

    model = stn.create_model("st-cnn-aff")
    opt = build_optimizer(model, _config(loc_lr_mult=0.1, lr=0.01))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"classifier": 0.01, "localization": pytest.approx(0.001)}
    loc = {id(p) for g in opt.param_groups if g["name"] == "localization" for p in g["params"]}
    assert loc == {id(p) for p in model.transformers.parameters()}
    assert len(build_optimizer(stn.create_model("cnn"), _config()).param_groups) == 1
    assert isinstance(build_optimizer(model, _config(optimizer="adam")), torch.optim.Adam)


def test_identity_penalty():
    import torchstn as stn

    model = stn.create_model("st-cnn-aff")
    x = torch.rand(4, 1, 28, 28)
    model(x)
    assert float(identity_penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.transformers[0].regressor.bias += 0.1
    model(x)
    assert float(identity_penalty(model).detach()) == pytest.approx(0.01, rel=1e-4)
    assert identity_penalty(stn.create_model("cnn")) == 0.0


def test_identity_regulariser_keeps_theta_near_identity(shapes):
    kw = dict(model="st-fcn-aff", epochs=3, lr=0.1, loc_lr_mult=5.0)
    free = train(_config(**kw), None, train_set=shapes[0], test_set=shapes[1], progress=False)
    held = train(_config(identity_reg=1.0, **kw), None, train_set=shapes[0], test_set=shapes[1], progress=False)
    assert held.history[-1]["theta"][0]["distance"] < 0.5 * free.history[-1]["theta"][0]["distance"]


def test_grad_clip_and_deterministic_run(shapes):
    cfg = _config(model="st-cnn-aff", epochs=1, grad_clip=0.5, deterministic=True)
    a = train(cfg, None, train_set=shapes[0], test_set=shapes[1], progress=False)
    b = train(cfg, None, train_set=shapes[0], test_set=shapes[1], progress=False)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    assert not torch.are_deterministic_algorithms_enabled()  # the setting ends with the run


def test_epoch_batches_and_shards():
    b0, b1 = epoch_batches(100, 10, seed=1, epoch=0), epoch_batches(100, 10, seed=1, epoch=1)
    assert b0.shape == (10, 10) and sorted(b0.flatten().tolist()) == list(range(100))
    assert not torch.equal(b0, b1)
    assert epoch_batches(105, 10, 1, 0).shape == (10, 10)  # the last partial batch is dropped
    parts = [shard(b0[0], r, 2) for r in range(2)]
    assert torch.equal(torch.cat(parts), b0[0])


def test_config_validation_and_roundtrip(tmp_path):
    cfg = _config(model_args={"pool": 2})
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int, got float"):
        TrainConfig(batch_size=64.0)
    with pytest.raises(TypeError, match="epochs must be an int, got bool"):
        TrainConfig(epochs=True)
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainConfig(lr=0.0)
    with pytest.raises(ValueError, match="warmup must be a fraction < 1 or a whole number"):
        TrainConfig(warmup=2.5)
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_dict({"modle": "cnn"})


def test_grad_clip_bounds_the_update(shapes):
    import torchstn as stn

    cfg = _config(model="st-fcn-aff", epochs=1, grad_clip=1e-6)
    torch.manual_seed(cfg.seed)
    init = stn.create_model(cfg.model, in_channels=1, input_size=28, num_classes=4).state_dict()
    clipped = train(cfg, None, train_set=shapes[0], test_set=shapes[1], progress=False).model.state_dict()
    free = train(cfg.replace(grad_clip=None), None, train_set=shapes[0], test_set=shapes[1], progress=False)
    # 8 steps of lr 0.05 with momentum 0.9 move no weight by more than 8 * 0.05 * 1e-6 / (1 - 0.9)
    assert max(float((clipped[k] - init[k]).abs().max()) for k in init) < 8 * 0.05 * 1e-6 / 0.1 + 1e-9
    assert max(float((free.model.state_dict()[k] - init[k]).abs().max()) for k in init) > 1e-3


def test_a_misspelt_model_argument_fails_before_the_data_is_loaded(monkeypatch):
    from torchstn.engine import _trainer

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before the model arguments were checked")

    monkeypatch.setattr(_trainer, "load_split", no_data)
    with pytest.raises(TypeError, match="model 'st-cnn-aff' got unknown argument 'poool'; it takes: .*pool"):
        train(_config(model="st-cnn-aff", model_args={"poool": 2}), progress=False)


def test_train_refuses_what_it_cannot_run_before_the_data_is_loaded(monkeypatch):
    """A dict for the config failed with "'dict' object has no attribute 'device'", stop_after=1.5
    with range()'s bare TypeError, and stop_after=0 or -1 trained nothing and said it had run."""
    from torchstn.engine import _trainer

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before train's arguments were checked")

    monkeypatch.setattr(_trainer, "load_split", no_data)
    as_dict = _config().to_dict()
    with pytest.raises(TypeError, match=r"config must be a TrainConfig, got dict; .*TrainConfig\(\*\*"):
        train(as_dict, progress=False)  # type: ignore[arg-type]
    assert TrainConfig(**as_dict) == _config()  # what the message says to do
    with pytest.raises(TypeError, match="stop_after must be an int, got float"):
        train(_config(), progress=False, stop_after=1.5)  # type: ignore[arg-type]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"stop_after must be >= 1, got {bad}"):
            train(_config(), progress=False, stop_after=bad)


def test_config_checks_data_dir_and_data_seed_as_it_is_built(tmp_path):
    """data_dir=5 failed later inside pathlib, a Path was taken and then broke config.json,
    and data_seed was not range-checked as seed is (2**70 taken)."""
    with pytest.raises(TypeError, match="data_dir must be a str, an os.PathLike or None, got int"):
        TrainConfig(data_dir=5)  # type: ignore[arg-type]
    config = TrainConfig(data_dir=tmp_path / "mnist")  # type: ignore[arg-type]
    assert config.data_dir == str(tmp_path / "mnist")
    config.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == config
    for bad in (2**70, 2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match=rf"data_seed must be .*, got {bad}"):
            TrainConfig(data_seed=bad)
        with pytest.raises(ValueError, match=rf"seed must be .*, got {bad}"):  # (the same range as seed's)
            TrainConfig(seed=bad)
    assert TrainConfig(data_seed=2**63 - 1).data_seed == 2**63 - 1 and TrainConfig(data_seed=-3).data_seed == -3
    with pytest.raises(TypeError, match="data_seed must be an int, got float"):
        TrainConfig(data_seed=1.0)  # type: ignore[arg-type]


def test_a_relative_data_dir_is_recorded_absolute(mnist_dir, tmp_path, monkeypatch):
    """train() from Python recorded data_dir as given ("mn"): evaluating the run from another
    directory could not find its data (the CLI made it absolute; the engine is what records it)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mn").symlink_to(mnist_dir)
    monkeypatch.chdir(tmp_path / "work")
    config = TrainConfig(model="fcn", data="mnist", data_dir="mn", steps=2, train_limit=32, test_limit=16,
                         batch_size=16, device="cpu")
    train(config, tmp_path / "run", progress=False)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"]
    assert recorded == str(tmp_path / "work" / "mn")
    monkeypatch.chdir(tmp_path)
    assert load_model(tmp_path / "run")[1].data_dir == recorded  # (the checkpoint's config too)


def test_a_data_dir_under_home_is_expanded_before_it_is_made_absolute(mnist_dir, tmp_path, monkeypatch):
    """data_dir="~/mn" became <cwd>/~/mn ("MNIST not found"), though the data loaders expand ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mn").symlink_to(mnist_dir)
    monkeypatch.chdir(mnist_dir)
    config = TrainConfig(model="fcn", data="mnist", data_dir="~/mn", steps=1, train_limit=16, test_limit=16,
                         batch_size=16, device="cpu")
    train(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"] == str(tmp_path / "mn")


def test_train_takes_resume_as_a_bool_only(tmp_path):
    """resume="yes" was taken as True (and with no out said "resume=True needs the run directory")."""
    with pytest.raises(TypeError, match="resume must be a bool, got str"):
        train(TrainConfig(model="fcn", data="mnist", steps=1), tmp_path / "run", resume="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "run").exists()


def test_a_config_keeps_numbers_of_other_types_as_pythons_own(tmp_path):
    """numpy scalars and fractions are numbers (check_number takes them): kept as they came,
    config.json could not hold them and a run failed at its first write, naming no field."""
    from fractions import Fraction

    import numpy as np

    config = _config(lr=np.float32(0.5), epochs=np.int64(3), momentum=Fraction(1, 2))
    assert (type(config.lr), type(config.epochs), type(config.momentum)) == (float, int, float)
    assert (config.lr, config.epochs, config.momentum) == (0.5, 3, 0.5)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_a_training_whose_loss_is_no_longer_finite_says_so(tmp_path, shapes, capsys):
    """A learning rate of 1e30 trained to a NaN loss and ended with "done" and no word of it
    (the θ diagnostics speak of the transformer alone): each such epoch now warns."""
    result = train(_config(model="cnn", epochs=1, lr=1e30), tmp_path / "r", train_set=shapes[0], test_set=shapes[1],
                   progress=False)
    assert not math.isfinite(result.final["train_loss"])
    assert "warning: the training loss is nan" in capsys.readouterr().err
    assert any("diverged" in w for w in result.final["warnings"])
    healthy = train(_config(model="cnn", epochs=1), tmp_path / "h", train_set=shapes[0], test_set=shapes[1],
                    progress=False)
    assert not any("diverged" in w for w in healthy.final["warnings"])


def test_the_done_line_of_a_resumed_run_counts_every_session(tmp_path, shapes, capsys):
    """elapsed restarts at each session: the done line of a resumed run gave the last session's
    time (1.7 s for a run of 15 s), and an already finished run's "nothing to do" the same."""
    config = _config(epochs=2)
    train(config, tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, stop_after=1)
    history = tmp_path / "r" / "metrics.jsonl"  # (a first session of 100 s: told apart from the second's)
    history.write_text(json.dumps({**json.loads(history.read_text()), "elapsed": 100.0}) + "\n")
    capsys.readouterr()
    resumed = train(config, tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    first, second = (h["elapsed"] for h in resumed.history)
    assert first == 100.0 and resumed.history[1]["session"] == 1 and second < 50
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    assert len(done) == 1 and f"in {first + second:.1f} s:" in done[0]
    train(config, tmp_path / "r", train_set=shapes[0], test_set=shapes[1], progress=False, resume=True)
    assert f"in {first + second:.1f} s:" in capsys.readouterr().out  # (nothing to do: the same run)
