"""The numbers a report states, computed from a run frame: fastest variants, crossovers, slopes, comparisons.

Every function takes the frame as stored (``bench.record`` columns, any of them possibly missing) and
returns a plain DataFrame; nothing here draws or formats.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.scaling import PowerLawFit, fit_power_law

PANEL_BASE = ["d", "pass"]
PANEL_EXTRA = ["device_name", "dtype", "causal", "heads"]
"""A panel is one (D, pass); device, dtype, causal mask or head count join the panel key when they vary."""

TIME_REGRESSION = 1.10
TIME_IMPROVEMENT = 0.90
MEMORY_REGRESSION = 1.05
MEMORY_IMPROVEMENT = 0.95
"""--compare colours a config whose new/old ratio is above the regression or below the improvement bound."""


def has(frame: pd.DataFrame, *columns: str) -> bool:
    """Whether every column exists and has at least one value."""
    return all(c in frame and frame[c].notna().any() for c in columns)


def ok_rows(frame: pd.DataFrame, task: str = "speed") -> pd.DataFrame:
    """Rows with status ok of ``task`` (rows without a task column are speed rows)."""
    if frame.empty or "status" not in frame:
        return frame.iloc[0:0]
    mask = frame["status"] == "ok"
    if "task" in frame:
        mask &= frame["task"].fillna("speed") == task
    return frame[mask.fillna(False)]


def panel_columns(frame: pd.DataFrame) -> list[str]:
    """The columns that key a panel: D and pass (when present) plus those of PANEL_EXTRA that vary."""
    base = [c for c in PANEL_BASE if c in frame]
    return base + [c for c in PANEL_EXTRA if c in frame and frame[c].nunique(dropna=True) > 1]


def panels(frame: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """The frame split into panels, each with its key as a dict, sorted by key."""
    keys = panel_columns(frame)
    if frame.empty:
        return []
    if not keys:
        return [({}, frame)]
    out = []
    for values, group in frame.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((dict(zip(keys, values, strict=True)), group))
    return out


def panel_title(key: dict) -> str:
    """'D = 64, fwd' style title of a panel key."""
    parts = []
    for name, value in key.items():
        if name == "d":
            parts.append(f"D = {value}")
        elif name == "causal":
            parts.append("causal" if value else "full mask")
        elif name == "heads":
            parts.append(f"H = {value}")
        else:
            parts.append(str(value))
    return ", ".join(parts) or "all rows"


def series(panel: pd.DataFrame, value: str) -> dict[str, pd.DataFrame]:
    """Per variant, the ok rows with ``value`` set, one per N (the last stored wins), sorted by N."""
    out = {}
    if not has(panel, "variant", "n", value):
        return out
    usable = panel[panel["n"].notna() & panel[value].notna() & panel["variant"].notna()]
    for variant, rows in usable.groupby("variant", sort=True):
        out[str(variant)] = rows.drop_duplicates(subset="n", keep="last").sort_values("n")
    return out


def batch_varies(frame: pd.DataFrame) -> bool:
    """Whether the ok speed rows have more than one batch size (a preset with ``tokens_per_batch`` holds
    batch x N constant, so the batch shrinks as N grows)."""
    ok = ok_rows(frame)
    return "batch" in ok and ok["batch"].nunique(dropna=True) > 1


def per_sequence(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` divided by the batch size when the batch varies (see ``batch_varies``), else the frame as it
    is. With batch x N held constant a linear kernel's time per call is flat in N and a quadratic one's grows
    as N: per sequence, their scaling in N shows again (slopes about 1 and 2)."""
    if not batch_varies(frame):
        return frame
    out = frame.copy()
    for column in columns:
        if column in out:
            out[column] = out[column] / out["batch"]
    return out


