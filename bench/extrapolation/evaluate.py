"""Evaluation protocols of the extrapolation workload (ALiBi's "Train Short, Test Long", arXiv 2108.12409).

A stream of T tokens has T - 1 targets: token t (1 <= t < T) predicted from the tokens before it. A window
``[start, end)`` feeds tokens start..end-1 and predicts tokens start+1..end; it scores the targets from
``first`` on (``first`` > start means the window's early targets serve as context only).

non-overlapping: consecutive windows of the eval length, each scored in full; every target exactly once
    (the last window may be shorter).
sliding (stride S <= length): the first window is scored in full; each next window ends S targets later
    (or at the stream's end), is ``length`` long (or starts at 0) and scores only the targets after the
    previous window, so every target is scored once, with at least ``length - S`` tokens of context.

Each window is a fresh sequence: positions restart at 0, as a model trained at length L sees them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.extrapolation.model import lm_loss

PROTOCOLS = ("non-overlapping", "sliding")


@dataclass(frozen=True)
class Window:
    """Inputs tokens[start:end], targets tokens[start + 1:end + 1]; targets at stream index > ``first``
    (i.e. local target index >= first - start) are scored."""

    start: int
    end: int
    first: int

    @property
    def length(self) -> int:
        return self.end - self.start


def windows(total: int, length: int, protocol: str, stride: int | None = None) -> list[Window]:
    """The windows over a stream of ``total`` tokens (``total - 1`` targets).

    Raises ValueError for an unknown protocol, length < 1, a stride outside [1, length] for sliding, or a
    stream with no target.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    if total < 2:
        raise ValueError(f"a stream needs at least 2 tokens to score one, got {total}")
    last = total - 1  # inputs end at most here: the last target is token total - 1
    if protocol == "non-overlapping":
        return [Window(s, min(s + length, last), s) for s in range(0, last, length)]
    if stride is None or not 1 <= stride <= length:
        raise ValueError(f"sliding stride must be in [1, length={length}], got {stride}")
    out = [Window(0, min(length, last), 0)]
    while out[-1].end < last:
        end = min(out[-1].end + stride, last)
        out.append(Window(max(0, end - length), end, out[-1].end))
    return out


@dataclass(frozen=True)
class Score:
    """Summed loss (nats) and the number of targets it covers."""

    loss_sum: float
    count: int

    @property
    def loss_nats(self) -> float:
        return self.loss_sum / self.count

    @property
    def bits_per_byte(self) -> float:
        return self.loss_nats / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss_nats)


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, length: int, protocol: str, *, stride: int | None = None,
             device: str | torch.device = "cpu", batch_tokens: int = 0, seed: int = 0) -> Score:
    """Mean next-byte loss of ``model`` over the (T,) uint8 ``tokens`` under ``protocol`` at ``length``.

    Windows of equal length are batched up to ``batch_tokens`` tokens per forward (0: one window per
    forward). torch's RNG is seeded with ``seed`` first, so SPE's random codes are reproducible. On CUDA the
    forward runs under bf16 autocast; the loss is computed in float32 either way.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model.eval()
    total_loss, count = 0.0, 0
    group: list[Window] = []

    def flush() -> None:
        nonlocal total_loss, count
        starts = [w.start for w in group]
        n = group[0].length
        rows = torch.stack([tokens[s:s + n + 1] for s in starts]).long().to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(rows[:, :-1])
        losses = lm_loss(logits, rows[:, 1:], reduction="none").view(len(group), n)
        for i, w in enumerate(group):
            scored = losses[i, w.first - w.start:]
            total_loss += float(scored.double().sum())
            count += scored.numel()
        group.clear()

    per_batch = max(1, batch_tokens // length)
    for window in windows(tokens.numel(), length, protocol, stride):
        if group and (window.length != group[0].length or len(group) >= per_batch):
            flush()
        group.append(window)
    flush()
    return Score(total_loss, count)
