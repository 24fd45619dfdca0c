"""The gate's comparison on synthetic gate runs (no measuring, fast): budgets made from several noisy clean
runs pass a new clean run, and fail a run where one variant is 1.25x slower (naming it), one config holds
10% more memory, the reference is 1.25x slower (naming the reference), a config errored, a budget is
missing or unbudgeted, or the run was made differently. Noise is lognormal with the spread measured on this
project's machine (per-cycle ratios: IQR 5-18% of the median; docs/gates.md)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.gate import Budgets, ToleranceRules, gate, update
from bench.gate.budget import make_entries
from bench.gate.compare import compare, moved_variants
from bench.gate.run import YARDSTICK, ConfigRun, GateRun
from bench.gate.stats import measure

REFERENCE = "ref@torch"
VARIANTS = {REFERENCE: 1.0, "a@torch": 1.5, "b@torch": 3.0, "c@torch": 0.8}
"""Per-call cost relative to the reference (the yardstick is 0.3)."""
LENGTHS = (512, 1024, 2048)
CYCLES = 30
PEAK_MIB = {REFERENCE: 8.0, "a@torch": 12.0, "b@torch": 48.0, "c@torch": 10.0}


def synthetic_run(seed: int, *, slow: dict[str, float] | None = None, grow: dict[tuple[str, int], float] | None = None,
                  noise: float = 0.08, machine: dict[int, float] | None = None) -> GateRun:
    """A gate run as ``run_gate`` stores it: times linear in N with per-call lognormal noise (sigma ``noise``)
    and a per-run drift of 1% per variant; peaks within 0.5% between runs. ``slow``: variant -> time factor;
    ``grow``: (variant, N) -> peak factor; ``machine``: N -> factor on every call at that N (a machine that
    was slower while that N's cycles ran)."""
    rng = np.random.default_rng(seed)
    slow, grow, machine = slow or {}, grow or {}, machine or {}
    preset = {"name": "synthetic", "variants": list(VARIANTS), "n": list(LENGTHS)}
    run = GateRun(preset=preset, reference=REFERENCE, cycles=CYCLES, threads=1, peak_readings=5)
    for n in LENGTHS:
        base = 1e-3 * n / 1024 * machine.get(n, 1.0)
        ref_calls = base * slow.get(REFERENCE, 1.0) * np.exp(rng.normal(0, noise, 4 * CYCLES + 1))
        entries = {}
        for k, variant in enumerate([YARDSTICK, *[v for v in VARIANTS if v != REFERENCE]]):
            cost = 0.3 if variant == YARDSTICK else VARIANTS[variant] * slow.get(variant, 1.0)
            drift = np.exp(rng.normal(0, 0.01))
            times = base * cost * drift * np.exp(rng.normal(0, noise, CYCLES))
            before = ref_calls[k * CYCLES:(k + 1) * CYCLES]
            entries[variant] = (times, before, ref_calls[k * CYCLES + 1:(k + 1) * CYCLES + 1])
        ref = ConfigRun(REFERENCE, n, 64, "fwd", "float32", True, 4, 1, times_s=ref_calls.tolist(),
                        peaks_bytes=_peaks(rng, REFERENCE, n, grow))
        run.configs.append(ref)
        for variant, (times, before, after) in entries.items():
            run.configs.append(ConfigRun(variant, n, 64, "fwd", "float32", True, 4, 1, times_s=times.tolist(),
                                         ref_times_s=((before + after) / 2).tolist(),
                                         peaks_bytes=[] if variant == YARDSTICK else _peaks(rng, variant, n, grow)))
    return run


def _peaks(rng, variant: str, n: int, grow: dict) -> list[int]:
    peak = PEAK_MIB[variant] * 2**20 * n / 1024 * grow.get((variant, n), 1.0)
    return [int(peak * (1 + abs(rng.normal(0, 0.003)))) for _ in range(5)]


@pytest.fixture(scope="module")
def budgets() -> Budgets:
    measured = [measure(synthetic_run(seed)) for seed in range(5)]
    return Budgets(preset="synthetic", reference=REFERENCE, cycles=CYCLES, threads=1, peak_readings=5,
                   rules=ToleranceRules(), spec=synthetic_run(0).preset,
                   entries=make_entries(measured, ToleranceRules()))


def failed(table, check: str) -> set:
    rows = table[(table["check"] == check) & ~table["ok"].astype(bool)]
    return {(r["variant"], None if pd.isna(r["n"]) else int(r["n"])) for r in rows.to_dict("records")}


def test_clean_runs_pass(budgets):
    for seed in range(100, 120):
        run = synthetic_run(seed)
        table = compare(budgets, measure(run), run)
        assert table["ok"].all(), table[~table["ok"]].to_string()


def test_a_machine_slower_while_one_n_ran_moves_no_check(budgets):
    """Each N is timed in its own block of cycles, so a slower machine during one block moves every call time at
    that N; ratios and the slopes fitted to them cancel it (slopes of call times moved by 0.19 here)."""
    run = synthetic_run(12, machine={LENGTHS[-1]: 1.3})
    table = compare(budgets, measure(run), run)
    assert table["ok"].all(), table[~table["ok"]].to_string()


def test_n_squared_work_in_a_variant_fails_its_slope_only_there(budgets):
    run = synthetic_run(13)
    for entry in run.configs:
        if entry.variant == "a@torch":
            entry.times_s = [t * entry.n / LENGTHS[0] for t in entry.times_s]
    table = compare(budgets, measure(run), run)
    assert failed(table, "slope") == {("a@torch", None)}


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != REFERENCE])
def test_a_25_percent_slower_variant_fails_and_is_named(budgets, variant):
    run = synthetic_run(7, slow={variant: 1.25})
    table = compare(budgets, measure(run), run)
    assert failed(table, "ratio") == {(variant, n) for n in LENGTHS}
    assert failed(table, "shift") == {(variant, None)}
    assert moved_variants(table, REFERENCE) == [variant]


