"""The variant models: IC-STN family, MNIST addition, multi-part ST-CNNs, P-STN."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.models.icstn2017 import PerturbedClassifier
from torchstn.models.pstn2020 import PSTNClassifier
from torchstn.models.stn2015 import PartsClassifier

ICSTN = ["icstn-stn", "c-stn-1", "ic-stn-1", "ic-stn-2", "ic-stn-4"]


def test_icstn_models_have_the_paper_capacity():
    # Lin & Lucey 2017, Table 1: the CNN baseline and every STN variant have ~39k parameters
    count = lambda name, **kw: sum(p.numel() for p in stn.create_model(name, **kw).parameters())  # noqa: E731
    assert count("icstn-cnn") == 39079
    assert {count(name) for name in ICSTN} == {39048}  # IC-STN shares one predictor across its warps
    assert count("c-stn-1", steps=4) == 39048 + 3 * (39048 - 12256)  # c-STN: one predictor per step


@pytest.mark.parametrize("name", ICSTN)
def test_icstn_models_start_from_the_known_perturbation(name):
    torch.manual_seed(0)
    model = stn.create_model(name)
    assert isinstance(model, PerturbedClassifier)
    cascade = model.transformers[0]
    assert isinstance(cascade, stn.CascadedSpatialTransformer) and isinstance(cascade.transform, stn.Projective)
    expected_steps = {"icstn-stn": 1, "c-stn-1": 1, "ic-stn-1": 1, "ic-stn-2": 2, "ic-stn-4": 4}[name]
    assert cascade.num_steps == expected_steps
    assert cascade.compositional == (name != "icstn-stn") and cascade.share == name.startswith(("ic-", "icstn"))
    x = torch.rand(3, 1, 28, 28)
    p_init = stn.Projective().identity(3) + 0.05 * torch.randn(3, 8)
    # new models are the identity on top of the perturbation: the classifier sees the perturbed digit
    seen = model.transform_input(x, init_params=p_init)
    torch.testing.assert_close(seen, stn.warp(x, p_init, "projective"), atol=1e-5, rtol=0)
    torch.testing.assert_close(cascade.last_params, p_init, atol=1e-6, rtol=0)
    assert model(x, init_params=p_init).shape == (3, 10)


def test_icstn_cnn_resamples_by_the_perturbation():
    model = stn.create_model("icstn-cnn")
    x, p = torch.rand(2, 1, 28, 28), stn.Projective().identity(2) + 0.05
    torch.testing.assert_close(model.transform_input(x, init_params=p), stn.warp(x, p, "projective"))
    assert model.transform_input(x) is x


def _tiny_addition(mnist_dir: Path, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` two-channel 42x42 inputs, one MNIST digit per channel at a random place; label = their sum."""
    images, labels = stn.data.load_mnist(mnist_dir, "test", download=False)
    images, labels = images[: 2 * n].float() / 255, labels[: 2 * n]
    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 42 - 28 + 1, (2 * n, 2), generator=g).tolist()
    canvas = torch.zeros(2 * n, 42, 42)
    for i, (r, c) in enumerate(offsets):
        canvas[i, r : r + 28, c : c + 28] = images[i]
    return torch.stack([canvas[:n], canvas[n:]], 1), labels[:n] + labels[n:]


