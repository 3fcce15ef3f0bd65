"""The engine on series (C, L) and volumes (C, D, H, W): model arguments from the data, channels-last
only where it applies, a training run of each kind end to end."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from torchstn.engine import TrainConfig, train
from torchstn.engine._data import dataset_model_args, fetch_inputs, to_channels_last


def _dataset(x, labels, classes):
    data = TensorDataset(x, labels)
    data.num_classes, data.input_shape = classes, tuple(x.shape[1:])
    return data


@pytest.mark.parametrize(("shape", "size"), [((1, 150), [150]), ((3, 32, 32), [32, 32]), ((1, 8, 9, 10), [8, 9, 10])])
def test_model_arguments_follow_the_input_rank(shape, size):
    args = dataset_model_args(SimpleNamespace(input_shape=shape, num_classes=5))
    assert args == {"in_channels": shape[0], "input_size": size, "num_classes": 5}


def test_an_input_shape_of_another_rank_is_named():
    with pytest.raises(ValueError, match=r"input_shape must be \(C, L\), \(C, H, W\) or \(C, D, H, W\), got \(7,\)"):
        dataset_model_args(SimpleNamespace(input_shape=(7,), num_classes=2))


def test_channels_last_converts_4d_weights_only_and_keeps_values():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Conv1d(2, 2, 3), torch.nn.Conv2d(2, 4, 3))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(RuntimeError):  # what torch's own conversion does with a 5-D weight
        torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3)).to(memory_format=torch.channels_last)
    to_channels_last(net)
    assert net[2].weight.is_contiguous(memory_format=torch.channels_last) and not net[2].weight.is_contiguous()
    assert net[0].weight.is_contiguous() and net[1].weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x, _, _ = fetch_inputs(_dataset(torch.rand(4, 1, 5, 6, 7), torch.zeros(4, dtype=torch.long), 2), torch.arange(2),
                           channels_last=True)
    assert x.is_contiguous()  # a volume batch is left as it is


def test_a_volume_model_trains_with_channels_last(tmp_path):
    torch.manual_seed(0)
    labels = torch.arange(24) % 2
    x = torch.rand(24, 1, 12, 12, 12) * 0.1
    x[labels == 1, :, 4:8, 2:10, 5:7] = 1.0  # a bar in class 1
    data = _dataset(x, labels, 2)
    config = TrainConfig(model="st-cnn-3d-aff", data="volumes", steps=3, batch_size=8, optimizer="adam", lr=1e-3,
                         channels_last=True, device="cpu", diagnostics_samples=8)
    result = train(config, tmp_path / "run", train_set=data, test_set=data, progress=False)
    assert result.config.model_args == {"in_channels": 1, "input_size": [12, 12, 12], "num_classes": 2}
    assert result.final["step"] == 3 and 0.0 <= result.final["test_error"] <= 1.0
    assert result.final["theta"][0]["distance"] >= 0.0


def test_a_series_model_trains_and_reports_calibration(tmp_path):
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 48)
    labels = torch.arange(32) % 2
    x = torch.sin(2 * torch.pi * (2 + 2 * labels[:, None].float()) * t)[:, None] + 0.1 * torch.randn(32, 1, 48)
    data = _dataset(x, labels, 2)
    config = TrainConfig(model="pstn-cnn1d-aff", data="series", epochs=2, batch_size=16, optimizer="adam", lr=1e-3,
                         device="cpu", channels_last=True,
                         model_args={"width": 0.05, "samples": 2, "test_samples": 3})
    result = train(config, tmp_path / "run", train_set=data, test_set=data, progress=False)
    assert result.config.model_args["input_size"] == [48]
    assert {"test_ece", "test_nll", "train_kl"} <= set(result.final)
    assert result.final["train_kl"] > 0


def test_inputs_holding_nan_are_named_before_training(tmp_path, capsys):
    """A series with a missing value (load_ucr keeps them NaN) made every loss NaN from the first
    step, and the epoch's warning blamed the transformer (θ not finite, a smaller loc_lr_mult)."""
    torch.manual_seed(0)
    x, labels = torch.randn(16, 1, 64), torch.arange(16) % 2
    x[3, 0, 5] = x[9, 0, 0] = float("nan")
    config = TrainConfig(model="cnn1d", data="series", steps=1, batch_size=8, device="cpu", diagnostics_samples=4)
    train(config, tmp_path / "run", train_set=_dataset(x, labels, 2), test_set=_dataset(x[:4], labels[:4], 2),
          progress=False)
    err = capsys.readouterr().err
    assert "warning: 2 of the 16 train inputs of series hold NaN" in err
    assert "warning: 1 of the 4 test inputs of series hold NaN" in err
