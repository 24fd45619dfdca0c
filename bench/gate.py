"""CI regression gates on speed and memory: ``python -m bench gate [--budgets FILE] [--run DIR] [--update]``.

What is gated (the budgets live in ``bench/budgets/cpu-gate.json``, written by ``--update``):
    ratio   time of each variant / time of the reference variant at the same (pass, dtype, causal, D, N);
            absolute time is never gated
    slope   least-squares slope of log time against log N per variant series
    memory  measured peak memory above the inputs per config
A config's time is its fastest call over all rounds, by CPU time with one thread, and its peak the smallest
over rounds (see ``best_of_rounds``: the noise of a shared machine only adds).
Every budgeted config must also come back ``ok`` in every round, and every measured one must have a budget.

A gate run is ``rounds`` sessions of the gate preset through the project's Sweep (one run store per round,
``<results>/gate-<id>/round-<r>/``), each ordered by N so that a variant and its reference are measured
seconds apart; repeating the rounds interleaves them. The comparison is plain data in, table out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.sweep.store import DEFAULT_RESULTS_DIR, ROWS_FILE, RunStore

DEFAULT_BUDGETS = Path(__file__).resolve().parent / "budgets" / "cpu-gate.json"
DEFAULT_PRESET = "gate"
DEFAULT_REFERENCE = "linear@torch-chunked"
DEFAULT_ROUNDS = 3
DEFAULT_THREADS = 1
DEFAULT_TIME_STAT = "time_min_ms"
TIME_STATS = ("time_min_ms", "time_median_ms")
SERIES = ("variant", "pass", "dtype", "causal", "d")
CONFIG = (*SERIES, "n")
UPDATE_COMMAND = "python -m bench gate --update"


@dataclass(frozen=True)
class Tolerances:
    """How far a measurement may move from its budget before the gate fails (both directions).

    ratio: the measured time ratio may be within [budget / ratio, budget * ratio].
    slope: the measured log-log slope may differ from its budget by at most this much.
    memory_rel, memory_abs_bytes, memory_spread: peak memory may differ by at most the largest of
        memory_rel x budget, memory_abs_bytes, and memory_spread x the range between the runs the budget
        was made from (CPU peaks of some variants move by a few MiB from run to run).
    The values and the measured spread behind them are in docs/gates.md.
    """

    ratio: float = 1.7
    slope: float = 0.4
    memory_rel: float = 0.25
    memory_abs_bytes: int = 2 * 2**20
    memory_spread: float = 2.0

    def __post_init__(self) -> None:
        if (not self.ratio > 1 or not self.slope > 0 or not self.memory_rel >= 0 or not self.memory_abs_bytes >= 0
                or not self.memory_spread >= 0):
            raise ValueError(f"tolerances need ratio > 1, slope > 0, memory_rel, memory_abs_bytes and "
                             f"memory_spread >= 0; got {self}")

    def memory_allowed(self, budget: float, spread: float = 0.0) -> float:
        """Bytes a peak may move from its budget: the largest of memory_rel x budget, memory_abs_bytes and
        memory_spread x the range the budget's own runs showed (``spread``, bytes)."""
        return max(self.memory_rel * budget, self.memory_abs_bytes, self.memory_spread * spread)


# ---- running --------------------------------------------------------------------------------------------


class CpuTimeTimer:
    """The gate's timer (a ``bench.sweep.executor.Timer``): each call's CPU time by ``time.process_time``,
    with the settings' usual stopping rule. With one thread, time slices the scheduler gives to other
    processes are not in it: under load 10-13 on this 2-core machine, wall-time ratios of two configs
    ranged 2.3x..17x between repeats while CPU-time ratios stayed within 1.3x."""

    label = "process_time"

    def __init__(self, settings) -> None:
        self.settings = settings

    def __call__(self, fn, seconds_per_call: float):
        from bench.measure.timing import time_cpu

        return time_cpu(fn, self.settings, clock=time.process_time)



