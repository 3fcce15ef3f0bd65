"""CascadedSpatialTransformer: identity start, closed-form composition, and the boundary effect."""

import math
import warnings

import pytest
import torch
from torch import nn

import torchstn as stn
from torchstn.transforms import base_grid


def _loc(channels: int, size: tuple[int, int]) -> nn.Module:
    # a small localisation net with random (non-zero) weights
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size[0] * size[1], 8), nn.Tanh())


def _set_steps(cascade: stn.CascadedSpatialTransformer, params: list[torch.Tensor]) -> None:
    """Make step k predict params[k] whatever it sees (zero weights, bias = params[k])."""
    regressors = [cascade.regressor] + [r.regressor for r in cascade.refiners]
    assert len(regressors) == len(params)
    with torch.no_grad():
        for reg, p in zip(regressors, params):
            reg.weight.zero_()
            reg.bias.copy_(p)


def _affine_matrix(p: torch.Tensor) -> torch.Tensor:
    """(6,) rows of a 2x3 affine -> its 3x3 homogeneous matrix, written out by hand."""
    return torch.tensor([[p[0], p[1], p[2]], [p[3], p[4], p[5]], [0.0, 0.0, 1.0]], dtype=p.dtype)


@pytest.mark.parametrize("compositional", [True, False])
@pytest.mark.parametrize("share", [True, False])
def test_identity_steps_give_the_identity(compositional, share, dtype):
    torch.manual_seed(0)
    cascade = stn.CascadedSpatialTransformer(
        stn.Affine(), _loc(2, (12, 10)), steps=3, compositional=compositional, share=share
    ).to(dtype)
    x = torch.rand(4, 2, 12, 10, dtype=dtype)
    out, theta = cascade(x, return_params=True)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    identity = stn.Affine().identity(4, dtype=dtype)
    torch.testing.assert_close(theta, identity, atol=1e-6, rtol=0)
    assert len(cascade.last_step_params) == 3
    for dp in cascade.last_step_params:
        torch.testing.assert_close(dp, identity, atol=1e-6, rtol=0)


@pytest.mark.parametrize("compositional", [True, False])
def test_known_affine_steps_compose_to_the_matrix_product(compositional):
    torch.manual_seed(1)
    dtype = torch.float64
    steps = [
        torch.tensor([0.9, 0.1, 0.05, -0.08, 1.1, -0.04], dtype=dtype),
        torch.tensor([1.05, -0.12, -0.03, 0.1, 0.95, 0.06], dtype=dtype),
        torch.tensor([0.97, 0.04, 0.02, 0.03, 1.02, -0.05], dtype=dtype),
    ]
    size = (24, 20)
    cascade = stn.CascadedSpatialTransformer(
        stn.Affine(), _loc(1, size), steps=3, compositional=compositional, share=False, padding="border"
    ).to(dtype)
    _set_steps(cascade, steps)
    # a linear ramp: bilinear interpolation reproduces it exactly inside the pixel-centre hull
    points = base_grid(size, dtype=dtype)  # (N, 2) output pixel centres (x, y)
    ramp = lambda p: 0.3 * p[..., 0] - 0.5 * p[..., 1] + 1.0  # noqa: E731
    x = ramp(points).reshape(1, 1, *size)
    out, theta = cascade(x, return_params=True)

    matrix = _affine_matrix(steps[0]) @ _affine_matrix(steps[1]) @ _affine_matrix(steps[2])
    expected_theta = matrix[:2].reshape(1, 6)
    torch.testing.assert_close(theta, expected_theta, atol=1e-12, rtol=0)

    # every output pixel reads the input at M g: compare with the ramp there, away from the
    # border (for the plain cascade also the intermediate images must have been exact there:
    # the partial chains M3 g and M2 M3 g stay a margin of ~2 pixels inside too)
    half = torch.tensor([(size[1] - 1) / size[1], (size[0] - 1) / size[0]], dtype=dtype)
    inside = torch.ones(len(points), dtype=torch.bool)
    chain = torch.eye(3, dtype=dtype)
    for p in reversed(steps):
        chain = _affine_matrix(p) @ chain
        source = points @ chain[:2, :2].T + chain[:2, 2]
        inside &= (source.abs() <= half - 0.2).all(-1)
    assert inside.sum() > 0.3 * inside.numel()
    torch.testing.assert_close(out.reshape(-1)[inside], ramp(source)[inside], atol=1e-10, rtol=0)
    if compositional:  # one resampling of the original: exactly one warp by the composed θ
        torch.testing.assert_close(out, stn.warp(x, expected_theta, "affine", padding="border"), atol=1e-12, rtol=0)


