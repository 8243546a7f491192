"""Leaderboard tables as pure functions of the trials table (see `results.trials_frame`)."""

from __future__ import annotations

import json

import pandas as pd

PARAM_PREFIX = "param_"


def dataset_columns(trials: pd.DataFrame) -> dict[str, str]:
    """Study name -> the column heading it gets: the dataset, or the study name when two
    benchmark configs in one storage share a dataset."""
    studies = trials[["study", "dataset"]].drop_duplicates()
    shared = studies["dataset"].duplicated(keep=False)
    return {row.study: (row.study if is_shared else row.dataset)
            for row, is_shared in zip(studies.itertuples(), shared)}


def best_per_encoder(trials: pd.DataFrame) -> pd.DataFrame:
    """Best complete validation value for each (study, encoder)."""
    complete = trials[trials["state"] == "COMPLETE"]
    return complete.groupby(["study", "encoder"], as_index=False)["value"].max()


def encoder_leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    """A row per encoder, a column per dataset (best validation value), and the mean rank.

    Rank 1 is best within a dataset; ties share the mean rank. The mean rank covers only
    the datasets an encoder has a complete trial on, and `datasets` says how many.
    """
    best = best_per_encoder(trials)
    if best.empty:
        return pd.DataFrame(columns=["encoder", "mean_rank", "datasets"])
    columns = dataset_columns(trials)
    best["rank"] = best.groupby("study")["value"].rank(ascending=False, method="average")
    table = best.pivot(index="encoder", columns="study", values="value").rename(columns=columns)
    table = table[sorted(table.columns)]
    ranks = best.groupby("encoder")["rank"]
    table["mean_rank"] = ranks.mean()
    table["datasets"] = ranks.count()
    table = table.reset_index().sort_values(["mean_rank", "encoder"], ignore_index=True)
    table.columns.name = None
    return table


def dataset_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: the best trial and its parameters, trial counts by state, and time spent."""
    columns = dataset_columns(trials)
    rows = []
    for study, group in trials.groupby("study", sort=True):
        complete = group[group["state"] == "COMPLETE"]
        best = complete.loc[complete["value"].idxmax()] if not complete.empty else None
        params = {} if best is None else {
            name.removeprefix(PARAM_PREFIX): _plain(best[name])
            for name in group.columns if name.startswith(PARAM_PREFIX) and pd.notna(best[name])
        }
        rows.append({
            "dataset": columns[study],
            "study": study,
            "metric": group["metric"].iloc[0],
            "best_value": None if best is None else best["value"],
            "best_encoder": None if best is None else best["encoder"],
            "best_trial": None if best is None else int(best["number"]),
            "best_params": json.dumps(params, sort_keys=True),
            "complete": int((group["state"] == "COMPLETE").sum()),
            "pruned": int((group["state"] == "PRUNED").sum()),
            "failed": int((group["state"] == "FAIL").sum()),
            "trial_seconds": round(float(group["duration_s"].sum()), 1),
            "wall_seconds": round((group["datetime_complete"].max() - group["datetime_start"].min()).total_seconds(), 1),
        })
    return pd.DataFrame(rows)


def _plain(value: object) -> object:
    """numpy scalars to plain Python, so the parameters serialize as JSON."""
    return value.item() if hasattr(value, "item") else value


def to_markdown(table: pd.DataFrame, float_format: str = ".4f") -> str:
    return table.to_markdown(index=False, floatfmt=float_format) + "\n"
