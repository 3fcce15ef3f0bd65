"""The registry's contract while its modules move: the same names, the same checkpoint keys,
builders that are plain functions of the module of their paper, options checked in one
vocabulary and sampling options passed through as one SamplerOptions."""

import copy
import inspect
import sys

import pytest
import torch

import torchstn as stn
from torchstn.models import STClassifier, create_model, get_model_builder, list_models, model_arguments
from torchstn.models.stn2015 import st_cnn_localization
from torchstn.sampling import SamplerOptions

MODELS = [
    "2x-st-cnn", "4x-st-cnn", "c-stn-1", "cnn", "cnn-3d", "cnn1d", "fcn", "ic-stn-1", "ic-stn-2", "ic-stn-4",
    "icstn-cnn", "icstn-stn", "p-stn", "pstn-cnn1d-aff", "pstn-cnn1d-cpab", "st-cnn-3d-aff", "st-cnn-addition", "st-cnn-aff",
    "st-cnn-cifar", "st-cnn-proj", "st-cnn-tps", "st-cnn1d-aff", "st-cnn1d-cpab", "st-fcn-aff", "st-fcn-proj", "st-fcn-tps", "tutorial",
]

#: the module of each paper and the models it defines
PAPERS = {
    "torchstn.models.stn2015": {"fcn", "cnn", "st-fcn-aff", "st-fcn-proj", "st-fcn-tps", "st-cnn-aff", "st-cnn-proj",
                                "st-cnn-tps", "st-cnn-addition", "2x-st-cnn", "4x-st-cnn"},
    "torchstn.models.icstn2017": {"icstn-cnn", "icstn-stn", "c-stn-1", "ic-stn-1", "ic-stn-2", "ic-stn-4"},
    "torchstn.models.pstn2020": {"p-stn"},
    "torchstn.models.tutorial": {"tutorial", "st-cnn-cifar"},
    "torchstn.models.timeseries": {"cnn1d", "st-cnn1d-aff", "pstn-cnn1d-aff", "st-cnn1d-cpab", "pstn-cnn1d-cpab"},
    "torchstn.models.volumes": {"cnn-3d", "st-cnn-3d-aff"},
}

_ST = [f"transformers.0.localization.{i}.{p}" for i in (1, 4, 7) for p in ("weight", "bias")]
_CNN_HEAD = [f"classifier.{i}.{p}" for i in (0, 3, 7, 9) for p in ("weight", "bias")]
_ICSTN_LOC = [f"localization.{i}.{p}" for i in (0, 2, 6) for p in ("weight", "bias")]
_PART = lambda k: [  # noqa: E731
    *(f"parallel.transformers.{k}.localization.{i}.{p}" for i in (0, 3, 7) for p in ("weight", "bias")),
    f"parallel.transformers.{k}.regressor.weight", f"parallel.transformers.{k}.regressor.bias",
]
#: the state_dict keys that saved checkpoints hold: they must keep loading
CHECKPOINT_KEYS = {
    ("st-cnn-aff", ()): [*_ST, "transformers.0.regressor.weight", "transformers.0.regressor.bias", *_CNN_HEAD],
    ("p-stn", ()): [
        *_ST, "transformers.0.regressor.weight", "transformers.0.regressor.bias",
        "transformers.0.variance_regressor.weight", "transformers.0.variance_regressor.bias", *_CNN_HEAD,
    ],
    ("c-stn-1", (("steps", 2),)): [
        *(f"transformers.0.{k}" for k in _ICSTN_LOC), "transformers.0.regressor.weight", "transformers.0.regressor.bias",
        *(f"transformers.0.refiners.0.{k}" for k in _ICSTN_LOC),
        "transformers.0.refiners.0.regressor.weight", "transformers.0.refiners.0.regressor.bias",
        *(f"classifier.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")),
    ],
    ("2x-st-cnn", ()): [
        *_PART(0), *_PART(1), *(f"backbones.{k}.{i}.{p}" for k in (0, 1) for i in (0, 3) for p in ("weight", "bias")),
        "classifier.weight", "classifier.bias",
    ],
}


def test_the_registry_names_are_unchanged():
    assert list_models() == MODELS == stn.list_models()
    with pytest.raises(TypeError, match="pattern must be a str, got int"):  # ('in <string>' requires string)
        list_models(3)


@pytest.mark.parametrize(("name", "overrides"), CHECKPOINT_KEYS)
def test_state_dict_keys_are_unchanged(name, overrides):
    """The sampler options are configuration: no key moved or appeared when they became one object."""
    model = create_model(name, **dict(overrides))
    assert list(model.state_dict()) == CHECKPOINT_KEYS[(name, overrides)]
    model.load_state_dict(create_model(name, **dict(overrides)).state_dict())  # strict load


