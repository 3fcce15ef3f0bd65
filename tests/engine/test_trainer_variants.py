"""The engine with the transformer variants: P-STN's KL in the objective, calibration in
every record, and how online (batched, per-epoch) datasets are fed."""

import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.engine import TrainConfig, data_loss, train
from torchstn.engine._data import fetch
from torchstn.engine._figures import plot_run, sampled_params


def _pstn_config(**changes):
    base = dict(model="p-stn", optimizer="adam", lr=1e-3, batch_size=32, schedule="constant", device="cpu",
                diagnostics_samples=8, model_args={"samples": 2, "test_samples": 2})
    base.update(changes)
    return TrainConfig(**base)


def test_pstn_objective_includes_the_weighted_kl(shapes):
    train_set, test_set = shapes
    runs = {}
    for weight in (0.0, 1.0):
        config = _pstn_config(steps=1, model_args={"samples": 2, "test_samples": 2, "kl_weight": weight})
        runs[weight] = train(config, train_set=train_set, test_set=test_set, progress=False)
    kl0, kl1 = runs[0.0].final["train_kl"], runs[1.0].final["train_kl"]
    assert kl0 == 0.0 and kl1 > 0.0
    # same seed, data and initialisation: the data term is the same, so any change comes from the KL
    assert runs[0.0].final["train_loss"] == pytest.approx(runs[1.0].final["train_loss"])
    spread = {w: r.model.transformers[0].variance_regressor.bias for w, r in runs.items()}
    assert not torch.allclose(spread[0.0], spread[1.0])


def test_train_leaves_the_run_s_draws_to_its_evaluation(shapes):
    """The per-epoch evaluation drew a P-STN's test-time θ from the global generator, so a
    seeded run trained differently with another test set size (--test-limit): the trainer
    forks the generators around it. Two epochs, evaluated on 8 or on 40 test images: the
    same weights."""
    train_set, test_set = shapes
    weights = []
    for limit in (8, 40):
        small = torch.utils.data.Subset(test_set, range(limit))
        result = train(_pstn_config(epochs=2), train_set=train_set, test_set=small,
                       progress=False)
        weights.append(result.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_pstn_trains_on_a_tiny_set_and_reports_calibration(tmp_path, shapes):
    train_set, test_set = shapes
    result = train(_pstn_config(epochs=4), tmp_path / "run", train_set=train_set, test_set=test_set, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"test_error", "test_ece", "test_nll", "train_kl"} <= line.keys() for line in lines)
    assert all(0.0 <= line["test_ece"] <= 1.0 and line["test_nll"] > 0 for line in lines)
    # the θ diagnostics are taken with the predicted classes (does the warp encode the class?)
    per_class = {"log_area", "class_log_area", "class_spread", "class_share"}
    assert all(per_class <= line["theta"][0].keys() for line in lines)


def test_pstn_figure_has_sampled_warps_and_a_reliability_diagram(tmp_path, shapes):
    from torchstn.models import create_model

    model = create_model("p-stn", input_size=28, num_classes=4).eval()
    pst = model.transformers[0]
    x = shapes[1].tensors[0][:3]
    theta = sampled_params(pst, x, samples=5)
    assert theta.shape == (5, 3, 4)
    assert not torch.allclose(theta[0], theta[1])  # different draws for the same input
    assert not pst.training and pst.samples == 1  # the module's mode and sample count are restored
    out = plot_run(model, shapes[1], tmp_path / "fig.png", num=3, calibration_images=50)
    assert out.stat().st_size > 0


def test_pstn_figure_leaves_the_model_and_the_random_state_alone(tmp_path, shapes):
    # drawn mid-training (a callback's figure), plot_run must not move BatchNorm's running
    # statistics (sampled_params drew in training mode), leave the model in eval mode, or move
    # the seeded generator
    from torchstn.models import create_model

    model = create_model("p-stn", input_size=28, num_classes=4)
    pst = model.transformers[0]
    pst.localization.insert(2, torch.nn.BatchNorm2d(20))
    model.train()
    stats = pst.localization[2].running_mean.clone()
    x = shapes[1].tensors[0][:3]
    theta = sampled_params(pst, x, samples=5)
    assert not torch.allclose(theta[0], theta[1]) and theta.shape == (5, 3, 4)
    assert torch.equal(pst.localization[2].running_mean, stats) and pst.training
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    plot_run(model, shapes[1], tmp_path / "fig.png", num=3, calibration_images=50)
    assert torch.equal(torch.rand(3), expected)
    assert model.training and pst.localization[2].training
    assert torch.equal(pst.localization[2].running_mean, stats)


