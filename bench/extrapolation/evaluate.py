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


BLOCK_TOKENS = 1024  # scored targets per block of the standard error (stream indices 1..1024, 1025..2048, ...)


@dataclass(frozen=True)
class Score:
    """Summed loss (nats) and the number of targets it covers, and the same per block of ``BLOCK_TOKENS``
    consecutive targets of the stream (target t falls in block (t - 1) // BLOCK_TOKENS), from which the
    standard error comes: the blocks of one stream are the same at every length and protocol, so two scores of
    one stream can be compared block by block (``paired_difference``)."""

    loss_sum: float
    count: int
    block_sums: tuple[float, ...] = ()
    block_counts: tuple[int, ...] = ()

    @classmethod
    def from_blocks(cls, block_sums: list[float], block_counts: list[int]) -> Score:
        """The score whose blocks are these (as ``scores.json`` keeps them)."""
        return cls(float(sum(block_sums)), int(sum(block_counts)), tuple(float(s) for s in block_sums),
                   tuple(int(c) for c in block_counts))

    @property
    def loss_nats(self) -> float:
        return self.loss_sum / self.count

    @property
    def bits_per_byte(self) -> float:
        return self.loss_nats / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss_nats)

    @property
    def block_means(self) -> list[float]:
        """Mean loss (nats) of each non-empty block."""
        return [s / c for s, c in zip(self.block_sums, self.block_counts, strict=True) if c]

    @property
    def loss_se(self) -> float | None:
        """Standard error of ``loss_nats`` (nats/byte) over the blocks: their standard deviation / sqrt(blocks).
        Bytes within a block are correlated (one passage is easy, the next hard); blocks of 1,024 bytes are
        close to independent, so this is the honest sampling error of the score. None with fewer than 2 blocks."""
        return standard_error(self.block_means)


def standard_error(values: list[float]) -> float | None:
    """Sample standard deviation / sqrt(len); None for fewer than 2 values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def paired_difference(score: Score, base: Score) -> tuple[float, float | None]:
    """(difference of mean losses, its standard error), nats/byte: ``score`` minus ``base``, both of the same
    stream. The error is over the per-block differences, so what the two have in common (the same hard
    passages) cancels: far smaller than either score's own error. Raises ValueError for different streams."""
    if score.block_counts != base.block_counts:
        raise ValueError(f"paired_difference needs two scores of the same stream, got block counts "
                         f"{score.block_counts[:4]}... and {base.block_counts[:4]}...")
    diffs = [a / c - b / c for a, b, c in zip(score.block_sums, base.block_sums, score.block_counts, strict=True)
             if c]
    return score.loss_nats - base.loss_nats, standard_error(diffs)


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, length: int, protocol: str, *, stride: int | None = None,
             device: str | torch.device = "cpu", batch_tokens: int = 0, seed: int = 0) -> Score:
    """Mean next-byte loss of ``model`` over the (T,) uint8 ``tokens`` under ``protocol`` at ``length``.

    Windows of equal length are batched up to ``batch_tokens`` tokens per forward (0: one window per
    forward). torch's RNG is seeded with ``seed`` first, so SPE's random codes are reproducible. On CUDA the
    forward runs under bf16 autocast; the loss is computed in float32 either way, and summed per block
    (``BLOCK_TOKENS``) in float64.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    model.eval()
    total = tokens.numel()
    blocks = (total - 1 + BLOCK_TOKENS - 1) // BLOCK_TOKENS
    # Per target (stream index 1..T-1): its loss, written once by the window that scores it.
    per_target = torch.zeros(total, dtype=torch.float64)
    group: list[Window] = []

    def flush() -> None:
        starts = [w.start for w in group]
        n = group[0].length
        rows = torch.stack([tokens[s:s + n + 1] for s in starts]).long().to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(rows[:, :-1])
        losses = lm_loss(logits, rows[:, 1:], reduction="none").view(len(group), n).double().cpu()
        for i, w in enumerate(group):
            # Local position j predicts stream target w.start + j + 1; targets after w.first are scored.
            per_target[w.first + 1:w.end + 1] = losses[i, w.first - w.start:]
        group.clear()

    per_batch = max(1, batch_tokens // length)
    for window in windows(total, length, protocol, stride):
        if group and (window.length != group[0].length or len(group) >= per_batch):
            flush()
        group.append(window)
    flush()
    scored = per_target[1:]
    padded = torch.zeros(blocks * BLOCK_TOKENS, dtype=torch.float64)
    padded[:scored.numel()] = scored
    sums = padded.view(blocks, BLOCK_TOKENS).sum(dim=1)
    counts = [min(BLOCK_TOKENS, scored.numel() - b * BLOCK_TOKENS) for b in range(blocks)]
    return Score(float(scored.sum()), scored.numel(), tuple(float(s) for s in sums), tuple(counts))


def forward_peak_input(tokens: torch.Tensor, length: int, batch_tokens: int, device: str | torch.device
                       ) -> torch.Tensor:
    """The largest input one forward of ``evaluate`` takes at ``length``: (windows per forward, length) int64
    from the stream's start, for measuring the evaluation's peak memory apart from the scoring pass."""
    per_batch = max(1, batch_tokens // length)
    usable = (tokens.numel() - 1) // length
    count = max(1, min(per_batch, usable))
    return torch.stack([tokens[i * length:(i + 1) * length] for i in range(count)]).long().to(device)
