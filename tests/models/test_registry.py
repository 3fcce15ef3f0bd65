import pytest
import torch

import torchstn as stn
from torchstn.models import _registry

PAPER = ["fcn", "cnn"] + [f"st-{k}-{t}" for k in ("fcn", "cnn") for t in ("aff", "proj", "tps")]


def test_required_models_are_registered():
    names = stn.list_models()
    for name in [*PAPER, "tutorial", "st-cnn-cifar"]:
        assert name in names
    assert names == sorted(names)
    assert stn.list_models("st-fcn") == ["st-fcn-aff", "st-fcn-proj", "st-fcn-tps"]


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        stn.register_model("cnn")(lambda: torch.nn.Identity())


def test_bad_names_are_rejected():
    for bad in ("CNN-x", "my_net", ""):
        with pytest.raises(ValueError, match="lower-case"):
            stn.register_model(bad)(lambda: torch.nn.Identity())
    with pytest.raises(TypeError, match="model name must be a str, got int"):
        stn.register_model(5)(lambda: torch.nn.Identity())


def test_bare_decorator_uses_the_function_name():
    try:
        @stn.register_model
        def my_test_net(*, width: int = 3) -> torch.nn.Module:
            return torch.nn.Linear(width, 1)

        assert "my-test-net" in stn.list_models()
        assert stn.create_model("my-test-net", width=5).in_features == 5
    finally:
        _registry._REGISTRY.pop("my-test-net", None)


def test_none_overrides_keep_the_model_defaults():
    model = stn.create_model("cnn", input_size=None, num_classes=None, in_channels=None)
    assert model.input_shape == (1, 28, 28)
    assert model.num_classes == 10
    assert stn.create_model("cnn", num_classes=19).num_classes == 19


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'.*st-cnn-aff"):
        stn.create_model("resnet9000")


def test_unknown_argument_names_the_accepted_ones():
    with pytest.raises(TypeError, match="unknown argument.*'widht'.*input_size"):
        stn.create_model("fcn", widht=3)


def test_check_model_args_names_the_accepted_arguments_without_building(monkeypatch):
    from torchstn.models import check_model_args, model_arguments

    # st-cnn-aff passes **classifier_kwargs to the CNN head: a typo used to pass every check
    accepted = model_arguments("st-cnn-aff")
    assert {"pool", "hidden", "channels", "kernel_sizes", "loc_hidden"} <= set(accepted)
    built = []
    original = _registry._REGISTRY["st-cnn-aff"]
    monkeypatch.setitem(_registry._REGISTRY, "st-cnn-aff", _registry.forwards_kwargs(original)(
        lambda **kw: built.append(kw) or original(**kw)))
    with pytest.raises(TypeError, match=r"model 'st-cnn-aff' got unknown argument 'poool'; it takes: .*\bpool\b"):
        check_model_args("st-cnn-aff", {"poool": 2, "pool": 2})
    assert not built
    with pytest.raises(TypeError, match="unknown argument 'poool'.*kernel_sizes"):
        stn.create_model("st-cnn-aff", poool=2)
    assert not built
    with pytest.raises(TypeError, match=r"unknown arguments 'a', 'b'; it takes: hidden, in_channels"):
        check_model_args("fcn", {"b": 1, "a": 2})
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        check_model_args("resnet9000", {})
    check_model_args("st-cnn-aff", {"pool": 2, "hidden": 64, "poool": None})  # None is ignored, as by create_model


def test_every_builder_declares_all_its_arguments():
    from torchstn.models import model_arguments

    # no builder takes an open **kwargs any more, so the CLI catches every misspelt --model-arg
    for name in stn.list_models():
        assert model_arguments(name) is not None, name
    # the forwarded arguments still arrive: a head without its hidden layer, through two hops
    for name in ("st-cnn-aff", "st-cnn-addition"):
        widths = [m.out_features for m in stn.create_model(name, hidden=0).modules() if isinstance(m, torch.nn.Linear)]
        assert 128 not in widths and widths[-1] in (10, 19)
    assert "channels" in model_arguments("st-cnn-addition") and "hidden" in model_arguments("st-fcn-tps")


