"""The cross-dataset ranking, checked against scikit-posthocs' documented example and by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from benchmark.report import ranking
from tests.helpers import trial_row, trials_table

# scikit-posthocs' tutorial ("Block design"): 4 blocks (here datasets) x 4 groups (encoders).
# It gives Friedman chi2 = 8.7, p = 0.03355726870553798, and Nemenyi p-values
# w-x 0.220908, w-y 0.823993, w-z 0.031375, x-y 0.670273, x-z 0.823993, y-z 0.220908.
DOCS = pd.DataFrame([[8.82, 11.8, 10.37, 12.08], [8.92, 9.58, 10.59, 11.89],
                     [8.27, 11.46, 10.24, 11.6], [8.83, 13.25, 8.33, 11.51]],
                    index=["d1", "d2", "d3", "d4"], columns=["w", "x", "y", "z"])
# Not in any metric's range; only the Wilcoxon path (two encoders) reads the metrics.
DOCS_METRICS = dict.fromkeys(DOCS.index, "accuracy")


def test_friedman_and_nemenyi_reproduce_the_documented_example():
    tests = ranking.ranking_tests(DOCS, DOCS_METRICS).set_index("comparison")
    omnibus = tests.loc["all encoders"]
    assert omnibus["test"] == "Friedman"
    assert omnibus["statistic"] == pytest.approx(8.7)
    assert omnibus["p_value"] == pytest.approx(0.03355726870553798)
    assert omnibus["effect_size"] == pytest.approx(8.7 / (4 * 3))  # Kendall's W = chi2 / (n (k - 1))
    # Higher scores rank first: z (1+1+1+2)/4 = 1.25, x 2.0, y 3.0, w 3.75
    ranks = ranking.mean_ranks(DOCS)
    assert ranks["encoder"].tolist() == ["z", "x", "y", "w"]
    assert ranks["mean_rank"].tolist() == pytest.approx([1.25, 2.0, 3.0, 3.75])
    assert tests.loc["z vs w", "p_value"] == pytest.approx(0.031375, abs=2e-4)
    assert tests.loc["x vs w", "p_value"] == pytest.approx(0.220908, abs=2e-4)
    assert tests.loc["z vs y", "p_value"] == pytest.approx(0.220908, abs=2e-4)
    # The other three the docs print from an older studentized-range approximation
    # (0.823993, 0.670273); the current library's exact distribution gives about 0.02 more.
    assert tests.loc["z vs x", "p_value"] == pytest.approx(0.823993, abs=0.025)
    assert tests.loc["x vs y", "p_value"] == pytest.approx(0.670273, abs=0.025)
    assert list(tests.index) == ["all encoders", "z vs x", "z vs y", "z vs w", "x vs y", "x vs w", "y vs w"]


def test_nemenyi_interval_is_the_mean_rank_difference_plus_minus_the_critical_difference():
    # Demšar (2006), table 5: q_0.05 = 2.569 for k = 4; CD = 2.569 * sqrt(4 * 5 / (6 * 4))
    distance = ranking.critical_difference(4, 4)
    assert distance == pytest.approx(2.569 * math.sqrt(20 / 24), abs=1e-3)
    tests = ranking.ranking_tests(DOCS, DOCS_METRICS).set_index("comparison")
    pair = tests.loc["z vs w"]
    assert pair["effect_size"] == pytest.approx(2.5)
    # 2.5 + distance is 4.85 rank places, past the 3 that 4 encoders allow: the interval stops there.
    assert (pair["ci_low"], pair["ci_high"]) == pytest.approx((2.5 - distance, 3.0))
    assert tests.loc["x vs y", "ci_low"] == pytest.approx(1.0 - distance)
    assert ((tests["ci_low"].dropna() >= -3) & (tests["ci_high"].dropna() <= 3)).all()
    # The interval and the p-value agree: it leaves out 0 exactly where p < 0.05.
    pairs = tests[tests["test"] == "Nemenyi"]
    assert ((pairs["ci_low"] > 0) == (pairs["p_value"] < 0.05)).all()
    assert ranking.ranking_verdict(ranking.ranking_tests(DOCS, DOCS_METRICS)) == (
        "Across 4 datasets, Friedman's test finds the encoders' ranks differ (p = 0.0336, Kendall's W = 0.73); "
        "Nemenyi's test tells apart: z vs w.")


def test_two_encoders_get_wilcoxon_and_the_floor_few_datasets_put_on_p():
    scores = pd.DataFrame({"a": [0.90, 0.80, 0.70], "b": [0.85, 0.78, 0.60]}, index=["d1", "d2", "d3"])
    [row] = ranking.ranking_tests(scores, dict.fromkeys(scores.index, "accuracy")).to_dict("records")
    # a wins on all 3: the exact two-sided p is 2 / 2^3 = 0.25, the smallest 3 pairs allow
    assert row["test"] == "Wilcoxon signed-rank" and row["comparison"] == "a vs b"
    assert row["p_value"] == pytest.approx(0.25)
    assert ranking.smallest_wilcoxon_p(3) == 0.25 and ranking.fewest_datasets_for(0.05) == 6
    differences = np.array([0.05, 0.02, 0.10])
    low, high = scipy_stats.t.interval(0.95, 2, loc=differences.mean(), scale=scipy_stats.sem(differences))
    assert (row["effect_size"], row["ci_low"], row["ci_high"]) == pytest.approx((differences.mean(), low, high))
    assert "cannot go below p = 0.25; p < 0.05 needs at least 6 datasets" in row["note"]
    assert ranking.ranking_verdict(ranking.ranking_tests(scores, dict.fromkeys(scores.index, "accuracy"))).startswith(
        "Across 3 datasets, a and b cannot be told apart (Wilcoxon signed-rank p = 0.25;")


@pytest.mark.parametrize("metric, reach", [("accuracy", 1.0), ("mcc", 2.0)])
def test_the_t_interval_of_the_mean_difference_stays_within_what_it_can_reach(metric, reach):
    # Differences 0.9, 0.05, 0.9: mean 0.6167, s = 0.4907, t(0.975, 2) = 4.3027, so ± t s/√3 =
    # ± 1.219 gives [-0.602, 1.836], past the +1 that two accuracies can differ by. The
    # difference of two MCCs (each in [-1, 1]) can reach 2, so there only 2 cuts it.
    scores = pd.DataFrame({"a": [0.95, 0.10, 0.90], "b": [0.05, 0.05, 0.0]}, index=["d1", "d2", "d3"])
    [row] = ranking.ranking_tests(scores, dict.fromkeys(scores.index, metric)).to_dict("records")
    assert row["effect_size"] == pytest.approx(0.6167, abs=1e-4)
    assert row["ci_low"] == pytest.approx(0.6167 - 1.2190, abs=1e-3)
    assert row["ci_high"] == pytest.approx(min(0.6167 + 1.2190, reach), abs=1e-3)
    # One accuracy and two MCC datasets: the mean difference reaches (1 + 2 + 2) / 3.
    mixed = ranking.ranking_tests(scores, {"d1": "accuracy", "d2": "mcc", "d3": "mcc"}).iloc[0]
    assert mixed["ci_high"] == pytest.approx(min(0.6167 + 1.2190, 5 / 3), abs=1e-3)


def test_fewer_than_three_datasets_show_mean_ranks_untested():
    scores = pd.DataFrame({"a": [0.9, 0.8], "b": [0.7, 0.85], "c": [0.6, 0.5]}, index=["d1", "d2"])
    assert ranking.mean_ranks(scores)["mean_rank"].tolist() == pytest.approx([1.5, 1.5, 3.0])
    tests = ranking.ranking_tests(scores, dict.fromkeys(scores.index, "accuracy"))
    assert tests["test"].tolist() == ["none"] and math.isnan(tests["p_value"].iloc[0])
    assert ranking.ranking_verdict(tests) == (
        "Mean ranks over 2 dataset(s) only: a tested ranking needs at least 3 datasets; this comparison has 2, "
        "so only the mean ranks are shown.")
    assert ranking.significance_matrix(scores) is None


def test_only_encoders_complete_on_every_dataset_are_ranked():
    rows = [trial_row(f"b-{d}", d, "accuracy", i, "COMPLETE", v, e, i, 1, {})
            for d, values in {"x": {"e1": 0.9, "e2": 0.8, "e3": 0.7}, "y": {"e1": 0.6, "e2": 0.65}}.items()
            for i, (e, v) in enumerate(values.items())]
    rows.append(trial_row("b-y", "y", "accuracy", 9, "PRUNED", 0.99, "e3", 9, 1, {}))  # pruned: not complete
    trials = trials_table(rows)
    matrix = ranking.score_matrix(trials)
    assert list(matrix.columns) == ["e1", "e2"] and list(matrix.index) == ["x", "y"]
    assert matrix.loc["y", "e2"] == pytest.approx(0.65)
    assert ranking.left_out(trials, matrix) == ["e3"]
    assert ranking.score_matrix_metrics(trials) == {"x": "accuracy", "y": "accuracy"}


def test_encoders_are_ranked_at_the_budget_they_share_not_by_their_best_of_all():
    # Pruning left a 2 complete trials and b 3 on every dataset. By best value b leads on
    # each (0.82 > 0.80); at n = 2 a's expected best is 0.25 x 0.70 + 0.75 x 0.80 = 0.775 and
    # b's (1/9) 0.60 + (3/9) 0.75 + (5/9) 0.82 = 0.7722: a leads.
    rows = []
    for d in ("x", "y", "z"):
        rows += [trial_row(f"b-{d}", d, "macro_f1", i, "COMPLETE", v, "a", i, 1, {})
                 for i, v in enumerate([0.80, 0.70])]
        rows += [trial_row(f"b-{d}", d, "macro_f1", 2 + i, "COMPLETE", v, "b", 2 + i, 1, {})
                 for i, v in enumerate([0.60, 0.75, 0.82])]
        rows.append(trial_row(f"b-{d}", d, "macro_f1", 5, "PRUNED", 0.5, "a", 5, 1, {}))
    trials = trials_table(rows)
    matrix = ranking.score_matrix(trials)
    assert matrix["a"].tolist() == pytest.approx([0.775] * 3)
    assert matrix["b"].tolist() == pytest.approx([0.60 / 9 + 0.75 / 3 + 0.82 * 5 / 9] * 3)
    assert ranking.mean_ranks(matrix)["encoder"].tolist() == ["a", "b"]
    assert ranking.compared_trials(trials) == {"x": 2, "y": 2, "z": 2}
    tests = ranking.ranking_tests(matrix, ranking.score_matrix_metrics(trials), ranking.compared_trials(trials))
    assert tests["trials_compared"].tolist() == ["x 2, y 2, z 2"]
    assert ranking.ranking_verdict(tests).endswith(
        "Each encoder is scored on a dataset by its expected best of n complete trials, n the fewest any ranked "
        "encoder has there (x 2, y 2, z 2), so no best of more trials meets a best of fewer.")


def test_the_wilcoxon_floor_counts_only_non_zero_differences():
    # Six datasets would allow p = 2 / 64 = 0.031; two ties leave four differences, whose
    # smallest p is 2 / 16 = 0.125, whatever their signs.
    scores = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], "b": [0.85, 0.75, 0.65, 0.55, 0.5, 0.4]},
                          index=[f"d{i}" for i in range(6)])
    [row] = ranking.ranking_tests(scores, dict.fromkeys(scores.index, "accuracy")).to_dict("records")
    assert row["p_value"] == pytest.approx(0.125)
    assert row["note"] == ("4 of the 6 differences are non-zero (the test drops ties), so the two-sided test "
                           "cannot go below p = 0.125; p < 0.05 needs at least 6 non-zero differences")


def test_differences_that_are_all_equal_give_no_interval():
    # +0.01 on each of 3 datasets: s = 0, and [+0.01, +0.01] would read as a difference known
    # exactly, where three datasets cannot even reach p < 0.25.
    scores = pd.DataFrame({"a": [0.91, 0.81, 0.71], "b": [0.90, 0.80, 0.70]}, index=["d1", "d2", "d3"])
    tests = ranking.ranking_tests(scores, dict.fromkeys(scores.index, "accuracy"))
    row = tests.iloc[0]
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert "all 3 differences are equal (+0.0100), so they give no interval" in row["note"]
    verdict = ranking.ranking_verdict(tests)
    assert "mean difference +0.0100, no interval)" in verdict and "[+0.0100, +0.0100]" not in verdict
