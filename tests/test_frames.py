"""Frame-local LRPE-permutation features (``LRPE.frame_pair``, ``lrpe.attention.FrameCarry``): the causal
chunked numerator over them equals the quadratic oracle over the global features ``Pi^s P x_s``, values and
gradients, in float64, at lengths that end inside a chunk, inside a frame, or before the first frame ends."""

from __future__ import annotations

import pytest
import torch

from lrpe import LRPE
from lrpe.attention import FrameCarry, linear_attention
from lrpe.core import LinearAttentionCore

F64 = torch.float64


def _qkv(n: int, heads: int = 3, d: int = 8, dv: int = 5, batch: int = 2, seed: int = 0,
         requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    shapes = ((batch, heads, n, d), (batch, heads, n, d), (batch, heads, n, dv))
    return tuple(torch.randn(s, generator=g, dtype=F64).requires_grad_(requires_grad) for s in shapes)


def _oracle(enc: LRPE, q, k, v, offset: int = 0) -> torch.Tensor:
    """The definition: global features, explicit causal scores."""
    qp, kp = enc(q, offset), enc(k, offset)
    return linear_attention(qp, kp, v, impl="quadratic")


@pytest.mark.parametrize("num_heads", [None, 3])
@pytest.mark.parametrize(("n", "rows", "chunk"), [
    (7, 16, 4),     # shorter than one frame, ends inside a chunk
    (64, 64, 16),   # one whole frame
    (50, 16, 8),    # several frames, the last partial, ends inside a chunk
    (96, 8, 8),     # a frame per chunk: a carry at every chunk
    (200, 32, 16),
])
def test_frame_features_give_the_oracle_numerator(num_heads, n, rows, chunk) -> None:
    enc = LRPE("permutation", 8, p="householder", num_heads=num_heads, seed=1).double()
    q, k, v = _qkv(n)
    qp, kp, carry = enc.frame_pair(q, k, rows)
    out = linear_attention(qp, kp, v, chunk_size=chunk, frames=carry)
    torch.testing.assert_close(out, _oracle(enc, q, k, v, offset=123), rtol=0, atol=1e-12)


def test_without_the_carry_the_numerator_is_wrong() -> None:
    """The carry is what makes frames exact: dropping it (plain chunked numerator over frame-local features)
    changes every row after the first frame, and only those."""
    enc = LRPE("permutation", 8, num_heads=3, seed=1).double()
    q, k, v = _qkv(40)
    qp, kp, carry = enc.frame_pair(q, k, 16)
    wrong = linear_attention(qp, kp, v, chunk_size=8)
    right = linear_attention(qp, kp, v, chunk_size=8, frames=carry)
    torch.testing.assert_close(wrong[:, :, :16], right[:, :, :16], rtol=0, atol=1e-12)
    assert (wrong[:, :, 16:] - right[:, :, 16:]).abs().amax() > 1e-3


def test_frame_table_of_each_row_is_pi_to_the_row_within_its_frame() -> None:
    enc = LRPE("permutation", 8, num_heads=3, seed=2).double()
    x, y = _qkv(21)[:2]
    qp, kp, carry = enc.frame_pair(x, y, 8)
    local = torch.arange(21) % 8
    idx = enc.permutation_index(local)
    assert torch.equal(qp, torch.gather(x, -1, idx.expand(x.shape)))
    assert torch.equal(kp, torch.gather(y, -1, idx.expand(y.shape)))
    assert torch.equal(carry.index, enc.permutation_index(torch.tensor([-8]))[:, 0])
    assert torch.equal(carry.index.gather(-1, carry.inverse), torch.arange(8).expand(3, 8))


@pytest.mark.parametrize("num_heads", [None, 3])
def test_gradients_through_frames_and_carries_equal_the_oracle(num_heads) -> None:
    """The gathers' backward (pi^(-r)) and the carries' (the inverse permutation, in the reversed sum) against
    autograd through the oracle, and gradcheck of the whole frame path."""
    enc = LRPE("permutation", 8, p="householder", num_heads=num_heads, seed=3).double()
    q, k, v = _qkv(45, requires_grad=True)
    qp, kp, carry = enc.frame_pair(q, k, 16)
    out = linear_attention(qp, kp, v, chunk_size=8, frames=carry)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(_oracle(enc, q, k, v), (q, k, v), grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)

    def frames(q, k, v):
        qp, kp, carry = enc.frame_pair(q, k, 4)
        return linear_attention(qp, kp, v, chunk_size=2, frames=carry)

    small = _qkv(11, heads=3, d=8, dv=3, batch=1, seed=4, requires_grad=True)
    assert torch.autograd.gradcheck(frames, small)


def test_the_core_takes_frames_on_cpu_and_equals_the_oracle(monkeypatch) -> None:
    """LinearAttentionCore with an LRPE-permutation (causal, chunked, no state) reads frame-local features:
    before, it gathered pi^s for every position. Forward and training gradients equal the global path."""
    calls = []
    original = LRPE.frame_pair
    monkeypatch.setattr(LRPE, "frame_pair", lambda self, *a, **kw: calls.append(a[-1]) or original(self, *a, **kw))
    core = LinearAttentionCore(8, num_heads=3, positional="permutation", chunk_size=4, seed=5).double()
    monkeypatch.setattr(core, "_frame_rows", lambda: 8)
    q, k, v = _qkv(30, requires_grad=True)
    out = core(q, k, v, offset=7)
    assert calls == [8]
    qf, kf = core.feature_map(q), core.feature_map(k)
    want = linear_attention(*core.positional.forward_pair(qf, kf, 7), v, impl="quadratic")
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    for g, w in zip(got, torch.autograd.grad(want, (q, k, v), grad), strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"causal": False}, "frames need causal=True and no initial_state or return_state"),
    ({"return_state": True}, "frames need causal=True and no initial_state or return_state"),
    ({"normalize": True}, "need denominator_features"),
    ({"impl": "quadratic"}, "got impl='quadratic', allowed: chunked, auto"),
    ({"chunk_size": 3}, "multiple of chunk_size = 3, got 8"),
])
def test_frames_outside_the_chunked_causal_numerator_are_refused(kwargs, why) -> None:
    enc = LRPE("permutation", 8, num_heads=3).double()
    q, k, v = _qkv(10)
    qp, kp, carry = enc.frame_pair(q, k, 8)
    with pytest.raises(ValueError, match=why.replace("(", r"\(").replace(")", r"\)")):
        linear_attention(qp, kp, v, chunk_size=kwargs.pop("chunk_size", 4), frames=carry, **kwargs)


