"""A short seeded training on real RTS-distorted MNIST learns."""

import torch

from torchstn.engine import TrainConfig, evaluate, load_split, train
from torchstn.models import create_model


def test_300_steps_on_rts_lower_the_loss_and_beat_the_untrained_model(mnist_dir):
    config = TrainConfig(
        model="st-cnn-aff", model_args={"pool": 2}, data="mnist-rts", data_dir=str(mnist_dir), train_limit=3000,
        test_limit=500, steps=300, batch_size=32, optimizer="adam", lr=1e-3, schedule="constant", seed=0,
        device="cpu",
    )
    train_set, test_set = load_split(config, "train"), load_split(config, "test")
    torch.manual_seed(config.seed)  # the trainer's initialisation, untrained
    untrained = create_model(config.model, in_channels=1, input_size=42, num_classes=10, pool=2)
    before = evaluate(untrained, test_set)
    result = train(config, None, train_set=train_set, test_set=test_set, progress=False)
    after = result.final
    assert after["step"] == 300
    assert after["test_loss"] < before["loss"] - 0.3
    assert after["test_error"] < before["error"] - 0.2
    assert after["train_loss"] < result.history[0]["train_loss"] or len(result.history) == 1
    # the transformer moved away from the identity without collapsing
    theta = after["theta"][0]
    assert theta["distance"] > 0.01 and after["warnings"] == []
