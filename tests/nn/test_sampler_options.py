"""The transformer modules hold their sampling options as one SamplerOptions: given as
``sampler=`` or as the keywords ``mode``/``padding``/``align_corners``/``backend``, never both."""

import copy
import pickle

import pytest
import torch
from torch import nn

import torchstn as stn
from torchstn.sampling import SamplerOptions


def _loc() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh())


MODULES = {
    "st": lambda **kw: stn.SpatialTransformer("affine", _loc(), **kw),
    "cascade": lambda **kw: stn.CascadedSpatialTransformer("affine", _loc(), steps=2, share=False, **kw),
    "pstn": lambda **kw: stn.ProbabilisticSpatialTransformer("affine", _loc(), test_samples="mean", **kw),
}
OPTIONS = SamplerOptions(mode="nearest", padding="border", align_corners=True, backend="torch")


@pytest.mark.parametrize("name", MODULES)
def test_keywords_and_sampler_give_the_same_module(name):
    by_keywords = MODULES[name](mode="nearest", padding="border", align_corners=True, backend="torch")
    by_object = MODULES[name](sampler=OPTIONS)
    assert by_keywords.sampler == by_object.sampler == OPTIONS
    assert (by_object.mode, by_object.padding, by_object.align_corners, by_object.backend) == (
        "nearest", "border", True, "torch"
    )
    assert MODULES[name]().sampler == SamplerOptions()
    assert MODULES[name](padding="reflection", backend=None).sampler == SamplerOptions(padding="reflection")


@pytest.mark.parametrize("name", MODULES)
def test_sampler_and_keywords_together_or_unknown_keywords_are_type_errors(name):
    with pytest.raises(TypeError, match="got sampler= and the sampler keyword.s. padding: give the options either"):
        MODULES[name](sampler=OPTIONS, padding="zeros")
    with pytest.raises(TypeError, match="got an unexpected keyword argument 'paddin'"):
        MODULES[name](paddin="zeros")
    with pytest.raises(TypeError, match="sampler must be a SamplerOptions, got dict"):
        MODULES[name](sampler={"mode": "nearest"})
    with pytest.raises(ValueError, match="padding must be one of"):
        MODULES[name](padding="wrap")
    with pytest.raises(TypeError, match="align_corners must be a bool, got int"):
        MODULES[name](align_corners=1)


@pytest.mark.parametrize("name", MODULES)
def test_the_module_warps_with_its_options(name):
    torch.manual_seed(0)
    module = MODULES[name](sampler=OPTIONS).eval()
    with torch.no_grad():  # a θ that reads outside the input, where the padding shows
        module.regressor.bias.copy_(torch.tensor([1.2, 0.3, 0.4, -0.2, 0.9, -0.5]))
    x = torch.rand(2, 1, 8, 8)
    out = module(x)
    # (the module's backend too: this θ puts points exactly half-way between two pixels, where
    # nearest takes either one as the grid path's matmul or the fused kernel's products round the
    # coordinate; they differ there on an AVX-512 machine)
    expected = stn.warp(x, module.last_params, "affine", mode="nearest", padding="border", align_corners=True,
                        backend="torch")
    assert not torch.allclose(out, stn.warp(x, module.last_params, "affine"))  # the options matter here
    torch.testing.assert_close(out, expected)


def test_setting_a_field_replaces_the_sampler_and_is_validated():
    st = MODULES["st"](padding="border")
    st.backend = "torch"
    assert st.sampler == SamplerOptions(padding="border", backend="torch")
    st.backend = None  # None is the default, as for the keyword
    assert st.sampler.backend == "auto"
    with pytest.raises(ValueError, match="mode must be one of"):
        st.mode = "area"
    assert st.sampler == SamplerOptions(padding="border")
    assert stn.SpatialTransformer.padding.name == "padding"  # read on the class (help(), inspect): no instance


@pytest.mark.parametrize("value", ["bilinear", {"padding": "border"}, None])
def test_setting_the_sampler_is_validated(value):
    """A string set as the sampler was taken, and the next forward failed with an AttributeError."""
    st = MODULES["st"](padding="border")
    with pytest.raises(TypeError, match="sampler must be a SamplerOptions, got"):
        st.sampler = value
    assert st.sampler == SamplerOptions(padding="border")
    st.sampler = OPTIONS
    assert st.sampler is OPTIONS and st.mode == OPTIONS.mode


def test_cascade_steps_share_the_options():
    cascade = MODULES["cascade"](sampler=OPTIONS)
    assert [r.sampler for r in cascade.refiners] == [OPTIONS]


@pytest.mark.parametrize("name", MODULES)
def test_copies_keep_the_options(name):
    module = MODULES[name](sampler=OPTIONS)
    for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert copied.sampler == OPTIONS
    assert "sampler" not in "".join(module.state_dict())  # configuration, not state


def test_backend_none_is_auto_as_in_sample():
    """sample, warp and SpatialTransformer take backend=None as "auto"; SamplerOptions refused it."""
    assert SamplerOptions(backend=None) == SamplerOptions(backend="auto")
