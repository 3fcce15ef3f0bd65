"""Training-step speed of the engine options: channels_last and bf16 autocast, alone and together.

    python benchmarks/bench_engine_options.py [--model st-cnn-aff] [--batch 64] [--rounds 11]
        [--settings fp32 channels_last] [--no-evaluation]

One thread, one process; the four settings are timed in interleaved rounds (each
round times each setting once, rotating who goes first), on the model an
``stn-table1`` RTS cell trains (42x42 input, ``pool=2``) and an Adam step, through
the engine's own pieces (``TrainConfig`` → ``create_model``, ``to_channels_last``, ``fetch_inputs``,
``precision_context``). Prints the median time per step and per-round ratios to fp32
(> 1: faster than fp32), and the same for an evaluation batch of 512 without gradients.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import torchstn as stn
from torchstn.bench import interleaved
from torchstn.engine import TrainConfig, build_optimizer
from torchstn.engine._data import fetch_inputs, to_channels_last
from torchstn.engine._evaluate import precision_context

SETTINGS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "channels_last+bf16": {"channels_last": True, "precision": "bf16"},
}


def _contenders(model_name: str, batch: int, evaluation: bool, settings: list[str]) -> dict:
    torch.manual_seed(0)
    n = 512 if evaluation else batch
    data = TensorDataset(torch.rand(n, 1, 42, 42), torch.randint(0, 10, (n,)))
    indices = torch.arange(n)
    contenders = {}
    for name in settings:
        options = SETTINGS[name]
        config = TrainConfig(model=model_name, optimizer="adam", lr=2e-3, **options)
        torch.manual_seed(0)
        model = stn.create_model(model_name, in_channels=1, input_size=42, num_classes=10, pool=2)
        if config.channels_last:
            model = to_channels_last(model)  # (what train() does)
        optimizer = build_optimizer(model, config)

        def step(model=model, optimizer=optimizer, config=config) -> None:
            x, y, _ = fetch_inputs(data, indices, channels_last=config.channels_last)
            if evaluation:
                with torch.no_grad(), precision_context(config.precision, "cpu"):
                    model(x)
                return
            with precision_context(config.precision, "cpu"):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        contenders[name] = step
    return contenders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="st-cnn-aff")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="these settings only (fp32, the ratios' reference, is always timed)")
    parser.add_argument("--no-evaluation", action="store_true", help="the training step only")
    args = parser.parse_args()
    settings = ["fp32"] + [name for name in args.settings if name != "fp32"]
    torch.set_num_threads(1)
    for evaluation in (False,) if args.no_evaluation else (False, True):
        what = "evaluation batch 512" if evaluation else f"training step, batch {args.batch}"
        timings = interleaved(_contenders(args.model, args.batch, evaluation, settings), rounds=args.rounds,
                              min_time=0.2, max_calls=20)
        print(f"{args.model}, {what}, 1 thread, {args.rounds} interleaved rounds")
        for name in settings:
            low, high = timings.ratio_spread(name, "fp32")
            print(f"  {name:<20} {1000 * timings.median(name):8.1f} ms   {timings.ratio(name, 'fp32'):.2f}x fp32 "
                  f"(quartiles {low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()
