"""Every nn constructor checks its options in one vocabulary (``torchstn._validation``):
``TypeError`` for a wrong type (a float or a bool where an int is expected), ``ValueError``
for a wrong value, and the message names the argument."""

from collections.abc import Callable

import pytest
import torch
from torch import nn

import torchstn as stn


def _loc() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.Tanh())


#: (argument, a call that passes it as the only changed option)
INT_OPTIONS: dict[str, Callable[[object], object]] = {
    "in_features": lambda v: stn.SpatialTransformer("affine", _loc(), in_features=v),
    "steps": lambda v: stn.CascadedSpatialTransformer("affine", _loc(), steps=v),
    "samples": lambda v: stn.ProbabilisticSpatialTransformer("affine", _loc(), samples=v),
    "test_samples": lambda v: stn.ProbabilisticSpatialTransformer("affine", _loc(), test_samples=v),
    "in_channels": lambda v: stn.conv_localization(v, (8, 8)),
    "hidden": lambda v: stn.conv_localization(1, (8, 8), hidden=v),
    r"channels\[1\]": lambda v: stn.conv_localization(1, (8, 8), channels=(4, v)),
    r"kernel_sizes\[0\]": lambda v: stn.conv_localization(1, (8, 8), kernel_sizes=(v, 3)),
}


@pytest.mark.parametrize("name", INT_OPTIONS)
@pytest.mark.parametrize("value", [2.0, True], ids=["float", "bool"])
def test_an_int_option_refuses_floats_and_bools_with_a_type_error(name, value):
    with pytest.raises(TypeError, match=f"{name} must be an int, got {type(value).__name__}"):
        INT_OPTIONS[name](value)


@pytest.mark.parametrize("name", INT_OPTIONS)
def test_an_int_option_refuses_zero_with_a_value_error(name):
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
        INT_OPTIONS[name](0)


@pytest.mark.parametrize("name", ["compositional", "share"])
def test_cascade_flags_are_real_bools(name):
    with pytest.raises(TypeError, match=f"{name} must be a bool, got int"):
        stn.CascadedSpatialTransformer("affine", _loc(), **{name: 1})


@pytest.mark.parametrize("name", ["prior_alpha", "prior_beta", "prior_sigma", "init_scale", "kl_weight"])
def test_pstn_numbers(name):
    make = lambda v: stn.ProbabilisticSpatialTransformer("affine", _loc(), **{name: v})  # noqa: E731
    with pytest.raises(TypeError, match=f"{name} must be a number, got (bool|str)"):
        make(True)
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        make("1")
    with pytest.raises(ValueError, match=name):
        make(-1.0)
    with pytest.raises(ValueError, match=f"{name} must be a finite number, got nan"):
        make(float("nan"))
    make(2)  # an int is a number


def test_pstn_test_samples_mean_or_an_int():
    assert stn.ProbabilisticSpatialTransformer("affine", _loc(), test_samples="mean").test_samples == "mean"
    with pytest.raises(ValueError, match=r"test_samples must be one of \['mean'\], got 'median'"):
        stn.ProbabilisticSpatialTransformer("affine", _loc(), test_samples="median")
    assert stn.ProbabilisticSpatialTransformer("affine", _loc(), samples=3).test_samples == 3  # default: samples


def test_pstn_kl_weight_may_be_zero():
    assert stn.ProbabilisticSpatialTransformer("affine", _loc(), kl_weight=0).kl_weight == 0.0
    with pytest.raises(ValueError, match="kl_weight must be >= 0.0, got -1.0"):
        stn.ProbabilisticSpatialTransformer("affine", _loc(), kl_weight=-1.0)


def test_input_sizes_of_localisation_nets():
    with pytest.raises(TypeError, match=r"input_size must be \(H, W\) or \(D, H, W\), got int"):
        stn.conv_localization(1, 8)
    with pytest.raises(ValueError, match=r"input_size must be positive"):
        stn.conv_localization(1, (8, 0))
    with pytest.raises(ValueError, match=r"input_size must be \(L,\), \(H, W\) or \(D, H, W\), got \(\)"):
        stn.nn.declare_input(_loc(), 1, ())
    with pytest.raises(TypeError, match="in_channels must be an int, got float"):
        stn.nn.declare_input(_loc(), 1.0, (8, 8))
    assert stn.nn.declare_input(_loc(), 1, [8, 8]).input_shape == (1, 8, 8)


