"""The CI gate, through its real path (preset -> run_gate: interleaved CPU-time calls and forked memory
passes -> gate-run.json -> measure -> budgets -> compare), catches what it is for on a small two-variant
preset, and lets clean runs pass: a 1.25x slowdown of one variant and +10% peak memory in one config (both
injected as the sensitivity check injects them: ``bench.gate.sensitivity``), 2x the work, an extra N x N
float32 tensor, a change of complexity from N to N^2.

The probe is a test-only variant registered in the real registry for this module: the reference's own
chunked core plus an injected change.
"""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from torch import nn

from baselines.softmax import SoftmaxAttention
from bench.cli import main
from bench.gate import Budgets, ToleranceRules, gate, update
from bench.gate import run as gate_run
from bench.gate.sensitivity import injection
from bench.registry import all_variants, get_variant
from bench.sweep.presets import load_spec
from bench.variant import AttentionSpec, Variant

REFERENCE = "linear@torch-chunked"
PROBE = "linear-probe@torch-chunked"
LENGTHS = (1024, 2048, 4096)
# Peaks are counted by PyTorch's allocator (bench.measure.memory.allocated_peak_bytes): exact in any process,
# so the default tolerance rules hold and +10% in one config must fail. (Resident-set peaks forked from this
# long-lived pytest process once moved by one q-sized block, 5.00 -> 6.00 MiB at 1k, and needed a 30% floor.)
GROWTH = 0.10
GROWN_N = 4096
INJECTION = {"mode": "none"}
"""What the probe adds to the reference's work; read when a probe core is built."""

PRESET = f"""
description = "gate test: the chunked reference and a probe with an injected change"
device = "cpu"
variants = ["{REFERENCE}", "{PROBE}"]
n = {list(LENGTHS)}
d = [64]
heads = 4
batch = 1
dtype = ["float32"]
causal = [true]
pass = ["fwd"]
seed = 0

[timing]
warmup_min_calls = 2
warmup_min_s = 0.0
"""


class Probe(nn.Module):
    """The reference's core, plus injected changes (``mode`` names them, joined by +). twice: the attention
    computed twice (2x the work);
    alloc: an extra N x N float32 tensor, written, alive across the core's call; quadratic: a causal softmax
    attention over the same inputs."""

    def __init__(self, spec: AttentionSpec, mode: str) -> None:
        super().__init__()
        self.core = get_variant(REFERENCE).builder(spec)
        self.mode = mode
        self.softmax = SoftmaxAttention(causal=True)

    def forward(self, q, k, v, offset=0):
        n = q.shape[-2]
        extra = torch.ones(n, n, dtype=torch.float32) if "alloc" in self.mode else None  # alive across the core
        out = self.core(q, k, v, offset)
        if "twice" in self.mode:
            out = self.core(q, k, v, offset)
        elif extra is not None:
            out = out + extra[-1, -1]
        elif self.mode == "quadratic":
            out = out + self.softmax(q, k, v)
        return out


@pytest.fixture(scope="module")
def budgets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    (root / "gate-test.toml").write_text(PRESET)
    with pytest.MonkeyPatch.context() as patch:
        reference = get_variant(REFERENCE)
        probe = Variant(name=PROBE, family="linear", pe="none", backend="torch-chunked",
                        builder=lambda spec: Probe(spec, INJECTION["mode"]), time_complexity="linear",
                        memory_complexity="linear", chunk_size=reference.chunk_size,
                        description="test-only: the chunked reference plus an injected change")
        patch.setitem(all_variants(), PROBE, probe)
        path = root / "budgets.json"
        update(path, preset=str(root / "gate-test.toml"), runs=3, cycles=30, results_dir=root / "results",
               rules=ToleranceRules())
        yield path


RUNS: dict[tuple[str, int], object] = {}


def run_gate(budgets, mode: str, index: int = 0):
    """The ``index``-th gate run with ``mode`` injected: the probe's modes, or the sensitivity injections
    (made once per module: tests share them)."""
    key = (mode, index)
    if key not in RUNS:
        # One run carries both targets (they act in different passes), as bench.gate.sensitivity's runs do.
        wrap = {"slower+grown": injection(PROBE, 1.25, grow=(PROBE, GROWN_N),
                                          extra_bytes=int(GROWTH * _peak(budgets, PROBE, GROWN_N)))}
        INJECTION["mode"] = "none" if mode in wrap else mode
        try:
            kwargs = {"wrap": wrap[mode]} if mode in wrap else {}
            RUNS[key] = gate(budgets, results_dir=budgets.parent / "results", **kwargs)
        finally:
            INJECTION["mode"] = "none"
    return RUNS[key]


