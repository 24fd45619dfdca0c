"""RoPE: the relative-position identity against explicit rotation matrices, layouts, precision, errors."""

from __future__ import annotations

import pytest
import torch

from baselines.rope import RoPE, apply_rope, rope_matrix
from lrpe.rotation import LAYOUTS, inverse_frequencies, positions, rotate_pairs


def _inputs(d: int, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, n, d, generator=g, dtype=torch.float64)
    return q, torch.randn(2, 3, n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("d", [8, 64, 128])
@pytest.mark.parametrize("offset", [0, 37, 10_000])
def test_identity_against_rotation_matrices(layout: str, d: int, offset: int) -> None:
    q, k = _inputs(d)
    n = q.shape[2]
    scores = apply_rope(q, offset=offset, layout=layout) @ apply_rope(k, offset=offset, layout=layout).mT
    by_delta = torch.stack([rope_matrix(delta, d, layout=layout) for delta in range(-(n - 1), n)])
    idx = torch.arange(n)
    rotations = by_delta[idx[None, :] - idx[:, None] + n - 1]  # [m, t] -> R((t - m) theta), (N, N, D, D)
    expected = torch.einsum("bhmi,mtij,bhtj->bhmt", q, rotations, k)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_token_is_multiplied_by_its_absolute_rotation(layout: str) -> None:
    (x, _), offset = _inputs(16), 5
    out = apply_rope(x, offset=offset, layout=layout)
    for m in range(x.shape[2]):
        expected = x[..., m, :] @ rope_matrix(offset + m, 16, layout=layout).T
        torch.testing.assert_close(out[..., m, :], expected, rtol=0, atol=1e-12)


def test_rope_matrix_is_a_rotation_group() -> None:
    # R(a) R(b) = R(a + b) and R(-a) = R(a)^T: what makes the score depend on n - m only.
    for layout in LAYOUTS:
        a, b = rope_matrix(3, 8, layout=layout), rope_matrix(-11, 8, layout=layout)
        torch.testing.assert_close(a @ b, rope_matrix(-8, 8, layout=layout), rtol=0, atol=1e-12)
        torch.testing.assert_close(rope_matrix(-3, 8, layout=layout), a.T, rtol=0, atol=1e-12)
    assert not torch.allclose(rope_matrix(1, 8, layout="half"), rope_matrix(1, 8, layout="interleaved"))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shift_invariance(layout: str) -> None:
    q, k = _inputs(32)
    base = apply_rope(q, layout=layout) @ apply_rope(k, layout=layout).mT
    shifted = apply_rope(q, offset=4096, layout=layout) @ apply_rope(k, offset=4096, layout=layout).mT
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)
    assert not torch.allclose(apply_rope(q, offset=4096, layout=layout), apply_rope(q, layout=layout))


def test_decoding_with_offset_matches_full_sequence() -> None:
    # equal to a few float64 ulp: one token's phasor is split into coarse x fine tables differently
    (x, _), rope = _inputs(16), RoPE(16)
    full = rope(x, offset=3)
    for t in range(x.shape[2]):
        step = rope(x[:, :, t : t + 1], offset=3 + t)
        torch.testing.assert_close(step, full[:, :, t : t + 1], rtol=0, atol=1e-14)


