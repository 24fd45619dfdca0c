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