def _lost_fraction(compositional: bool) -> float:
    size = (32, 32)
    cascade = stn.CascadedSpatialTransformer(
        stn.Similarity(), _loc(1, size), steps=4, compositional=compositional, share=False
    )
    angle = math.radians(22.5)
    _set_steps(cascade, [torch.tensor([1.0, angle, 0.0, 0.0])] * 4)  # 4 x 22.5° = one 90° rotation
    ones = torch.ones(1, 1, *size)
    with torch.no_grad():
        out = cascade(ones)
    torch.testing.assert_close(cascade.last_params[0, 1], torch.tensor(4 * angle))
    return float(1 - out.mean())


def test_compositional_cascade_loses_fewer_border_pixels_than_the_plain_one():
    plain, compositional = _lost_fraction(False), _lost_fraction(True)
    # a 90° rotation maps the square onto itself: one resampling of the original loses
    # nothing, while four 22.5° resamplings cut the corners at every step (the boundary
    # effect, IC-STN section 3.1); measured: plain 21% of the image lost, compositional 0%
    assert compositional < 1e-3
    assert plain > 0.15, (plain, compositional)


def test_init_params_start_the_estimate():
    torch.manual_seed(2)
    x = torch.rand(3, 1, 16, 16)
    p0 = stn.Affine().identity(3) + 0.05 * torch.randn(3, 6)
    for compositional in (True, False):
        cascade = stn.CascadedSpatialTransformer(stn.Affine(), _loc(1, (16, 16)), steps=2, compositional=compositional)
        out, theta = cascade(x, return_params=True, init_params=p0)
        torch.testing.assert_close(theta, p0, atol=1e-6, rtol=0)
        torch.testing.assert_close(out, stn.warp(x, p0, "affine"), atol=1e-5, rtol=0)
        torch.testing.assert_close(cascade.predict_params(x, init_params=p0), p0, atol=1e-6, rtol=0)


def test_share_and_separate_predictors():
    loc = _loc(1, (8, 8))
    shared = stn.CascadedSpatialTransformer("projective", loc, steps=4, share=True)
    assert len(shared.refiners) == 0 and shared.localization is loc
    separate = stn.CascadedSpatialTransformer("projective", loc, steps=4, share=False)
    assert len(separate.refiners) == 3
    assert sum(p.numel() for p in separate.parameters()) == 4 * sum(p.numel() for p in shared.parameters())
    # the copies are re-initialised: their own random weights
    assert not torch.equal(separate.refiners[0].localization[1].weight, loc[1].weight)
    given = [_loc(1, (8, 8)) for _ in range(2)]
    explicit = stn.CascadedSpatialTransformer("affine", given, steps=2, share=False)
    assert explicit.localization is given[0] and explicit.refiners[0].localization is given[1]


