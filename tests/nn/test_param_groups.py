"""stn.param_groups: the localisation nets of any model at their own learning rate."""

import pytest
import torch
from torch import nn

import torchstn as stn


class MyClassifier(nn.Module):
    """A user's own model: a transformer nested in a block, a cascade beside it, a frozen layer."""

    def __init__(self) -> None:
        super().__init__()
        loc = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
        self.front = nn.Sequential(stn.SpatialTransformer(stn.Affine(), loc))
        self.cascade = stn.CascadedSpatialTransformer(stn.Translation(), nn.Sequential(nn.Flatten(), nn.Linear(64, 4)),
                                                      steps=2)
        self.frozen = nn.Linear(64, 64).requires_grad_(False)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.frozen(self.cascade(self.front(x)).flatten(1)))


def test_groups_of_a_users_own_model():
    model = MyClassifier()
    groups = stn.param_groups(model, lr=0.01, loc_lr_mult=0.1)
    assert [g["name"] for g in groups] == ["classifier", "localization"]
    assert groups[1]["lr"] == pytest.approx(0.001) and groups[0]["lr"] == 0.01
    loc = {id(p) for p in [*model.front.parameters(), *model.cascade.parameters()]}
    assert {id(p) for p in groups[1]["params"]} == loc
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.head.parameters()}  # frozen left out
    optimizer = torch.optim.SGD(groups, lr=0.01)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    optimizer.step()


def test_no_transformer_gives_one_group_and_bad_rates_are_refused():
    assert [g["name"] for g in stn.param_groups(nn.Linear(3, 2), lr=1.0)] == ["classifier"]
    with pytest.raises(ValueError, match="loc_lr_mult must be >= 0.0, got -0.1"):
        stn.param_groups(nn.Linear(3, 2), lr=1.0, loc_lr_mult=-0.1)
    with pytest.raises(ValueError, match="lr must be >= 0.0, got -1.0"):
        stn.param_groups(nn.Linear(3, 2), lr=-1.0)
    # 0, as torch's optimisers take it: a rate of 0 keeps the localisation nets where they are
    model = stn.create_model("st-cnn-aff")
    frozen = stn.param_groups(model, lr=0.01, loc_lr_mult=0.0)
    assert [(g["name"], g["lr"]) for g in frozen] == [("classifier", 0.01), ("localization", 0.0)]
    torch.optim.SGD(frozen).step()  # (torch accepts the groups)
    with pytest.raises(TypeError, match="lr must be a number"):
        stn.param_groups(nn.Linear(3, 2), lr="0.1")


def test_a_learning_rate_is_taken_as_torch_optim_takes_it():
    """A one-element tensor (the compiled optimiser's recipe) is the group's own, the localisation
    group's a tensor too; a numpy scalar is a number: both were refused ("lr must be a number")."""
    import numpy as np

    model = stn.create_model("st-cnn-aff")
    lr = torch.tensor(1e-3)
    groups = stn.param_groups(model, lr=lr, loc_lr_mult=0.1)
    assert groups[0]["lr"] is lr and isinstance(groups[1]["lr"], torch.Tensor)
    torch.testing.assert_close(groups[1]["lr"], torch.tensor(1e-4))
    torch.optim.Adam(groups)
    assert [g["lr"] for g in stn.param_groups(model, lr=np.float32(0.5), loc_lr_mult=np.float64(0.5))] == [0.5, 0.25]
    for bad, error in ((torch.tensor([1e-3, 2e-3]), "one floating-point value"), (torch.tensor(1), "floating-point"),
                       (np.bool_(True), "must be a number"), (torch.tensor(-1.0), ">= 0")):
        with pytest.raises((TypeError, ValueError), match=error):
            stn.param_groups(model, lr=bad)
