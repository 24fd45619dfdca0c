"""The executor and the sweep session: statuses for failures, the sweep going on, rows on disk."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.config import BenchConfig
from bench.measure.timing import TimingSettings
from bench.registry import get_variant
from bench.sweep import planner
from bench.sweep.executor import Executor
from bench.sweep.presets import load_spec
from bench.sweep.session import Sweep
from bench.variant import Variant

TINY = Path(__file__).parent / "data" / "tiny.toml"
FAST = TimingSettings(warmup_min_calls=1, warmup_min_s=0.0, min_repeats=3, max_repeats=5, min_time_s=0.0,
                      max_time_s=0.05)


class Raises(nn.Module):
    def __init__(self, exc: BaseException) -> None:
        super().__init__()
        self.exc = exc

    def forward(self, q, k, v, offset=0):
        raise self.exc


def failing_variant(name: str, exc: BaseException) -> Variant:
    return Variant(name=name, family="linear", pe="none", backend="naive", builder=lambda spec: Raises(exc),
                   time_complexity="linear", memory_complexity="linear")


def config(name="linear@torch-chunked", **kw) -> BenchConfig:
    return BenchConfig(variant=name, **{"n": 128, "d": 16, "heads": 2, **kw})


def test_ok_row_has_times_memory_and_throughput():
    row = Executor(FAST).run(config(), get_variant("linear@torch-chunked"))
    assert row["status"] == "ok", row["reason"]
    assert 0 < row["time_p20_ms"] <= row["time_median_ms"] <= row["time_p80_ms"]
    assert row["repeats"] >= 3 and row["peak_mem_bytes"] >= 0
    assert row["flops"] > 0 and row["tflops"] > 0 and row["tokens_per_s"] > 0
    assert row["timer"] == "perf_counter"


def test_fwd_bwd_runs_and_needs_more_memory_than_fwd():
    variant = get_variant("softmax@naive")
    fwd = Executor(FAST).run(config("softmax@naive", n=512), variant)
    both = Executor(FAST).run(config("softmax@naive", n=512, pass_="fwd+bwd"), variant)
    assert both["status"] == "ok", both["reason"]
    assert both["flops"] == pytest.approx(fwd["flops"] * 3.5)
    assert both["peak_mem_bytes"] > fwd["peak_mem_bytes"]


def test_memory_error_is_oom_and_other_errors_keep_their_message():
    oom = Executor(FAST).run(config("x@naive"), failing_variant("x@naive", MemoryError("cannot allocate")))
    assert oom["status"] == "oom" and "MemoryError" in oom["reason"]
    cuda_oom = Executor(FAST).run(config("x@naive"),
                                  failing_variant("x@naive", RuntimeError("CUDA out of memory. Tried")))
    assert cuda_oom["status"] == "oom"
    error = Executor(FAST).run(config("x@naive"), failing_variant("x@naive", ValueError("boom")))
    assert error["status"] == "error" and error["reason"] == "ValueError: boom"


def test_injected_memory_error_in_a_sweep_and_the_next_config_still_runs(tmp_path, monkeypatch):
    broken = failing_variant("broken@naive", MemoryError("injected"))
    real_get = planner.get_variant
    monkeypatch.setattr(planner, "get_variant", lambda name: broken if name == "broken@naive" else real_get(name))
    spec = replace(load_spec(str(TINY)), variants=("broken@naive", "linear@torch-chunked"))
    sweep = Sweep(spec, results_dir=tmp_path, run_id="oom")
    rows = [sweep.run_one(p) for p in sweep.pending()]
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row["status"])
    # the first broken config is oom; the second is skipped because a smaller N of its series was oom
    assert by_variant["broken@naive"] == ["oom", "over-budget"]
    assert by_variant["linear@torch-chunked"] == ["ok", "ok"]
    stored = sweep.store.rows()
    assert [r["key"] for r in stored] == [r["key"] for r in rows]
    assert sweep.finish().exists()


def test_sweep_resumes_without_repeating(tmp_path):
    spec = load_spec(str(TINY))
    first = Sweep(spec, results_dir=tmp_path, run_id="resume")
    for planned in first.pending()[:2]:
        first.run_one(planned)
    second = Sweep(spec, results_dir=tmp_path, run_id="resume")
    assert len(second.pending()) == len(second.planned) - 2
    for planned in second.pending():
        second.run_one(planned)
    keys = [r["key"] for r in second.store.rows()]
    assert len(keys) == len(set(keys)) == len(second.planned)
    # ceilings are measured once per run and reused on resume
    sessions = second.store.environment()["sessions"]
    assert len(sessions) == 2 and sessions[0]["ceilings"] == sessions[1]["ceilings"]


def test_profile_writes_a_trace_per_config(tmp_path):
    spec = replace(load_spec(str(TINY)), variants=("linear@torch-chunked",), n=(64,))
    sweep = Sweep(spec, results_dir=tmp_path, run_id="prof", profile=True)
    row = sweep.run_one(sweep.pending()[0])
    assert row["status"] == "ok", row["reason"]
    assert Path(row["profile_trace"]).exists() and Path(row["profile_table"]).read_text().strip()


def test_inputs_are_seeded_and_on_the_config_dtype():
    from bench.sweep.executor import make_inputs

    a = make_inputs(config(dtype="bfloat16"), seed=1)
    b = make_inputs(config(dtype="bfloat16"), seed=1)
    assert a[0].dtype == torch.bfloat16 and torch.equal(a[0], b[0]) and not torch.equal(a[0], a[1])
    grads = make_inputs(config(pass_="fwd+bwd"), seed=1)
    assert all(t.requires_grad for t in grads)
