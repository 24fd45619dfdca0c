"""The sweep as pytest-benchmark tests: ``pytest bench/ --benchmark [--preset quick] [--n 1k..8k] ...``.

Each planned config is one test, timed through pytest-benchmark's pedantic mode with the same measurement as
``python -m bench run`` on that device (docs/gpu-timing.md):
- CPU: pytest-benchmark's own clock (``--benchmark-timer``, ``time.perf_counter`` by default) around each call,
  as ``bench.measure.timing.time_cpu`` does; warm cache (a preset's CPU flush_l2 = true is not applied here).
- CUDA: the L2 flush ``triton.testing.do_bench`` makes (Triton's 256 MB buffer) as pedantic's ``setup``,
  outside the timed region, and ``bench.measure.timing.cuda_event_clock`` as the timer (given by the
  ``benchmark`` marker that bench/conftest.py puts on CUDA configs): GPU time between CUDA events around one
  call, as do_bench measures it (pytest-benchmark's default clock does not wait for the GPU).
pedantic's rounds are sized from a call made after the first (``steady_call_seconds``): the first includes
the Triton JIT, fla's autotune or FlexAttention's compile.
Memory, status and FLOPs go into ``extra_info``; the same row is appended to the run's store, so
``--benchmark-json`` and the run's results.csv describe the same measurements. ok passes; oom, over-budget,
unsupported and unavailable skip with their reason (fail with ``--require-ok``, as CI runs it); error fails.
"""

from __future__ import annotations

import time

import pytest

from bench.measure.timing import Timing, TimingSettings, cuda_l2_flush
from bench.sweep.planner import repeats_for

EXTRA_COLUMNS = ("key", "run_id", "status", "reason", "timer", "time_median_ms", "time_p20_ms", "time_p80_ms",
                 "peak_mem_bytes", "flops", "tflops", "gbps", "tokens_per_s", "predicted_ms")


def pytest_benchmark_timer(benchmark, device: str, timer_name: str, settings: TimingSettings):
    """A Timer (see bench.sweep.executor) that times through the ``benchmark`` fixture; ``timer_name`` is the
    row's ``timer`` (the Sweep's, from bench/conftest.py): on CUDA, ``+l2flush`` makes pedantic's setup flush L2."""
    def timer(fn, seconds_per_call: float) -> Timing:
        """``seconds_per_call``: one call after compilation (bench.measure.timing.steady_call_seconds)."""
        started = time.perf_counter()
        flush = device == "cuda" and timer_name.endswith("+l2flush")
        setup = cuda_l2_flush(device) if flush else None
        rounds = repeats_for(settings, seconds_per_call)
        benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
        if benchmark.stats is None:  # --benchmark-disable: pytest-benchmark ran it once without timing
            raise RuntimeError("pytest-benchmark is disabled (--benchmark-disable); no timings to record")
        return Timing.from_samples(benchmark.stats.stats.data, timer=timer_name,
                                   wall_s=time.perf_counter() - started)
    return timer


def test_attention(planned, bench_sweep, benchmark, request: pytest.FixtureRequest):
    timer = pytest_benchmark_timer(benchmark, planned.config.device, bench_sweep.timer_name, bench_sweep.settings)
    row = bench_sweep.run_one(planned, timer=timer)
    benchmark.extra_info.update({name: row.get(name) for name in EXTRA_COLUMNS})
    if row["status"] == "error":
        pytest.fail(f"error: {row['reason']}")
    if row["status"] != "ok":
        message = f"{row['status']}: {row['reason']}"
        if request.config.getoption("require_ok", False):
            pytest.fail(f"--require-ok: every planned config must be measured; {message}")
        pytest.skip(message)
    assert row["time_median_ms"] > 0
