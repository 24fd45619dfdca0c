"""Linear attention: quadratic oracle == recurrent == chunked (docs/math.md section 1), the denominator, states and
decoding, gradients, half precision, memory shape, and errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lrpe import linear_attention, linear_attention_step, normalizer
from lrpe.attention import LinearAttentionState

F64 = torch.float64
CHUNK = 16


def _qkv(n: int, dk: int = 8, dv: int = 5, *, seed: int = 0, dtype: torch.dtype = F64, positive: bool = True,
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature-like q, k (positive by default, as after 1 + elu) of width dk, and v of width dv."""
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, 3, n, dk, generator=g, dtype=F64) for _ in range(2))
    if positive:
        q, k = q.exp(), k.exp()
    v = torch.randn(2, 3, n, dv, generator=g, dtype=F64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, normalize: bool,
              eps: float) -> torch.Tensor:
    """The definition, one output row at a time."""
    n = q.shape[2]
    rows = []
    for s in range(n):
        keys = range(s + 1) if causal else range(n)
        w = torch.stack([(q[:, :, s] * k[:, :, t]).sum(-1) for t in keys], dim=-1)  # (B, H, T)
        row = torch.einsum("bht,bhtd->bhd", w, v[:, :, list(keys)])
        rows.append(row / (w.sum(-1, keepdim=True) + eps) if normalize else row)
    return torch.stack(rows, dim=2)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalize", [False, True])
def test_quadratic_oracle_is_the_definition(causal: bool, normalize: bool) -> None:
    q, k, v = _qkv(7)
    out = linear_attention(q, k, v, causal=causal, normalize=normalize, eps=1e-3, impl="quadratic")
    torch.testing.assert_close(out, _explicit(q, k, v, causal, normalize, 1e-3), rtol=0, atol=1e-10)


LENGTHS = [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 2 * CHUNK + 5, 75]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalize", [False, True])
def test_recurrent_chunked_and_quadratic_agree(n: int, causal: bool, normalize: bool) -> None:
    q, k, v = _qkv(n, seed=n, positive=normalize)  # signed features without a denominator
    kwargs = {"causal": causal, "normalize": normalize, "chunk_size": CHUNK}
    oracle = linear_attention(q, k, v, impl="quadratic", **kwargs)
    assert oracle.shape == (2, 3, n, 5)
    for impl in ("recurrent", "chunked", "auto"):
        torch.testing.assert_close(linear_attention(q, k, v, impl=impl, **kwargs), oracle, rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 200])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    q, k, v = _qkv(70, dk=6, dv=11, positive=False)
    oracle = linear_attention(q, k, v, impl="quadratic")
    torch.testing.assert_close(linear_attention(q, k, v, chunk_size=chunk_size), oracle, rtol=0, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False])
def test_normalizer_is_the_row_sum_of_scores(causal: bool) -> None:
    q, k, _ = _qkv(21, positive=False)
    scores = q @ k.mT
    if causal:
        scores = scores.tril()
    torch.testing.assert_close(normalizer(q, k, causal=causal), scores.sum(-1), rtol=0, atol=1e-10)
    k_sum = torch.randn(2, 3, 8, dtype=F64)
    expected = scores.sum(-1) + (q * k_sum[:, :, None]).sum(-1)
    torch.testing.assert_close(normalizer(q, k, causal=causal, k_sum=k_sum), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("impl", ["quadratic", "recurrent", "chunked"])
@pytest.mark.parametrize("causal", [True, False])
def test_denominator_features_replace_q_and_k_in_the_denominator(impl: str, causal: bool) -> None:
    q, k, v = _qkv(40, positive=False)
    qd, kd, _ = _qkv(40, dk=4, seed=1)
    out = linear_attention(q, k, v, causal=causal, normalize=True, eps=0.5, impl=impl, chunk_size=CHUNK,
                           denominator_features=(qd, kd))
    num = linear_attention(q, k, v, causal=causal, impl="quadratic")
    expected = num / (normalizer(qd, kd, causal=causal) + 0.5)[..., None]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("normalize", [False, True])
def test_decode_loop_equals_the_causal_forward(normalize: bool) -> None:
    q, k, v = _qkv(23, dk=6, dv=4)
    full = linear_attention(q, k, v, normalize=normalize)
    state, outs = None, []
    for s in range(q.shape[2]):
        out, state = linear_attention_step(q[:, :, s], k[:, :, s], v[:, :, s], state, normalize=normalize)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, dim=2), full, rtol=0, atol=1e-10)
    assert state.kv.shape == (2, 3, 6, 4) and state.k_sum.shape == (2, 3, 6)


