"""The end-of-run text table: bits per byte per variant against eval length with its noise, one block per
protocol; the change from the train length; each encoding against its family's attention without positions;
the seed spread where there is more than one seed; the measured peak memory and the scoring rate. Marks (``*``)
say which differences exceed the noise (``bench.extrapolation.noise``). Reads the run's frame only."""

from __future__ import annotations

import math

import pandas as pd

from bench.extrapolation.noise import exceeds, reference_variant, summarise

SHORT_STATUS = {"over-budget": "budget", "oom": "oom", "error": "error", "unsupported": "unsup",
                "unavailable": "unavail"}
FAMILY_ORDER = {"softmax": 0, "flash": 1, "linear": 2}


def _order(rows: pd.DataFrame) -> list[str]:
    """Variants by family, the one without positions first, then by name."""
    first = rows.drop_duplicates("variant")
    keyed = sorted(zip(first["family"], first["pe"], first["variant"], strict=True),
                   key=lambda t: (FAMILY_ORDER.get(t[0], 9), t[1] != "none", t[2]))
    return [v for _, _, v in keyed]


def _pm(value: float, noise: float, signed: bool = False) -> str:
    text = f"{value:+.2f}" if signed else f"{value:.2f}"
    return text if pd.isna(noise) else f"{text}±{noise:.2f}"


def _grid(index: list[str], columns: list[str], cells: dict[tuple[str, str], str], title: str) -> str:
    table = pd.DataFrame([[cells.get((v, c), "") for c in columns] for v in index], index=index, columns=columns)
    table.index.name = title
    return table.to_string()


def _status_cells(part: pd.DataFrame) -> dict[tuple[str, str], str]:
    """Cells of configs with no ok row in any seed: their status."""
    cells = {}
    for (variant, n), group in part.groupby(["variant", "eval_len"]):
        if not (group["status"] == "ok").any():
            status = str(group["status"].iloc[0])
            cells[variant, str(int(n))] = SHORT_STATUS.get(status, status)
    return cells


def _protocol_block(part: pd.DataFrame, summary: pd.DataFrame, protocol: str) -> list[str]:
    variants = _order(part)
    lengths = sorted(set(int(n) for n in part["eval_len"]))
    train_len = int(part["train_len"].iloc[0])
    seeds = int(part["seed"].nunique()) if "seed" in part else 1
    scored = part.loc[part["status"] == "ok", "tokens_scored"]
    stride = "" if protocol == "non-overlapping" else " (stride = eval length / 2)" if (
        part["stride"] * 2 == part["eval_len"]).all() else " (stride column in the rows)"
    noise_text = ("± standard error over blocks of 1,024 scored bytes" if seeds == 1 else
                  f"± sqrt(SE^2 + seed sd^2 / {seeds}): sampling (blocks of 1,024 bytes) and training ({seeds} seeds)")
    lines = [f"bits per byte, {protocol}{stride}, train length {train_len}, "
             f"{int(scored.min()) if len(scored) else 0} scored bytes per length, "
             f"{seeds} seed{'s' if seeds > 1 else ''} (mean over seeds); {noise_text}"]
    mine = summary[summary["protocol"] == protocol]
    cells = _status_cells(part)
    for r in mine.itertuples():
        cells[r.variant, str(int(r.eval_len))] = _pm(r.bpb, r.noise)
    longest = max(lengths)
    delta_col = f"{longest} vs {train_len}"
    for r in mine[mine["eval_len"] == longest].itertuples():
        if longest != train_len and not pd.isna(r.delta):
            mark = {True: " *", False: "", None: " ?"}[exceeds(r.delta, r.delta_noise)]
            cells[r.variant, delta_col] = _pm(r.delta, r.delta_noise, signed=True) + mark
    columns = [str(n) for n in lengths] + ([delta_col] if longest != train_len else [])
    lines.append(_grid(variants, columns, cells, "variant \\ eval length"))
    if longest != train_len:
        caveat = "" if seeds > 1 else (" (sampling only: one seed, so the training noise is not in it; "
                                       "docs/extrapolation.md has a measured seed spread)")
        lines.append(f"'{delta_col}': change from the train length, paired over the same bytes; * exceeds "
                     f"2 x its noise{caveat}")
    lines += ["", *_reference_block(mine, variants, train_len, longest)]
    if seeds > 1:
        spread = {(r.variant, str(int(r.eval_len))): ("-" if pd.isna(r.seed_sd) else f"{r.seed_sd:.3f}")
                  for r in mine.itertuples()}
        lines += ["", f"seed spread: standard deviation of bits per byte over the {seeds} seeds",
                  _grid(variants, [str(n) for n in lengths], spread, "variant \\ eval length")]
    return lines


