"""How much of a distorted digit's ink one bilinear sample per canvas pixel loses.

Renders the first ``--count`` test draws of each kind with ``supersample`` 1, 2, 3 and 4 and
compares them with an 8 x 8 supersampled rendering of the same draws (area antialiasing, the
reference): per digit, the share of the reference's ink that the rendering lacks (the sum of
``max(reference - rendering, 0)`` over the sum of the reference), before quantisation::

    python benchmarks/render_fidelity.py --data-dir ../shared/data/mnist [--kinds p rts r]

Prints the median, 90th and 99th percentile per kind and ``supersample``.
"""

from __future__ import annotations

import argparse

import torch

from torchstn.data import get_recipe
from torchstn.data._generate import draw_split, load_sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--kinds", nargs="+", default=["r", "rts", "p", "e"])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources = load_sources(args.data_dir, "test")
    index = torch.arange(args.count)
    for kind in args.kinds:
        draw = draw_split(get_recipe(kind), sources, "test", 0, count=args.count)

        def render(s: int) -> torch.Tensor:
            recipe = get_recipe(kind, {"supersample": s})
            return recipe._warp(recipe.originals(sources, draw.source[index]), draw.params[index])

        reference = render(8).flatten(1)
        for s in (1, 2, 3, 4):
            lost = (reference - render(s).flatten(1)).clamp(min=0).sum(1) / reference.sum(1)
            q = torch.quantile(lost, torch.tensor([0.5, 0.9, 0.99]))
            print(f"{kind:4s} supersample {s}: ink lost median {q[0]:.1%}, p90 {q[1]:.1%}, p99 {q[2]:.1%}")


if __name__ == "__main__":
    main()
