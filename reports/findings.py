"""The report's opening block: a few sentences written from the data, each saying "not measured" when the
runs hold nothing to say it from. Returns plain text items; ``render`` escapes and lays them out.
"""

from __future__ import annotations

import math

import pandas as pd

from reports import analysis, encodings
from reports.plots import format_tokens


def _tokens(n: float) -> str:
    return format_tokens(float(n))


def _noise(row: pd.Series) -> str:
    """'± 0.116 (3 seeds: seed sd 0.200, SE 0.010)' / '± 0.004 (standard error; one seed)' / '(noise not
    measured: ...)'. The ± is the row's ``error``, the noise of the mean (``encodings.quality``)."""
    if row["seeds"] > 1 and not math.isnan(row["seed sd"]):
        se = f", SE {row['SE']:.3f}" if not math.isnan(row["SE"]) else ""
        return f"± {row['error']:.3f} ({row['seeds']} seeds: seed sd {row['seed sd']:.3f}{se})"
    if not math.isnan(row["SE"]):
        return f"± {row['SE']:.3f} (standard error; one seed)"
    return "(noise not measured: one seed and no standard error in the rows)"


def fastest_items(speed: pd.DataFrame) -> list[str]:
    """Per panel: the fastest variant at the longest N any variant was timed at, and how many were."""
    table = analysis.fastest(speed)
    if table.empty:
        return ["Fastest variant: not measured (no ok speed rows with a time)."]
    keys = [c for c in table.columns if c in analysis.PANEL_BASE + analysis.PANEL_EXTRA]
    items = []
    ok = analysis.ok_rows(speed)
    for key, panel in ([({}, table)] if not keys else
                       [(dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), g)
                        for k, g in table.groupby(keys, sort=True, dropna=False)]):
        last = panel.sort_values("N").iloc[-1]
        rows = ok
        for column, value in key.items():
            rows = rows[rows[column] == value]
        timed = rows[rows["n"] == last["N"]]["variant"].nunique()
        text = (f"{analysis.panel_title(key)}: at N = {_tokens(last['N'])}, the longest timed, the fastest is "
                f"{last['fastest']} ({last['time, ms']:.4g} ms per call)")
        if isinstance(last.get("runner-up"), str):
            text += f"; runner-up {last['runner-up']}, x{last['runner-up / fastest']:.2f} its time"
        text += f"; {timed} of {rows['variant'].nunique()} variants were timed at this N"
        if last.get("high variance"):
            text += f" (high variance: {last['high variance']}; their order may be noise)"
        items.append(text + ".")
    return items


def cost_items(costs: pd.DataFrame) -> list[str]:
    """Per panel and family, each encoding's time and memory over plain attention at the longest N both have."""
    if costs.empty:
        return ["Cost of each encoding: not measured (no encoded variant timed beside its family's plain "
                "attention on the same backend)."]
    keys = [c for c in costs.columns if c in analysis.PANEL_BASE + analysis.PANEL_EXTRA]
    items = []
    grouped = [({}, costs)] if not keys else [
        (dict(zip(keys, k if isinstance(k, tuple) else (k,), strict=True)), g)
        for k, g in costs.groupby(keys, sort=True, dropna=False)]
    for key, group in grouped:
        for reference, lines in group.groupby("reference", sort=True):
            n = lines["N"].max()
            at = lines[lines["N"] == n]
            parts = [f"{row['encoding']} x{row['time ratio']:.2f} time, "
                     + (f"x{row['memory ratio']:.2f} memory" if pd.notna(row["memory ratio"])
                        else "memory not measured")
                     + (" (high variance)" if row["high variance"] else "")
                     for _, row in at.sort_values("time ratio").iterrows()]
            items.append(f"Cost over {reference} at N = {_tokens(n)} ({analysis.panel_title(key)}): "
                         + "; ".join(parts) + ".")
    return items


def crossover_items(speed: pd.DataFrame) -> list[str]:
    cross = analysis.crossovers(speed)
    if cross.empty:
        return ["Crossover with FlashAttention: not measured (needs ok rows of a linear and a flash variant "
                "in one panel)."]
    parts = []
    for _, row in cross.iterrows():
        if pd.notna(row["N*"]):
            parts.append(f"{row['linear variant']} at N* ≈ {row['N*']:.0f} (between the measured "
                         f"{_tokens(row['below'])} and {_tokens(row['above'])})")
        else:
            parts.append(f"{row['linear variant']}: {row['note']}")
    return ["Where linear attention overtakes the best FlashAttention backend: " + "; ".join(parts) + "."]