def test_st_cnn_addition_trains_on_a_tiny_addition_set(mnist_dir):
    x, y = _tiny_addition(mnist_dir, 128)
    torch.manual_seed(0)
    # the paper's structure (two affine STs in parallel, 4 channels into a CNN), a narrower CNN for speed
    model = stn.create_model("st-cnn-addition", channels=(8, 16), hidden=32, pool=2)
    assert len(model.transformers) == 2 and model.num_classes == 19
    assert model.transform_input(x[:2]).shape == (2, 4, 21, 21)

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(100):
        batch = torch.randint(0, len(y), (32,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    after = loss()
    freq = torch.bincount(y, minlength=19).float() / len(y)
    label_entropy = float(-(freq[freq > 0] * freq[freq > 0].log()).sum())  # the loss of predicting the prior
    assert after < 0.8 * before, (before, after)
    assert after < label_entropy - 0.3, (after, label_entropy)  # it learned more than the label frequencies
    # both transformers were trained
    for st in model.transformers:
        assert st.regressor.weight.abs().sum() > 0


@pytest.mark.parametrize("k", [2, 4])
def test_multi_part_st_cnn(k):
    torch.manual_seed(0)
    made = []

    def backbone(channels: int) -> torch.nn.Module:
        net = torch.nn.Sequential(torch.nn.Conv2d(channels, 5, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
        made.append(net)
        return net

    model = stn.create_model(f"{k}x-st-cnn", in_channels=3, input_size=32, num_classes=7, backbone=backbone)
    assert isinstance(model, PartsClassifier) and len(model.transformers) == k and len(made) == k
    assert model.classifier.in_features == 5 * k
    x = torch.rand(2, 3, 32, 32)
    thetas = model.parallel.predict_params(x)
    centres = {tuple(t[0, 1:].tolist()) for t in thetas}
    assert len(centres) == k  # every part starts on its own region
    assert all(torch.allclose(t[:, 0], torch.tensor(0.5)) for t in thetas)
    assert model.transform_input(x).shape == (2, 3 * k, 16, 16)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(st.regressor.bias.grad.abs().sum() > 0 for st in model.transformers)


@pytest.mark.parametrize("name", ["2x-st-cnn", "4x-st-cnn"])
def test_multi_part_st_cnn_checks_scale_and_backbone(name):
    """A zoom of 0 or below (parts that see one point, or the image mirrored) was accepted, and a
    backbone that is not a factory failed with "'str' object is not callable"."""
    for scale in (0, -0.5):
        with pytest.raises(ValueError, match=f"scale must be > 0, got {float(scale)}"):
            stn.create_model(name, scale=scale)
    with pytest.raises(TypeError, match="scale must be a number, got str"):
        stn.create_model(name, scale="0.5")
    with pytest.raises(TypeError, match=r"backbone must be a callable in_channels -> nn.Module, got str"):
        stn.create_model(name, backbone="foo")
    with pytest.raises(TypeError, match=r"backbone must return an nn.Module, got NoneType"):
        stn.create_model(name, backbone=lambda channels: None)
    assert stn.create_model(name, scale=1).transformers[0].regressor.bias[0] == 1.0


def test_p_stn_model_marginalises_and_exposes_its_kl():
    torch.manual_seed(0)
    model = stn.create_model("p-stn", samples=2, test_samples=5)
    assert isinstance(model, PSTNClassifier)
    pst = model.transformers[0]
    assert isinstance(pst, stn.ProbabilisticSpatialTransformer) and pst.distribution == "student-t"
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([1, 2, 3])
    log_probs = model(x)  # in training: the mean of the 2 samples' log-probabilities
    assert log_probs.shape == (3, 10) and pst.last_samples == 2
    assert bool((log_probs.exp().sum(1) < 1).all())  # (a geometric mean of distributions: below 1)
    loss = F.nll_loss(log_probs, y) + stn.nn.total_kl(model)
    loss.backward()
    assert pst.variance_regressor.bias.grad.abs().sum() > 0 and pst.regressor.bias.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        log_probs = model(x)
    assert pst.last_samples == 5
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(3))


def test_p_stn_refuses_a_transform_that_does_not_warp_images():
    """``transform`` must warp the 2-D images the model is built for: a 1-D family used to build, and the
    first forward pass then blamed an ``x`` of exactly the model's ``input_shape``."""
    with pytest.raises(ValueError, match=r"transform 'cpab' warps 1-D inputs; .* 2-D inputs \(1, 28, 28\)"):
        stn.create_model("p-stn", transform="cpab")
    model = stn.create_model("p-stn", transform="affine")
    assert model(torch.rand(2, *model.input_shape)).shape == (2, 10)


def test_zoom_starts_the_affine_st_models_on_a_central_crop():
    # 2xST-FCN as tensorpack's MNIST addition: each transformer samples 28x28 of the 42x42
    # input and starts on its central crop (zoom 28/42), so it must move to a digit to show it
    x = torch.rand(3, 2, 42, 42)
    for name in ("st-fcn-aff", "st-cnn-aff"):
        model = stn.create_model(name, in_channels=2, input_size=42, num_classes=19, num_transformers=2,
                                 output_size=28, zoom=2 / 3)
        out = model.transform_input(x)
        torch.testing.assert_close(out, torch.cat([x[:, :, 7:35, 7:35]] * 2, dim=1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="zoom must be positive"):
        stn.create_model("st-fcn-aff", zoom=0.0)