def test_separate_copies_of_a_net_they_cannot_reinitialise_warn():
    """share=False re-initialises each copy's layers through reset_parameters(); a net holding its
    weights as a plain nn.Parameter was copied with the same values for every step, silently."""
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 8))
            self.head = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1) @ self.w)

    with pytest.warns(UserWarning, match=r"share=False: the localization net's w belong to modules without "
                                         r"reset_parameters\(\)"):
        cascade = stn.CascadedSpatialTransformer("affine", Plain(), steps=3, share=False, in_features=8)
    assert torch.equal(cascade.refiners[0].localization.w, cascade.localization.w)  # (as the warning says)
    assert not torch.equal(cascade.refiners[0].localization.head.weight, cascade.localization.head.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # layers torch re-initialises, or one net: nothing to say
        stn.CascadedSpatialTransformer("affine", _loc(1, (8, 8)), steps=3, share=False)
        stn.CascadedSpatialTransformer("affine", Plain(), steps=3, share=True, in_features=8)


def test_gradients_reach_every_step():
    torch.manual_seed(3)
    cascade = stn.CascadedSpatialTransformer("affine", _loc(1, (12, 12)), steps=3, share=False)
    x = torch.rand(2, 1, 12, 12)
    nn.functional.mse_loss(cascade(x), torch.roll(x, 1, dims=-1)).backward()
    regressors = [cascade.regressor] + [r.regressor for r in cascade.refiners]
    for reg in regressors:
        assert reg.bias.grad is not None and reg.bias.grad.abs().sum() > 0


def test_plain_cascade_accepts_non_matrix_transforms():
    cascade = stn.CascadedSpatialTransformer("tps", _loc(1, (10, 10)), steps=2, compositional=False)
    x = torch.rand(2, 1, 10, 10)
    torch.testing.assert_close(cascade(x), x, atol=1e-5, rtol=0)
    assert cascade.last_params is None and len(cascade.last_step_params) == 2
    with pytest.raises(TypeError, match="MatrixTransform"):
        cascade.predict_params(x)


def test_bad_arguments():
    with pytest.raises(TypeError, match="MatrixTransform"):
        stn.CascadedSpatialTransformer("tps", _loc(1, (8, 8)), compositional=True)
    with pytest.raises(ValueError, match="steps"):
        stn.CascadedSpatialTransformer("affine", _loc(1, (8, 8)), steps=0)
    with pytest.raises(ValueError, match="one net per step"):
        stn.CascadedSpatialTransformer("affine", [_loc(1, (8, 8))] * 2, steps=3, share=False)
    with pytest.raises(TypeError, match="localization"):
        stn.CascadedSpatialTransformer("affine", "not a module")


def test_cascade_is_a_spatial_transformer_with_an_output_size():
    cascade = stn.CascadedSpatialTransformer("affine", stn.conv_localization(1, (14, 14)), steps=2, output_size=(14, 14))
    assert isinstance(cascade, stn.SpatialTransformer)
    x = torch.rand(2, 1, 28, 28)  # the steps look at 14x14 warps of the 28x28 input
    out = cascade(x)
    assert out.shape == (2, 1, 14, 14)
    assert cascade.predict_params(x).shape == (2, 6)


def test_init_params_errors_name_init_params():
    """A wrong init_params was reported as "params" (transform_input's check)."""
    cascade = stn.CascadedSpatialTransformer("affine", stn.conv_localization(1, (16, 16)), steps=2)
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match=r"init_params must have the batch size of x \(2\), got \(3, 6\)"):
        cascade(x, init_params=stn.Affine().identity(3))
    with pytest.raises(ValueError, match=r"init_params for Affine must have shape \(B, 6\)"):
        cascade(x, init_params=torch.zeros(2, 4))


@pytest.mark.parametrize("compositional, steps", [(True, 1), (True, 2), (False, 2)])
def test_an_output_size_the_steps_nets_were_not_built_for_is_refused_where_the_cascade_is_built(compositional, steps):
    """The steps look at warps of output_size (every step of a compositional cascade, the later
    steps of a plain one): a net declared for the input's size failed in the first forward pass,
    blaming x with a shape the caller had not passed (the module's own warp)."""
    loc = stn.conv_localization(1, (16, 16))
    with pytest.raises(ValueError, match=r"output_size=\(8, 8\): .* built for input_size=\(16, 16\)"):
        stn.CascadedSpatialTransformer("affine", loc, steps=steps, compositional=compositional, output_size=(8, 8))
    plain = stn.CascadedSpatialTransformer("affine", loc, steps=1, compositional=False, output_size=(8, 8))
    assert plain(torch.rand(2, 1, 16, 16)).shape == (2, 1, 8, 8)  # (its one step sees the input itself)
    fits = stn.conv_localization(1, (8, 8))
    cascade = stn.CascadedSpatialTransformer("affine", [loc, fits], steps=2, compositional=False, share=False,
                                             output_size=(8, 8))
    assert cascade(torch.rand(2, 1, 16, 16)).shape == (2, 1, 8, 8)


def test_a_subclass_that_gives_its_nets_another_view_is_not_judged_by_output_size():
    """The check of output_size against the nets' declared input is for the nets torchstn feeds:
    a subclass's own ``features`` (a resize to the net's size) built before and must still."""
    import torch.nn.functional as F

    class Resized(stn.CascadedSpatialTransformer):
        def features(self, x):
            return super().features(F.interpolate(x, size=(16, 16)))

    cascade = Resized("affine", stn.conv_localization(1, (16, 16)), steps=2, output_size=(8, 8))
    assert cascade(torch.rand(2, 1, 16, 16)).shape == (2, 1, 8, 8)
