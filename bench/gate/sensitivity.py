"""What the gate catches, measured: gate runs with a known change injected into one variant.

``python -m bench.gate.sensitivity --stored DIR [DIR ...]`` edits stored clean gate runs instead (fast, and
every run a trial for every variant): each variant's call times x ``factor`` in turn (the reference's own
calls, and with them every other variant's reference times, when it is the reference), and each config's
peaks + ``memory`` x its budget in turn, and counts what the gate fails. The slowdown a live run injects is
busy CPU time after each call, so its measured call time is ``factor`` x the call's own: the same edit.

``python -m bench.gate.sensitivity [--budgets FILE] [--factor 1.25] [--memory 0.10] [--variants a,b]``
makes one gate run per variant of the budgets' preset (the reference and the yardstick's partner included):
that variant's every call spends ``factor`` times its CPU time (the extra as busy CPU time after the call:
same memory, same slope), and one config of the next variant holds ``memory`` x its budgeted peak more
(an extra tensor, written so its pages are resident, alive across the call, in the memory pass only). It
prints, per run, whether the gate failed, which variants it named first, and whether the slowed variant's
ratios and the grown config's peak failed. The numbers in docs/gates.md come from it.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from bench.config import BenchConfig
from bench.gate.budget import Budgets
from bench.gate.cli import DEFAULT_BUDGETS, gate
from bench.gate.compare import compare, moved_variants
from bench.gate.run import GateRun, Workload, Wrap
from bench.gate.stats import measure
from bench.measure.cpu_time import cpu_seconds, spend_cpu_seconds
from bench.sweep.store import DEFAULT_RESULTS_DIR


def slower(fn: Workload, factor: float) -> Workload:
    """``fn`` whose every call spends ``factor`` x its own CPU time (factor >= 1)."""
    if factor < 1:
        raise ValueError(f"a slowdown factor must be >= 1, got {factor}")

    def call() -> None:
        spend_cpu_seconds((factor - 1) * cpu_seconds(fn))
    return call


def holding(fn: Workload, extra_bytes: int) -> Workload:
    """``fn`` with ``extra_bytes`` more resident memory alive across each call."""
    if extra_bytes < 0:
        raise ValueError(f"extra bytes must be >= 0, got {extra_bytes}")

    def call() -> None:
        extra = torch.ones(extra_bytes, dtype=torch.uint8)  # written: its pages are resident
        fn()
        del extra
    return call


def injection(slow_variant: str | None = None, factor: float = 1.25,
              grow: tuple[str, int] | None = None, extra_bytes: int = 0) -> Wrap:
    """A gate ``wrap``: ``slow_variant``'s calls ``factor`` x slower when timed; the config ``grow``
    (variant, N) holding ``extra_bytes`` more in the memory pass."""
    def wrap(config: BenchConfig, fn: Workload, phase: str) -> Workload:
        if phase == "time" and config.variant == slow_variant:
            return slower(fn, factor)
        if phase == "memory" and grow == (config.variant, config.n):
            return holding(fn, extra_bytes)
        return fn
    return wrap


def edited(run: GateRun, slow_variant: str | None = None, factor: float = 1.0,
           grow: tuple[str, int] | None = None, extra_bytes: int = 0) -> GateRun:
    """A copy of a stored gate run as if ``slow_variant`` had been ``factor`` x slower and the config
    ``grow`` had held ``extra_bytes`` more."""
    out = copy.deepcopy(run)
    for entry in out.configs:
        if slow_variant == run.reference:  # every reference call: its own entry and the others' pairs
            if entry.variant == run.reference:
                entry.times_s = [t * factor for t in entry.times_s]
            else:
                entry.ref_times_s = [t * factor for t in entry.ref_times_s]
        elif entry.variant == slow_variant:
            entry.times_s = [t * factor for t in entry.times_s]
        if grow == (entry.variant, entry.n):
            entry.peaks_bytes = [p + extra_bytes for p in entry.peaks_bytes]
    return out


def stored_rates(budgets: Budgets, runs: list[GateRun], factor: float, memory: float) -> str:
    """False failures of the clean runs, and per variant / per config how often the edits were caught."""
    clean = [compare(budgets, measure(r), r) for r in runs]
    lines = [f"{len(runs)} stored clean runs: {sum(not t['ok'].all() for t in clean)} failed the gate"]
    for table in clean:
        bad = table[~table["ok"].astype(bool)]
        if not bad.empty:
            lines.append("  " + "; ".join(f"{r['check']} {r['variant']} n={r['n']} {r['change']} "
                                          f"(allowed {r['allowed']})" for r in bad.to_dict("records")))
    for variant in budgets.spec["variants"]:
        named = 0
        for run in runs:
            table = compare(budgets, measure(edited(run, variant, factor)), run)
            names = moved_variants(table, budgets.reference)
            named += bool(names) and names[0] == variant
        lines.append(f"  x{factor} {variant}: failed and named first in {named}/{len(runs)}")
    caught = total = 0
    missed: dict[tuple[str, int], int] = {}
    for entry in budgets.entries["memory"]:
        where = (entry.key["variant"], entry.key["n"])
        for run in runs:
            table = compare(budgets, measure(edited(run, grow=where, extra_bytes=int(memory * entry.value))), run)
            rows = table[(table["check"] == "memory") & (table["variant"] == where[0]) & (table["n"] == where[1])]
            hit = bool((~rows["ok"].astype(bool)).any())
            caught += hit
            total += 1
            if not hit:
                missed[where] = missed.get(where, 0) + 1
    lines.append(f"  +{memory:.0%} peak in one config: caught {caught}/{total}; missed: "
                 + (", ".join(f"{v} n={n} ({k}x)" for (v, n), k in sorted(missed.items())) or "none"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate.sensitivity", description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=Path, default=DEFAULT_BUDGETS)
    parser.add_argument("--factor", type=float, default=1.25)
    parser.add_argument("--memory", type=float, default=0.10, help="extra peak as a fraction of the budget")
    parser.add_argument("--variants", default=None, help="comma-separated (default: every variant of the preset)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    parser.add_argument("--stored", type=Path, nargs="+", default=None, help="edit these stored clean gate runs")
    args = parser.parse_args(argv)
    budgets = Budgets.load(args.budgets)
    if args.stored:
        print(stored_rates(budgets, [GateRun.load(d) for d in args.stored], args.factor, args.memory))
        return 0
    variants = args.variants.split(",") if args.variants else list(budgets.spec["variants"])
    peaks = {(e.key["variant"], e.key["n"]): e.value for e in budgets.entries["memory"]}
    lengths = sorted({n for _, n in peaks})
    every = list(budgets.spec["variants"])
    caught_time = caught_memory = 0
    for i, variant in enumerate(variants):
        grown = (every[(every.index(variant) + 1) % len(every)], lengths[i % len(lengths)])
        extra = int(args.memory * peaks[grown])
        result = gate(args.budgets, results_dir=args.results_dir,
                      wrap=injection(variant, args.factor, grown, extra))
        table = result.table
        bad = table[~table["ok"].astype(bool)]
        time_hit = bool(((bad["check"] == "ratio") & (bad["variant"] == variant)).any())
        memory_hit = bool(((bad["check"] == "memory") & (bad["variant"] == grown[0])
                           & (bad["n"] == grown[1])).any())
        named = moved_variants(table, budgets.reference)
        caught_time += time_hit and bool(named) and named[0] == variant
        caught_memory += memory_hit
        print(f"{variant} x{args.factor}: gate {'FAILED' if not result.passed else 'passed'}; ratio failed: "
              f"{time_hit}; named first: {named[:3]}; +{args.memory:.0%} peak ({extra / 2**20:.2f} MiB) at "
              f"{grown[0]} N={grown[1]}: memory failed: {memory_hit}; run {result.run_dir}", flush=True)
    print(f"slowdown caught and named first in {caught_time}/{len(variants)} runs; "
          f"memory growth caught in {caught_memory}/{len(variants)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
