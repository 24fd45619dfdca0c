"""P matrices: forward equals the explicit matrix, orthogonality, layouts, seeds, per-head draws, errors."""

from __future__ import annotations

import pytest
import torch

from lrpe import P_CHOICES
from lrpe.pmatrix import HouseholderP, make_p, oddeven_index


def _x(d: int, heads: int = 3, n: int = 5) -> torch.Tensor:
    return torch.randn(2, heads, n, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)


def test_choices() -> None:
    assert P_CHOICES == ("identity", "householder", "householder-learned", "oddeven")


@pytest.mark.parametrize("name", P_CHOICES)
@pytest.mark.parametrize("d", [1, 7, 8, 64])
@pytest.mark.parametrize("num_heads", [None, 3])
def test_forward_is_the_matrix_and_the_matrix_is_orthogonal(name: str, d: int, num_heads: int | None) -> None:
    p = make_p(name, d, num_heads=num_heads, seed=4).double()
    m = p.matrix()
    assert m.dtype == torch.float64
    assert m.shape == ((d, d) if num_heads is None else (num_heads, d, d))
    x = _x(d)
    # x' = P x for column vectors, i.e. x @ P^T for row vectors; per head, head h uses P[h].
    expected = x @ (m.mT if num_heads is None else m.mT[None])
    torch.testing.assert_close(p(x), expected, rtol=0, atol=1e-12)
    eye = torch.eye(d, dtype=torch.float64).expand_as(m)
    torch.testing.assert_close(m.mT @ m, eye, rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [7, 8])
def test_oddeven_interleaves_the_two_halves(d: int) -> None:
    half = (d + 1) // 2
    x = torch.arange(d, dtype=torch.float64) + 100
    out = make_p("oddeven", d)(x)
    for i in range(half):
        assert out[2 * i] == x[i]
    for i in range(d // 2):
        assert out[2 * i + 1] == x[half + i]
    assert torch.equal(x[oddeven_index(d)], out)
    assert oddeven_index(8).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_householder_reflects_v_and_fixes_its_complement() -> None:
    p = HouseholderP(6, seed=2)
    v = p.v.double()
    assert torch.allclose(p.matrix() @ v, -v, atol=1e-12)
    w = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = w - (w @ v) / (v @ v) * v
    assert torch.allclose(p.matrix() @ w, w, atol=1e-12)
    torch.testing.assert_close(p.matrix(), p.matrix().mT, rtol=0, atol=0)


def test_householder_draw_follows_the_seed_and_differs_per_head() -> None:
    assert torch.equal(HouseholderP(8, seed=5).v, HouseholderP(8, seed=5).v)
    assert not torch.equal(HouseholderP(8, seed=5).v, HouseholderP(8, seed=6).v)
    per_head = HouseholderP(8, num_heads=4, seed=5).v
    assert per_head.shape == (4, 8)
    assert all(not torch.allclose(per_head[0], per_head[h]) for h in range(1, 4))


def test_learned_householder_is_a_parameter_with_gradient_and_fixed_is_a_buffer() -> None:
    learned, fixed = make_p("householder-learned", 8, seed=1), make_p("householder", 8, seed=1)
    assert [name for name, _ in learned.named_parameters()] == ["v"]
    assert list(fixed.parameters()) == [] and "v" in dict(fixed.named_buffers())
    assert torch.equal(learned.v.detach(), fixed.v)
    learned(_x(8).float()).pow(2).sum().backward()
    assert learned.v.grad is not None and learned.v.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", ["dct", "Householder", ""])
def test_unknown_p_lists_the_choices(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown p '{bad}'; allowed: .*'householder-learned'.*'oddeven'"):
        make_p(bad, 8)


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="head_dim must be >= 1, got 0"):
        make_p("identity", 0)
    with pytest.raises(ValueError, match="num_heads must be >= 1 or None, got 0"):
        make_p("oddeven", 4, num_heads=0)
