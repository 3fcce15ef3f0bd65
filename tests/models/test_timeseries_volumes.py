"""The P-STN paper's time-series models (1-D) and the STN paper's 3-D model, against
independent references: ``F.grid_sample`` for the warps, plain reductions for the projection."""

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.models.pstn2020 import PSTNClassifier
from torchstn.models.timeseries import CNN1D_CHANNELS, ST_CNN1D_CHANNELS, scaled
from torchstn.models.volumes import DepthProjection, VolumeClassifier

#: small widths so the tests run in moments (the architecture is the same)
SMALL = {"channels": (6, 6, 6, 6, 5), "loc_channels": (4, 4, 3)}


def _conv_widths(module):
    return [m.out_channels for m in module.modules() if isinstance(m, torch.nn.Conv1d)]


def test_cnn1d_has_the_authors_layers_and_runs_on_series():
    torch.manual_seed(0)
    model = stn.create_model("cnn1d", input_size=150, num_classes=3)
    assert _conv_widths(model) == list(CNN1D_CHANNELS) and len(model.transformers) == 0
    assert [m.kernel_size[0] for m in model.modules() if isinstance(m, torch.nn.Conv1d)] == [8, 8, 5, 5, 3]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) == 5
    x = torch.randn(4, 1, 150)
    assert model(x).shape == (4, 3) and model.input_shape == (1, 150)
    st = stn.create_model("st-cnn1d-aff", input_size=150)
    assert _conv_widths(st.classifier) == list(ST_CNN1D_CHANNELS)
    assert _conv_widths(st.transformers[0].localization) == [64, 164, 64]


def test_width_scales_every_filter_count():
    model = stn.create_model("st-cnn1d-aff", input_size=100, width=0.5)
    assert _conv_widths(model.classifier) == [98, 128, 128, 128, 32]
    assert _conv_widths(model.transformers[0].localization) == [32, 82, 32]
    assert model.transformers[0].regressor.in_features == 32
    assert scaled((3, 1), 0.1) == (1, 1)
    with pytest.raises(ValueError, match="width must be > 0"):
        stn.create_model("cnn1d", width=0.0)


def test_short_series_need_same_padding():
    with pytest.raises(ValueError, match=r"input_size \(24,\) is too small for the classifier \(or use conv_padding='same'\)"):
        stn.create_model("cnn1d", input_size=24)
    model = stn.create_model("st-cnn1d-aff", input_size=24, conv_padding="same", **SMALL)
    assert model(torch.randn(2, 1, 24)).shape == (2, 2)
    assert model.classifier[:-4](torch.randn(2, 1, 24)).shape == (2, 5, 24)  # the convolutions keep the length
    with pytest.raises(ValueError, match="conv_padding must be one of"):
        stn.create_model("cnn1d", conv_padding="full")


@pytest.mark.parametrize("name", ["st-cnn1d-aff", "pstn-cnn1d-aff", "st-cnn1d-cpab", "pstn-cnn1d-cpab"])
def test_1d_transformers_start_at_the_identity(name):
    torch.manual_seed(0)
    model = stn.create_model(name, input_size=64, in_channels=2, **SMALL).eval()
    x = torch.randn(3, 2, 64)
    st = model.transformers[0]
    family = stn.Affine1D() if name.endswith("aff") else stn.CPAB1D(tessellation=10)
    assert st.transform.num_params == family.num_params
    mean = st.predict_distribution(x)[0] if name.startswith("pstn") else st.predict_params(x)
    torch.testing.assert_close(mean, family.identity(batch=3))
    if name.startswith("st-"):
        torch.testing.assert_close(model.transform_input(x), x, atol=1e-6, rtol=0)


