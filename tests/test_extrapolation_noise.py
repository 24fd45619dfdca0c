"""Noise of the extrapolation numbers and the machinery behind the fast evaluation: block standard errors,
paired differences, the FlashAttention twin of the explicit-score cores, seeds, worker processes, and the
table's marks of differences beyond the noise."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.extrapolation.evaluate import BLOCK_TOKENS, Score, evaluate, paired_difference, standard_error
from bench.extrapolation.job import cores_of, eval_twin
from bench.extrapolation.model import ByteLM, ModelConfig
from bench.extrapolation.noise import combined_noise, exceeds, summarise
from bench.extrapolation.run import ExtrapolationRun
from bench.extrapolation.spec import load_extrap_spec, row_key
from bench.extrapolation.table import extrapolation_table
from bench.registry import get_variant


def test_standard_error_and_paired_difference_by_hand() -> None:
    assert standard_error([1.0]) is None
    assert standard_error([1.0, 3.0]) == pytest.approx(1.0)  # sd sqrt(2) / sqrt(2)
    base = Score.from_blocks([10.0, 20.0, 30.0], [10, 10, 10])  # block means 1, 2, 3
    shifted = Score.from_blocks([15.0, 25.0, 35.0], [10, 10, 10])  # each block 0.5 higher
    assert base.loss_nats == pytest.approx(2.0) and base.loss_se == pytest.approx(1 / math.sqrt(3))
    delta, delta_se = paired_difference(shifted, base)
    assert delta == pytest.approx(0.5) and delta_se == pytest.approx(0.0)  # what both share cancels
    with pytest.raises(ValueError, match="same stream"):
        paired_difference(shifted, Score.from_blocks([1.0], [10]))


def test_evaluate_blocks_add_up_and_follow_the_stream(one_thread) -> None:
    model = ByteLM(ModelConfig("linear@torch-chunked", n_layers=1, d_model=16, n_heads=2))
    tokens = torch.randint(0, 256, (3 * BLOCK_TOKENS + 501,), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    scores = {p: evaluate(model, tokens, 64, p, stride=32 if p == "sliding" else None, batch_tokens=512)
              for p in ("non-overlapping", "sliding")}
    for score in scores.values():
        assert score.count == tokens.numel() - 1
        assert score.block_counts == (BLOCK_TOKENS, BLOCK_TOKENS, BLOCK_TOKENS, 500)
        assert sum(score.block_sums) == pytest.approx(score.loss_sum, rel=1e-12)
        assert score.loss_se is not None and score.loss_se > 0  # random bytes: blocks differ by chance
    # The first window's targets are scored alike by both protocols: block 0 starts identically, so the
    # paired difference is defined and finite.
    delta, delta_se = paired_difference(scores["sliding"], scores["non-overlapping"])
    assert math.isfinite(delta) and delta_se is not None


@pytest.mark.parametrize("name", ["softmax@naive", "softmax-rope@naive", "softmax-ape@naive"])
def test_eval_twin_equals_the_naive_core(name: str) -> None:
    """The explicit-score cores score through their FlashAttention twin: the same logits, in float64."""
    variant = get_variant(name)
    twin = eval_twin(variant)
    assert twin is not None and twin.backend == "sdpa-flash" and twin.pe == variant.pe
    model = ByteLM(ModelConfig(name, n_layers=2, d_model=32, n_heads=4)).double()
    tokens = torch.randint(0, 256, (3, 97), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        own = model(tokens)
        with cores_of(model, twin) as backend:
            swapped = model(tokens)
            assert backend == "sdpa-flash"
        restored = model(tokens)
    assert torch.allclose(own, swapped, rtol=1e-10, atol=1e-10)
    assert torch.equal(own, restored)  # the cores are put back
    assert eval_twin(get_variant("linear@torch-chunked")) is None


def test_seeds_and_workers_store_every_row_once_and_match_one_process(tmp_path: Path, one_thread,
                                                                      tiny_extrap_preset) -> None:
    """Two worker processes and two seeds: every planned row exactly once, each seed its own model, and the
    same numbers as the same trainings run in this process, to float32 rounding (the job does not depend on
    where it runs)."""
    variants = ["linear@torch-chunked", "softmax-rope@naive"]
    path = tiny_extrap_preset(tmp_path, variants, [32, 64], protocols=("non-overlapping", "sliding"),
                              extra="workers = 2\nseeds = 2\nthreads = 1", eval_tokens=3 * BLOCK_TOKENS)
    spec = load_extrap_spec(str(path), lengths="32,64")
    assert spec.seeds == (0, 1) and spec.workers == 2
    pooled = ExtrapolationRun(spec, results_dir=tmp_path / "results", run_id="pool", progress=False)
    assert pooled.workers == 2
    frame = pooled.run().frame()
    keys = {row_key(v, 32, n, p, s) for v in variants for n in (32, 64) for p in ("non-overlapping", "sliding")
            for s in (0, 1)}
    assert set(frame["key"]) == keys and len(pooled.store.rows()) == len(keys)
    assert (frame["status"] == "ok").all()
    assert frame["bits_per_byte_se"].gt(0).all() and frame["loss_se_nats"].gt(0).all()
    at_l = frame[frame["eval_len"] == 32]
    assert at_l["bpb_vs_train_len"].abs().max() == 0 and at_l["bpb_vs_train_len_se"].max() == 0
    assert frame.loc[frame["eval_len"] == 64, "bpb_vs_train_len_se"].gt(0).all()
    assert set(frame.loc[frame["variant"] == "softmax-rope@naive", "eval_backend"]) == {"sdpa-flash"}
    by_seed = frame.groupby(["variant", "eval_len", "protocol"])["bits_per_byte"].nunique()
    assert (by_seed == 2).all()  # each seed trained its own model
    alone = ExtrapolationRun(load_extrap_spec(str(path), lengths="32,64", workers=1),
                             results_dir=tmp_path / "results", run_id="alone", progress=False)
    assert alone.workers == 1
    single = alone.run().frame().set_index("key")["bits_per_byte"]
    pooled_bpb = frame.set_index("key")["bits_per_byte"].sort_index()
    assert list(pooled_bpb.index) == list(single.sort_index().index)
    # Float32 rounding may differ between processes (buffer alignment picks the SIMD path), nothing more.
    assert pooled_bpb.to_numpy() == pytest.approx(single.sort_index().to_numpy(), rel=1e-6)
    table = extrapolation_table(frame)
    assert "2 seeds" in table and "seed spread" in table and "64 vs 32" in table
    # A resumed run with every row stored starts no worker and adds nothing.
    again = ExtrapolationRun(spec, results_dir=tmp_path / "results", run_id="pool", progress=False).run()
    assert len(again.rows()) == len(keys)


def _rows(values: dict[tuple[str, int, int], tuple[float, float, float, float]]) -> pd.DataFrame:
    """Rows from (variant, eval_len, seed) -> (bpb, se, delta, delta_se)."""
    family = {"softmax@naive": ("softmax", "none"), "softmax-rope@naive": ("softmax", "rope")}
    return pd.DataFrame([{"task": "extrapolation", "status": "ok", "variant": v, "family": family[v][0],
                          "pe": family[v][1], "protocol": "non-overlapping", "train_len": 128, "eval_len": n,
                          "stride": n, "seed": s, "tokens_scored": 32768, "bits_per_byte": b,
                          "bits_per_byte_se": se, "bpb_vs_train_len": d, "bpb_vs_train_len_se": dse,
                          "peak_mem_bytes": 2**20, "eval_wall_s": 1.0}
                         for (v, n, s), (b, se, d, dse) in values.items()])


def test_summary_and_marks_follow_the_noise() -> None:
    rows = _rows({("softmax@naive", 128, 0): (3.00, 0.02, 0.0, 0.0),
                  ("softmax@naive", 4096, 0): (3.01, 0.02, 0.01, 0.01),
                  ("softmax-rope@naive", 128, 0): (2.60, 0.02, 0.0, 0.0),
                  ("softmax-rope@naive", 4096, 0): (3.70, 0.02, 1.10, 0.01)})
    summary = summarise(rows).set_index(["variant", "eval_len"])
    assert summary.loc[("softmax-rope@naive", 4096), "noise"] == pytest.approx(0.02)  # one seed: SE only
    assert math.isnan(summary.loc[("softmax-rope@naive", 4096), "seed_sd"])
    table = extrapolation_table(rows)
    line = next(x for x in table.splitlines() if x.startswith("softmax-rope@naive") and "+1.10" in x)
    assert line.rstrip().endswith("*")  # 1.10 against a paired noise of 0.01
    plain = next(x for x in table.splitlines() if x.startswith("softmax@naive") and "+0.01" in x)
    assert not plain.rstrip().endswith("*")  # 0.01 against 0.01: within 2 x the noise
    # RoPE against NoPE: -0.40 at 128 and +0.69 at 4096, both far beyond sqrt(0.02^2 + 0.02^2).
    against = table[table.index("against the family's attention"):]
    assert "-0.40±0.03 *" in against and "+0.69±0.03 *" in against


def test_seed_spread_enters_the_noise() -> None:
    rows = _rows({("softmax@naive", 128, s): (3.0 + 0.1 * s, 0.01, 0.0, 0.0) for s in range(3)})
    summary = summarise(rows).iloc[0]
    assert summary["seeds"] == 3 and summary["seed_sd"] == pytest.approx(0.1)
    assert summary["noise"] == pytest.approx(combined_noise(0.01, 0.1, 3)) == pytest.approx(
        math.sqrt(0.01**2 + 0.1**2 / 3))
    assert exceeds(0.1, 0.01) is True and exceeds(0.01, 0.01) is False and exceeds(0.1, math.nan) is None


def test_seeds_workers_and_steps_below_one_are_refused() -> None:
    for option in ("seeds", "workers", "threads", "steps"):
        with pytest.raises(ValueError, match=f"{option} must be >= 1, got 0"):
            load_extrap_spec("extrap-quick", **{option: 0})
