"""SpatialTransformer: starts as the identity, predicts θ, warps feature maps at any depth."""

import pytest
import torch
from torch import nn

import torchstn as stn


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("transform", ["translation", "attention", "similarity", "affine", "projective", "tps"])
def test_new_transformer_is_identity(channels, transform, dtype):
    st = stn.SpatialTransformer(transform, stn.conv_localization(channels, (20, 24))).to(dtype)
    x = torch.rand(3, channels, 20, 24, dtype=dtype)
    out, theta = st(x, return_params=True)
    # the regressor was initialised in float32, so θ holds the identity to float32 precision
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(theta, st.transform.identity(3, dtype=dtype), atol=1e-7, rtol=0)
    assert st.last_params is theta


@pytest.mark.parametrize("output_size", [(10, 12), (40, 48)])
def test_identity_with_other_output_size_is_plain_resampling(output_size):
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(3, (20, 24)), output_size=output_size)
    x = torch.rand(2, 3, 20, 24)
    expected = stn.warp(x, stn.Affine().identity(2), stn.Affine(), size=output_size)
    out = st(x)
    assert out.shape == (2, 3, *output_size)
    torch.testing.assert_close(out, expected)


def test_regressor_starts_at_zero_weights_and_identity_bias():
    st = stn.SpatialTransformer(stn.Projective(), stn.conv_localization(1, (28, 28)))
    assert torch.count_nonzero(st.regressor.weight) == 0
    torch.testing.assert_close(st.regressor.bias.detach(), stn.Projective().identity())


def test_start_sets_the_first_theta_and_survives_reset_parameters():
    start = [0.5, 0.0, 0.25, 0.0, 0.5, -0.25]
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)), output_size=(8, 8), start=start)
    x = torch.rand(2, 1, 16, 16)
    # θ (0.5, 0, 0.25; 0, 0.5, -0.25) shows the 8x8 window whose top-left pixel is (row 2, column 6)
    torch.testing.assert_close(st(x), x[:, :, 2:10, 6:14], atol=1e-6, rtol=0)
    assert torch.count_nonzero(st.regressor.weight) == 0
    st.regressor.reset_parameters()
    torch.testing.assert_close(st.regressor.bias.detach(), torch.tensor(start))
    with pytest.raises(ValueError, match="start must hold the 6 parameters of Affine, got 3"):
        stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)), start=[1.0, 0.0, 0.0])


def test_gradients_reach_the_localization_net():
    st = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (16, 16)))
    x = torch.rand(4, 1, 16, 16)
    target = torch.roll(x, 2, dims=-1)
    nn.functional.mse_loss(st(x), target).backward()
    assert st.regressor.weight.grad.abs().sum() > 0
    assert st.regressor.bias.grad.abs().sum() > 0
    # after one step the weights are non-zero, so the loc net below receives gradient next time
    with torch.no_grad():
        st.regressor.weight.add_(0.01)
    st.zero_grad()
    nn.functional.mse_loss(st(x), target).backward()
    first_conv = st.localization[0]
    assert first_conv.weight.grad.abs().sum() > 0


def test_works_on_feature_maps_inside_a_cnn():
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        stn.SpatialTransformer("affine", stn.conv_localization(16, (28, 28)), output_size=(14, 14)),
        nn.Flatten(),
        nn.Linear(16 * 14 * 14, 10),
    )
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)
    out.sum().backward()


def test_any_localization_module_with_lazy_regressor():
    loc = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2))  # no Linear: width inferred lazily
    st = stn.SpatialTransformer(stn.Attention(), loc)
    x = torch.rand(2, 1, 12, 12)
    torch.testing.assert_close(st(x), x, atol=1e-6, rtol=0)
    assert st.regressor.in_features == 16
    assert isinstance(st.regressor, stn.IdentityRegressor)


def test_explicit_in_features():
    loc = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.Tanh(), nn.Linear(20, 7))
    st = stn.SpatialTransformer(stn.Affine(), loc)
    assert st.regressor.in_features == 7
    with pytest.raises(ValueError, match="in_features must be >= 1, got 0"):
        stn.SpatialTransformer(stn.Affine(), loc, in_features=0)


def test_volumes_and_default_builder_in_3d():
    st = stn.SpatialTransformer(stn.Affine3D(), stn.conv_localization(1, (8, 10, 12)))
    x = torch.rand(2, 1, 8, 10, 12)
    torch.testing.assert_close(st(x), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [(5, 5), (28, 28), (60, 60), (7, 100)])
def test_default_localization_any_size(size):
    net = stn.conv_localization(2, size)
    assert net(torch.rand(3, 2, *size)).shape == (3, 32)


def test_bad_arguments():
    with pytest.raises(TypeError, match="localization must be an nn.Module, got function"):
        stn.SpatialTransformer("affine", lambda x: x)
    with pytest.raises(ValueError, match=r"output_size must be 2 ints \(H, W\), got \(4,\)"):
        stn.SpatialTransformer("affine", stn.conv_localization(1, (8, 8)), output_size=(4,))
    with pytest.raises(ValueError, match="mode must be one of"):
        stn.SpatialTransformer("affine", stn.conv_localization(1, (8, 8)), mode="area")
    with pytest.raises(ValueError, match=r"input_size must be \(H, W\) or \(D, H, W\)"):
        stn.conv_localization(1, (8,))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torch_jit_script_of_a_transformer_names_what_works():
    """Scripting said "Unknown type annotation: 'SamplerOptions' at" (no location, no hint):
    it names tracing and export, which work."""
    from torchstn.models import create_model

    with pytest.raises(TypeError, match=r"cannot be compiled by torch.jit.script; trace it \(torch.jit.trace"):
        torch.jit.script(create_model("st-cnn-aff"))


def test_a_localisation_net_that_returns_a_tuple_is_named():
    """A net returning (features, extra) failed with "'tuple' object has no attribute 'flatten'"."""
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.conv(x).mean((2, 3))
            return f, f

    st = stn.SpatialTransformer("affine", Pair(), in_features=4)
    with pytest.raises(TypeError, match="the localisation net must return one tensor of features, got tuple"):
        st(torch.rand(2, 1, 12, 12))
    # features without x's batch first ((B * F,) failed with "Dimension out of range")
    flat = stn.SpatialTransformer("affine", nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(0)), in_features=400)
    with pytest.raises(ValueError, match=r"must return features of shape \(B, ...\), B = 2 as in x, got shape \(800,\)"):
        flat(torch.rand(2, 1, 12, 12))