@pytest.mark.parametrize("impl", ["quadratic", "recurrent", "chunked"])
@pytest.mark.parametrize("split", [1, CHUNK, 29])
def test_prefill_then_continue_equals_one_pass(impl: str, split: int) -> None:
    q, k, v = _qkv(50)
    qd, kd, _ = _qkv(50, dk=3, seed=2)
    kwargs = {"normalize": True, "impl": impl, "chunk_size": CHUNK}
    full, final = linear_attention(q, k, v, denominator_features=(qd, kd), return_state=True, **kwargs)
    head, state = linear_attention(q[:, :, :split], k[:, :, :split], v[:, :, :split],
                                   denominator_features=(qd[:, :, :split], kd[:, :, :split]),
                                   return_state=True, **kwargs)
    tail = linear_attention(q[:, :, split:], k[:, :, split:], v[:, :, split:],
                            denominator_features=(qd[:, :, split:], kd[:, :, split:]), initial_state=state,
                            **kwargs)
    torch.testing.assert_close(torch.cat((head, tail), dim=2), full, rtol=0, atol=1e-10)
    torch.testing.assert_close(final.kv, k.mT @ v, rtol=0, atol=1e-10)
    torch.testing.assert_close(final.k_sum, kd.sum(2), rtol=0, atol=1e-10)
    # Then decode one more token from the prefill state.
    x = _qkv(1, seed=9)
    xd = _qkv(1, dk=3, seed=10)
    out, _ = linear_attention_step(x[0][:, :, 0], x[1][:, :, 0], x[2][:, :, 0], final, normalize=True,
                                   denominator_features=(xd[0][:, :, 0], xd[1][:, :, 0]))
    whole = linear_attention(*(torch.cat((a, b), dim=2) for a, b in zip((q, k, v), x, strict=True)),
                             normalize=True, denominator_features=(torch.cat((qd, xd[0]), 2),
                                                                   torch.cat((kd, xd[1]), 2)))
    torch.testing.assert_close(out, whole[:, :, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize(("causal", "normalize", "n"), [(True, False, 11), (True, True, 9), (False, True, 7)])
def test_gradcheck_chunked(causal: bool, normalize: bool, n: int) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(n, dk=3, dv=2))

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return linear_attention(q, k, v, causal=causal, normalize=normalize, chunk_size=4, impl="chunked")

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_gradcheck_with_initial_state() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv(6, dk=3, dv=2))
    kv0 = torch.randn(2, 3, 3, 2, dtype=F64, requires_grad=True)

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv0: torch.Tensor) -> torch.Tensor:
        state = LinearAttentionState(kv0, torch.zeros(2, 3, 3, dtype=F64))
        return linear_attention(q, k, v, chunk_size=4, initial_state=state)

    assert torch.autograd.gradcheck(f, (q, k, v, kv0))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", [False, True])