class _OnlineSet:
    """Stands in for an online distorted set: renders a batch per ``__getitems__`` call, one draw per epoch."""

    num_classes = 4
    input_shape = (1, 28, 28)

    def __init__(self, base):
        self.base = base
        self.epochs, self.batch_calls = [], 0
        self.epoch = 0

    def __len__(self):
        return len(self.base)

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        self.epoch = epoch

    def __getitem__(self, index):
        raise AssertionError("the engine must fetch a batch at once through __getitems__")

    def __getitems__(self, indices):
        self.batch_calls += 1
        x, y = self.base.tensors[0][indices], self.base.tensors[1][indices]
        x = torch.roll(x, self.epoch, dims=-1)  # this epoch's "distortion"
        return list(zip(x, y.tolist()))


def test_fetch_uses_getitems_in_one_call(shapes):
    online = _OnlineSet(shapes[0])
    x, y = fetch(online, torch.tensor([3, 1, 2]))
    assert online.batch_calls == 1
    assert torch.equal(x, shapes[0].tensors[0][[3, 1, 2]]) and torch.equal(y, shapes[0].tensors[1][[3, 1, 2]])


def test_online_set_gets_set_epoch_every_epoch(shapes):
    online = _OnlineSet(shapes[0])
    config = TrainConfig(model="cnn", optimizer="adam", lr=1e-3, batch_size=64, epochs=3, device="cpu")
    train(config, train_set=online, test_set=shapes[1], progress=False)
    assert online.epochs == [0, 1, 2]
    assert online.batch_calls == 3 * (len(online) // 64)  # one call per training batch


def test_no_diagnostics_images_and_a_seed_at_the_int64_edge(tmp_path, shapes):
    """diagnostics_samples=0 wrote NaN (not JSON) for θ's statistics of no images; a seed near
    2^63, which the config took, overflowed the epoch's generator after the data was loaded;
    a seed past what torch's generators hold is refused by the config."""
    train_set, test_set = shapes
    config = TrainConfig(model="st-cnn-aff", batch_size=64, steps=2, device="cpu", diagnostics_samples=0,
                         seed=2**63 - 1)
    train(config, tmp_path, train_set=train_set, test_set=test_set, progress=False)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1], parse_constant=pytest.fail)
    assert record["theta"] == []
    with pytest.raises(ValueError, match="seed must be"):
        TrainConfig(seed=2**63)


def test_the_device_is_cpu_or_cuda():
    """meta (no values to train on) and devices torch may not be built for (mps, xla) ended in
    tracebacks after the data was loaded."""
    from torchstn.engine import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for name in ("meta", "mps", "xla", "gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(name)


def test_batch_norm_under_ddp_on_the_cpu_is_said(capsys):
    """torch has no CPU SyncBatchNorm: the trainer says that each process then normalises its
    own slice (its gradients differ from one process's), and leaves models without BatchNorm alone."""
    from types import SimpleNamespace

    from torchstn.engine._trainer import _synchronised_batch_norm
    from torchstn.models import create_model

    ddp = SimpleNamespace(device=torch.device("cpu"), world=2, main=True)
    plain = create_model("cnn")
    assert _synchronised_batch_norm(plain, ddp) is plain and capsys.readouterr().err == ""
    with_bn = create_model("cnn1d", input_size=32, num_classes=3)
    assert _synchronised_batch_norm(with_bn, ddp) is with_bn
    assert "normalises its own slice" in capsys.readouterr().err


def test_train_leaves_torch_s_global_settings_as_it_found_them(shapes):
    """A deterministic run restored determinism without its warn_only (a caller's warn-only
    mode came back strict) and left cuDNN's flags as it set them. And under a float64
    default dtype the model was built in float64 for float32 data (conv2d's dtype error):
    it trains in float32, as the data is."""
    train_set, test_set = shapes
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_default_dtype())
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
        torch.set_default_dtype(torch.float64)
        result = train(TrainConfig(model="st-cnn-aff", batch_size=64, steps=1, device="cpu", deterministic=True,
                                   diagnostics_samples=8), train_set=train_set, test_set=test_set, progress=False)
        assert next(result.model.parameters()).dtype == torch.float32
        assert (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, True, True, False)
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:4]
        torch.set_default_dtype(saved[4])


