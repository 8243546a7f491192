"""Leaderboard tables from a hand-built trials table, checked against hand-computed numbers."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from scipy import stats as scipy_stats

from benchmark.leaderboard import (
    cost_table,
    dataset_columns,
    dataset_summary,
    encoder_leaderboard,
    expected_performance,
    final_evaluation,
    to_markdown,
    top_encoder_verdicts,
)
from benchmark.results import FINAL_RUN_COLUMNS, TRIAL_COLUMNS

T0 = datetime(2025, 1, 1, 12, 0, 0)
NAN = float("nan")


def _trial(study, dataset, metric, number, state, value, encoder, start_s, duration_s, params,
           benchmark="bench"):
    start = T0 + timedelta(seconds=start_s)
    complete = None if duration_s is None else start + timedelta(seconds=duration_s)
    row = {
        "study": study, "benchmark": benchmark, "dataset": dataset, "metric": metric,
        "number": number, "state": state, "value": value, "encoder": encoder,
        "duration_s": NAN if duration_s is None else float(duration_s),
        "datetime_start": start, "datetime_complete": complete,
    }
    row.update({f"param_{name}": v for name, v in params.items()})
    return row


def _frame(rows) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["datetime_start"] = pd.to_datetime(frame["datetime_start"])
    frame["datetime_complete"] = pd.to_datetime(frame["datetime_complete"])
    return frame


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
        _trial("bench-news", "news", "accuracy", 0, "COMPLETE", 0.80, "e1", 0, 10.0, P(1e-4, 16, 0.1)),
        _trial("bench-news", "news", "accuracy", 1, "COMPLETE", 0.85, "e2", 10, 20.0, P(3e-4, 32, 0.2)),
        _trial("bench-news", "news", "accuracy", 2, "COMPLETE", 0.70, "e3", 30, 5.0, P(2e-5, 16, 0.0)),
        _trial("bench-news", "news", "accuracy", 3, "COMPLETE", 0.82, "e1", 35, 12.5, P(5e-5, 32, 0.05)),
        _trial("bench-news", "news", "accuracy", 4, "PRUNED", 0.99, "e3", 50, 3.0, P(1e-3, 16, 0.3)),
        _trial("bench-news", "news", "accuracy", 5, "FAIL", NAN, "e2", 60, 1.25, P(1e-5, 32, 0.1)),
        _trial("bench-reviews", "reviews", "macro_f1", 0, "COMPLETE", 0.60, "e1", 100, 7.0, P(1e-4, 16, 0.1)),
        _trial("bench-reviews", "reviews", "macro_f1", 1, "COMPLETE", 0.55, "e2", 110, 8.0, P(2e-4, 16, 0.15)),
        _trial("bench-reviews", "reviews", "macro_f1", 2, "PRUNED", 0.95, "e3", 120, 2.0, P(3e-5, 32, 0.2)),
        _trial("bench-reviews", "reviews", "macro_f1", 3, "COMPLETE", 0.60, "e2", 125, 9.0, P(7e-5, 32, 0.25)),
        _trial("bench-reviews", "reviews", "macro_f1", 4, "FAIL", NAN, "e3", 140, 0.5, P(1e-4, 16, 0.0)),
        _trial("bench-reviews", "reviews", "macro_f1", 5, "COMPLETE", 0.58, "e1", 150, 6.0, P(1e-4, 32, 0.1)),
    ]
    frame = _frame(rows)
    assert set(TRIAL_COLUMNS) <= set(frame.columns)
    return frame


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
        _trial("b-d", "d", "accuracy", 0, "COMPLETE", 0.9, "zed", 0, 1, {}),
        _trial("b-d", "d", "accuracy", 1, "COMPLETE", 0.5, "mid", 1, 1, {}),
        _trial("b-d", "d", "accuracy", 2, "COMPLETE", 0.9, "alpha", 2, 1, {}),
    ]
    table = encoder_leaderboard(_frame(rows))
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
    # 0.60 ties between trial 0 (e1) and trial 3 (e2): the first one, trial 0, is the best
    assert reviews["best_value"] == pytest.approx(0.60)
    assert reviews["best_encoder"] == "e1" and reviews["best_trial"] == 0
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
    running = _trial("bench-news", "news", "accuracy", 6, "RUNNING", NAN, "e1", 70, None, P(1e-4, 16, 0.1))
    frame = pd.concat([trials, _frame([running])], ignore_index=True)
    news = dataset_summary(frame).set_index("dataset").loc["news"]
    assert (news["complete"], news["pruned"], news["failed"]) == (4, 1, 1)
    assert news["trial_seconds"] == pytest.approx(51.8)
    assert news["wall_seconds"] == pytest.approx(61.2)


def test_dataset_columns_when_benchmarks_share_a_dataset(trials):
    # A second benchmark config in the same storage also has a "news" study.
    other = _frame([
        _trial("quick-news", "news", "accuracy", 0, "COMPLETE", 0.95, "e1", 0, 4.0, P(1e-4, 16, 0.1),
               benchmark="quick"),
        _trial("quick-news", "news", "accuracy", 1, "COMPLETE", 0.90, "e3", 4, 4.0, P(1e-4, 16, 0.1),
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

    from benchmark.files import write_atomic

    target = tmp_path / "leaderboard.csv"
    write_atomic(target, "encoder,value\nbert,0.9\n")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
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


def test_expected_performance_counts_pruned_trials_at_their_last_value(trials):
    # news e1 [0.80, 0.82]: n=1 0.81, n=2 0.80/4 + 0.82*3/4 = 0.815
    # news e3 [0.70, 0.99 pruned]: n=1 0.845, n=2 0.70/4 + 0.99*3/4 = 0.9175
    # news e2 [0.85] (its failed trial scored nothing)
    table = expected_performance(trials, resamples=200)
    news = table[table["dataset"] == "news"]
    e1, e2, e3 = (news[news["encoder"] == name] for name in ("e1", "e2", "e3"))
    assert e1["expected_max"].tolist() == pytest.approx([0.81, 0.815])
    assert e3["expected_max"].tolist() == pytest.approx([0.845, 0.9175])
    assert e2["expected_max"].tolist() == pytest.approx([0.85])
    assert e1["n"].tolist() == [1, 2] and e1["trials"].tolist() == [2, 2]
    assert (table["band_low"] <= table["expected_max"] + 1e-12).all()
    assert (table["expected_max"] <= table["band_high"] + 1e-12).all()
    assert expected_performance(trials.iloc[0:0]).empty


def _runs(dataset, encoder, values, source_trial=3):
    return [{"study": f"bench-{dataset}", "dataset": dataset, "metric": "accuracy", "encoder": encoder,
             "seed": seed, "source_trial": source_trial, "value": value} for seed, value in enumerate(values)]


def test_final_evaluation_intervals_and_pairwise_tests():
    strong, weak = [0.80, 0.82, 0.85, 0.79, 0.84], [0.75, 0.78, 0.74, 0.77, 0.76]
    close = [0.81, 0.79, 0.86, 0.80, 0.83]  # mean 0.818, just under strong's 0.82
    runs = pd.DataFrame(
        _runs("news", "weak", weak) + _runs("news", "strong", strong)
        + _runs("reviews", "strong", strong) + _runs("reviews", "close", close)
        + _runs("reviews", "lonely", [0.99]),  # one seed: no interval, left out
        columns=FINAL_RUN_COLUMNS)
    final, pairwise = final_evaluation(runs)
    assert final[["dataset", "encoder"]].values.tolist() == [
        ["news", "strong"], ["news", "weak"], ["reviews", "strong"], ["reviews", "close"]]
    strong_news = final.iloc[0]
    reference = scipy_stats.t.interval(0.95, 4, loc=np.mean(strong), scale=scipy_stats.sem(strong))
    assert (strong_news["ci_low"], strong_news["ci_high"]) == pytest.approx(reference)
    assert strong_news["mean"] == pytest.approx(0.82) and strong_news["seeds"] == 5
    assert strong_news["source_trial"] == 3

    news_test = scipy_stats.ttest_ind(strong, weak, equal_var=False)
    reviews_test = scipy_stats.ttest_ind(strong, close, equal_var=False)
    assert pairwise["p_value"].tolist() == pytest.approx([news_test.pvalue, reviews_test.pvalue])
    assert news_test.pvalue < 0.05 < reviews_test.pvalue
    assert pairwise["significant"].tolist() == [True, False]
    assert final["indistinguishable_from_best"].tolist() == [True, False, True, True]

    verdicts = top_encoder_verdicts(final, pairwise).set_index("dataset")
    assert verdicts.loc["news", "final_top_encoders"] == "strong"
    assert verdicts.loc["news", "final_top_differ"] == f"yes (p={news_test.pvalue:.3g})"
    assert verdicts.loc["reviews", "final_top_encoders"] == "strong, close"
    assert verdicts.loc["reviews", "final_top_differ"] == f"no (p={reviews_test.pvalue:.3g})"


def test_final_evaluation_without_runs():
    final, pairwise = final_evaluation(pd.DataFrame(columns=FINAL_RUN_COLUMNS))
    assert final.empty and pairwise.empty
    assert top_encoder_verdicts(final, pairwise).empty
