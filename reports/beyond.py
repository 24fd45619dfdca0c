"""Beyond the measured range: time and peak memory per scaling series predicted at lengths no run reached,
by the power law of ``bench.scaling`` (the fit the CI gate uses too). Every number here is extrapolated.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.scaling import SERIES_COLUMNS, fit_frame
from reports import analysis

TARGETS = (128 * 1024, 1024 * 1024)
"""The lengths the report predicts at, tokens: 128k and 1M."""

BYTES_PER_ELEMENT = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def _inputs_bytes(key: dict, n: int, batch: int) -> float:
    """q, k and v: 3 x batch x heads x N x D elements (missing heads or dtype: NaN)."""
    size = BYTES_PER_ELEMENT.get(str(key.get("dtype")))
    heads, d = key.get("heads"), key.get("d")
    if size is None or heads is None or d is None:
        return math.nan
    return 3.0 * batch * heads * n * d * size


def predictions(frame: pd.DataFrame, memory: dict[str, int], targets: tuple[int, ...] = TARGETS) -> pd.DataFrame:
    """Per series (``bench.scaling.series_key``) of ok speed rows with time fits: the fitted exponent of
    time and of peak memory (95% interval), and at each target N the predicted time (s) and peak (GiB) with
    their 95% intervals, and whether it fits the device's memory (``memory``: device name -> bytes):
    'yes' when the interval's top plus the inputs (q, k, v) fits, 'no' when the estimate plus the inputs does
    not, 'uncertain' between, and 'memory not recorded' without a total. Values are per sequence when the
    batch varies (then the inputs are of one sequence), else per call at the measured batch."""
    ok = analysis.ok_rows(frame)
    columns = [c for c in SERIES_COLUMNS if c in ok]
    time_fits = {key: (fit, note) for key, fit, note in fit_frame(ok, "time_median_ms", columns=columns)}
    peak_fits = {key: (fit, note) for key, fit, note in fit_frame(ok, "peak_mem_bytes", columns=columns)}
    shown = ["variant"] + [c for c in columns if c != "variant" and ok[c].nunique(dropna=True) > 1]
    rows = []
    for key, (time_fit, note) in time_fits.items():
        named = dict(zip(columns, key, strict=True))
        series = ok
        for column, value in named.items():
            series = series[series[column].isna()] if value is None else series[series[column] == value]
        batches = series["batch"].dropna().unique() if "batch" in series else []
        batch = int(batches[0]) if len(batches) == 1 else 1
        peak_fit = peak_fits.get(key, (None, ""))[0]
        row = {c: named[c] for c in shown}
        row["measured N"] = f"{int(series['n'].min())}..{int(series['n'].max())}"
        if time_fit is None:
            row["note"] = note
            rows.append(row)
            continue
        row["fitted from N"] = f"{int(time_fit.lengths[0])}..{int(time_fit.lengths[-1])} ({time_fit.points} points)"
        row["time exponent"] = _interval(time_fit.exponent, time_fit.low, time_fit.high, "{:.2f}")
        row["memory exponent"] = (_interval(peak_fit.exponent, peak_fit.low, peak_fit.high, "{:.2f}")
                                  if peak_fit else "no fit")
        total = memory.get(str(named.get("device_name"))) if named.get("device_name") else None
        if total is None and len(memory) == 1:
            total = next(iter(memory.values()))
        for target in targets:
            label = _tokens(target)
            at = time_fit.predict(target)
            row[f"time @ {label}, s"] = _interval(at.estimate / 1e3, at.low / 1e3, at.high / 1e3, "{:.3g}")
            if peak_fit is None:
                row[f"peak @ {label}, GiB"] = row[f"fits memory @ {label}"] = ""
                continue
            peak = peak_fit.predict(target)
            row[f"peak @ {label}, GiB"] = _interval(peak.estimate / 2**30, peak.low / 2**30, peak.high / 2**30,
                                                    "{:.3g}")
            row[f"fits memory @ {label}"] = _fits(peak.estimate, peak.high, _inputs_bytes(named, target, batch), total)
        rows.append(row)
    return pd.DataFrame(rows)


def _tokens(n: int) -> str:
    return f"{n // 2**20}M" if n % 2**20 == 0 else f"{n // 1024}k"


def _interval(estimate: float, low: float, high: float, fmt: str) -> str:
    """'1.23 [1.1, 1.4]' (estimate [95% interval]); the estimate alone when there is no interval (two points)."""
    text = fmt.format(estimate)
    if math.isnan(low) or math.isnan(high):
        return text + " (2 points: no interval)"
    return f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def _fits(estimate: float, high: float, inputs: float, total: int | None) -> str:
    if total is None:
        return "memory not recorded"
    inputs = 0.0 if math.isnan(inputs) else inputs
    of = f"of {total / 2**30:.3g} GiB"
    if not math.isnan(high) and high + inputs <= total:
        return f"yes ({of})"
    if estimate + inputs > total:
        return f"no ({of})"
    return f"uncertain ({of})"
