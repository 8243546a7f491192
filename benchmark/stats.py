"""The statistics behind an honest comparison, as pure functions of plain numbers.

- `expected_max_curve`: expected best validation score after n trials (Dodge et al.
  2019, "Show Your Work"), with `bootstrap_band` around it;
- `mean_interval` and `welch_test`: the final evaluation's seeds, summarized and compared;
- `pareto_front`: quality against cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


def expected_max_curve(values: Sequence[float], n_max: int | None = None) -> np.ndarray:
    """E[max of n draws, with replacement, from `values`] for n = 1..n_max (default len).

    With the scores sorted, v(1) <= ... <= v(N), the best of n draws is v(i) with
    probability (i/N)^n - ((i-1)/N)^n.
    """
    ordered = np.sort(np.asarray(values, dtype=float))
    if ordered.size == 0:
        raise ValueError("expected_max_curve needs at least one value")
    count = ordered.size
    ns = np.arange(1, (n_max or count) + 1)[:, None]
    cumulative = np.arange(count + 1) / count
    weights = cumulative[1:] ** ns - cumulative[:-1] ** ns
    return weights @ ordered


def bootstrap_band(values: Sequence[float], n_max: int | None = None, confidence: float = 0.95,
                   resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band of `expected_max_curve` over bootstrap resamples of `values`."""
    data = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    curves = np.stack([expected_max_curve(rng.choice(data, size=data.size, replace=True), n_max)
                       for _ in range(resamples)])
    tail = (1 - confidence) / 2 * 100
    return np.percentile(curves, tail, axis=0), np.percentile(curves, 100 - tail, axis=0)


@dataclass(frozen=True)
class MeanInterval:
    mean: float
    std: float  # sample standard deviation (n - 1)
    low: float
    high: float


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> MeanInterval:
    """The mean with Student's t confidence interval (needs two values or more)."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        raise ValueError("a confidence interval needs at least two values")
    mean, std = float(data.mean()), float(data.std(ddof=1))
    half = scipy_stats.t.ppf((1 + confidence) / 2, data.size - 1) * std / math.sqrt(data.size)
    return MeanInterval(mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class WelchResult:
    t: float
    df: float
    p_value: float  # two-sided


def welch_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """Welch's t-test of equal means, without assuming equal variances."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's test needs at least two values per sample")
    var_a, var_b = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    difference = a.mean() - b.mean()
    if var_a + var_b == 0:
        # Both samples constant: identical means cannot be told apart; different ones always can.
        return WelchResult(0.0 if difference == 0 else math.copysign(math.inf, difference), math.inf,
                           1.0 if difference == 0 else 0.0)
    t = difference / math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (a.size - 1) + var_b ** 2 / (b.size - 1))
    return WelchResult(float(t), float(df), float(2 * scipy_stats.t.sf(abs(t), df)))


def pareto_front(quality: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """Which points no other point beats: at least as good and as cheap, better in one."""
    points = list(zip(quality, cost))
    return [
        not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for q2, c2 in points)
        for q, c in points
    ]