def test_a_dataset_s_own_items_are_what_the_model_sees(shapes):
    """fetch read a TensorDataset's (or any .images holder's) tensors past its class's own
    __getitem__: predict's logits were 1.08 off the model applied to the items."""
    from torch.utils.data import TensorDataset

    from torchstn.engine import predict
    from torchstn.engine._data import fetch
    from torchstn.models import create_model

    class Negated(TensorDataset):
        num_classes, input_shape = 4, (1, 28, 28)

        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return -x, y

    train_set, _ = shapes
    negated = Negated(*train_set.tensors)
    x, y = fetch(negated, torch.arange(5))
    assert torch.equal(x, -train_set.tensors[0][:5]) and torch.equal(y, train_set.tensors[1][:5])
    model = create_model("cnn", num_classes=4).eval()
    logits, _ = predict(model, negated, batch_size=16, limit=8)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(-train_set.tensors[0][:8]))


def test_what_train_cannot_use_of_a_given_dataset_is_an_error(shapes, tmp_path):
    """A train_limit or test_limit with a dataset given to train() was ignored (the run trained
    on all of it, and recorded the limit); a dataset without num_classes or input_shape failed
    with an AttributeError; load_model's which="bset" loaded the last checkpoint."""
    from torch.utils.data import TensorDataset

    from torchstn.engine import load_model

    train_set, test_set = shapes
    with pytest.raises(ValueError, match=r"train_limit=16 takes the first items of the config.s data.*\(256 items\)"):
        train(TrainConfig(model="cnn", steps=1, train_limit=16, device="cpu"), tmp_path / "a",
              train_set=train_set, test_set=test_set, progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match="TensorDataset has no input_shape or num_classes"):
        train(TrainConfig(model="cnn", steps=1, device="cpu"), train_set=TensorDataset(*train_set.tensors),
              test_set=test_set, progress=False)
    train(TrainConfig(model="cnn", batch_size=64, steps=1, device="cpu", diagnostics_samples=0), tmp_path / "b",
          train_set=train_set, test_set=test_set, progress=False)
    with pytest.raises(ValueError, match="which must be one of"):
        load_model(tmp_path / "b", "bset")


