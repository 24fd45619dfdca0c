"""Evaluation windows: every target scored once, never before its context; the uniform model's loss."""

from __future__ import annotations

import math

import pytest
import torch

from bench.extrapolation.evaluate import evaluate, windows
from bench.extrapolation.model import ByteLM, ModelConfig


def _scored(total: int, length: int, protocol: str, stride: int | None = None) -> list[tuple[int, int]]:
    """(target index, tokens of context before it) of every scored target."""
    out = []
    for w in windows(total, length, protocol, stride):
        assert 0 <= w.start <= w.first < w.end <= total - 1 and w.length <= length
        out += [(t, t - w.start) for t in range(w.first + 1, w.end + 1)]
    return out


@pytest.mark.parametrize("total", [2, 3, 64, 65, 100, 257])
@pytest.mark.parametrize("length", [1, 7, 16, 64])
def test_non_overlapping_scores_every_target_once(total: int, length: int) -> None:
    scored = _scored(total, length, "non-overlapping")
    assert sorted(t for t, _ in scored) == list(range(1, total))
    starts = [w.start for w in windows(total, length, "non-overlapping")]
    assert starts == list(range(0, total - 1, length))  # disjoint windows of the eval length


@pytest.mark.parametrize("total", [2, 50, 64, 65, 300])
@pytest.mark.parametrize(("length", "stride"), [(16, 16), (16, 8), (16, 5), (16, 1), (64, 32), (7, 3)])
def test_sliding_scores_every_target_once_with_its_context(total: int, length: int, stride: int) -> None:
    scored = _scored(total, length, "sliding", stride)
    assert sorted(t for t, _ in scored) == list(range(1, total))
    first = windows(total, length, "sliding", stride)[0]
    for target, context in scored:
        if target > first.end:  # past the first window: at least length - stride tokens before it
            assert context >= length - stride + 1
        assert context >= 1 and context <= length


def test_bad_window_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="'strided'"):
        windows(100, 16, "strided")
    with pytest.raises(ValueError, match="17"):
        windows(100, 16, "sliding", 17)


def test_zeroed_output_layer_gives_ln_256_per_byte() -> None:
    model = ByteLM(ModelConfig("softmax-ape@naive", n_layers=1, d_model=16, n_heads=2))
    with torch.no_grad():
        model.head.weight.zero_()  # tied: the embedding is zero too, so every logit is exactly 0
    tokens = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for protocol, stride in (("non-overlapping", None), ("sliding", 16)):
        score = evaluate(model, tokens, 32, protocol, stride=stride, batch_tokens=64)
        assert score.count == 299
        # The loss is computed in float32: exactly ln 256 rounded to float32, for every target.
        assert score.loss_nats == float(torch.tensor(math.log(256), dtype=torch.float32))
        assert score.bits_per_byte == pytest.approx(8.0, rel=1e-7)
