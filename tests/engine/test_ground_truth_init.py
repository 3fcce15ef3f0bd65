"""The IC-STN protocol in the engine (``ground_truth_init``): the model gets the undistorted
digit and the ground-truth perturbation as ``init_params``, in training and evaluation."""

import pytest
import torch

import torchstn as stn
from torchstn.engine import TrainConfig, evaluate, predict, train
from torchstn.engine._data import fetch, fetch_inputs


@pytest.fixture(scope="module")
def perturbed(mnist_dir):
    kw = dict(root=mnist_dir, cache=False)
    return (stn.data.get_dataset("mnist-perturbed", "train", limit=96, **kw),
            stn.data.get_dataset("mnist-perturbed", "test", limit=40, **kw))


@pytest.mark.parametrize("online", [False, True])
def test_ground_truth_renders_the_images(online, mnist_dir):
    ds = stn.data.get_dataset("mnist-perturbed", "train", root=mnist_dir, limit=64, online=online, cache=False)
    index = torch.tensor([3, 0, 63])
    x, y, kwargs = fetch_inputs(ds, index, ground_truth_init=True)
    images, labels = fetch(ds, index)
    assert x.shape == (3, 1, 28, 28) and set(kwargs) == {"init_params"} and kwargs["init_params"].shape == (3, 8)
    assert torch.equal(y, labels)
    rendered = stn.warp(x, kwargs["init_params"], ds.transform, size=(28, 28))
    assert (rendered - images).abs().max() <= 0.5 / 255 + 1e-6  # the uint8 rounding of the stored images
    assert (x - images).abs().max() > 0.1  # and the originals are not the perturbed images


def test_without_the_flag_the_model_gets_the_images(perturbed):
    index = torch.arange(4)
    x, y, kwargs = fetch_inputs(perturbed[0], index)
    assert kwargs == {} and torch.equal(x, fetch(perturbed[0], index)[0])


@pytest.mark.parametrize("model", ["ic-stn-2", "icstn-stn"])
def test_an_untrained_model_predicts_the_same_either_way(perturbed, model):
    # a fresh predictor outputs the identity update, so warping the original by the perturbation
    # (composed with identity updates) is the perturbed image up to its uint8 rounding
    net = stn.create_model(model).eval()
    test = perturbed[1]
    direct, labels = predict(net, test, batch_size=16)
    protocol, labels2 = predict(net, test, batch_size=16, ground_truth_init=True)
    assert torch.equal(labels, labels2)
    torch.testing.assert_close(protocol, direct, atol=2e-3, rtol=0)


def test_training_with_the_protocol_calls_the_model_with_init_params(perturbed, monkeypatch):
    seen = []
    original = stn.models.icstn2017.PerturbedClassifier.forward

    def spy(self, x, init_params=None):
        seen.append(init_params is not None)
        return original(self, x, init_params)

    monkeypatch.setattr(stn.models.icstn2017.PerturbedClassifier, "forward", spy)
    config = TrainConfig(model="ic-stn-1", data="mnist-perturbed", ground_truth_init=True, optimizer="adam",
                         lr=1e-3, batch_size=32, epochs=2, device="cpu", diagnostics_samples=8)
    result = train(config, train_set=perturbed[0], test_set=perturbed[1], progress=False)
    assert seen and all(seen)  # every training and evaluation call had the ground truth
    assert len(result.history) == 2
    again = evaluate(result.model, perturbed[1], ground_truth_init=True)
    assert again["error"] == pytest.approx(result.history[-1]["test_error"])


def test_a_model_without_init_params_is_refused(perturbed):
    config = TrainConfig(model="cnn", data="mnist-perturbed", ground_truth_init=True, steps=1, device="cpu")
    with pytest.raises(ValueError, match="forward takes init_params.*cnn does not"):
        train(config, train_set=perturbed[0], test_set=perturbed[1], progress=False)


def test_a_dataset_without_ground_truth_is_refused(perturbed, mnist_dir):
    plain = stn.data.get_dataset("mnist", "train", root=mnist_dir, limit=64)
    config = TrainConfig(model="ic-stn-1", data="mnist", ground_truth_init=True, steps=1, device="cpu")
    with pytest.raises(ValueError, match="mnist has no ground truth"):
        train(config, train_set=plain, test_set=perturbed[1], progress=False)


def test_the_figure_shows_the_originals_with_the_total_warp(perturbed, tmp_path):
    from torchstn.engine._figures import plot_run

    net = stn.create_model("ic-stn-2").eval()
    out = plot_run(net, perturbed[1], tmp_path / "fig.png", num=3, calibration_images=20, ground_truth_init=True)
    assert out.stat().st_size > 0
    # at initialisation the total warp is the ground truth: the diagnostics see the perturbation
    from torchstn.engine import theta_diagnostics

    x, _, inputs = fetch_inputs(perturbed[1], torch.arange(8), ground_truth_init=True)
    with_init = theta_diagnostics(net.transformers, x, **inputs)[0]["distance"]
    expected = (inputs["init_params"] - stn.Projective().identity()).norm(dim=1).mean().item()
    assert with_init == pytest.approx(expected, rel=1e-5)
    assert theta_diagnostics(net.transformers, x)[0]["distance"] == 0.0
