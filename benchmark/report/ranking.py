"""The encoders ranked across datasets, and whether the ranking is real (Demšar 2006).

Each dataset is a block and each encoder a treatment, scored by its best complete
validation value. Only encoders with a complete trial on every dataset take part, so
every block is complete. The tests come from scipy (Friedman) and scikit-posthocs
(Nemenyi after Friedman; Wilcoxon signed-rank for two encoders), and the
critical-difference diagram from scikit-posthocs too (see `report`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scikit_posthocs as posthocs
from scipy import stats as scipy_stats

from benchmark.report.leaderboard import best_per_encoder, dataset_columns
from benchmark.train.metrics import METRIC_RANGES

MIN_DATASETS = 3  # fewer blocks than this and no rank test can say anything
ALPHA = 0.05

RANK_COLUMNS = ["encoder", "mean_rank", "datasets"]
TEST_COLUMNS = ["comparison", "encoder_a", "encoder_b", "test", "statistic", "p_value", "effect", "effect_size", "ci_low", "ci_high",
                "datasets", "note"]


def score_matrix(trials: pd.DataFrame) -> pd.DataFrame:
    """Datasets (rows) x encoders (columns): each encoder's best complete validation value.
    Encoders without a complete trial on every dataset are left out."""
    best = best_per_encoder(trials)
    if best.empty:
        return pd.DataFrame()
    matrix = best.pivot(index="study", columns="encoder", values="value").rename(index=dataset_columns(trials))
    matrix = matrix.dropna(axis=1).sort_index()
    matrix.index.name, matrix.columns.name = "dataset", None
    return matrix


def dataset_metrics(trials: pd.DataFrame) -> dict[str, str]:
    """Each dataset's metric, under the score matrix's dataset names."""
    if trials.empty:
        return {}
    names = dataset_columns(trials)
    return {names[study]: metric for study, metric in trials.groupby("study")["metric"].first().items()}


def left_out(trials: pd.DataFrame, matrix: pd.DataFrame) -> list[str]:
    """Encoders that lack a complete trial on some dataset, so the ranking leaves them out."""
    return sorted(set(best_per_encoder(trials)["encoder"]) - set(matrix.columns))


def mean_ranks(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per encoder: its mean rank over the datasets (1 = best; ties share the mean rank)."""
    if matrix.empty:
        return pd.DataFrame(columns=RANK_COLUMNS)
    ranks = matrix.rank(axis=1, ascending=False, method="average").mean()
    table = pd.DataFrame({"encoder": ranks.index, "mean_rank": ranks.to_numpy(), "datasets": len(matrix)})
    return table.sort_values(["mean_rank", "encoder"], ignore_index=True)


def smallest_wilcoxon_p(datasets: int) -> float:
    """The smallest two-sided p-value an exact Wilcoxon signed-rank test can give on
    `datasets` pairs: every difference with the same sign, 2 of the 2^n sign patterns."""
    return 2.0 / 2 ** datasets


def fewest_datasets_for(alpha: float = ALPHA) -> int:
    """How many datasets two encoders need before the Wilcoxon test can reach p < alpha."""
    return next(n for n in range(1, 64) if smallest_wilcoxon_p(n) < alpha)


def significance_matrix(matrix: pd.DataFrame) -> pd.DataFrame | None:
    """Encoder x encoder p-values of the post-hoc test, or None when the design has too
    few datasets or encoders to test."""
    datasets, encoders = matrix.shape
    if datasets < MIN_DATASETS or encoders < 2:
        return None
    if encoders == 2:
        # Friedman's test needs three treatments; two paired samples get Wilcoxon's.
        return posthocs.posthoc_wilcoxon(matrix.T.to_numpy()).set_axis(matrix.columns, axis=0).set_axis(
            matrix.columns, axis=1)
    return posthocs.posthoc_nemenyi_friedman(matrix)


