"""The sweep as pytest-benchmark tests: ``pytest bench/ --benchmark [--preset quick] [--n 1k..8k] ...``.

Each planned config is one test. Timing goes through pytest-benchmark's pedantic mode with a target that
ends in a device synchronise (its default timer does not synchronise CUDA); memory, status and FLOPs go
into ``extra_info``; the same row is appended to the run's store, so ``--benchmark-json`` and the run's
results.csv describe the same measurements. ok passes; oom, over-budget, unsupported and unavailable skip
with their reason; error fails.
"""

from __future__ import annotations

import math

import pytest

from bench.measure.timing import SynchronizedCallable, Timing

EXTRA_COLUMNS = ("key", "run_id", "status", "reason", "time_median_ms", "time_p20_ms", "time_p80_ms",
                 "peak_mem_bytes", "flops", "tflops", "gbps", "tokens_per_s", "predicted_ms")


def pytest_benchmark_timer(benchmark, device: str, settings):
    """A Timer (see bench.sweep.executor) that times through the ``benchmark`` fixture."""
    def timer(fn, seconds_per_call: float) -> Timing:
        budget_rounds = math.ceil(settings.min_time_s / max(seconds_per_call, 1e-9))
        cap_rounds = max(settings.min_repeats, math.floor(settings.max_time_s / max(seconds_per_call, 1e-9)))
        rounds = max(settings.min_repeats, min(budget_rounds, settings.max_repeats, cap_rounds))
        benchmark.pedantic(SynchronizedCallable(fn, device), rounds=rounds, iterations=1, warmup_rounds=0)
        if benchmark.stats is None:  # --benchmark-disable: pytest-benchmark ran it once without timing
            raise RuntimeError("pytest-benchmark is disabled (--benchmark-disable); no timings to record")
        return Timing.from_samples(benchmark.stats.stats.data)
    return timer


def test_attention(planned, bench_sweep, benchmark):
    timer = pytest_benchmark_timer(benchmark, planned.config.device, bench_sweep.settings)
    row = bench_sweep.run_one(planned, timer=timer)
    benchmark.extra_info.update({name: row.get(name) for name in EXTRA_COLUMNS})
    if row["status"] == "error":
        pytest.fail(f"error: {row['reason']}")
    if row["status"] != "ok":
        pytest.skip(f"{row['status']}: {row['reason']}")
    assert row["time_median_ms"] > 0
