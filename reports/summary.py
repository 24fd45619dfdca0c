"""The text summary printed at the end of a run: times and memory by variant and N, and every non-ok row."""

from __future__ import annotations

import pandas as pd

from bench.scaling import SERIES_COLUMNS


def _series_columns(frame: pd.DataFrame) -> list[str]:
    """The series columns (``bench.scaling.SERIES_COLUMNS``) that vary in this frame, always the variant."""
    return ["variant"] + [c for c in SERIES_COLUMNS if c != "variant" and c in frame and frame[c].nunique() > 1]


def _pivot(frame: pd.DataFrame, value: str, fmt) -> str:
    index = _series_columns(frame)
    table = frame.pivot_table(index=index, columns="n", values=value, aggfunc="first")
    return table.map(lambda x: "" if pd.isna(x) else fmt(x)).to_string()


def summary_text(frame: pd.DataFrame) -> str:
    """Median time (ms), peak memory above inputs (MiB) per variant and N; then statuses and overhead."""
    if frame.empty:
        return "no rows"
    parts = []
    ok = frame[frame["status"] == "ok"]
    if not ok.empty:
        parts.append("median time, ms (p20-p80 in results.csv)\n" + _pivot(ok, "time_median_ms", lambda x: f"{x:.3g}"))
        if ok["peak_mem_bytes"].notna().any():
            parts.append("peak memory above the inputs, MiB\n"
                         + _pivot(ok, "peak_mem_bytes", lambda x: f"{x / 2**20:.1f}"))
        wall, overhead = ok["wall_s"].sum(), ok["overhead_s"].sum()
        parts.append(f"harness overhead (time outside the measured calls): {overhead:.1f} s of {wall:.1f} s "
                     f"({100 * overhead / wall:.1f}%)")
    others = frame[frame["status"] != "ok"]
    if not others.empty:
        lines = [f"{len(others)} configs not measured:"]
        groups = others.fillna({"reason": ""}).groupby(["status", "variant", "reason"], sort=True)["n"]
        for (status, variant, reason), ns in groups:
            sizes = ",".join(str(n) for n in sorted(set(ns)))
            lines.append(f"  {status:<12} {variant:<40} N={sizes}: {reason}")
        parts.append("\n".join(lines))
    counts = frame["status"].value_counts().to_dict()
    parts.append("statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "\n\n".join(parts)