def critical_difference(encoders: int, datasets: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of mean ranks: two encoders whose mean ranks differ by
    more are told apart at `alpha`, all pairs together (Demšar 2006, eq. 5)."""
    q_alpha = scipy_stats.studentized_range.ppf(1 - alpha, encoders, np.inf) / math.sqrt(2)
    return q_alpha * math.sqrt(encoders * (encoders + 1) / (6 * datasets))


def ranking_tests(matrix: pd.DataFrame, metrics: dict[str, str], alpha: float = ALPHA) -> pd.DataFrame:
    """The tests of the ranking: an omnibus row, then one row per pair of encoders.

    Three encoders or more: Friedman's test, with Kendall's W as its effect size, then
    Nemenyi's post-hoc test, whose effect is the difference of mean ranks with its
    simultaneous interval (the difference ± the critical difference). Two encoders:
    Wilcoxon's signed-rank test, with the mean difference of their best values and its
    t interval over the datasets (`metrics`: each dataset's metric). Fewer than three
    datasets: no test, and a note why.

    Each interval is cut to what its quantity can reach: ±(encoders - 1) rank places, and
    for the mean difference, the mean over the datasets of their metric's span (±1 where
    every metric lies in [0, 1]). With few datasets, ± t s/√n alone reaches past them, and
    the true value never lies there.
    """
    datasets, encoders = matrix.shape
    if encoders < 2:
        return pd.DataFrame(columns=TEST_COLUMNS)
    if datasets < MIN_DATASETS:
        return pd.DataFrame([_row("all encoders", "none", datasets=datasets, note=(
            f"a tested ranking needs at least {MIN_DATASETS} datasets; this comparison has {datasets}, "
            "so only the mean ranks are shown"))], columns=TEST_COLUMNS)
    ranks = mean_ranks(matrix).set_index("encoder")["mean_rank"]
    order = list(ranks.index)  # best first
    significance = significance_matrix(matrix)
    if encoders == 2:
        a, b = order
        differences = (matrix[a] - matrix[b]).to_numpy()
        mean = float(differences.mean())
        half = scipy_stats.t.ppf(0.975, datasets - 1) * differences.std(ddof=1) / math.sqrt(datasets)
        floor = smallest_wilcoxon_p(datasets)
        note = (f"with {datasets} datasets the two-sided test cannot go below p = {floor:.3g}; "
                f"p < {alpha} needs at least {fewest_datasets_for(alpha)} datasets") if floor >= alpha else ""
        reach = float(np.mean([high - low for low, high in (METRIC_RANGES[metrics[d]] for d in matrix.index)]))
        return pd.DataFrame([_row(f"{a} vs {b}", "Wilcoxon signed-rank", encoder_a=a, encoder_b=b,
                                  p_value=significance.loc[a, b],
                                  effect="mean difference of best values", effect_size=mean,
                                  ci_low=max(mean - half, -reach), ci_high=min(mean + half, reach),
                                  datasets=datasets, note=note)],
                            columns=TEST_COLUMNS)
    friedman = scipy_stats.friedmanchisquare(*matrix.to_numpy().T)
    rows = [_row("all encoders", "Friedman", statistic=friedman.statistic, p_value=friedman.pvalue,
                 effect="Kendall's W", effect_size=friedman.statistic / (datasets * (encoders - 1)),
                 datasets=datasets, note="the intervals are on the pairwise rows (Nemenyi, simultaneous)")]
    distance = critical_difference(encoders, datasets, alpha)
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            difference = ranks[b] - ranks[a]  # how many rank places a is ahead of b
            rows.append(_row(f"{a} vs {b}", "Nemenyi", encoder_a=a, encoder_b=b, p_value=significance.loc[a, b],
                             effect="mean rank difference", effect_size=difference,
                             ci_low=max(difference - distance, 1 - encoders),
                             ci_high=min(difference + distance, encoders - 1), datasets=datasets))
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def tested_significance(tests: pd.DataFrame) -> pd.DataFrame | None:
    """The encoder x encoder p-values back from the pair rows of `ranking_tests`, in the
    shape scikit-posthocs' critical-difference diagram reads; None when nothing was tested."""
    pairs = tests[tests["encoder_a"].notna() & tests["p_value"].notna()] if not tests.empty else tests
    if pairs.empty:
        return None
    encoders = sorted({*pairs["encoder_a"], *pairs["encoder_b"]})
    matrix = pd.DataFrame(np.eye(len(encoders)), index=encoders, columns=encoders)
    for row in pairs.itertuples():
        matrix.loc[row.encoder_a, row.encoder_b] = matrix.loc[row.encoder_b, row.encoder_a] = row.p_value
    return matrix


def _row(comparison: str, test: str, **values: object) -> dict[str, object]:
    row = dict.fromkeys(TEST_COLUMNS, np.nan)
    row.update({"comparison": comparison, "test": test, "note": "", **values})
    return row


def ranking_verdict(tests: pd.DataFrame, alpha: float = ALPHA) -> str:
    """One sentence on what the cross-dataset ranking supports."""
    if tests.empty:
        return "No cross-dataset ranking: fewer than two encoders have a complete trial on every dataset."
    first = tests.iloc[0]
    datasets = int(first["datasets"])
    if first["test"] == "none":
        return f"Mean ranks over {datasets} dataset(s) only: {first['note']}."
    if first["test"] == "Wilcoxon signed-rank":
        shown = "differ" if first["p_value"] < alpha else "cannot be told apart"
        sentence = (f"Across {datasets} datasets, {first['comparison'].replace(' vs ', ' and ')} {shown} "
                    f"(Wilcoxon signed-rank p = {first['p_value']:.3g}; mean difference {first['effect_size']:+.4f}, "
                    f"95% CI [{first['ci_low']:+.4f}, {first['ci_high']:+.4f}])")
        return f"{sentence}; {first['note']}." if first["note"] else f"{sentence}."
    apart = tests[(tests["test"] == "Nemenyi") & (tests["p_value"] < alpha)]["comparison"].tolist()
    if first["p_value"] >= alpha:
        return (f"Across {datasets} datasets, Friedman's test does not show that the encoders' ranks differ "
                f"(p = {first['p_value']:.3g}, Kendall's W = {first['effect_size']:.2f}): the mean ranks are "
                "no ranking the data support.")
    pairs = "; ".join(apart) if apart else "no pair"
    return (f"Across {datasets} datasets, Friedman's test finds the encoders' ranks differ (p = {first['p_value']:.3g}, "
            f"Kendall's W = {first['effect_size']:.2f}); Nemenyi's test tells apart: {pairs}.")