def test_a_run_resumes_with_the_config_that_started_it(shapes, tmp_path):
    """model_args holding a tuple: config.json reads it back as a list, and resuming with the
    very same TrainConfig was refused ("the config differs in model_args")."""
    train_set, test_set = shapes
    config = TrainConfig(model="cnn", batch_size=64, epochs=2, device="cpu", diagnostics_samples=0,
                         model_args={"input_size": (28, 28)})
    train(config, tmp_path, train_set=train_set, test_set=test_set, progress=False, stop_after=1)
    result = train(config, tmp_path, train_set=train_set, test_set=test_set, progress=False, resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_pstn_data_loss_is_the_mean_of_its_samples_losses(smoothing):
    """The ELBO's data term, as the authors' code computes it: each of the S samples'
    (smoothed) cross-entropy, averaged; cross_entropy of the model's training output (the mean
    of the samples' log-probabilities) is another objective for S > 1, which training took
    until 2026-12-04. A plain classifier's loss stays cross_entropy of its logits."""
    torch.manual_seed(0)
    model = stn.create_model("p-stn", samples=3, init_scale=0.5)  # (samples that disagree)
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    seen = []
    model.classifier.register_forward_hook(lambda module, args, out: seen.append(out))
    output = model(x)
    (logits,) = seen  # the classifier's logits of the 3 x 4 warped images, sample-major
    expected = F.cross_entropy(logits, y.repeat(3), label_smoothing=smoothing)
    torch.testing.assert_close(data_loss(model, output, y, smoothing), expected)
    assert not torch.allclose(F.cross_entropy(output, y, label_smoothing=smoothing), expected)
    plain = stn.create_model("cnn")
    out = plain(x)
    assert torch.equal(data_loss(plain, out, y, smoothing), F.cross_entropy(out, y, label_smoothing=smoothing))


def test_data_loss_warns_for_a_user_model_around_marginalize_and_reads_wrapped_models():
    """A user's model returning marginalize()'s log-probabilities without saying so was trained on
    cross_entropy of the mean of its samples' log-probabilities, silently; a wrapper (DDP's,
    AveragedModel's `module`) hid the attribute of a model that says it."""
    from torch import nn
    from torch.optim.swa_utils import AveragedModel

    from torchstn.engine import _trainer

    class Mine(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pst = stn.ProbabilisticSpatialTransformer("affine", stn.conv_localization(1, (28, 28)), samples=3,
                                                           init_scale=0.5)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

        def forward(self, x):
            return self.pst.marginalize(self.head(self.pst(x)))

    torch.manual_seed(0)
    model, x, y = Mine(), torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    output = model(x)
    _trainer._WARNED.discard(Mine)
    with pytest.warns(UserWarning, match="Mine holds a ProbabilisticSpatialTransformer .* log_probabilities"):
        assert torch.equal(data_loss(model, output, y), F.cross_entropy(output, y))
    Mine.log_probabilities = True
    try:
        for wrapped in (model, AveragedModel(model)):
            torch.testing.assert_close(data_loss(wrapped, output, y, 0.1),
                                       0.9 * F.nll_loss(output, y) - 0.1 * output.mean())
    finally:
        del Mine.log_probabilities
    ignored = torch.tensor([1, -100, 3, 4])  # smoothed over the rows nll_loss counts, as cross_entropy
    normalised = torch.log_softmax(torch.randn(4, 10), 1)
    stn_model = stn.create_model("p-stn")
    torch.testing.assert_close(data_loss(stn_model, normalised, ignored, 0.1),
                               F.cross_entropy(normalised, ignored, label_smoothing=0.1))
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        data_loss(stn_model, normalised, y, 1.5)


@contextlib.contextmanager
def _registered(name, builder):
    """``builder`` registered as model ``name`` inside only (the registry is the process's)."""
    from torchstn.models._registry import _REGISTRY

    stn.register_model(name)(builder)
    try:
        yield name
    finally:
        _REGISTRY.pop(name)


def _headless_models():
    """Models whose transformers include heads without a θ: a plain cascade of thin-plate splines
    (its steps compose to no single θ) and a Parallel with a head that is no transformer."""
    from torch import nn

    from torchstn.models import STClassifier

    def classifier():
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28 * 2, 4))

    def tps_cascade(in_channels=1, input_size=28, num_classes=4):
        tps, loc = stn.ThinPlateSpline(control=(3, 3)), stn.conv_localization(1, (28, 28))
        cascade = stn.CascadedSpatialTransformer(tps, loc, steps=2, compositional=False)
        plain = stn.SpatialTransformer("affine", stn.conv_localization(1, (28, 28)))
        return STClassifier(classifier(), [cascade, plain], input_shape=(1, 28, 28), num_classes=4)

    def parallel_with_identity(in_channels=1, input_size=28, num_classes=4):
        heads = stn.ParallelSpatialTransformers([stn.SpatialTransformer("affine", stn.conv_localization(1, (28, 28))),
                                                 nn.Identity()])
        return STClassifier(classifier(), [heads], input_shape=(1, 28, 28), num_classes=4)

    return {"tps-cascade": tps_cascade, "parallel-with-identity": parallel_with_identity}


