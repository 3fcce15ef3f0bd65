"""The configuration of a training run: one dataclass, saved as ``config.json`` in the run."""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from torchstn._validation import check_bool, check_choice, check_int, check_number, check_positive, parse_json

__all__ = ["OPTIMIZERS", "PRECISIONS", "SCHEDULES", "Optimizer", "Precision", "Schedule", "TrainConfig"]

Optimizer = Literal["sgd", "adam"]
Schedule = Literal["step", "constant", "cosine"]
Precision = Literal["fp32", "bf16"]
#: the allowed values, read from the ``Literal`` types (the CLI's choices come from here too)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass
class TrainConfig:
    """Everything that decides what a training run computes.

    The defaults follow the STN paper's distorted-MNIST recipe (appendix A.1): SGD with
    momentum, learning rate 0.01 divided by 10 twice (at a third and two thirds of the
    iterations), batch 256, no weight decay. ``loc_lr_mult`` scales the learning rate of
    every localisation net (its regressor included).

    Attributes:
        model: registry name (:func:`torchstn.list_models`).
        model_args: builder overrides; ``in_channels``, ``input_size`` and
            ``num_classes`` are filled in from the dataset when missing.
        data: dataset name (:func:`torchstn.data.list_datasets`).
        data_dir: where the MNIST files are, a str or ``os.PathLike`` (kept as a str, for
            ``config.json``; ``None``: ``TORCHSTN_DATA``, the cache, or a checksummed download).
        data_options: the distortion's recipe options (:func:`torchstn.data.get_dataset`'s
            keywords, e.g. ``{"supersample": 4}``: area-antialiased rendering, or
            ``{"sigma": 3.0}``); empty is the recipe's defaults.
        data_seed: seed of the dataset's distortions (an int64, as ``seed``).
        online: draw fresh distortions of the training images every epoch.
        ground_truth_init: the IC-STN paper's protocol: feed the model the undistorted
            digit and the sample's ground-truth distortion as ``init_params``
            (``model(original, init_params=θ_gt)``), so a compositional model warps the
            original once by the composed estimate; training and evaluation alike. Needs
            a dataset with one transform family per sample (``mnist-perturbed``, ...) and a
            model whose forward takes ``init_params`` (the IC-STN registry models).
        train_limit, test_limit: use only the first N examples of a split.
        epochs: passes over the training set (ignored when ``steps`` is given).
        steps: total number of iterations (the paper counts iterations).
        batch_size: global batch size (split across processes under DDP). One larger than the
            training set runs as batches of the whole set, with a warning: each line of
            ``metrics.jsonl`` records the ``batch_size`` that ran (this field keeps what was asked).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        lr, momentum, weight_decay: optimiser settings (``0 <= momentum < 1``). ``weight_decay`` decays every
            parameter, the regressors' biases included: it pulls θ towards 0 (every output
            point reading the input's centre), not towards the identity; the papers'
            recipes use none (``identity_reg`` pulls θ towards the identity).
        schedule: ``"step"`` (multiply by ``lr_gamma`` every ``lr_decay_every``
            iterations; default a third of the run), ``"cosine"`` or ``"constant"``.
        warmup: linear warm-up of the learning rate from 0 before the schedule: a
            fraction of the run's iterations when < 1, else a number of iterations;
            0 is off.
        loc_lr_mult: learning-rate multiplier of the localisation nets (0.1, as the
            paper's localisation nets learned slower; at 1.0 an affine ST-CNN on RTS
            MNIST drifted to a zoomed-out view and ended at 22% test error after 1500
            SGD steps against 8.4% at 0.1).
        identity_reg: weight of ``mean((θ - θ_identity)^2)`` added to the loss.
        label_smoothing: label smoothing of the training loss (``F.cross_entropy``'s; the
            evaluation's loss is not smoothed); 0 is off.
        ema: decay of an exponential moving average of the weights, updated after every
            step (``torch.optim.swa_utils.AveragedModel``, buffers included): the average
            is what is evaluated each epoch, checkpointed and returned, and the raw weights'
            test error is recorded beside it (``test_error_raw``); 0 is off.
        grad_clip: clip the global gradient norm to this value (``None``: off).
        seed: seed of initialisation, shuffling and dropout.
        deterministic: ask torch for deterministic kernels only.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        channels_last: keep 4-D images and convolution weights in channels-last memory
            format (faster convolutions and pooling on CPU); the values are the same.
        precision: ``"fp32"``, or ``"bf16"`` autocast for the network's matmuls and
            convolutions in training and evaluation (the sampler stays float32).
        eval_batch_size: batch size of evaluation.
        diagnostics_samples: test images used for the per-epoch θ diagnostics.
    """

    model: str = "st-cnn-aff"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: str = "mnist-rts"
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    data_seed: int = 0
    online: bool = False
    ground_truth_init: bool = False
    train_limit: int | None = None
    test_limit: int | None = None
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 256
    optimizer: Optimizer = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "step"
    lr_decay_every: int | None = None
    lr_gamma: float = 0.1
    warmup: float = 0.0
    loc_lr_mult: float = 0.1
    identity_reg: float = 0.0
    label_smoothing: float = 0.0
    ema: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    channels_last: bool = False
    precision: Precision = "fp32"
    eval_batch_size: int = 512
    diagnostics_samples: int = 512

    def __post_init__(self) -> None:
        for name in ("model", "data", "device"):  # (their values are judged where used; their type now: None passed)
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("steps", "lr_decay_every", "train_limit", "test_limit"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        for name in ("data_seed", "seed"):  # (torch's generators hold an int64; data_seed was unchecked)
            check_int(name, getattr(self, name), minimum=-(2**63), maximum=2**63 - 1)
        if self.data_dir is not None:  # (5 failed later inside pathlib; a Path broke config.json)
            data_dir = os.fspath(self.data_dir) if isinstance(self.data_dir, os.PathLike) else self.data_dir
            if not isinstance(data_dir, str):
                raise TypeError(f"data_dir must be a str, an os.PathLike or None, got {type(self.data_dir).__name__}")
            self.data_dir = data_dir
        check_int("diagnostics_samples", self.diagnostics_samples, minimum=0)
        for name in ("online", "ground_truth_init", "deterministic", "channels_last"):
            check_bool(name, getattr(self, name))
        for name in ("lr", "loc_lr_mult", "lr_gamma"):
            check_positive(name, getattr(self, name))
        for name in ("weight_decay", "identity_reg", "warmup"):
            check_number(name, getattr(self, name), low=0.0)
        for name in ("momentum", "label_smoothing", "ema"):  # (momentum 1 or more: the velocity never decays)
            check_number(name, getattr(self, name), low=0.0)
            if getattr(self, name) >= 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ValueError(f"warmup must be a fraction < 1 or a whole number of steps, got {self.warmup!r}")
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        for name in ("model_args", "data_options"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise TypeError(f"{name} must be a dict of str keys, got {value!r}")
            setattr(self, name, dict(value))
        # numbers of other types (numpy scalars, Fraction) kept as Python's own: config.json could
        # not hold them, and the run failed at its first write naming no field
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value) not in (int, float):
                setattr(self, item.name, int(value) if isinstance(value, numbers.Integral) else float(value))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def call_options(self) -> dict[str, Any]:
        """How the run calls its model: ``ground_truth_init``, ``precision`` and ``channels_last``,
        as :func:`~torchstn.engine.evaluate`, :func:`~torchstn.engine.predict` and
        :func:`~torchstn.engine.plot_run` take them, so that every evaluation of a run takes
        its training's path (a bf16 run evaluated in float32 gave other numbers)."""
        return {"ground_truth_init": self.ground_truth_init, "precision": self.precision,
                "channels_last": self.channels_last}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        """Write the config as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`save`."""
        return cls.from_dict(parse_json(Path(path).read_text(), path))