def test_bad_frame_carry_and_kind_are_named() -> None:
    q, k, v = _qkv(10)
    bad = FrameCarry(8, torch.arange(7), torch.arange(7))
    with pytest.raises(ValueError, match=r"frames.index must be long of shape \(8,\) or \(3, 8\), got torch.int64 "
                                         r"\(7,\)"):
        linear_attention(q, k, v, chunk_size=4, frames=bad)
    with pytest.raises(ValueError, match="frame_pair needs kind 'permutation', this LRPE is 'orthogonal'"):
        LRPE("orthogonal", 8).frame_pair(q, k)
    with pytest.raises(ValueError, match="rows must be an int >= 1, got 0"):
        LRPE("permutation", 8).frame_pair(q, k, 0)


def test_cached_tables_follow_a_loaded_permutation() -> None:
    """The frame tables are kept between calls; loading another pi (same shapes) must not reuse them."""
    a, b = LRPE("permutation", 8, num_heads=3, seed=0), LRPE("permutation", 8, num_heads=3, seed=9)
    q, k = _qkv(12)[:2]
    first = a.frame_pair(q, k, 8)[0]
    a.load_state_dict(b.state_dict())
    torch.testing.assert_close(a.frame_pair(q, k, 8)[0], b.frame_pair(q, k, 8)[0], rtol=0, atol=0)
    assert not torch.equal(first, b.frame_pair(q, k, 8)[0])
    with torch.inference_mode():  # a module built in inference mode: tables built every call, still right
        c = LRPE("permutation", 8, num_heads=3, seed=9)
        torch.testing.assert_close(c.frame_pair(q, k, 8)[0], b.frame_pair(q, k, 8)[0], rtol=0, atol=0)