@pytest.mark.parametrize("kind", ["tps-cascade", "parallel-with-identity"])
def test_heads_without_theta_train_and_draw(shapes, tmp_path, kind):
    """A plain TPS cascade (TypeError: a total θ needs a MatrixTransform) and a Parallel's
    nn.Identity head (AttributeError: no predict_params) stopped training at the first
    epoch's θ diagnostics; the diagnostics, the identity penalty and the figure now read the
    one affine head that has a θ, as they would in a model of that head alone."""
    from torchstn.engine import theta_diagnostics

    with _registered(f"test-{kind}", _headless_models()[kind]) as name:
        config = TrainConfig(model=name, optimizer="adam", lr=1e-3, batch_size=32, steps=2, schedule="constant",
                             device="cpu", diagnostics_samples=8, identity_reg=0.1)
        result = train(config, tmp_path / "run", train_set=shapes[0], test_set=shapes[1], progress=False)
        record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        assert [d["transform"] for d in record["theta"]] == ["Affine"]
        model = stn.create_model(name)
        x = shapes[1].tensors[0][:4]
        affine = model.transformers[-1] if kind == "tps-cascade" else model.transformers[0].transformers[0]
        (alone,) = theta_diagnostics([affine], x)
        assert theta_diagnostics(model.transformers, x) == [alone]
        figure = plot_run(model, shapes[1], tmp_path / "run.png", num=2, calibration_images=8)
        assert figure.stat().st_size > 0 and result.final["test_error"] <= 100


class _HeldNet(torch.nn.Module):
    """A user's model holding its transformer as an attribute of its own, no ``transformers`` list."""

    def __init__(self, in_channels=1, input_size=28, num_classes=4):
        super().__init__()
        self.st = stn.SpatialTransformer("affine", stn.conv_localization(in_channels, (28, 28)))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 28 * 28, num_classes))

    def forward(self, x):
        return self.head(self.st(x))


def test_a_user_model_without_a_transformers_list_gets_the_penalty_and_the_diagnostics(shapes, tmp_path):
    """identity_reg found transformers in model.transformers only: for a model holding one as
    self.st it added nothing (the same weights as without it) and the θ diagnostics were empty,
    while loc_lr_mult (param_groups, over model.modules()) found it."""
    with _registered("test-held-net", _HeldNet):
        def trained(reg, out=None):
            config = TrainConfig(model="test-held-net", optimizer="sgd", lr=0.5, batch_size=32, steps=3,
                                 schedule="constant", device="cpu", identity_reg=reg, loc_lr_mult=1.0)
            return train(config, out, train_set=shapes[0], test_set=shapes[1], progress=False)

        plain, pulled = trained(0.0), trained(1000.0, tmp_path / "run")
        a, b = plain.model.st.state_dict(), pulled.model.st.state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a)  # (the same weights before: no penalty)
        record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        assert [d["transform"] for d in record["theta"]] == ["Affine"]


def test_a_dataset_of_dicts_and_a_run_of_an_unregistered_model_are_told_what_to_do(shapes, tmp_path):
    """Items that are dicts failed with a bare KeyError: 0; a run of a model registered by the
    user's code, loaded where that code was not imported, was said to be of another torchstn version."""
    from torchstn.engine import load_model

    class Dicts(torch.utils.data.Dataset):
        num_classes, input_shape = 4, (1, 28, 28)

        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"image": shapes[0][i][0], "label": shapes[0][i][1]}

    config = TrainConfig(model="cnn", steps=1, batch_size=8, device="cpu")
    wanted = r"items must be \(input, label\) pairs, got dict with keys \['image', 'label'\]"
    with pytest.raises(TypeError, match=wanted):
        train(config, train_set=Dicts(), test_set=shapes[1], progress=False)
    with _registered("test-held-net-2", _HeldNet) as name:
        train(config.replace(model=name), tmp_path / "run", train_set=shapes[0], test_set=shapes[1], progress=False)
    with pytest.raises(Exception, match="registered by your code with register_model: import the module"):
        load_model(tmp_path / "run")


def test_transformers_of_a_bare_transformer_and_of_a_model_with_another_transformers_list():
    """A model that is itself a SpatialTransformer listed the transformers nested in its
    localisation net too; a model with an unrelated ``transformers`` list (attention layers)
    hid its own spatial transformer."""
    from torchstn.engine._diagnostics import transformers_of

    inner = stn.SpatialTransformer("translation", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)))
    outer = stn.SpatialTransformer("affine", torch.nn.Sequential(inner, torch.nn.Flatten(), torch.nn.Linear(16, 4)))
    assert transformers_of(outer) == [outer]

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformers = torch.nn.ModuleList([torch.nn.TransformerEncoderLayer(8, 2, 16)])
            self.st = inner

    assert transformers_of(Mixed()) == [inner]
