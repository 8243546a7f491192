"""The statistics behind an honest comparison, as pure functions of plain numbers.

- `expected_max_curve`: expected best validation score after n trials (Dodge et al.
  2019, "Show Your Work"), with `bootstrap_band` around it;
- `compare_seeded` and `holm`: the final evaluation's test predictions, summarized and
  compared encoder against encoder on the same test examples, with a variance that counts
  the seeds as well as the examples;
- `pareto_front`: quality against cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from benchmark.train import metrics
from benchmark.train.metrics import METRIC_RANGES

METRICS = {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "mcc": metrics.mcc}


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
class Estimate:
    value: float  # on every test example, averaged over every seed
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    value: float  # metric(a) - metric(b), in metric points
    low: float
    high: float
    p_value: float  # two-sided, of "no difference"
    df: float  # degrees of freedom of the t distribution behind p and the interval


@dataclass(frozen=True)
class SeededScores:
    """One encoder's final runs, as the variance of its mean score needs them (see
    `seeded_scores`); every array may carry leading batch axes (many simulated datasets)."""
    scores: np.ndarray  # (..., seeds): per seed, the metric on every test example
    per_example: np.ndarray  # (..., examples): per example, the mean over seeds of its jackknife pseudo-value
    residual: np.ndarray  # (...): the seed x example residual mean square of the pseudo-values


def seeded_scores(labels: np.ndarray, predictions: np.ndarray, metric: str, num_labels: int) -> SeededScores:
    """Each seed's score, and what each test example contributes to it.

    `predictions` (..., seeds, examples) holds predicted label ids, `labels` (..., examples)
    the true ones. A metric on a confusion matrix is no mean over examples, so each
    example's part is its jackknife pseudo-value, n theta - (n - 1) theta(without it): their
    mean is the score to first order, for accuracy exactly. Leaving one example out lowers
    one cell of the seed's matrix, so K^2 matrices per seed give every pseudo-value.
    """
    rows = np.asarray(predictions)
    *batch, seeds, examples = rows.shape
    cells = num_labels * num_labels
    truth = np.asarray(labels)[..., None, :]
    matrices = metrics.confusion_matrix(truth, rows, num_labels)
    codes = np.broadcast_to(truth, rows.shape) * num_labels + rows  # each example's cell in its seed's matrix
    score = METRICS[metric]
    full = score(matrices)
    # A cell at 0 is never left out; clipping keeps its unused matrix valid.
    one_less = np.eye(cells, dtype=matrices.dtype).reshape(cells, num_labels, num_labels)
    left_out = score(np.clip(matrices[..., None, :, :] - one_less, 0, None))
    pseudo = examples * full[..., None] - (examples - 1) * np.take_along_axis(left_out, codes, axis=-1)
    residual = (pseudo - pseudo.mean(axis=-2, keepdims=True) - pseudo.mean(axis=-1, keepdims=True)
                + pseudo.mean(axis=(-2, -1), keepdims=True))
    dof = (seeds - 1) * (examples - 1)
    mean_square = (residual**2).sum(axis=(-2, -1)) / dof if dof else np.full(batch, np.nan)
    return SeededScores(full, pseudo.mean(axis=-2), mean_square)


def mean_variance(parts: Sequence[tuple[float, SeededScores]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The value, variance and Satterthwaite degrees of freedom of sum(sign x mean score) over
    `parts` (sign, encoder): one encoder's mean (+1), or a difference of two (+1, -1).

    Test examples and seeds are both draws, crossed within an encoder; the encoders share the
    examples and each has its own seeds. The variance of a mean over n examples and S seeds
    is sigma_example^2 / n + sigma_seed^2 / S + sigma_residual^2 / (n S), estimated without
    bias as in a two-way random-effects ANOVA:
    - the seeds' part, var(scores) / S per encoder, holds sigma_seed^2 / S + sigma_residual^2 / (n S)
      and has S - 1 degrees of freedom: with 2 or 3 seeds the t quantile is wide, as it must be;
    - the examples' part, var(the contrast of per_example) / n, also holds the residual's
      sigma_residual^2 / (n S), counted once already, so that is taken off (down to 0 at most).
    Variance is NaN with a single seed: one seed shows none of their spread.
    """
    value = sum(sign * part.scores.mean(axis=-1) for sign, part in parts)
    examples = parts[0][1].per_example.shape[-1]
    contrast = sum(sign * part.per_example for sign, part in parts)
    residual = sum(part.residual / part.scores.shape[-1] for _, part in parts) / examples
    across_examples = np.maximum(contrast.var(axis=-1, ddof=1) / examples - residual, 0.0)
    seeds = [part.scores.shape[-1] for _, part in parts]
    across_seeds = [part.scores.var(axis=-1, ddof=1) / count if count > 1 else np.full(np.shape(value), np.nan)
                    for count, (_, part) in zip(seeds, parts)]
    variance = across_examples + sum(across_seeds)
    spread = across_examples**2 / (examples - 1) + sum(term**2 / max(count - 1, 1)
                                                       for term, count in zip(across_seeds, seeds))
    df = np.divide(variance**2, spread, out=np.full(np.shape(value), np.inf), where=spread > 0)
    return value, variance, df


