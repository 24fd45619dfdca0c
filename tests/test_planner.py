"""The planner: statuses decided before running, predictions from smaller N, shards."""

from pathlib import Path

import pytest

from bench.config import BenchConfig
from bench.registry import get_variant
from bench.sweep.planner import Budget, Planned, parse_shard, plan
from bench.sweep.presets import Limits, load_spec

TINY = Path(__file__).parent / "data" / "tiny.toml"


def planned(name: str, n: int, **kw) -> Planned:
    config = BenchConfig(variant=name, n=n, d=64, **kw)
    return Planned(config, get_variant(name))


def measured_row(name: str, n: int, ms: float, peak: float | None = 1e6, status: str = "ok", batch: int = 1):
    config = BenchConfig(variant=name, n=n, d=64, batch=batch)
    return {**config.as_row(), "status": status, "time_median_ms": ms, "peak_mem_bytes": peak}


def budget(config_seconds=5.0, total_seconds=1e6, memory=2**40, tflops=None):
    return Budget(Limits(config_seconds=config_seconds, total_seconds=total_seconds), calls_per_config=7,
                  memory_limit=memory, matmul_tflops=tflops)


def test_prediction_scales_by_complexity_and_names_the_figure():
    rows = [measured_row("softmax@naive", 1024, 100.0), measured_row("softmax@naive", 512, 30.0)]
    reason, pred = budget().check(planned("softmax@naive", 4096), rows, elapsed_s=0)
    assert pred.seconds_per_call == pytest.approx(0.1 * 16)  # from the largest smaller N, time ~ N^2
    assert "predicted 11.2 s" in reason and "from N=1024" in reason and "per-config limit of 5 s" in reason
    reason, pred = budget().check(planned("linear@torch-chunked", 4096),
                                  [measured_row("linear@torch-chunked", 1024, 100.0)], elapsed_s=0)
    assert pred.seconds_per_call == pytest.approx(0.4)  # linear: time ~ N
    assert reason is None


def test_batch_raised_at_short_n_enters_the_prediction():
    rows = [measured_row("linear@torch-chunked", 1024, 10.0, batch=4)]
    _, pred = budget().check(planned("linear@torch-chunked", 4096, batch=1), rows, elapsed_s=0)
    assert pred.seconds_per_call == pytest.approx(0.01)  # batch x N constant: same work


def test_memory_prediction_over_the_limit():
    rows = [measured_row("softmax@naive", 1024, 1.0, peak=2**30)]
    reason, pred = budget(memory=8 * 2**30).check(planned("softmax@naive", 4096), rows, elapsed_s=0)
    assert pred.peak_bytes == 16 * 2**30
    assert "predicted peak memory 16.00 GiB" in reason and "limit of 8.00 GiB" in reason


def test_formula_floor_before_any_measurement():
    # 2 B H N^2 (2D) / 2 FLOPs at 1e-6 TFLOP/s: far over any limit although nothing was measured yet
    reason, pred = budget(tflops=1e-6).check(planned("softmax@naive", 8192), [], elapsed_s=0)
    assert pred.basis.startswith("FLOP formula")
    assert reason is not None and "per-config limit" in reason
    # the quadratic memory floor: one float32 N x N matrix per head
    reason, pred = budget(memory=2**20).check(planned("softmax@naive", 8192), [], elapsed_s=0)
    assert pred.peak_bytes == 4.0 * 4 * 8192**2
    assert "exceeds the limit" in reason


def test_total_time_limit_and_failed_smaller_n():
    rows = [measured_row("linear@torch-chunked", 1024, 100.0)]
    reason, _ = budget(total_seconds=10).check(planned("linear@torch-chunked", 2048), rows, elapsed_s=9.5)
    assert "past its total limit of 10 s" in reason
    rows = [measured_row("softmax@naive", 2048, 0, status="oom")]
    reason, _ = budget().check(planned("softmax@naive", 4096), rows, elapsed_s=0)
    assert reason == "N=2048 of this series was oom; a larger N needs more"
    # another series (other d) is not affected
    other = Planned(BenchConfig(variant="softmax@naive", n=4096, d=32), get_variant("softmax@naive"))
    assert budget().check(other, rows, elapsed_s=0)[0] is None


def test_plan_marks_unsupported_and_unavailable_before_running():
    spec = load_spec(str(TINY), overrides={"variants": "linear@fla,linear-lrpe-orthogonal@torch-chunked",
                                           "d": "7,8"})
    statuses = {(p.config.variant, p.config.d): (p.status, p.reason) for p in plan(spec)}
    fla_status, fla_reason = statuses[("linear@fla", 8)]
    assert fla_status == "unavailable" and fla_reason
    assert statuses[("linear-lrpe-orthogonal@torch-chunked", 7)][0] == "unsupported"
    assert statuses[("linear-lrpe-orthogonal@torch-chunked", 8)] == (None, None)


def test_shards_partition_the_plan():
    spec = load_spec(str(TINY))
    full = [p.config.key for p in plan(spec)]
    parts = [[p.config.key for p in plan(spec, parse_shard(f"{i}/3"))] for i in (1, 2, 3)]
    assert sorted(key for part in parts for key in part) == sorted(full)
    assert all(set(a).isdisjoint(b) for a in parts for b in parts if a is not b)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "1/0"])
def test_bad_shard_is_named(text):
    with pytest.raises(ValueError, match=repr(text)):
        parse_shard(text)
