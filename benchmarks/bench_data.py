"""Generation benchmark: all 70,000 images (train + test) of a distorted-MNIST kind, no cache.

Times what ``torchstn data generate KIND`` does minus the disk: load MNIST, draw every
sample's transformation, render them batched through the sampler::

    python benchmarks/bench_data.py                     # RTS, the issue's target: < 15 s on 2 cores
    python benchmarks/bench_data.py --kind all --repeat 3
    python benchmarks/bench_data.py --data-dir ../shared/data/mnist --threads 1

It prints the wall-clock seconds of each phase and the total for the 70,000 images
(the best of ``--repeat`` runs: on a shared machine the minimum is the least noisy).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from torchstn.data import KINDS, get_recipe
from torchstn.data._generate import draw_split, load_sources, render_all
from torchstn.data._recipes import Sources



def run(kind: str, data_dir: Path | None) -> dict[str, float]:
    """Seconds of each phase for both splits of ``kind`` (loading not cached between runs)."""
    recipe = get_recipe(kind)
    times = {"load": 0.0, "draw": 0.0, "render": 0.0}
    count = 0
    for split in ("train", "test"):
        start = time.perf_counter()
        from torchstn.data import load_mnist

        sources = Sources(*load_mnist(data_dir, split))
        times["load"] += time.perf_counter() - start
        start = time.perf_counter()
        draw = draw_split(recipe, sources, split, seed=0)
        times["draw"] += time.perf_counter() - start
        start = time.perf_counter()
        images = render_all(recipe, sources, draw)
        times["render"] += time.perf_counter() - start
        count += images.shape[0]
    times["total"] = times["load"] + times["draw"] + times["render"]
    times["count"] = count
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="rts", help=f"one of {', '.join(KINDS)}, or 'all' (default rts)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="MNIST files (default: $TORCHSTN_DATA, else the cache, where MNIST is downloaded)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per kind; the best is reported (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kinds = list(KINDS) if args.kind == "all" else [args.kind.removeprefix("mnist-")]
    load_sources(args.data_dir, "test")  # fail early, with the loader's message, if the files are missing
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; best of {args.repeat}")
    for kind in kinds:
        best = min((run(kind, args.data_dir) for _ in range(args.repeat)), key=lambda t: t["total"])
        print(
            f"mnist-{kind:<10s} {int(best['count'])} images in {best['total']:6.2f} s "
            f"(load {best['load']:.2f} s, draw {best['draw']:.2f} s, render {best['render']:.2f} s; "
            f"{best['count'] / best['total']:,.0f} images/s)"
        )


if __name__ == "__main__":
    main()
