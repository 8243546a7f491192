"""Leaderboard tables as pure functions of the trials table (see `results.trials_frame`)
and of the final-evaluation runs (see `results.final_runs_frame`)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from benchmark import stats

PARAM_PREFIX = "param_"
TRIALS_PREFIX = "trials: "
FINISHED_STATES = ("COMPLETE", "PRUNED")
SIGNIFICANCE_LEVEL = 0.05


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
    """A row per encoder: per dataset its best validation value and how many trials it
    got (complete or pruned), then the mean rank and the mean normalized score.

    Rank 1 is best within a dataset; ties share the mean rank. The normalized score puts
    a dataset's worst encoder at 0 and its best at 1 (all at 1 when they tie). Both cover
    only the datasets an encoder has a complete trial on, and `datasets` says how many.
    """
    best = best_per_encoder(trials)
    if best.empty:
        return pd.DataFrame(columns=["encoder", "mean_rank", "normalized_score", "datasets"])
    columns = dataset_columns(trials)
    by_study = best.groupby("study")["value"]
    best["rank"] = by_study.rank(ascending=False, method="average")
    spread = by_study.transform("max") - by_study.transform("min")
    best["normalized"] = ((best["value"] - by_study.transform("min")) / spread.where(spread > 0)).fillna(1.0)
    table = best.pivot(index="encoder", columns="study", values="value").rename(columns=columns)
    table = table[sorted(table.columns)]
    finished = trials[trials["state"].isin(FINISHED_STATES)]
    counts = finished.groupby(["encoder", "study"]).size().unstack(fill_value=0).rename(columns=columns)
    for dataset in table.columns:
        table[f"{TRIALS_PREFIX}{dataset}"] = counts[dataset].reindex(table.index).fillna(0).astype(int) \
            if dataset in counts else 0
    per_encoder = best.groupby("encoder")
    table["mean_rank"] = per_encoder["rank"].mean()
    table["normalized_score"] = per_encoder["normalized"].mean()
    table["datasets"] = per_encoder["rank"].count()
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


def cost_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and encoder: what the search spent, beside the quality it bought.

    Every trial runs on one device, so device-hours are its seconds summed. `pareto`
    marks the encoders no other encoder beats on both best value and device-hours.
    """
    rows = []
    columns = dataset_columns(trials)
    for (study, encoder), group in trials.groupby(["study", "encoder"], sort=True):
        complete = group[group["state"] == "COMPLETE"]
        seconds = float(group["duration_s"].sum())
        rows.append({
            "dataset": columns[study], "study": study, "encoder": encoder, "trials": len(group),
            "complete": len(complete), "pruned": int((group["state"] == "PRUNED").sum()),
            "failed": int((group["state"] == "FAIL").sum()),
            "trial_seconds": round(seconds, 1), "device_hours": seconds / 3600,
            "train_tokens": int(group["train_tokens"].fillna(0).sum()),
            "best_value": complete["value"].max() if not complete.empty else np.nan,
        })
    table = pd.DataFrame(rows, columns=["dataset", "study", "encoder", "trials", "complete", "pruned",
                                        "failed", "trial_seconds", "device_hours", "train_tokens",
                                        "best_value"])
    table["pareto"] = False
    for _, group in table[table["best_value"].notna()].groupby("study"):
        table.loc[group.index, "pareto"] = stats.pareto_front(group["best_value"], group["device_hours"])
    return table


def search_scores(trials: pd.DataFrame) -> pd.DataFrame:
    """Every finished trial's validation value: the final one, or for a pruned trial the
    last one it reported (Optuna stores that as its value); failed trials scored nothing."""
    return trials[trials["state"].isin(FINISHED_STATES) & trials["value"].notna()]


