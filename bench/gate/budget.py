"""The budget file (``bench/budgets/cpu-gate.json``) as a typed record: what a gate run is compared with.

Each gated quantity (``bench.gate.stats``) has a budget entry: its key, ``value`` (the median over the runs
the budgets were made from), ``spread`` (how far the farthest of those runs was from it, in the unit of
``bench.gate.stats.deviation``) and ``tolerance`` (how far a gate run may be, same unit), derived by
``ToleranceRules``: the spread times a margin, never below a floor.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pandas as pd

from bench.gate.stats import CHECKS, deviation, key_columns

UPDATE_COMMAND = "python -m bench gate --update"


@dataclass(frozen=True)
class ToleranceRules:
    """How a budget entry's tolerance follows from the spread its runs showed: ``margin`` x spread, at least
    the floor (ratio, shift: a factor, the margin applied to its logarithm; slope: absolute; memory: a
    fraction of the budget, and at least
    ``memory_floor_bytes`` in bytes). The margin covers runs worse than the few the budgets saw; the floors
    keep an entry whose runs happened to agree from failing on the next run's ordinary noise. The values and
    the measurements behind them are in docs/gates.md."""

    margin: float = 2.0
    ratio_floor: float = 1.12
    shift_floor: float = 1.08
    slope_floor: float = 0.1
    memory_floor: float = 0.05
    memory_floor_bytes: int = 16 * 2**10

    def __post_init__(self) -> None:
        if not (self.margin >= 1 and self.ratio_floor > 1 and self.shift_floor > 1
                and self.slope_floor > 0 and self.memory_floor > 0 and self.memory_floor_bytes >= 0):
            raise ValueError(f"tolerance rules need margin >= 1, ratio_floor and shift_floor > 1, "
                             f"slope_floor > 0, memory_floor > 0 and memory_floor_bytes >= 0; got {self}")

    def tolerance(self, check: str, value: float, spread: float) -> float:
        """The tolerance of an entry with budget ``value`` whose runs spread by ``spread``."""
        if check in ("ratio", "shift"):  # a factor: the margin applies to its logarithm
            floor = self.ratio_floor if check == "ratio" else self.shift_floor
            return max(floor, math.exp(self.margin * math.log(max(spread, 1.0))))
        if check == "slope":
            return max(self.slope_floor, self.margin * spread)
        if check == "memory":
            return max(self.memory_floor, self.memory_floor_bytes / max(value, 1.0), self.margin * spread)
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")


@dataclass(frozen=True)
class Entry:
    """One budgeted quantity: ``key`` (column -> value, ``bench.gate.stats.key_columns``), ``value`` (ms ratio,
    exponent, bytes), ``spread`` and ``tolerance`` (see the module docstring)."""

    key: dict
    value: float
    spread: float
    tolerance: float

    def to_json(self) -> dict:
        return {**self.key, "value": self.value, "spread": self.spread, "tolerance": self.tolerance}


@dataclass
class Budgets:
    """The whole file. preset: the preset's name or path; spec: the resolved preset the budgets were made
    with (a gate run of another one fails); reference, cycles, threads, peak_readings: how gate runs are
    made; measured_on: the machine and the runs; entries: check -> list of Entry."""

    preset: str
    reference: str
    cycles: int
    threads: int
    peak_readings: int
    rules: ToleranceRules
    spec: dict
    measured_on: dict = field(default_factory=dict)
    entries: dict[str, list[Entry]] = field(default_factory=dict)
    about: str = "CI gate budgets: written by `python -m bench gate --update`; see docs/gates.md"

    def __post_init__(self) -> None:
        if self.cycles < 3 or self.threads < 1 or self.peak_readings < 1:
            raise ValueError(f"budgets need cycles >= 3, threads >= 1 and peak_readings >= 1; got cycles="
                             f"{self.cycles}, threads={self.threads}, peak_readings={self.peak_readings}")
        unknown = set(self.entries) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)} in budgets; allowed: {list(CHECKS)}")

    def key_of(self, check: str, entry: Entry) -> tuple:
        return tuple(entry.key[c] for c in key_columns(check))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"about": self.about, "preset": self.preset, "reference": self.reference, "cycles": self.cycles,
                "threads": self.threads, "peak_readings": self.peak_readings, "rules": asdict(self.rules),
                "measured_on": self.measured_on, "spec": self.spec}
        data.update({check: [e.to_json() for e in self.entries.get(check, [])] for check in CHECKS})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Budgets:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"no budget file at {path}; write one with `{UPDATE_COMMAND} --budgets {path}`")
        data = json.loads(path.read_text())
        needed = {"preset", "reference", "cycles", "threads", "peak_readings", "rules", "spec", *CHECKS}
        missing = needed - set(data)
        if missing:
            raise ValueError(f"{path} is not a budget file of this gate: it lacks {sorted(missing)} (budgets of "
                             f"the older round-based gate? rewrite them with `{UPDATE_COMMAND} --budgets {path}`)")
        entries = {}
        for check in CHECKS:
            columns = key_columns(check)
            entries[check] = []
            for raw in data[check]:
                absent = [c for c in (*columns, "value", "spread", "tolerance") if c not in raw]
                if absent:
                    raise ValueError(f"{path}: a {check} entry lacks {absent}: {raw}")
                entries[check].append(Entry({c: raw[c] for c in columns}, float(raw["value"]),
                                            float(raw["spread"]), float(raw["tolerance"])))
        rules = {f.name: data["rules"][f.name] for f in fields(ToleranceRules) if f.name in data["rules"]}
        return cls(preset=data["preset"], reference=data["reference"], cycles=int(data["cycles"]),
                   threads=int(data["threads"]), peak_readings=int(data["peak_readings"]),
                   rules=ToleranceRules(**rules), spec=data["spec"], measured_on=data.get("measured_on", {}),
                   entries=entries, about=data.get("about", cls.about))


def make_entries(measured: list[dict[str, pd.DataFrame]], rules: ToleranceRules) -> dict[str, list[Entry]]:
    """Budget entries from several gate runs' measurements: per key the median over runs, the largest
    deviation of a run from it (``spread``), and the tolerance ``rules`` give. A key that some run lacks is
    left out of none: its median is over the runs that have it."""
    out: dict[str, list[Entry]] = {}
    for check in CHECKS:
        columns = list(key_columns(check))
        stacked = pd.concat([m[check][[*columns, "value"]] for m in measured], ignore_index=True)
        out[check] = []
        for key, group in stacked.groupby(columns, sort=True):
            values = group["value"].astype(float).tolist()
            centre = float(pd.Series(values).median())
            spread = max(deviation(check, v, centre) for v in values)
            record = {c: _plain(k) for c, k in zip(columns, key, strict=True)}
            out[check].append(Entry(record, centre, spread, rules.tolerance(check, centre, spread)))
    return out


def _plain(value):
    """numpy/pandas scalars as JSON-ready Python values."""
    return value.item() if hasattr(value, "item") else value


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