def test_1d_warp_is_grid_sample_on_a_one_row_image():
    """The ST's resampling at a non-identity θ equals F.grid_sample of the series as a 1 x L image."""
    torch.manual_seed(0)
    model = stn.create_model("st-cnn1d-aff", input_size=50, **SMALL)
    st = model.transformers[0]
    x = torch.randn(2, 1, 50, dtype=torch.float64)
    theta = torch.tensor([[0.8, 0.1], [1.1, -0.2]], dtype=torch.float64)
    ours = st.transform_input(x, theta)
    zero, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    rows = torch.stack([torch.stack([theta[:, 0], zero, theta[:, 1]], 1), torch.stack([zero, zero, zero], 1)], 1)
    rows[:, 1, 1] = one  # y stays on the single row
    grid = F.affine_grid(rows, (2, 1, 1, 50), align_corners=False)
    reference = F.grid_sample(x[:, :, None], grid, padding_mode="border", align_corners=False)[:, :, 0]
    torch.testing.assert_close(ours, reference)


def test_pstn_1d_marginalises_over_its_samples_and_has_a_kl():
    torch.manual_seed(0)
    model = stn.create_model("pstn-cnn1d-aff", input_size=40, samples=3, test_samples=4, **SMALL)
    assert isinstance(model, PSTNClassifier) and model.transformers[0].distribution == "student-t"
    x, y = torch.randn(5, 1, 40), torch.tensor([0, 1, 1, 0, 1])
    log_probs = model(x)  # in training the mean of the samples' log-probabilities (the ELBO's term)
    assert bool((log_probs.exp().sum(1) <= 1 + 1e-6).all())
    assert model.transformers[0].last_samples == 3
    loss = F.nll_loss(log_probs, y) + stn.nn.total_kl(model)
    loss.backward()
    assert model.transformers[0].variance_regressor.bias.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        log_probs = model(x)  # the averaged predictive distribution
    assert model.transformers[0].last_samples == 4
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(5))


def test_depth_projection_modes():
    v = torch.rand(2, 3, 5, 4, 6)
    torch.testing.assert_close(DepthProjection("sum")(v), v.sum(2))
    torch.testing.assert_close(DepthProjection("mean")(v), v.mean(2))
    torch.testing.assert_close(DepthProjection("max")(v), v.max(2).values)
    with pytest.raises(ValueError, match="projection must be one of"):
        DepthProjection("min")
    with pytest.raises(ValueError, match=r"takes volumes \(B, C, D, H, W\), got shape \(2, 3, 4, 6\)"):
        DepthProjection()(v[:, :, 0])


def test_volume_models_see_the_projection_and_start_at_the_identity():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 24, 24, 24)
    base = stn.create_model("cnn-3d", input_size=24, pool=2)
    model = stn.create_model("st-cnn-3d-aff", input_size=24, pool=2)
    assert isinstance(model, VolumeClassifier) and len(base.transformers) == 0
    reference = F.avg_pool2d(x.sum(2), 2)  # the raw volume summed along depth, pooled
    torch.testing.assert_close(base.transform_input(x), reference)
    torch.testing.assert_close(model.transform_input(x), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.transformers[0].predict_params(x), stn.Affine3D().identity(batch=2))
    assert model(x).shape == base(x).shape == (2, 10)
    assert model.input_shape == (1, 24, 24, 24)


def test_3d_transformer_samples_the_volume_as_grid_sample_does():
    torch.manual_seed(0)
    model = stn.create_model("st-cnn-3d-aff", input_size=(12, 16, 20), output_size=(6, 8, 10))
    x = torch.rand(2, 1, 12, 16, 20, dtype=torch.float64)
    theta = stn.Affine3D().identity(batch=2, dtype=torch.float64) + 0.1 * torch.randn(2, 12, dtype=torch.float64)
    ours = model.transformers[0].transform_input(x, theta)
    grid = F.affine_grid(theta.view(2, 3, 4), (2, 1, 6, 8, 10), align_corners=False)
    torch.testing.assert_close(ours, F.grid_sample(x, grid, align_corners=False))
    assert model.transform_input(x.float()).shape == (2, 1, 8, 10)