def fit(n: pd.Series | np.ndarray, y: pd.Series | np.ndarray) -> PowerLawFit | None:
    """The power-law fit of ``bench.scaling`` (over the upper half of the lengths, see
    ``bench.scaling.upper_lengths``) of the positive finite points; None with fewer than 2 distinct N."""
    n = np.asarray(n, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = (n > 0) & (y > 0) & np.isfinite(n) & np.isfinite(y)
    if len(np.unique(n[keep])) < 2:
        return None
    return fit_power_law(n[keep], y[keep])


def slopes(frame: pd.DataFrame, value: str = "time_median_ms") -> pd.DataFrame:
    """Fitted log-log slope of ``value`` (per sequence when the batch varies, see ``per_sequence``) against N
    per panel and variant (see ``fit``), with its 95% interval (none from 2 points)."""
    rows = []
    for key, panel in panels(per_sequence(ok_rows(frame), [value])):
        for variant, line in series(panel, value).items():
            found = fit(line["n"], line[value])
            rows.append({**key, "variant": variant, "points": len(line),
                         "slope": found.exponent if found else math.nan,
                         "95% interval": (f"{found.low:.2f} to {found.high:.2f}" if found and not math.isnan(found.low)
                                          else ""),
                         "fitted from N": int(found.lengths[0]) if found else None})
    return pd.DataFrame(rows)


def fastest(frame: pd.DataFrame) -> pd.DataFrame:
    """At each (panel, N): the fastest ok variant by median time, its time, and the runner-up with the
    runner-up's time as a multiple of the fastest; ``high variance`` names those of the two whose timing is
    flagged ``high_variance`` (their order may be noise)."""
    rows = []
    for key, panel in panels(ok_rows(frame)):
        if not has(panel, "n", "variant", "time_median_ms"):
            continue
        timed = panel[panel["time_median_ms"].notna()]
        for n, at_n in timed.groupby("n", sort=True):
            at_n = at_n.sort_values("time_median_ms")
            best = at_n.drop_duplicates("variant")  # each variant's fastest row
            row = {**key, "N": int(n), "fastest": best["variant"].iloc[0], "time, ms": best["time_median_ms"].iloc[0]}
            if len(best) > 1:
                row["runner-up"] = best["variant"].iloc[1]
                row["runner-up / fastest"] = best["time_median_ms"].iloc[1] / best["time_median_ms"].iloc[0]
            top = best.iloc[:2]
            noisy = (top["high_variance"].astype("boolean").fillna(False).astype(bool) if "high_variance" in top
                     else pd.Series(False, index=top.index))
            row["high variance"] = ", ".join(top.loc[noisy, "variant"].astype(str))
            rows.append(row)
    return pd.DataFrame(rows)


THROUGHPUT = ("tflops", "gbps", "tokens_per_s", "frac_matmul_ceiling", "frac_copy_ceiling")


def best_throughput(frame: pd.DataFrame) -> pd.DataFrame:
    """Per panel and variant, the largest of each THROUGHPUT column over N (each column's own best row)."""
    rows = []
    for key, panel in panels(ok_rows(frame)):
        wanted = [c for c in THROUGHPUT if c in panel]
        if not wanted or not has(panel, "variant"):
            continue
        for variant, line in panel.groupby("variant", sort=True):
            rows.append({**key, "variant": variant, **line[wanted].max().to_dict()})
    return pd.DataFrame(rows)


def _interpolate_crossing(n_lo: float, r_lo: float, n_hi: float, r_hi: float) -> float:
    """N where log(ratio) reaches 0, on the straight line through (log N, log ratio) at both points."""
    x_lo, x_hi, y_lo, y_hi = math.log(n_lo), math.log(n_hi), math.log(r_lo), math.log(r_hi)
    return math.exp(x_lo + (0.0 - y_lo) * (x_hi - x_lo) / (y_hi - y_lo))


def crossover(linear: pd.Series, flash: pd.Series) -> dict:
    """Where ``linear`` (median ms by N) overtakes ``flash`` (best FlashAttention ms by N).

    Over the N both have, ratio = linear / flash. The crossover is the last place the ratio goes from
    >= 1 to < 1 (linear faster from there on, within the range): N* interpolated in log-log between the
    two measured points either side, which are returned too. Otherwise N* is None and ``note`` says why.
    """
    common = linear.index.intersection(flash.index).sort_values()
    if len(common) == 0:
        return {"N*": None, "note": "no N measured for both"}
    ratio = (linear[common] / flash[common]).astype(float)
    faster = ratio < 1
    lo_n, hi_n = int(common[0]), int(common[-1])
    if faster.all():
        return {"N*": None, "note": f"not within the measured range: linear faster at every measured N "
                                    f"({lo_n}..{hi_n})"}
    if not faster.iloc[-1]:
        return {"N*": None, "note": f"not within the measured range: linear not faster at N = {hi_n}, the "
                                    f"largest N measured for both"}
    last_slow = int(np.flatnonzero(~faster.to_numpy())[-1])
    a, b = common[last_slow], common[last_slow + 1]
    n_star = _interpolate_crossing(a, ratio[a], b, ratio[b])
    return {"N*": n_star, "note": "",
            "below": int(a), "linear ms below": float(linear[a]), "flash ms below": float(flash[a]),
            "above": int(b), "linear ms above": float(linear[b]), "flash ms above": float(flash[b])}


def crossovers(frame: pd.DataFrame) -> pd.DataFrame:
    """Per panel and linear variant, its crossover against the best FlashAttention backend at each N."""
    ok = ok_rows(frame)
    if not has(ok, "family", "variant", "n", "time_median_ms"):
        return pd.DataFrame()
    rows = []
    for key, panel in panels(ok):
        timed = panel[panel["time_median_ms"].notna()]
        flash_rows = timed[timed["family"] == "flash"]
        if flash_rows.empty:
            continue
        best_flash = flash_rows.groupby("n")["time_median_ms"].min()
        best_name = flash_rows.loc[flash_rows.groupby("n")["time_median_ms"].idxmin()].set_index("n")["variant"]
        for variant, line in timed[timed["family"] == "linear"].groupby("variant", sort=True):
            found = crossover(line.groupby("n")["time_median_ms"].min(), best_flash)
            for side in ("below", "above"):
                if side in found:
                    found[f"flash backend {side}"] = best_name[found[side]]
            rows.append({**key, "linear variant": variant, **found})
    return pd.DataFrame(rows)


def compare(new: pd.DataFrame, old: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Match configs by ``key`` (and device name when both have it): (matched, only in one).

    matched: key, variant, N, both statuses, both median times, ``time ratio`` new/old (none between two
    different timers, then named in ``timers``), ``high variance``
    (which side's timing is flagged so: new, baseline, both or empty), both peaks, the peak change in MiB and
    ``memory ratio``, and a verdict (regression, improvement or empty) for time and
    memory by the bounds above, and for the status (ok -> not ok is a regression, the reverse an improvement).
    only in one: key, variant, N, status, and which run has it.
    """
    match = ["key"] + (["device_name"] if "device_name" in new and "device_name" in old else [])
    wanted = ["variant", "n", "status", "time_median_ms", "timer", "high_variance", "peak_mem_bytes"]

    def configs(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty or "key" not in frame:  # a run with no rows: every config of the other is in one only
            return pd.DataFrame({c: pd.Series(dtype=object) for c in match + wanted})
        return frame.drop_duplicates(match, keep="last").reindex(columns=match + wanted)

    left, right = configs(new), configs(old)
    if left.empty and right.empty:
        return pd.DataFrame(), pd.DataFrame()
    both = left.merge(right, on=match, how="outer", suffixes=(" new", " old"), indicator=True)
    matched = both[both["_merge"] == "both"].copy()
    out = pd.DataFrame({
        "key": matched["key"], "variant": matched["variant new"], "N": matched["n new"],
        "status old": matched["status old"], "status new": matched["status new"],
        "time old, ms": matched["time_median_ms old"], "time new, ms": matched["time_median_ms new"],
    })
    # Times from different clocks are not comparable (a gate round's CPU time counts every thread; do_bench
    # flushes L2 where a CUDA-event clock does not): no ratio for them, and the table names both clocks.
    timer_old, timer_new = matched["timer old"].astype(object), matched["timer new"].astype(object)
    clocks_differ = (timer_old.notna() & timer_new.notna() & (timer_old != timer_new)).astype(bool)
    out["time ratio"] = (out["time new, ms"] / out["time old, ms"]).where(~clocks_differ)
    if clocks_differ.any():
        out["timers"] = (timer_old + " -> " + timer_new).where(clocks_differ, "")
    # A timing whose IQR is above 10% of its median can move by the colouring bounds on noise alone.
    noisy_new = matched["high_variance new"].astype("boolean").fillna(False).astype(bool) & out["time new, ms"].notna()
    noisy_old = matched["high_variance old"].astype("boolean").fillna(False).astype(bool) & out["time old, ms"].notna()
    out["high variance"] = np.select([noisy_new & noisy_old, noisy_new, noisy_old], ["both", "new", "baseline"], "")
    mib = 2.0**20
    out["peak old, MiB"] = matched["peak_mem_bytes old"] / mib
    out["peak new, MiB"] = matched["peak_mem_bytes new"] / mib
    out["peak change, MiB"] = out["peak new, MiB"] - out["peak old, MiB"]
    out["memory ratio"] = out["peak new, MiB"] / out["peak old, MiB"].where(out["peak old, MiB"] > 0)
    out["time verdict"] = _verdicts(out["time ratio"], TIME_REGRESSION, TIME_IMPROVEMENT)
    out["memory verdict"] = _verdicts(out["memory ratio"], MEMORY_REGRESSION, MEMORY_IMPROVEMENT)
    was_ok, is_ok = out["status old"] == "ok", out["status new"] == "ok"
    out["status verdict"] = ""
    out.loc[was_ok & ~is_ok, "status verdict"] = "regression"
    out.loc[~was_ok & is_ok, "status verdict"] = "improvement"
    lone = both[both["_merge"] != "both"]
    only = pd.DataFrame({
        "key": lone["key"],
        "variant": lone["variant new"].fillna(lone["variant old"]),
        "N": lone["n new"].fillna(lone["n old"]),
        "status": lone["status new"].fillna(lone["status old"]),
        "only in": lone["_merge"].map({"left_only": "new runs", "right_only": "baseline"}).astype(str),
    })
    return (out.sort_values(["variant", "N", "key"]).reset_index(drop=True),
            only.sort_values(["variant", "N", "key"]).reset_index(drop=True))


def _verdicts(ratio: pd.Series, regression: float, improvement: float) -> pd.Series:
    verdict = pd.Series("", index=ratio.index, dtype=object)
    verdict[ratio > regression] = "regression"
    verdict[ratio < improvement] = "improvement"
    return verdict
