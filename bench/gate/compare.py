"""Comparing a gate run's measurements with the budgets: one row per check, plain data in, a table out."""

from __future__ import annotations

import math

import pandas as pd

from bench.gate.budget import Budgets
from bench.gate.run import GateRun
from bench.gate.stats import CHECKS, deviation, key_columns, within

COLUMNS = ["check", "variant", "pass", "d", "n", "budget", "measured", "change", "allowed", "ok"]


def _where(key: dict) -> dict:
    return {"variant": key["variant"], "pass": key["pass"], "d": key["d"], "n": key.get("n")}


def _fmt(check: str, value: float) -> str:
    return f"{value / 2**20:.2f} MiB" if check == "memory" else f"{value:.3f}"


def _band(check: str, tolerance: float) -> str:
    if check in ("ratio", "shift"):
        return f"x{1 / tolerance:.3f}..x{tolerance:.3f}"
    if check == "slope":
        return f"+-{tolerance:.3f}"
    return f"+-{tolerance:.1%}"


def _change(check: str, value: float, budget: float) -> str:
    if check == "slope":
        return f"{value - budget:+.3f}"
    if check == "memory":
        return f"{(value - budget) / 2**20:+.2f} MiB ({(value / budget - 1) if budget else math.inf:+.1%})"
    return f"x{value / budget:.3f}"


def compare(budgets: Budgets, measured: dict[str, pd.DataFrame], run: GateRun) -> pd.DataFrame:
    """Columns ``COLUMNS``; ``change`` is measured/budget (ratios), measured - budget (slopes, memory), and
    ``allowed`` the band it had to stay in. Also failing: a config not ok, a budget without a measurement, a
    measurement without a budget, a run of another preset, reference, cycle count or thread count."""
    rows: list[dict] = []
    for name, want, have in (("preset", budgets.spec, run.preset), ("reference", budgets.reference, run.reference),
                             ("cycles", budgets.cycles, run.cycles), ("threads", budgets.threads, run.threads)):
        if want != have:
            shown = (f"changed: {sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))}"
                     if isinstance(want, dict) else str(have))
            rows.append({"check": name, "variant": "", "budget": "as budgeted" if isinstance(want, dict) else str(want),
                         "measured": shown, "change": "", "allowed": "the same", "ok": False})
    for entry in run.configs:
        if entry.status != "ok":
            rows.append({"check": "status", "variant": entry.variant, "pass": entry.pass_, "d": entry.d,
                         "n": entry.n, "budget": "ok", "measured": f"{entry.status}: {entry.reason}"[:160],
                         "change": "", "allowed": "ok", "ok": False})
    for check in CHECKS:
        columns = list(key_columns(check))
        have = {tuple(r[:-1]): float(r[-1]) for r in measured[check][[*columns, "value"]].itertuples(index=False)}
        seen = set()
        for entry in budgets.entries.get(check, []):
            key = budgets.key_of(check, entry)
            seen.add(key)
            row = {"check": check, **_where(entry.key), "budget": _fmt(check, entry.value),
                   "allowed": _band(check, entry.tolerance)}
            value = have.get(key)
            if value is None or math.isnan(value):
                rows.append({**row, "measured": "missing", "change": "", "allowed": "a measurement", "ok": False})
                continue
            rows.append({**row, "measured": _fmt(check, value), "change": _change(check, value, entry.value),
                         "ok": within(check, value, entry.value, entry.tolerance)})
        for key in sorted(set(have) - seen, key=str):
            rows.append({"check": check, **_where(dict(zip(columns, key, strict=True))), "budget": "none",
                         "measured": _fmt(check, have[key]), "change": "", "allowed": "a budget", "ok": False})
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.astype({"d": "Int64", "n": "Int64"})  # slopes have no N: missing, not NaN as a float


def moved_variants(table: pd.DataFrame, reference: str | None = None) -> list[str]:
    """The variants with a failed check, those with the most failed checks first; the ``reference`` first when
    its own ratio (against the yardstick) failed, since every other ratio is taken over it."""
    failed = table[~table["ok"].astype(bool) & (table["variant"] != "")]
    named = failed["variant"].value_counts(sort=True).index.tolist()
    ref_moved = (failed["check"].isin(["ratio", "shift"]) & (failed["variant"] == reference)).any()
    if reference is not None and ref_moved:
        named = [reference] + [v for v in named if v != reference]
    return named


def margin_used(budgets: Budgets, measured: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per budget entry, the fraction of its tolerance the run used (1 = on the edge): how close a clean run
    came to failing, for docs/gates.md and ``--update``'s summary."""
    rows = []
    for check in CHECKS:
        columns = list(key_columns(check))
        have = {tuple(r[:-1]): float(r[-1]) for r in measured[check][[*columns, "value"]].itertuples(index=False)}
        for entry in budgets.entries.get(check, []):
            value = have.get(budgets.key_of(check, entry))
            if value is None:
                continue
            used = deviation(check, value, entry.value)
            factor = check in ("ratio", "shift")
            unit = math.log(used) / math.log(entry.tolerance) if factor else used / entry.tolerance
            rows.append({"check": check, **entry.key, "used": unit})
    return pd.DataFrame(rows)
