"""The noise of extrapolation numbers, in one place for the end-of-run table and the report.

Two sources, both stated, never guessed:
- **sampling** of the scored bytes: each row's ``bits_per_byte_se``, over blocks of 1,024 consecutive scored
  bytes (``evaluate.Score.loss_se``); for the change from L to a longer length, ``bpb_vs_train_len_se``, paired
  block by block (the same bytes at both lengths), so what a model finds hard at every length cancels.
- **training**: the standard deviation over seeds (``--seeds K``), where a run has more than one seed.
  Every seed is scored on the same bytes, so seeds do not average the sampling error away: the mean over K
  seeds keeps the rows' sampling error and divides the seed variance by K.

The noise of a summary number (a mean over K seeds) is sqrt(se^2 + sd^2 / K), sd taken as 0 where one seed was
run (the table says so). Two numbers differ beyond the noise when the gap exceeds ``THRESHOLD`` times the
root-sum-square of their noises (about a 95% two-sided level for independent normal errors; for two variants
scored on the same bytes this is conservative, their sampling errors being correlated).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

THRESHOLD = 2.0
KEYS = ["variant", "family", "pe", "protocol", "train_len", "eval_len"]


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (variant, protocol, train length, eval length) over the ok extrapolation rows of ``rows``:
    seeds (K), bpb (mean over seeds), se (mean of the rows' bits_per_byte_se), seed_sd (NaN for K = 1), noise,
    and the same for the change from the train length: delta, delta_se, delta_seed_sd, delta_noise."""
    ok = rows[(rows["task"] == "extrapolation") & (rows["status"] == "ok")] if "task" in rows else rows.iloc[:0]
    if ok.empty:
        return pd.DataFrame(columns=[*KEYS, "seeds", "bpb", "se", "seed_sd", "noise", "delta", "delta_se",
                                     "delta_seed_sd", "delta_noise"])
    ok = ok.copy()
    for column in ("bits_per_byte_se", "bpb_vs_train_len", "bpb_vs_train_len_se"):
        if column not in ok:
            ok[column] = np.nan
    grouped = ok.groupby(KEYS, sort=False, dropna=False)
    out = grouped.agg(seeds=("bits_per_byte", "size"), bpb=("bits_per_byte", "mean"),
                      se=("bits_per_byte_se", "mean"), seed_sd=("bits_per_byte", _sd),
                      delta=("bpb_vs_train_len", "mean"), delta_se=("bpb_vs_train_len_se", "mean"),
                      delta_seed_sd=("bpb_vs_train_len", _sd)).reset_index()
    out["noise"] = [combined_noise(se, sd, k) for se, sd, k in zip(out["se"], out["seed_sd"], out["seeds"],
                                                                      strict=True)]
    out["delta_noise"] = [combined_noise(se, sd, k) for se, sd, k in zip(out["delta_se"], out["delta_seed_sd"],
                                                                            out["seeds"], strict=True)]
    return out


def _sd(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def combined_noise(se: float, seed_sd: float, seeds: int) -> float:
    """sqrt(se^2 + seed_sd^2 / seeds); a missing part counts as 0, both missing is NaN."""
    parts = [x for x in (se, seed_sd / math.sqrt(seeds) if seeds else math.nan) if not pd.isna(x)]
    return math.sqrt(sum(x * x for x in parts)) if parts else math.nan


def exceeds(gap: float, *noises: float) -> bool | None:
    """Whether ``gap`` exceeds THRESHOLD x the root-sum-square of ``noises``; None when a noise is unknown."""
    if pd.isna(gap) or any(pd.isna(n) for n in noises):
        return None
    return abs(gap) > THRESHOLD * math.sqrt(sum(n * n for n in noises))


def reference_variant(family: str, pe: str, available: set[str]) -> str | None:
    """The attention without positions that an encoding is compared with: the same family's ``pe == none``
    variant present in the data (softmax and flash compare with softmax@naive, or flash@sdpa-flash)."""
    candidates = {"softmax": ("softmax@naive", "flash@sdpa-flash"), "flash": ("softmax@naive", "flash@sdpa-flash"),
                  "linear": ("linear@torch-chunked", "linear@naive")}.get(family, ())
    return next((c for c in candidates if c in available), None) if pe != "none" else None
