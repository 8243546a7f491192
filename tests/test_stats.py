"""The comparison's statistics against hand-worked values and against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from benchmark.stats import bootstrap_band, expected_max_curve, mean_interval, pareto_front, welch_test


def test_expected_max_curve_by_hand():
    # Sorted 0.5, 0.7, 0.9 (N = 3); the best of n draws is v(i) w.p. (i/3)^n - ((i-1)/3)^n.
    # n=1: the mean, 0.7
    # n=2: weights 1/9, 3/9, 5/9 -> (0.5 + 2.1 + 4.5) / 9 = 7.1/9
    # n=3: weights 1/27, 7/27, 19/27 -> (0.5 + 4.9 + 17.1) / 27 = 22.5/27
    curve = expected_max_curve([0.9, 0.5, 0.7])
    assert curve == pytest.approx([0.7, 7.1 / 9, 22.5 / 27])


def test_expected_max_curve_rises_toward_the_best_value():
    curve = expected_max_curve([0.2, 0.4, 0.6, 0.8], n_max=200)
    assert len(curve) == 200
    assert np.all(np.diff(curve) >= -1e-12)  # flat, up to rounding, once at the best
    assert curve[-1] == pytest.approx(0.8, abs=1e-6)
    assert expected_max_curve([0.42])[0] == 0.42
    with pytest.raises(ValueError):
        expected_max_curve([])


def test_bootstrap_band_brackets_the_curve_and_collapses_on_constant_values():
    values = [0.61, 0.70, 0.72, 0.80, 0.55, 0.77]
    low, high = bootstrap_band(values, resamples=500, seed=1)
    curve = expected_max_curve(values)
    assert np.all(low <= curve + 1e-12) and np.all(curve <= high + 1e-12)
    assert np.all(low < high)
    assert low[0] >= min(values) and high[-1] <= max(values)
    again = bootstrap_band(values, resamples=500, seed=1)
    assert np.array_equal(low, again[0]) and np.array_equal(high, again[1])
    flat_low, flat_high = bootstrap_band([0.5, 0.5, 0.5], resamples=50)
    assert flat_low.tolist() == flat_high.tolist() == [0.5, 0.5, 0.5]


def test_mean_interval_by_hand_and_against_scipy():
    values = [0.80, 0.82, 0.85, 0.79, 0.84]
    # mean 0.82; squared deviations sum to 0.0026, so std = sqrt(0.0026/4) = 0.025495;
    # t(0.975, 4) = 2.776445, half-width = 2.776445 * 0.025495 / sqrt(5) = 0.031656
    interval = mean_interval(values)
    assert interval.mean == pytest.approx(0.82)
    assert interval.std == pytest.approx(0.0254951, rel=1e-5)
    assert (interval.low, interval.high) == pytest.approx((0.788344, 0.851656), rel=1e-5)
    reference = scipy_stats.t.interval(0.95, 4, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (interval.low, interval.high) == pytest.approx(reference)
    wide = mean_interval(values, confidence=0.99)
    assert wide.low < interval.low and wide.high > interval.high
    with pytest.raises(ValueError):
        mean_interval([0.8])


@pytest.mark.parametrize("a, b", [
    ([0.80, 0.82, 0.85, 0.79, 0.84], [0.75, 0.78, 0.74, 0.77, 0.76]),  # clearly apart
    ([0.80, 0.82, 0.85, 0.79, 0.84], [0.81, 0.79, 0.86, 0.80, 0.83]),  # overlapping
    ([0.91, 0.90, 0.95], [0.70, 0.99, 0.85, 0.60, 0.93, 0.88]),  # unequal sizes and variances
])
def test_welch_test_against_scipy(a, b):
    result = welch_test(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert result.t == pytest.approx(reference.statistic)
    assert result.p_value == pytest.approx(reference.pvalue)
    assert result.df == pytest.approx(reference.df)


def test_welch_test_of_constant_samples():
    assert welch_test([0.5, 0.5], [0.5, 0.5]).p_value == 1.0
    apart = welch_test([0.6, 0.6], [0.5, 0.5])
    assert apart.p_value == 0.0 and apart.t == math.inf


def test_pareto_front():
    # (0.9, 1) and (0.95, 5) are not beaten; (0.8, 2) loses to (0.9, 1) on both,
    # (0.95, 6) costs more than (0.95, 5) for the same quality; exact twins both stay.
    assert pareto_front([0.9, 0.95, 0.8, 0.95], [1, 5, 2, 6]) == [True, True, False, False]
    assert pareto_front([0.7, 0.7], [3, 3]) == [True, True]
