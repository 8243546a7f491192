"""Read the studies back from the storage and write the leaderboard files.

The storage is the single source of truth: everything written here is rebuilt from
it, so many workers, resumed runs and crashed runs all give the same tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from benchmark.files import write_atomic
from benchmark.report import html as report
from benchmark.report import leaderboard, ranking
from benchmark.schema import (
    BENCHMARK_ATTR,
    DATASET_ATTR,
    ENCODER_PARAM,
    FAIL_REASON_ATTR,
    FINAL_OF_ATTR,
    INTERRUPTED_ATTR,
    METRIC_ATTR,
    PREDICTIONS_ATTR,
    PRUNE_REASON_ATTR,
    REFERENCE_ATTR,
    SEED_ATTR,
    SEEDS_REQUESTED_ATTR,
    SOURCE_TRIAL_ATTR,
    STOPPED_ATTR,
    SURPLUS_ATTR,
    TEST_LABELS_ATTR,
    TIMEOUT_STOP_ATTR,
    TRAIN_TOKENS_ATTR,
    TRIAL,
)
from benchmark.train.baselines import reference_rows
from benchmark.train.metrics import METRIC_NAMES

# Written as CSV and Markdown; the trials only as CSV. These go to the trackers' study
# runs too (the report, with plotly.js inlined, is too big to attach to every study).
TABLES = ("leaderboard", "datasets", "costs", "expected_performance", "final", "pairwise", "references",
          "reference_flags", "ranking", "ranking_tests")
PREDICTIONS_FILE = "final_predictions.csv"
RESULT_FILES = (*(f"{name}.{ext}" for name in TABLES for ext in ("csv", "md")), "trials.csv", PREDICTIONS_FILE)

FINAL_RUN_COLUMNS = ["study", "dataset", "metric", "encoder", "seed", "source_trial", "value", "predictions"]
FINAL_STUDY_COLUMNS = ["study", "dataset", "metric", "seeds_requested", "labels"]

# Those an empty storage's table has too; parameters and the rest come with the first trial.
TRIAL_COLUMNS = [TRIAL.study, TRIAL.benchmark, TRIAL.dataset, TRIAL.metric, TRIAL.number, TRIAL.state, TRIAL.value,
                 TRIAL.encoder, TRIAL.duration_s, TRIAL.datetime_start, TRIAL.datetime_complete]
# Read back as timestamps; trials.csv leaves them and the study attributes out.
TIME_COLUMNS = [TRIAL.datetime_start, TRIAL.datetime_complete]


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
                TRIAL.study: summary.study_name,
                TRIAL.benchmark: attrs[BENCHMARK_ATTR],
                TRIAL.dataset: attrs[DATASET_ATTR],
                TRIAL.metric: attrs[METRIC_ATTR],
                TRIAL.number: trial.number,
                TRIAL.state: (leaderboard.INTERRUPTED_STATE if trial.user_attrs.get(INTERRUPTED_ATTR)
                              else trial.state.name),
                TRIAL.value: trial.value,
                TRIAL.encoder: trial.params.get(ENCODER_PARAM),
                TRIAL.duration_s: duration,
                TRIAL.datetime_start: trial.datetime_start,
                TRIAL.datetime_complete: trial.datetime_complete,
            }
            row.update({f"{TRIAL.param_prefix}{name}": value for name, value in trial.params.items()
                        if name != ENCODER_PARAM})
            row.update({TRIAL.train_tokens: trial.user_attrs.get(TRAIN_TOKENS_ATTR),
                        TRIAL.prune_reason: trial.user_attrs.get(PRUNE_REASON_ATTR),
                        TRIAL.fail_reason: trial.user_attrs.get(FAIL_REASON_ATTR)})
            # A study attribute on every row, so that `dataset_summary` reads it per dataset.
            row[TRIAL.timeout_stop] = attrs.get(TIMEOUT_STOP_ATTR)
            row[TRIAL.stopped_encoders] = attrs.get(STOPPED_ATTR)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else TRIAL_COLUMNS)
    # A running trial has no completion time yet (a queued one no start): NaT, not None.
    frame[TIME_COLUMNS] = frame[TIME_COLUMNS].apply(pd.to_datetime)
    return frame.sort_values([TRIAL.study, TRIAL.number], ignore_index=True) if rows else frame


def benchmark_trial_count(storage: optuna.storages.BaseStorage | str) -> int:
    """How many trials the storage's benchmark studies hold; cheap (no trial is read)."""
    return sum(summary.n_trials for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)
               if BENCHMARK_ATTR in summary.user_attrs)