def test_regressor_start_values():
    """The regressor's bias starts at a transform's identity or at the given values."""
    head = stn.nn.make_regressor(_loc(), [0.5, -1.0, 2])
    assert isinstance(head, stn.IdentityRegressor) and head.in_features == 6
    assert head.bias.tolist() == [0.5, -1.0, 2.0] and not head.weight.any()
    head = stn.nn.make_regressor(_loc(), stn.Translation())
    assert head.bias.tolist() == [0.0, 0.0] and head.out_features == 2
    lazy = stn.nn.make_regressor(nn.Flatten(), [0.25] * 3)  # no Linear: in_features from the first batch
    lazy(torch.rand(2, 5))
    assert isinstance(lazy, stn.IdentityRegressor) and lazy.bias.tolist() == [0.25] * 3
    with pytest.raises(TypeError, match="start must be a Transform or a sequence of numbers, got str"):
        stn.nn.make_regressor(_loc(), "affine")
    with pytest.raises(ValueError, match="start must hold at least one value"):
        stn.IdentityRegressor(4, [])
    with pytest.raises(TypeError, match=r"start\[1\] must be a number, got NoneType"):
        stn.IdentityRegressor(4, [0.0, None])
    # finite in float64 but not in the float32 bias: it became inf and every output NaN
    with pytest.raises(ValueError, match=r"start\[0\] must fit in float32 .* got 1e\+39"):
        stn.SpatialTransformer("affine", nn.Sequential(nn.Flatten(), nn.Linear(16, 4)), start=[1e39, 0, 0, 0, 1, 0])


def test_a_transform_must_warp_inputs_of_the_rank_its_localisation_net_declares():
    """A 1-D transform behind a net built for images (or the reverse) is refused where it is built, naming
    ``transform`` (it used to pass, and the first forward pass blamed an ``x`` of the declared shape)."""
    images = stn.conv_localization(1, (28, 28))  # declares (1, 28, 28): 2-D inputs
    series = stn.nn.declare_input(nn.Sequential(nn.Flatten(), nn.Linear(150, 8)), 1, (150,))  # declares (1, 150)
    with pytest.raises(ValueError, match=r"transform 'cpab' warps 1-D inputs; .* 2-D inputs \(1, 28, 28\)"):
        stn.SpatialTransformer("cpab", images)
    with pytest.raises(ValueError, match=r"transform Affine warps 2-D inputs; .* 1-D inputs \(1, 150\)"):
        stn.ProbabilisticSpatialTransformer(stn.Affine(), series)
    with pytest.raises(ValueError, match=r"transform 'affine3d' warps 3-D inputs; .* 2-D inputs"):
        stn.CascadedSpatialTransformer("affine3d", images, compositional=False)
    # the matching ranks build and run; a net that declares nothing is not second-guessed
    assert stn.SpatialTransformer("affine1d", series)(torch.rand(2, 1, 150)).shape == (2, 1, 150)
    assert stn.SpatialTransformer("cpab", nn.Sequential(nn.Flatten(), nn.Linear(150, 8))).transform.ndim == 1


def test_a_sampler_mode_the_transform_cannot_sample_is_refused_where_the_module_is_built():
    """``mode='bicubic'`` with a 3-D transform was taken and refused only by the first forward pass; it is
    refused when the module is built (or its mode set), with the message that forward pass gave."""
    with pytest.raises(ValueError) as sampled:  # the reference: what sampling a volume bicubically says
        stn.sample(torch.rand(1, 1, 2, 2, 2), torch.zeros(1, 2, 2, 2, 3), mode="bicubic")
    volumes = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    builds = [
        lambda: stn.SpatialTransformer("affine3d", volumes, mode="bicubic"),
        lambda: stn.SpatialTransformer(stn.Affine3D(), volumes, sampler=stn.sampling.SamplerOptions(mode="bicubic")),
        lambda: stn.CascadedSpatialTransformer("affine3d", volumes, mode="bicubic"),
    ]
    for build in builds:
        with pytest.raises(ValueError) as built:
            build()
        assert str(built.value) == str(sampled.value)
    st = stn.SpatialTransformer("affine3d", volumes)
    with pytest.raises(ValueError) as set_later:
        st.mode = "bicubic"
    assert str(set_later.value) == str(sampled.value) and st.mode == "bilinear"
    # a 2-D transform samples bicubically
    assert stn.SpatialTransformer("affine", _loc(), mode="bicubic")(torch.rand(2, 1, 8, 8)).shape == (2, 1, 8, 8)


def test_a_subclass_that_gives_its_net_another_view_of_x_is_not_refused():
    """The rank check refused a subclass whose own ``predict_params`` feeds a 2-D net the depth
    projection of a volume: the net does not see ``x`` there, so the declared rank says nothing."""

    class ProjectedST(stn.SpatialTransformer):
        def predict_params(self, x: torch.Tensor) -> torch.Tensor:
            return self.regressor(self.localization(x.sum(2)).flatten(1))

    st = ProjectedST(stn.Affine3D(), stn.conv_localization(1, (16, 16)))
    volume = torch.rand(2, 1, 8, 16, 16)
    assert torch.allclose(st(volume), volume, atol=1e-6)  # (it starts at the identity)


