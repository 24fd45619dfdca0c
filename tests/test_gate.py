"""The CI gate catches what it is for: a 2x slowdown (time ratio), an extra N x N float32 tensor (memory), a
change of complexity from N to N^2 (slope), and lets clean runs pass.

Changes are injected through a test-only variant registered in the real registry for this module: a real
chunked linear attention core (the reference's own builder) plus the injected work, so every run goes
through the gate's real path (preset -> Sweep -> Executor -> store -> frame -> budgets -> comparison).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from baselines.softmax import SoftmaxAttention
from bench import gate
from bench.cli import main
from bench.record import make_row
from bench.registry import all_variants, get_variant
from bench.sweep.store import RunStore
from bench.variant import AttentionSpec, Variant

REFERENCE = "linear@torch-chunked"
PROBE = "linear-probe@torch-chunked"
INJECTION = {"mode": "none"}
"""What the probe adds to the reference's work; read when a probe core is built (once per config)."""

PRESET = f"""
description = "gate test: the chunked reference and a probe with an injected change"
device = "cpu"
variants = ["{REFERENCE}", "{PROBE}"]
n = [1024, 2048, 4096]
d = [16]
heads = 2
batch = 1
dtype = ["float32"]
causal = [true]
pass = ["fwd"]
seed = 0

[limits]
config_seconds = 60
total_seconds = 600

[timing]
warmup_min_calls = 1
warmup_min_s = 0.0
min_repeats = 5
max_repeats = 200
min_time_s = 0.02
max_time_s = 0.1
"""


class Probe(nn.Module):
    """The reference's core, plus one injected change.

    slow: the same attention computed twice (2x the work). alloc: an extra N x N float32 tensor, written so
    its pages are resident. quadratic: a causal softmax attention over the same inputs (N^2 work)."""

    def __init__(self, spec: AttentionSpec, mode: str) -> None:
        super().__init__()
        self.core = get_variant(REFERENCE).builder(spec)
        self.mode = mode
        self.softmax = SoftmaxAttention(causal=True)

    def forward(self, q, k, v, offset=0):
        out = self.core(q, k, v, offset)
        if self.mode == "slow":
            out = self.core(q, k, v, offset)
        elif self.mode == "alloc":
            n = q.shape[-2]
            extra = torch.ones(n, n, dtype=torch.float32)
            out = out + extra[-1, -1]
        elif self.mode == "quadratic":
            out = out + self.softmax(q, k, v)
        return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gate")
    (root / "gate-test.toml").write_text(PRESET)
    with pytest.MonkeyPatch.context() as patch:
        reference = get_variant(REFERENCE)
        probe = Variant(name=PROBE, family="linear", pe="none", backend="torch-chunked",
                        builder=lambda spec: Probe(spec, INJECTION["mode"]), time_complexity="linear",
                        memory_complexity="linear", chunk_size=reference.chunk_size,
                        description="test-only: the chunked reference plus an injected change")
        patch.setitem(all_variants(), PROBE, probe)
        yield root


@pytest.fixture(scope="module")
def budgets(workspace: Path) -> Path:
    """Budgets from one clean gate run, with the default tolerances (those committed)."""
    path = workspace / "budgets.json"
    gate.update(path, preset=str(workspace / "gate-test.toml"), results_dir=workspace / "results")
    return path


RUNS: dict[tuple[str, int], gate.GateResult] = {}


def run_gate(budgets: Path, mode: str, index: int = 0) -> gate.GateResult:
    """The ``index``-th gate run with ``mode`` injected (each made once per module: tests share them)."""
    key = (mode, index)
    if key not in RUNS:
        INJECTION["mode"] = mode
        try:
            RUNS[key] = gate.gate(budgets, results_dir=budgets.parent / "results")
        finally:
            INJECTION["mode"] = "none"
    return RUNS[key]


def failed(result: gate.GateResult, check: str) -> set[tuple[str, int | None]]:
    table = result.table
    rows = table[(table["check"] == check) & ~table["ok"].astype(bool)]
    return {(row["variant"], None if pd.isna(row["n"]) else int(row["n"])) for row in rows.to_dict("records")}


def test_budget_file_holds_every_quantity_and_the_default_tolerances(budgets):
    data = json.loads(budgets.read_text())
    assert data["tolerances"] == dataclasses.asdict(gate.Tolerances())
    assert data["threads"] == 1 and data["rounds"] == gate.DEFAULT_ROUNDS
    assert {(e["variant"], e["n"]) for e in data["ratio"]} == {(PROBE, n) for n in (1024, 2048, 4096)}
    assert {e["variant"] for e in data["slope"]} == {REFERENCE, PROBE}
    assert len(data["memory"]) == 6 and all(e["value"] >= 0 for e in data["memory"])
    probe_ratios = [e["value"] for e in data["ratio"]]
    assert all(0.7 < r < 1.4 for r in probe_ratios), probe_ratios  # the same work as the reference


