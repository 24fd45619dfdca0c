"""The gate's text: the verdict of a comparison, and what a budget file can catch."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.gate.budget import UPDATE_COMMAND, Budgets
from bench.gate.compare import moved_variants
from bench.gate.stats import CHECKS

TARGETS = {"ratio": 1.25, "shift": 1.25, "slope": 0.5, "memory": 0.10}
"""What a gate must catch (issue 16): a 25% slower variant, +10% peak memory; a slope moved by 0.5."""


def report(table: pd.DataFrame, budgets_path: str | Path, run_dir: str | Path, reference: str | None = None) -> str:
    """Counts per check; on failure the variants that moved, the table of failed checks and the update
    command."""
    counts = table.groupby("check", sort=False)["ok"].agg(["sum", "count"])
    summary = ", ".join(f"{check} {int(c['sum'])}/{int(c['count'])}" for check, c in counts.iterrows())
    lines = [f"gate run {run_dir}: within budget: {summary}"]
    failed = table[~table["ok"].astype(bool)]
    if failed.empty:
        lines.append("gate passed")
        return "\n".join(lines)
    moved = moved_variants(table, reference)
    lines.append(f"gate FAILED: {len(failed)} of {len(table)} checks outside their budget"
                 + (f"; moved: {', '.join(moved)}" if moved else "") + "\n")
    with pd.option_context("display.max_colwidth", 160, "display.width", 250):
        lines.append(failed.drop(columns="ok").astype(object).fillna("").to_string(index=False))
    lines.append(f"\nIf the change is intended, rewrite the budgets: {UPDATE_COMMAND} --budgets {budgets_path}")
    return "\n".join(lines)


def budget_summary(budgets: Budgets, runs: int) -> str:
    """Per check: entries, the largest spread and tolerance, and the entries too wide to catch ``TARGETS``."""
    lines = [f"budgets from {runs} gate run(s); tolerance = max(floor, {budgets.rules.margin} x spread):"]
    for check in CHECKS:
        entries = budgets.entries.get(check, [])
        if not entries:
            continue
        widest = max(entries, key=lambda e: e.tolerance)
        blind = [e for e in entries if e.tolerance >= TARGETS[check]]
        where = " ".join(f"{k}={widest.key[k]}" for k in ("variant", "n") if k in widest.key)
        lines.append(f"  {check:6s} {len(entries)} entries; largest spread {max(e.spread for e in entries):.3f}, "
                     f"widest tolerance {widest.tolerance:.3f} ({where})")
        for e in blind:
            lines.append(f"    too wide to catch {TARGETS[check]}: {e.key['variant']} n={e.key.get('n')} "
                         f"(tolerance {e.tolerance:.3f}, spread {e.spread:.3f})")
    if runs < 3:
        lines.append("  fewer than 3 runs: the spread says little; give more (--runs or --run)")
    return "\n".join(lines)