def test_half_precision_is_close_to_float32(dtype: torch.dtype, normalize: bool) -> None:
    q, k, v = _qkv(300, dk=16, dv=16, dtype=torch.float32)
    q, k = q.log1p(), k.log1p()  # positive features of moderate size
    half = [t.to(dtype) for t in (q, k, v)]
    out, state = linear_attention(*half, normalize=normalize, return_state=True)
    assert out.dtype == dtype and state.kv.dtype == torch.float32 and state.k_sum.dtype == torch.float32
    ref = linear_attention(*(t.float() for t in half), normalize=normalize)
    scale = ref.abs().max()
    torch.testing.assert_close(out.float() / scale, ref / scale, rtol=0, atol=2e-2)
    out_step, state_step = linear_attention_step(*(t[:, :, 0] for t in half), normalize=normalize)
    assert out_step.dtype == dtype and state_step.kv.dtype == torch.float32


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_never_materialises_per_token_states() -> None:
    n, d, chunk = 2048, 32, 64
    q, k, v = (torch.rand(1, 1, n, d) for _ in range(3))
    with _LargestTensor() as probe:
        linear_attention(q, k, v, chunk_size=chunk)
    per_token_states = n * d * d
    assert probe.largest <= max(n * d, n * chunk, (n // chunk) * d * d)
    assert probe.largest < per_token_states / 8


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (((1, 2, 5, 4), (1, 2, 5, 3), (1, 2, 5, 4)), r"same shape, got q \(1, 2, 5, 4\) and k \(1, 2, 5, 3"),
        (((1, 2, 5, 4), (1, 2, 5, 4), (1, 2, 6, 4)), r"v must share \(B, H, N\) with q"),
        (((1, 2, 0, 4), (1, 2, 0, 4), (1, 2, 0, 4)), "N must be >= 1, got N=0"),
        (((2, 5, 4), (2, 5, 4), (2, 5, 4)), r"q must have shape \(B, H, N, D\), got \(2, 5, 4\)"),
    ],
)
def test_bad_shapes(shapes: tuple, message: str) -> None:
    q, k, v = (torch.randn(s) for s in shapes)
    with pytest.raises(ValueError, match=message):
        linear_attention(q, k, v)


def test_bad_dtype_and_options() -> None:
    q, k, v = _qkv(5)
    with pytest.raises(ValueError, match=r"floating dtype .* got torch\.int64"):
        linear_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match=r"unknown impl 'fast'; allowed: \['quadratic', 'recurrent', 'chun"):
        linear_attention(q, k, v, impl="fast")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1, got 0"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="eps must be >= 0, got -1"):
        linear_attention(q, k, v, eps=-1)
    with pytest.raises(ValueError, match="need causal=True"):
        linear_attention(q, k, v, causal=False, return_state=True)
    with pytest.raises(ValueError, match=r"denominator_features must be .* got torch\.float64 \(2, 3, 4, 8"):
        linear_attention(q, k, v, normalize=True, denominator_features=(q[:, :, :4], k[:, :, :4]))


def test_bad_state_and_step_input() -> None:
    q, k, v = _qkv(5)
    bad = LinearAttentionState(torch.zeros(2, 3, 8, 4, dtype=F64), torch.zeros(2, 3, 8, dtype=F64))
    with pytest.raises(ValueError, match=r"kv \(2, 3, 8, 5\) and k_sum \(2, 3, 8\), got kv \(2, 3, 8, 4\)"):
        linear_attention(q, k, v, initial_state=bad)
    with pytest.raises(ValueError, match=r"state must have kv \(2, 3, 8, 5\)"):
        linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], bad)
    with pytest.raises(ValueError, match=r"q must be floating with shape \(B, H, D\), got .*\(2, 3, 5, 8\)"):
        linear_attention_step(q, k, v)
    with pytest.raises(ValueError, match=r"got q \(2, 3, 8\), k \(2, 3, 7\)"):
        linear_attention_step(q[:, :, 0], k[:, :, 0, :7], v[:, :, 0])


def test_auto_keeps_the_torch_path_on_cuda_until_a_gpu_run_has_checked_the_kernels():
    # A stand-in for CUDA tensors (only the device is read before the verdict), so this runs without a GPU.
    from types import SimpleNamespace

    from lrpe.core import LinearAttentionCore
    from lrpe.kernels import dispatch

    cuda_q = SimpleNamespace(device=torch.device("cuda"))
    assert dispatch.AUTO_TAKES_FUSED is False
    core = LinearAttentionCore(64, positional="orthogonal", impl="auto")
    # LinearAttention / LinearAttentionCore(impl="auto") and linear_attention(impl="auto") both ask here.
    assert dispatch.unsupported_reason(core, cuda_q, cuda_q, cuda_q, 0, has_state=False, forced=False) == \
        dispatch.AUTO_REASON
    assert dispatch.fused_numerator(cuda_q, cuda_q, cuda_q, causal=True, chunk_size=64, has_state=False,
                                    forced=False) is None
    # impl="triton" opts in: nothing about the device stops it where triton imports.
    assert dispatch._placement_reason(cuda_q, forced=True) == dispatch.triton_reason()
