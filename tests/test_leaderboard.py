"""Leaderboard tables from a hand-built trials table, checked against hand-computed numbers."""

from __future__ import annotations

import dataclasses
import html
import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from benchmark.report.leaderboard import (
    cost_table,
    dataset_columns,
    dataset_summary,
    encoder_leaderboard,
    expected_performance,
    final_evaluation,
    reference_flag_sentences,
    reference_flags,
    to_markdown,
    top_encoder_verdicts,
    verdict_strength,
    with_reference_test_scores,
)
from benchmark.report.results import FINAL_RUN_COLUMNS, TRIAL_COLUMNS, trials_frame
from benchmark.schema import TRIAL
from tests.helpers import (
    NAN,
    STORED_LABELS,
    stored_final_evaluation,
    study_with_every_state,
    trial_row,
    trials_table,
)

P = lambda lr, bs, dp: {"learning_rate": lr, "batch_size": bs, "dropout": dp}  # noqa: E731


@pytest.fixture()
def trials() -> pd.DataFrame:
    """Two datasets x three encoders (e1, e2, e3), with PRUNED and FAIL rows.

    bench-news (accuracy):            bench-reviews (macro_f1):
      0 e1 COMPLETE 0.80                0 e1 COMPLETE 0.60
      1 e2 COMPLETE 0.85  <- best       1 e2 COMPLETE 0.55
      2 e3 COMPLETE 0.70                2 e3 PRUNED   0.95  (pruned value: must not count)
      3 e1 COMPLETE 0.82                3 e2 COMPLETE 0.60  (ties e1)
      4 e3 PRUNED   0.99                4 e3 FAIL     NaN
      5 e2 FAIL     NaN                 5 e1 COMPLETE 0.58
    """
    rows = [
        trial_row("bench-news", "news", "accuracy", 0, "COMPLETE", 0.80, "e1", 0, 10.0, P(1e-4, 16, 0.1)),
        trial_row("bench-news", "news", "accuracy", 1, "COMPLETE", 0.85, "e2", 10, 20.0, P(3e-4, 32, 0.2)),
        trial_row("bench-news", "news", "accuracy", 2, "COMPLETE", 0.70, "e3", 30, 5.0, P(2e-5, 16, 0.0)),
        trial_row("bench-news", "news", "accuracy", 3, "COMPLETE", 0.82, "e1", 35, 12.5, P(5e-5, 32, 0.05)),
        trial_row("bench-news", "news", "accuracy", 4, "PRUNED", 0.99, "e3", 50, 3.0, P(1e-3, 16, 0.3)),
        trial_row("bench-news", "news", "accuracy", 5, "FAIL", NAN, "e2", 60, 1.25, P(1e-5, 32, 0.1)),
        trial_row("bench-reviews", "reviews", "macro_f1", 0, "COMPLETE", 0.60, "e1", 100, 7.0, P(1e-4, 16, 0.1)),
        trial_row("bench-reviews", "reviews", "macro_f1", 1, "COMPLETE", 0.55, "e2", 110, 8.0, P(2e-4, 16, 0.15)),
        trial_row("bench-reviews", "reviews", "macro_f1", 2, "PRUNED", 0.95, "e3", 120, 2.0, P(3e-5, 32, 0.2)),
        trial_row("bench-reviews", "reviews", "macro_f1", 3, "COMPLETE", 0.60, "e2", 125, 9.0, P(7e-5, 32, 0.25)),
        trial_row("bench-reviews", "reviews", "macro_f1", 4, "FAIL", NAN, "e3", 140, 0.5, P(1e-4, 16, 0.0)),
        trial_row("bench-reviews", "reviews", "macro_f1", 5, "COMPLETE", 0.58, "e1", 150, 6.0, P(1e-4, 32, 0.1)),
    ]
    frame = trials_table(rows)
    assert set(TRIAL_COLUMNS) <= set(frame.columns)
    return frame