def _change(row: pd.Series) -> str:
    """', +0.012 ± 0.0031 over its own at the training length' where the rows carry it."""
    if math.isnan(row.get("vs train length", math.nan)):
        return ""
    se = row["vs train length SE"]
    return (f", {row['vs train length']:+.3f}" + (f" ± {se:.2g}" if not math.isnan(se) else "")
            + " over its own at the training length")


def quality_items(frame: pd.DataFrame) -> list[str]:
    """The best and worst extrapolating variants at the longest evaluated length, with their noise."""
    found = encodings.main_quality(frame)
    if found.empty:
        return ["Extrapolation quality: not measured (no extrapolation rows with bits per byte)."]
    first = found.iloc[0]
    where = (f"at evaluation length {_tokens(first['eval_len'])} ({first['protocol']} windows, trained at "
             f"{_tokens(first['train_len'])})" if pd.notna(first["train_len"]) else
             f"at evaluation length {_tokens(first['eval_len'])}")
    if len(found) == 1:
        return [f"Extrapolation {where}: only {first['variant']} was evaluated, "
                f"{first['bits/byte']:.3f} bits/byte {_noise(first)}{_change(first)}."]
    worst = found.iloc[-1]
    text = (f"Extrapolation {where}: best {first['variant']} {first['bits/byte']:.3f} bits/byte {_noise(first)}"
            f"{_change(first)}; worst {worst['variant']} {worst['bits/byte']:.3f} {_noise(worst)}{_change(worst)}")
    gap = worst["bits/byte"] - first["bits/byte"]
    noise = max(first["error"], worst["error"])
    if not math.isnan(noise) and noise > 0:
        text += f"; the gap, {gap:.3f} bits/byte, is {gap / noise:.1f} x the larger noise"
    return [text + "."]


def beyond_items(predictions: pd.DataFrame) -> list[str]:
    """The series predicted fastest at the last target length, flagged as extrapolated."""
    columns = [c for c in predictions.columns if c.startswith("time @ ")]
    if predictions.empty or not columns:
        return ["Beyond the measured range: no prediction (no series with 2 or more lengths)."]
    column = columns[-1]
    target = column.removeprefix("time @ ").removesuffix(", s")
    usable = predictions[predictions[column].notna() & (predictions[column] != "")]
    if usable.empty:
        return ["Beyond the measured range: no prediction (no series with 2 or more lengths)."]
    estimate = usable[column].map(lambda text: float(str(text).split(" ")[0]))
    best = usable.loc[estimate.idxmin()]
    fits = best.get(f"fits memory @ {target}", "")
    text = str(best[column])
    wide = ""
    if "[" in text:  # '3.34 [3.4e-07, 3.28e+07]': an interval over 100x wide says the fit cannot tell
        low, high = (float(x) for x in text.split("[")[1].rstrip("]").split(", "))
        if low > 0 and high / low > 100:
            wide = f"; its interval spans {high / low:.0e} x, so the fit cannot tell"
    return [f"Extrapolated, not measured: at {target} tokens the fit predicts {best['variant']} fastest, "
            f"{text} s per call{wide}"
            + ("; the device's total memory is not recorded, so whether it fits is unknown"
               if fits == "memory not recorded" else f"; fits the device's memory: {fits}" if fits else "")
            + " (see 'Beyond the measured range')."]


def findings(frame: pd.DataFrame, speed: pd.DataFrame, costs: pd.DataFrame,
             predictions: pd.DataFrame) -> list[str]:
    """Every finding, in order: what the runs hold, fastest, cost of each encoding, crossover, extrapolation,
    beyond."""
    if speed.empty:
        speed_items = ["Speed and memory: not measured (no speed rows in these runs)."]
    else:
        speed_items = [*fastest_items(speed), *cost_items(costs), *crossover_items(speed)]
    return [counts_item(frame), *speed_items, *quality_items(frame),
            *(beyond_items(predictions) if not speed.empty else [])]


def counts_item(frame: pd.DataFrame) -> str:
    """'63 rows (63 speed): ok 58, over-budget 5; the 5 not ok are listed under Configs not measured.'"""
    if frame.empty or "status" not in frame:
        return "No rows in these runs."
    tasks = frame["task"].fillna("speed").value_counts() if "task" in frame else pd.Series({"speed": len(frame)})
    statuses = frame["status"].fillna("no status").value_counts()
    text = (f"{len(frame)} rows ({', '.join(f'{count} {task}' for task, count in tasks.items())}): "
            + ", ".join(f"{status} {count}" for status, count in sorted(statuses.items())))
    failed = len(frame) - int(statuses.get("ok", 0))
    return text + (f"; the {failed} not ok are listed with their reasons under 'Configs not measured'." if failed
                   else ".")