# A variance under this is rounding (an sd under 1e-9 metric points; a pseudo-value of a
# perfect MCC carries 1e-14): the runs showed no spread.
NO_SPREAD = 1e-18


def t_interval(value: np.ndarray, variance: np.ndarray, df: np.ndarray, bounds: tuple[float, float],
               confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """value +- the t quantile x its standard error, cut to `bounds` (what the quantity can reach).
    NaN where the variance is unknown (one seed) or zero: a zero-width interval would read as
    a value known exactly, while it only means that the runs showed no spread."""
    known = variance > NO_SPREAD
    half = np.where(known, scipy_stats.t.ppf(0.5 + confidence / 2, df) * np.sqrt(np.where(known, variance, 1.0)),
                    np.nan)
    return np.maximum(value - half, bounds[0]), np.minimum(value + half, bounds[1])


def t_p_value(value: np.ndarray, variance: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p of "no difference" from the t distribution; 1 for two identical sets of
    predictions, NaN where no variance is known (see `t_interval`)."""
    known = variance > NO_SPREAD
    p = 2 * scipy_stats.t.sf(np.abs(value) / np.sqrt(np.where(known, variance, 1.0)), df)
    return np.where(known, p, np.where((value == 0) & ~np.isnan(variance), 1.0, np.nan))


def compare_seeded(labels: np.ndarray, predictions: Mapping[str, np.ndarray], metric: str,
                   confidence: float = 0.95) -> tuple[dict[str, Estimate], dict[tuple[str, str], Difference]]:
    """Each encoder's score and every difference between two encoders on the same test
    examples, with t intervals and p-values whose variance counts both the test examples
    and the seeds (see `mean_variance`).

    `predictions[name]` holds an encoder's predicted label ids, one row per seed, one column
    per test example (in `labels`' order). A score is the mean over seeds of `metric` on the
    test examples. A difference is paired on the examples: both encoders scored the same
    texts. Its seeds are not paired: the encoders were retrained separately. A bootstrap that
    resamples 2 or 3 seeds sees a fraction of their spread and has no way to widen for how
    little it knows; the t distribution on S - 1 degrees of freedom does (tests/test_stats.py
    simulates the false-positive rate for 2 to 20 seeds). Both dicts list the encoders best
    score first (ties in the given order), and each pair (a, b) has a ahead of b, so every
    difference is >= 0.
    """
    labels = np.asarray(labels)
    num_labels = 1 + max(int(labels.max()), *(int(np.max(rows)) for rows in predictions.values()))
    parts = {name: seeded_scores(labels, rows, metric, num_labels) for name, rows in predictions.items()}
    names = sorted(parts, key=lambda name: -parts[name].scores.mean())
    low, high = METRIC_RANGES[metric]
    estimates = {}
    for name in names:
        value, variance, df = mean_variance([(1, parts[name])])
        estimates[name] = Estimate(float(value), *map(float, t_interval(value, variance, df, (low, high),
                                                                        confidence)))
    differences = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            value, variance, df = mean_variance([(1, parts[a]), (-1, parts[b])])
            interval = t_interval(value, variance, df, (low - high, high - low), confidence)
            differences[a, b] = Difference(float(value), *map(float, interval), float(t_p_value(value, variance, df)),
                                           float(df))
    return estimates, differences


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment for a family of tests (statsmodels' implementation)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), method="holm")[1]


def pareto_front(quality: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """Which points no other point beats: at least as good and as cheap, better in one."""
    points = list(zip(quality, cost))
    return [
        not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for q2, c2 in points)
        for q, c in points
    ]
