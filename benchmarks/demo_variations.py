"""What changes the demo's numbers: the same short demo under each variation, in fresh processes.

    python benchmarks/demo_variations.py --data-dir ../shared/data/mnist

Each variation runs ``torchstn.engine.run_demo`` (150 SGD steps of batch 32 on 2,048 RTS
training images, 1,000 test images; both models) in a new interpreter and prints each
model's test error and loss. Variations: the same command twice; 2 torch threads instead of
1; ATen's CPU kernels without AVX2 (``ATEN_CPU_CAPABILITY=default``, which also builds the
fused sampler without it); oneDNN's convolutions limited to SSE4.1
(``ONEDNN_MAX_CPU_ISA=SSE41``); and the fused sampler unavailable (simulated: the machine
without a compiler or ninja, where torchstn falls back to ``F.grid_sample``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

_RUN = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
if sys.argv[2] == "off":  # what a machine without a compiler gets: the grid + F.grid_sample path
    import torchstn.sampling._fused as fused_module
    fused_module.fused_applies = lambda *args, **kwargs: False  # every caller asks the module
from torchstn.engine import run_demo
rows = run_demo(sys.argv[3], progress=False, data_dir=sys.argv[4] or None, steps=150, batch_size=32,
                train_limit=2048, test_limit=1000, device="cpu").rows
print(" ".join(f"{r['model']}={100 * r['test_error']:.2f}%/{r['test_loss']:.6f}" for r in rows))
"""

VARIATIONS = (
    ("1 thread (reference)", {}, 1, "on"),
    ("1 thread, again", {}, 1, "on"),
    ("2 threads", {}, 2, "on"),
    ("ATEN_CPU_CAPABILITY=default", {"ATEN_CPU_CAPABILITY": "default"}, 1, "on"),
    ("ONEDNN_MAX_CPU_ISA=SSE41", {"ONEDNN_MAX_CPU_ISA": "SSE41"}, 1, "on"),
    ("fused sampler unavailable", {}, 1, "off"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the MNIST files (default: torchstn's lookup)")
    parser.add_argument("--out", default="runs/demo-variations", help="where the short runs go")
    args = parser.parse_args()
    reference = None
    for k, (name, env, threads, fused) in enumerate(VARIATIONS):
        out = subprocess.run(
            [sys.executable, "-c", _RUN, str(threads), fused, os.path.join(args.out, str(k)), args.data_dir or ""],
            env={**os.environ, "OMP_NUM_THREADS": str(threads), **env}, capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        reference = reference or out
        print(f"{name:30s} {out}  {'same' if out == reference else 'DIFFERENT'}", flush=True)


if __name__ == "__main__":
    main()
