"""bench.scaling: series keys and power-law fits, checked against synthetic data with a known exponent."""

import math

import numpy as np
import pandas as pd
import pytest

from bench.scaling import SERIES_COLUMNS, fit_frame, fit_power_law, series_key, t_quantile, upper_lengths

LENGTHS = [1024 * 2**k for k in range(6)]  # 1k..32k


@pytest.mark.parametrize(("probability", "dof", "expected"), [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 3, 3.1824), (0.975, 10, 2.2281), (0.95, 5, 2.0150),
])
def test_t_quantile_matches_published_tables(probability, dof, expected):
    assert t_quantile(probability, dof) == pytest.approx(expected, abs=2e-4)


def test_exact_power_law_is_recovered_with_a_zero_width_interval():
    fit = fit_power_law(LENGTHS, [3e-4 * n**1.5 for n in LENGTHS])
    assert fit.exponent == pytest.approx(1.5, abs=1e-12)
    assert fit.low == pytest.approx(1.5, abs=1e-9) and fit.high == pytest.approx(1.5, abs=1e-9)
    assert fit.lengths == tuple(float(n) for n in LENGTHS[3:])  # upper half: 8k, 16k, 32k
    prediction = fit.predict(2**20)
    assert prediction.estimate == pytest.approx(3e-4 * (2**20) ** 1.5, rel=1e-9)


def test_noisy_fit_recovers_the_exponent_and_its_interval_covers_it_about_95_percent_of_the_time():
    """Lognormal noise (sd 0.1 in log2) around 2 N^1.3 at 8 lengths, 400 draws: the point estimate is
    unbiased, its standard error matches the spread of the estimates, and the 95% intervals of the exponent
    and of the prediction at 1M tokens cover the truth in 90-99% of the draws (binomial sd ~1.1%)."""
    rng = np.random.default_rng(0)
    lengths = np.array([256 * 2**k for k in range(8)], dtype=float)
    exponents, ses, covered, predicted = [], [], 0, 0
    truth_1m = 2 * 2.0 ** (20 * 1.3)
    for _ in range(400):
        values = 2 * lengths**1.3 * 2.0 ** rng.normal(0, 0.1, lengths.size)
        fit = fit_power_law(lengths, values, upper=False)
        exponents.append(fit.exponent)
        ses.append(fit.exponent_se)
        covered += fit.low <= 1.3 <= fit.high
        at = fit.predict(2**20)
        predicted += at.low <= truth_1m <= at.high
    assert np.mean(exponents) == pytest.approx(1.3, abs=0.005)
    assert np.median(ses) == pytest.approx(np.std(exponents), rel=0.2)
    assert 0.90 <= covered / 400 <= 0.99
    assert 0.90 <= predicted / 400 <= 0.99


def test_upper_points_are_the_largest_half_and_repeated_lengths_each_count():
    assert upper_lengths([1, 2, 3]) == [1, 2, 3]
    assert upper_lengths([1, 2, 3, 4]) == [3, 4]
    assert upper_lengths([5, 1, 2, 3, 4]) == [3, 4, 5]
    n = [64, 64, 128, 128, 256, 256]
    fit = fit_power_law(n, [1, 1.2, 2, 2.4, 4, 4.8])
    assert fit.points == 6 and fit.lengths == (64.0, 128.0, 256.0)
    assert fit.exponent == pytest.approx(1.0)


def test_two_points_fit_exactly_without_an_interval():
    fit = fit_power_law([1000, 4000], [1.0, 16.0])
    assert fit.exponent == pytest.approx(2.0)
    assert math.isnan(fit.low) and math.isnan(fit.exponent_se)
    prediction = fit.predict(8000)
    assert prediction.estimate == pytest.approx(64.0) and math.isnan(prediction.high)


@pytest.mark.parametrize(("n", "values", "message"), [
    ([1024], [1.0], "at least 2 distinct N, got \\[1024.0\\]"),
    ([1024, 1024], [1.0, 2.0], "at least 2 distinct N"),
    ([1024, 2048], [1.0, 0.0], "positive finite N and values; got \\(N, value\\) = \\[\\(2048.0, 0.0\\)\\]"),
    ([1024, 2048], [1.0], "one value per N, got 2 lengths and 1 values"),
])
def test_what_cannot_be_fitted_is_refused_by_name(n, values, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(n, values)


def test_predict_refuses_a_non_positive_length():
    with pytest.raises(ValueError, match="positive length, got n = 0"):
        fit_power_law([1, 2, 4], [1, 2, 4]).predict(0)


def test_series_key_names_the_series_and_fills_missing_columns_with_none():
    row = {"variant": "linear@torch-chunked", "pass": "fwd", "dtype": "float32", "causal": np.bool_(True),
           "d": np.int64(64), "n": 1024, "heads": pd.NA}
    key = series_key(row)
    assert len(key) == len(SERIES_COLUMNS)
    assert key == (None, "linear@torch-chunked", "fwd", "float32", True, 64, None)
    assert series_key({**row, "n": 4096}) == key  # N is what varies along a series
    assert series_key({**row, "d": 128}) != key


def test_fit_frame_fits_per_series_per_sequence_when_the_batch_varies():
    """Batch x N held at 64k tokens: per call a quadratic kernel grows as N, per sequence as N^2."""
    rows = []
    for n in (1024, 2048, 4096, 8192):
        batch = 65536 // n
        rows.append({"variant": "softmax@naive", "pass": "fwd", "n": n, "batch": batch, "time": batch * 1e-6 * n**2})
        rows.append({"variant": "linear@torch-chunked", "pass": "fwd", "n": n, "batch": 1, "time": 1e-3 * n})
    rows.append({"variant": "lonely", "pass": "fwd", "n": 1024, "batch": 1, "time": 1.0})
    found = {key[1]: (fit, note) for key, fit, note in fit_frame(pd.DataFrame(rows), "time")}
    assert found["softmax@naive"][0].exponent == pytest.approx(2.0)
    assert found["linear@torch-chunked"][0].exponent == pytest.approx(1.0)
    assert found["lonely"] == (None, "one N (1024): no fit")


def test_a_wild_fit_far_from_its_data_gives_an_infinite_interval_instead_of_raising():
    """Three noisy lengths extrapolated a millionfold: the interval's upper end passes 2 ** 1023 (an
    OverflowError from the report of a loaded CI run); it is inf, the estimate and lower end stay finite."""
    fit = fit_power_law(LENGTHS, [1e-6, 1e3] * 3)
    predicted = fit.predict(2.0**60)
    assert predicted.high == math.inf
    assert math.isfinite(predicted.estimate) and predicted.low >= 0