REFERENCE_COLUMNS = ["study", "dataset", "metric", "reference", "split", "examples", "train_examples",
                     *METRIC_NAMES]


def references_frame(storage: optuna.storages.BaseStorage | str) -> pd.DataFrame:
    """One row per reference baseline and scored split of every benchmark study, from
    the study's `reference_baselines` user attribute (see `baselines`)."""
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if BENCHMARK_ATTR in attrs and REFERENCE_ATTR in attrs:
            rows += [{"study": summary.study_name, "dataset": attrs[DATASET_ATTR], "metric": attrs[METRIC_ATTR], **row}
                     for row in reference_rows(attrs[REFERENCE_ATTR])]
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


def _final_studies(storage: optuna.storages.BaseStorage | str):
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if FINAL_OF_ATTR in summary.user_attrs:
            yield summary.user_attrs, optuna.load_study(study_name=summary.study_name, storage=storage)


def final_runs_frame(storage: optuna.storages.BaseStorage | str) -> pd.DataFrame:
    """One row per final-evaluation run (encoder, seed), with its test-split predictions.
    A run stored before predictions were kept counts as not run: --final-eval runs it again."""
    rows = []
    for attrs, study in _final_studies(storage):
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if PREDICTIONS_ATTR not in trial.user_attrs:
                continue
            rows.append({"study": attrs[FINAL_OF_ATTR], "dataset": attrs[DATASET_ATTR],
                         "metric": attrs[METRIC_ATTR], "encoder": trial.params[ENCODER_PARAM],
                         "seed": trial.user_attrs[SEED_ATTR], "source_trial": trial.user_attrs[SOURCE_TRIAL_ATTR],
                         "value": trial.value, "predictions": np.asarray(trial.user_attrs[PREDICTIONS_ATTR])})
    frame = pd.DataFrame(rows, columns=FINAL_RUN_COLUMNS)
    # Two workers racing on one seed both store it; the first run counts.
    return frame.drop_duplicates(["study", "encoder", "source_trial", "seed"], ignore_index=True)


def final_studies_frame(storage: optuna.storages.BaseStorage | str) -> pd.DataFrame:
    """One row per final evaluation begun: the seeds asked for and the test split's labels."""
    rows = [{"study": attrs[FINAL_OF_ATTR], "dataset": attrs[DATASET_ATTR], "metric": attrs[METRIC_ATTR],
             "seeds_requested": attrs[SEEDS_REQUESTED_ATTR], "labels": np.asarray(attrs[TEST_LABELS_ATTR])}
            for attrs, _ in _final_studies(storage) if TEST_LABELS_ATTR in attrs]
    return pd.DataFrame(rows, columns=FINAL_STUDY_COLUMNS)


def _current_best(trials: pd.DataFrame) -> pd.DataFrame:
    """Each (study, encoder)'s best complete trial number; the earlier one wins a tie, as in
    `final_eval.best_trial_per_encoder`."""
    best = leaderboard.best_per_encoder(trials).merge(
        trials[[TRIAL.study, TRIAL.encoder, TRIAL.value, TRIAL.number]], on=[TRIAL.study, TRIAL.encoder, TRIAL.value])
    return best.sort_values(TRIAL.number).drop_duplicates([TRIAL.study, TRIAL.encoder])[
        [TRIAL.study, TRIAL.encoder, TRIAL.number]]


