"""The training loop: seeded, resumable bit-exactly, single-process or DDP.

One function, :func:`train`, runs a :class:`TrainConfig` end to end: it builds the data
and the model, trains with evaluation each epoch, writes ``metrics.jsonl`` and the
checkpoints into the run directory, and returns the history. Under ``torchrun`` it
trains with DistributedDataParallel (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchstn.engine._checkpoint import (
    CheckpointError,
    capture_rng,
    read_checkpoint,
    read_training_state,
    restore_rng,
    save_checkpoint,
)
from torchstn.engine._config import TrainConfig
from torchstn.engine._data import dataset_model_args, epoch_batches, fetch_inputs, load_split, shard
from torchstn.engine._diagnostics import collapse_warnings, theta_diagnostics
from torchstn.engine._evaluate import evaluate
from torchstn.models import check_model_args, create_model
from torchstn.nn import total_kl

__all__ = ["TrainResult", "build_optimizer", "identity_penalty", "resolve_device", "resume_config", "train"]

#: config fields a resumed run may change: its length, and where it runs or finds MNIST
RESUMABLE_CHANGES = ("epochs", "steps", "device", "data_dir", "eval_batch_size")


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
    """``"auto"`` -> CUDA when available, else CPU; anything else as given (``ValueError`` if unusable)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu")
    return device


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _transformer_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for st in getattr(model, "transformers", ()) for p in st.parameters()}


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or Adam with two parameter groups: the classifier and the localisation nets.

    The localisation nets (every parameter of ``model.transformers``) get
    ``lr * loc_lr_mult``; groups without parameters are left out.
    """
    loc_ids = _transformer_parameter_ids(model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in loc_ids], "lr": config.lr, "name": "classifier"},
        {"params": [p for p in params if id(p) in loc_ids], "lr": config.lr * config.loc_lr_mult, "name": "localization"},
    ]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    if config.schedule == "constant":
        return lambda step: 1.0
    if config.schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    every = config.lr_decay_every or max(1, math.ceil(total_steps / 3))
    gamma = config.lr_gamma
    return lambda step: gamma ** (step // every)


def identity_penalty(model: nn.Module) -> torch.Tensor | float:
    """``mean((θ - θ_identity)^2)`` summed over the transformers' last predictions (0 without any)."""
    total: torch.Tensor | float = 0.0
    for st in getattr(model, "transformers", ()):
        theta = st.last_params
        if theta is not None:
            identity = st.transform.identity(device=theta.device, dtype=theta.dtype)
            total = total + (theta - identity).pow(2).mean()
    return total