def _peak(path, variant: str, n: int) -> float:
    return next(e.value for e in Budgets.load(path).entries["memory"] if e.key["variant"] == variant
                and e.key["n"] == n)


def failed(result, check: str) -> set[tuple[str, int | None]]:
    table = result.table
    rows = table[(table["check"] == check) & ~table["ok"].astype(bool)]
    return {(r["variant"], None if pd.isna(r["n"]) else int(r["n"])) for r in rows.to_dict("records")}


def test_budgets_hold_every_quantity_with_tolerances_that_can_catch_the_targets(budgets):
    data = Budgets.load(budgets)
    assert {(e.key["variant"], e.key["n"]) for e in data.entries["ratio"]} == {
        (v, n) for v in (REFERENCE, PROBE) for n in LENGTHS}
    assert {e.key["variant"] for e in data.entries["shift"]} == {REFERENCE, PROBE}
    assert {e.key["variant"] for e in data.entries["slope"]} == {REFERENCE, PROBE}
    assert len(data.entries["memory"]) == 6
    assert all(e.spread == 0 for e in data.entries["memory"]), data.entries["memory"]  # counted, not sampled
    probe = [e for e in data.entries["ratio"] if e.key["variant"] == PROBE]
    assert all(0.8 < e.value < 1.25 for e in probe), probe  # the same work as the reference
    shift = next(e for e in data.entries["shift"] if e.key["variant"] == PROBE)
    assert shift.tolerance < 1.2, shift


def test_a_clean_run_passes(budgets):
    result = run_gate(budgets, "none")
    assert result.passed, result.text


def test_a_25_percent_slower_probe_and_10_percent_more_peak_in_one_config_fail_and_are_named(budgets):
    result = run_gate(budgets, "slower+grown")
    assert not result.passed
    assert (PROBE, None) in failed(result, "shift"), result.text
    moved = result.text.split("moved: ", 1)[1].splitlines()[0]
    assert PROBE in moved.split(", "), result.text
    assert failed(result, "memory") == {(PROBE, GROWN_N)}, result.text
    assert not {f[0] for check in ("ratio", "shift", "slope") for f in failed(result, check)} - {PROBE}


def test_2x_work_an_n_by_n_tensor_and_n_squared_work_fail_their_checks(budgets):
    both = run_gate(budgets, "twice+alloc")
    assert failed(both, "ratio") == {(PROBE, n) for n in LENGTHS}, both.text
    assert failed(both, "memory") == {(PROBE, n) for n in LENGTHS}, both.text
    quadratic = run_gate(budgets, "quadratic")
    assert (PROBE, None) in failed(quadratic, "slope"), quadratic.text


def test_command_line_reads_a_run_prints_what_moved_and_exits_1(budgets, capsys):
    slow = run_gate(budgets, "twice+alloc")
    assert main(["gate", "--budgets", str(budgets), "--run", str(slow.run_dir)]) == 1
    out = capsys.readouterr().out
    assert "gate FAILED" in out and PROBE in out
    assert f"python -m bench gate --update --budgets {budgets}" in out
    clean = run_gate(budgets, "none")
    assert main(["gate", "--budgets", str(budgets), "--run", str(clean.run_dir)]) == 0


def test_each_cycle_opens_with_two_reference_calls_and_pairs_every_workload_with_its_neighbours(tmp_path):
    """R R Y R A R per cycle: the yardstick's earlier reference call follows a reference call, never the previous
    cycle's last variant (whose cache traffic once moved the reference's own check past its band)."""
    other = "linear-lrpe-orthogonal@torch-chunked"
    spec = replace(load_spec("gate"), variants=(REFERENCE, other), n=(64, 128))
    calls: list[tuple[int, str]] = []

    def logged(config, fn, phase):
        def call():
            calls.append((config.n, config.variant))
            return fn()
        return call if phase == "time" else fn

    cycles = 3
    run = gate_run.run_gate(spec, tmp_path, reference=REFERENCE, cycles=cycles, wrap=logged)
    cycle = [REFERENCE, REFERENCE, gate_run.YARDSTICK, REFERENCE, other, REFERENCE]
    for n in (64, 128):
        timed = [v for m, v in calls if m == n][-len(cycle) * cycles:]
        assert timed == cycle * cycles
        entries = {e.variant: e for e in run.configs if e.n == n}
        assert len(entries[REFERENCE].times_s) == 3 * cycles  # every reference call but each cycle's first
        for variant in (gate_run.YARDSTICK, other):
            assert len(entries[variant].times_s) == len(entries[variant].ref_times_s) == cycles
