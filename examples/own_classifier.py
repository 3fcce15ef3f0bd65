"""A spatial transformer in front of your own classifier, trained on your own images.

The images here are synthetic (a square, a disk or a cross, of random size and place on
a noisy 40x40 canvas), so the script downloads nothing; put your own tensors in their
place. The transformer's localisation net learns slower than the classifier
(``stn.param_groups(model, lr, loc_lr_mult=0.1)``), as in the STN paper's training.
"""

import torch
from torch import nn

import torchstn as stn

CLASSES = ("square", "disk", "cross")


def make_shapes(n: int, size: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, size, size)`` in [0, 1] and their labels ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(CLASSES), (n,), generator=g)
    r = torch.empty(n, 1, 1).uniform_(4, 7, generator=g)  # half-size of the shape, in pixels
    cx, cy = (torch.empty(2, n, 1, 1).uniform_(0, 1, generator=g) * (size - 2 * r - 2) + r + 1).unbind(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dx, dy = (xx - cx).abs(), (yy - cy).abs()
    square = (dx <= r) & (dy <= r)
    disk = dx**2 + dy**2 <= r**2
    cross = ((dx <= r / 3) & (dy <= r)) | ((dy <= r / 3) & (dx <= r))
    shapes = torch.stack([square, disk, cross], 1)[torch.arange(n), labels].float()
    noise = 0.3 * torch.rand(n, size, size, generator=g)
    return (shapes * 0.7 + noise).unsqueeze(1), labels


def main(steps: int = 150, batch: int = 32, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x_train, y_train = make_shapes(2048, seed=seed)
    x_test, y_test = make_shapes(512, seed=seed + 1)

    # your classifier, unchanged: it sees the transformer's 20x20 output
    classifier = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        nn.Flatten(), nn.Linear(32, len(CLASSES)),
    )
    # the transformer: a localisation net on the 40x40 input predicts an affine θ
    # (starting at the identity); the sampler reads a 20x20 output through it
    transformer = stn.SpatialTransformer(stn.Affine(), stn.conv_localization(1, (40, 40)), output_size=(20, 20))
    model = nn.Sequential(transformer, classifier)

    # two learning rates: the localisation net (and its regressor) at 0.1x the rest
    groups = stn.param_groups(model, lr=1e-2, loc_lr_mult=0.1)
    optimizer = torch.optim.Adam(groups)

    losses = []
    for step in range(steps):
        i = torch.randint(len(x_train), (batch,))
        loss = nn.functional.cross_entropy(model(x_train[i]), y_train[i])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        theta = transformer.predict_params(x_test)  # what the transformer does to each image
    moved = (theta - stn.Affine().identity(batch=len(theta))).abs().mean().item()
    k = max(1, steps // 10)
    result = {
        "groups": [(g["name"], g["lr"]) for g in groups],
        "first_loss": sum(losses[:k]) / k,
        "last_loss": sum(losses[-k:]) / k,
        "test_accuracy": accuracy,
        "theta_from_identity": moved,
    }
    print(f"learning rates: {result['groups']}")
    print(f"loss {result['first_loss']:.3f} (first {k} steps) -> {result['last_loss']:.3f} (last {k})")
    print(f"test accuracy {accuracy:.1%} on {len(x_test)} images (chance {1 / len(CLASSES):.0%})")
    print(f"the localisation net moved θ from the identity by {moved:.3f} on average (mean |θ - identity|)")
    return result


if __name__ == "__main__":
    result = main()