def _reference_block(mine: pd.DataFrame, variants: list[str], train_len: int, longest: int) -> list[str]:
    """Each encoding minus its family's attention without positions, at L and at the longest length."""
    present = set(mine["variant"])
    by_key = {(r.variant, int(r.eval_len)): r for r in mine.itertuples()}
    cells: dict[tuple[str, str], str] = {}
    references: set[str] = set()
    lengths = [train_len] if longest == train_len else [train_len, longest]
    for variant in variants:
        row = next((r for (v, _), r in by_key.items() if v == variant), None)
        if row is None or (ref := reference_variant(row.family, row.pe, present)) is None:
            continue
        references.add(ref)
        for n in lengths:
            mine_r, ref_r = by_key.get((variant, n)), by_key.get((ref, n))
            if mine_r is None or ref_r is None:
                cells[variant, f"at {n}"] = "not measured"
                continue
            gap = mine_r.bpb - ref_r.bpb
            noise = math.sqrt(sum(x * x for x in (mine_r.noise, ref_r.noise) if not pd.isna(x)))
            mark = {True: " *", False: "", None: " ?"}[exceeds(gap, mine_r.noise, ref_r.noise)]
            cells[variant, f"at {n}"] = _pm(gap, noise, signed=True) + mark
    if not cells:
        return []
    rows = [v for v in variants if any(k[0] == v for k in cells)]
    return [f"against the family's attention without positions ({', '.join(sorted(references))}), bits per byte; "
            f"* exceeds 2 x the noise of the difference (unpaired: conservative)",
            _grid(rows, [f"at {n}" for n in lengths], cells, "variant \\ eval length")]


def _memory_block(part: pd.DataFrame) -> list[str]:
    if "peak_mem_bytes" not in part or part["peak_mem_bytes"].isna().all():
        return []
    first = part[part["seed"] == part["seed"].min()] if "seed" in part else part
    variants, lengths = _order(first), sorted(set(int(n) for n in first["eval_len"]))
    cells = _status_cells(first)
    for r in first[first["status"] == "ok"].itertuples():
        if not pd.isna(r.peak_mem_bytes):
            cells[r.variant, str(int(r.eval_len))] = f"{r.peak_mem_bytes / 2**20:.1f}"
    return [f"peak memory of one forward of the scoring pass's largest batch, above the model, MiB "
            f"({part['protocol'].iloc[0]}; the eval_backend column names what ran)",
            _grid(variants, [str(n) for n in lengths], cells, "variant \\ eval length")]


def _rate_lines(rows: pd.DataFrame) -> list[str]:
    ok = rows[(rows["status"] == "ok")]
    if ok.empty or "eval_wall_s" not in ok:
        return []
    lines = []
    for label, mask in (("every variant", ok["variant"].notna()),
                        ("variants without SPE", ~ok["pe"].astype(str).str.startswith("spe"))):
        part = ok[mask]
        if part.empty:
            continue
        seconds = part["eval_wall_s"].sum()
        lines.append(f"scoring passes, {label}: {int(part['tokens_scored'].sum())} scored bytes in {seconds:.1f} s "
                     f"({part['tokens_scored'].sum() / seconds:,.0f} scored bytes/s per training, one process each)")
    return lines


def extrapolation_table(frame: pd.DataFrame) -> str:
    """Text blocks for the extrapolation rows of ``frame`` (empty string when there are none)."""
    if frame.empty or "task" not in frame:
        return ""
    rows = frame[frame["task"] == "extrapolation"]
    if rows.empty:
        return ""
    summary = summarise(rows)
    out = []
    for protocol in dict.fromkeys(rows["protocol"]):
        out += _protocol_block(rows[rows["protocol"] == protocol], summary, protocol)
        out.append("")
    out += _memory_block(rows[rows["protocol"] == rows["protocol"].iloc[0]])
    out += _rate_lines(rows)
    out.append("budget: over-budget (prediction in the row's reason); oom: out of memory; ?: noise unknown")
    return "\n".join(out)