@pytest.mark.parametrize("module_name", PAPERS)
def test_every_builder_is_a_plain_function_of_its_papers_module(module_name):
    module = sys.modules[module_name]
    source = inspect.getsource(module)
    for name in PAPERS[module_name]:
        builder = get_model_builder(name)
        assert builder.__module__ == module_name, name
        assert builder.__qualname__ == builder.__name__ and getattr(module, builder.__name__) is builder, name
        assert f"@register_model({name!r})\n" in source.replace('"', "'"), name  # findable by grep
        assert f"\ndef {builder.__name__}(" in source, name
        assert builder.__doc__ and len(builder.__doc__.splitlines()) > 2, name
    assert set().union(*PAPERS.values()) == set(MODELS)


@pytest.mark.parametrize("name", ["st-fcn-aff", "st-cnn-tps", "tutorial", "icstn-stn", "ic-stn-2", "p-stn", "4x-st-cnn"])
def test_sampling_options_reach_every_transformer_as_one_object(name):
    model = create_model(name, mode="nearest", padding="border", align_corners=True)
    expected = SamplerOptions(mode="nearest", padding="border", align_corners=True)
    assert model.transformers and all(st.sampler == expected for st in model.transformers)
    assert all(st.sampler == SamplerOptions() for st in create_model(name).transformers)
    with pytest.raises(ValueError, match="padding must be one of"):
        create_model(name, padding="wrap")


#: (model, argument) of every int option the builders check themselves
INT_ARGUMENTS = [
    ("fcn", "pool"), ("cnn", "pool"), ("st-fcn-aff", "pool"), ("st-cnn-proj", "pool"),
    ("st-fcn-tps", "num_transformers"), ("st-cnn-aff", "num_transformers"),
    ("st-cnn-aff", "loc_hidden"), ("st-fcn-proj", "loc_hidden"), ("st-cnn-addition", "loc_hidden"),
    ("st-cnn-tps", "loc_channels"), ("st-cnn-proj", "loc_pool"), ("st-cnn-addition", "loc_pool"),
    ("c-stn-1", "steps"), ("st-cnn-aff", "steps"), ("st-cnn-proj", "steps"),
    ("p-stn", "samples"), ("p-stn", "test_samples"),
]


@pytest.mark.parametrize(("name", "argument"), INT_ARGUMENTS)
def test_int_arguments_refuse_floats_bools_and_zero(name, argument):
    for wrong_type in (2.0, True):
        with pytest.raises(TypeError, match=f"{argument} must be an int, got {type(wrong_type).__name__}"):
            create_model(name, **{argument: wrong_type})
    with pytest.raises(ValueError, match=f"{argument} must be >= 1, got 0"):
        create_model(name, **{argument: 0})


@pytest.mark.parametrize("name", [n for n in list_models() if "num_classes" in (model_arguments(n) or ())])
def test_num_classes_is_checked_for_every_model(name):
    """Once 0 built a model of empty logits and -1 or 2.5 failed inside torch's layers."""
    for wrong_type in (2.5, True):
        with pytest.raises(TypeError, match=f"num_classes must be an int, got {type(wrong_type).__name__}"):
            create_model(name, num_classes=wrong_type)
    for wrong in (0, -1):
        with pytest.raises(ValueError, match=f"num_classes must be >= 1, got {wrong}"):
            create_model(name, num_classes=wrong)


def test_st_fcn_localisation_widths_one_or_per_layer():
    widths = lambda m: [l.out_features for l in m.transformers[0].localization if isinstance(l, torch.nn.Linear)]  # noqa: E731,E741
    assert widths(create_model("st-fcn-aff")) == [32, 32]
    assert widths(create_model("st-fcn-aff", loc_hidden=16)) == [16]
    assert widths(create_model("st-fcn-aff", loc_hidden=[24, 12, 8])) == [24, 12, 8]
    with pytest.raises(ValueError, match=r"loc_hidden\[1\] must be >= 1, got 0"):
        create_model("st-fcn-aff", loc_hidden=[8, 0])
    with pytest.raises(TypeError, match="loc_hidden must be an int, got list"):
        create_model("st-cnn-aff", loc_hidden=[8])  # the ST-CNN net has one FC layer


@pytest.mark.parametrize("name", ["st-fcn-aff", "st-fcn-proj", "st-fcn-tps"])
def test_st_fcn_takes_the_st_cnn_localisation_net_and_keeps_its_fcn(name):
    conv = create_model(name, loc="cnn", in_channels=2, input_size=42, num_classes=19, num_transformers=2)
    plain = create_model(name, in_channels=2, input_size=42, num_classes=19, num_transformers=2)
    for st in conv.transformers:  # the ST-CNN's net (two 5x5 convolutions, FC 20) on each transformer
        convs = [m for m in st.localization.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(2, 20, (5, 5)), (20, 20, (5, 5))]
    assert not any(isinstance(m, torch.nn.Conv2d) for m in plain.modules())
    # the classifier is the FCN's, the same layers, and the model runs and starts at the identity
    assert str(conv.classifier) == str(plain.classifier)
    x = torch.rand(3, 2, 42, 42)
    torch.testing.assert_close(conv.transform_input(x), plain.transform_input(x))
    assert conv(x).shape == (3, 19)
    with pytest.raises(ValueError, match="loc must be one of"):
        create_model(name, loc="rnn")