def test_arguments_the_fuzz_found_unchecked_are_named():
    """A cascade's x was used for the identity before it was checked (an integer x blamed a
    "dtype" the caller never passed, None an AttributeError); conv_localization's channels=None
    failed on len(); IdentityRegressor took in_features=True and failed deep in torch on -3;
    output_size set after construction was checked only in the next forward pass, as "size"."""
    cascade = stn.CascadedSpatialTransformer("affine", nn.Sequential(nn.Flatten(), nn.LazyLinear(8)), steps=2)
    with pytest.raises(TypeError, match="x must have a floating-point dtype"):
        cascade(torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got NoneType"):
        cascade(None)
    for name in ("channels", "kernel_sizes"):
        with pytest.raises(TypeError, match=f"{name} must be a sequence of ints, got NoneType"):
            stn.conv_localization(1, (12, 12), **{name: None})
    with pytest.raises(TypeError, match="in_features must be an int, got bool"):
        stn.IdentityRegressor(True, stn.Affine())
    with pytest.raises(ValueError, match="in_features must be >= 1, got -3"):
        stn.IdentityRegressor(-3, stn.Affine())
    st = stn.SpatialTransformer("affine", nn.Sequential(nn.Flatten(), nn.Linear(64, 8)))
    with pytest.raises(TypeError, match="output_size must be a sequence of 2 ints"):
        st.output_size = "4x4"
    st.output_size = [4, 4]
    assert st.output_size == (4, 4) and st(torch.rand(1, 1, 8, 8)).shape == (1, 1, 4, 4)


def test_set_later_a_cascades_output_size_is_checked_against_its_nets_and_collections_are_names():
    """The review's finds: a cascade's output_size set after construction skipped the check the
    constructor makes (the next forward blamed x); conv_localization took numpy arrays of sizes
    before its check, and a set or a dict's keys are names to plan as a list is."""
    import numpy as np

    from torchstn.reproduce import get_experiment, plan

    cascade = stn.CascadedSpatialTransformer("affine", stn.conv_localization(1, (28, 28)), steps=2)
    with pytest.raises(ValueError, match=r"output_size=\(14, 14\): in a compositional cascade"):
        cascade.output_size = (14, 14)
    assert cascade.output_size is None
    cascade.output_size = (28, 28)
    assert cascade(torch.rand(1, 1, 28, 28)).shape == (1, 1, 28, 28)
    net = stn.conv_localization(1, (12, 12), channels=np.array([8, 10]), kernel_sizes=np.array([5, 5]))
    assert net[0].padding == (2, 2) and type(net[0].padding[0]) is int
    experiment = get_experiment("stn-table1")
    assert plan(experiment, "quick", only={"cnn"}) == plan(experiment, "quick", only=["cnn"])


def test_module_path_and_flag_arguments_are_named():
    """The fuzz's remaining finds: non-modules failed with AttributeErrors on .modules(); a cascade's
    init_params on another device was called "params"; TrainConfig took model=None until it was
    used; load_mnist's and distorted_mnist's flags took any truthy value ("False" downloaded) and a
    root of True failed inside pathlib."""
    from torchstn.engine import TrainConfig

    for call, message in ((lambda: stn.param_groups([1], 1e-3), "model must be an nn.Module, got list"),
                          (lambda: stn.nn.total_kl(3), "model must be an nn.Module, got int"),
                          (lambda: stn.nn.declare_input(None, 1, (8, 8)), "net must be an nn.Module, got NoneType"),
                          (lambda: TrainConfig(model=None), "model must be a str, got NoneType"),
                          (lambda: TrainConfig(device=2.5), "device must be a str, got float"),
                          (lambda: stn.data.load_mnist(split="test", download="False"), "download must be a bool"),
                          (lambda: stn.data.load_mnist(split="test", root=True), "root must be a path"),
                          (lambda: stn.data.distorted_mnist("rts", "test", limit=2, cache="no"),
                           "cache must be a bool"),
                          (lambda: stn.data.distorted_mnist("rts", "test", limit=2, cache_dir=3),
                           "cache_dir must be a path")):
        with pytest.raises(TypeError, match=message):
            call()
    cascade = stn.CascadedSpatialTransformer("affine", stn.conv_localization(1, (8, 8)), steps=2)
    with pytest.raises(ValueError, match=r"init_params must be on the device of x \(cpu\), got meta"):
        cascade(torch.rand(1, 1, 8, 8), init_params=torch.zeros(1, 6, device="meta"))
