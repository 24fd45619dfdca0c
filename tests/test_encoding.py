"""LRPE: the canonical-form oracle (docs/math.md section 2) for every kind and P, shift invariance, permutation
powers at any offset, per-head parameters, precision, and errors."""

from __future__ import annotations

import math

import pytest
import torch

from lrpe import LRPE, P_CHOICES
from lrpe.encoding import KINDS, unitary_frequencies
from lrpe.rotation import (
    inverse_frequencies,
    position_phasors,
    rotate_interleaved,
    rotate_pairs,
    rotation_angles,
)

F64 = torch.float64


def _pair(d: int, n: int, heads: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, heads, n, d, generator=g, dtype=F64)
    return x, torch.randn(2, heads, n, d, generator=g, dtype=F64)


def _oracle_scores(enc: LRPE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """a_st = x_s^T W_{t-s} y_t from explicit W_r, r = -(N-1)..N-1: (B, H, N, N)."""
    n = x.shape[-2]
    w = torch.stack([enc.relative_matrix(r) for r in range(-(n - 1), n)])
    idx = torch.arange(n)
    w_st = w[idx[None, :] - idx[:, None] + n - 1]  # [s, t] -> W_{t-s}
    if enc.num_heads is None:
        return torch.einsum("bhsi,stij,bhtj->bhst", x, w_st, y)
    return torch.einsum("bhsi,sthij,bhtj->bhst", x, w_st, y)


def _scores(enc: LRPE, x: torch.Tensor, y: torch.Tensor, offset: int = 0) -> torch.Tensor:
    return enc(x, offset) @ enc(y, offset).mT


# D in {8, 64, 128}; N small where D is big so that the explicit (N, N, D, D) oracle stays cheap.
SIZES = [(8, 12), (64, 6), (128, 4)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", P_CHOICES)
@pytest.mark.parametrize(("d", "n"), SIZES)
@pytest.mark.parametrize("num_heads", [None, 2])
def test_canonical_form_oracle(kind: str, p: str, d: int, n: int, num_heads: int | None) -> None:
    enc = LRPE(kind, d, p=p, num_heads=num_heads, seed=3).double()
    x, y = _pair(d, n, seed=d + n)
    out = enc(x, offset=7)
    assert out.shape == (2, 2, n, 2 * d if kind == "unitary" else d) and out.dtype == F64
    torch.testing.assert_close(_scores(enc, x, y, offset=7), _oracle_scores(enc, x, y), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["unitary", "orthogonal"])
def test_oracle_with_different_learned_theta_per_head(kind: str) -> None:
    enc = LRPE(kind, 8, p="householder-learned", theta="learned", num_heads=3, seed=1).double()
    with torch.no_grad():
        enc.theta.mul_(torch.tensor([[0.5], [1.0], [3.0]], dtype=F64))  # heads now rotate differently
    x, y = _pair(8, 10, heads=3)
    torch.testing.assert_close(_scores(enc, x, y, offset=3), _oracle_scores(enc, x, y), rtol=0, atol=1e-10)
    # With P = I and the same input in every head, only theta tells the heads apart.
    plain = LRPE(kind, 8, theta="learned", num_heads=3).double()
    with torch.no_grad():
        plain.theta.copy_(enc.theta)
    x1, y1 = (t[:, :1].expand(-1, 3, -1, -1) for t in (x, y))
    scores = _scores(plain, x1, y1)
    assert not torch.allclose(scores[:, 0], scores[:, 2])
    assert LRPE(kind, 8, theta="learned").theta.shape == (8 if kind == "unitary" else 4,)


def test_oracle_with_rope_range_spacing() -> None:
    enc = LRPE("unitary", 16, p="householder", spacing="rope-range").double()
    x, y = _pair(16, 9)
    torch.testing.assert_close(_scores(enc, x, y, offset=2), _oracle_scores(enc, x, y), rtol=0, atol=1e-10)
    torch.testing.assert_close(enc.theta.double(), inverse_frequencies(16, 32).float().double())


def test_theta_values_follow_the_paper() -> None:
    d = 8
    expected_unitary = torch.tensor([10000.0 ** (-2 * j / d) for j in range(d)], dtype=F64)
    torch.testing.assert_close(unitary_frequencies(d, 10000.0, "paper"), expected_unitary)
    torch.testing.assert_close(LRPE("unitary", d).theta.double(), expected_unitary.float().double())
    expected_pairs = torch.tensor([10000.0 ** (-2 * j / d) for j in range(d // 2)]).float()
    torch.testing.assert_close(LRPE("orthogonal", d).theta, expected_pairs)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("p", ["identity", "householder"])
def test_shift_invariance(kind: str, p: str) -> None:
    enc = LRPE(kind, 16, p=p, num_heads=2, seed=0).double()
    x, y = _pair(16, 11)
    base = _scores(enc, x, y)
    for offset in (1, 1000, -77):
        torch.testing.assert_close(_scores(enc, x, y, offset), base, rtol=0, atol=1e-10)


def test_positions_matter_within_a_call() -> None:
    """The encoding is not trivial: moving a key relative to a query changes their score."""
    for kind in KINDS:
        enc = LRPE(kind, 16).double()
        x, y = _pair(16, 1)
        near = enc(x, 0) @ enc(y, 1).mT
        far = enc(x, 0) @ enc(y, 5).mT
        assert not torch.allclose(near, far), kind


def test_forward_pair_and_position_factors_match_forward() -> None:
    for kind in KINDS:
        enc = LRPE(kind, 8, p="householder", num_heads=2).double()
        x, y = _pair(8, 6)
        fx, fy = enc.forward_pair(x, y, offset=11)
        torch.testing.assert_close(fx, enc(x, 11), rtol=0, atol=0)
        torch.testing.assert_close(fy, enc(y, 11), rtol=0, atol=0)


def _power_by_squaring(perm: list[int], s: int) -> list[int]:
    """pi^s as an index list, (pi^s)(j) = pi(pi(...(j))), by repeated squaring (s < 0: of the inverse)."""
    d = len(perm)
    if s < 0:
        inverse = [0] * d
        for j, pj in enumerate(perm):
            inverse[pj] = j
        perm, s = inverse, -s
    result, square = list(range(d)), list(perm)
    while s:
        if s & 1:
            result = [square[r] for r in result]  # result then square: pi^(a+b) = pi^b o pi^a commute here
        square = [square[q] for q in square]
        s >>= 1
    return result


@pytest.mark.parametrize("num_heads", [None, 3])
def test_permutation_powers_equal_repeated_application(num_heads: int | None) -> None:
    enc = LRPE("permutation", 12, num_heads=num_heads, seed=9).double()
    x = _pair(12, 1, heads=3)[0]
    perms = enc.perm.reshape(-1, 12).tolist()
    # Small positive and negative offsets: apply pi (or its inverse) one step at a time.
    stepped = {0: x}
    for s in range(1, 25):
        prev = stepped[s - 1]
        stepped[s] = torch.stack([prev[:, h][..., perms[h if num_heads else 0]] for h in range(3)], dim=1)
    for s in range(0, 25):
        torch.testing.assert_close(enc(x, offset=s), stepped[s], rtol=0, atol=0)
        # Pi^-s undoes Pi^s.
        torch.testing.assert_close(enc(stepped[s], offset=-s), x, rtol=0, atol=0)
    # Huge and negative offsets against powers by repeated squaring.
    for s in (10**12 + 3, -(10**15) - 1, 2**62, -5):
        want = torch.stack(
            [x[:, h][..., _power_by_squaring(perms[h if num_heads else 0], s)] for h in range(3)], dim=1
        )
        torch.testing.assert_close(enc(x, offset=s), want, rtol=0, atol=0)


def test_permutation_index_works_for_many_positions_at_once() -> None:
    enc = LRPE("permutation", 10, seed=2)
    s = torch.tensor([-(10**13), -1, 0, 1, 7, 10**13])
    idx = enc.permutation_index(s)
    perm = enc.perm.tolist()
    for row, pos in zip(idx.tolist(), s.tolist(), strict=True):
        assert row == _power_by_squaring(perm, pos)


def test_per_head_draws_differ_and_follow_the_seed() -> None:
    enc = LRPE("permutation", 16, p="householder", num_heads=4, seed=0)
    assert enc.perm.shape == (4, 16) and enc.p.v.shape == (4, 16)
    assert len({tuple(row) for row in enc.perm.tolist()}) == 4
    again = LRPE("permutation", 16, p="householder", num_heads=4, seed=0)
    other = LRPE("permutation", 16, p="householder", num_heads=4, seed=1)
    assert torch.equal(enc.perm, again.perm) and not torch.equal(enc.perm, other.perm)


def test_theta_modes() -> None:
    fixed, learned = LRPE("orthogonal", 8), LRPE("orthogonal", 8, theta="learned")
    assert list(fixed.parameters()) == [] and "theta" in dict(fixed.named_buffers())
    assert [n for n, _ in learned.named_parameters()] == ["theta"]
    torch.testing.assert_close(learned.theta.detach(), fixed.theta, rtol=0, atol=0)
    assert list(LRPE("permutation", 8, theta="learned").parameters()) == []


def test_phasors_are_accurate_at_long_positions() -> None:
    theta = inverse_frequencies(32, 64).float()
    n, offset = 70_000, 123_456
    exact = torch.polar(torch.ones(n, 32, dtype=F64), rotation_angles(theta.double(), n, offset, F64))
    got = position_phasors(theta, n, offset, torch.float32)
    assert got.dtype == torch.complex64 and got.shape == (n, 32)
    assert (got.to(torch.complex128) - exact).abs().max() < 1e-6


def test_complex_rotation_equals_rotate_pairs() -> None:
    x = _pair(16, 9)[0]
    angles = rotation_angles(inverse_frequencies(8, 16), 9, 4, F64)
    expected = rotate_pairs(x, angles.cos(), angles.sin(), "interleaved")
    phasors = torch.polar(torch.ones_like(angles), angles)
    torch.testing.assert_close(rotate_interleaved(x, phasors), expected, rtol=0, atol=1e-14)
    # A strided view (odd storage offset) is rotated correctly too.
    wide = torch.randn(2, 2, 9, 17, dtype=F64)
    view = wide[..., 1:]
    expected = rotate_pairs(view, angles.cos(), angles.sin(), "interleaved")
    torch.testing.assert_close(rotate_interleaved(view, phasors), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_input_runs_and_is_close_to_float32(kind: str) -> None:
    enc = LRPE(kind, 32, p="householder")
    x = _pair(32, 50)[0].float()
    out16 = enc(x.bfloat16(), offset=1000)
    assert out16.dtype == torch.bfloat16
    ref = enc(x.bfloat16().float(), offset=1000)
    torch.testing.assert_close(out16.float(), ref, rtol=1e-2, atol=1e-2)


def test_float32_angles_for_half_inputs() -> None:
    """Positions beyond 256 are exact: a bfloat16 angle would merge neighbouring positions."""
    enc = LRPE("orthogonal", 8)
    x = torch.ones(1, 1, 2, 8, dtype=torch.bfloat16)
    out = enc(x, offset=4097).float()
    assert not torch.allclose(out[0, 0, 0], out[0, 0, 1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "orthogonal", "head_dim": 7}, "even head_dim, got 7"),
        ({"kind": "rotary", "head_dim": 8}, r"unknown kind 'rotary'; allowed: \['unitary', 'orthogonal'"),
        ({"kind": "unitary", "head_dim": 8, "p": "dct"}, r"unknown p 'dct'; allowed: \['identity', 'house"),
        ({"kind": "unitary", "head_dim": 8, "theta": "random"}, r"unknown theta 'random'; allowed: \['fix"),
        ({"kind": "unitary", "head_dim": 8, "spacing": "linear"}, r"unknown spacing 'linear'; allowed: \['p"),
        ({"kind": "unitary", "head_dim": 0}, "head_dim must be >= 1, got 0"),
        ({"kind": "permutation", "head_dim": -3}, "head_dim must be >= 1, got -3"),
    ],
)
def test_bad_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LRPE(**kwargs)


def test_bad_input() -> None:
    enc = LRPE("unitary", 8, num_heads=2)
    with pytest.raises(ValueError, match=r"D = head_dim = 8, got \(2, 2, 5, 6\)"):
        enc(torch.randn(2, 2, 5, 6))
    with pytest.raises(ValueError, match=r"H = num_heads = 2 at dim -3, got shape \(2, 3, 5, 8\)"):
        enc(torch.randn(2, 3, 5, 8))
    with pytest.raises(ValueError, match=r"floating dtype, got torch\.int64"):
        enc(torch.ones(2, 2, 5, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="needs kind 'permutation', this LRPE is 'unitary'"):
        enc.permutation_index(torch.arange(3))


def test_odd_head_dim_works_for_unitary_and_permutation() -> None:
    for kind in ("unitary", "permutation"):
        enc = LRPE(kind, 7, p="oddeven").double()
        x, y = _pair(7, 5)
        torch.testing.assert_close(_scores(enc, x, y, 2), _oracle_scores(enc, x, y), rtol=0, atol=1e-10)


def test_unitary_width_doubles_with_cos_then_sin() -> None:
    enc = LRPE("unitary", 4).double()
    x = torch.ones(1, 1, 1, 4, dtype=F64)
    out = enc(x, offset=3)[0, 0, 0]
    angles = 3 * enc.theta.double()
    torch.testing.assert_close(out, torch.cat((angles.cos(), angles.sin())), rtol=0, atol=1e-14)
    assert math.isclose(float(out.pow(2).sum()), 4.0)


@pytest.mark.parametrize(("table_rows", "num_heads", "seed"), [
    (16, None, 4), (16, 3, 4),  # period longer than 16 rows: the block-table index
    (64, None, 0), (64, 3, 2),  # period at most 64 rows: one period's index, repeated
])
@pytest.mark.parametrize(("n", "offset"), [(1, 0), (37, 5), (70, -(10**12) - 7), (64, 10**13), (200, 3)])
def test_permutation_fast_index_and_in_place_pair_equal_the_oracle(monkeypatch, table_rows, num_heads, seed, n,
                                                                  offset) -> None:
    """Both fast indexes (the block table, pi^(s0 + r) = pi^r o pi^s0, and the periodic one, pi^s =
    pi^(s mod T)) and the in-place blockwise gather equal ``permutation_index`` and the explicit W_r oracle,
    across block edges."""
    import lrpe.encoding

    monkeypatch.setattr(lrpe.encoding, "_PERMUTATION_TABLE_ROWS", table_rows)
    enc = LRPE("permutation", 12, p="householder", num_heads=num_heads, seed=seed).double()
    periodic = enc.permutation_period() <= table_rows
    assert periodic == (table_rows == 64), enc.permutation_period()  # each branch is the one named above
    positions = torch.arange(offset, offset + n)
    want = enc.permutation_index(positions)
    assert torch.equal(enc.position_factors(n, offset, F64), want)
    x, y = _pair(12, n, heads=3)
    fx, fy = enc.forward_pair(x.clone(), y.clone(), offset=offset)
    xc, yc = x.clone(), y.clone()
    ix, iy = enc.forward_pair(xc, yc, offset=offset, inplace=True)
    torch.testing.assert_close(ix, fx, rtol=0, atol=0)
    torch.testing.assert_close(iy, fy, rtol=0, atol=0)
    # Against W_r: scores of the transformed features are x_s^T W_{t-s} y_t (float64 oracle).
    s, t = 2 % n, n - 1
    w = enc.relative_matrix(t - s)
    expected = torch.einsum("bhi,hij,bhj->bh", x[:, :, s], w.expand(3, 12, 12), y[:, :, t])
    torch.testing.assert_close((ix[:, :, s] * iy[:, :, t]).sum(-1), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("table_rows", "num_heads", "seed"), [(16, None, 4), (16, 3, 4), (64, None, 0), (64, 3, 2)])
@pytest.mark.parametrize("offset", [0, 5, -(10**9) - 3])
def test_permutation_autograd_path_equals_the_gather_oracle_and_gradchecks(monkeypatch, table_rows, num_heads,
                                                                           seed, offset) -> None:
    """forward/forward_pair take the permutation through ``_PermuteRows`` (block-built index, a backward that
    applies Pi^(-s)): values equal the explicit gather with ``permutation_index``, and gradcheck passes, with a
    short period (one shared index) and a long one (an index per block), across block edges."""
    import lrpe.encoding

    monkeypatch.setattr(lrpe.encoding, "_PERMUTATION_TABLE_ROWS", table_rows)
    enc = LRPE("permutation", 12, num_heads=num_heads, seed=seed).double()
    n = 70
    x = torch.randn(2, 3, n, 12, dtype=F64, requires_grad=True)
    idx = enc.permutation_index(torch.arange(offset, offset + n))
    expected = torch.gather(x, -1, idx.expand(x.shape))
    assert torch.equal(enc(x, offset=offset), expected)
    grad = torch.randn_like(expected)
    (want,) = torch.autograd.grad(expected, x, grad)
    (got,) = torch.autograd.grad(enc(x, offset=offset), x, grad)
    assert torch.equal(got, want)
    small = torch.randn(1, 3, 21, 12, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: enc(t, offset=offset), (small,))