def test_a_25_percent_slower_reference_fails_and_is_named_first(budgets):
    run = synthetic_run(8, slow={REFERENCE: 1.25})
    table = compare(budgets, measure(run), run)
    assert {(REFERENCE, n) for n in LENGTHS} <= failed(table, "ratio")
    assert moved_variants(table, REFERENCE)[0] == REFERENCE


def test_ten_percent_more_peak_memory_in_one_config_fails_it(budgets):
    run = synthetic_run(9, grow={("b@torch", 1024): 1.10})
    table = compare(budgets, measure(run), run)
    assert failed(table, "memory") == {("b@torch", 1024)}
    assert failed(table, "ratio") == set()


def test_tolerances_come_from_the_spread_with_a_floor(budgets):
    rules = ToleranceRules()
    for check, floor in (("ratio", rules.ratio_floor), ("shift", rules.shift_floor)):
        for entry in budgets.entries[check]:
            assert entry.tolerance == pytest.approx(max(floor, entry.spread ** rules.margin))
            assert entry.tolerance < 1.25  # the noise of these runs allows catching a 25% slowdown
    for entry in budgets.entries["memory"]:
        assert entry.tolerance >= rules.memory_floor and entry.tolerance < 0.10
    with pytest.raises(ValueError, match=r"ratio_floor=1.0\b"):
        ToleranceRules(ratio_floor=1.0)


def test_errors_missing_and_unbudgeted_quantities_and_another_run_shape_fail(budgets):
    run = synthetic_run(11)
    broken = next(e for e in run.configs if e.variant == "a@torch" and e.n == 1024)
    broken.status, broken.reason, broken.times_s, broken.ref_times_s = "error", "RuntimeError: injected", [], []
    run.cycles = CYCLES + 1
    fewer = Budgets(**{**budgets.__dict__, "entries": {**budgets.entries, "memory": [
        e for e in budgets.entries["memory"] if e.key["variant"] != "c@torch"]}})
    table = compare(fewer, measure(run), run)
    assert ("a@torch", 1024) in failed(table, "status")
    assert ("a@torch", 1024) in failed(table, "ratio")  # budgeted, not measured
    assert {("c@torch", n) for n in LENGTHS} <= failed(table, "memory")  # measured, no budget
    assert "cycles" in set(table.loc[~table["ok"], "check"])


