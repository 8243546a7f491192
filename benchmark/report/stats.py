"""The statistics behind an honest comparison, as pure functions of plain numbers.

- `expected_max_curve`: expected best validation score after n trials (Dodge et al.
  2019, "Show Your Work"), with `bootstrap_band` around it;
- `paired_bootstrap` and `holm`: the final evaluation's test predictions, summarized and
  compared encoder against encoder on the same test examples;
- `pareto_front`: quality against cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from statsmodels.stats.multitest import multipletests

from benchmark.train import metrics

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
class Draws:
    """The resamples of one bootstrap: `examples` (resamples x test examples) holds test-example
    indices shared by every encoder, which pairs the comparison; `seeds[name]` (resamples x
    that encoder's seeds) holds indices into its seeds."""
    examples: np.ndarray
    seeds: Mapping[str, np.ndarray]


def draw_resamples(test_examples: int, seeds: Mapping[str, int], resamples: int, seed: int = 0) -> Draws:
    """Examples and, per encoder, seeds drawn with replacement, each resample as large as the original."""
    rng = np.random.default_rng(seed)
    examples = rng.integers(0, test_examples, size=(resamples, test_examples))
    return Draws(examples, {name: rng.integers(0, count, size=(resamples, count)) for name, count in seeds.items()})


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
    p_value: float  # two-sided, see `bootstrap_p_value`


def paired_bootstrap(labels: np.ndarray, predictions: Mapping[str, np.ndarray], metric: str, draws: Draws,
                     confidence: float = 0.95) -> tuple[dict[str, Estimate], dict[tuple[str, str], Difference]]:
    """Each encoder's score and every difference between two encoders, with percentile intervals
    from a bootstrap that resamples test examples and seeds together.

    `predictions[name]` holds an encoder's predicted label ids, one row per seed, one column
    per test example (in `labels`' order). A score is the mean over seeds of `metric` on the
    test examples; in a resample, the mean over the drawn seeds of `metric` on the drawn
    examples. Every encoder is scored on the same drawn examples, so a difference compares
    predictions of the same texts; its seeds are drawn separately, as the encoders were
    retrained separately. Intervals are percentiles of resampled scores, so they stay within
    the metric's range. Both dicts list the encoders best score first (ties in the given
    order), and each pair (a, b) has a ahead of b, so every difference is >= 0.
    """
    labels = np.asarray(labels)
    num_labels = 1 + max(int(labels.max()), *(int(np.max(rows)) for rows in predictions.values()))
    observed = {name: _score(labels, np.asarray(rows), metric, num_labels) for name, rows in predictions.items()}
    resampled = {name: _resampled_scores(labels, np.asarray(rows), metric, num_labels, draws.examples,
                                         draws.seeds[name])
                 for name, rows in predictions.items()}
    tail = (1 - confidence) / 2 * 100
    names = sorted(predictions, key=lambda name: -observed[name])
    estimates = {name: Estimate(observed[name], *map(float, np.percentile(resampled[name], [tail, 100 - tail])))
                 for name in names}
    differences = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            resampled_difference = resampled[a] - resampled[b]
            low, high = np.percentile(resampled_difference, [tail, 100 - tail])
            differences[a, b] = Difference(observed[a] - observed[b], float(low), float(high),
                                           bootstrap_p_value(resampled_difference))
    return estimates, differences


def bootstrap_p_value(resampled_differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference": p = min(1, 2 min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (R + 1))
    over the R resampled differences d*. Twice the smaller tail at zero is the smallest level
    alpha whose (1 - alpha) percentile interval leaves zero out; the +1 (the observed sample
    counted as a resample) keeps p above zero, as R resamples cannot show less than 1 / (R + 1)."""
    d = np.asarray(resampled_differences)
    tails = min(int((d <= 0).sum()), int((d >= 0).sum())) + 1
    return min(1.0, 2 * tails / (d.size + 1))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment for a family of tests (statsmodels' implementation)."""
    if len(p_values) == 0:
        return np.array([])
    return multipletests(np.asarray(p_values, dtype=float), method="holm")[1]


def _score(labels: np.ndarray, predictions: np.ndarray, metric: str, num_labels: int) -> float:
    return float(np.mean([METRICS[metric](metrics.confusion_matrix(labels, row, num_labels))
                          for row in predictions]))


def _resampled_scores(labels: np.ndarray, predictions: np.ndarray, metric: str, num_labels: int,
                      examples: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Per resample: the mean over its drawn seeds of the metric on its drawn examples."""
    resamples = len(examples)
    cells = num_labels * num_labels
    # Every resample's confusion matrix at once: one bincount over (resample, label, prediction) codes.
    offsets = (np.arange(resamples) * cells)[:, None]
    label_codes = labels[examples] * num_labels + offsets
    per_seed = np.empty((resamples, len(predictions)))
    for column, row in enumerate(predictions):
        counts = np.bincount((label_codes + row[examples]).ravel(), minlength=resamples * cells)
        matrices = counts.reshape(resamples, num_labels, num_labels)
        per_seed[:, column] = [METRICS[metric](matrix) for matrix in matrices]
    return np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)


def pareto_front(quality: Sequence[float], cost: Sequence[float]) -> list[bool]:
    """Which points no other point beats: at least as good and as cheap, better in one."""
    points = list(zip(quality, cost))
    return [
        not any(q2 >= q and c2 <= c and (q2 > q or c2 < c) for q2, c2 in points)
        for q, c in points
    ]
