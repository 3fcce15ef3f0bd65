"""A probabilistic spatial transformer (P-STN), its KL term and its calibration.

The P-STN (Schwöbel et al., arXiv 2004.03637) predicts a distribution over θ, warps
each image by several samples of it and averages the classifier's predictions over
them; the loss adds the KL of that distribution to its prior. The paper's point is
calibration: how well the predicted probabilities match the accuracy, measured here by
the expected calibration error (ECE) of ``torchstn.engine.metrics``. The data are
synthetic: four 5x5 glyphs rendered small at random places on a noisy 32x32 canvas,
by ``stn.warp`` itself.
"""

import torch
from torch import nn

import torchstn as stn
from torchstn.engine.metrics import calibration_bins, expected_calibration_error, negative_log_likelihood

GLYPHS = {  # 5x5 bitmaps, one class each
    "T": ["#####", "..#..", "..#..", "..#..", "..#.."],
    "L": ["#....", "#....", "#....", "#....", "#####"],
    "X": ["#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
    "O": [".###.", "#...#", "#...#", "#...#", ".###."],
}


def make_glyphs(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, size, size)`` and their labels: a glyph at a random scale and place."""
    g = torch.Generator().manual_seed(seed)
    bitmaps = torch.tensor([[[c == "#" for c in row] for row in rows] for rows in GLYPHS.values()]).float()
    labels = torch.randint(len(GLYPHS), (n,), generator=g)
    # Attention θ = (s, tx, ty) maps the canvas to the glyph: the glyph covers 1/s of it
    scale = torch.empty(n, 1).uniform_(2.2, 3.2, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (scale - 1.2)
    theta = torch.cat([scale, shift], 1)
    images = stn.warp(bitmaps[labels, None], theta, stn.Attention(), size=(size, size))
    return (images + 0.4 * torch.rand(n, 1, size, size, generator=g)).clamp(0, 1), labels


class PSTNClassifier(nn.Module):
    """A P-STN in front of a small CNN; returns log-probabilities combined over the samples (in
    training their mean, whose nll_loss is the ELBO's data term; in evaluation the averaged
    prediction's)."""

    def __init__(self, samples: int = 4) -> None:
        super().__init__()
        self.pst = stn.ProbabilisticSpatialTransformer(
            stn.Attention(), stn.conv_localization(1, (32, 32)), output_size=(24, 24),
            samples=samples, test_samples=2 * samples, kl_weight=1e-3,
        )
        self.classifier = nn.Sequential(  # three convolutions, a global max-pool, a linear layer
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
            nn.Flatten(), nn.Linear(32, len(GLYPHS)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warped = self.pst(x)  # (S*B, 1, 24, 24): S warps of each image
        return self.pst.marginalize(self.classifier(warped))  # (B, K) log-probabilities


def main(steps: int = 150, batch: int = 32, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    x_train, y_train = make_glyphs(2048, seed=seed)
    x_test, y_test = make_glyphs(512, seed=seed + 1)
    model = PSTNClassifier()
    optimizer = torch.optim.Adam(stn.param_groups(model, lr=3e-3, loc_lr_mult=0.1))

    losses, kls = [], []
    for step in range(steps):
        i = torch.randint(len(x_train), (batch,))
        nll = nn.functional.nll_loss(model(x_train[i]), y_train[i])
        kl = stn.nn.total_kl(model)  # kl_weight * KL(q(θ | x) || prior) / P (θ's P parameters), from the pass above
        loss = nll + kl  # the negative ELBO per example
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(nll.item())
        kls.append(kl.item())

    model.eval()  # test_samples warps per image
    with torch.no_grad():
        probs = model(x_test).exp()
    ece = expected_calibration_error(probs, y_test).item()
    confidence, accuracy_per_bin, count = calibration_bins(probs, y_test, bins=5)
    k = max(1, steps // 10)
    result = {
        "probs": probs,
        "labels": y_test,
        "first_loss": sum(losses[:k]) / k,
        "last_loss": sum(losses[-k:]) / k,
        "kl": kls,
        "accuracy": (probs.argmax(1) == y_test).float().mean().item(),
        "nll": negative_log_likelihood(probs, y_test).item(),
        "ece": ece,
    }
    print(f"NLL {result['first_loss']:.3f} -> {result['last_loss']:.3f}; weighted KL at the end {kls[-1]:.2e}")
    print(f"test: accuracy {result['accuracy']:.1%}, NLL {result['nll']:.3f}, ECE {ece:.3f}")
    print("reliability (confidence bin: mean confidence / accuracy / images):")
    for m in range(len(count)):
        if count[m]:
            bin_range = f"({m / 5:.1f}, {(m + 1) / 5:.1f}]"
            print(f"  {bin_range}: {confidence[m]:.2f} / {accuracy_per_bin[m]:.2f} / {int(count[m])}")
    return result


if __name__ == "__main__":
    result = main()
