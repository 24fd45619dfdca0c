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


def test_only_tests_marked_needs_gpu_count_as_skipped_for_lack_of_a_gpu():
    # On a GPU the tests that skip *because* CUDA is present mention CUDA in their message too; only the
    # marker says a test needs a GPU.
    import xml.etree.ElementTree as ET

    from bench.selfcheck import junit_node_id, summarise_junit

    report = ET.fromstring(
        '<testsuites><testsuite>'
        '<testcase classname="tests.test_timing" name="test_cuda_event_clock_agrees_with_do_bench">'
        '<skipped message="needs a CUDA GPU (torch.cuda.is_available() is False)"/></testcase>'
        '<testcase classname="tests.test_fla" name="test_no_cuda_is_unavailable">'
        '<skipped message="checks a machine without CUDA"/></testcase>'
        '<testcase classname="tests.test_telemetry" name="test_fake_nvml[a]">'
        '<skipped message="the fake NVML stands in for a missing GPU"/></testcase>'
        '<testcase classname="tests.test_timing" name="test_warmup"/>'
        '<testcase classname="tests.test_timing" name="test_broken"><failure message="x"/></testcase>'
        '</testsuite></testsuites>')
    gpu_ids = {"tests/test_timing.py::test_cuda_event_clock_agrees_with_do_bench"}
    assert summarise_junit(report, gpu_ids) == (1, ["tests/test_timing.py::test_broken"], 1, 2)
    case = ET.fromstring('<testcase classname="tests.test_timing.TestGroup" name="test_y[1-2]"/>')
    assert junit_node_id(case) == "tests/test_timing.py::TestGroup::test_y[1-2]"


def test_needs_gpu_tests_are_collected_by_their_marker():
    from bench.selfcheck import needs_gpu_ids

    ids = needs_gpu_ids(("tests/test_timing.py",))
    assert "tests/test_timing.py::test_cuda_event_clock_agrees_with_do_bench" in ids
    assert not any("test_time_cpu" in i for i in ids)


def test_each_check_is_printed_and_tabled_as_soon_as_its_group_finishes(tmp_path, monkeypatch, capsys):
    # A run stopped by a time limit must keep the checks that finished before it.
    import argparse

    from bench import selfcheck

    table_file = tmp_path / "table.txt"

    def second_group(device):
        assert "first-check" in capsys.readouterr().out  # printed (and flushed) before the next group runs
        assert "first-check" in table_file.read_text()
        raise TimeoutError("stopped by the device's time limit")

    monkeypatch.setattr(selfcheck, "GROUPS", {"a": lambda device: [Check("a", "first-check", "pass", "ok")],
                                              "b": second_group})
    assert selfcheck.run(argparse.Namespace(only=None, table_file=str(table_file))) == 1
    text = table_file.read_text()
    assert "first-check" in text and "TimeoutError" in text
