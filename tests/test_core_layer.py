"""LinearAttentionCore and the LinearAttention layer: the pipeline order, the Eq. 19 denominator, decoding
through LRPE, gradients of learned LRPE parameters, half precision, model use, and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lrpe import LRPE, LinearAttention, LinearAttentionCore, linear_attention
from lrpe.encoding import KINDS
from lrpe.feature_maps import elu1

F64 = torch.float64


def _qkv(n: int, d: int = 8, dv: int = 6, *, heads: int = 2, seed: int = 0, dtype: torch.dtype = F64,
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(2, heads, n, d, generator=g, dtype=F64) for _ in range(2))
    return q.to(dtype), k.to(dtype), torch.randn(2, heads, n, dv, generator=g, dtype=F64).to(dtype)


class _ShiftByOffset(nn.Module):
    """A stand-in positional module (like RoPE): adds its position to every feature, records the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.offsets: list[int] = []

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        self.offsets.append(offset)
        pos = torch.arange(offset, offset + x.shape[-2], dtype=x.dtype)
        return x + 0.01 * pos[:, None]


class _Widen(nn.Module):
    """A stand-in qk_transform (like SPE): doubles the width of q and k."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat((q, -q), -1), torch.cat((k, 2 * k), -1)


def test_no_positional_is_linear_attention_of_the_features() -> None:
    q, k, v = _qkv(20)
    core = LinearAttentionCore(8, feature_map="relu")
    torch.testing.assert_close(core(q, k, v), linear_attention(q.relu(), k.relu(), v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_lrpe_core_is_feature_map_then_lrpe_then_attention(kind: str) -> None:
    q, k, v = _qkv(30)
    core = LinearAttentionCore(8, num_heads=2, positional=kind, p="householder", seed=5, chunk_size=8)
    core = core.double()
    enc = LRPE(kind, 8, p="householder", num_heads=2, seed=5).double()
    expected = linear_attention(enc(elu1(q), 4), enc(elu1(k), 4), v, impl="quadratic")
    torch.testing.assert_close(core(q, k, v, offset=4), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_normalised_core_divides_by_the_untransformed_features(kind: str) -> None:
    q, k, v = _qkv(25)
    core = LinearAttentionCore(8, positional=kind, normalize=True, eps=1e-3, chunk_size=8).double()
    qf, kf = elu1(q), elu1(k)
    num = linear_attention(*core.positional.forward_pair(qf, kf, 0), v, impl="quadratic")
    den = (qf @ kf.mT).tril().sum(-1) + 1e-3
    torch.testing.assert_close(core(q, k, v), num / den[..., None], rtol=0, atol=1e-10)


def test_custom_positional_module_gets_the_offset_and_qk_transform_runs_first() -> None:
    q, k, v = _qkv(9)
    pos = _ShiftByOffset()
    core = LinearAttentionCore(16, positional=pos, qk_transform=_Widen(), feature_map="silu")
    out = core(q, k, v, offset=3)
    qw, kw = _Widen()(q, k)
    expected = linear_attention(pos(nn.functional.silu(qw), 3), pos(nn.functional.silu(kw), 3), v)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert pos.offsets[:2] == [3, 3]


def test_qk_transform_changes_the_width_seen_by_lrpe() -> None:
    q, k, v = _qkv(12)
    core = LinearAttentionCore(16, positional="unitary", qk_transform=_Widen()).double()
    qw, kw = _Widen()(q, k)
    enc = LRPE("unitary", 16).double()
    expected = linear_attention(enc(elu1(qw)), enc(elu1(kw)), v)
    torch.testing.assert_close(core(q, k, v), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", [*KINDS, "none"])
@pytest.mark.parametrize("normalize", [False, True])
def test_decode_with_growing_offset_equals_forward(kind: str, normalize: bool) -> None:
    q, k, v = _qkv(19)
    core = LinearAttentionCore(8, num_heads=2, positional=kind, p="householder", normalize=normalize,
                               chunk_size=4).double()
    full = core(q, k, v, offset=100)
    state, outs = None, []
    for s in range(q.shape[2]):
        out, state = core.step(q[:, :, s], k[:, :, s], v[:, :, s], state, offset=100 + s)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, dim=2), full, rtol=0, atol=1e-10)
    # Prefill the first 11 tokens, then decode the rest.
    head, state = core.prefill(q[:, :, :11], k[:, :, :11], v[:, :, :11], offset=100)
    outs = [head]
    for s in range(11, q.shape[2]):
        out, state = core.step(q[:, :, s], k[:, :, s], v[:, :, s], state, offset=100 + s)
        outs.append(out[:, :, None])
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("kind", "p"), [("orthogonal", "householder-learned"), ("unitary", "identity")])
def test_gradcheck_through_core_with_learned_lrpe_parameters(kind: str, p: str) -> None:
    core = LinearAttentionCore(4, num_heads=2, positional=kind, p=p, theta="learned", chunk_size=3).double()
    params = dict(core.named_parameters())
    assert "positional.theta" in params and (p == "identity" or "positional.p.v" in params)
    q, k, v = (t.requires_grad_() for t in _qkv(7, d=4, dv=2))
    names = list(params)

    def f(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return functional_call(core, dict(zip(names, values, strict=True)), (q, k, v), {"offset": 5})

    values = tuple(t.detach().clone().requires_grad_() for t in params.values())
    assert torch.autograd.gradcheck(f, (q, k, v, *values))


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_core_is_close_to_float32(kind: str) -> None:
    q, k, v = _qkv(200, d=16, dv=16, dtype=torch.float32)
    core = LinearAttentionCore(16, positional=kind, normalize=True)
    half = [t.bfloat16() for t in (q, k, v)]
    out = core(*half, offset=300)
    assert out.dtype == torch.bfloat16
    ref = core(*(t.float() for t in half), offset=300)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=3e-2 * float(ref.abs().max()))


def test_core_errors_name_the_value_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown positional 'rope'; allowed: \['none', 'unitary', 'orth"):
        LinearAttentionCore(8, positional="rope")
    with pytest.raises(ValueError, match=r"unknown feature map 'tanh'"):
        LinearAttentionCore(8, feature_map="tanh")
    with pytest.raises(ValueError, match=r"unknown impl 'fused'; allowed: \['quadratic'"):
        LinearAttentionCore(8, impl="fused")
    with pytest.raises(ValueError, match="even head_dim, got 7"):
        LinearAttentionCore(7, positional="orthogonal")
    with pytest.raises(ValueError, match=r"unknown p 'hh'"):
        LinearAttentionCore(8, positional="unitary", p="hh")
    with pytest.raises(ValueError, match="step decodes causally"):
        LinearAttentionCore(8, causal=False).step(*(t[:, :, 0] for t in _qkv(1)))


@pytest.mark.parametrize("positional", ["none", "orthogonal", "unitary", "permutation"])
@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm", "none"])
def test_layer_shapes_and_gradients_reach_every_parameter(positional: str, norm: str) -> None:
    torch.manual_seed(0)
    layer = LinearAttention(32, 4, positional=positional, p="householder-learned", theta="learned", norm=norm,
                            bias=True)
    x = torch.randn(2, 21, 32, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 21, 32) and out.dtype == torch.float32
    out.square().mean().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_layer_matches_its_parts() -> None:
    torch.manual_seed(1)
    layer = LinearAttention(24, 3, head_dim=5, positional="unitary").double()
    x = torch.randn(2, 10, 24, dtype=F64)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, 10, 3, 5).transpose(1, 2)

    q, k, v = heads(layer.q_proj(x)), heads(layer.k_proj(x)), heads(layer.v_proj(x))
    enc = LRPE("unitary", 5).double()
    attn = linear_attention(enc(elu1(q), 2), enc(elu1(k), 2), v)
    merged = attn.transpose(1, 2).reshape(2, 10, 15)
    rms = merged / merged.pow(2).mean(-1, keepdim=True).add(torch.finfo(F64).eps).sqrt() * layer.norm.weight
    torch.testing.assert_close(layer(x, offset=2), layer.out_proj(rms), rtol=0, atol=1e-10)


@pytest.mark.parametrize("positional", KINDS)
def test_layer_is_shift_invariant(positional: str) -> None:
    torch.manual_seed(2)
    layer = LinearAttention(16, 2, positional=positional, p="householder").double()
    x = torch.randn(1, 12, 16, dtype=F64)
    torch.testing.assert_close(layer(x, offset=0), layer(x, offset=5000), rtol=0, atol=1e-9)


def test_layer_errors() -> None:
    with pytest.raises(ValueError, match="d_model=30 is not a multiple of num_heads=4"):
        LinearAttention(30, 4)
    with pytest.raises(ValueError, match=r"unknown norm 'bn'; allowed: \['rmsnorm', 'layernorm', 'none'\]"):
        LinearAttention(32, 4, norm="bn")
    with pytest.raises(ValueError, match=r"x must have shape \(B, N, d_model\), got \(4, 32\)"):
        LinearAttention(32, 4)(torch.randn(4, 32))


@pytest.mark.parametrize("feature_map", ["elu1", "identity"])
def test_inference_rotates_in_place_without_touching_the_callers_tensors(feature_map):
    """Under no_grad an orthogonal LRPE may overwrite the feature maps (fresh temporaries); the result
    must equal the autograd path's, and q, k themselves (identity feature map) must stay untouched."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=g, dtype=torch.float64) for _ in range(3))
    q0, k0 = q.clone(), k.clone()
    core = LinearAttentionCore(8, num_heads=3, positional="orthogonal", p="householder", feature_map=feature_map)
    with torch.no_grad():
        fast = core(q, k, v)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    reference = core(q.clone().requires_grad_(True), k.clone().requires_grad_(True), v)
    torch.testing.assert_close(fast, reference.detach(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape", [(3,), (2, 3, 17, 8), (1, 2, 300, 5)])
def test_elu1_matches_the_float64_oracle_in_value_and_gradient(shape: tuple[int, ...]) -> None:
    """The clamp/exp form of 1 + elu (lrpe.feature_maps._Elu1) against F.elu written in float64, at fresh
    random inputs plus exact zeros, where the one-sided derivatives differ (0 and 1: elu's is 1)."""
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g, dtype=F64) * 3
    x.view(-1)[::7] = 0.0
    x.requires_grad_(True)
    upstream = torch.randn(shape, generator=g, dtype=F64)
    got = elu1(x)
    want = torch.nn.functional.elu(x) + 1.0
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-15)
    (got_grad,) = torch.autograd.grad(got, x, upstream)
    (want_grad,) = torch.autograd.grad(want, x, upstream)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-14, atol=1e-15)
    assert torch.equal(got_grad.view(-1)[::7], upstream.view(-1)[::7])  # derivative 1 at x = 0
    assert torch.autograd.gradcheck(elu1, (x[..., :3].detach().clone().requires_grad_(True) + 0.1,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_elu1_keeps_dtype_and_is_close_to_elu_in_low_precision(dtype: torch.dtype) -> None:
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_(True)
    y = elu1(x)
    assert y.dtype == dtype and y.shape == x.shape
    want = (torch.nn.functional.elu(x.detach().double()) + 1).to(dtype)
    torch.testing.assert_close(y, want)
    y.sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad, torch.where(x.detach() > 0, 1.0, x.detach().double().exp()).to(dtype))