def resume_config(run_dir: str | Path, **changes: Any) -> TrainConfig:
    """The config of a run directory, with the fields a resumed run may change.

    Raises:
        CheckpointError: no ``config.json`` in ``run_dir``.
        ValueError: a change to a field not in :data:`RESUMABLE_CHANGES`.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} is missing (is {run_dir} a run directory?)")
    config = TrainConfig.load(path)
    changes = {k: v for k, v in changes.items() if v is not None}
    bad = sorted(k for k, v in changes.items() if k not in RESUMABLE_CHANGES and getattr(config, k) != v)
    if bad:
        raise ValueError(
            f"cannot change {', '.join(bad)} when resuming {run_dir}: only {', '.join(RESUMABLE_CHANGES)} may change"
        )
    return config.replace(**changes)


class _Distributed:
    """Process-group bookkeeping: rank, world size, and whether we own the group."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.owned = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owned = True
        self.rank = dist.get_rank() if self.world > 1 else 0
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device("cuda", local) if device.type == "cuda" and self.world > 1 else device
        self.main = self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.owned:
            dist.destroy_process_group()


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
            ``checkpoints/``; ``None`` writes nothing.
        train_set, test_set: datasets to use instead of loading ``config.data``
            (items ``(image (C, H, W), label)``, attributes ``input_shape`` and
            ``num_classes``).
        resume: continue from ``out/checkpoints/last`` (weights, optimiser, schedule,
            RNG and data order), bit-exactly. A ``last.safetensors`` and
            ``last.state.pt`` that were not written together (an interrupted save, a
            copied file) are refused with a ``ValueError`` naming both; a pair from
            before checkpoints carried a write id is resumed when its epochs and steps agree.
        progress: show a progress bar per epoch.
        stop_after: stop after this epoch (as an interruption would; the schedule
            still follows ``config``).

    Returns:
        a :class:`TrainResult`.
    """
    device = resolve_device(config.device)
    ddp = _Distributed(device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train(config, out, ddp, train_set, test_set, resume, progress, stop_after)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # --deterministic ends with the run
        ddp.close()


def _train(
    config: TrainConfig, out: str | Path | None, ddp: _Distributed, train_set: Any, test_set: Any,
    resume: bool, progress: bool, stop_after: int | None,
) -> TrainResult:
    from tqdm import tqdm

    run_dir = Path(out) if out is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run directory (out)")
    check_model_args(config.model, config.model_args)  # a misspelt argument fails now, not after the data
    # data (the main process first, so a download happens once)
    if not ddp.main:
        ddp.barrier()
    train_set = train_set if train_set is not None else load_split(config, "train")
    test_set = test_set if test_set is not None else load_split(config, "test")
    if ddp.main:
        ddp.barrier()
    _seed_everything(config.seed, config.deterministic)  # after the data: its loading draws nothing here

    config = config.replace(model_args={**dataset_model_args(train_set), **config.model_args})
    model = create_model(config.model, **config.model_args).to(ddp.device)
    if config.ground_truth_init:
        _check_ground_truth_init(config, model, train_set)
    n_train = len(train_set)
    batch_size = min(config.batch_size, n_train)
    if batch_size < ddp.world:
        raise ValueError(f"batch size {batch_size} is smaller than the {ddp.world} processes")
    per_epoch = n_train // batch_size
    total_steps = config.steps if config.steps is not None else config.epochs * per_epoch
    epochs = math.ceil(total_steps / per_epoch)
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))

    start_epoch, step, history = 0, 0, []
    best_error = math.inf
    if resume:
        assert run_dir is not None
        tensors, saved, info = read_checkpoint(run_dir / "checkpoints" / "last.safetensors")
        different = sorted(
            k for k, v in saved.to_dict().items() if k not in RESUMABLE_CHANGES and config.to_dict()[k] != v
        )
        if different:
            raise ValueError(f"cannot resume {run_dir}: the config differs in {', '.join(different)}")
        state = read_training_state(run_dir / "checkpoints" / "last.safetensors")
        model.load_state_dict(tensors)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])  # the lambdas themselves come from the config
        restore_rng(state["rng"])
        start_epoch, step, best_error = info["epoch"], info["step"], state["best_error"]
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        history = history[:start_epoch]
        if ddp.main:  # drop epochs logged after the checkpoint (an interruption between the two)
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    elif run_dir is not None and ddp.main:
        if (run_dir / "checkpoints").exists():
            raise ValueError(f"{run_dir} already holds a run: resume it (--resume) or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")
        (run_dir / "metrics.jsonl").write_text("")

    core = model
    if ddp.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[ddp.device] if ddp.device.type == "cuda" else None)
    grad_params = [p for p in core.parameters() if p.requires_grad]
    curve_every = max(1, total_steps // 100)
    diag_x, _, diag_inputs = fetch_inputs(
        test_set, torch.arange(min(config.diagnostics_samples, len(test_set))), config.ground_truth_init, ddp.device
    )
    last_epoch = epochs if stop_after is None else min(epochs, stop_after)
    if ddp.main and start_epoch == 0:
        n_params = sum(p.numel() for p in core.parameters())
        _print(
            f"training {config.model} ({n_params:,} parameters) on {config.data}: {n_train} train / "
            f"{len(test_set)} test images, {total_steps} steps of batch {batch_size}, device {ddp.device}"
            + (f", {ddp.world} processes" if ddp.world > 1 else ""),
            main=True,
        )
    if ddp.main and start_epoch >= last_epoch:
        _print(f"nothing to do: {run_dir} is at epoch {start_epoch} of {epochs} (give more --epochs to extend it)", main=True)
    started = time.perf_counter()
    for epoch in range(start_epoch, last_epoch):
        model.train()
        if hasattr(train_set, "set_epoch"):  # online distortions: this epoch's draw
            train_set.set_epoch(epoch)
        batches = epoch_batches(n_train, batch_size, config.seed, epoch)[: total_steps - step]
        loss_sum = torch.zeros((), dtype=torch.float64, device=ddp.device)
        wrong_sum = torch.zeros((), dtype=torch.float64, device=ddp.device)
        kl_sum = torch.zeros((), dtype=torch.float64, device=ddp.device)
        seen = 0
        curve: list[list[float]] = []
        window = torch.zeros(3, device=ddp.device)
        tic = time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not (progress and ddp.main), file=sys.stderr, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            x, y, inputs = fetch_inputs(train_set, shard(batch, ddp.rank, ddp.world), config.ground_truth_init, ddp.device)
            logits = model(x, **inputs)
            loss = F.cross_entropy(logits, y)  # a P-STN model returns log-probabilities: the same data term
            kl = total_kl(core)  # the weighted KL of P-STN modules (0.0 for other models)
            objective = loss + kl
            if config.identity_reg:
                objective = objective + config.identity_reg * identity_penalty(core)
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(grad_params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            batch_loss, batch_wrong = loss.detach() * y.numel(), (logits.detach().argmax(1) != y).sum()
            loss_sum += batch_loss
            wrong_sum += batch_wrong
            if isinstance(kl, torch.Tensor):
                kl_sum += kl.detach() * y.numel()
            seen += y.numel()
            window += torch.stack([batch_loss, batch_wrong.to(batch_loss.dtype), batch_loss.new_tensor(y.numel())])
            if step % curve_every == 0:  # this process's train loss and error since the last point
                total = window.tolist()
                curve.append([step, total[0] / total[2], total[1] / total[2]])
                window.zero_()
            if i % 20 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", err=f"{wrong_sum.item() / seen:.2%}")
        bar.close()
        train_seconds = time.perf_counter() - tic
        loss_total, wrong_total, kl_total, seen_total = ddp.sum(
            [loss_sum.item(), wrong_sum.item(), kl_sum.item(), float(seen)]
        )
        test = evaluate(core, test_set, batch_size=config.eval_batch_size, device=ddp.device,
                        ground_truth_init=config.ground_truth_init)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": loss_total / seen_total,
            "train_error": wrong_total / seen_total,
            "train_kl": kl_total / seen_total,  # the weighted KL term of the objective (0 without a P-STN)
            **{f"test_{k}": v for k, v in test.items() if k != "n"},
            "train_curve": curve,
            "images_per_s": seen_total / train_seconds,
            "seconds": train_seconds,
            "elapsed": time.perf_counter() - started,
        }
        if ddp.main:
            diagnostics = theta_diagnostics(core.transformers, diag_x, **diag_inputs) if len(getattr(core, "transformers", ())) else []
            record["theta"] = diagnostics
            record["warnings"] = collapse_warnings(diagnostics)
            history.append(record)
            _print(_epoch_line(record, epochs), main=True)
            for warning in record["warnings"]:
                _print(f"warning: {warning}", main=True, file=sys.stderr)
            if run_dir is not None:
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                improved = record["test_error"] < best_error
                best_error = min(best_error, record["test_error"])
                summary = {k: record[k] for k in ("train_loss", "train_error", "test_loss", "test_error", "test_ece", "test_nll")
                           if k in record}
                if improved:
                    save_checkpoint(run_dir / "checkpoints" / "best.safetensors", core, config,
                                    epoch=epoch + 1, step=step, metrics=summary)
                state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "rng": capture_rng(), "best_error": best_error}
                save_checkpoint(run_dir / "checkpoints" / "last.safetensors", core, config,
                                epoch=epoch + 1, step=step, metrics=summary, training_state=state)
        else:
            history.append(record)
        ddp.barrier()

    if ddp.main and history:
        final = history[-1]
        best = min(h["test_error"] for h in history)
        _print(
            f"done: {config.model} on {config.data}, {final['epoch']} epochs / {final['step']} steps in "
            f"{final['elapsed']:.1f} s: test error {final['test_error']:.2%} (best {best:.2%}), "
            f"test loss {final['test_loss']:.4f}" + _calibration_text(final)
            + (f"; run in {run_dir}" if run_dir is not None else ""),
            main=True,
        )
    core.eval()
    return TrainResult(model=core, config=config, history=history, run_dir=run_dir)


def _check_ground_truth_init(config: TrainConfig, model: nn.Module, train_set: Any) -> None:
    if "init_params" not in inspect.signature(model.forward).parameters:
        raise ValueError(
            f"ground_truth_init needs a model whose forward takes init_params (icstn-stn, c-stn-1, ic-stn-N); "
            f"{config.model} does not"
        )
    fetch_inputs(train_set, torch.arange(min(1, len(train_set))), ground_truth_init=True)  # raises, saying why


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {record['epoch']:>3}/{epochs}  loss {record['train_loss']:.4f}  train err {record['train_error']:6.2%}"
        f"  test err {record['test_error']:6.2%}"
    )
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
