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