def test_two_clean_runs_in_a_row_both_pass(budgets):
    for index in range(2):
        result = run_gate(budgets, "none", index)
        assert result.passed, result.text
        assert "gate passed" in result.text


def test_a_2x_slowdown_fails_the_time_gate(budgets):
    result = run_gate(budgets, "slow")
    assert not result.passed
    assert failed(result, "ratio") == {(PROBE, n) for n in (1024, 2048, 4096)}, result.text
    changes = result.table.loc[result.table["check"] == "ratio", "change"].str.removeprefix("x").astype(float)
    assert (changes > 1.6).all(), result.text  # the work doubled: about x2
    assert f"{gate.UPDATE_COMMAND} --budgets {budgets}" in result.text


def test_an_extra_n_by_n_float32_tensor_fails_the_memory_gate(budgets):
    result = run_gate(budgets, "alloc")
    assert not result.passed
    # 4 N^2 bytes: 4 MiB at N = 1024, over the 2 MiB floor and 25% of the chunked core's few MiB
    assert failed(result, "memory") == {(PROBE, n) for n in (1024, 2048, 4096)}, result.text
    rows = result.table[(result.table["check"] == "memory") & (result.table["variant"] == PROBE)]
    assert rows["change"].str.startswith("+").all()
    assert not failed(result, "memory") & {(REFERENCE, n) for n in (1024, 2048, 4096)}


def test_a_slope_change_from_n_to_n_squared_fails_the_slope_gate(budgets):
    result = run_gate(budgets, "quadratic")
    assert not result.passed
    assert (PROBE, None) in failed(result, "slope"), result.text
    slope = result.table[(result.table["check"] == "slope") & (result.table["variant"] == PROBE)].iloc[0]
    assert float(slope["measured"]) > 1.6 and float(slope["change"]) > 0.6, result.text


def test_command_line_reads_a_run_prints_what_moved_and_exits_1(budgets, capsys):
    slow = run_gate(budgets, "slow")
    assert main(["gate", "--budgets", str(budgets), "--run", str(slow.run_dir)]) == 1
    out = capsys.readouterr().out
    assert "gate FAILED" in out and PROBE in out and "ratio" in out
    assert f"python -m bench gate --update --budgets {budgets}" in out
    clean = run_gate(budgets, "none", 1)
    assert main(["gate", "--budgets", str(budgets), "--run", str(clean.run_dir)]) == 0
    assert "gate passed" in capsys.readouterr().out


def test_a_config_that_did_not_run_or_has_no_budget_fails(budgets, tmp_path):
    clean = run_gate(budgets, "none", 0)
    run = tmp_path / "run"
    shutil.copytree(clean.run_dir, run)
    rows_path = run / "round-2" / "rows.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    for row in rows:
        if row["variant"] == PROBE and row["n"] == 2048:
            row.update(status="error", reason="RuntimeError: injected", time_median_ms=None, time_min_ms=None)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = json.loads(budgets.read_text())
    data["memory"] = [e for e in data["memory"] if not (e["variant"] == REFERENCE and e["n"] == 4096)]
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps(data))
    result = gate.gate(fewer, run)
    assert not result.passed
    assert (PROBE, 2048) in failed(result, "status")
    assert (REFERENCE, 4096) in failed(result, "memory")  # measured, but no budget
    assert "error in round 2: RuntimeError: injected" in result.text


def test_bad_inputs_say_what_was_wrong(tmp_path):
    with pytest.raises(ValueError, match="no budget file"):
        gate.load_budgets(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="neither a run directory"):
        gate.read_rounds(tmp_path)
    with pytest.raises(ValueError, match="ratio > 1"):
        gate.Tolerances(ratio=0.9)
    with pytest.raises(ValueError, match="time statistic"):
        gate.measure([pd.DataFrame({"status": ["ok"]})], REFERENCE, "time_mean_ms")


