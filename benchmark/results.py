"""Read the studies back from the storage and write the leaderboard files.

The storage is the single source of truth: everything written here is rebuilt from
it, so many workers, resumed runs and crashed runs all give the same tables.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd

from benchmark import leaderboard, report
from benchmark.files import write_atomic
from benchmark.final_eval import FINAL_OF_ATTR, SEED_ATTR, SOURCE_TRIAL_ATTR
from benchmark.study import BENCHMARK_ATTR, DATASET_ATTR, METRIC_ATTR, SURPLUS_ATTR
from benchmark.trial import ENCODER_PARAM

# Written as CSV and Markdown; the trials only as CSV. These go to the trackers' study
# runs too (the report, with plotly.js inlined, is too big to attach to every study).
TABLES = ("leaderboard", "datasets", "costs", "expected_performance", "final", "pairwise")
RESULT_FILES = (*(f"{name}.{ext}" for name in TABLES for ext in ("csv", "md")), "trials.csv")

FINAL_RUN_COLUMNS = ["study", "dataset", "metric", "encoder", "seed", "source_trial", "value"]

TRIAL_COLUMNS = ["study", "benchmark", "dataset", "metric", "number", "state", "value", "encoder",
                 "duration_s", "datetime_start", "datetime_complete"]


def trials_frame(storage: optuna.storages.BaseStorage | str) -> pd.DataFrame:
    """One row per trial of every benchmark study in the storage."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if BENCHMARK_ATTR not in attrs:
            continue  # a study that someone else keeps in the same database
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False):
            if trial.user_attrs.get(SURPLUS_ATTR):
                continue  # claimed by two racing workers; never trained, holds no parameters
            duration = trial.duration.total_seconds() if trial.duration is not None else float("nan")
            row = {
                "study": summary.study_name,
                "benchmark": attrs[BENCHMARK_ATTR],
                "dataset": attrs[DATASET_ATTR],
                "metric": attrs[METRIC_ATTR],
                "number": trial.number,
                "state": trial.state.name,
                "value": trial.value,
                "encoder": trial.params.get(ENCODER_PARAM),
                "duration_s": duration,
                "datetime_start": trial.datetime_start,
                "datetime_complete": trial.datetime_complete,
            }
            row.update({f"{leaderboard.PARAM_PREFIX}{name}": value for name, value in trial.params.items()
                        if name != ENCODER_PARAM})
            row.update({"train_tokens": trial.user_attrs.get("train_tokens"),
                        "prune_reason": trial.user_attrs.get("prune_reason"),
                        "fail_reason": trial.user_attrs.get("fail_reason")})
            rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else TRIAL_COLUMNS)
    return frame.sort_values(["study", "number"], ignore_index=True) if rows else frame


def final_runs_frame(storage: optuna.storages.BaseStorage | str) -> pd.DataFrame:
    """One row per final-evaluation run (encoder, seed), scored on the test split."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if FINAL_OF_ATTR not in attrs:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            rows.append({"study": attrs[FINAL_OF_ATTR], "dataset": attrs[DATASET_ATTR],
                         "metric": attrs[METRIC_ATTR], "encoder": trial.params[ENCODER_PARAM],
                         "seed": trial.user_attrs[SEED_ATTR],
                         "source_trial": trial.user_attrs[SOURCE_TRIAL_ATTR], "value": trial.value})
    return pd.DataFrame(rows, columns=FINAL_RUN_COLUMNS)


def current_final_runs(runs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The final runs of each encoder's current best trial, under the leaderboard's
    dataset names; runs of a trial that a topped-up search has since beaten are left out."""
    best = leaderboard.best_per_encoder(trials).merge(
        trials[["study", "encoder", "value", "number"]], on=["study", "encoder", "value"])
    best = best.sort_values("number").drop_duplicates(["study", "encoder"])
    current = runs.merge(best[["study", "encoder", "number"]], left_on=["study", "encoder", "source_trial"],
                         right_on=["study", "encoder", "number"]).drop(columns="number")
    names = leaderboard.dataset_columns(trials) if not trials.empty else {}
    return current.assign(dataset=current["study"].map(names))


def build_tables(trials: pd.DataFrame, final_runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table of the comparison, from the search's trials and the final runs."""
    final, pairwise = leaderboard.final_evaluation(current_final_runs(final_runs, trials))
    datasets = leaderboard.dataset_summary(trials) if not trials.empty else pd.DataFrame(columns=["dataset"])
    verdicts = leaderboard.top_encoder_verdicts(final, pairwise)
    datasets = datasets.merge(verdicts, on="dataset", how="left").fillna(
        {"final_top_encoders": "", "final_top_differ": ""})
    return {
        "leaderboard": leaderboard.encoder_leaderboard(trials),
        "datasets": datasets,
        "costs": leaderboard.cost_table(trials) if not trials.empty else pd.DataFrame(),
        "expected_performance": leaderboard.expected_performance(trials),
        "final": final,
        "pairwise": pairwise,
    }


def write_leaderboards(storage: optuna.storages.BaseStorage | str, results_dir: Path) -> dict[str, pd.DataFrame]:
    """Rebuild every table and the report from the storage, and write them."""
    trials = trials_frame(storage)
    tables = build_tables(trials, final_runs_frame(storage))
    for name, table in tables.items():
        write_atomic(results_dir / f"{name}.csv", table.to_csv(index=False))
        write_atomic(results_dir / f"{name}.md", leaderboard.to_markdown(table))
    export = trials.drop(columns=["datetime_start", "datetime_complete"], errors="ignore")
    write_atomic(results_dir / "trials.csv", export.to_csv(index=False))
    tables["trials"] = trials
    report.write_report(storage, tables, results_dir)
    return tables
