"""python -m bench selfcheck: its CPU half passes here, GPU checks say unavailable, bad groups are refused."""

import pytest
import torch

from bench.selfcheck import Check, run_selfcheck, table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU half")
def test_cpu_half_memory_passes_and_telemetry_is_unavailable_with_its_reason():
    checks = run_selfcheck(["memory", "telemetry"])
    by_group = {c.group: c for c in checks}
    assert by_group["memory"].status == "pass", by_group["memory"].detail
    assert by_group["telemetry"].status == "unavailable" and "CUDA" in by_group["telemetry"].detail
    assert "memory" in table(checks)


def test_unknown_group_and_status_are_refused():
    with pytest.raises(ValueError, match="'gpus'"):
        run_selfcheck(["gpus"])
    with pytest.raises(ValueError, match="'maybe'"):
        Check("tests", "x", "maybe")


def test_front_end_verdict_compares_with_the_mean_of_the_brackets_and_names_a_missing_row():
    # On CPU the fastest call is compared (CHECK_STATISTIC): the median (30 ms) would fail here.
    from bench.selfcheck import AGREEMENT, _front_end_verdict

    row = {"status": "ok", "device": "cpu", "time_min_ms": 10.0, "time_median_ms": 30.0, "timer": "perf_counter",
           "reason": ""}
    inside = _front_end_verdict("x", {"k": row}, "k", {"k": (9.5, 10.5)}, "Timer", 1)
    assert inside.status == "pass" and "mean of 9.500 before and 10.500 after" in inside.detail
    assert inside.detail.startswith("min 10.000 ms")
    on_gpu = _front_end_verdict("x", {"k": {**row, "device": "cuda"}}, "k", {"k": (9.5, 10.5)}, "do_bench", 1)
    assert on_gpu.status == "fail" and on_gpu.detail.startswith("median 30.000 ms")
    off = 10.0 / (1 - AGREEMENT) * 1.02  # both brackets agree with each other, the front end is off
    outside = _front_end_verdict("x", {"k": row}, "k", {"k": (off, off)}, "Timer", 2)
    assert outside.status == "fail" and "attempt 2" in outside.detail
    assert _front_end_verdict("x", {}, "k", {"k": (1.0, 1.0)}, "Timer", 1).status == "fail"
    assert _front_end_verdict("x", "exit 1: boom", "k", {}, "Timer", 1).detail == "exit 1: boom"