def run_rounds(preset: str, *, rounds: int = DEFAULT_ROUNDS, threads: int = DEFAULT_THREADS,
               results_dir: str | Path = DEFAULT_RESULTS_DIR, gate_id: str | None = None, log=None) -> Path:
    """Run the gate preset ``rounds`` times through ``Sweep`` with ``threads`` torch threads; returns the gate
    run's directory.

    One thread by default: on a shared 2-core machine, two OpenMP threads that wait for each other at every
    barrier turn a neighbour's load into 0.2x..13x swings of a time ratio (measured under load 8), while one
    thread's ratios stayed within ~1.4x; the rows record the thread count.

    Each round is its own run store (``round-<r>``), so config keys stay unique and rows are appended and
    fsynced as in any run. Within a round configs go by N (stable, in the preset's variant order), so
    every variant at one N is measured right after its reference; the planner still sees each smaller N
    of a series first.
    """
    import torch

    from bench.sweep.presets import load_spec
    from bench.sweep.session import Sweep, new_run_id

    if rounds < 1 or threads < 1:
        raise ValueError(f"rounds and threads must be >= 1, got rounds={rounds}, threads={threads}")
    spec = load_spec(preset)
    gate_dir = Path(results_dir) / (gate_id or f"gate-{new_run_id()}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for r in range(1, rounds + 1):
            started = time.perf_counter()
            # No ceilings: the gate reads times and memory only, and measuring them costs ~2 s a round.
            sweep = Sweep(spec, results_dir=gate_dir, run_id=f"round-{r}", measure_ceilings_now=False)
            pending = sorted(sweep.pending(), key=lambda p: p.config.n)
            # CPU time is meaningless for a GPU's asynchronous calls: there the device's own timer runs.
            timer = CpuTimeTimer(sweep.settings) if spec.device == "cpu" else None
            for planned in pending:
                sweep.run_one(planned, timer=timer)
            sweep.finish()
            if log is not None:
                log(f"gate round {r}/{rounds}: {len(pending)} configs in {time.perf_counter() - started:.1f} s")
    finally:
        torch.set_num_threads(previous_threads)
    return gate_dir


def read_rounds(run_dir: str | Path) -> list[pd.DataFrame]:
    """The frames of a gate run (one per ``round-*`` store), or of a single run directory (one round)."""
    run_dir = Path(run_dir)
    if (run_dir / ROWS_FILE).exists():
        stores = [run_dir]
    else:
        stores = sorted((p for p in run_dir.glob("round-*") if (p / ROWS_FILE).exists()),
                        key=lambda p: int(p.name.removeprefix("round-")) if p.name[6:].isdigit() else 0)
    if not stores:
        raise ValueError(f"{run_dir} is neither a run directory ({ROWS_FILE}) nor a gate run (round-*/{ROWS_FILE})")
    frames = []
    for store in stores:
        frame = RunStore(store.parent, store.name).frame()
        if not frame.empty and "task" in frame:
            frame = frame[frame["task"] == "speed"]
        frames.append(frame.reset_index(drop=True))
    return frames


def _first_session(run_dir: str | Path) -> dict:
    """The environment.json session of a gate run's first round (or of a run directory); {} when none."""
    run_dir = Path(run_dir)
    store = run_dir if (run_dir / ROWS_FILE).exists() else run_dir / "round-1"
    sessions = RunStore(store.parent, store.name).environment()["sessions"] if store.exists() else []
    return sessions[0] if sessions else {}


def run_spec(run_dir: str | Path) -> dict | None:
    """The resolved preset the first round of a gate run was made with (from environment.json)."""
    return _first_session(run_dir).get("preset")


# ---- measuring ------------------------------------------------------------------------------------------


def best_of_rounds(frames: list[pd.DataFrame], time_stat: str = DEFAULT_TIME_STAT) -> pd.DataFrame:
    """One row per config over the ok rows of every round: ``time_ms`` (the smallest ``time_stat``),
    ``peak_bytes`` (the smallest peak) and ``rounds`` (how many rounds measured it).

    The smallest, because on a shared machine the noise only ever adds: a neighbour's load makes calls
    slower and leaves extra pages resident, never the reverse. Over 5 gate runs under load 9-13 the
    between-run spread of a time ratio was 1.30x at worst this way, 1.59x with the median of per-round
    ratios (docs/gates.md)."""
    if time_stat not in TIME_STATS:
        raise ValueError(f"time statistic must be one of {TIME_STATS}, got {time_stat!r}")
    parts = [f[f["status"] == "ok"] for f in frames if not f.empty]
    ok = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if ok.empty:
        return pd.DataFrame(columns=[*CONFIG, "time_ms", "peak_bytes", "rounds"])
    ok = ok.astype({"causal": bool, "d": int, "n": int, time_stat: float, "peak_mem_bytes": float})
    grouped = ok.groupby(list(CONFIG), sort=True)
    return grouped.agg(time_ms=(time_stat, "min"), peak_bytes=("peak_mem_bytes", "min"),
                       rounds=(time_stat, "count")).reset_index()


def quantities(best: pd.DataFrame, reference: str) -> dict[str, pd.DataFrame]:
    """The gated quantities from ``best_of_rounds``: {"ratio", "slope", "memory"} -> frames of their key
    columns plus ``value``. Ratios need the reference at the same (pass, dtype, causal, D, N); slopes need
    two N or more of a series (least squares of log2 time against log2 N)."""
    memory = best[best["peak_bytes"].notna()]
    out = {"memory": memory[list(CONFIG)].assign(value=memory["peak_bytes"].astype(float))}
    ref = best[best["variant"] == reference].drop(columns=["variant", "peak_bytes", "rounds"])
    joined = best[best["variant"] != reference].merge(ref, on=list(CONFIG[1:]), suffixes=("", "_ref"))
    out["ratio"] = joined[list(CONFIG)].assign(value=(joined["time_ms"] / joined["time_ms_ref"]).astype(float))
    slopes = []
    for key, series in best.groupby(list(SERIES), sort=True):
        if series["n"].nunique() >= 2:
            slope = np.polyfit(np.log2(series["n"].to_numpy(float)), np.log2(series["time_ms"].to_numpy(float)), 1)[0]
            slopes.append({**dict(zip(SERIES, key, strict=True)), "value": float(slope)})
    out["slope"] = pd.DataFrame(slopes, columns=[*SERIES, "value"])
    return out


def status_problems(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Configs that were not measured ok in every round: (round, config columns, status, reason). A row whose
    status is not ok keeps its status and reason; a config that some round stored no row for (a round killed
    or still running) has status ``no row``."""
    parts = []
    stored = [frame[list(CONFIG)].astype({"causal": bool, "d": int, "n": int}) if not frame.empty else None
              for frame in frames]
    every = set().union(*(set(s.itertuples(index=False, name=None)) for s in stored if s is not None))
    for r, (frame, configs) in enumerate(zip(frames, stored, strict=True), 1):
        bad = frame[frame["status"] != "ok"] if not frame.empty else frame
        if not bad.empty:
            parts.append(bad[[*CONFIG, "status", "reason"]].assign(round=r))
        absent = every - (set(configs.itertuples(index=False, name=None)) if configs is not None else set())
        if absent:
            parts.append(pd.DataFrame(sorted(absent, key=str), columns=list(CONFIG)).assign(
                status="no row", reason="", round=r))
    if not parts:
        return pd.DataFrame(columns=[*CONFIG, "status", "reason", "round"])
    return pd.concat(parts, ignore_index=True)


def measure(frames: list[pd.DataFrame], reference: str, time_stat: str = DEFAULT_TIME_STAT
            ) -> dict[str, pd.DataFrame]:
    """The gate's measurements from a gate run's round frames."""
    return quantities(best_of_rounds(frames, time_stat), reference)


# ---- budgets --------------------------------------------------------------------------------------------


def _records(frame: pd.DataFrame, keys: tuple[str, ...]) -> list[dict]:
    out = []
    for values in frame.to_dict("records"):
        record = {k: _plain(values[k]) for k in keys}
        record["value"] = float(values["value"])
        if "spread" in values:
            record["spread"] = float(values["spread"])
        out.append(record)
    return out


def _plain(value):
    """numpy/pandas scalars as JSON-ready Python values."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return str(value)


def spread_between_runs(measured: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Several gate runs' measurements -> per quantity the median over runs (``value``) and the spread:
    max/min over runs for ratios (a factor >= 1), max - min for slopes and memory (bytes)."""
    out = {}
    for name in ("ratio", "slope", "memory"):
        keys = list(SERIES if name == "slope" else CONFIG)
        stacked = pd.concat([m[name][[*keys, "value"]] for m in measured], ignore_index=True).astype({"value": float})
        grouped = stacked.groupby(keys, sort=True)["value"]
        frame = grouped.agg(value="median", lo="min", hi="max").reset_index()
        if name == "ratio":
            frame["spread"] = frame["hi"] / frame["lo"]
        else:
            frame["spread"] = frame["hi"] - frame["lo"]
        out[name] = frame.drop(columns=["lo", "hi"])
    return out


def make_budgets(measured: list[dict[str, pd.DataFrame]], *, preset: str, spec: dict, reference: str, rounds: int,
                 threads: int, time_stat: str, tolerances: Tolerances, runs: list[str], environment: dict) -> dict:
    """The budget file's content from one or more gate runs (the median over runs; the spread is kept)."""
    combined = spread_between_runs(measured)
    return {
        "about": "CI gate budgets: written by `python -m bench gate --update`; see docs/gates.md",
        "preset": preset,
        "reference": reference,
        "rounds": rounds,
        "threads": threads,
        "time_stat": time_stat,
        "tolerances": asdict(tolerances),
        "measured_on": {**environment, "runs": runs,
                        "updated_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "spec": spec,
        "ratio": _records(combined["ratio"], CONFIG),
        "slope": _records(combined["slope"], SERIES),
        "memory": _records(combined["memory"], CONFIG),
    }


def load_budgets(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no budget file at {path}; write one with `{UPDATE_COMMAND} --budgets {path}`")
    budgets = json.loads(path.read_text())
    missing = {"preset", "reference", "rounds", "threads", "time_stat", "tolerances", "ratio", "slope",
               "memory"} - set(budgets)
    if missing:
        raise ValueError(f"{path} is not a gate budget file: it lacks {sorted(missing)}")
    return budgets


# ---- comparing ------------------------------------------------------------------------------------------


def _describe(keys: dict) -> dict:
    return {"variant": keys["variant"], "pass": keys["pass"], "d": keys["d"], "n": keys.get("n")}


def compare(budgets: dict, measured: dict[str, pd.DataFrame], problems: pd.DataFrame,
            spec: dict | None = None, rounds: int | None = None) -> pd.DataFrame:
    """One row per gated quantity: check, variant, pass, d, n, budget, measured, change, allowed, ok.

    ``change`` is measured/budget for ratios and memory, measured - budget for slopes; ``allowed`` the band
    it had to stay inside. A budget without a measurement, or a measurement without a budget, fails; so does
    a run of another number of ``rounds`` than the budgets were made with (best of fewer rounds reads slower).
    """
    tol = Tolerances(**budgets["tolerances"])
    rows: list[dict] = []
    if rounds is not None and rounds != int(budgets["rounds"]):
        rows.append({"check": "rounds", "variant": "", "budget": f"{int(budgets['rounds'])} rounds",
                     "measured": f"{rounds} rounds", "change": "", "allowed": "the same", "ok": False})
    if spec is not None and budgets.get("spec") is not None and spec != budgets["spec"]:
        changed = sorted(k for k in set(spec) | set(budgets["spec"]) if spec.get(k) != budgets["spec"].get(k))
        rows.append({"check": "preset", "variant": "", "budget": "as budgeted", "measured": f"changed: {changed}",
                     "change": "", "allowed": "no change", "ok": False})
    for problem in problems.to_dict("records"):
        reason = problem["reason"] if isinstance(problem["reason"], str) else ""
        rows.append({"check": "status", **_describe(problem), "budget": "ok",
                     "measured": (f"{problem['status']} in round {problem['round']}"
                                  + (f": {reason}" if reason else ""))[:160],
                     "change": "", "allowed": "ok", "ok": False})
    for name in ("ratio", "slope", "memory"):
        keys = list(SERIES if name == "slope" else CONFIG)
        have = {tuple(_plain(v) for v in row[:len(keys)]): row[len(keys)]
                for row in measured[name][[*keys, "value"]].itertuples(index=False)}
        budgeted = set()
        for entry in budgets[name]:
            key = tuple(_plain(entry[k]) for k in keys)
            budgeted.add(key)
            value = have.get(key)
            rows.append(_check_one(name, dict(zip(keys, key, strict=True)), entry["value"], value, tol,
                                   entry.get("spread", 0.0)))
        for key in sorted(set(have) - budgeted, key=str):
            rows.append({"check": name, **_describe(dict(zip(keys, key, strict=True))), "budget": "none",
                         "measured": _fmt(name, have[key]), "change": "", "allowed": "a budget", "ok": False})
    table = pd.DataFrame(rows, columns=["check", "variant", "pass", "d", "n", "budget", "measured", "change",
                                        "allowed", "ok"])
    return table.astype({"d": "Int64", "n": "Int64"})  # slopes have no N: missing, not NaN as a float


def _fmt(name: str, value: float) -> str:
    if name == "memory":
        return f"{value / 2**20:.2f} MiB"
    return f"{value:.3f}"


def _check_one(name: str, keys: dict, budget: float, value: float | None, tol: Tolerances,
               spread: float = 0.0) -> dict:
    row = {"check": name, **_describe(keys), "budget": _fmt(name, budget)}
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {**row, "measured": "missing", "change": "", "allowed": "a measurement", "ok": False}
    row["measured"] = _fmt(name, value)
    if name == "ratio":
        factor = value / budget
        row.update(change=f"x{factor:.2f}", allowed=f"x{1 / tol.ratio:.2f}..x{tol.ratio:.2f}",
                   ok=1 / tol.ratio <= factor <= tol.ratio)
    elif name == "slope":
        row.update(change=f"{value - budget:+.2f}", allowed=f"+-{tol.slope:.2f}", ok=abs(value - budget) <= tol.slope)
    else:
        allowed = tol.memory_allowed(budget, spread)
        row.update(change=f"{(value - budget) / 2**20:+.2f} MiB" + (f" (x{value / budget:.2f})" if budget > 0 else ""),
                   allowed=f"+-{allowed / 2**20:.2f} MiB", ok=abs(value - budget) <= allowed)
    return row


def report(table: pd.DataFrame, budgets_path: str | Path, run_dir: str | Path) -> str:
    """The gate's verdict as text: counts per check, and on failure what moved and how to accept it."""
    counts = table.groupby("check", sort=False)["ok"].agg(["sum", "count"])
    summary = ", ".join(f"{check} {int(c['sum'])}/{int(c['count'])}" for check, c in counts.iterrows())
    lines = [f"gate run {run_dir}: within budget: {summary}"]
    failed = table[~table["ok"].astype(bool)]
    if failed.empty:
        lines.append("gate passed")
        return "\n".join(lines)
    with pd.option_context("display.max_colwidth", 160, "display.width", 250):
        lines.append(f"gate FAILED: {len(failed)} of {len(table)} checks moved outside their budget\n")
        lines.append(failed.drop(columns="ok").astype(object).fillna("").to_string(index=False))
    lines.append(f"\nIf the change is intended, rewrite the budgets: {UPDATE_COMMAND} --budgets {budgets_path}")
    return "\n".join(lines)


@dataclass(frozen=True)
class GateResult:
    """passed: every check within budget; text: the verdict (with the failure table); table: every check;
    run_dir: the gate run that was compared."""

    passed: bool
    text: str
    table: pd.DataFrame
    run_dir: Path


def gate(budgets_path: str | Path = DEFAULT_BUDGETS, run_dir: str | Path | None = None, *,
         results_dir: str | Path = DEFAULT_RESULTS_DIR, log=None) -> GateResult:
    """Run the gated configs (or read ``run_dir``) and compare them with the budgets."""
    budgets = load_budgets(budgets_path)
    if run_dir is None:
        run_dir = run_rounds(budgets["preset"], rounds=int(budgets["rounds"]), threads=int(budgets["threads"]),
                             results_dir=results_dir, log=log)
    frames = read_rounds(run_dir)
    measured = measure(frames, budgets["reference"], budgets["time_stat"])
    table = compare(budgets, measured, status_problems(frames), run_spec(run_dir), len(frames))
    passed = bool(table["ok"].astype(bool).all())
    return GateResult(passed, report(table, budgets_path, run_dir), table, Path(run_dir))


def update(budgets_path: str | Path = DEFAULT_BUDGETS, run_dirs: list[str | Path] | None = None, *,
           preset: str | None = None, results_dir: str | Path = DEFAULT_RESULTS_DIR,
           tolerances: Tolerances | None = None, time_stat: str | None = None, log=None) -> tuple[dict, str]:
    """Write the budget file from the given gate runs (or one new run): (budgets, text with the spread).

    An existing file's preset, reference, rounds, threads, time statistic and tolerances are kept unless
    given here."""
    path = Path(budgets_path)
    old = load_budgets(path) if path.exists() else {}
    preset = preset or old.get("preset", DEFAULT_PRESET)
    reference = old.get("reference", DEFAULT_REFERENCE)
    rounds = int(old.get("rounds", DEFAULT_ROUNDS))
    threads = int(old.get("threads", DEFAULT_THREADS))
    time_stat = time_stat or old.get("time_stat", DEFAULT_TIME_STAT)
    tolerances = tolerances or Tolerances(**old.get("tolerances", {}))
    if not run_dirs:
        run_dirs = [run_rounds(preset, rounds=rounds, threads=threads, results_dir=results_dir, log=log)]
    measured = []
    for run_dir in run_dirs:
        frames = read_rounds(run_dir)
        # Budgets from a run whose configs did not all come back ok would silently lack those configs.
        problems = status_problems(frames)
        reasons = [f"{len(frames)} rounds where the budgets take {rounds}"] if len(frames) != rounds else []
        if not problems.empty:
            listed = "; ".join(f"{p['variant']} N={p['n']}: {p['status']} in round {p['round']}"
                               for p in problems.head(10).to_dict("records"))
            reasons.append(f"{len(problems)} rows not ok ({listed})")
        if reasons:
            raise ValueError(f"{run_dir} cannot make budgets: {'; '.join(reasons)}. Rerun the gate, or give only "
                             "runs that finished clean")
        found = measure(frames, reference, time_stat)
        if found["ratio"].empty:  # budgets without ratios would never gate time
            variants = sorted(set(found["memory"]["variant"]))
            raise ValueError(f"{run_dir} cannot make budgets: the reference {reference} has no ok rows to take "
                             f"time ratios against (the run has {variants})")
        measured.append(found)
    specs = [run_spec(d) for d in run_dirs]
    if any(s != specs[0] for s in specs):
        raise ValueError(f"the runs {[str(d) for d in run_dirs]} were made with different presets")
    # The machine the runs were measured on, as they recorded it (a GPU gate's device included), not this one.
    env = _first_session(run_dirs[0])
    environment = {k: env.get(k) for k in ("device", "device_name", "cpu_model", "usable_cores", "platform",
                                           "git_commit")}
    environment["torch"] = env.get("versions", {}).get("torch")
    budgets = make_budgets(measured, preset=preset, spec=specs[0], reference=reference, rounds=rounds,
                           threads=threads, time_stat=time_stat, tolerances=tolerances,
                           runs=[str(d) for d in run_dirs], environment=environment)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(budgets, indent=1) + "\n")
    return budgets, spread_text(budgets, len(run_dirs)) + f"\nbudgets written to {path}"


def spread_text(budgets: dict, runs: int) -> str:
    """The largest between-run spread of each quantity against its tolerance (needs two runs or more)."""
    tol = budgets["tolerances"]
    if runs < 2:
        return "one run: no between-run spread (give several --run directories to measure it)"
    lines = [f"spread over {runs} gate runs (largest entry; tolerance beside it):"]
    for name, unit, allowed in (("ratio", "x", f"x{tol['ratio']}"), ("slope", "+-", f"+-{tol['slope']}"),
                                ("memory", "MiB", f"+-max({tol['memory_rel']:.0%}, "
                                 f"{tol['memory_abs_bytes'] / 2**20:.1f} MiB, {tol['memory_spread']} x range)")):
        entries = budgets[name]
        if not entries:
            continue
        worst = max(entries, key=lambda e: e.get("spread", 0.0))
        where = ", ".join(f"{k}={worst[k]}" for k in ("variant", "n") if k in worst)
        size = f"{worst['spread'] / 2**20:.2f} MiB" if name == "memory" else f"{unit}{worst['spread']:.3f}"
        lines.append(f"  {name:6s} largest {size} ({where}); tolerance {allowed}")
    return "\n".join(lines)


# ---- command line ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budgets", metavar="FILE", type=Path, default=DEFAULT_BUDGETS,
                        help="budget file (default bench/budgets/cpu-gate.json)")
    parser.add_argument("--run", dest="runs", metavar="DIR", type=Path, action="append", default=None,
                        help="read this gate run (or run directory) instead of running; with --update, "
                             "repeat it to take the median of several runs and print their spread")
    parser.add_argument("--update", action="store_true", help="rewrite the budgets from the run(s)")
    parser.add_argument("--preset", default=None, help=f"with --update: the gate preset (default {DEFAULT_PRESET})")
    parser.add_argument("--time-stat", dest="time_stat", choices=TIME_STATS, default=None,
                        help=f"with --update: the time of a config the ratios and slopes use "
                             f"(default {DEFAULT_TIME_STAT})")
    parser.add_argument("--results-dir", dest="results_dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help=f"where gate runs are stored (default {DEFAULT_RESULTS_DIR}/)")


def main(args: argparse.Namespace) -> int:
    """``python -m bench gate``: 0 when every check is within budget (or after --update), 1 on failure."""
    def log(message: str) -> None:
        print(message, file=sys.stderr)

    if args.update:
        _budgets, text = update(args.budgets, args.runs, preset=args.preset, results_dir=args.results_dir,
                               time_stat=args.time_stat, log=log)
        print(text)
        return 0
    if args.preset is not None or args.time_stat is not None:
        raise ValueError("--preset and --time-stat choose what --update makes budgets from; without --update the "
                         f"gate runs the preset and statistic of its budget file ({args.budgets})")
    if args.runs and len(args.runs) > 1:
        raise ValueError(f"the gate reads one run (got {len(args.runs)} --run); several runs go with --update")
    result = gate(args.budgets, args.runs[0] if args.runs else None, results_dir=args.results_dir, log=log)
    print(result.text)
    return 0 if result.passed else 1
