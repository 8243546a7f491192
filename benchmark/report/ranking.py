"""The encoders ranked across datasets, and whether the ranking is real (Demšar 2006).

Each dataset is a block and each encoder a treatment, scored by its expected best
validation value at the dataset's common budget: n = the fewest complete trials any ranked
encoder has there (Dodge et al.'s estimator, see `stats.expected_max_curve`). Under pruning
one encoder's best of 2 would otherwise meet another's best of 3. Only encoders with a
complete trial on every dataset take part, so every block is complete. The tests come from scipy (Friedman) and scikit-posthocs
(Nemenyi after Friedman; Wilcoxon signed-rank for two encoders), and the
critical-difference diagram from scikit-posthocs too (see `report`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scikit_posthocs as posthocs
from scipy import stats as scipy_stats

from benchmark.report.leaderboard import best_per_encoder, dataset_columns, search_scores
from benchmark.report.stats import expected_max_curve
from benchmark.schema import TRIAL
from benchmark.train.metrics import METRIC_RANGES

MIN_DATASETS = 3  # fewer blocks than this and no rank test can say anything
ALPHA = 0.05

RANK_COLUMNS = ["encoder", "mean_rank", "datasets"]
TEST_COLUMNS = ["comparison", "encoder_a", "encoder_b", "test", "statistic", "p_value", "effect", "effect_size", "ci_low", "ci_high",
                "datasets", "note", "trials_compared"]


def score_matrix(trials: pd.DataFrame) -> pd.DataFrame:
    """Datasets (rows) x encoders (columns): each encoder's expected best validation value of
    n complete trials, n = the dataset's `compared_trials`. Encoders without a complete trial
    on every dataset are left out."""
    complete = search_scores(trials)
    encoders, budget = _common_budget(complete)
    if not encoders:
        return pd.DataFrame()
    values = complete[complete[TRIAL.encoder].isin(encoders)].groupby([TRIAL.study, TRIAL.encoder])[TRIAL.value]
    best = values.apply(lambda group: expected_max_curve(group, budget[group.name[0]])[-1])
    matrix = best.unstack(TRIAL.encoder).rename(index=dataset_columns(trials)).sort_index()
    matrix.index.name, matrix.columns.name = "dataset", None
    return matrix


def compared_trials(trials: pd.DataFrame) -> dict[str, int]:
    """Per dataset (under the score matrix's names): the n of complete trials every ranked
    encoder is scored at, the fewest any of them has there."""
    _, budget = _common_budget(search_scores(trials))
    names = dataset_columns(trials) if not budget.empty else {}
    return dict(sorted((names[study], int(n)) for study, n in budget.items()))


def _common_budget(complete: pd.DataFrame) -> tuple[list[str], pd.Series]:
    """The encoders with a complete trial in every study, and per study the fewest complete
    trials one of them has."""
    counts = complete.groupby([TRIAL.study, TRIAL.encoder]).size().unstack(TRIAL.encoder).dropna(axis=1)
    if counts.columns.empty:
        return [], pd.Series(dtype=int)
    return list(counts.columns), counts.min(axis=1).astype(int)


def score_matrix_metrics(trials: pd.DataFrame) -> dict[str, str]:
    """Each dataset's metric, under the score matrix's dataset names."""
    if trials.empty:
        return {}
    names = dataset_columns(trials)
    return {names[study]: metric for study, metric in trials.groupby(TRIAL.study)[TRIAL.metric].first().items()}


def left_out(trials: pd.DataFrame, matrix: pd.DataFrame) -> list[str]:
    """Encoders that lack a complete trial on some dataset, so the ranking leaves them out."""
    return sorted(set(best_per_encoder(trials)[TRIAL.encoder]) - set(matrix.columns))


def mean_ranks(matrix: pd.DataFrame) -> pd.DataFrame:
    """Per encoder: its mean rank over the datasets (1 = best; ties share the mean rank)."""
    if matrix.empty:
        return pd.DataFrame(columns=RANK_COLUMNS)
    ranks = matrix.rank(axis=1, ascending=False, method="average").mean()
    table = pd.DataFrame({"encoder": ranks.index, "mean_rank": ranks.to_numpy(), "datasets": len(matrix)})
    return table.sort_values(["mean_rank", "encoder"], ignore_index=True)


def smallest_wilcoxon_p(differences: int) -> float:
    """The smallest two-sided p-value an exact Wilcoxon signed-rank test can give on
    `differences` non-zero differences (it drops the zero ones): every one with the same
    sign, 2 of the 2^n sign patterns."""
    return min(1.0, 2.0 / 2 ** differences)


def fewest_datasets_for(alpha: float = ALPHA) -> int:
    """How many datasets (with non-zero differences) two encoders need before the Wilcoxon
    test can reach p < alpha."""
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


def ranking_tests(matrix: pd.DataFrame, metrics: dict[str, str], compared: dict[str, int] | None = None,
                  alpha: float = ALPHA) -> pd.DataFrame:
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
    the true value never lies there. Differences that are all equal give no interval (NaN),
    not one of zero width, which would read as a difference known exactly.

    `compared` (see `compared_trials`): per dataset, the complete trials the scores are the
    expected best of; every row says so in `trials_compared`.
    """
    datasets, encoders = matrix.shape
    if encoders < 2:
        return pd.DataFrame(columns=TEST_COLUMNS)
    basis = ", ".join(f"{dataset} {n}" for dataset, n in (compared or {}).items())
    return pd.DataFrame(_test_rows(matrix, metrics, alpha), columns=TEST_COLUMNS).assign(trials_compared=basis)


def _test_rows(matrix: pd.DataFrame, metrics: dict[str, str], alpha: float) -> list[dict[str, object]]:
    datasets, encoders = matrix.shape
    if datasets < MIN_DATASETS:
        return [_row("all encoders", "none", datasets=datasets, note=(
            f"a tested ranking needs at least {MIN_DATASETS} datasets; this comparison has {datasets}, "
            "so only the mean ranks are shown"))]
    ranks = mean_ranks(matrix).set_index("encoder")["mean_rank"]
    order = list(ranks.index)  # best first
    significance = significance_matrix(matrix)
    if encoders == 2:
        a, b = order
        differences = (matrix[a] - matrix[b]).to_numpy()
        mean = float(differences.mean())
        spread = differences.std(ddof=1)
        half = scipy_stats.t.ppf(0.975, datasets - 1) * spread / math.sqrt(datasets) if spread > 1e-12 else np.nan
        notes = [_wilcoxon_floor(int(np.count_nonzero(differences)), datasets, alpha)]
        if np.isnan(half):
            notes.append(f"all {datasets} differences are equal ({mean:+.4f}), so they give no interval")
        reach = float(np.mean([high - low for low, high in (METRIC_RANGES[metrics[d]] for d in matrix.index)]))
        return [_row(f"{a} vs {b}", "Wilcoxon signed-rank", encoder_a=a, encoder_b=b,
                     p_value=significance.loc[a, b],
                     effect="mean difference of expected best values", effect_size=mean,
                     ci_low=np.maximum(mean - half, -reach), ci_high=np.minimum(mean + half, reach),
                     datasets=datasets, note="; ".join(note for note in notes if note))]
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
    return rows


def _wilcoxon_floor(nonzero: int, datasets: int, alpha: float) -> str:
    """The note on the smallest p the Wilcoxon test can reach; "" when it can reach p < alpha."""
    floor = smallest_wilcoxon_p(nonzero)
    if floor < alpha:
        return ""
    if nonzero == datasets:
        return (f"with {datasets} datasets the two-sided test cannot go below p = {floor:.3g}; "
                f"p < {alpha} needs at least {fewest_datasets_for(alpha)} datasets")
    return (f"{nonzero} of the {datasets} differences are non-zero (the test drops ties), so the two-sided "
            f"test cannot go below p = {floor:.3g}; p < {alpha} needs at least {fewest_datasets_for(alpha)} "
            "non-zero differences")


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
    """One sentence on what the cross-dataset ranking supports, and what it ranks by."""
    if tests.empty:
        return "No cross-dataset ranking: fewer than two encoders have a complete trial on every dataset."
    first = tests.iloc[0]
    basis = first.get("trials_compared")
    scored = (f" Each encoder is scored on a dataset by its expected best of n complete trials, n the fewest any "
              f"ranked encoder has there ({basis}), so no best of more trials meets a best of fewer.") if isinstance(basis, str) and basis else ""
    return _verdict(tests, first, alpha) + scored


def _verdict(tests: pd.DataFrame, first: pd.Series, alpha: float) -> str:
    datasets = int(first["datasets"])
    if first["test"] == "none":
        return f"Mean ranks over {datasets} dataset(s) only: {first['note']}."
    if first["test"] == "Wilcoxon signed-rank":
        shown = "differ" if first["p_value"] < alpha else "cannot be told apart"
        interval = ("no interval" if pd.isna(first["ci_low"])
                    else f"95% CI [{first['ci_low']:+.4f}, {first['ci_high']:+.4f}]")
        sentence = (f"Across {datasets} datasets, {first['comparison'].replace(' vs ', ' and ')} {shown} "
                    f"(Wilcoxon signed-rank p = {first['p_value']:.3g}; mean difference {first['effect_size']:+.4f}, "
                    f"{interval})")
        return f"{sentence}; {first['note']}." if first["note"] else f"{sentence}."
    apart = tests[(tests["test"] == "Nemenyi") & (tests["p_value"] < alpha)]["comparison"].tolist()
    if first["p_value"] >= alpha:
        return (f"Across {datasets} datasets, Friedman's test does not show that the encoders' ranks differ "
                f"(p = {first['p_value']:.3g}, Kendall's W = {first['effect_size']:.2f}): the mean ranks are "
                "no ranking the data support.")
    pairs = "; ".join(apart) if apart else "no pair"
    return (f"Across {datasets} datasets, Friedman's test finds the encoders' ranks differ (p = {first['p_value']:.3g}, "
            f"Kendall's W = {first['effect_size']:.2f}); Nemenyi's test tells apart: {pairs}.")