def _float64_truth(x: torch.Tensor, offset: int, layout: str) -> torch.Tensor:
    """RoPE of x at ``offset`` from float64 angles and a float64 rotation, written out independently."""
    d, n = x.shape[-1], x.shape[-2]
    theta = 10000.0 ** (-torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    angle = torch.arange(offset, offset + n, dtype=torch.float64)[:, None] * theta
    cos, sin = angle.cos(), angle.sin()
    x = x.to(torch.float64)
    a, b = (x[..., 0::2], x[..., 1::2]) if layout == "interleaved" else (x[..., : d // 2], x[..., d // 2 :])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if layout == "interleaved":
        return torch.stack((ra, rb), dim=-1).flatten(-2)
    return torch.cat((ra, rb), dim=-1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("d", [64, 128])
def test_float32_rope_at_offset_60000_is_float64_accurate(layout: str, d: int) -> None:
    """At position 60000 a float32 angle is off by up to 6.6e-3 rad (ulp(60000) * theta_0 / 2); the
    phasors are exact to a few float32 ulp, so the rotated float32 vector is within 1e-6 of the truth."""
    offset = 60_000
    x = torch.randn(2, 2, 40, d, generator=torch.Generator().manual_seed(d))
    out = apply_rope(x, offset=offset, layout=layout)
    assert out.dtype == torch.float32
    truth = _float64_truth(x, offset, layout)
    error = (out.to(torch.float64) - truth).abs().max().item()
    assert error < 2e-6, error
    # what this guards against: the float32-angle recipe misses by three orders of magnitude more
    angle32 = positions(40, offset)[:, None] * inverse_frequencies(d // 2, d).float()
    naive = rotate_pairs(x, angle32.cos(), angle32.sin(), layout)
    assert (naive.to(torch.float64) - truth).abs().max().item() > 1e-3


@pytest.mark.parametrize("d", [8, 64])
def test_odd_even_interleave_turns_interleaved_into_half(d: int) -> None:
    half = (d + 1) // 2
    perm = torch.empty(d, dtype=torch.long)
    for i in range(d // 2):
        perm[2 * i] = i  # out[2i] = x[i]
        perm[2 * i + 1] = half + i  # out[2i + 1] = x[ceil(D/2) + i]
    x, _ = _inputs(d)
    interleaved = apply_rope(x[..., perm], offset=21, layout="interleaved")
    half_split = apply_rope(x, offset=21, layout="half")
    torch.testing.assert_close(interleaved, half_split[..., perm], rtol=0, atol=1e-12)
    # The layouts differ on the same input: the permutation is what makes them agree.
    assert not torch.allclose(apply_rope(x, offset=21, layout="interleaved"), half_split)


def test_bfloat16_keeps_float32_angles_at_large_offsets() -> None:
    offset, d = 50_000, 64
    x = torch.randn(1, 2, 16, d, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = apply_rope(x, offset=offset)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    reference = apply_rope(x.to(torch.float64), offset=offset)
    tolerance = dict(rtol=2e-2, atol=2e-2)  # a few bf16 ulps on values of order 1
    torch.testing.assert_close(out.to(torch.float64), reference, **tolerance)
    # The test can fail: positions in bfloat16 are off by up to 128 here, which scrambles the angles.
    bf16_positions = positions(16, offset, dtype=torch.bfloat16).to(torch.float64)
    angles = bf16_positions[:, None] * inverse_frequencies(d // 2, d)
    naive = rotate_pairs(x.to(torch.float64), angles.cos(), angles.sin(), "half")
    assert not torch.allclose(naive, reference, **tolerance)


def test_module_matches_function_and_keeps_shape_and_dtype() -> None:
    x = torch.randn(2, 4, 9, 32)
    out = RoPE(32, base=500.0, layout="interleaved")(x, offset=7)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, apply_rope(x, offset=7, base=500.0, layout="interleaved"), rtol=0, atol=0)
    assert not torch.allclose(out, apply_rope(x, offset=7, layout="interleaved"))


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: apply_rope(torch.randn(1, 1, 4, 7)), "7"),
        (lambda: apply_rope(torch.randn(1, 4, 8)), "(1, 4, 8)"),
        (lambda: apply_rope(torch.randn(1, 1, 4, 8), layout="neox"), "'neox'"),
        (lambda: apply_rope(torch.ones(1, 1, 4, 8, dtype=torch.long)), "torch.int64"),
        (lambda: RoPE(9), "9"),
        (lambda: RoPE(8, layout="pairs"), "'pairs'"),
        (lambda: RoPE(8)(torch.randn(1, 1, 4, 16)), "(1, 1, 4, 16)"),
        (lambda: rope_matrix(1, 5), "5"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(call, named: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert named in str(info.value)


def test_unknown_layout_error_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="interleaved") as info:
        apply_rope(torch.randn(1, 1, 2, 4), layout="neox")
    assert "half" in str(info.value)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
@pytest.mark.parametrize("n", [1, 37, 130])
def test_roformer_linear_attention_rotates_the_numerator_only(layout, n):
    """RoFormer Eq. 19 through the suite's linear-attention core: numerator from rotated phi(q), phi(k),
    denominator from the unrotated ones, against an explicit N x N computation in float64."""
    from lrpe import LinearAttentionCore, get_feature_map

    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for _ in range(3))
    core = LinearAttentionCore(8, positional=RoPE(8, layout=layout), normalize=True, eps=1e-6)
    out = core(q, k, v, offset=5)
    phi = get_feature_map("elu1")
    mask = torch.ones(n, n, dtype=torch.bool).tril()
    rq, rk = apply_rope(phi(q), offset=5, layout=layout), apply_rope(phi(k), offset=5, layout=layout)
    numerator = ((rq @ rk.transpose(-1, -2)) * mask) @ v
    denominator = ((phi(q) @ phi(k).transpose(-1, -2)) * mask).sum(-1, keepdim=True)
    torch.testing.assert_close(out, numerator / (denominator + 1e-6), atol=1e-10, rtol=1e-10)


# ---- the fast paths (one pass, tables per block, in place) against the float64 oracle ----------------------


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 16 rows, so that the half-split rotation crosses several block edges at test sizes."""
    import lrpe.rotation

    monkeypatch.setattr(lrpe.rotation, "_HALF_SPLIT_BLOCK_BYTES", 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("b", "h", "n", "d"), [(1, 1, 1, 2), (2, 3, 37, 8), (1, 4, 70, 64), (2, 1, 33, 128)])
@pytest.mark.parametrize("inplace", [False, True])
def test_forward_pair_equals_the_float64_oracle(small_blocks, layout, b, h, n, d, inplace) -> None:
    g = torch.Generator().manual_seed(n * d)
    q, k = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(2))
    truth_q, truth_k = _float64_truth(q, 123, layout), _float64_truth(k, 123, layout)
    qc, kc = q.clone(), k.clone()
    rq, rk = RoPE(d, layout=layout).forward_pair(qc, kc, offset=123, inplace=inplace)
    torch.testing.assert_close(rq, truth_q, rtol=0, atol=1e-13)
    torch.testing.assert_close(rk, truth_k, rtol=0, atol=1e-13)
    # in place: the caller's temporaries are overwritten and returned; otherwise they are left alone
    assert (rq.data_ptr() == qc.data_ptr()) == inplace and (rk.data_ptr() == kc.data_ptr()) == inplace
    if not inplace:
        assert torch.equal(qc, q) and torch.equal(kc, k)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n", [5, 50])
def test_gradients_equal_the_float64_oracle(small_blocks, layout: str, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(2, 3, n, 16, generator=g, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 3, n, 16, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(apply_rope(x, offset=9, layout=layout), x, grad_out)
    (want,) = torch.autograd.grad(_float64_truth(x, 9, layout), x, grad_out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, offset=9, layout=layout), (x[:1, :1, :4],))


def test_half_split_rotation_per_head_phasors_and_learned_angles(small_blocks) -> None:
    """rotate_half_split with (H, N, D/2) phasors equals rotate_pairs, and is differentiable in the phasors
    when they require grad (through the plain real form)."""
    from lrpe.rotation import position_phasors, rotate_half_split

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 40, 8, generator=g, dtype=torch.float64)
    theta = torch.rand(3, 4, generator=g, dtype=torch.float64).requires_grad_(True)

    def phasors() -> torch.Tensor:
        return position_phasors(theta, 40, 7, torch.float64)

    expected = rotate_pairs(x, phasors().real, phasors().imag, "half")
    torch.testing.assert_close(rotate_half_split(x, phasors()), expected, rtol=0, atol=1e-14)
    (got,) = torch.autograd.grad((rotate_half_split(x, phasors()) * x).sum(), theta)
    (want,) = torch.autograd.grad((expected * x).sum(), theta)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert want.abs().max() > 1e-3
    phasors = phasors().detach()
    with pytest.raises(ValueError, match="one row per position"):
        rotate_half_split(x, phasors[:, :39])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_core_in_place_rotation_leaves_inputs_and_equals_the_oracle(layout: str) -> None:
    """Inference through the core lets RoPE rotate phi(q), phi(k) in place (as LRPE-orthogonal): the caller's
    q, k stay unchanged and the output equals the quadratic oracle of rotated features."""
    from lrpe import LinearAttentionCore, get_feature_map

    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(1, 2, 45, 16, generator=g, dtype=torch.float64) for _ in range(3))
    q0, k0 = q.clone(), k.clone()
    core = LinearAttentionCore(16, positional=RoPE(16, layout=layout), chunk_size=8)
    with torch.no_grad():
        out = core(q, k, v, offset=3)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    phi = get_feature_map("elu1")
    rq, rk = _float64_truth(phi(q), 3, layout), _float64_truth(phi(k), 3, layout)
    expected = ((rq @ rk.mT) * torch.ones(45, 45, dtype=torch.bool).tril()) @ v
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


class _CountingRoPE(RoPE):
    """RoPE that records which entry point the attention core called."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def forward(self, x, offset=0):
        self.calls.append("forward")
        return super().forward(x, offset)

    def forward_pair(self, q, k, offset=0, *, inplace=False):
        self.calls.append(f"forward_pair(inplace={inplace})")
        return super().forward_pair(q, k, offset, inplace=inplace)


def _softmax_core(kind: str, positional: RoPE, causal: bool):
    from baselines.flash import availability, build_flash
    from baselines.softmax import SoftmaxAttention

    if kind == "softmax":
        return SoftmaxAttention(causal=causal, positional=positional)
    missing = availability("sdpa-math")
    if missing is not None:
        pytest.skip(missing)
    return build_flash("sdpa-math", causal=causal, positional=positional)


@pytest.mark.parametrize("kind", ["softmax", "flash"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("n", "d", "offset", "causal"), [(1, 8, 0, True), (37, 16, 123, True), (50, 64, 7, False)])
def test_softmax_and_flash_cores_rotate_through_forward_pair_and_equal_the_oracle(
        small_blocks, kind, layout, n, d, offset, causal) -> None:
    """softmax(R q . R k / sqrt(D)) v with the rotations from the float64 truth; the core calls forward_pair
    once, not in place (q, k are the caller's and stay unchanged), and gradients flow to q, k, v."""
    from baselines.softmax import softmax_attention

    g = torch.Generator().manual_seed(n + d)
    q, k, v = (torch.randn(2, 3, n, d, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    rope = _CountingRoPE(d, layout=layout)
    core = _softmax_core(kind, rope, causal)
    before = q.detach().clone(), k.detach().clone()
    out = core(q, k, v, offset)
    assert rope.calls == ["forward_pair(inplace=False)"]
    assert torch.equal(q.detach(), before[0]) and torch.equal(k.detach(), before[1])
    want = softmax_attention(_float64_truth(q, offset, layout), _float64_truth(k, offset, layout), v,
                             causal=causal)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(out, (q, k, v), upstream)
    want_grads = torch.autograd.grad(want, (q, k, v), upstream)
    for x, y in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
