"""Fair baselines (issue 15, item 5): encodings that do the same work get the same engineering.

RoPE and LRPE-orthogonal are one rotation up to a permutation of coordinates, and LRPE-permutation is a gather:
none of them should hold more memory than another in a linear-attention forward. Each peak is measured with
the suite's own measurement (``bench.measure.memory.measure_peak_bytes`` under the memory regime) in a fresh
process, so that no earlier allocation pattern changes the reading. Time is not pinned here (a shared machine
moves it); docs/fairness.md has the measured time and memory ratios and the commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N = 8192  # q, k, v of (1, 4, 8192, 64) float32: 8 MiB each, the features far above glibc's noise
TOLERANCE = 1.10

_CHILD = """
import json, sys, torch
from bench.config import BenchConfig
from bench.measure.allocator import memory_regime
from bench.measure.memory import measure_peak_bytes
from bench.registry import get_variant
from bench.sweep.executor import make_inputs, make_workload
torch.set_num_threads(1)
config = BenchConfig(variant=sys.argv[1], n=int(sys.argv[2]), d=64)
core = get_variant(config.variant).build(config)
work = make_workload(core, *make_inputs(config, 0), config.pass_)
work()
with memory_regime():
    print(json.dumps(measure_peak_bytes(work, "cpu")))
"""
# A fresh process's reading is either the variant's footprint or that plus about one q-sized block (40.0 or
# 47-55 MiB for the same variant at N = 8192, between fresh processes on the 2-core machine; the cause is not
# found). A reading never falls below the footprint, so the smallest of several processes is the measurement:
# a variant that really holds more fails every attempt.
ATTEMPTS = 5


def _peak_bytes(variant: str) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _CHILD, variant, str(N)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def orthogonal_peak() -> int:
    return min(_peak_bytes("linear-lrpe-orthogonal@torch-chunked") for _ in range(3))


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peaks need /proc/self/clear_refs")
@pytest.mark.parametrize("variant", ["linear-rope@torch-chunked", "linear-lrpe-permutation@torch-chunked"])
def test_forward_peak_memory_matches_lrpe_orthogonal(orthogonal_peak: int, variant: str) -> None:
    """Before the fixes: RoPE's half layout made temporaries and the permutation a second full-size copy of
    q and k, 1.40x LRPE-orthogonal's peak at N = 64k (measured); now each rotates or gathers in place."""
    readings = []
    for _ in range(ATTEMPTS):  # until one reading is within the tolerance
        readings.append(_peak_bytes(variant))
        if readings[-1] / orthogonal_peak <= TOLERANCE:
            break
    peak = min(readings)
    ratio = peak / orthogonal_peak
    assert ratio <= TOLERANCE, (f"{variant} forward peak {peak / 2**20:.1f} MiB is {ratio:.2f}x "
                                f"LRPE-orthogonal's {orthogonal_peak / 2**20:.1f} MiB at N = {N}; allowed "
                                f"{TOLERANCE}x")
