"""CPU timings must not depend on what ran before them (issue 11).

The same config, ``linear@torch-chunked`` at N = 16384 (fp32, B = 1, H = 4, D = 64, causal forward), is run
through the real ``Sweep`` / ``Executor`` in one fresh process three ways: alone (the first config of the
process), after a memory-heavy config with its memory pass (LRPE-unitary, ~2x the memory), and inside a
multi-variant run (RoPE at 4k and 16k, then the config's own 4k). Before the allocator regime the first of
these took ~20k minor page faults per call (glibc's untouched dynamic thresholds) and the others ~2k (the
thresholds a memory pass left behind): 1.5-1.8x apart here.

The machine running the tests is shared, so the comparison is made robust without being loosened: the
process runs with one torch thread and the config's calls are timed by the executor's timer hook (the one
the pytest front end uses) with the calling thread's CPU time, which contains the page faults' kernel time
but not the waits for other processes' work; each config's calls are grouped by three and the least group
median is compared (a minimum of medians: a burst of load can only slow a group down). A burst that lasts a
whole config can still slow one scenario down, so when the three disagree the fresh process is run again (at
most ``ATTEMPTS`` times) and each scenario keeps its least value over the attempts. Without the regime the
config alone in a fresh process is slower in every attempt, so no number of attempts lets that pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.10
ATTEMPTS = 3

SCRIPT = r"""
import json, statistics, sys, tempfile, time
from dataclasses import replace
import torch
from bench.measure.timing import Timing
from bench.sweep.presets import Limits, load_spec
from bench.sweep.session import Sweep

torch.set_num_threads(1)
TARGET = ("linear@torch-chunked", 16384)
CALLS, GROUP = 15, 3
SCENARIOS = {
    "alone": (["linear@torch-chunked"], [16384]),
    "after a memory-heavy config": (["linear-lrpe-unitary@torch-chunked", "linear@torch-chunked"], [16384]),
    "in a multi-variant run": (["linear-rope@torch-chunked", "linear@torch-chunked"], [4096, 16384]),
}
samples = []

def thread_time_timer(fn, seconds_per_call):
    times = []
    for _ in range(CALLS):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    samples.append(times)
    return Timing.from_samples(times)

base = load_spec(sys.argv[1])
results = tempfile.mkdtemp()
out = {}
for index, (name, (variants, ns)) in enumerate(SCENARIOS.items()):
    spec = replace(base, variants=tuple(variants), n=tuple(ns), d=(64,), heads=4,
                   limits=Limits(config_seconds=120, total_seconds=600))
    sweep = Sweep(spec, results_dir=results, run_id=f"history-{index}", measure_ceilings_now=False)
    for planned in sweep.pending():
        target = (planned.config.variant, planned.config.n) == TARGET
        row = sweep.run_one(planned, timer=thread_time_timer if target else None)
        assert row["status"] == "ok", row
        if target:
            times = samples[-1]
            groups = [statistics.median(times[i:i + GROUP]) for i in range(0, CALLS, GROUP)]
            out[name] = {"min_group_median_ms": 1e3 * min(groups), "median_ms": row["time_median_ms"],
                         "faults_per_call": row.get("minor_faults_per_call"),
                         "alloc_regime": row.get("alloc_regime")}
print(json.dumps(out))
"""


def run_scenarios(fresh_python, tmp_path: Path) -> dict:
    """One fresh process running the three scenarios; their measurements by scenario name."""
    stdout = fresh_python(SCRIPT, REPO / "tests" / "data" / "tiny.toml", cwd=tmp_path, timeout=300)
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_same_config_times_alike_alone_after_a_heavy_config_and_in_a_multi_variant_run(fresh_python, tmp_path):
    attempts: list[dict] = []
    best: dict[str, float] = {}
    for _ in range(ATTEMPTS):
        measured = run_scenarios(fresh_python, tmp_path)
        attempts.append(measured)
        for name, m in measured.items():
            best[name] = min(best.get(name, float("inf")), m["min_group_median_ms"])
        assert len(best) == 3
        if max(best.values()) <= (1 + TOLERANCE) * min(best.values()):
            break
    assert max(best.values()) <= (1 + TOLERANCE) * min(best.values()), json.dumps(attempts, indent=1)
    for measured in attempts:  # each row says which regime it was timed under and how many faults it took
        assert all(m["alloc_regime"] and m["faults_per_call"] is not None for m in measured.values()), measured
