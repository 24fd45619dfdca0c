"""The end-of-run text table: perplexity per variant against eval length, one block per protocol, and the
measured peak memory of the non-overlapping evaluation. Reads the run's frame only."""

from __future__ import annotations

import pandas as pd

SHORT_STATUS = {"over-budget": "budget", "oom": "oom", "error": "error", "unsupported": "unsup",
                "unavailable": "unavail"}


def _cell(row: pd.Series, column: str, scale: float, digits: int) -> str:
    if row["status"] != "ok":
        return SHORT_STATUS.get(str(row["status"]), str(row["status"]))
    value = row.get(column)
    return "-" if pd.isna(value) else f"{value / scale:.{digits}f}"


def _block(frame: pd.DataFrame, title: str, column: str, scale: float = 1.0, digits: int = 2) -> str:
    variants = list(dict.fromkeys(frame["variant"]))
    lengths = sorted(set(int(n) for n in frame["eval_len"]))
    cells = {(r["variant"], int(r["eval_len"])): _cell(r, column, scale, digits) for _, r in frame.iterrows()}
    table = pd.DataFrame([[cells.get((v, n), "") for n in lengths] for v in variants], index=variants,
                         columns=[str(n) for n in lengths])
    table.index.name = title
    return table.to_string()


def extrapolation_table(frame: pd.DataFrame) -> str:
    """Text blocks for the extrapolation rows of ``frame`` (empty string when there are none)."""
    if frame.empty or "task" not in frame:
        return ""
    rows = frame[frame["task"] == "extrapolation"]
    if rows.empty:
        return ""
    train_lens = sorted(set(int(n) for n in rows["train_len"]))
    out = []
    for protocol in dict.fromkeys(rows["protocol"]):
        part = rows[rows["protocol"] == protocol]
        stride = "" if protocol == "non-overlapping" else " (stride = eval length / 2)" if (
            part["stride"] * 2 == part["eval_len"]).all() else " (stride column in the rows)"
        out.append(f"perplexity (bytes), {protocol}{stride}, train length {train_lens}")
        out.append(_block(part, "variant \\ eval length", "perplexity"))
        out.append("")
    part = rows[rows["protocol"] == rows["protocol"].iloc[0]]
    out.append(f"peak memory of the evaluation above the model, MiB ({part['protocol'].iloc[0]})")
    out.append(_block(part, "variant \\ eval length", "peak_mem_bytes", scale=2**20, digits=1))
    out.append("budget: over-budget (prediction in the row's reason); oom: out of memory")
    return "\n".join(out)
