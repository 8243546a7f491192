"""Read the studies back from the storage and write the leaderboard files.

The storage is the single source of truth: everything written here is rebuilt from
it, so many workers, resumed runs and crashed runs all give the same tables.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import optuna
import pandas as pd

from benchmark import leaderboard
from benchmark.study import BENCHMARK_ATTR, DATASET_ATTR, METRIC_ATTR, SURPLUS_ATTR
from benchmark.trial import ENCODER_PARAM

RESULT_FILES = ("leaderboard.csv", "leaderboard.md", "datasets.csv", "datasets.md", "trials.csv")

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
            row.update({"prune_reason": trial.user_attrs.get("prune_reason"),
                        "fail_reason": trial.user_attrs.get("fail_reason")})
            rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else TRIAL_COLUMNS)
    return frame.sort_values(["study", "number"], ignore_index=True) if rows else frame


def write_atomic(path: Path, text: str) -> None:
    """Write whole or not at all: a crash never leaves half a table behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_leaderboards(storage: optuna.storages.BaseStorage | str, results_dir: Path) -> dict[str, pd.DataFrame]:
    """Rebuild every table from the storage and write it as CSV (and Markdown)."""
    trials = trials_frame(storage)
    tables = {
        "leaderboard": leaderboard.encoder_leaderboard(trials),
        "datasets": leaderboard.dataset_summary(trials) if not trials.empty else pd.DataFrame(),
    }
    for name, table in tables.items():
        write_atomic(results_dir / f"{name}.csv", table.to_csv(index=False))
        write_atomic(results_dir / f"{name}.md", leaderboard.to_markdown(table))
    export = trials.drop(columns=["datetime_start", "datetime_complete"], errors="ignore")
    write_atomic(results_dir / "trials.csv", export.to_csv(index=False))
    return {**tables, "trials": trials}