def expected_performance(trials: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Expected best validation value after n = 1..N trials, per dataset and encoder, with a
    95% bootstrap band (Dodge et al. 2019): a budget-aware comparison, where one encoder's
    best-of-nine does not meet another's best-of-one."""
    columns = dataset_columns(trials) if not trials.empty else {}
    frames = []
    for (study, encoder), group in search_scores(trials).groupby(["study", "encoder"], sort=True):
        values = group["value"].to_numpy(dtype=float)
        low, high = stats.bootstrap_band(values, resamples=resamples, seed=seed)
        frames.append(pd.DataFrame({
            "dataset": columns[study], "study": study, "encoder": encoder, "n": np.arange(1, len(values) + 1),
            "expected_max": stats.expected_max_curve(values), "band_low": low, "band_high": high,
            "trials": len(values),
        }))
    if not frames:
        return pd.DataFrame(columns=["dataset", "study", "encoder", "n", "expected_max", "band_low",
                                     "band_high", "trials"])
    return pd.concat(frames, ignore_index=True)


def final_evaluation(runs: pd.DataFrame, confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The final runs (one row per encoder, dataset and seed, scored on the test split)
    summarized per encoder with a t confidence interval, and compared pairwise within
    each dataset with Welch's t-test.

    `indistinguishable_from_best` marks the encoders whose mean the test cannot tell
    from the best mean's at the 5% level (the best encoder included).
    """
    summary_rows, pair_rows = [], []
    for dataset, group in runs.groupby("dataset", sort=True):
        samples = {encoder: g["value"].to_numpy(dtype=float) for encoder, g in group.groupby("encoder")}
        samples = {encoder: values for encoder, values in samples.items() if len(values) >= 2}
        if not samples:
            continue
        ranked = sorted(samples, key=lambda encoder: (-samples[encoder].mean(), encoder))
        tests = {}
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                result = stats.welch_test(samples[a], samples[b])
                tests[a, b] = result
                pair_rows.append({"dataset": dataset, "encoder_a": a, "encoder_b": b,
                                  "mean_a": samples[a].mean(), "mean_b": samples[b].mean(),
                                  "t": result.t, "df": result.df, "p_value": result.p_value,
                                  "significant": result.p_value < SIGNIFICANCE_LEVEL})
        for encoder in ranked:
            interval = stats.mean_interval(samples[encoder], confidence)
            rows = group[group["encoder"] == encoder]
            best_test = tests.get((ranked[0], encoder))
            summary_rows.append({
                "dataset": dataset, "encoder": encoder, "metric": rows["metric"].iloc[0],
                "seeds": len(samples[encoder]), "mean": interval.mean, "std": interval.std,
                "ci_low": interval.low, "ci_high": interval.high,
                "source_trial": int(rows["source_trial"].iloc[0]),
                "indistinguishable_from_best": best_test is None or best_test.p_value >= SIGNIFICANCE_LEVEL,
            })
    final = pd.DataFrame(summary_rows, columns=[
        "dataset", "encoder", "metric", "seeds", "mean", "std", "ci_low", "ci_high", "source_trial",
        "indistinguishable_from_best"])
    pairwise = pd.DataFrame(pair_rows, columns=[
        "dataset", "encoder_a", "encoder_b", "mean_a", "mean_b", "t", "df", "p_value", "significant"])
    return final, pairwise


def top_encoder_verdicts(final: pd.DataFrame, pairwise: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: the encoders tied for first on the test split, and whether the best
    one differs significantly from the runner-up."""
    rows = []
    for dataset, group in final.groupby("dataset", sort=True):
        top = group[group["indistinguishable_from_best"]]["encoder"].tolist()
        ranked = group["encoder"].tolist()  # `final_evaluation` lists them best first
        if len(ranked) < 2:
            verdict = "only one encoder evaluated"
        else:
            pair = pairwise[(pairwise["dataset"] == dataset) & (pairwise["encoder_a"] == ranked[0])
                            & (pairwise["encoder_b"] == ranked[1])].iloc[0]
            verdict = f"{'yes' if pair['significant'] else 'no'} (p={pair['p_value']:.3g})"
        rows.append({"dataset": dataset, "final_top_encoders": ", ".join(top), "final_top_differ": verdict})
    return pd.DataFrame(rows, columns=["dataset", "final_top_encoders", "final_top_differ"])


def _plain(value: object) -> object:
    """numpy scalars to plain Python, so the parameters serialize as JSON."""
    return value.item() if hasattr(value, "item") else value


def to_markdown(table: pd.DataFrame, float_format: str = ".4f") -> str:
    return table.to_markdown(index=False, floatfmt=float_format) + "\n"
