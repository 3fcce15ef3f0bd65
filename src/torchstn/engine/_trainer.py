"""The training loop: seeded, resumable bit-exactly, single-process or DDP.

One function, :func:`train`, runs a :class:`TrainConfig` end to end: it builds the data
and the model, trains with evaluation each epoch, writes ``metrics.jsonl`` and the
checkpoints into the run directory (:class:`~torchstn.engine.RunDir`), and returns the
history. Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, nccl
on GPU).

The stages, in the order they run: :func:`_load_data`, :func:`_set_up` (model,
optimiser, schedule), :func:`_resume` or a new run directory, then per epoch
:func:`_train_epoch`, :func:`_epoch_record` and :func:`_publish` (log, diagnostics,
checkpoints), and :func:`_summary`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from torchstn._validation import check_bool, check_int
from torchstn.data import data_law
from torchstn.engine._checkpoint import (
    UNRECORDED,
    CheckpointError,
    _Unrecorded,
    capture_rng,
    read_checkpoint,
    read_training_state,
    restore_rng,
)
from torchstn.engine._config import TrainConfig
from torchstn.engine._data import (
    dataset_model_args,
    epoch_batches,
    fetch_inputs,
    law_text,
    load_split,
    shard,
    to_channels_last,
)
from torchstn.engine._diagnostics import (
    collapse_warnings,
    predicted_classes,
    theta_diagnostics,
    theta_heads,
    transformers_of,
)
from torchstn.engine._evaluate import as_evaluated, evaluate, precision_context
from torchstn.engine._rundir import RunDir
from torchstn.engine.metrics import _misclassified
from torchstn.models import check_model_args, create_model
from torchstn.nn import ProbabilisticSpatialTransformer, param_groups, total_kl

__all__ = ["TrainResult", "build_optimizer", "identity_penalty", "resolve_device", "resume_config", "train"]

@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (unwrapped from DDP), in eval mode.
        config: the config, with ``model_args`` filled in from the data.
        history: one dict per epoch (the lines of ``metrics.jsonl``).
        run_dir: the run directory, or ``None`` when nothing was written.
    """

    model: nn.Module
    config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's metrics."""
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as given.
    A ``ValueError`` for any other device (``meta`` holds no values to train on; torch may not be
    built for ``mps`` or ``xla``), or a CUDA device that torch does not see."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} was asked for but torch sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``'s own random draws in a run of ``seed`` (rank 0 keeps the run's stream)."""
    return (seed * 1_000_003 + rank * 7_919) % 2**63


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam over :func:`torchstn.nn.param_groups`: the localisation nets at
    ``lr * loc_lr_mult``, the rest at ``lr``."""
    groups = param_groups(model, config.lr, config.loc_lr_mult)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """The iterations of linear warm-up: ``warmup`` as a fraction of the run (< 1) or a count."""
    if config.warmup < 1:
        return round(config.warmup * total_steps)
    return min(int(config.warmup), total_steps)


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at each iteration: linear warm-up, then the schedule over the rest."""
    warm = warmup_steps(config, total_steps)
    span = max(1, total_steps - warm)
    if config.schedule == "constant":
        decay: Callable[[int], float] = lambda step: 1.0  # noqa: E731
    elif config.schedule == "cosine":
        decay = lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, span) / span))  # noqa: E731
    else:
        every = config.lr_decay_every or max(1, math.ceil(span / 3))
        decay = lambda step: config.lr_gamma ** (step // every)  # noqa: E731
    if warm == 0:
        return decay
    return lambda step: (step + 1) / warm if step < warm else decay(step - warm)


def identity_penalty(model: nn.Module) -> torch.Tensor | float:
    """``mean((θ - θ_identity)^2)`` summed over the last predictions of the model's transformers
    that predict a θ (those the θ diagnostics read; 0 without any)."""
    total: torch.Tensor | float = 0.0
    for st in theta_heads(transformers_of(model)):
        theta = st.last_params
        if theta is not None:
            identity = st.transform.identity(device=theta.device, dtype=theta.dtype)
            total = total + (theta - identity).pow(2).mean()
    return total


def data_loss(
    model: nn.Module, output: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The training loss of ``model``'s ``output`` for ``labels``: ``F.cross_entropy`` of logits;
    for a model whose output is log-probabilities (its ``log_probabilities`` true, looked up
    through DDP's and ``AveragedModel``'s ``module``: a P-STN, whose training output is the mean
    of its samples' log-probabilities, not normalised), their negative log-likelihood, smoothed
    as ``cross_entropy`` smooths it: the ELBO's data term. (``cross_entropy`` of such an output
    adds the log of its normaliser; for normalised log-probabilities both are the same.) A model
    that holds a :class:`~torchstn.nn.ProbabilisticSpatialTransformer` drawing more than one
    sample but does not say ``log_probabilities`` gets ``cross_entropy`` and a warning."""
    if not 0.0 <= label_smoothing <= 1.0:  # (cross_entropy's own check, which the other branch skips)
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    core = getattr(model, "module", model)
    said = getattr(core, "log_probabilities", None)
    if not said:
        if said is None:
            _warn_unsaid_log_probabilities(core)
        return F.cross_entropy(output, labels, label_smoothing=label_smoothing)
    loss = F.nll_loss(output, labels)
    if label_smoothing:  # (over the rows nll_loss counts: not those of its ignore_index, as cross_entropy)
        loss = (1 - label_smoothing) * loss - label_smoothing * output[labels != -100].mean()
    return loss


def _warn_unsaid_log_probabilities(model: nn.Module) -> None:
    """Warn (once per model class) where a model holds a P-STN drawing more than one sample in
    training but does not say whether its output is log-probabilities (a user's model around
    ``marginalize``, trained by the engine on cross_entropy of the mean of its samples'
    log-probabilities: not the ELBO). Each model's modules are looked through once, not at
    every training step."""
    if type(model) in _WARNED or not model.training or model in _LOOKED_THROUGH:
        return
    _LOOKED_THROUGH.add(model)
    if any(isinstance(m, ProbabilisticSpatialTransformer) and m.samples > 1 for m in model.modules()):
        _WARNED.add(type(model))
        warnings.warn(
            f"{type(model).__name__} holds a ProbabilisticSpatialTransformer drawing several samples but has no "
            "log_probabilities attribute: its loss is cross_entropy of its output. If it returns marginalize()'s "
            "log-probabilities, set log_probabilities = True on the model (the ELBO's data term: their negative "
            "log-likelihood); if it returns logits, set it False", UserWarning, stacklevel=3)


_WARNED: set[type] = set()
_LOOKED_THROUGH: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def resume_config(run_dir: str | Path, **changes: Any) -> TrainConfig:
    """The config of a run directory, with the fields a resumed run may change (:meth:`RunDir.resume_config`)."""
    return RunDir(run_dir).resume_config(**changes)


class _Distributed:
    """Process-group bookkeeping: rank, world size, and whether we own the group."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.owned = False
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", local) if device.type == "cuda" and self.world > 1 else device
        if self.device.type == "cuda" and self.world > 1:
            torch.cuda.set_device(self.device)  # (NCCL's barrier and collectives use the current device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (``[value]`` in one process)."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)  # (NCCL reduces CUDA tensors only)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


def _synchronised_batch_norm(model: nn.Module, ddp: _Distributed) -> nn.Module:
    """``model`` with its BatchNorm layers normalising over the global batch (``SyncBatchNorm``),
    as one process would; torch has no CPU ``SyncBatchNorm``: there each process normalises its
    own slice, and a warning says that the gradients then differ from one process's."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    if ddp.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    _print(f"warning: {type(model).__name__} has BatchNorm layers, which torch cannot synchronise across processes "
           f"on the {ddp.device.type}: each of the {ddp.world} processes normalises its own slice of the batch, so "
           "training differs from one process's", main=ddp.main, file=sys.stderr)
    return model


def _grads_in_bucket_layout(model: nn.Module) -> nn.Module:
    """``model`` with each parameter that has a dimension of size 1 handed its gradient with the
    parameter's own strides, where the two differ in such dimensions alone (the same elements
    at the same places: a view). A one-channel convolution's weight ``(32, 1, 5, 5)`` computed on
    a channels_last input gets a gradient of strides ``(25, 1, 5, 1)`` from oneDNN, which
    autograd's layout contract accepts for the weight's ``(25, 25, 5, 1)``; DDP compares the
    strides themselves and printed "Grad strides do not match bucket view strides ... may impair
    performance" in every process of a run (torch's own spurious warning, pytorch/pytorch#47163)."""

    def hook_for(param: nn.Parameter) -> Callable[[torch.Tensor], torch.Tensor | None]:
        def same_layout(grad: torch.Tensor) -> torch.Tensor | None:
            if grad.shape != param.shape or grad.stride() == param.stride():
                return None
            if all(a == b or n == 1 for a, b, n in zip(grad.stride(), param.stride(), param.shape)):
                return grad.as_strided(param.shape, param.stride())  # (an index of a size-1 dimension is 0)
            return None

        return same_layout

    for param in model.parameters():
        if param.requires_grad and param.dim() > 1 and 1 in param.shape:
            param.register_hook(hook_for(param))
    return model


def _print(message: str, *, main: bool, file: Any = None) -> None:
    if main:
        from tqdm import tqdm

        tqdm.write(message, file=file or sys.stdout)


def train(
    config: TrainConfig,
    out: str | Path | None = None,
    *,
    train_set: Any = None,
    test_set: Any = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.data`` as configured.

    Args:
        config: the run's :class:`TrainConfig`.
        out: run directory for ``config.json``, ``metrics.jsonl`` and
            ``checkpoints/`` (new or empty, or a run's); ``None`` writes nothing. The run is
            trained under its lock (:meth:`RunDir.locked`): a second process is refused.
        train_set, test_set: datasets to use instead of loading ``config.data``
            (items ``(image (C, H, W), label)``, attributes ``input_shape`` and
            ``num_classes``).
        resume: continue from ``out/checkpoints/last`` (weights, optimiser, schedule,
            RNG and data order), bit-exactly. A ``last.safetensors`` and
            ``last.state.pt`` that were not written together (an interrupted save, a
            copied file) are refused with a ``ValueError`` naming both; a pair from
            before checkpoints carried a write id is resumed when its epochs and steps agree.
        progress: show a progress bar per epoch, when stderr is a terminal (a log file
            gets the per-epoch lines only).
        stop_after: stop after this epoch (as an interruption would; the schedule
            still follows ``config``).

    Returns:
        a :class:`TrainResult`.

    Raises:
        TypeError: ``config`` is not a :class:`TrainConfig` (a dict of its fields is one as
            ``TrainConfig(**d)``), or ``stop_after`` not an int.
        ValueError: ``stop_after`` below 1; ``out`` trained by another process, or a directory
            that holds something other than a run (a new run), or whose ``metrics.jsonl`` lacks
            epochs the checkpoint was trained through (``resume``).
    """
    if not isinstance(config, TrainConfig):  # (a dict failed with "'dict' object has no attribute 'device'")
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}; build one from a dict of its "
                        "fields with TrainConfig(**d) (TrainConfig.from_dict(d) names unknown keys)")
    if stop_after is not None:  # (0 or -1 trained nothing without an error; 1.5 failed in range())
        stop_after = check_int("stop_after", stop_after, minimum=1)
    resume = check_bool("resume", resume)  # ("yes" was taken as True)
    if config.data_dir is not None and not os.path.isabs(config.data_dir):
        # recorded absolute (config.json, the checkpoints): a run is evaluated, drawn or resumed from
        # anywhere, and a relative directory was looked up against wherever that ran; ~ expanded
        # first, as the data loaders expand it (it was made <cwd>/~/...)
        config = config.replace(data_dir=os.path.abspath(os.path.expanduser(config.data_dir)))
    device = resolve_device(config.device)
    ddp = _Distributed(device)
    # --deterministic ends with the run: the caller's settings come back as they were (warn_only
    # and cuDNN's flags too: a strict mode was left behind where the caller had asked to be warned)
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    try:  # (a second process training the run is refused: RunDir.locked)
        with RunDir(out).locked() if out is not None and ddp.main else contextlib.nullcontext():
            return _train(config, out, ddp, train_set, test_set, resume, progress, stop_after)
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        ddp.close()


@dataclass
class _Session:
    """What the stages of one training session share (built by :func:`_set_up`)."""

    config: TrainConfig
    ddp: _Distributed
    run_dir: RunDir | None
    train_set: Any
    test_set: Any
    model: nn.Module  # what the loop calls: ``core``, wrapped in DDP under torchrun
    core: nn.Module
    grad_params: list[nn.Parameter]  # what gradient clipping bounds
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    batch_size: int
    total_steps: int
    epochs: int
    per_epoch: int  # the steps of a whole epoch
    step: int = 0
    start_epoch: int = 0
    best_error: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    average: AveragedModel | None = None  # the weights' moving average (``ema``)
    data_law: dict[str, Any] | None | _Unrecorded = UNRECORDED  # what the checkpoints record of the data

    @property
    def product(self) -> nn.Module:
        """What is evaluated, checkpointed and returned: the average, or the weights themselves."""
        return self.average.module if self.average is not None else self.core

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return precision_context(self.config.precision, self.ddp.device)


@dataclass
class _EpochSums:
    """One epoch of training as :func:`_train_epoch` measured it on this process."""

    loss: float
    wrong: float
    kl: float
    seen: int
    curve: list[list[float]]
    seconds: float


def _train(
    config: TrainConfig, out: str | Path | None, ddp: _Distributed, train_set: Any, test_set: Any,
    resume: bool, progress: bool, stop_after: int | None,
) -> TrainResult:
    run_dir = RunDir(out) if out is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run directory (out)")
    check_model_args(config.model, config.model_args)  # a misspelt argument fails now, not after the data
    # the law the sets are drawn by, recorded in the checkpoints (not known of sets given here)
    law = data_law(config.data, config.data_options) if train_set is None and test_set is None else UNRECORDED
    train_set, test_set = _load_data(config, ddp, train_set, test_set)
    _seed_everything(config.seed, config.deterministic)  # after the data: its loading draws nothing here
    session = _set_up(config, ddp, run_dir, train_set, test_set)
    session.data_law = law
    if ddp.rank > 0:  # its own draws (a P-STN's θ noise, dropout), the weights built alike: the same stream in
        torch.manual_seed(_rank_seed(config.seed, ddp.rank))  # every process correlated images i and i + 1 in pairs
    if resume:
        _resume(session)
    elif run_dir is not None and ddp.main:
        run_dir.start(session.config)
    if ddp.world > 1:
        session.core = _synchronised_batch_norm(session.core, ddp)
        session.model = nn.parallel.DistributedDataParallel(
            _grads_in_bucket_layout(session.core), device_ids=[ddp.device] if ddp.device.type == "cuda" else None
        )
    last_epoch = session.epochs if stop_after is None else min(session.epochs, stop_after)
    _announce(session, last_epoch)
    diagnostics_batch = fetch_inputs(
        test_set, torch.arange(min(config.diagnostics_samples, len(test_set))), config.ground_truth_init, ddp.device
    )
    for epoch in range(session.start_epoch, last_epoch):
        sums = _train_epoch(session, epoch, progress)
        record = _epoch_record(session, epoch, sums)
        _publish(session, record, diagnostics_batch)
        ddp.barrier()
    _summary(session)
    session.product.eval()
    return TrainResult(model=session.product, config=session.config, history=session.history,
                       run_dir=run_dir.path if run_dir is not None else None)


def _load_data(config: TrainConfig, ddp: _Distributed, train_set: Any, test_set: Any) -> tuple[Any, Any]:
    """The two splits (the main process first, so that a download happens once)."""
    for split, given, limit in (("train", train_set, config.train_limit), ("test", test_set, config.test_limit)):
        if given is not None and limit is not None and len(given) > limit:  # (ignored without a word, and recorded)
            raise ValueError(f"{split}_limit={limit} takes the first items of the config's data, but a {split}_set "
                             f"given to train() is used whole ({len(given)} items): pass it sliced, or no "
                             f"{split}_limit")
    if not ddp.main:
        ddp.barrier()
    train_set = train_set if train_set is not None else load_split(config, "train")
    test_set = test_set if test_set is not None else load_split(config, "test")
    if ddp.main:
        ddp.barrier()
    if ddp.main:  # (the one process that prints: the others need not read their sets for it)
        for split, data in (("train", train_set), ("test", test_set)):
            _warn_of_nan(data, split, config.data)
    return train_set, test_set


def _warn_of_nan(data: Any, split: str, name: str) -> None:
    """Say which inputs hold NaN where a set keeps its inputs as one tensor (series, TensorDatasets;
    ``load_ucr`` keeps missing values NaN): a model reads them as NaN, and its loss, and a
    transformer's θ, become NaN from the first step, which the epoch's warnings had blamed on
    the transformer."""
    tensors = getattr(data, "tensors", None)
    x = tensors[0] if isinstance(tensors, (tuple, list)) and tensors else None
    if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() >= 2):
        return
    holding = int(x.isnan().flatten(1).any(1).sum())
    if holding:
        _print(f"warning: {holding} of the {len(x)} {split} inputs of {name} hold NaN (missing values): a model reads "
               "them as NaN, and the loss and a transformer's θ become NaN; fill them before training",
               main=True, file=sys.stderr)


def _set_up(config: TrainConfig, ddp: _Distributed, run_dir: RunDir | None, train_set: Any, test_set: Any) -> _Session:
    """The model (its size filled in from the data), the optimiser and the schedule."""
    data_args = dataset_model_args(train_set)
    _check_data_args(config, data_args)
    config = config.replace(model_args={**data_args, **config.model_args})
    try:
        # float32 whatever torch's default dtype (the data is float32; bf16 is autocast's)
        model = create_model(config.model, **config.model_args).to(ddp.device, torch.float32)
    except (TypeError, ValueError) as err:  # pool="abc", or images for a model of series: the config is wrong
        raise ValueError(
            f"cannot build model {config.model!r} for {config.data} with model_args {config.model_args}: {err}"
        ) from err
    if config.channels_last:
        model = to_channels_last(model)  # 4-D weights only: a 3-D conv's 5-D ones cannot be channels-last
    if config.ground_truth_init:
        _check_ground_truth_init(config, model, train_set)
    n_train = len(train_set)
    batch_size = min(config.batch_size, n_train)
    if batch_size < config.batch_size and ddp.main:  # (config.json keeps what was asked: reproduce compares it)
        warnings.warn(f"batch_size {config.batch_size} is more than the {n_train} training examples of {config.data}: "
                      f"every step trains on one batch of all {n_train} (metrics.jsonl's batch_size records it); give "
                      "a smaller batch_size or more data (train_limit) to train on the batch asked for",
                      UserWarning, stacklevel=4)
    if batch_size < ddp.world:
        raise ValueError(f"batch size {batch_size} is smaller than the {ddp.world} processes")
    per_epoch = n_train // batch_size
    total_steps = config.steps if config.steps is not None else config.epochs * per_epoch
    optimizer = build_optimizer(model, config)
    average = None
    if config.ema:
        average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
    return _Session(
        config=config, ddp=ddp, run_dir=run_dir, train_set=train_set, test_set=test_set, model=model, core=model,
        grad_params=[p for p in model.parameters() if p.requires_grad],
        optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps)),
        batch_size=batch_size, total_steps=total_steps, epochs=math.ceil(total_steps / per_epoch), per_epoch=per_epoch,
        average=average,
    )


def _resume(session: _Session) -> None:
    """Load weights, optimiser, schedule, RNG and history from the run's ``last`` checkpoint."""
    run_dir = session.run_dir
    assert run_dir is not None
    last = run_dir.checkpoint("last")
    if not run_dir.can_resume():
        # without checkpoints a new run may start here; with some, RunDir.start refuses until they are gone
        again = (f"remove {run_dir.checkpoints} or choose another --out" if run_dir.holds_run() else
                 "give the command that started it without --resume, or choose another --out")
        raise CheckpointError(
            f"cannot resume {run_dir.path}: it holds no checkpoint with its training state (an interruption "
            f"before the end of the first epoch?); to start it again, {again}"
        )
    tensors, saved, info = read_checkpoint(last)
    different = RunDir.config_differences(saved, session.config)
    if different:
        raise ValueError(f"cannot resume {run_dir.path}: the config differs in {', '.join(different)}")
    if "data_law" not in info:  # (trained before runs recorded it: not known, and not recorded now either)
        session.data_law = UNRECORDED
    elif session.data_law is not UNRECORDED and info["data_law"] != session.data_law:
        raise ValueError(
            f"cannot resume {run_dir.path}: it was trained on {law_text(info['data_law'])}, but this torchstn "
            f"draws {law_text(session.data_law)} for its config (the recipe has changed since): the rest of the "
            "run would train on other data; train it again in another directory"
        )
    if info["step"] > session.total_steps or info["epoch"] > session.epochs:  # (config.json must not say less)
        length = f"{session.total_steps} steps" if session.config.steps else f"{session.epochs} epochs"
        raise ValueError(f"cannot resume {run_dir.path} for {length}: it has trained {info['step']} steps "
                         f"({info['epoch']} epochs) already; give at least that many to extend it")
    state = read_training_state(last)
    session.product.load_state_dict(tensors)
    if session.average is not None:  # the checkpoint's weights are the average; the raw ones are in the state
        session.core.load_state_dict(state["raw_weights"])
        session.average.n_averaged.copy_(state["averaged"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])  # the lambdas themselves come from the config
    # the rates of the next step from this config's schedule: the optimiser's state holds the ones the saved
    # schedule set, and an extended run's first step ran at the shorter schedule's rate (0 at a cosine's end)
    scheduler = session.scheduler
    for group, base, rate in zip(session.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * rate(scheduler.last_epoch)
    ranks = state.get("rng_of_ranks")  # (a run of as many processes; else rank 0's, each other process reseeded)
    if ranks is not None and len(ranks) == session.ddp.world:
        restore_rng(ranks[session.ddp.rank])
    else:
        restore_rng(state["rng"])
        if session.ddp.rank > 0:  # (its own stream, as in a run started with this many processes)
            torch.manual_seed(_rank_seed(session.config.seed + info["step"], session.ddp.rank))
    session.start_epoch, session.step, session.best_error = info["epoch"], info["step"], state["best_error"]
    # steps beyond a last epoch that was cut short (a run in steps) train in one more, itself cut at total_steps
    remaining = math.ceil((session.total_steps - session.step) / session.per_epoch)
    session.epochs = max(session.epochs, session.start_epoch + remaining)
    if session.ddp.main:  # drop epochs logged after the checkpoint (an interruption between the two)
        session.history = run_dir.keep_history(session.start_epoch)
        if run_dir.read_config() != session.config:  # extended (or moved): config.json says so
            run_dir.record_config(session.config)
    else:
        session.history = run_dir.history()[: session.start_epoch]


def _announce(session: _Session, last_epoch: int) -> None:
    config, ddp = session.config, session.ddp
    if ddp.main and session.start_epoch == 0:
        n_params = sum(p.numel() for p in session.core.parameters())
        _print(
            f"training {config.model} ({n_params:,} parameters) on {config.data}: {len(session.train_set)} train / "
            f"{len(session.test_set)} test images, {session.total_steps} steps of batch {session.batch_size}, "
            f"device {ddp.device}" + (f", {ddp.world} processes" if ddp.world > 1 else ""),
            main=True,
        )
    if ddp.main and session.start_epoch >= last_epoch:
        where = session.run_dir.path if session.run_dir is not None else "the run"
        longer = "more steps (--steps)" if session.config.steps else "more epochs"  # (a run in steps ignores --epochs)
        _print(f"nothing to do: {where} is at epoch {session.start_epoch} of {session.epochs} "
               f"(give {longer} to extend it)", main=True)


def _train_step(
    session: _Session, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor, torch.Tensor]:
    """One optimiser step on a global batch; returns this process's loss, KL, logits and labels (detached)."""
    config, ddp, core = session.config, session.ddp, session.core
    part = shard(batch, ddp.rank, ddp.world)
    x, y, inputs = fetch_inputs(session.train_set, part, config.ground_truth_init, ddp.device,
                                channels_last=config.channels_last)
    with session.autocast():
        logits = session.model(x, **inputs)
        loss = data_loss(core, logits, y, config.label_smoothing)
        kl = total_kl(core)  # the weighted KL of P-STN modules (a zero for other models)
        objective = loss + kl
        if config.identity_reg:
            objective = objective + config.identity_reg * identity_penalty(core)
    if len(part) * ddp.world != len(batch):
        # DDP averages the processes' gradients alike: a slice of 3 of 5 images counts 3/5, so
        # that the average is the one-process gradient of the batch's mean loss (the KL, the
        # same in every process, stays as it is, the weights summing to 1; the identity term,
        # a mean over the slice, is weighted as the loss)
        objective = objective * (len(part) * ddp.world / len(batch))
    session.optimizer.zero_grad(set_to_none=True)
    objective.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(session.grad_params, config.grad_clip)
    session.optimizer.step()
    if session.average is not None:
        session.average.update_parameters(core)
    session.scheduler.step()
    session.step += 1
    return loss.detach(), kl.detach(), logits.detach(), y


def _is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is a terminal. A progress bar redraws its line with ``\\r``, which a
    log file keeps in full (144 KB for one run); there the per-epoch line says it all."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _train_epoch(session: _Session, epoch: int, progress: bool) -> _EpochSums:
    """One pass over this epoch's batches (cut at ``total_steps``), with the train curve's points."""
    from tqdm import tqdm

    ddp = session.ddp
    if hasattr(session.train_set, "set_epoch"):  # online distortions: this epoch's draw
        session.train_set.set_epoch(epoch)
    batches = epoch_batches(len(session.train_set), session.batch_size, session.config.seed, epoch)
    batches = batches[: session.total_steps - session.step]
    curve_every = max(1, session.total_steps // 100)
    sums = torch.zeros(3, dtype=torch.float64, device=ddp.device)  # loss, wrong, KL (each times images)
    window = torch.zeros(3, device=ddp.device)  # loss, wrong, images since the last curve point
    seen, curve = 0, []
    session.model.train()
    tic = time.perf_counter()
    show = progress and ddp.main and _is_terminal(sys.stderr)
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{session.epochs}", unit="batch", leave=False,
               disable=not show, file=sys.stderr, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        loss, kl, logits, y = _train_step(session, batch)
        batch_loss, batch_wrong = loss * y.numel(), _misclassified(logits, y).sum()
        sums[0] += batch_loss
        sums[1] += batch_wrong
        sums[2] += kl * y.numel()
        seen += y.numel()
        window += torch.stack([batch_loss, batch_wrong.to(batch_loss.dtype), batch_loss.new_tensor(y.numel())])
        if session.step % curve_every == 0:  # this process's train loss and error since the last point
            total = window.tolist()
            curve.append([session.step, total[0] / total[2], total[1] / total[2]])
            window.zero_()
        if i % 20 == 0 and bar.disable is False:
            bar.set_postfix(loss=f"{sums[0].item() / seen:.4f}", err=f"{sums[1].item() / seen:.2%}")
    bar.close()
    loss, wrong, kl = sums.tolist()
    return _EpochSums(loss, wrong, kl, seen, curve, time.perf_counter() - tic)


def _last_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
    """The rate the last step ran at (of the first parameter group; the optimiser's own holds
    the next step's by now)."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](max(scheduler.last_epoch - 1, 0))


def _epoch_record(session: _Session, epoch: int, sums: _EpochSums) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl``: training sums over the processes and the test evaluation."""
    config, ddp = session.config, session.ddp
    loss_total, wrong_total, kl_total, seen_total = ddp.sum([sums.loss, sums.wrong, sums.kl, float(sums.seen)])
    def test_of(model: nn.Module) -> dict[str, Any]:  # (forked: a P-STN's test-time θ do not move the run's draws)
        with as_evaluated([model], torch.device(ddp.device)):
            return evaluate(model, session.test_set, batch_size=config.eval_batch_size, device=ddp.device,
                            **config.call_options())

    test = test_of(session.product)
    raw = {"test_error_raw": test_of(session.core)["error"]} if session.average is not None else {}
    return {
        "epoch": epoch + 1,
        "step": session.step,
        "batch_size": session.batch_size,  # (what ran: the config's, or the whole training set where that is smaller)
        "lr": _last_lr(session.scheduler),
        "train_loss": loss_total / seen_total,
        "train_error": wrong_total / seen_total,
        "train_kl": kl_total / seen_total,  # the weighted KL term of the objective (0 without a P-STN)
        **{f"test_{k}": v for k, v in test.items() if k != "n"},
        **raw,
        "train_curve": sums.curve,
        "images_per_s": seen_total / sums.seconds,
        "seconds": sums.seconds,
        "elapsed": time.perf_counter() - session.started,
        "session": session.start_epoch,  # (the epoch this session of the engine started at: elapsed restarts there)
    }


def _publish(session: _Session, record: dict[str, Any], diagnostics_batch: tuple[Any, Any, Any]) -> None:
    """Add the θ diagnostics to the record, print it, and (main process) write it and the checkpoints,
    with every process's RNG state (their draws differ, and so do their positions in them where
    the batch splits unevenly), taken after the main process's diagnostics drew theirs."""
    session.history.append(record)
    model = session.product  # (the average of the weights with ema)
    if session.ddp.main:
        x, _, inputs = diagnostics_batch
        diagnostics = []
        transformers = transformers_of(model)
        if transformers and len(x):  # (with the predicted classes: does the warp encode them?)
            diagnostics = theta_diagnostics(transformers, x, classes=predicted_classes(model, x, **inputs), **inputs)
        record["theta"] = diagnostics
        record["warnings"] = _divergence_warnings(record) + collapse_warnings(diagnostics)
        _print(_epoch_line(record, session.epochs), main=True)
        for warning in record["warnings"]:
            _print(f"warning: {warning}", main=True, file=sys.stderr)
    rng = session.ddp.gather(capture_rng()) if session.run_dir is not None else []
    if not session.ddp.main or session.run_dir is None:
        return
    session.run_dir.append(record)
    improved = record["test_error"] < session.best_error
    session.best_error = min(session.best_error, record["test_error"])
    summary = {k: record[k] for k in ("train_loss", "train_error", "test_loss", "test_error", "test_ece", "test_nll")
               if k in record}
    state = {"optimizer": session.optimizer.state_dict(), "scheduler": session.scheduler.state_dict(),
             "rng": rng[0], "best_error": session.best_error}
    if len(rng) > 1:
        state["rng_of_ranks"] = rng
    if session.average is not None:
        state.update(raw_weights=session.core.state_dict(), averaged=session.average.n_averaged)
    session.run_dir.save(model, session.config, epoch=record["epoch"], step=record["step"], metrics=summary,
                         training_state=state, best=improved, data_law=session.data_law)


def _divergence_warnings(record: dict[str, Any]) -> list[str]:
    """A warning where the epoch's training or test loss is not finite: the training diverged, and
    every later number is NaN (a learning rate of 1e30 trained to NaN and ended with "done" and
    no word of it, the θ diagnostics being about the transformer alone).

    Example:
        >>> _divergence_warnings({"train_loss": float("nan"), "test_loss": 0.5})
        ['the training loss is nan: the training diverged (try a smaller lr, or grad_clip)']
        >>> _divergence_warnings({"train_loss": 0.3, "test_loss": 0.5})
        []
    """
    bad = [f"the {name} loss is {record[key]}" for key, name in (("train_loss", "training"), ("test_loss", "test"))
           if key in record and not math.isfinite(record[key])]
    return [f"{' and '.join(bad)}: the training diverged (try a smaller lr, or grad_clip)"] if bad else []


def wall_seconds(history: Sequence[dict[str, Any]]) -> float:
    """A run's training wall time (evaluation included) summed over its epochs, across resumed sessions.

    ``elapsed`` restarts at each session of the engine, whose records say where it started
    (``session``): the last ``elapsed`` of each session, summed. In records written before
    that field an epoch whose ``elapsed`` is not above the previous one starts a new session
    (which missed a resumed session whose first epoch outlasted the whole killed one).

    Example:
        >>> wall_seconds([{"elapsed": 2.0, "session": 0}, {"elapsed": 5.0, "session": 1}])  # resumed at epoch 1
        7.0
    """
    total, previous, previous_session = 0.0, None, None
    for record in history:
        elapsed = float(record.get("elapsed", record.get("seconds", 0.0)))
        session = record.get("session")
        new = previous is None or (session != previous_session if session is not None else elapsed <= previous)
        total += elapsed if new else elapsed - previous
        previous, previous_session = elapsed, session
    return total


def _summary(session: _Session) -> None:
    if not (session.ddp.main and session.history):
        return
    config, final = session.config, session.history[-1]
    best = min(h["test_error"] for h in session.history)
    _print(  # (the time of every session of a resumed run: elapsed restarts at each)
        f"done: {config.model} on {config.data}, {final['epoch']} epoch{'s' * (final['epoch'] != 1)} / "
        f"{final['step']} step{'s' * (final['step'] != 1)} in "
        f"{wall_seconds(session.history):.1f} s: test error {final['test_error']:.2%} (best {best:.2%}), "
        f"test loss {final['test_loss']:.4f}" + _calibration_text(final)
        + (f"; run in {session.run_dir.path}" if session.run_dir is not None else ""),
        main=True,
    )

def _check_data_args(config: TrainConfig, data_args: dict[str, Any]) -> None:
    """Refuse a model argument that contradicts the data (``dataset_model_args``): fewer classes
    than the labels use (``num_classes=5`` on MNIST failed at the first step with cross-entropy's
    IndexError, after the run directory was written), or another channel count or input size."""
    given = config.model_args
    if isinstance(given.get("num_classes"), int) and given["num_classes"] < data_args["num_classes"]:
        raise ValueError(f"model_args num_classes={given['num_classes']} is fewer than the {data_args['num_classes']} "
                         f"classes of {config.data}")
    if isinstance(given.get("in_channels"), int) and given["in_channels"] != data_args["in_channels"]:
        raise ValueError(f"model_args in_channels={given['in_channels']}, but {config.data} has "
                         f"{data_args['in_channels']} channel(s)")
    size = given.get("input_size")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size] * len(data_args["input_size"])
    if isinstance(size, (list, tuple)) and list(size) != list(data_args["input_size"]):
        raise ValueError(f"model_args input_size={given['input_size']}, but {config.data} has inputs of size "
                         f"{data_args['input_size']}")


def _check_ground_truth_init(config: TrainConfig, model: nn.Module, train_set: Any) -> None:
    if "init_params" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"ground_truth_init needs a model whose forward takes init_params (icstn-stn, c-stn-1, ic-stn-N); "
            f"{config.model} does not"
        )
    x, _, _ = fetch_inputs(train_set, torch.arange(min(1, len(train_set))), ground_truth_init=True)  # (raises, why)
    expected = getattr(model, "input_shape", None)
    if expected is not None and len(x) and tuple(x.shape[1:]) != tuple(expected):
        # (the model gets the undistorted originals, not the data's canvas: it failed at the first step)
        raise ValueError(f"ground_truth_init feeds {config.model} the undistorted originals of {config.data}, "
                         f"{tuple(x.shape[1:])}, but it was built for {tuple(expected)} (its data's input size)")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {record['epoch']:>3}/{epochs}  loss {record['train_loss']:.4f}  train err {record['train_error']:6.2%}"
        f"  test err {record['test_error']:6.2%}"
    )
    if "test_error_raw" in record:  # (ema: the line's test error is the average's)
        line += f" (raw weights {record['test_error_raw']:.2%})"
    if "test_ece" in record:
        line += f"  ECE {record['test_ece']:.4f}  NLL {record['test_nll']:.4f}"
    line += f"  lr {record['lr']:.2g}  {record['images_per_s']:,.0f} img/s"
    for i, d in enumerate(record.get("theta", [])):
        line += f"  θ{i}: dist {d['distance']:.2f} out {d['outside']:.0%} kept {d['kept']:.2f}"
    return line


def _calibration_text(record: dict[str, Any]) -> str:
    if "test_ece" not in record:
        return ""
    return f", ECE {record['test_ece']:.4f}, NLL {record['test_nll']:.4f}"
