"""What an encoding costs and what it buys: time and memory over the family's plain attention, quality by
bits per byte, and the two side by side. Plain DataFrames out; nothing here draws or formats.

Names follow the registry's ``<family>[-<encoding>]@<backend>`` (``bench.record``'s ``variant`` column);
``pe`` is the stored positional encoding, ``none`` for plain attention.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bench.extrapolation import noise
from reports import analysis

CONFIG = ["device_name", "pass", "dtype", "causal", "d", "heads", "batch", "n"]
"""What must match between an encoded variant's row and its plain reference's row besides family and
backend (the columns a frame lacks are left out)."""

LN2 = math.log(2.0)


def parse_variant(name: str) -> tuple[str, str, str]:
    """(family, encoding, backend) of a registry name: 'linear-lrpe-unitary-householder@triton' ->
    ('linear', 'lrpe-unitary-householder', 'triton'); the encoding is 'none' for plain attention."""
    body, _, backend = str(name).partition("@")
    family, _, encoding = body.partition("-")
    return family, encoding or "none", backend


def encoding_costs(frame: pd.DataFrame) -> pd.DataFrame:
    """Per ok speed row of an encoded variant: its median time and peak memory over those of its family's
    plain attention on the same backend at the same config (CONFIG), e.g. linear-rope@torch-chunked over
    linear@torch-chunked, softmax-rope@naive over softmax@naive.

    Columns: the panel columns present, N, variant, encoding, reference, time ratio, memory ratio (NaN when
    the reference's peak is 0), ``high variance`` (which of the two timings has an IQR above 10% of its
    median). Rows without a plain reference at that config are left out (see ``missing_references``)."""
    ok = analysis.ok_rows(frame)
    if not analysis.has(ok, "variant", "n", "time_median_ms"):
        return pd.DataFrame()
    ok = ok.assign(**dict(zip(("_family", "_encoding", "_backend"),
                              zip(*ok["variant"].astype(str).map(parse_variant), strict=True), strict=True)))
    match = [c for c in CONFIG if c in ok] + ["_family", "_backend"]
    plain = ok[ok["_encoding"] == "none"].drop_duplicates(match, keep="last")
    encoded = ok[ok["_encoding"] != "none"]
    if plain.empty or encoded.empty:
        return pd.DataFrame()
    wanted = [*match, "variant", "time_median_ms", "peak_mem_bytes", "high_variance"]
    joined = encoded.reindex(columns=[*wanted, "_encoding"]).merge(
        plain.reindex(columns=wanted), on=match, suffixes=("", " ref"))
    if joined.empty:
        return pd.DataFrame()
    keys = [c for c in analysis.panel_columns(ok) if c in joined]
    noisy = joined["high_variance"].astype("boolean").fillna(False).astype(bool)
    noisy_ref = joined["high_variance ref"].astype("boolean").fillna(False).astype(bool)
    ref_peak = joined["peak_mem_bytes ref"].astype(float)
    out = joined[keys].copy()
    out["N"] = joined["n"].astype(int)
    out["variant"] = joined["variant"].astype(str)
    out["encoding"] = joined["_encoding"].astype(str)
    out["reference"] = joined["variant ref"].astype(str)
    out["time ratio"] = joined["time_median_ms"].astype(float) / joined["time_median_ms ref"].astype(float)
    out["memory ratio"] = joined["peak_mem_bytes"].astype(float) / ref_peak.where(ref_peak > 0)
    out["high variance"] = np.select([noisy & noisy_ref, noisy, noisy_ref], ["both", "encoded", "reference"], "")
    return out.sort_values([*keys, "variant", "N"]).reset_index(drop=True)


def _longest(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["eval_len"] == rows["eval_len"].max()]


def quality(frame: pd.DataFrame) -> pd.DataFrame:
    """Bits per byte of each extrapolation variant at the longest evaluation length every one of them
    reached, per (protocol, train length).

    Columns: protocol, train_len, eval_len, variant, bits/byte (mean over seeds), SE (the rows' sampling
    error, the mean of their ``bits_per_byte_se``, or ``loss_se_nats`` / ln 2: every seed is scored on the
    same bytes, so averaging seeds does not shrink it; NaN when the rows have neither), seeds, seed sd
    (standard deviation over seeds, ddof 1; NaN with one seed), error (the noise of the mean,
    ``bench.extrapolation.noise.combined_noise``: sqrt(SE^2 + seed sd^2 / seeds), the one rule the run's own
    table uses), vs train length and its SE (mean over seeds of ``bpb_vs_train_len``, the change from the same
    model's bits per byte at the training length, and the mean of its paired SE; NaN where the rows lack it).
    Sorted best first within each (protocol, train length)."""
    ok = analysis.ok_rows(frame, "extrapolation")
    if not analysis.has(ok, "variant", "eval_len", "bits_per_byte"):
        return pd.DataFrame()
    ok = ok[ok["bits_per_byte"].notna() & ok["eval_len"].notna()].copy()
    # Per row: its bits_per_byte_se, else its loss_se converted (a frame may join runs that store either).
    direct = ok["bits_per_byte_se"].astype(float) if "bits_per_byte_se" in ok else pd.Series(math.nan, ok.index)
    loss_se = next((c for c in ("loss_se_nats", "loss_se") if c in ok), None)
    converted = ok[loss_se].astype(float) / LN2 if loss_se else pd.Series(math.nan, ok.index)
    ok["_se"] = direct.fillna(converted)
    for column in ("bpb_vs_train_len", "bpb_vs_train_len_se"):
        ok[column] = ok[column].astype(float) if column in ok else math.nan
    ok["_seed"] = ok["seed"].astype("Int64").fillna(-1) if "seed" in ok else -1
    for column in ("protocol", "train_len"):
        ok[column] = ok.get(column, None)
    rows = []
    for (protocol, train_len), group in ok.groupby(["protocol", "train_len"], dropna=False, sort=True):
        # The longest length every variant of the group was evaluated at: a comparison at one length.
        reached = group.groupby("variant")["eval_len"].max()
        length = reached.min()
        at = group[group["eval_len"] == length].drop_duplicates(["variant", "_seed"], keep="last")
        for variant, seeds in at.groupby("variant", sort=True):
            bpb = seeds["bits_per_byte"].astype(float)
            se = seeds["_se"].astype(float)
            sd = float(bpb.std(ddof=1)) if len(bpb) > 1 else math.nan
            sampling = float(se.mean()) if se.notna().all() else math.nan
            change, change_se = seeds["bpb_vs_train_len"], seeds["bpb_vs_train_len_se"]
            rows.append({"protocol": protocol, "train_len": train_len, "eval_len": int(length), "variant": variant,
                         "bits/byte": float(bpb.mean()), "SE": sampling, "seeds": len(bpb), "seed sd": sd,
                         "error": noise.combined_noise(sampling, sd, len(bpb)),
                         "vs train length": float(change.mean()) if change.notna().all() else math.nan,
                         "vs train length SE": float(change_se.mean()) if change_se.notna().all() else math.nan})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    return out.sort_values(["protocol", "train_len", "bits/byte"], na_position="last").reset_index(drop=True)


def main_quality(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``quality`` a summary states: the non-overlapping protocol where there is one (every byte
    scored once), and the longest training length."""
    found = quality(frame)
    if found.empty:
        return found
    protocols = found["protocol"].dropna().unique().tolist()
    if "non-overlapping" in protocols:
        found = found[found["protocol"] == "non-overlapping"]
    if found["train_len"].notna().any():
        found = found[found["train_len"] == found["train_len"].max()]
    return found.reset_index(drop=True)


def speed_quality(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One row per variant that has both speed rows and extrapolation rows (matched by variant name): its
    median time (with p20, p80) and peak memory at the largest N that every such variant was measured at
    in the first speed panel, beside its ``main_quality`` bits per byte and error; with a note naming the
    panel and N, or why there is no table. The Pareto columns mark the variants no other beats on both time
    (or peak memory) and bits per byte (lower is better for both)."""
    found = main_quality(frame)
    speed = analysis.ok_rows(frame)
    if found.empty or not analysis.has(speed, "variant", "n", "time_median_ms"):
        return pd.DataFrame(), "needs speed rows and extrapolation rows with bits per byte"
    both = sorted(set(found["variant"]) & set(speed["variant"].astype(str)))
    if not both:
        return pd.DataFrame(), ("no variant has both speed and extrapolation rows (speed: "
                                f"{sorted(set(speed['variant'].astype(str)))}; extrapolation: "
                                f"{sorted(set(found['variant']))})")
    key, panel = analysis.panels(speed[speed["variant"].isin(both)])[0]
    panel = panel[panel["time_median_ms"].notna()]
    counts = panel.groupby("n")["variant"].nunique()
    n = int(counts[counts == counts.max()].index.max())  # every variant there when any N has them all
    at = panel[panel["n"] == n].drop_duplicates("variant", keep="last").set_index("variant")
    quality_by = found.set_index("variant")
    rows = []
    for variant in both:
        if variant not in at.index:
            continue
        row = at.loc[variant]
        rows.append({"variant": variant, "encoding": parse_variant(variant)[1], "N": n,
                     "time, ms": float(row["time_median_ms"]),
                     "time p20, ms": float(row.get("time_p20_ms", math.nan)),
                     "time p80, ms": float(row.get("time_p80_ms", math.nan)),
                     "peak, MiB": float(row.get("peak_mem_bytes", math.nan)) / 2**20,
                     "bits/byte": quality_by.loc[variant, "bits/byte"], "error": quality_by.loc[variant, "error"]})
    out = pd.DataFrame(rows)
    out["Pareto, time"] = pareto(out["time, ms"], out["bits/byte"])
    out["Pareto, memory"] = pareto(out["peak, MiB"], out["bits/byte"])
    length = int(found["eval_len"].iloc[0])
    missing = sorted(set(both) - set(out["variant"]))
    note = (f"time and peak at N = {n} ({analysis.panel_title(key)}), bits per byte at evaluation length "
            f"{length} ({found['protocol'].iloc[0]}, trained at {found['train_len'].iloc[0]})"
            + (f"; not timed at N = {n}: {', '.join(missing)}" if missing else ""))
    return out, note


def pareto(cost: pd.Series, loss: pd.Series) -> pd.Series:
    """Whether each point is on the Pareto front of (cost, loss), lower better for both: no other point is
    at least as good on both and better on one."""
    c, q = cost.to_numpy(float), loss.to_numpy(float)
    front = []
    for i in range(len(c)):
        dominated = ((c <= c[i]) & (q <= q[i]) & ((c < c[i]) | (q < q[i]))).any()
        front.append(bool(not dominated))
    return pd.Series(front, index=cost.index)
