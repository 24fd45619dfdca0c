"""Scaling series and power-law fits: the one definition the CI gate (``bench.gate``) and the HTML report
(``reports``) share.

A **series** is the rows of one config that differ only in the sequence length N (``series_key``). A
**power-law fit** is the least-squares line of log2(value) against log2(N) over a series' points
(``fit_power_law``): its slope is the exponent (about 1 linear in N, about 2 quadratic), with a standard error
and a 95% interval from Student's t, and ``PowerLawFit.predict`` extends the line to another N with the 95%
interval of the fitted line there. The interval is the fit's own uncertainty: it does not cover a change of
regime (a cache spill, a kernel switching paths) beyond the measured lengths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

SERIES_COLUMNS: tuple[str, ...] = ("device_name", "variant", "pass", "dtype", "causal", "d", "heads")
"""The columns whose values together name a scaling series; every other config column is N or follows
from these. The batch is not one of them: when a sweep holds batch x N constant (``tokens_per_batch``) the
batch changes with N inside one series, and ``fit_frame`` then fits the value per sequence (value / batch)."""

CONFIDENCE = 0.95
"""Coverage of every interval this module gives (two-sided, Student's t with points - 2 degrees of freedom)."""


def _plain(value: object) -> object:
    """A key element that compares and hashes the same whatever frame it came from: missing -> None,
    numpy scalars -> Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def series_key(row: Mapping[str, object], columns: Iterable[str] = SERIES_COLUMNS) -> tuple:
    """The series a row belongs to: its values of ``columns`` (default ``SERIES_COLUMNS``) in that order, a
    column the row lacks (or leaves missing) as None. Two rows are points of one scaling series exactly when
    their keys are equal."""
    return tuple(_plain(row.get(column)) for column in columns)


def upper_lengths(n: Iterable[float]) -> list[float]:
    """The lengths an ``upper`` fit uses, ascending: of the k distinct N, the largest max(2, ceil(k / 2));
    all k when k <= 3. The short lengths are left out because fixed per-call costs (launches, Python,
    allocation) flatten them."""
    distinct = sorted(set(float(x) for x in n))
    k = len(distinct)
    return distinct if k <= 3 else distinct[k - max(2, math.ceil(k / 2)):]


def _t_pdf(t: np.ndarray, dof: int) -> np.ndarray:
    log_c = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    return np.exp(log_c - (dof + 1) / 2 * np.log1p(t * t / dof))


@lru_cache(maxsize=256)  # fits ask for the same few (probability, dof) again and again
def t_quantile(probability: float, dof: int) -> float:
    """The ``probability`` quantile (0.5 < probability < 1) of Student's t with ``dof`` >= 1 degrees of
    freedom: bisection on the CDF, integrated by Simpson's rule (accurate to about 1e-6; numpy has no t)."""
    if not 0.5 < probability < 1 or dof < 1:
        raise ValueError(f"t_quantile needs 0.5 < probability < 1 and dof >= 1, got {probability}, {dof}")

    def cdf(x: float) -> float:
        grid = np.linspace(0.0, x, 4001)
        y = _t_pdf(grid, dof)
        h = grid[1] - grid[0]
        return 0.5 + h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum())

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < probability else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Prediction:
    """A fitted power law's value at ``n`` tokens, in the fitted value's unit: ``estimate`` and the 95%
    interval ``low``..``high`` of the fitted line there (NaN when the fit has no interval: two points)."""

    n: float
    estimate: float
    low: float
    high: float

    @property
    def extrapolated(self) -> bool:
        """Always a statement about the fit, never a measurement; see ``PowerLawFit.predict``."""
        return True


@dataclass(frozen=True)
class PowerLawFit:
    """value ~ 2**intercept * N**exponent, fitted by least squares in (log2 N, log2 value).

    exponent, exponent_se: the slope and its standard error (NaN with 2 points: the line goes through both);
    low, high: the 95% interval of the exponent; intercept: log2 of the value at N = 1;
    lengths: the N the fit used, ascending; points: how many (N, value) pairs (repeated N count each);
    residual_sd: the standard deviation of the residuals in log2 units (NaN with 2 points);
    mean_log2_n, sxx: the centre and spread of log2 N over the points, for prediction intervals.
    """

    exponent: float
    exponent_se: float
    low: float
    high: float
    intercept: float
    lengths: tuple[float, ...]
    points: int
    residual_sd: float
    mean_log2_n: float
    sxx: float

    @property
    def dof(self) -> int:
        return self.points - 2

    def predict(self, n: float) -> Prediction:
        """The fitted value at ``n`` tokens (any N; outside ``lengths`` it is an extrapolation) with the 95%
        interval of the fitted line at log2 n: half-width t * residual_sd * sqrt(1/points + (log2 n -
        mean)^2 / sxx), in log2 units, so the interval is multiplicative and widens away from the data."""
        if not n > 0:
            raise ValueError(f"predict needs a positive length, got n = {n!r}")
        x = math.log2(n)
        estimate = self.intercept + self.exponent * x
        if self.dof < 1:
            return Prediction(float(n), _exp2(estimate), math.nan, math.nan)
        half = (t_quantile(0.5 + CONFIDENCE / 2, self.dof) * self.residual_sd
                * math.sqrt(1 / self.points + (x - self.mean_log2_n) ** 2 / self.sxx))
        return Prediction(float(n), _exp2(estimate), _exp2(estimate - half), _exp2(estimate + half))


