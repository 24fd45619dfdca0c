"""``python -m bench gate``: run a gate (or read one), compare with the budgets, print the verdict; and
``--update``, which makes the budgets from several gate runs."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.gate.budget import Budgets, ToleranceRules, make_entries, now_utc
from bench.gate.compare import compare
from bench.gate.present import budget_summary, report
from bench.gate.run import GateRun, Wrap, identity, new_gate_dir, run_gate_isolated
from bench.gate.stats import measure
from bench.sweep.store import DEFAULT_RESULTS_DIR

DEFAULT_BUDGETS = Path(__file__).resolve().parents[1] / "budgets" / "cpu-gate.json"
DEFAULT_PRESET = "gate"
DEFAULT_REFERENCE = "linear@torch-chunked"
DEFAULT_CYCLES = 30
DEFAULT_UPDATE_RUNS = 5


@dataclass(frozen=True)
class GateResult:
    """passed: every check within budget; text: the verdict; table: every check; run_dir: the run compared."""

    passed: bool
    text: str
    table: pd.DataFrame
    run_dir: Path


def gate(budgets_path: str | Path = DEFAULT_BUDGETS, run_dir: str | Path | None = None, *,
         results_dir: str | Path = DEFAULT_RESULTS_DIR, wrap: Wrap = identity, log=None) -> GateResult:
    """Make a gate run as the budgets say (or read ``run_dir``) and compare it with them."""
    budgets = Budgets.load(budgets_path)
    if run_dir is None:
        run_dir = new_gate_dir(results_dir)
        run = run_gate_isolated(budgets.preset, run_dir, reference=budgets.reference, cycles=budgets.cycles,
                       threads=budgets.threads, peak_readings=budgets.peak_readings, wrap=wrap, log=log)
    else:
        run = GateRun.load(run_dir)
    table = compare(budgets, measure(run), run)
    passed = bool(table["ok"].astype(bool).all())
    return GateResult(passed, report(table, budgets_path, run_dir, budgets.reference), table, Path(run_dir))


def update(budgets_path: str | Path = DEFAULT_BUDGETS, run_dirs: list[str | Path] | None = None, *,
           runs: int = DEFAULT_UPDATE_RUNS, preset: str | None = None, cycles: int | None = None,
           rules: ToleranceRules | None = None, results_dir: str | Path = DEFAULT_RESULTS_DIR,
           variants: list[str] | None = None, log=None) -> tuple[Budgets, str]:
    """Write budgets from the gate runs ``run_dirs`` (or ``runs`` new ones): (budgets, summary text).

    An existing file's preset, reference, cycles, threads, peak readings and rules are kept unless given.
    ``variants``: rewrite only these variants' entries and keep every other entry of the existing file (an
    intended change to one variant, budgeted from new runs while the others keep the runs they were made
    from; ``measured_on`` lists both). Refuses (ValueError, nothing written) runs with a config that was not
    ok, of different presets or cycle counts, or without the reference's ratios (time would never be gated),
    and ``variants`` without an existing file, naming the reference, or naming a variant of no budget entry."""
    path = Path(budgets_path)
    old = Budgets.load(path) if path.exists() else None
    if variants is not None:
        _check_partial(old, path, variants, rules)
    preset = preset or (old.preset if old else DEFAULT_PRESET)
    first = GateRun.load(run_dirs[0]) if run_dirs else None
    reference = old.reference if old else (first.reference if first else DEFAULT_REFERENCE)
    cycles = cycles or (old.cycles if old else DEFAULT_CYCLES)
    threads = old.threads if old else 1
    peak_readings = old.peak_readings if old else 2
    rules = rules or (old.rules if old else ToleranceRules())
    if not run_dirs:
        if runs < 1:
            raise ValueError(f"--runs must be >= 1, got {runs}")
        run_dirs = []
        for i in range(runs):
            directory = new_gate_dir(results_dir)
            run_gate_isolated(preset, directory, reference=reference, cycles=cycles, threads=threads,
                     peak_readings=peak_readings, log=log)
            run_dirs.append(directory)
            if log is not None:
                log(f"gate --update: run {i + 1}/{runs} done ({directory})")
    loaded = [GateRun.load(d) for d in run_dirs]
    measured = []
    for directory, run in zip(run_dirs, loaded, strict=True):
        bad = [f"{e.variant} N={e.n}: {e.status} ({e.reason})" for e in run.configs if e.status != "ok"]
        if bad:
            raise ValueError(f"{directory} cannot make budgets: {len(bad)} configs not ok ({'; '.join(bad[:5])}). "
                             "Rerun the gate, or give only runs that finished clean")
        if run.cycles != cycles or run.preset != loaded[0].preset:
            raise ValueError(f"{directory} was made with {run.cycles} cycles and preset {run.preset['name']!r}; "
                             f"the budgets take {cycles} cycles and the preset of {run_dirs[0]}")
        found = measure(run)
        if run.reference != reference or not (found["ratio"]["variant"] != reference).any():
            raise ValueError(f"{directory} cannot make budgets: the reference {reference} has no time ratios "
                             f"(the run's reference is {run.reference}, its variants "
                             f"{sorted({e.variant for e in run.configs})})")
        measured.append(found)
    runs_made = {"runs": [str(d) for d in run_dirs], "updated_utc": now_utc()}
    entries = make_entries(measured, rules)
    if variants is None:
        budgets = Budgets(preset=preset, reference=reference, cycles=cycles, threads=threads,
                          peak_readings=peak_readings, rules=rules, spec=loaded[0].preset,
                          measured_on={**loaded[0].environment, **runs_made}, entries=entries)
    else:
        if loaded[0].preset != old.spec:
            raise ValueError(f"{run_dirs[0]} ran another preset than the budgets were made with; a partial update "
                             "needs runs of the same preset")
        missing = sorted(set(variants) - {e.key["variant"] for e in entries["ratio"]})
        if missing:
            raise ValueError(f"the runs have no time ratios of {missing}")
        keep = {check: [e for e in old.entries[check] if e.key["variant"] not in variants] for check in old.entries}
        new = {check: [e for e in entries[check] if e.key["variant"] in variants] for check in entries}
        partial = [*old.measured_on.get("partial_updates", []), {"variants": sorted(variants), **runs_made}]
        budgets = Budgets(preset=old.preset, reference=old.reference, cycles=old.cycles, threads=old.threads,
                          peak_readings=old.peak_readings, rules=rules, spec=old.spec,
                          measured_on={**old.measured_on, "partial_updates": partial})
        # In make_entries' order (sorted by key), so that the file's diff shows only the rewritten entries.
        budgets.entries = {check: sorted(keep.get(check, []) + new.get(check, []),
                                         key=lambda e, check=check: budgets.key_of(check, e)) for check in entries}
    budgets.save(path)
    summary = budget_summary(budgets, len(run_dirs))
    if variants is not None:
        summary += (f"\nrewrote the entries of {', '.join(sorted(variants))} from these {len(run_dirs)} runs; every "
                    "other entry is kept from the runs it was made from")
    return budgets, summary + f"\nbudgets written to {path}"


def _check_partial(old: Budgets | None, path: Path, variants: list[str], rules: ToleranceRules | None) -> None:
    """A partial update replaces entries of an existing file, never the reference's (every ratio divides by
    its calls), only variants the file budgets, and under the file's tolerance rules (the kept entries' were
    derived by them)."""
    if old is None:
        raise ValueError(f"--variants rewrites some entries of an existing budget file; there is none at {path}")
    if rules is not None and rules != old.rules:
        raise ValueError(f"a partial update keeps the file's tolerance rules {old.rules}; got {rules}")
    if old.reference in variants:
        raise ValueError(f"--variants may not name the reference {old.reference}: every ratio divides by its "
                         "calls; update the whole file instead")
    known = {e.key["variant"] for e in old.entries["ratio"]}
    unknown = sorted(set(variants) - known)
    if unknown:
        raise ValueError(f"--variants {unknown} have no budget entries in {path}; budgeted: {sorted(known)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", metavar="FILE", type=Path, default=None,
                        help="budget file (default bench/budgets/cpu-gate.json; with --quality cpu-quality.json)")
    parser.add_argument("--quality", action="store_true",
                        help="the quality gate (bits per byte of fixed-weight models, one per encoding kind) "
                             "instead of speed and memory")
    parser.add_argument("--run", dest="run_dirs", metavar="DIR", type=Path, action="append", default=None,
                        help="read this gate run instead of measuring; with --update, repeat it to make the "
                             "budgets from several runs")
    parser.add_argument("--update", action="store_true", help="rewrite the budgets from gate runs")
    parser.add_argument("--runs", type=int, default=DEFAULT_UPDATE_RUNS,
                        help=f"with --update and no --run: how many gate runs to make (default {DEFAULT_UPDATE_RUNS})")
    parser.add_argument("--preset", default=None, help=f"with --update: the gate preset (default {DEFAULT_PRESET})")
    parser.add_argument("--cycles", type=int, default=None,
                        help=f"with --update: timing cycles per gate run (default {DEFAULT_CYCLES})")
    parser.add_argument("--variants", default=None,
                        help="with --update: rewrite only these variants' entries (comma-separated), keeping the "
                             "rest of the budget file")
    parser.add_argument("--results-dir", dest="results_dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help=f"where gate runs are stored (default {DEFAULT_RESULTS_DIR}/)")


def main(args: argparse.Namespace) -> int:
    """0 when every check is within budget (or after --update), 1 on failure."""
    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.quality:
        return _quality(args)
    args.budgets = args.budgets or DEFAULT_BUDGETS
    if args.update:
        variants = None if args.variants is None else [v for v in args.variants.split(",") if v]
        _budgets, text = update(args.budgets, args.run_dirs, runs=args.runs, preset=args.preset,
                                cycles=args.cycles, results_dir=args.results_dir, variants=variants, log=log)
        print(text)
        return 0
    if args.preset is not None or args.cycles is not None or args.variants is not None:
        raise ValueError("--preset, --cycles and --variants choose what --update makes budgets from; without "
                         f"--update the gate runs the preset and cycles of its budget file ({args.budgets})")
    if args.run_dirs and len(args.run_dirs) > 1:
        raise ValueError(f"the gate reads one run (got {len(args.run_dirs)} --run); several runs go with --update")
    result = gate(args.budgets, args.run_dirs[0] if args.run_dirs else None, results_dir=args.results_dir, log=log)
    print(result.text)
    return 0 if result.passed else 1


def _quality(args: argparse.Namespace) -> int:
    from bench.gate.quality import DEFAULT_QUALITY_BUDGETS, make_budgets, quality_gate

    if args.run_dirs or args.preset is not None or args.cycles is not None:
        raise ValueError("--run, --preset and --cycles are options of the speed and memory gate, not of --quality")
    path = args.budgets or DEFAULT_QUALITY_BUDGETS
    if args.update:
        budgets = make_budgets()
        budgets.save(path)
        worst = max(budgets.entries, key=lambda e: e.spread)
        print(f"quality budgets written to {path}: {len(budgets.entries)} scores; largest |float32 - float64| "
              f"{worst.spread:.1e} bits ({worst.variant} at {worst.length}); tolerance "
              f"max({budgets.floor:.0e}, {budgets.margin:g} x that)")
        return 0
    result = quality_gate(path)
    print(result.text)
    return 0 if result.passed else 1
