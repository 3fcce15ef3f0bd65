"""Two or more trained runs on the same test examples: is the difference of their errors more than chance?

    python benchmarks/paired_runs.py REFERENCE RUN [RUN ...] [--which last] [--data-dir ../shared/data/mnist]

Each run (a run directory or checkpoint, as ``torchstn evaluate`` takes them) is evaluated on
the test split of its own config (the runs must share it: the same dataset and law, the same
examples in the same order); then each RUN is compared with REFERENCE example by example:
how many examples only RUN gets right, how many only REFERENCE gets right, and the exact
two-sided McNemar test on those discordant examples (the chance, were the two equally good,
of a split at least this uneven). Two error rates that differ by less than the test set's
noise read as a large p; the test says nothing about seed-to-seed variation, which is a
second, separate reason two cells may differ (compare several seeds for that).
"""

from __future__ import annotations

import argparse
from math import comb

import torch

from torchstn.engine import load_model, load_split, predict


def mcnemar(only_a: int, only_b: int) -> float:
    """The exact two-sided McNemar p-value of ``only_a`` against ``only_b`` discordant examples."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def correct(run: str, which: str, data_dir: str | None) -> tuple[torch.Tensor, str]:
    """Whether the run gets each test example right, and a description of the split."""
    model, config, _ = load_model(run, which=which)
    if data_dir is not None:
        config = config.replace(data_dir=data_dir)
    logits, labels = predict(model, load_split(config, "test"))
    return logits.argmax(1) == labels, f"{config.data} {config.data_options or ''}".strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--which", default="last", help="the checkpoint of each run: last (the reported one) or best")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference, split = correct(args.reference, args.which, args.data_dir)
    print(f"{args.reference}: error {100 * (1 - reference.float().mean()):.2f}% on {len(reference):,} test examples "
          f"({split})")
    for run in args.runs:
        right, other = correct(run, args.which, args.data_dir)
        if other != split or len(right) != len(reference):
            raise SystemExit(f"{run} was tested on {other} ({len(right):,} examples), not on the reference's {split}")
        only_run, only_reference = int((right & ~reference).sum()), int((reference & ~right).sum())
        print(f"{run}: error {100 * (1 - right.float().mean()):.2f}%; right where the reference errs {only_run}, "
              f"wrong where it is right {only_reference}; McNemar p = {mcnemar(only_run, only_reference):.3f}")


if __name__ == "__main__":
    main()