def test_st_cnn_localisation_resolution_and_width():
    """``loc_pool`` and ``loc_channels`` change only the localisation net's input resolution and
    filters: the default is the paper's net, ``loc_pool=1`` sees the input at full resolution."""
    def loc(m):
        return m.transformers[0].localization

    paper, full, wide = (create_model("st-cnn-aff", **kw) for kw in ({}, {"loc_pool": 1}, {"loc_channels": 32}))
    assert loc(paper)[0].kernel_size == 2 and loc(full)[0].kernel_size == 1
    assert [k for k in loc(paper).state_dict()] == [k for k in loc(full).state_dict()]  # same layer names
    x = torch.rand(3, 1, 28, 28)
    # without the pooling, the convolutions see 28x28: 24 -> 12 -> 8, so the FC layer reads 20 * 8 * 8 features
    assert loc(full)[-2].in_features == 20 * 8 * 8 and loc(paper)[-2].in_features == 20 * 1 * 1
    assert loc(wide)[1].out_channels == 32 and loc(wide)[-2].in_features == 32
    for m in (paper, full, wide):
        assert m(x).shape == (3, 10)
    torch.testing.assert_close(loc(paper)[0](x), torch.nn.functional.avg_pool2d(x, 2))


def test_st_cnn_cascade_composes_its_one_net():
    """``steps=N`` makes the ST-CNN's transformer a recurrent cascade of its one localisation
    net: as many parameters as one step, and N equal translation updates move the input by
    N times the translation (against ``F.affine_grid + F.grid_sample``)."""
    one, three = create_model("st-cnn-aff"), create_model("st-cnn-aff", steps=3)
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in three.parameters())
    cascade = three.transformers[0]
    assert cascade.num_steps == 3 and cascade.compositional and cascade.share
    with torch.no_grad():
        cascade.regressor.weight.zero_()
        cascade.regressor.bias.copy_(torch.tensor([1.0, 0.0, 0.1, 0.0, 1.0, -0.05]))
    x = torch.rand(2, 1, 28, 28)
    theta = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, -0.15]]).expand(2, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, (2, 1, 28, 28), align_corners=False)
    expected = torch.nn.functional.grid_sample(x, grid, align_corners=False)
    torch.testing.assert_close(three.transform_input(x), expected, atol=1e-5, rtol=0)
    assert three(x).shape == (2, 10)
    assert create_model("st-cnn-proj", steps=2).transformers[0].num_steps == 2
    with pytest.raises(ValueError, match="a cascade .* takes no zoom"):
        create_model("st-cnn-aff", steps=2, zoom=0.5)


def test_st_classifier_pool():
    for wrong_type in (2.0, True):
        with pytest.raises(TypeError, match="pool must be an int"):
            STClassifier(torch.nn.Identity(), pool=wrong_type, input_shape=(1, 4, 4), num_classes=2)
    with pytest.raises(ValueError, match="pool must be >= 1, got 0"):
        STClassifier(torch.nn.Identity(), pool=0, input_shape=(1, 4, 4), num_classes=2)


@pytest.mark.parametrize("pool", [1, 2])
@pytest.mark.parametrize("channels", [1, 3])
def test_st_cnn_localisation_runs_channels_last_with_the_values_of_nchw(pool, channels):
    """The ST-CNN localisation net hands its convolutions a channels_last tensor on the CPU
    (one channel too, whose NCHW strides torch also calls channels_last), and computes what
    the same layers compute in NCHW: the plain ``nn.AvgPool2d`` / ``nn.Identity`` in front,
    values and parameter gradients to float rounding."""
    net = st_cnn_localization(channels, (28, 28), pool=pool)
    plain = copy.deepcopy(net)
    plain[0] = torch.nn.AvgPool2d(pool) if pool > 1 else torch.nn.Identity()
    x = torch.rand(5, channels, 28, 28)
    first = net[:2](x)
    assert first.is_contiguous(memory_format=torch.channels_last) and first.stride(1) == 1
    assert plain[:2](x).stride(1) != 1  # (the reference runs in NCHW)
    out, ref = net(x), plain(x)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.square().sum(), list(net.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(plain.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert net[0](x[0]).shape == plain[0](x[0]).shape  # an unbatched (C, H, W) input passes as it is
    # inside torch.func.vmap (which cannot ask for a layout) the tensor is handed on as it is
    per_image = torch.func.vmap(lambda image: net(image.unsqueeze(0)).squeeze(0))(x)
    torch.testing.assert_close(per_image, ref)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_st_cnn_localisation_net_compiles_with_torch_jit_script():
    """The localisation net alone stays scriptable (as torch.nn's layers and stn.nn.Conv2d are)."""
    net = st_cnn_localization(1, (28, 28))
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))
