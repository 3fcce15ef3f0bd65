"""Can the ST-CNN's localisation net undo P's homographies at all? The `long` P cell's ST-CNN
trained with its transformer told the answer.

    python benchmarks/p_guided.py --data-dir ../shared/data/mnist [--model st-cnn-proj] [--guide 1.0]

The `stn-table1` `long` recipe on antialiased P (fresh distortions every epoch, Adam with
5% warm-up to lr 2e-3 and cosine decay, batch 64, 20 epochs, labels smoothed by 0.1), with
``--guide`` times the mean squared distance between where the predicted θ and the ideal
θ (the inverse of the digit's own homography, what ``benchmarks/ideal_transformer.py``
warps with) send a 4x4 grid of output points added to the loss. The test error (the
model alone, no ground truth) is printed by how much each digit's homography squeezes it,
as ``benchmarks/p_squeeze.py`` prints it. If a guided transformer undoes the squeezed
digits (and the error falls towards the ideal transformer's), the image holds what the
localisation net needs and the unguided cells fall short in training; if it does not,
this localisation net cannot read it from the image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import torchstn as stn
from torchstn.engine import TrainConfig
from torchstn.engine._trainer import _lr_lambda, build_optimizer

sys.path.insert(0, str(Path(__file__).parent))
from p_squeeze import report, squeezes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", default="st-cnn-proj", help="st-cnn-aff, st-cnn-proj or st-cnn-tps")
    parser.add_argument("--guide", type=float, default=1.0, help="weight of the θ term (0: the unguided cell)")
    parser.add_argument("--robust", action="store_true",
                        help="the θ term as a Huber loss (δ = 1) of the points' coordinates instead of squared "
                             "distances: a bounded pull where a homography sends a point far away")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None, help="train on the first N digits (a smoke test)")
    parser.add_argument("--moved", choices=("source", "target"), default="source",
                        help="the frame P's corners move in (target: the recipe's law until 2026-12-05)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    law = {"supersample": 4, "moved": args.moved}
    train = stn.data.get_dataset("mnist-p", "train", root=args.data_dir, online=True, **law)
    test = stn.data.get_dataset("mnist-p", "test", root=args.data_dir, **law)
    model = stn.create_model(args.model).to(memory_format=torch.channels_last)
    st = model.transformers[0]
    axis = torch.linspace(-0.75, 0.75, 4)
    probe = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(1, 16, 2)
    batch, n = 64, min(len(train), args.train_limit or len(train))
    steps = args.epochs * (n // batch)
    # the engine's optimiser and schedule for the long recipe's settings
    recipe = TrainConfig(model=args.model, data="mnist-p", optimizer="adam", lr=2e-3, batch_size=batch, steps=steps,
                         warmup=0.05, schedule="cosine", loc_lr_mult=1.0, label_smoothing=0.1)
    optimizer = build_optimizer(model, recipe)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe, steps))
    start = time.time()
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        model.train()
        sums = torch.zeros(3)
        for i in range(0, n - batch + 1, batch):
            idx = order[i : i + batch].tolist()
            items = train.__getitems__(idx)
            x = torch.stack([image for image, _ in items]).contiguous(memory_format=torch.channels_last)
            y = torch.tensor([label for _, label in items])
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            objective = loss
            if args.guide:
                ideal = train.transform.inverse(train.ground_truth(idx)[1].double()).float()
                want = train.transform.transform_points(ideal, probe.expand(len(idx), -1, -1))
                got = st.transform.transform_points(st.last_params, probe.expand(len(idx), -1, -1))
                if args.robust:
                    # (Huber's mean over both coordinates of every point is half a squared coordinate
                    # difference near 0: times 4, the mean squared distance there)
                    guide = 4 * F.huber_loss(got, want, delta=1.0)
                else:
                    guide = (got - want).pow(2).sum(-1).mean()
                objective = loss + args.guide * guide
                sums[2] += guide.item() * len(idx)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            schedule.step()
            sums[0] += loss.item() * len(idx)
            sums[1] += (logits.argmax(1) != y).sum()
        seen = (n // batch) * batch
        print(f"epoch {epoch + 1:3d}/{args.epochs}  loss {sums[0] / seen:.4f}  train err {sums[1] / seen:.2%}  "
              f"guide {sums[2] / seen:.4f}  {time.time() - start:.0f} s", flush=True)
    model.eval()
    x = test.images.float().div(255)
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    huber = " (Huber)" if args.robust else ""
    report(f"{args.model} guided {args.guide}{huber} (seed {args.seed})", (logits.argmax(1) != test.labels).float(),
           *squeezes(model, test))


if __name__ == "__main__":
    main()
