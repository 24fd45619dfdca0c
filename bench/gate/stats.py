"""From a gate run to the gated quantities: per-config time ratios, per-series slopes, per-config peaks.

    ratio   the median over cycles of (variant's call time / mean of the reference calls either side); for
            the reference, the median of (reference / yardstick) the same way
    shift   per series, the geometric mean over N of its ratios: a slower kernel moves every N's ratio by the
            same factor, while the run-to-run noise of different N partly averages out (budget runs: per-N
            ratios moved by up to 13%, their geometric means by up to 7%), so this check is the tighter one
    slope   per series (``bench.scaling.series_key``), the exponent of ``bench.scaling.fit_power_law`` (the
            report's fit) of its ratios against N: how much faster than the reference's (for the reference:
            the yardstick's) its cost grows. A change from N to N^2 work adds 1 to it, as it would to the
            exponent of the call time, but the ratios cancel what the call times alone carry: the machine's
            drift between the N's (each N is timed in its own block of cycles), which moved the call-time
            exponents between runs by 0.25-0.46 over 30 stored runs, against 0.05-0.22 for these
            (docs/gates.md)
    memory  the smallest of a config's peak readings (bytes)

The median of per-cycle ratios, because each ratio compares calls made milliseconds apart: a neighbour that
slows the machine for a while slows both. Over the budget runs the medians moved by the spread stored in the
budget file; the median call time alone drifts more, so no check uses it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.gate.run import YARDSTICK, ConfigRun, GateRun
from bench.scaling import SERIES_COLUMNS, fit_power_law, series_key

SERIES = tuple(c for c in SERIES_COLUMNS if c != "device_name")
"""The series key's columns without the machine: a budget file is for one kind of machine already."""
CONFIG = (*SERIES, "n")
CHECKS = ("ratio", "shift", "slope", "memory")


def _row(entry: ConfigRun) -> dict:
    return {"variant": entry.variant, "pass": entry.pass_, "dtype": entry.dtype, "causal": entry.causal,
            "d": entry.d, "heads": entry.heads, "n": entry.n}


def key_of(row: dict, check: str) -> tuple:
    """The key of a gated quantity: the series key (slopes) or the series key and N (ratios, memory)."""
    key = series_key(row, SERIES)
    return key if check in PER_SERIES else (*key, row["n"])


PER_SERIES = ("shift", "slope")


def key_columns(check: str) -> tuple[str, ...]:
    return SERIES if check in PER_SERIES else CONFIG


def ratio_samples(entry: ConfigRun) -> np.ndarray:
    """The per-cycle ratios of a variant's config (its call time / the neighbouring reference calls)."""
    return np.asarray(entry.times_s, float) / np.asarray(entry.ref_times_s, float)


def measure(run: GateRun) -> dict[str, pd.DataFrame]:
    """{"ratio", "shift", "slope", "memory"} -> a frame of the key columns plus ``value``, from a gate run's
    ok configs."""
    ok = [e for e in run.configs if e.status == "ok"]
    ratios, peaks = [], []
    yard = {key_of(_row(e), "ratio")[1:]: e for e in ok if e.variant == YARDSTICK}
    for entry in ok:
        row = _row(entry)
        if entry.variant == YARDSTICK:
            continue
        if entry.peaks_bytes:
            peaks.append({**row, "value": float(min(entry.peaks_bytes))})
        if not entry.times_s:
            continue
        if entry.variant == run.reference:
            stick = yard.get(key_of(row, "ratio")[1:])
            if stick is not None and stick.times_s:
                ratios.append({**row, "value": float(np.median(1 / ratio_samples(stick)))})
        else:
            ratios.append({**row, "value": float(np.median(ratio_samples(entry)))})
    ratio_frame = pd.DataFrame(ratios, columns=[*CONFIG, "value"])
    shifts = [{**dict(zip(SERIES, key, strict=True)), "value": float(np.exp(np.log(series["value"]).mean()))}
              for key, series in ratio_frame.groupby(list(SERIES), sort=True)]
    slopes = []
    for key, series in ratio_frame.groupby(list(SERIES), sort=True):
        if series["n"].nunique() >= 2:
            fit = fit_power_law(series["n"].astype(float), series["value"].astype(float))
            slopes.append({**dict(zip(SERIES, key, strict=True)), "value": fit.exponent})
    return {"ratio": ratio_frame, "shift": pd.DataFrame(shifts, columns=[*SERIES, "value"]),
            "slope": pd.DataFrame(slopes, columns=[*SERIES, "value"]),
            "memory": pd.DataFrame(peaks, columns=[*CONFIG, "value"])}


def deviation(check: str, value: float, centre: float) -> float:
    """How far ``value`` is from ``centre`` in the unit of the check's tolerance: a factor >= 1 for ratios and
    shifts,
    an absolute difference for slopes, a fraction of ``centre`` for memory."""
    if check in ("ratio", "shift"):
        return float(max(value / centre, centre / value))
    if check == "slope":
        return float(abs(value - centre))
    return float(abs(value - centre) / centre) if centre > 0 else float(abs(value - centre) > 0)


def within(check: str, value: float, budget: float, tolerance: float) -> bool:
    """Whether a measured ``value`` is inside the band of ``budget`` +- ``tolerance`` (see ``deviation``)."""
    return deviation(check, value, budget) <= tolerance
