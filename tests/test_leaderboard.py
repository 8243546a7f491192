"""Leaderboard tables from a hand-built trials table, checked against hand-computed numbers."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta

import pandas as pd
import pytest

from benchmark.leaderboard import dataset_columns, dataset_summary, encoder_leaderboard, to_markdown
from benchmark.results import TRIAL_COLUMNS

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
    table = encoder_leaderboard(trials)
    assert list(table.columns) == ["encoder", "news", "reviews", "mean_rank", "datasets"]
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
    assert list(table.columns) == ["encoder", "mean_rank", "datasets"]


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
    assert list(table.columns) == ["encoder", "bench-news", "quick-news", "reviews", "mean_rank", "datasets"]
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

    from benchmark.results import write_atomic

    target = tmp_path / "leaderboard.csv"
    write_atomic(target, "encoder,value\nbert,0.9\n")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_atomic(target, "encoder,value\nbert,0.95\nroberta,0.9")
    assert target.read_text() == "encoder,value\nbert,0.9\n"
    assert [p.name for p in tmp_path.iterdir()] == ["leaderboard.csv"], "no temporary file left behind"
