"""Warp benchmark: torchstn vs ``F.affine_grid + F.grid_sample`` vs kornia, interleaved.

The same functions as ``torchstn bench`` (``torchstn.bench``), as a script::

    python benchmarks/bench_warp.py                       # every case, CPU
    python benchmarks/bench_warp.py --cases 'tps-*' --rounds 30 --json bench.json

Ratios are the median over rounds of (peer time / torchstn time) within a round: > 1
means torchstn is faster. See ``docs/benchmarks.md`` for what each number means.
"""

from __future__ import annotations

import sys

from torchstn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