def current_final_runs(runs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The final runs of each encoder's current best trial, under the leaderboard's
    dataset names; runs of a trial that a topped-up search has since beaten are left out."""
    current = runs.merge(_current_best(trials), left_on=["study", "encoder", "source_trial"],
                         right_on=[TRIAL.study, TRIAL.encoder, TRIAL.number]).drop(columns=TRIAL.number)
    names = leaderboard.dataset_columns(trials) if not trials.empty else {}
    return current.assign(dataset=current["study"].map(names))


def expected_final_runs(studies: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """For every dataset whose final evaluation has begun: each encoder with a complete trial,
    its current best trial and the seeds asked for, under the leaderboard's dataset names."""
    expected = studies.drop(columns=["dataset", "labels"]).merge(_current_best(trials), on="study")
    names = leaderboard.dataset_columns(trials) if not trials.empty else {}
    return expected.rename(columns={TRIAL.number: "source_trial"}).assign(dataset=expected["study"].map(names))


def build_tables(trials: pd.DataFrame, final_runs: pd.DataFrame, final_studies: pd.DataFrame,
                 references: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every table of the comparison, from the search's trials and the final evaluation's
    studies and runs."""
    runs = current_final_runs(final_runs, trials)
    expected = expected_final_runs(final_studies, trials)
    names = leaderboard.dataset_columns(trials) if not trials.empty else {}
    labels = {names[row.study]: row.labels for row in final_studies.itertuples() if row.study in names}
    final, pairwise = leaderboard.final_evaluation(expected, runs, labels)
    datasets = leaderboard.dataset_summary(trials) if not trials.empty else pd.DataFrame(columns=["dataset"])
    verdicts = leaderboard.top_encoder_verdicts(final, pairwise)
    datasets = datasets.merge(verdicts, on="dataset", how="left").fillna(
        {column: "" for column in leaderboard.VERDICT_COLUMNS[1:]})
    curves = leaderboard.expected_performance(trials)
    datasets = datasets.merge(leaderboard.verdict_strength(trials, curves), on="dataset", how="left")
    scores = ranking.score_matrix(trials) if not trials.empty else pd.DataFrame()
    return {
        "leaderboard": leaderboard.encoder_leaderboard(trials, references),
        "datasets": datasets,
        "costs": leaderboard.cost_table(trials) if not trials.empty else pd.DataFrame(),
        "expected_performance": curves,
        "ranking": ranking.mean_ranks(scores),
        "ranking_tests": ranking.ranking_tests(scores, ranking.score_matrix_metrics(trials),
                                               ranking.compared_trials(trials) if not trials.empty else {}),
        "final": leaderboard.with_reference_test_scores(final, references, trials),
        "pairwise": pairwise,
        "final_predictions": leaderboard.final_predictions(runs, labels),
        "references": references.assign(dataset=references["study"].map(names).fillna(references["dataset"])),
        "reference_flags": leaderboard.reference_flags(trials, references),
    }


def write_leaderboards(storage: optuna.storages.BaseStorage | str, results_dir: Path) -> dict[str, pd.DataFrame]:
    """Rebuild every table and the report from the storage, and write them."""
    trials = trials_frame(storage)
    tables = build_tables(trials, final_runs_frame(storage), final_studies_frame(storage), references_frame(storage))
    # A row per test example and run: CSV only, and not sent to the report or stdout.
    write_atomic(results_dir / PREDICTIONS_FILE, tables.pop("final_predictions").to_csv(index=False))
    for name, table in tables.items():
        write_atomic(results_dir / f"{name}.csv", table.to_csv(index=False))
        write_atomic(results_dir / f"{name}.md", leaderboard.to_markdown(table))
    export = trials.drop(columns=[*TIME_COLUMNS, TRIAL.timeout_stop, TRIAL.stopped_encoders], errors="ignore")
    write_atomic(results_dir / "trials.csv", export.to_csv(index=False))
    tables["trials"] = trials
    report.write_report(storage, tables, results_dir)
    return tables