def test_budget_file_round_trips_and_refuses_what_it_cannot_read(budgets, tmp_path):
    path = budgets.save(tmp_path / "b.json")
    again = Budgets.load(path)
    assert again.entries == budgets.entries and again.rules == budgets.rules
    with pytest.raises(ValueError, match="no budget file"):
        Budgets.load(tmp_path / "missing.json")
    data = json.loads(path.read_text())
    del data["cycles"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lacks \['cycles'\]"):
        Budgets.load(tmp_path / "old.json")
    with pytest.raises(ValueError, match="cycles >= 3"):
        Budgets(**{**budgets.__dict__, "cycles": 1})


def test_update_and_command_line_on_stored_runs(tmp_path, capsys):
    dirs = []
    for seed in range(4):
        synthetic_run(seed).save(tmp_path / f"run{seed}")
        dirs.append(tmp_path / f"run{seed}")
    path = tmp_path / "budgets.json"
    budgets, text = update(path, dirs, preset="synthetic", cycles=CYCLES)
    assert "budgets from 4 gate run(s)" in text and budgets.cycles == CYCLES
    synthetic_run(50).save(tmp_path / "clean")
    synthetic_run(51, slow={"c@torch": 1.25}).save(tmp_path / "slow")
    assert gate(path, tmp_path / "clean").passed
    assert main(["gate", "--budgets", str(path), "--run", str(tmp_path / "clean")]) == 0
    assert main(["gate", "--budgets", str(path), "--run", str(tmp_path / "slow")]) == 1
    out = capsys.readouterr().out
    assert "moved: c@torch" in out and f"python -m bench gate --update --budgets {path}" in out
    assert main(["gate", "--budgets", str(path), "--run", str(tmp_path / "clean"), "--cycles", "5"]) == 2


def test_a_partial_update_rebudgets_the_named_variant_and_keeps_every_other_entry(tmp_path):
    """An intended change to one variant (c 1.25x slower) is budgeted from new runs with ``--variants``:
    the next run with the change passes, every other entry is the old one to the byte, and the other
    variants are gated as before (a 1.25x slower a still fails, naming a)."""
    for seed in range(4):
        synthetic_run(seed).save(tmp_path / f"run{seed}")
        synthetic_run(10 + seed, slow={"c@torch": 1.25}).save(tmp_path / f"changed{seed}")
    path = tmp_path / "budgets.json"
    update(path, [tmp_path / f"run{seed}" for seed in range(4)], preset="synthetic", cycles=CYCLES)
    before = Budgets.load(path)
    synthetic_run(50, slow={"c@torch": 1.25}).save(tmp_path / "next")
    assert not gate(path, tmp_path / "next").passed
    assert main(["gate", "--update", "--budgets", str(path), "--variants", "c@torch",
                 *[a for seed in range(4) for a in ("--run", str(tmp_path / f"changed{seed}"))]]) == 0
    after = Budgets.load(path)
    for check, entries in after.entries.items():
        others = [e for e in entries if e.key["variant"] != "c@torch"]
        assert others == [e for e in before.entries[check] if e.key["variant"] != "c@torch"]
    c_ratio = [e.value for e in after.entries["ratio"] if e.key["variant"] == "c@torch"]
    c_old = [e.value for e in before.entries["ratio"] if e.key["variant"] == "c@torch"]
    assert len(c_ratio) == len(LENGTHS) and all(1.15 < a / b < 1.35 for a, b in zip(c_ratio, c_old, strict=True))
    assert after.measured_on["partial_updates"][0]["variants"] == ["c@torch"]
    assert gate(path, tmp_path / "next").passed
    synthetic_run(51, slow={"c@torch": 1.25, "a@torch": 1.25}).save(tmp_path / "a_slow")
    result = gate(path, tmp_path / "a_slow")
    assert not result.passed and set(result.table.loc[~result.table["ok"].astype(bool), "variant"]) == {"a@torch"}
    for variants, why in ((["ref@torch"], "may not name the reference"), (["z@torch"], "have no budget entries")):
        with pytest.raises(ValueError, match=why):
            update(path, [tmp_path / "changed0"], variants=variants)
    with pytest.raises(ValueError, match="there is none at"):
        update(tmp_path / "none.json", [tmp_path / "changed0"], variants=["c@torch"])
    with pytest.raises(ValueError, match="keeps the file's tolerance rules"):
        update(path, [tmp_path / "changed0"], variants=["c@torch"], rules=ToleranceRules(margin=3.0))


def test_update_refuses_runs_that_did_not_finish_clean_or_lack_the_reference(tmp_path):
    run = synthetic_run(1)
    run.configs[3].status, run.configs[3].reason = "oom", "out of memory"
    run.save(tmp_path / "bad")
    with pytest.raises(ValueError, match="configs not ok"):
        update(tmp_path / "b.json", [tmp_path / "bad"], cycles=CYCLES)
    lone = synthetic_run(2)
    lone.configs = [c for c in lone.configs if c.variant in (REFERENCE, YARDSTICK)]
    lone.save(tmp_path / "lone")
    with pytest.raises(ValueError, match="has no time ratios"):
        update(tmp_path / "b.json", [tmp_path / "lone"], cycles=CYCLES)
    assert not (tmp_path / "b.json").exists()
    synthetic_run(3).save(tmp_path / "ok")
    update(tmp_path / "ok.json", [tmp_path / "ok"], cycles=CYCLES)
    with pytest.raises(ValueError, match="is not a gate run"):
        gate(tmp_path / "ok.json", tmp_path)
