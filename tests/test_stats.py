"""The comparison's statistics against hand-worked values and against scipy."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.report.stats import (
    Draws,
    bootstrap_band,
    draw_resamples,
    expected_max_curve,
    holm,
    paired_bootstrap,
    pareto_front,
)
from benchmark.train.metrics import METRIC_NAMES


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


def test_paired_bootstrap_by_hand():
    # Test labels [0, 1, 1]; a (1 seed) is right on examples 0 and 1; b's seed 0 on example 0
    # only, its seed 1 on examples 1 and 2. Accuracy: a 2/3, b (1/3 + 2/3) / 2 = 1/2.
    labels = np.array([0, 1, 1])
    predictions = {"b": np.array([[0, 0, 0], [1, 1, 1]]), "a": np.array([[0, 1, 0]])}
    # Four resamples, by hand:       a            b seed 0, seed 1    b's drawn seeds -> b     a - b
    #   examples [0, 1, 1]           1            1/3, 2/3            [0, 0] -> 1/3          2/3
    #   examples [0, 0, 1]           1            2/3, 1/3            [1, 0] -> 1/2          1/2
    #   examples [1, 2, 2]           1/3          0,   1              [0, 0] -> 0            1/3
    #   examples [0, 1, 2]           2/3          1/3, 2/3            [1, 1] -> 2/3          0
    draws = Draws(examples=np.array([[0, 1, 1], [0, 0, 1], [1, 2, 2], [0, 1, 2]]),
                  seeds={"a": np.zeros((4, 1), dtype=int), "b": np.array([[0, 0], [1, 0], [0, 0], [1, 1]])})
    estimates, differences = paired_bootstrap(labels, predictions, "accuracy", draws)
    assert list(estimates) == ["a", "b"] and list(differences) == [("a", "b")]  # best first
    # numpy's percentiles of 4 sorted values interpolate at positions 0.075 and 2.925:
    #   a - b sorted [0, 1/3, 1/2, 2/3]: 0 + 0.075/3 = 0.025 and 1/2 + 0.925/6 = 0.654167
    #   a sorted [1/3, 2/3, 1, 1]: 1/3 + 0.075/3 = 0.358333 and 1;  b as a - b
    # p: #(d <= 0) = 1, #(d >= 0) = 4 -> 2 (1 + 1) / (4 + 1) = 0.8
    difference = differences["a", "b"]
    assert difference.value == pytest.approx(1 / 6)
    assert (difference.low, difference.high) == pytest.approx((0.025, 0.5 + 0.925 / 6))
    assert difference.p_value == pytest.approx(0.8)
    assert (estimates["a"].value, estimates["a"].low, estimates["a"].high) == pytest.approx((2 / 3, 0.358333, 1.0),
                                                                                            rel=1e-5)
    assert (estimates["b"].value, estimates["b"].low, estimates["b"].high) == pytest.approx((0.5, 0.025, 0.654167),
                                                                                            rel=1e-5)


def _noisy(labels: np.ndarray, accuracy: float, seeds: int, rng: np.random.Generator) -> np.ndarray:
    wrong = rng.random((seeds, labels.size)) > accuracy
    return np.where(wrong, (labels + rng.integers(1, 3, size=(seeds, labels.size))) % 3, labels)


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_paired_bootstrap_intervals_stay_in_range_and_tell_a_clear_gap(metric):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=60)
    predictions = {"weak": _noisy(labels, 0.4, 2, rng), "strong": _noisy(labels, 0.95, 3, rng),
                   "perfect": np.tile(labels, (2, 1))}
    draws = draw_resamples(60, {name: len(rows) for name, rows in predictions.items()}, resamples=500, seed=1)
    estimates, differences = paired_bootstrap(labels, predictions, metric, draws)
    assert list(estimates) == ["perfect", "strong", "weak"]
    floor = -1.0 if metric == "mcc" else 0.0
    for estimate in estimates.values():  # up to rounding: mcc computes 1 as 1.0000000000000002
        assert floor - 1e-12 <= estimate.low <= estimate.value <= estimate.high <= 1.0 + 1e-12
    perfect = estimates["perfect"]
    assert (perfect.value, perfect.low, perfect.high) == pytest.approx((1.0, 1.0, 1.0))
    gap = differences["strong", "weak"]
    assert gap.low > 0 and gap.p_value == pytest.approx(2 / 501)  # every resample has strong ahead
    again = paired_bootstrap(labels, predictions, metric, draw_resamples(60, {"weak": 2, "strong": 3, "perfect": 2},
                                                                         resamples=500, seed=1))
    assert again[1] == differences  # seeded: the same draws give the same numbers


def test_identical_predictions_are_not_shown_different():
    labels = np.array([0, 1, 2, 1, 0])
    same = np.array([[0, 1, 1, 1, 2], [0, 2, 2, 1, 0]])
    draws = draw_resamples(5, {"x": 2, "y": 2}, resamples=200, seed=3)
    # Same predictions, but each encoder's seeds drawn separately: differences straddle zero.
    _, differences = paired_bootstrap(labels, {"x": same, "y": same}, "macro_f1", draws)
    difference = differences["x", "y"]
    assert difference.value == 0 and difference.low <= 0 <= difference.high and difference.p_value == 1.0
    one_seed = draw_resamples(5, {"x": 1, "y": 1}, resamples=50)
    _, constant = paired_bootstrap(labels, {"x": same[:1], "y": same[:1]}, "accuracy", one_seed)
    assert constant["x", "y"].p_value == 1.0 and (constant["x", "y"].low, constant["x", "y"].high) == (0, 0)


def test_holm_by_hand():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04; kept monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == pytest.approx([0.5])
    assert holm([]).size == 0


def test_pareto_front():
    # (0.9, 1) and (0.95, 5) are not beaten; (0.8, 2) loses to (0.9, 1) on both,
    # (0.95, 6) costs more than (0.95, 5) for the same quality; exact twins both stay.
    assert pareto_front([0.9, 0.95, 0.8, 0.95], [1, 5, 2, 6]) == [True, True, False, False]
    assert pareto_front([0.7, 0.7], [3, 3]) == [True, True]
