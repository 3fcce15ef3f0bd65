"""Throughput of `torchstn reproduce --jobs`: images per second per process and for the machine.

    python benchmarks/bench_jobs.py --data-dir ../shared/data/mnist [--steps 300] [--cells 2]

Trains ``--cells`` copies of the stn-table1 ST-CNN Aff RTS cell (the standard recipe cut
to ``--steps`` iterations, different seeds) three ways and prints the engine's measured
training throughput (``images_per_s`` of the records, evaluation excluded):

* one after the other in this process at one thread (``--jobs 1 --threads 1``);
* one after the other in this process at two threads (``--jobs 1 --threads 2``);
* all at once in one-thread worker processes (``--jobs N``).

The machine's throughput is the sum over the processes that ran at the same time.
Run it on a quiet machine; under load the ratios say how each way shares the cores.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from torchstn.reproduce import Results, get_experiment, plan, run_experiment


def _cells(steps: int, count: int) -> list:
    cells = plan(get_experiment("stn-table1"), "standard", only=["st-cnn-aff"], datasets=["rts"], seeds=count)
    for cell in cells:
        cell.config.update(steps=steps, test_limit=1000, diagnostics_samples=64)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--cells", type=int, default=2)
    args = parser.parse_args()
    def run(cells: list, jobs: int) -> list:
        with tempfile.TemporaryDirectory() as tmp:
            return run_experiment(cells, Results(Path(tmp) / "results", "stn-table1"), Path(tmp) / "runs",
                                  data_dir=args.data_dir, jobs=jobs, progress=False, log=lambda line: None,
                                  poll_seconds=600)

    torch.set_num_threads(1)
    run(_cells(50, 1), 1)  # warm-up: the data set's cache, the fused kernel's load, first-call costs
    rows = []
    for label, jobs, threads in (("--jobs 1 --threads 1", 1, 1), ("--jobs 1 --threads 2", 1, 2),
                                 (f"--jobs {args.cells}", args.cells, 1)):
        torch.set_num_threads(threads)
        records = run(_cells(args.steps, args.cells), jobs)
        per_process = [r["images_per_s"] for r in records]
        machine = sum(per_process) if jobs > 1 else sum(per_process) / len(per_process)
        rows.append((label, per_process, machine))
    base = rows[0][2]
    print(f"ST-CNN Aff on RTS, batch 64, {args.steps} steps per cell, {args.cells} cells")
    print(f"{'how':<22} {'img/s per process':>28} {'img/s machine':>14} {'vs 1 thread':>12}")
    for label, per_process, machine in rows:
        each = ", ".join(f"{v:,.0f}" for v in per_process)
        print(f"{label:<22} {each:>28} {machine:>14,.0f} {machine / base:>11.2f}x")


if __name__ == "__main__":
    main()
