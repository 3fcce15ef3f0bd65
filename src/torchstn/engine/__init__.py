"""Training, evaluation, checkpoints and figures (layer 6).

Example:
    >>> from torchstn.engine import TrainConfig
    >>> TrainConfig(model="st-cnn-tps", data="mnist-rts", epochs=3).optimizer
    'sgd'
"""

from __future__ import annotations

from torchstn.engine._checkpoint import (
    CheckpointError,
    atomic_write,
    evaluation_draws,
    read_checkpoint,
    save_checkpoint,
)
from torchstn.engine._config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig
from torchstn.engine._data import law_label, load_split, run_data
from torchstn.engine._demo import DemoResult, demo_configs, run_demo
from torchstn.engine._diagnostics import collapse_warnings, theta_diagnostics
from torchstn.engine._evaluate import evaluate, predict
from torchstn.engine._figures import plot_run
from torchstn.engine._rundir import RESUMABLE_CHANGES, RunDir, load_model, resolve_checkpoint
from torchstn.engine._trainer import (
    TrainResult, build_optimizer, data_loss, identity_penalty, resolve_device, resume_config, train,
    wall_seconds,
)

__all__ = [
    "OPTIMIZERS",
    "PRECISIONS",
    "SCHEDULES",
    "RESUMABLE_CHANGES",
    "CheckpointError",
    "DemoResult",
    "TrainConfig",
    "RunDir",
    "TrainResult",
    "atomic_write",
    "build_optimizer",
    "collapse_warnings",
    "data_loss",
    "demo_configs",
    "evaluate",
    "evaluation_draws",
    "identity_penalty",
    "law_label",
    "load_model",
    "load_split",
    "plot_run",
    "predict",
    "read_checkpoint",
    "resolve_checkpoint",
    "resolve_device",
    "resume_config",
    "run_data",
    "run_demo",
    "save_checkpoint",
    "theta_diagnostics",
    "train",
    "wall_seconds",
]
