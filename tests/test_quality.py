"""The quality gate (bench.gate.quality) passes on this tree against the committed budgets, and fails, naming
the variant, when an encoding is broken: a sign flip in the keys' rotation (RoPE, LRPE-orthogonal) and a
position off by one (the keys of LRPE-orthogonal, APE's table). Each breakage is injected by monkeypatching the
encoding's public method for one test; the library is untouched."""

from __future__ import annotations

import pytest
import torch

from baselines.absolute import SinusoidalAPE
from baselines.rope import rope_phasors, rotate
from baselines.softmax import SoftmaxAttention, softmax_attention
from bench.cli import main
from bench.gate.quality import (
    DEFAULT_QUALITY_BUDGETS,
    QUALITY_VARIANTS,
    QualityBudgets,
    QualitySetup,
    make_budgets,
    quality_gate,
)
from lrpe.encoding import LRPE


def failed_variants(result) -> set[str]:
    return {r["variant"] for r in result.rows if not r["ok"]}


def test_the_committed_budgets_pass_on_this_tree_and_cover_every_encoding_kind():
    budgets = QualityBudgets.load(DEFAULT_QUALITY_BUDGETS)
    assert {e.variant for e in budgets.entries} == set(QUALITY_VARIANTS)
    assert all(e.tolerance < 1e-4 for e in budgets.entries)  # far below the breakages' 3e-4..1e-3 bits
    result = quality_gate()
    assert result.passed, result.text


def test_rope_with_the_keys_rotated_the_other_way_fails(monkeypatch):
    def keys_flipped(self, q, k, v, offset=0):
        rope = self.positional
        if rope is None:  # NoPE and APE: no rotation to break
            return softmax_attention(q, k, v, causal=self.causal)
        phasors = rope_phasors(k.shape[-2], k.shape[-1], offset=offset, base=rope.base, dtype=torch.float32)
        return softmax_attention(rope(q, offset), rotate(k, phasors.conj(), rope.layout), v, causal=self.causal)

    monkeypatch.setattr(SoftmaxAttention, "forward", keys_flipped)
    result = quality_gate()
    assert not result.passed
    assert failed_variants(result) == {"softmax-rope@naive"}, result.text  # NoPE and APE have no rotation
    assert "softmax-rope@naive" in result.text.splitlines()[-1]


def _broken_pair(change_k):
    def forward_pair(self, q, k, offset=0, *, inplace=False):
        factors = self.position_factors(q.shape[-2], offset, torch.float32)
        return self.transform(q, factors), self.transform(k, change_k(self, k, offset, factors))
    return forward_pair


def test_lrpe_orthogonal_with_a_sign_flip_in_the_keys_rotation_fails(monkeypatch):
    monkeypatch.setattr(LRPE, "forward_pair", _broken_pair(lambda self, k, offset, factors: factors.conj()))
    result = quality_gate()
    assert failed_variants(result) == {"linear-lrpe-orthogonal@torch-chunked"}, result.text


def test_lrpe_orthogonal_with_the_keys_one_position_off_fails(monkeypatch):
    monkeypatch.setattr(LRPE, "forward_pair", _broken_pair(
        lambda self, k, offset, factors: self.position_factors(k.shape[-2], offset + 1, torch.float32)))
    result = quality_gate()
    assert failed_variants(result) == {"linear-lrpe-orthogonal@torch-chunked"}, result.text


def test_ape_one_position_off_fails(monkeypatch):
    shifted = SinusoidalAPE.forward
    monkeypatch.setattr(SinusoidalAPE, "forward", lambda self, x, offset=0: shifted(self, x, offset + 1))
    result = quality_gate()
    assert failed_variants(result) == {"softmax-ape@naive"}, result.text


def test_budgets_round_trip_and_bad_inputs_are_named(tmp_path):
    setup = QualitySetup(eval_lens=(16,), eval_bytes=256)
    budgets = make_budgets(setup, ("linear@torch-chunked",))
    path = budgets.save(tmp_path / "q.json")
    again = QualityBudgets.load(path)
    assert again.entries == budgets.entries and again.setup == setup
    assert quality_gate(path).passed
    with pytest.raises(ValueError, match="no quality budget file"):
        QualityBudgets.load(tmp_path / "none.json")
    with pytest.raises(ValueError, match="eval_bytes must be >= 1"):
        QualitySetup(eval_bytes=0)
    with pytest.raises(ValueError, match="margin must be >= 1"):
        make_budgets(setup, margin=0.5)
    assert main(["gate", "--quality", "--budgets", str(path)]) == 0