def test_forwards_kwargs_keeps_an_open_target_open():
    def head(features, *, depth=2, **options):
        return torch.nn.Identity()

    @_registry.forwards_kwargs(head, passed=["features"])
    def net(*, width=8, **kwargs):
        return head(4 * width, **kwargs)

    import inspect

    assert list(inspect.signature(net).parameters) == ["width", "depth", "kwargs"]


@pytest.mark.parametrize("name", [n for n in stn.list_models() if "in_channels" in stn.models.model_arguments(n)])
def test_in_channels_is_checked_for_every_model_before_anything_is_built(name):
    """``in_channels=0`` was blamed on ``input_size`` ("too small for the CNN classifier") or built an FCN
    for empty inputs; ``1.5`` reached torch's raw TypeError. One message naming it, from the CLI's cheap
    check too."""
    from torchstn.models import check_model_args

    checks = (lambda v: check_model_args(name, {"in_channels": v}), lambda v: stn.create_model(name, in_channels=v))
    for check in checks:
        with pytest.raises(ValueError, match="in_channels must be >= 1, got 0"):
            check(0)
        with pytest.raises(TypeError, match="in_channels must be an int, got float"):
            check(1.5)
        with pytest.raises(TypeError, match="in_channels must be an int, got bool"):
            check(True)


@pytest.mark.parametrize(("name", "kwargs", "error", "message"), [
    ("cnn", {"channels": [16.5, 16]}, TypeError, "channels[0] must be an int, got float"),
    ("cnn", {"channels": [0, 32]}, ValueError, "channels[0] must be >= 1, got 0"),
    ("cnn", {"kernel_sizes": [2.5, 7]}, TypeError, "kernel_sizes[0] must be an int, got float"),
    ("cnn", {"channels": 16}, ValueError, "channels and kernel_sizes must have the same length, got (16,) and (9, 7)"),
    ("cnn", {"hidden": [64, 64]}, TypeError, "hidden must be an int, got list"),
    ("st-cnn-aff", {"channels": [32, -1]}, ValueError, "channels[1] must be >= 1, got -1"),
    ("st-cnn-3d-aff", {"input_size": 24, "loc_hidden": 0}, ValueError, "loc_hidden must be >= 1, got 0"),
])
def test_a_cnn_classifiers_sizes_are_named_where_they_are_wrong(name, kwargs, error, message):
    """torch's messages blamed "groups", len() of an int, a list in empty() or the input size,
    and the 3-D localisation net's width was called hidden (another argument of the model)."""
    with pytest.raises(error) as caught:
        stn.create_model(name, **kwargs)
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["cnn1d", "st-cnn1d-aff", "pstn-cnn1d-aff"])
@pytest.mark.parametrize(("argument", "value", "error", "message"), [
    ("channels", [-3, 64, 128, 128, 128], ValueError, "channels[0] must be >= 1, got -3"),
    ("channels", [16.5, 64, 128, 128, 128], TypeError, "channels[0] must be an int, got float"),
    ("channels", 64, TypeError, "channels must be a sequence of ints"),
])
def test_a_1d_models_filter_counts_are_checked_before_they_are_scaled(name, argument, value, error, message):
    """scaled() took int(c) and max(1, ...): -3 filters built a 1-filter convolution, 16.5 one of 16."""
    with pytest.raises(error) as caught:
        stn.create_model(name, **{argument: value})
    assert message in str(caught.value)


def test_a_1d_localisation_nets_filter_counts_are_named():
    with pytest.raises(ValueError, match=r"loc_channels\[1\] must be >= 1, got 0"):
        stn.create_model("st-cnn1d-aff", loc_channels=[8, 0])