def test_3d_localisation_keeps_its_fc_units_alive_on_sparse_volumes():
    """The FC layer's batch normalisation: with its biases far below 0 (where Adam drove them on
    mnist-3d) the plain layer is 0 for every volume, the normalised one still varies with the input."""
    from torchstn.models.volumes import volume_localization

    torch.manual_seed(0)
    x = torch.zeros(16, 1, 24, 24, 24)
    x[:, :, 8:12, 6:18, 10:14] = torch.rand(16, 1, 1, 1, 1)  # a lit slab in an empty volume
    for batch_norm, alive in ((False, False), (True, True)):
        net = volume_localization(1, (24, 24, 24), batch_norm=batch_norm)
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in net) is batch_norm
        assert isinstance(net[-1], torch.nn.ReLU)
        fc = [m for m in net if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            fc.bias.fill_(-1.0)
        assert bool(net(x).std(0).max() > 0) is alive
    default = stn.create_model("st-cnn-3d-aff", input_size=24)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in default.transformers[0].localization)


def test_3d_localisation_checks_its_input():
    model = stn.create_model("st-cnn-3d-aff", input_size=24)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 24, 24, 24\)"):
        model(torch.rand(1, 1, 24, 24, 20))


def test_cpab_transformer_warps_as_its_grid_says_and_keeps_the_ends():
    """At a non-zero θ the ST resamples where CPAB1D's grid says (checked by grid_sample on a 1 x L image),
    and with the zero boundary the warp keeps the series' first and last points in place."""
    torch.manual_seed(0)
    model = stn.create_model("st-cnn1d-cpab", input_size=40, align_corners=True, **SMALL)
    st = model.transformers[0]
    x = torch.randn(2, 1, 40, dtype=torch.float64)
    theta = 0.7 * torch.randn(2, 9, dtype=torch.float64)
    ours = st.transform_input(x, theta)
    grid_x = st.transform.grid(theta, (40,), align_corners=True)  # (2, 40, 1)
    grid = torch.cat([grid_x, torch.zeros_like(grid_x)], -1)[:, None]  # (2, 1, 40, 2): y on the single row
    reference = F.grid_sample(x[:, :, None], grid, padding_mode="border", align_corners=True)[:, :, 0]
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours[..., [0, -1]], x[..., [0, -1]])
    assert not torch.allclose(ours, x)


def test_pstn_cpab_takes_the_smoothness_prior_only_with_a_gaussian():
    student = stn.create_model("pstn-cnn1d-cpab", input_size=40, **SMALL)
    assert student.transformers[0].prior_precision is None
    gaussian = stn.create_model("pstn-cnn1d-cpab", input_size=40, distribution="gaussian", prior_length_scale=0.3,
                                **SMALL)
    covariance = stn.CPAB1D(tessellation=10).prior_covariance(0.3)
    torch.testing.assert_close(gaussian.transformers[0].prior_precision @ covariance, torch.eye(9), atol=1e-4, rtol=0)
    # a length scale whose covariance the KL cannot use is named (the error named prior_covariance, which
    # this builder takes no part of, and suggested adding eps * I to it)
    for length_scale in (10.0, 0.5):
        with pytest.raises(ValueError, match=rf"prior_length_scale={length_scale:g} over tessellation=10 gives a "):
            stn.create_model("pstn-cnn1d-cpab", input_size=40, distribution="gaussian",
                             prior_length_scale=length_scale, **SMALL)


@pytest.mark.parametrize("name", ["st-cnn1d-aff", "pstn-cnn1d-aff"])
def test_a_1d_model_refuses_a_2d_transform_when_it_is_built(name):
    """``transform`` must warp series: a 2-D one used to build, and the model's first forward pass
    then said that an ``x`` of exactly its ``input_shape`` had the wrong rank."""
    with pytest.raises(ValueError, match=r"transform 'affine' warps 2-D inputs; .* 1-D inputs \(1, 64\)"):
        stn.create_model(name, input_size=64, transform="affine", **SMALL)
    model = stn.create_model(name, input_size=64, transform="cpab", **SMALL)  # any 1-D family is welcome
    assert model(torch.randn(2, *model.input_shape)).shape == (2, 2)
