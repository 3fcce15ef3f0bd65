"""The demo: an ST-CNN against the same CNN without its transformer, on RTS-distorted MNIST.

Both networks get the same classifier (the paper's CNN on the 2x average-pooled
image), the same data, seed, optimiser and number of steps; the only difference is
the affine spatial transformer in front of the ST-CNN's classifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchstn.engine._checkpoint import CheckpointError
from torchstn.engine._config import TrainConfig
from torchstn.engine._data import load_split
from torchstn.engine._figures import plot_run
from torchstn.engine._rundir import RunDir
from torchstn.engine._trainer import TrainResult, train

__all__ = ["DemoResult", "demo_configs", "run_demo"]

#: the two models the demo compares, with the builder arguments they share
DEMO_MODELS = ("st-cnn-aff", "cnn")


@dataclass
class DemoResult:
    """Test error, loss and wall time of each demo model, and the figure written."""

    rows: list[dict[str, Any]]
    figure: Path
    seconds: float


def demo_configs(
    *, data: str = "mnist-rts", data_dir: str | None = None, steps: int = 1500, batch_size: int = 64,
    lr: float = 0.05, train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
    device: str = "auto",
) -> list[TrainConfig]:
    """The configs of the demo's two runs (identical but for the model)."""
    return [
        TrainConfig(
            model=name, model_args={"pool": 2}, data=data, data_dir=data_dir, steps=steps, batch_size=batch_size,
            lr=lr, train_limit=train_limit, test_limit=test_limit, seed=seed, device=device,
        )
        for name in DEMO_MODELS
    ]


def run_demo(out: str | Path = "runs/demo", *, progress: bool = True, **options: Any) -> DemoResult:
    """Train the demo's two models into ``out/<model>`` and draw the ST-CNN into ``out/demo.png``.

    Args:
        out: directory of the two runs and the figure; previous demo runs in it are replaced
            (a run of the demo's model and data); anything else at ``out/<model>`` is refused.
        progress: progress bars.
        **options: :func:`demo_configs` arguments (``steps``, ``train_limit``, ``data_dir``, ...).
    """
    out = Path(out)
    configs = demo_configs(**options)
    train_set = load_split(configs[0], "train")
    test_set = load_split(configs[0], "test")
    started = time.perf_counter()
    results: list[TrainResult] = []
    rows = []
    for config in configs:  # (checked first: nothing is trained or removed before a refusal)
        _check_replaceable(out / config.model, config)
    for config in configs:
        run_dir = out / config.model
        RunDir(run_dir).remove()  # a previous demo run: start afresh
        tic = time.perf_counter()
        result = train(config, run_dir, train_set=train_set, test_set=test_set, progress=progress)
        results.append(result)
        rows.append({
            "model": config.model, "test_error": result.final["test_error"], "test_loss": result.final["test_loss"],
            "seconds": time.perf_counter() - tic, "run": str(run_dir),
        })
    st = results[0]
    figure = plot_run(
        st.model, test_set, out / "demo.png", history=st.history, num=10,
        title=f"ST-CNN (affine) on RTS MNIST after {configs[0].steps} steps: test error "
        f"{rows[0]['test_error']:.2%} vs {rows[1]['test_error']:.2%} for the same CNN without the transformer",
    )
    return DemoResult(rows=rows, figure=figure, seconds=time.perf_counter() - started)


def _check_replaceable(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to replace ``run_dir`` unless it is absent or a run of the demo's model on its
    data (a previous demo, finished or cut short): the demo deleted whatever was there, a
    user's files or another run, without a word."""
    if not run_dir.exists() and not run_dir.is_symlink():
        return
    try:
        recorded = RunDir(run_dir).read_config()
    except (CheckpointError, ValueError, OSError):
        recorded = None
    if recorded is None or (recorded.model, recorded.data) != (config.model, config.data):
        raise ValueError(f"{run_dir} is not a previous demo run ({config.model} on {config.data}), which the demo "
                         "replaces: give another --out (out=) or move it away")