def _stored_gate_run(root: Path, rounds: int = 3, skip: set[tuple[int, str, int]] = frozenset(),
                     errors: set[tuple[int, str, int]] = frozenset()) -> Path:
    """A gate run on disk (``round-<r>/rows.jsonl``) of rows made by ``bench.record.make_row``: the reference
    at 1 ms per 1k tokens, the probe at 1.5x that, peaks 4 MiB per 1k tokens. ``skip`` leaves out the
    (round, variant, N) rows, as a run killed in that round would; ``errors`` stores them as errors."""
    for r in range(1, rounds + 1):
        store = RunStore(root, f"round-{r}")
        for variant, factor in ((REFERENCE, 1.0), (PROBE, 1.5)):
            for n in (1024, 2048, 4096):
                if (r, variant, n) in skip:
                    continue
                ms = factor * n / 1024 * (1 + 0.01 * r)
                bad = (r, variant, n) in errors
                store.append(make_row("speed", {
                    "run_id": f"round-{r}", "key": f"{variant}|n{n}", "variant": variant, "family": "linear",
                    "pass": "fwd", "dtype": "float32", "causal": True, "d": 16, "n": n,
                    "status": "error" if bad else "ok", "reason": "RuntimeError: injected" if bad else "",
                    "time_min_ms": None if bad else ms, "time_median_ms": None if bad else ms,
                    "peak_mem_bytes": None if bad else 4.0 * 2**20 * n / 1024}))
    return root


def test_a_gate_run_with_a_round_missing_or_cut_short_fails(tmp_path):
    """A gate run killed (or still running) in its last rounds measured fewer rounds than the budgets were made
    with: that must fail, naming what is missing, instead of passing on what the first rounds measured."""
    path = tmp_path / "budgets.json"
    gate.update(path, [_stored_gate_run(tmp_path / "full")])
    assert gate.gate(path, tmp_path / "full").passed
    two_rounds = _stored_gate_run(tmp_path / "two", rounds=2)
    result = gate.gate(path, two_rounds)
    assert not result.passed and "rounds" in set(result.table["check"]), result.text
    cut = _stored_gate_run(tmp_path / "cut", skip={(3, PROBE, 4096), (3, REFERENCE, 4096)})
    result = gate.gate(path, cut)
    assert not result.passed, result.text
    assert failed(result, "status") == {(PROBE, 4096), (REFERENCE, 4096)}, result.text
    assert "no row in round 3" in result.text


def test_update_refuses_a_run_whose_configs_did_not_all_run(tmp_path):
    """Budgets written from a run where a config errored would lack that config: refuse and name it."""
    run = _stored_gate_run(tmp_path / "run", errors={(2, PROBE, 2048)})
    path = tmp_path / "budgets.json"
    with pytest.raises(ValueError, match=r"linear-probe@torch-chunked.*2048.*error in round 2"):
        gate.update(path, [run])
    assert not path.exists()


def test_update_refuses_a_run_without_the_reference(tmp_path):
    """Without the reference variant no ratio can be made: budgets without ratios would never gate time."""
    run = _stored_gate_run(tmp_path / "run", skip={(r, REFERENCE, n) for r in (1, 2, 3) for n in (1024, 2048, 4096)})
    path = tmp_path / "budgets.json"
    with pytest.raises(ValueError, match=rf"reference {REFERENCE} .*{PROBE}"):
        gate.update(path, [run])
    assert not path.exists()


def test_options_that_only_go_with_update_are_refused_without_it(tmp_path):
    """``--preset`` and ``--time-stat`` choose what --update makes budgets from; without --update the gate ran
    the budgets' own preset and statistic and said nothing, so ``gate --preset quick`` looked like a gate of
    the quick preset."""
    run = _stored_gate_run(tmp_path / "run")
    path = tmp_path / "budgets.json"
    gate.update(path, [run])
    assert main(["gate", "--budgets", str(path), "--run", str(run)]) == 0
    assert main(["gate", "--budgets", str(path), "--run", str(run), "--preset", "quick"]) == 2
    assert main(["gate", "--budgets", str(path), "--run", str(run), "--time-stat", "time_median_ms"]) == 2


def test_update_records_the_machine_the_runs_were_measured_on(tmp_path):
    """The budgets name the machine of the runs' own environment.json (a GPU gate's device included), not the
    machine --update happens to run on."""
    run = _stored_gate_run(tmp_path / "run")
    RunStore(run, "round-1").add_environment({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
                                              "cpu_model": "AMD EPYC", "usable_cores": 16,
                                              "versions": {"torch": "2.11.0+cu130"}})
    budgets, _ = gate.update(tmp_path / "budgets.json", [run])
    measured_on = budgets["measured_on"]
    assert measured_on["device_name"] == "NVIDIA H100 80GB HBM3" and measured_on["device"] == "cuda"
    assert measured_on["cpu_model"] == "AMD EPYC" and measured_on["torch"] == "2.11.0+cu130"
