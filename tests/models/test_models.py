import pytest
import torch

import torchstn as stn

# the models of this file's builders (other files register their variants and test them)
PAPER = ["fcn", "cnn"] + [f"st-{k}-{t}" for k in ("fcn", "cnn") for t in ("aff", "proj", "tps")]
MNIST_MODELS = [*PAPER, "tutorial"]
ST_MODELS = [m for m in MNIST_MODELS if m.startswith("st-")] + ["tutorial", "st-cnn-cifar"]
CASES = [(m, 1, s) for m in MNIST_MODELS for s in (28, 42, 60)] + [("st-cnn-cifar", 3, 32)]


@pytest.mark.parametrize("name", stn.list_models())
def test_every_registry_model_runs_on_its_declared_input(name):
    torch.manual_seed(0)
    model = stn.create_model(name)
    x = torch.rand(2, *model.input_shape)
    logits = model(x)
    assert logits.shape == (2, model.num_classes)
    logits.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", stn.list_models())
def test_every_registry_model_names_a_wrong_input(name):
    """Baselines and transformer models alike: one message naming what the model was built
    for, not a matrix-shape error from inside it (nor a silent result for a missing batch axis)."""
    model = stn.create_model(name)
    shape = model.input_shape
    built = rf"was built for in_channels={shape[0]}, input_size=\({', '.join(map(str, shape[1:]))},?\)"
    with pytest.raises(ValueError, match=rf"x must have shape \(B, {', '.join(map(str, shape))}\), got .*{built}"):
        model(torch.rand(2, shape[0] + 1, *shape[1:]))
    with pytest.raises(ValueError, match=rf"x must have shape .*{built}"):
        model(torch.rand(2, *shape[:-1], shape[-1] + 4))
    with pytest.raises(ValueError, match=rf"x must have {len(shape) + 1} dimensions"):
        model(torch.rand(*shape))  # no batch axis
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        model(torch.zeros(2, *shape, dtype=torch.uint8))


@pytest.mark.parametrize("name,channels,size", CASES)
def test_forward_and_backward_on_declared_input(name, channels, size):
    torch.manual_seed(0)
    model = stn.create_model(name, in_channels=channels, input_size=size, num_classes=7)
    assert model.input_shape == (channels, size, size)
    x = torch.rand(3, channels, size, size)
    logits = model(x)
    assert logits.shape == (3, 7)
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the classifier learns, and so does each transformer's regressor (the loc net's
    # own gradient is zero at the start, since the regressor's weights are zero)
    assert all(p.grad.abs().sum() > 0 for p in model.classifier.parameters())
    for st in model.transformers:
        assert st.regressor.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ST_MODELS)
def test_st_models_start_as_the_identity(name):
    channels, size = (3, 32) if name == "st-cnn-cifar" else (1, 42)
    model = stn.create_model(name, in_channels=channels, input_size=size)
    assert len(model.transformers) == 1
    x = torch.rand(2, channels, size, size)
    for st in model.transformers:
        theta = st.predict_params(x)
        assert torch.allclose(theta, st.transform.identity(batch=2), atol=1e-6)
    assert torch.allclose(model.transform_input(x), x, atol=1e-5)


def test_baselines_have_no_transformer():
    for name in ("fcn", "cnn"):
        model = stn.create_model(name)
        assert len(model.transformers) == 0
        x = torch.rand(1, 1, 28, 28)
        assert model.transform_input(x) is x


def test_pool_halves_what_the_classifier_sees():
    model = stn.create_model("st-cnn-aff", input_size=42, pool=2)
    x = torch.rand(2, 1, 42, 42)
    assert torch.allclose(model.transform_input(x), torch.nn.functional.avg_pool2d(x, 2), atol=1e-5)
    assert model(x).shape == (2, 10)


def test_two_parallel_transformers_for_addition():
    model = stn.create_model("st-fcn-aff", in_channels=2, input_size=42, num_classes=19, num_transformers=2)
    assert len(model.transformers) == 2
    x = torch.rand(2, 2, 42, 42)
    assert model.transform_input(x).shape == (2, 4, 42, 42)
    assert model(x).shape == (2, 19)


def test_transform_families_and_parameter_counts():
    expected = {"aff": 6, "proj": 8, "tps": 32}
    for key, p in expected.items():
        st = stn.create_model(f"st-cnn-{key}").transformers[0]
        assert st.transform.num_params == p


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="input_size .* too small for the ST-CNN localisation net"):
        stn.create_model("st-cnn-aff", input_size=16)


def test_baseline_pool_matches_the_st_model_classifier():
    cnn = stn.create_model("cnn", input_size=42, pool=2)
    st = stn.create_model("st-cnn-aff", input_size=42, pool=2)
    x = torch.rand(2, 1, 42, 42)
    assert torch.allclose(cnn.transform_input(x), torch.nn.functional.avg_pool2d(x, 2))
    assert [p.shape for p in cnn.classifier.parameters()] == [p.shape for p in st.classifier.parameters()]


@pytest.mark.parametrize("name", ["cnn", "st-cnn-aff"])
def test_dropout_drops_inputs_of_the_last_fc_layer_while_training_only(name):
    model = stn.create_model(name, input_size=42, pool=2, dropout=0.5)
    plain = stn.create_model(name, input_size=42, pool=2)
    with torch.no_grad():  # dropout has no parameters: the same weights, in the same order
        for mine, theirs in zip(plain.parameters(), model.parameters(), strict=True):
            mine.copy_(theirs)
    x = torch.rand(4, 1, 42, 42)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    features = {}
    model.classifier[-1].register_forward_pre_hook(lambda module, args: features.setdefault("last", args[0]))
    model.train()
    model(x)
    dropped = features["last"] == 0
    assert 0.3 < dropped.float().mean() < 0.8  # half of the 128 inputs of each sample, and those ReLU left at 0
    with pytest.raises(ValueError, match="dropout must be in"):
        stn.create_model(name, dropout=1.0)


def _linear_widths(model):
    return [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("name", ["fcn", "st-fcn-aff"])
def test_fcn_hidden_takes_one_int_or_a_width_per_layer(name):
    """``hidden`` as ``loc_hidden``: one int is one hidden layer (it was a raw "'int' object is not
    iterable"), a sequence a width per layer; every width an int >= 1 (``(0,)`` built a Linear(784, 0))."""
    classifier = lambda **kw: _linear_widths(stn.create_model(name, **kw).classifier)  # noqa: E731
    assert classifier(hidden=64) == classifier(hidden=(64,)) == [64, 10]
    assert classifier(hidden=[24, 12, 8]) == [24, 12, 8, 10]
    assert classifier(hidden=()) == [10]  # no hidden layer: a linear classifier
    with pytest.raises(ValueError, match=r"hidden\[0\] must be >= 1, got 0"):
        stn.create_model(name, hidden=(0,))
    with pytest.raises(ValueError, match="hidden must be >= 1, got -5"):
        stn.create_model(name, hidden=-5)
    with pytest.raises(TypeError, match=r"hidden\[1\] must be an int, got float"):
        stn.create_model(name, hidden=(8, 1.5))
    with pytest.raises(TypeError, match="hidden must be an int, got str"):
        stn.create_model(name, hidden="64")