def test_every_column_of_the_trials_table_is_declared_once(tmp_path):
    """The storage's trials read back have exactly `schema.TRIAL`'s columns (each sampled
    parameter under its prefix): every reader names them through it, and trials.csv carries
    them to the user's scripts under the same names."""
    url = f"sqlite:///{tmp_path / 'every-state.db'}"
    optuna.create_study(storage=url, study_name="not-ours")  # another tool's study: no rows
    assert list(trials_frame(url).columns) == TRIAL_COLUMNS
    study_with_every_state(url)
    frame = trials_frame(url)
    declared = set(dataclasses.astuple(TRIAL)) - {TRIAL.param_prefix}
    assert set(frame.columns) == declared | {f"{TRIAL.param_prefix}dropout"}
    assert list(frame.columns[:len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    assert frame[TRIAL.fail_reason].tolist()[2:4] == ["ValueError: boom", "interrupted"]

def test_encoder_leaderboard(trials):
    # Best COMPLETE value per (dataset, encoder):
    #   news:    e1 max(0.80, 0.82) = 0.82, e2 0.85, e3 0.70 (the pruned 0.99 is ignored)
    #   reviews: e1 max(0.60, 0.58) = 0.60, e2 max(0.55, 0.60) = 0.60, e3 none (only PRUNED/FAIL)
    # Ranks (1 = best): news e2 1, e1 2, e3 3; reviews e1 and e2 tie for 1-2 -> 1.5 each
    # mean_rank: e1 (2 + 1.5)/2 = 1.75, e2 (1 + 1.5)/2 = 1.25, e3 3/1 = 3.0
    # datasets:  e1 2, e2 2, e3 1;  sorted by mean_rank: e2, e1, e3
    # Trials (complete or pruned; failed ones got nothing):
    #   news e1 2, e2 1, e3 2 (one pruned);  reviews e1 2, e2 2, e3 1 (pruned)
    # Normalized: news worst 0.70 -> 0, best 0.85 -> 1, e1 (0.82 - 0.70) / 0.15 = 0.8;
    #   reviews e1 and e2 tie -> both 1;  mean: e2 1.0, e1 0.9, e3 0.0
    table = encoder_leaderboard(trials)
    assert list(table.columns) == ["encoder", "news", "reviews", "trials: news", "trials: reviews",
                                   "mean_rank", "normalized_score", "datasets"]
    assert table["trials: news"].tolist() == [1, 2, 2]
    assert table["trials: reviews"].tolist() == [2, 2, 1]
    assert table["normalized_score"].tolist() == pytest.approx([1.0, 0.9, 0.0])
    assert table["encoder"].tolist() == ["e2", "e1", "e3"]
    assert table["news"].tolist() == pytest.approx([0.85, 0.82, 0.70])
    assert table["reviews"].iloc[:2].tolist() == pytest.approx([0.60, 0.60])
    assert math.isnan(table["reviews"].iloc[2])
    assert table["mean_rank"].tolist() == pytest.approx([1.25, 1.75, 3.0])
    assert table["datasets"].tolist() == [2, 2, 1]


def test_encoder_leaderboard_breaks_mean_rank_ties_by_name():
    # one dataset, zed and alpha tie on 0.9 (rank 1.5 each), mid third
    rows = [
        trial_row("b-d", "d", "accuracy", 0, "COMPLETE", 0.9, "zed", 0, 1, {}),
        trial_row("b-d", "d", "accuracy", 1, "COMPLETE", 0.5, "mid", 1, 1, {}),
        trial_row("b-d", "d", "accuracy", 2, "COMPLETE", 0.9, "alpha", 2, 1, {}),
    ]
    table = encoder_leaderboard(trials_table(rows))
    assert table["encoder"].tolist() == ["alpha", "zed", "mid"]
    assert table["mean_rank"].tolist() == [1.5, 1.5, 3.0]


def test_encoder_leaderboard_without_complete_trials(trials):
    only_bad = trials[trials["state"] != "COMPLETE"]
    table = encoder_leaderboard(only_bad)
    assert table.empty
    assert list(table.columns) == ["encoder", "mean_rank", "normalized_score", "datasets"]


def test_dataset_summary(trials):
    summary = dataset_summary(trials).set_index("dataset")
    assert summary.index.tolist() == ["news", "reviews"]

    news = summary.loc["news"]
    assert news["study"] == "bench-news" and news["metric"] == "accuracy"
    assert news["best_value"] == pytest.approx(0.85)
    assert news["best_encoder"] == "e2" and news["best_trial"] == 1
    assert json.loads(news["best_params"]) == {"batch_size": 32, "dropout": 0.2, "learning_rate": 3e-4}
    assert (news["complete"], news["pruned"], news["failed"]) == (4, 1, 1)
    # trial_seconds = 10 + 20 + 5 + 12.5 + 3 + 1.25 = 51.75 -> 51.8 (one decimal)
    assert news["trial_seconds"] == pytest.approx(51.8)
    # wall: first start t=0, last completion t=60 + 1.25 -> 61.25 -> 61.2 (one decimal, half to even)
    assert news["wall_seconds"] == pytest.approx(61.2)

    reviews = summary.loc["reviews"]
    assert reviews["metric"] == "macro_f1"
    # 0.60 ties between trial 0 (e1) and trial 3 (e2): both encoders are named, and the
    # first trial, 0, gives the parameters
    assert reviews["best_value"] == pytest.approx(0.60)
    assert reviews["best_encoder"] == "e1, e2" and reviews["best_trial"] == 0
    assert json.loads(reviews["best_params"]) == {"batch_size": 16, "dropout": 0.1, "learning_rate": 1e-4}
    assert (reviews["complete"], reviews["pruned"], reviews["failed"]) == (4, 1, 1)
    # 7 + 8 + 2 + 9 + 0.5 + 6 = 32.5; wall from t=100 to t=150 + 6 = 56
    assert reviews["trial_seconds"] == pytest.approx(32.5)
    assert reviews["wall_seconds"] == pytest.approx(56.0)


def test_dataset_summary_best_params_are_plain_json(trials):
    summary = dataset_summary(trials)
    params = json.loads(summary.loc[0, "best_params"])
    assert type(params["batch_size"]) is int
    assert type(params["learning_rate"]) is float
    assert list(params) == sorted(params)  # sorted keys


def test_dataset_summary_of_a_study_without_complete_trials(trials):
    only_bad = trials[(trials["study"] == "bench-news") & (trials["state"] != "COMPLETE")]
    row = dataset_summary(only_bad).iloc[0]
    assert row["best_value"] is None and row["best_encoder"] is None and row["best_trial"] is None
    assert json.loads(row["best_params"]) == {}
    assert (row["complete"], row["pruned"], row["failed"]) == (0, 1, 1)
    assert row["trial_seconds"] == pytest.approx(4.2)  # 3 + 1.25 = 4.25 -> 4.2


def test_running_trial_counts_in_no_state_and_no_time(trials):
    running = trial_row("bench-news", "news", "accuracy", 6, "RUNNING", NAN, "e1", 70, None, P(1e-4, 16, 0.1))
    frame = pd.concat([trials, trials_table([running])], ignore_index=True)
    news = dataset_summary(frame).set_index("dataset").loc["news"]
    assert (news["complete"], news["pruned"], news["failed"]) == (4, 1, 1)
    assert news["trial_seconds"] == pytest.approx(51.8)
    assert news["wall_seconds"] == pytest.approx(61.2)


def test_dataset_columns_when_benchmarks_share_a_dataset(trials):
    # A second benchmark config in the same storage also has a "news" study.
    other = trials_table([
        trial_row("quick-news", "news", "accuracy", 0, "COMPLETE", 0.95, "e1", 0, 4.0, P(1e-4, 16, 0.1),
               benchmark="quick"),
        trial_row("quick-news", "news", "accuracy", 1, "COMPLETE", 0.90, "e3", 4, 4.0, P(1e-4, 16, 0.1),
               benchmark="quick"),
    ])
    frame = pd.concat([trials, other], ignore_index=True)
    assert dataset_columns(frame) == {
        "bench-news": "bench-news", "quick-news": "quick-news", "bench-reviews": "reviews",
    }
    assert dataset_columns(trials) == {"bench-news": "news", "bench-reviews": "reviews"}

    table = encoder_leaderboard(frame)
    assert list(table.columns)[:4] == ["encoder", "bench-news", "quick-news", "reviews"]
    # quick-news: e1 0.95 rank 1, e3 0.90 rank 2
    # e1: (2 + 1.5 + 1)/3 = 1.5; e2: (1 + 1.5)/2 = 1.25; e3: (3 + 2)/2 = 2.5
    assert table["encoder"].tolist() == ["e2", "e1", "e3"]
    assert table["mean_rank"].tolist() == pytest.approx([1.25, 1.5, 2.5])
    assert table["datasets"].tolist() == [2, 3, 2]

    summary = dataset_summary(frame)
    assert summary["dataset"].tolist() == ["bench-news", "reviews", "quick-news"]
    assert summary["study"].tolist() == ["bench-news", "bench-reviews", "quick-news"]


def test_to_markdown(trials):
    text = to_markdown(encoder_leaderboard(trials))
    lines = text.splitlines()
    assert text.endswith("\n")
    assert "encoder" in lines[0] and "mean_rank" in lines[0]
    assert "0.8500" in text and "1.2500" in text
    assert len(lines) == 2 + 3


def test_a_crash_while_writing_leaves_the_previous_table_whole(tmp_path, monkeypatch):
    import os

    from benchmark.errors import BenchmarkError
    from benchmark.files import write_atomic

    target = tmp_path / "leaderboard.csv"
    write_atomic(target, "encoder,value\nbert,0.9\n")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(BenchmarkError, match=r"^--results-dir: cannot write .*leaderboard.csv \(disk full\); "
                                             r"nothing half-written is left"):
        write_atomic(target, "encoder,value\nbert,0.95\nroberta,0.9")
    assert target.read_text() == "encoder,value\nbert,0.9\n"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"], "no temporary file left behind"


def test_cost_table(trials):
    # Seconds per (dataset, encoder), from the fixture's durations:
    #   news:    e1 10 + 12.5 = 22.5, e2 20 + 1.25 (failed) = 21.25, e3 5 + 3 (pruned) = 8
    #   reviews: e1 7 + 6 = 13, e2 8 + 9 = 17, e3 2 (pruned) + 0.5 (failed) = 2.5
    # Pareto (higher best value, fewer device-hours): news e2 beats e1 on both, e3 is the
    # cheapest; reviews e1 ties e2 on quality for less; e3 has no complete trial there.
    table = cost_table(trials.assign(train_tokens=trials["number"] * 100))
    news = table[table["dataset"] == "news"].set_index("encoder")
    reviews = table[table["dataset"] == "reviews"].set_index("encoder")
    assert news["trial_seconds"].tolist() == [22.5, 21.2, 8.0]  # rounded to 0.1 s
    assert news["device_hours"].tolist() == pytest.approx([22.5 / 3600, 21.25 / 3600, 8 / 3600])
    assert news[["trials", "complete", "pruned", "failed"]].values.tolist() == [[2, 2, 0, 0], [2, 1, 0, 1], [2, 1, 1, 0]]
    assert news["train_tokens"].tolist() == [0 + 300, 100 + 500, 200 + 400]
    assert news["pareto"].tolist() == [False, True, True]
    assert reviews["pareto"].tolist() == [True, False, False]
    assert math.isnan(reviews.loc["e3", "best_value"])


def test_expected_performance_rests_on_complete_trials_only(trials):
    # news e1 [0.80, 0.82]: n=1 0.81, n=2 0.80/4 + 0.82*3/4 = 0.815
    # news e3 [0.70] only: its pruned 0.99 (a checkpoint subset's score) never enters
    # news e2 [0.85] (its failed trial scored nothing); reviews e3 has no complete trial: no curve
    table = expected_performance(trials, resamples=200)
    news = table[table["dataset"] == "news"]
    e1, e2, e3 = (news[news["encoder"] == name] for name in ("e1", "e2", "e3"))
    assert e1["expected_max"].tolist() == pytest.approx([0.81, 0.815])
    assert e3["expected_max"].tolist() == pytest.approx([0.70])
    assert e3["band_high"].max() == pytest.approx(0.70)
    assert e2["expected_max"].tolist() == pytest.approx([0.85])
    assert e1["n"].tolist() == [1, 2] and e1["complete_trials"].tolist() == [2, 2]
    assert e3["complete_trials"].tolist() == [1]
    reviews = table[table["dataset"] == "reviews"]
    assert sorted(reviews["encoder"].unique()) == ["e1", "e2"]
    assert (table["band_low"] <= table["expected_max"] + 1e-12).all()
    assert (table["expected_max"] <= table["band_high"] + 1e-12).all()
    assert expected_performance(trials.iloc[0:0]).empty


def test_a_pruned_high_value_never_lifts_the_curve():
    rows = [trial_row("b-d", "d", "accuracy", 0, "COMPLETE", 0.60, "e1", 0, 1, {}),
            trial_row("b-d", "d", "accuracy", 1, "PRUNED", 0.99, "e1", 1, 1, {}),
            trial_row("b-d", "d", "accuracy", 2, "COMPLETE", 0.70, "e1", 2, 1, {})]
    curve = expected_performance(trials_table(rows), resamples=50)
    # [0.60, 0.70]: n=1 0.65, n=2 0.60/4 + 0.70*3/4 = 0.675; with the 0.99 it would reach 0.99 * 5/9 + ...
    assert curve["expected_max"].tolist() == pytest.approx([0.65, 0.675])
    assert curve["band_high"].max() == pytest.approx(0.70)


def test_verdict_strength_from_the_fixture(trials):
    strength = verdict_strength(trials, expected_performance(trials, resamples=200)).set_index("dataset")
    news = strength.loc["news"]
    # complete: e1 2, e2 1, e3 1 (its 0.99 was pruned). Top two by best value: e2 0.85, e1 0.82,
    # compared at n = min(1, 2) = 1: e2's band is [0.85, 0.85], e1's lies within [0.80, 0.82].
    assert news["complete_per_encoder"] == "e1 2, e2 1, e3 1"
    assert news["top_two_bands_overlap"] == "no at n=1"
    assert news["search_verdict"].startswith(
        "too few trials to compare: at n=1 complete trial(s) each (the fewest, e2, e3), e2 leads e1")
    reviews = strength.loc["reviews"]
    # e1 and e2 tie on 0.60 (name breaks it); n=2: e1's band [0.58, 0.60] meets e2's [0.55, 0.60]
    assert reviews["complete_per_encoder"] == "e1 2, e2 2, e3 0"
    assert reviews["top_two_bands_overlap"] == "yes at n=2"
    assert reviews["search_verdict"].startswith("too few trials to compare")


@pytest.mark.parametrize(("second", "overlap", "verdict"), [
    ([0.50, 0.51, 0.52], "no at n=3", "a ahead of b: their expected-performance bands are apart at n=3"),
    ([0.89, 0.905, 0.915], "yes at n=3",
     "a and b overlap at n=3 complete trials each: more trials, not a choice between them, is what the data supports"),
])
def test_verdict_strength_overlap_at_the_budget_spent(second, overlap, verdict):
    # a [0.90, 0.91, 0.92]; at n=3 its band spans about [0.91, 0.92]: b's either lies far
    # below it or reaches into it
    rows = [trial_row("b-d", "d", "accuracy", i, "COMPLETE", v, "a", i, 1, {})
            for i, v in enumerate([0.90, 0.91, 0.92])]
    rows += [trial_row("b-d", "d", "accuracy", 3 + i, "COMPLETE", v, "b", 3 + i, 1, {}) for i, v in enumerate(second)]
    frame = trials_table(rows)
    row = verdict_strength(frame, expected_performance(frame, resamples=300)).iloc[0]
    assert row["complete_per_encoder"] == "a 3, b 3"
    assert row["top_two_bands_overlap"] == overlap
    assert row["search_verdict"].startswith(verdict)


def _two_encoders(a_values, b_values) -> pd.DataFrame:
    rows = [trial_row("b-d", "d", "accuracy", i, "COMPLETE", v, "a", i, 1, {}) for i, v in enumerate(a_values)]
    rows += [trial_row("b-d", "d", "accuracy", len(a_values) + i, "COMPLETE", v, "b", len(a_values) + i, 1, {})
             for i, v in enumerate(b_values)]
    return trials_table(rows)


def test_ahead_is_decided_at_equal_n_not_by_the_best_of_all_trials():
    # The reproduction: a's best of 20 (0.9) tops b's best of 3 (0.86), but at n=3
    # a's band is about [0.50, 0.65] and b's [0.85, 0.86]: b is ahead, not a.
    frame = _two_encoders([0.5] * 19 + [0.9], [0.85, 0.85, 0.86])
    curves = expected_performance(frame, resamples=300)
    at_3 = curves[curves["n"] == 3].set_index("encoder")
    assert at_3.loc["a", "band_high"] < at_3.loc["b", "band_low"]
    row = verdict_strength(frame, curves).iloc[0]
    assert row["top_two_bands_overlap"] == "no at n=3"
    assert row["search_verdict"].startswith("b ahead of a: their expected-performance bands are apart at n=3")


def test_a_band_of_zero_width_is_no_verdict():
    # Every trial of b scored the same (as when each predicts the majority class): its band
    # has no width, and the bands being apart says nothing about which encoder is ahead.
    frame = _two_encoders([0.30, 0.31, 0.32], [0.26, 0.26, 0.26])
    row = verdict_strength(frame, expected_performance(frame, resamples=300)).iloc[0]
    assert row["top_two_bands_overlap"] == "no at n=3"
    assert row["search_verdict"].startswith("no verdict between a and b at n=3 complete trials each: every "
                                            "complete trial of b scored the same")
    assert "ahead" not in row["search_verdict"]


def test_a_study_cut_short_by_its_timeout_says_so(trials):
    stop = {"finished": 3, "n_trials": 8, "timeout_s": 480.0, "per_encoder": {"minilm-l6": 2, "mpnet-base": 1}}
    marked = trials.assign(timeout_stop=[stop if study == "bench-news" else None for study in trials["study"]])
    summary = dataset_summary(marked).set_index("dataset")
    assert summary.loc["news", "cut_short_by_timeout"] == (
        "stopped by the 480 s timeout after 3 of 8 trials (minilm-l6 2, mpnet-base 1)")
    assert summary.loc["reviews", "cut_short_by_timeout"] == ""


LABELS = np.array([0, 1] * 20)  # 40 test examples


def _expected(dataset, encoders, seeds_requested=3, metric="accuracy"):
    return pd.DataFrame([{"dataset": dataset, "encoder": encoder, "metric": metric, "source_trial": number,
                          "seeds_requested": seeds_requested} for number, encoder in enumerate(encoders)])


def _runs(dataset, encoder, *predictions):
    return [{"dataset": dataset, "encoder": encoder, "seed": seed, "predictions": np.asarray(row)}
            for seed, row in enumerate(predictions)]


RIGHT = LABELS
HALF = np.where(np.arange(40) < 20, LABELS, 1 - LABELS)  # right on the first 20 examples only


def test_final_evaluation_compares_encoders_on_the_same_examples():
    # news: strong is right everywhere (3 seeds), weak on the first 20 examples (3 seeds):
    #   accuracy 1.0 and 0.5, difference 0.5. Every seed predicts the same, so no seed spread
    #   shows and the variance is the examples' alone: a paired t-test of the 40 examples'
    #   right-or-wrong, t = 0.5 / sqrt(0.25 x 40/39 / 40) = 6.24 on 39 degrees of freedom.
    # reviews: a and b are right everywhere in every seed (no spread at all: no interval, and
    #   p = 1 for a difference of 0), c is half right. Holm over the 3 pairs: raw 1, p, p -> 1, 3p, 3p.
    expected = pd.concat([_expected("news", ["weak", "strong"]), _expected("reviews", ["c", "b", "a"])])
    runs = pd.DataFrame(_runs("news", "weak", HALF, HALF, HALF) + _runs("news", "strong", RIGHT, RIGHT, RIGHT)
                        + _runs("reviews", "a", RIGHT, RIGHT, RIGHT) + _runs("reviews", "b", RIGHT, RIGHT, RIGHT)
                        + _runs("reviews", "c", HALF, HALF, HALF))
    final, pairwise = final_evaluation(expected, runs, {"news": LABELS, "reviews": LABELS})
    paired = scipy_stats.ttest_rel((RIGHT == LABELS).astype(float), (HALF == LABELS).astype(float))
    assert paired.statistic == pytest.approx(6.245, abs=1e-3)
    p = paired.pvalue
    assert final[["dataset", "encoder"]].values.tolist() == [
        ["news", "strong"], ["news", "weak"], ["reviews", "a"], ["reviews", "b"], ["reviews", "c"]]
    assert final["mean"].tolist() == pytest.approx([1.0, 0.5, 1.0, 1.0, 0.5])
    assert (final[["seeds", "seeds_requested", "test_examples"]] == [3, 3, 40]).all().all()
    assert final["source_trial"].tolist() == [1, 0, 2, 1, 0]
    # weak: 0.5 +- t(0.975, 39) x sqrt(0.25 x 40/39 / 40); strong, a and b showed no spread: no interval.
    half = scipy_stats.t.ppf(0.975, 39) * math.sqrt(0.25 * 40 / 39 / 40)
    assert final["ci_low"].tolist() == pytest.approx([NAN, 0.5 - half, NAN, NAN, 0.5 - half], nan_ok=True)
    assert final["ci_high"].tolist() == pytest.approx([NAN, 0.5 + half, NAN, NAN, 0.5 + half], nan_ok=True)
    assert final["not_shown_worse_than_best"].tolist() == [True, False, True, True, False]
    assert (final["missing"] == "").all()

    assert pairwise[["dataset", "encoder_a", "encoder_b"]].values.tolist() == [
        ["news", "strong", "weak"], ["reviews", "a", "b"], ["reviews", "a", "c"], ["reviews", "b", "c"]]
    assert pairwise["difference"].tolist() == pytest.approx([0.5, 0.0, 0.5, 0.5])
    assert pairwise["p_value"].tolist() == pytest.approx([p, 1.0, p, p])
    assert pairwise["df"].tolist() == pytest.approx([39, math.inf, 39, 39])
    assert pairwise["p_holm"].tolist() == pytest.approx([p, 1.0, 3 * p, 3 * p])
    assert pairwise["significant_after_holm"].tolist() == [True, False, True, True]
    assert pairwise["pairs"].tolist() == [1, 3, 3, 3]
    assert math.isnan(pairwise.loc[1, "ci_low"]) and math.isnan(pairwise.loc[1, "ci_high"])
    assert pairwise.loc[0, ["ci_low", "ci_high"]].tolist() == pytest.approx([0.5 - half, 0.5 + half])

    verdicts = top_encoder_verdicts(final, pairwise).set_index("dataset")
    news = pairwise.iloc[0]
    assert verdicts.loc["news", "final_verdict"] == (
        f"news (test split, 40 examples x 3 seeds each): strong - weak = +0.500 accuracy "
        f"[95% CI {news['ci_low']:+.3f}, {news['ci_high']:+.3f}], Holm-adjusted p = {p:.2g} over 1 pair: "
        "strong higher")
    assert verdicts.loc["reviews", "final_verdict"] == (
        "reviews (test split, 40 examples x 3 seeds each): a - b = +0.000 accuracy [no interval: the runs show no "
        "spread], Holm-adjusted p = 1 over 3 pairs: not shown different; not shown worse than a: a, b")
    assert verdicts.loc["reviews", "final_not_shown_worse_than_best"] == "a, b"
    assert verdicts.loc["news", "final_missing"] == ""


def test_two_seeds_that_disagree_count_at_their_one_degree_of_freedom_each():
    # The failure: resampling 2 seeds shows a fraction of their spread. On 400 test
    # examples, a's two seeds score 0.85 and 0.75, b's 0.70 and 0.65: every resample of the
    # seeds kept a ahead (by 0.05 at least), and the bootstrap said p = 0.01. What two seeds
    # each show is Welch's t-test of the four scores, p = 0.2; the examples' part only adds.
    labels = np.array([0, 1] * 200)
    rng = np.random.default_rng(3)

    def seed(accuracy):
        right = rng.permutation(labels.size) < round(labels.size * accuracy)
        return np.where(right, labels, 1 - labels)

    runs = pd.DataFrame(_runs("news", "a", seed(0.85), seed(0.75)) + _runs("news", "b", seed(0.70), seed(0.65)))
    final, pairwise = final_evaluation(_expected("news", ["a", "b"], seeds_requested=2), runs, {"news": labels})
    welch = scipy_stats.ttest_ind_from_stats(0.80, np.std([0.85, 0.75], ddof=1), 2, 0.675,
                                             np.std([0.70, 0.65], ddof=1), 2, equal_var=False)
    pair = pairwise.iloc[0]
    assert pair["difference"] == pytest.approx(0.125)
    assert not pair["significant_after_holm"]
    assert pair["p_value"] >= welch.pvalue - 1e-9 and welch.pvalue > 0.15
    assert pair["df"] < 2  # the seeds' few degrees of freedom, not the examples' 399
    assert top_encoder_verdicts(final, pairwise).iloc[0]["final_verdict"].endswith("not shown different")


def test_an_interrupted_final_evaluation_draws_no_verdict():
    # ghost was never evaluated and weak has 2 of its 3 seeds: either could change the verdict.
    expected = _expected("news", ["weak", "strong", "ghost"])
    runs = pd.DataFrame(_runs("news", "weak", HALF, HALF) + _runs("news", "strong", RIGHT, RIGHT, RIGHT))
    final, pairwise = final_evaluation(expected, runs, {"news": LABELS})
    assert final["encoder"].tolist() == ["strong", "weak", "ghost"]
    assert final["seeds"].tolist() == [3, 2, 0]
    assert final["missing"].tolist() == ["", "1 of 3 seeds missing", "not evaluated"]
    assert final["not_shown_worse_than_best"].tolist() == [None, None, None]
    assert math.isnan(final.iloc[2]["mean"]) and final.iloc[2]["source_trial"] == 2
    # The difference and its interval stand; no adjusted p-value or significance is claimed.
    assert pairwise["difference"].tolist() == pytest.approx([0.5])
    assert math.isnan(pairwise.iloc[0]["p_holm"]) and pairwise.iloc[0]["significant_after_holm"] is None
    verdict = top_encoder_verdicts(final, pairwise).iloc[0]
    assert verdict["final_verdict"] == (
        "news (test split, 40 examples x seeds strong 3, weak 2): incomplete (weak: 1 of 3 seeds missing; "
        "ghost: not evaluated); no verdict until --final-eval finishes")
    assert verdict["final_not_shown_worse_than_best"] == ""


def test_final_evaluation_of_one_encoder_compares_nothing():
    runs = pd.DataFrame(_runs("news", "solo", RIGHT, HALF))
    final, pairwise = final_evaluation(_expected("news", ["solo"], seeds_requested=2), runs, {"news": LABELS})
    assert pairwise.empty and final["mean"].tolist() == pytest.approx([0.75])
    assert final["not_shown_worse_than_best"].tolist() == [True]
    assert top_encoder_verdicts(final, pairwise).iloc[0]["final_verdict"] == (
        "news (test split, 40 examples x 2 seeds each): only solo evaluated, nothing to compare")


def test_final_evaluation_without_runs():
    expected = pd.DataFrame(columns=["dataset", "encoder", "metric", "source_trial", "seeds_requested"])
    final, pairwise = final_evaluation(expected, pd.DataFrame(columns=FINAL_RUN_COLUMNS), {})
    assert final.empty and pairwise.empty
    assert top_encoder_verdicts(final, pairwise).empty


def test_predictions_round_trip_through_the_storage(tmp_path):
    """A search study and its final study, stored as the harness stores them, rebuilt into
    final_predictions.csv and the final tables by write_leaderboards."""
    from benchmark.report.results import PREDICTIONS_FILE, write_leaderboards

    labels = STORED_LABELS
    runs = [("x", 2, 0, [0, 1, 1, 0]), ("x", 2, 1, [0, 1, 1, 1]), ("y", 1, 0, [1, 1, 1, 1]),
            ("x", 0, 0, [1, 0, 0, 1])]  # the last: a run of x's earlier best, which no longer counts
    # x's best is trial 2
    storage = stored_final_evaluation(tmp_path, [("x", 0.9), ("y", 0.8), ("x", 0.95)], runs)

    tables = write_leaderboards(storage, tmp_path)
    written = pd.read_csv(tmp_path / PREDICTIONS_FILE)
    assert list(written.columns) == ["dataset", "encoder", "seed", "source_trial", "example", "label", "prediction"]
    assert written[["encoder", "seed", "source_trial"]].drop_duplicates().values.tolist() == [
        ["x", 0, 2], ["x", 1, 2], ["y", 0, 1]]
    assert written["label"].tolist() == labels * 3 and written["example"].tolist() == [0, 1, 2, 3] * 3
    assert written["prediction"].tolist() == [0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    # x: accuracy 1 and 3/4 -> 0.875; y: 1/2 (seed 1 missing).
    assert tables["final"][["encoder", "seeds", "missing"]].values.tolist() == [
        ["x", 2, ""], ["y", 1, "1 of 2 seeds missing"]]
    assert tables["final"]["mean"].tolist() == pytest.approx([0.875, 0.5])
    assert tables["pairwise"]["difference"].tolist() == pytest.approx([0.375])
    assert tables["datasets"].iloc[0]["final_verdict"].startswith(
        "news (test split, 4 examples x seeds x 2, y 1): incomplete (y: 1 of 2 seeds missing)")
    assert pd.read_csv(tmp_path / "final.csv")["seeds"].tolist() == [2, 1]


def test_an_interrupted_final_evaluation_says_what_is_missing_in_every_channel(tmp_path, capsys):
    """x has both seeds, y one of two, z none (the run stopped before its turn): the tables,
    stdout and the report name what is missing and draw no verdict that y's second seed or
    z could change."""
    from benchmark.cli import _print_tables
    from benchmark.report.results import write_leaderboards

    storage = stored_final_evaluation(
        tmp_path, [("x", 0.9), ("y", 0.8), ("z", 0.85)],
        [("x", 0, 0, [0, 1, 1, 0]), ("x", 0, 1, [0, 1, 1, 1]), ("y", 1, 0, [1, 1, 1, 1])])
    tables = write_leaderboards(storage, tmp_path)
    final = pd.read_csv(tmp_path / "final.csv", keep_default_na=False)
    assert final[["encoder", "seeds", "seeds_requested", "missing", "not_shown_worse_than_best"]].values.tolist() == [
        ["x", 2, 2, "", ""], ["y", 1, 2, "1 of 2 seeds missing", ""], ["z", 0, 2, "not evaluated", ""]]
    pairwise = pd.read_csv(tmp_path / "pairwise.csv", keep_default_na=False)
    assert pairwise[["encoder_a", "encoder_b", "p_holm", "significant_after_holm", "missing"]].values.tolist() == [
        ["x", "y", "", "", "y: 1 of 2 seeds missing; z: not evaluated"]]
    verdict = ("news (test split, 4 examples x seeds x 2, y 1): incomplete (y: 1 of 2 seeds missing; "
               "z: not evaluated); no verdict until --final-eval finishes")
    datasets = pd.read_csv(tmp_path / "datasets.csv", keep_default_na=False)
    assert datasets[["final_verdict", "final_missing", "final_not_shown_worse_than_best"]].values.tolist() == [
        [verdict, "y: 1 of 2 seeds missing; z: not evaluated", ""]]
    page = (tmp_path / "report.html").read_text()
    final_section = page[page.index('<section id="final">'):]
    final_section = final_section[:final_section.index("</section>")]
    assert verdict in html.unescape(final_section) and "not evaluated" in final_section
    assert "1 of 2" in final_section  # the seeds column: "1 of 2"
    _print_tables(tables, tmp_path)
    out = capsys.readouterr().out
    assert verdict in out.splitlines()
    for claim in ("higher", "not shown different", "not shown worse than x"):
        assert claim not in verdict and claim not in final_section and claim not in out


def test_a_final_evaluation_stopped_before_its_first_run_says_so(tmp_path):
    from benchmark.report.results import write_leaderboards

    storage = stored_final_evaluation(tmp_path, [("x", 0.9), ("y", 0.8)], [])
    tables = write_leaderboards(storage, tmp_path)
    assert tables["final"]["missing"].tolist() == ["not evaluated", "not evaluated"]
    assert tables["pairwise"].empty
    assert tables["datasets"].iloc[0]["final_verdict"] == (
        "news (test split, 4 examples, no run finished yet): incomplete (x: not evaluated; y: not evaluated); "
        "no verdict until --final-eval finishes")


def _references(values) -> pd.DataFrame:
    """values: (study, metric, reference name, split, value); 200 validation and 400 training examples."""
    from benchmark.report.results import REFERENCE_COLUMNS

    rows = [{"study": study, "dataset": study.removeprefix("bench-"), "metric": metric, "reference": name,
             "split": split, "examples": 200, "train_examples": 400,
             **{m: (value if m == metric else -1.0) for m in ("accuracy", "macro_f1", "mcc")}}
            for study, metric, name, split, value in values]
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


MAJORITY, TFIDF = "(reference) majority class", "(reference) tf-idf + logreg"
REFERENCES = [
    ("bench-news", "accuracy", MAJORITY, "validation", 0.70), ("bench-news", "accuracy", TFIDF, "validation", 0.82),
    ("bench-news", "accuracy", MAJORITY, "test", 0.68), ("bench-news", "accuracy", TFIDF, "test", 0.80),
    ("bench-reviews", "macro_f1", MAJORITY, "validation", 0.30),
    ("bench-reviews", "macro_f1", TFIDF, "validation", 0.59),
]


def test_reference_rows_are_listed_but_never_ranked_and_flag_the_encoders(trials):
    # Best validation values (see test_encoder_leaderboard): news e2 0.85, e1 0.82, e3 0.70;
    # reviews e1 0.60, e2 0.60. news: e3 ties the majority class (0.70): at chance, and below
    # tf-idf (0.82) too; e1 ties tf-idf: not above it. reviews: both clear 0.30 and 0.59.
    references = _references(REFERENCES)
    table = encoder_leaderboard(trials, references)
    plain = encoder_leaderboard(trials)
    assert table["encoder"].tolist() == ["e2", "e1", "e3", MAJORITY, TFIDF]
    encoders = table.iloc[:3]
    for column in plain.columns:
        assert encoders[column].tolist() == pytest.approx(plain[column].tolist(), nan_ok=True), column
    assert encoders["reference_flags"].tolist() == [
        "", "news: not above tf-idf + logreg", "news: at chance and not above tf-idf + logreg"]
    rows = table.iloc[3:]
    assert rows["news"].tolist() == pytest.approx([0.70, 0.82])
    assert rows["reviews"].tolist() == pytest.approx([0.30, 0.59])
    for column in ("mean_rank", "normalized_score", "datasets", "trials: news"):
        assert rows[column].isna().all(), column

    flags = reference_flags(trials, references)
    assert flags[["dataset", "encoder", "best_value", "complete_trials", "at_chance", "not_above_tfidf"]] \
        .values.tolist() == [["news", "e1", 0.82, 2, False, True], ["news", "e3", 0.70, 1, True, True]]
    assert reference_flag_sentences(flags)[1] == (
        "news: e3 is at chance and not above tf-idf + logreg: its best validation accuracy is 0.7000 "
        "(best of 1 complete trial), against 0.7000 for the majority class and 0.8200 for tf-idf + logreg "
        "(fitted on the same 400 training examples, scored on the same 200 validation examples)")

    text = to_markdown(table)
    assert "nan" not in text
    cells = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
             for line in text.splitlines()}
    trials_cell, rank_cell = cells["encoder"].index("trials: news"), cells["encoder"].index("mean_rank")
    assert cells["e3"][trials_cell] == "2"  # an integer still, beside the reference rows' blanks
    assert cells[MAJORITY][trials_cell] == "" and cells[MAJORITY][rank_cell] == ""


RANDOM = "(reference) random guessing"


def test_at_chance_is_the_better_of_the_majority_class_and_random_guessing(trials):
    # The case: macro-F1 with classes 0.43 / 0.40 / 0.17, where the majority class
    # scores 0.2005 and uniform guessing 0.3215. reviews' e1 and e2 (0.60) clear both; on news
    # (accuracy) the majority class is the better chance row. A reviews encoder at 0.25 sits
    # above the majority class but below guessing: at chance.
    references = _references([*REFERENCES[:4], ("bench-news", "accuracy", RANDOM, "validation", 0.33),
                              ("bench-reviews", "macro_f1", MAJORITY, "validation", 0.2005),
                              ("bench-reviews", "macro_f1", RANDOM, "validation", 0.3215),
                              ("bench-reviews", "macro_f1", TFIDF, "validation", 0.59)])
    weak = trials.assign(value=trials["value"].where(
        ~((trials["study"] == "bench-reviews") & (trials["encoder"] == "e2")), 0.25))
    flags = reference_flags(weak, references).set_index(["dataset", "encoder"])
    assert flags.loc[("reviews", "e2"), ["chance", "at_chance", "not_above_tfidf"]].tolist() == [0.3215, True, True]
    assert ("reviews", "e1") not in flags.index
    assert flags.loc[("news", "e3"), ["chance", "at_chance"]].tolist() == [0.70, True]
    sentence = [text for text in reference_flag_sentences(flags.reset_index()) if text.startswith("reviews")]
    assert sentence == [
        "reviews: e2 is at chance and not above tf-idf + logreg: its best validation macro_f1 is 0.2500 (best of 2 "
        "complete trials), against 0.2005 for the majority class, 0.3215 for random guessing and 0.5900 for tf-idf "
        "+ logreg (fitted on the same 400 training examples, scored on the same 200 validation examples)"]
    # Both chance rows are on the leaderboard, after the encoders.
    table = encoder_leaderboard(weak, references).set_index("encoder")
    assert table.loc[[MAJORITY, RANDOM], "reviews"].tolist() == pytest.approx([0.2005, 0.3215])


def test_final_table_gets_the_reference_test_scores(trials):
    final = pd.DataFrame({"dataset": ["news", "news", "reviews"], "encoder": ["e2", "e1", "e1"],
                          "mean": [0.84, 0.81, 0.6]})
    table = with_reference_test_scores(final, _references(REFERENCES), trials)
    assert table[MAJORITY].tolist()[:2] == pytest.approx([0.68, 0.68])
    assert table[TFIDF].tolist()[:2] == pytest.approx([0.80, 0.80])
    assert table[[MAJORITY, TFIDF]].iloc[2].isna().all()  # no test score stored for reviews
    assert table["mean"].tolist() == [0.84, 0.81, 0.6]