def _exp2(x: float) -> float:
    """2 ** x, inf where that exceeds a float: noisy points far from the target give intervals of 2 ** 1500
    (a fit of two noisy lengths extrapolated 16x), which say "the fit cannot tell" and must not raise."""
    return math.inf if x > 1023 else 2.0**x


def fit_power_law(n: Iterable[float], values: Iterable[float], *, upper: bool = True) -> PowerLawFit:
    """Fit value ~ N**exponent by least squares of log2(value) against log2(N).

    ``n`` tokens and ``values`` (any positive unit: ms, bytes) pair up one to one; an N may repeat (seeds,
    rounds), each pair is one point. With ``upper`` (the default) only the points at the lengths of
    ``upper_lengths`` enter: of the k distinct N, the largest max(2, ceil(k / 2)), all of them when k <= 3;
    without it, every point. Raises ValueError for lists of different lengths, a non-positive or non-finite
    N or value (the caller leaves out what it cannot fit, and says so), or fewer than 2 distinct N.
    """
    x = np.asarray(list(n), dtype=float)
    y = np.asarray(list(values), dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"fit_power_law needs one value per N, got {x.size} lengths and {y.size} values")
    bad = ~(np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0))
    if bad.any():
        raise ValueError(f"fit_power_law needs positive finite N and values; got (N, value) = "
                         f"{list(zip(x[bad].tolist(), y[bad].tolist(), strict=True))[:5]}")
    distinct = sorted(set(x.tolist()))
    if len(distinct) < 2:
        raise ValueError(f"fit_power_law needs at least 2 distinct N, got {distinct}")
    if upper:
        keep = np.isin(x, upper_lengths(distinct))
        x, y = x[keep], y[keep]
    lx, ly = np.log2(x), np.log2(y)
    mean_x = float(lx.mean())
    sxx = float(((lx - mean_x) ** 2).sum())
    slope = float(((lx - mean_x) * (ly - ly.mean())).sum() / sxx)
    intercept = float(ly.mean() - slope * mean_x)
    points = int(lx.size)
    if points > 2:
        residual_sd = math.sqrt(float(((ly - intercept - slope * lx) ** 2).sum()) / (points - 2))
        se = residual_sd / math.sqrt(sxx)
        half = t_quantile(0.5 + CONFIDENCE / 2, points - 2) * se
        low, high = slope - half, slope + half
    else:
        residual_sd = se = low = high = math.nan
    return PowerLawFit(exponent=slope, exponent_se=se, low=low, high=high, intercept=intercept,
                       lengths=tuple(sorted(set(x.tolist()))), points=points, residual_sd=residual_sd,
                       mean_log2_n=mean_x, sxx=sxx)


def fit_frame(frame: pd.DataFrame, value: str, *, upper: bool = True,
              columns: Iterable[str] = SERIES_COLUMNS) -> list[tuple[tuple, PowerLawFit | None, str]]:
    """Per series of ``frame`` (keyed by ``series_key`` over ``columns``), the fit of ``value`` against
    ``n``: [(key, fit or None, note)], keys sorted. Rows with ``value`` missing or not positive are left out;
    when the batch varies inside a series the value is divided by it (per sequence). A series with fewer
    than 2 distinct N has fit None and its note says so. The frame should hold ok rows of one task."""
    columns = list(columns)
    if frame.empty or "n" not in frame or value not in frame:
        return []
    usable = frame[frame["n"].notna() & frame[value].notna()]
    usable = usable[(usable["n"].astype(float) > 0) & (usable[value].astype(float) > 0)]
    groups: dict[tuple, list[int]] = {}
    for index, row in zip(usable.index, usable.to_dict("records"), strict=True):
        groups.setdefault(series_key(row, columns), []).append(index)
    out = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        rows = usable.loc[groups[key]]
        y = rows[value].astype(float)
        if "batch" in rows and rows["batch"].nunique(dropna=True) > 1:
            y = y / rows["batch"].astype(float)
        if rows["n"].nunique() < 2:
            out.append((key, None, f"one N ({int(rows['n'].iloc[0])}): no fit"))
            continue
        out.append((key, fit_power_law(rows["n"].astype(float), y, upper=upper), ""))
    return out
