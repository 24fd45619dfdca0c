"""bench.measure.timing: agreement with an independent clock, consistent summaries, and the stopping rules."""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.measure.timing import (
    SynchronizedCallable,
    Timing,
    TimingSettings,
    synchronize,
    time_callable,
    time_cpu,
    time_cuda,
    warmup,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def busy_loop(iterations: int) -> int:
    """Pure-Python work on one core: its time does not depend on torch threads or caches."""
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def calibrated_busy(target_s: float):
    """A busy loop taking about ``target_s`` per call when the CPU is not taken away from it."""
    iterations = 100_000
    best = min(_seconds(lambda: busy_loop(iterations)) for _ in range(3))
    return lambda: busy_loop(max(1, int(iterations * target_s / best)))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_time_cpu_agrees_with_an_independent_clock():
    fn = calibrated_busy(0.005)
    three_calls = TimingSettings(min_repeats=3, max_repeats=3, min_time_s=0.0, max_time_s=1.0)  # flush on
    errors = []
    for _attempt in range(2):  # one retry absorbs a hiccup of the shared machine
        # Under load this VM's vCPUs stall in bursts of ~12 ms, so single calls read 1x or several x and
        # the medians of two sets taken a second apart differed by up to 80%. Hence short rounds that pair
        # the two clocks in time, the fastest of 3 calls in each, and the median over rounds of the ratio:
        # its error stayed under 3% with the machine's CPU pressure at 50-80%.
        ratios = []
        for _ in range(12):
            reference_ms = min(_seconds(fn) for _ in range(3)) * 1e3
            ratios.append(time_cpu(fn, three_calls).min_ms / reference_ms)
        errors.append(abs(statistics.median(ratios) - 1))
        if errors[-1] < 0.10:
            break
    # Flush time counted inside the samples would add several ms to these ~5 ms calls.
    assert errors[-1] < 0.10, f"relative errors {errors}"


def test_timing_fields_are_consistent():
    a = torch.randn(128, 128)
    settings = TimingSettings(min_repeats=20, max_repeats=100_000, min_time_s=0.02, max_time_s=0.5,
                              flush_l2=False)
    timing = time_cpu(lambda: a @ a, settings)
    assert timing.min_ms <= timing.p20_ms <= timing.median_ms <= timing.p80_ms <= timing.max_ms
    assert settings.min_repeats <= timing.repeats == len(timing.samples_ms) <= settings.max_repeats
    assert timing.total_s == pytest.approx(sum(timing.samples_ms) / 1e3)
    assert timing.total_s >= settings.min_time_s


def test_from_samples_known_values():
    timing = Timing.from_samples([0.005, 0.001, 0.003, 0.002, 0.004])
    assert timing.median_ms == pytest.approx(3.0)
    assert timing.p20_ms == pytest.approx(1.8)  # linear interpolation between the 1st and 2nd of 5
    assert timing.p80_ms == pytest.approx(4.2)
    assert (timing.min_ms, timing.max_ms, timing.repeats) == (pytest.approx(1.0), pytest.approx(5.0), 5)
    assert timing.total_s == pytest.approx(0.015)
    with pytest.raises(ValueError):
        Timing.from_samples([])


def test_max_time_s_wins_over_the_minimums():
    settings = TimingSettings(min_repeats=100, max_repeats=1000, min_time_s=0.05, max_time_s=0.1,
                              flush_l2=False)
    started = time.perf_counter()
    timing = time_cpu(lambda: time.sleep(0.02), settings)
    assert timing.total_s >= 0.1
    assert timing.total_s < 0.1 + 0.05  # the call that crosses max_time_s is the last one
    assert timing.repeats < 10
    assert time.perf_counter() - started < 2.0


def test_max_repeats_wins_over_min_time():
    settings = TimingSettings(min_repeats=7, max_repeats=7, min_time_s=5.0, max_time_s=10.0, flush_l2=False)
    assert time_cpu(lambda: None, settings).repeats == 7  # None takes microseconds: 7 calls, not 5 s


def test_stops_once_the_median_is_known():
    steady = TimingSettings(min_repeats=5, max_repeats=2000, min_time_s=0.0, max_time_s=5.0,
                            flush_l2=False, median_precision=0.05)
    timing = time_cpu(lambda: time.sleep(0.001), steady)
    assert timing.repeats < 300  # ~1 ms sleeps with ~10% spread need tens of samples, not 2000
    no_early_stop = TimingSettings(min_repeats=5, max_repeats=60, min_time_s=0.0, max_time_s=5.0,
                                   flush_l2=False, median_precision=0.0)
    assert time_cpu(lambda: time.sleep(0.001), no_early_stop).repeats == 60


def test_warmup_counts_calls_and_honours_both_minimums():
    calls = []
    assert warmup(lambda: calls.append(1), "cpu", TimingSettings(warmup_min_calls=3, warmup_min_s=0.0)) == 3
    assert len(calls) == 3
    made = warmup(lambda: time.sleep(0.01), "cpu", TimingSettings(warmup_min_calls=1, warmup_min_s=0.05))
    assert made >= 5


def test_settings_validation_and_device_defaults():
    with pytest.raises(ValueError):
        TimingSettings(min_repeats=10, max_repeats=5)
    with pytest.raises(ValueError):
        TimingSettings(min_time_s=2.0, max_time_s=1.0)
    assert TimingSettings.for_device("cpu") == TimingSettings()
    gpu = TimingSettings.for_device("cuda:0")
    assert gpu.flush_l2 and gpu.min_repeats >= 10 and gpu.max_time_s <= TimingSettings().max_time_s


def test_synchronized_callable_passes_arguments_and_result():
    target = SynchronizedCallable(lambda x, y=1: x + y, "cpu")
    assert target(2, y=3) == 5
    synchronize("cpu")
    with pytest.raises(ValueError):
        SynchronizedCallable(lambda: None, "meta")


def test_time_callable_dispatches_on_device():
    settings = TimingSettings(min_repeats=3, max_repeats=3, flush_l2=False)
    assert time_callable(lambda: None, "cpu", settings).repeats == 3
    with pytest.raises(ValueError):
        time_callable(lambda: None, "meta", settings)


@needs_cuda
@pytest.mark.parametrize("flush_l2", [True, False], ids=["do_bench", "events"])
def test_time_cuda_consistent_and_synchronised(flush_l2):
    a = torch.randn(4096, 4096, device="cuda")
    settings = TimingSettings.for_device("cuda")
    settings.flush_l2 = flush_l2
    warmup(lambda: a @ a, "cuda", settings)
    timing = time_cuda(lambda: a @ a, settings, "cuda")
    assert timing.min_ms <= timing.p20_ms <= timing.median_ms <= timing.p80_ms <= timing.max_ms
    # 2 * 4096^3 FLOPs: a timer that did not wait for the GPU would report microseconds
    assert timing.median_ms > 2 * 4096**3 / 2e15 * 1e3


def test_do_bench_gets_a_time_budget_within_the_settings(monkeypatch):
    # The GPU path without a GPU: one call "takes" 50 ms, do_bench is a stand-in that records its arguments.
    from bench.measure import timing

    monkeypatch.setattr(timing, "_cuda_event_ms", lambda fn, device, flush=None: 50.0)
    calls = {}

    def fake_do_bench(fn, warmup, rep, return_mode):
        calls.update(warmup=warmup, rep=rep, return_mode=return_mode)
        return [3.0, 1.0, 2.0]

    settings = TimingSettings(min_repeats=10, max_repeats=10_000, min_time_s=0.1, max_time_s=1.0)
    result = timing._time_do_bench(fake_do_bench, lambda: None, settings, torch.device("cpu"))
    assert calls == {"warmup": 0, "rep": 500.0, "return_mode": "all"}  # 10 calls of 50 ms: above min_time
    assert result.median_ms == pytest.approx(2.0) and result.total_s == pytest.approx(0.006)
    capped = TimingSettings(min_repeats=100, max_repeats=10_000, min_time_s=0.1, max_time_s=1.0)
    timing._time_do_bench(fake_do_bench, lambda: None, capped, torch.device("cpu"))
    assert calls["rep"] == 1000.0  # 100 calls would take 5 s: max_time_s wins
