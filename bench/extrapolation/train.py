"""Training loop of the extrapolation LM: AdamW, linear warm-up then cosine decay, gradient clipping, seeded.

Data order: the batch of step s is drawn from a generator seeded by (seed, s) alone, so a resumed run sees
exactly the batches an uninterrupted one would. Checkpoints (model, optimizer, step, losses, torch's RNG
state: SPE draws its codes from it) are written atomically (temporary file + ``os.replace``) and loaded with
``weights_only=True``. Under ``torch.distributed`` (torchrun) the model is wrapped in DDP and each rank
trains on its contiguous slice of the same global batch; rank 0 alone writes checkpoints and the loss curve.
On CUDA the forward runs under bf16 autocast; on CPU in float32.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bench.extrapolation.model import lm_loss

CHECKPOINT = "checkpoint.pt"
LOSS_CURVE = "loss.csv"


@dataclass(frozen=True)
class TrainConfig:
    """steps of ``batch_size`` (global) sequences of ``train_len`` bytes; lr peaks after ``warmup_steps`` and
    decays by a cosine to ``min_lr_ratio`` x lr at the last step."""

    train_len: int
    batch_size: int
    steps: int
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("train_len", "batch_size", "steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")


@dataclass
class TrainResult:
    """losses: the mean training loss (nats/byte) of every step 1..steps; resumed_from: the step of the
    checkpoint training continued from (0 for a fresh start)."""

    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    wall_s: float = 0.0


def learning_rate(step: int, config: TrainConfig) -> float:
    """lr of step ``step`` (0-based): linear warm-up to ``lr``, then cosine to ``min_lr_ratio`` x lr."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_at(tokens: torch.Tensor, step: int, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: inputs and next-byte targets, each (batch_size, train_len) int64.

    Windows start at uniform random offsets of the (T,) uint8 stream, drawn from (seed, step) alone.
    """
    span = tokens.numel() - config.train_len - 1
    if span < 1:
        raise ValueError(f"the training split has {tokens.numel()} tokens, fewer than train_len + 2 = "
                         f"{config.train_len + 2}")
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    starts = torch.randint(0, span + 1, (config.batch_size,), generator=generator)
    rows = torch.stack([tokens[s:s + config.train_len + 1] for s in starts.tolist()]).long()
    return rows[:, :-1], rows[:, 1:]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_atomic(payload: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def write_loss_curve(losses: list[float], config: TrainConfig, path: Path) -> None:
    """``step,lr,loss`` per step (loss in nats/byte), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "lr", "loss_nats"])
        for step, loss in enumerate(losses, 1):
            writer.writerow([step, f"{learning_rate(step - 1, config):.6g}", f"{loss:.6f}"])
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path`` (tensors on CPU), or None when there is none."""
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def train(model: nn.Module, tokens: torch.Tensor, config: TrainConfig, *, device: str | torch.device,
          out_dir: Path | None = None, progress: bool | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model`` (already on ``device``) on the (T,) uint8 ``tokens`` for ``config.steps`` steps.

    ``out_dir`` holds checkpoint.pt and loss.csv; when it already holds a checkpoint, training resumes from
    it (a finished one returns at once). ``progress``: None draws a tqdm bar on a terminal only, False
    never. ``on_step(step, loss)`` is called after every step (a worker process reports its progress through
    it). Returns the per-step losses (averaged over ranks under DDP).
    """
    from tqdm import tqdm

    device = torch.device(device)
    rank, world = _world()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the world size {world}")
    local = config.batch_size // world
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay)
    result = TrainResult()
    checkpoint_path = out_dir / CHECKPOINT if out_dir is not None else None
    state = load_checkpoint(checkpoint_path) if checkpoint_path is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and "cuda_rng" in state:  # SPE draws its codes on the GPU from this one
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        result.losses, result.resumed_from = list(state["losses"]), int(state["step"])
    wrapped = model
    if world > 1:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    start = time.perf_counter()
    step = result.resumed_from
    bar = tqdm(total=config.steps, initial=step, unit="step", dynamic_ncols=True,
               disable=True if progress is False or rank != 0 else None)
    model.train()
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        inputs, targets = batch_at(tokens, step, config)
        inputs = inputs[rank * local:(rank + 1) * local].to(device)
        targets = targets[rank * local:(rank + 1) * local].to(device)
        tick = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = wrapped(inputs)
        loss = lm_loss(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over ranks: the global batch's mean loss
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        value = loss.detach()
        if world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        result.losses.append(float(value))
        step += 1
        bar.set_postfix(loss=f"{result.losses[-1]:.3f}",
                        tok_s=f"{config.batch_size * config.train_len / (time.perf_counter() - tick):.0f}")
        bar.update(1)
        if on_step is not None:
            on_step(step, result.losses[-1])
        if checkpoint_path is not None and rank == 0 and (step % config.checkpoint_every == 0
                                                          or step == config.steps):
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                       "losses": result.losses, "rng": torch.get_rng_state()}
            if device.type == "cuda":
                payload["cuda_rng"] = torch.cuda.get_rng_state(device)
            _save_atomic(payload, checkpoint_path)
            write_loss_curve(result.losses, config, out_dir / LOSS_CURVE)
    bar.close()
    if world > 1:
        dist.barrier()
    result.wall_s = time.perf_counter() - start
    return result
