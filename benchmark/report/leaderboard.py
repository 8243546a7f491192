"""Leaderboard tables as pure functions of the trials table (see `results.trials_frame`)
and of the final-evaluation runs (see `results.final_runs_frame`)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import numpy as np
import pandas as pd

from benchmark.report import stats
from benchmark.schema import (
    BASELINE_NAMES,
    CHANCE,
    MAJORITY,
    RANDOM,
    REFERENCE_NAMES,
    TFIDF_LOGREG,
    TRIAL,
    timeout_stop_text,
)

TRIALS_PREFIX = "trials: "
FINISHED_STATES = ("COMPLETE", "PRUNED")
# The trials table's state of a trial stopped by Ctrl-C or SIGTERM (FAIL in Optuna, see
# `results.trials_frame`).
INTERRUPTED_STATE = "INTERRUPTED"
SIGNIFICANCE_LEVEL = 0.05


def dataset_columns(trials: pd.DataFrame) -> dict[str, str]:
    """Study name -> the column heading it gets: the dataset, or the study name when two
    benchmark configs in one storage share a dataset."""
    studies = trials[[TRIAL.study, TRIAL.dataset]].drop_duplicates()
    shared = studies[TRIAL.dataset].duplicated(keep=False)
    return {row.study: (row.study if is_shared else row.dataset)
            for row, is_shared in zip(studies.itertuples(), shared)}


def best_per_encoder(trials: pd.DataFrame) -> pd.DataFrame:
    """Best complete validation value for each (study, encoder)."""
    complete = trials[trials[TRIAL.state] == "COMPLETE"]
    return complete.groupby([TRIAL.study, TRIAL.encoder], as_index=False)[TRIAL.value].max()


def encoder_leaderboard(trials: pd.DataFrame, references: pd.DataFrame | None = None) -> pd.DataFrame:
    """A row per encoder: per dataset its best validation value and how many trials it
    got (complete or pruned), then the mean rank and the mean normalized score.

    Rank 1 is best within a dataset; ties share the mean rank. The normalized score puts
    a dataset's worst encoder at 0 and its best at 1 (all at 1 when they tie). Both cover
    only the datasets an encoder has a complete trial on, and `datasets` says how many.

    With `references` (see `results.references_frame`), `reference_flags` says where an
    encoder does not clear a reference baseline, and a row per baseline follows the
    encoders with its validation values; those rows take no rank and no normalized score.
    """
    best = best_per_encoder(trials)
    if best.empty:
        return pd.DataFrame(columns=["encoder", "mean_rank", "normalized_score", "datasets"])
    columns = dataset_columns(trials)
    by_study = best.groupby(TRIAL.study)[TRIAL.value]
    best["rank"] = by_study.rank(ascending=False, method="average")
    spread = by_study.transform("max") - by_study.transform("min")
    best["normalized"] = ((best[TRIAL.value] - by_study.transform("min")) / spread.where(spread > 0)).fillna(1.0)
    table = best.pivot(index=TRIAL.encoder, columns=TRIAL.study, values=TRIAL.value).rename(columns=columns)
    table = table[sorted(table.columns)]
    finished = trials[trials[TRIAL.state].isin(FINISHED_STATES)]
    counts = finished.groupby([TRIAL.encoder, TRIAL.study]).size().unstack(fill_value=0).rename(columns=columns)
    for dataset in table.columns:
        table[f"{TRIALS_PREFIX}{dataset}"] = counts[dataset].reindex(table.index).fillna(0).astype(int) \
            if dataset in counts else 0
    per_encoder = best.groupby(TRIAL.encoder)
    table["mean_rank"] = per_encoder["rank"].mean()
    table["normalized_score"] = per_encoder["normalized"].mean()
    table["datasets"] = per_encoder["rank"].count()
    table = table.reset_index().sort_values(["mean_rank", "encoder"], ignore_index=True)
    table.columns.name = None
    if references is None:
        return table
    flags = reference_flags(trials, references)
    table["reference_flags"] = ["; ".join(f"{row.dataset}: {_flag_words(row)}"
                                          for row in flags[flags["encoder"] == encoder].itertuples())
                                for encoder in table["encoder"]]
    return _with_reference_rows(table, references, columns)


def _with_reference_rows(table: pd.DataFrame, references: pd.DataFrame, columns: dict[str, str]) -> pd.DataFrame:
    values = reference_values(references[references["study"].isin(columns)], "validation")
    rows = values.pivot(index="reference", columns="study", values="value").rename(columns=columns)
    rows = rows[[dataset for dataset in rows.columns if dataset in table.columns]]
    if rows.empty:
        return table
    # Object columns keep the encoders' counts integers beside the reference rows' blanks.
    counts = [column for column in table.columns if column.startswith(TRIALS_PREFIX)] + ["datasets"]
    table = table.astype({column: object for column in counts})
    rows = rows.rename_axis("encoder").reset_index().assign(reference_flags="")
    rows.columns.name = None
    return pd.concat([table, rows], ignore_index=True)


def reference_values(references: pd.DataFrame, split: str) -> pd.DataFrame:
    """Each reference baseline's value on `split` in its study's metric: columns study,
    reference, value, examples, train_examples."""
    rows = references[references["split"] == split]
    values = [row[row["metric"]] for _, row in rows.iterrows()]
    return rows.assign(value=pd.Series(values, index=rows.index, dtype=float))[
        ["study", "reference", "value", "examples", "train_examples"]]


FLAG_COLUMNS = ["dataset", "encoder", "metric", "best_value", "complete_trials", "majority", "random_guessing",
                "chance", "tfidf_logreg", "validation_examples", "train_examples", "at_chance", "not_above_tfidf"]


def reference_flags(trials: pd.DataFrame, references: pd.DataFrame) -> pd.DataFrame:
    """The encoders whose best validation value on a dataset does not clear a reference
    baseline's on the same validation split: `at_chance` when it is at or below `chance`,
    the better of the majority class's and random guessing's (see `baselines`), and
    `not_above_tfidf` when at or below TF-IDF + logistic regression's. `random_guessing` is
    NaN for a study stored before that row existed; chance is then the majority class's."""
    values = reference_values(references, "validation")
    by_study = values.pivot(index="study", columns="reference", values="value").reindex(
        columns=list(REFERENCE_NAMES.values()))
    chance = by_study[[REFERENCE_NAMES[name] for name in CHANCE]].max(axis=1)
    sizes = values.groupby("study")[["examples", "train_examples"]].first()
    columns = dataset_columns(trials) if not trials.empty else {}
    complete = trials[trials[TRIAL.state] == "COMPLETE"].groupby([TRIAL.study, TRIAL.encoder]).size()
    rows = []
    for row in (best_per_encoder(trials).itertuples() if not trials.empty else ()):
        if row.study not in by_study.index:
            continue
        tfidf = by_study.at[row.study, REFERENCE_NAMES[TFIDF_LOGREG]]
        if row.value > chance[row.study] and row.value > tfidf:
            continue
        rows.append({
            "dataset": columns[row.study], "encoder": row.encoder,
            "metric": trials.loc[trials[TRIAL.study] == row.study, TRIAL.metric].iloc[0], "best_value": row.value,
            "complete_trials": int(complete[row.study, row.encoder]),
            "majority": by_study.at[row.study, REFERENCE_NAMES[MAJORITY]],
            "random_guessing": by_study.at[row.study, REFERENCE_NAMES[RANDOM]], "chance": chance[row.study],
            "tfidf_logreg": tfidf,
            "validation_examples": int(sizes.at[row.study, "examples"]),
            "train_examples": int(sizes.at[row.study, "train_examples"]),
            "at_chance": bool(row.value <= chance[row.study]), "not_above_tfidf": bool(row.value <= tfidf),
        })
    return pd.DataFrame(rows, columns=FLAG_COLUMNS)


def _flag_words(flag) -> str:
    words = ["at chance"] * flag.at_chance + [f"not above {BASELINE_NAMES[TFIDF_LOGREG]}"] * flag.not_above_tfidf
    return " and ".join(words)


def reference_flag_sentences(flags: pd.DataFrame) -> list[str]:
    """One sentence per flagged encoder and dataset, with the numbers and what they rest on."""
    return [
        f"{flag.dataset}: {flag.encoder} is {_flag_words(flag)}: its best validation {flag.metric} is "
        f"{flag.best_value:.4f} (best of {flag.complete_trials} complete trial{'s' * (flag.complete_trials != 1)}), "
        f"against {_references_text(flag)} "
        f"(fitted on the same {flag.train_examples} training examples, scored on the same "
        f"{flag.validation_examples} validation examples)"
        for flag in flags.itertuples()
    ]


def _references_text(flag) -> str:
    shown = [f"{flag.majority:.4f} for the {BASELINE_NAMES[MAJORITY]}",
             *([] if pd.isna(flag.random_guessing) else [f"{flag.random_guessing:.4f} for {BASELINE_NAMES[RANDOM]}"]),
             f"{flag.tfidf_logreg:.4f} for {BASELINE_NAMES[TFIDF_LOGREG]}"]
    return ", ".join(shown[:-1]) + " and " + shown[-1]


def with_reference_test_scores(final: pd.DataFrame, references: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """The final table with each dataset's reference baselines' test values as columns
    (named like their leaderboard rows), beside the encoders' test scores."""
    columns = dataset_columns(trials) if not trials.empty else {}
    values = reference_values(references[references["study"].isin(columns)], "test")
    wide = values.pivot(index="study", columns="reference", values="value").rename(index=columns)
    wide = wide.rename_axis(index="dataset", columns=None).reset_index()
    return final.merge(wide, on="dataset", how="left") if not wide.empty else final


def dataset_summary(trials: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: the best trial and its parameters, trial counts by state, and time spent."""
    columns = dataset_columns(trials)
    rows = []
    for study, group in trials.groupby(TRIAL.study, sort=True):
        state = group[TRIAL.state]
        complete = group[state == "COMPLETE"]
        best = complete.loc[complete[TRIAL.value].idxmax()] if not complete.empty else None
        params = {} if best is None else {
            name.removeprefix(TRIAL.param_prefix): _plain(best[name])
            for name in group.columns if name.startswith(TRIAL.param_prefix) and pd.notna(best[name])
        }
        rows.append({
            "dataset": columns[study],
            "study": study,
            "metric": group[TRIAL.metric].iloc[0],
            "best_value": None if best is None else best[TRIAL.value],
            # Every encoder that reaches the best value: naming one of a tie would pick a winner.
            "best_encoder": None if best is None else ", ".join(
                sorted(set(complete.loc[complete[TRIAL.value] == best[TRIAL.value], TRIAL.encoder]))),
            "best_trial": None if best is None else int(best[TRIAL.number]),
            "best_params": json.dumps(params, sort_keys=True),
            "complete": int((state == "COMPLETE").sum()),
            "pruned": int((state == "PRUNED").sum()),
            "failed": int((state == "FAIL").sum()),
            # Stopped by Ctrl-C or SIGTERM: neither a result nor a failure of the configuration.
            "interrupted": int((state == INTERRUPTED_STATE).sum()),
            # Running now (or their worker died and the heartbeat has not yet said so) or queued:
            # the other columns will change.
            "running": int(state.isin(["RUNNING", "WAITING"]).sum()),
            "trial_seconds": round(float(group[TRIAL.duration_s].sum()), 1),
            # From the first start to the last finish; NaN while no trial has finished.
            "wall_seconds": round((group[TRIAL.datetime_complete].max()
                                   - group[TRIAL.datetime_start].min()).total_seconds(), 1),
            "cut_short_by_timeout": (timeout_stop_text(group[TRIAL.timeout_stop].iloc[0])
                                     if TRIAL.timeout_stop in group else ""),
            "stopped_encoders": (stopped_text(group[TRIAL.stopped_encoders].iloc[0])
                                 if TRIAL.stopped_encoders in group else ""),
        })
    return pd.DataFrame(rows)


def stopped_text(stopped: object) -> str:
    """The study attribute `stopped_encoders` (see `study.stop_failing_encoders`) in words;
    "" when no encoder was stopped."""
    if not isinstance(stopped, dict):
        return ""
    return "; ".join(f"{encoder} stopped after {reason}" for encoder, reason in stopped.items())


def cost_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and encoder: what the search spent, beside the quality it bought.

    Every trial runs on one device, so device-hours are its seconds summed. `pareto`
    marks the encoders no other encoder beats on both best value and device-hours.
    """
    rows = []
    columns = dataset_columns(trials)
    for (study, encoder), group in trials.groupby([TRIAL.study, TRIAL.encoder], sort=True):
        state = group[TRIAL.state]
        complete = group[state == "COMPLETE"]
        seconds = float(group[TRIAL.duration_s].sum())
        rows.append({
            "dataset": columns[study], "study": study, "encoder": encoder, "trials": len(group),
            "complete": len(complete), "pruned": int((state == "PRUNED").sum()),
            "failed": int((state == "FAIL").sum()),
            "trial_seconds": round(seconds, 1), "device_hours": seconds / 3600,
            "train_tokens": int(group[TRIAL.train_tokens].fillna(0).sum()),
            "best_value": complete[TRIAL.value].max() if not complete.empty else np.nan,
        })
    table = pd.DataFrame(rows, columns=["dataset", "study", "encoder", "trials", "complete", "pruned",
                                        "failed", "trial_seconds", "device_hours", "train_tokens",
                                        "best_value"])
    table["pareto"] = False
    for _, group in table[table["best_value"].notna()].groupby("study"):
        table.loc[group.index, "pareto"] = stats.pareto_front(group["best_value"], group["device_hours"])
    return table


def search_scores(trials: pd.DataFrame) -> pd.DataFrame:
    """Every complete trial's final validation value, on the full validation split.

    Pruned trials never enter: their value is the last checkpoint's, scored on a subset
    of the validation split after partial training (for a NaN prune, before it diverged),
    and Dodge et al.'s estimator assumes final scores of complete runs. Failed trials
    scored nothing."""
    return trials[(trials[TRIAL.state] == "COMPLETE") & trials[TRIAL.value].notna()]


def expected_performance(trials: pd.DataFrame, resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Expected best validation value after n = 1..N trials, per dataset and encoder, with a
    95% bootstrap band (Dodge et al. 2019): a budget-aware comparison, where one encoder's
    best-of-nine does not meet another's best-of-one.

    The curves rest on the complete trials only (`complete_trials`), and the trials are
    those this search drew: under TPE and pruning the curve is the empirical one of this
    search, not the one random search would give.
    """
    columns = dataset_columns(trials) if not trials.empty else {}
    frames = []
    for (study, encoder), group in search_scores(trials).groupby([TRIAL.study, TRIAL.encoder], sort=True):
        values = group[TRIAL.value].to_numpy(dtype=float)
        low, high = stats.bootstrap_band(values, resamples=resamples, seed=seed)
        frames.append(pd.DataFrame({
            "dataset": columns[study], "study": study, "encoder": encoder, "n": np.arange(1, len(values) + 1),
            "expected_max": stats.expected_max_curve(values), "band_low": low, "band_high": high,
            "complete_trials": len(values),
        }))
    if not frames:
        return pd.DataFrame(columns=["dataset", "study", "encoder", "n", "expected_max", "band_low",
                                     "band_high", "complete_trials"])
    return pd.concat(frames, ignore_index=True)


VERDICT_STRENGTH_COLUMNS = ["dataset", "complete_per_encoder", "top_two_bands_overlap", "search_verdict"]
TOO_FEW_TRIALS = 2  # complete trials per encoder at or below which a comparison is not read


def verdict_strength(trials: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Per dataset: how many complete trials each encoder's best rests on, and whether the
    top two encoders' expected-performance bands (see `expected_performance`) still
    overlap at the budget spent.

    Every encoder with a complete trial is compared at n = the fewest complete trials any of
    them has: the same budget for all, so the encoder that got more trials is not credited
    with a best-of-more, and every curve is defined there. The top two are those with the
    highest expected best at that n, and "ahead" goes to the one whose band lies above the
    other's: a best-of-all-trials order can put first an encoder whose band at n lies
    below. A band of zero width (every complete trial scored the same) reads as no verdict:
    it says the values did not vary, not that they are known exactly.
    """
    rows = []
    columns = dataset_columns(trials) if not trials.empty else {}
    for study, group in trials.groupby(TRIAL.study, sort=True):
        complete = group[group[TRIAL.state] == "COMPLETE"]
        counts = complete.groupby(TRIAL.encoder).size().reindex(sorted(group[TRIAL.encoder].dropna().unique()),
                                                                fill_value=0)
        overlap, verdict = "", "no two encoders have a complete trial to compare"
        compared = counts[counts > 0]
        if len(compared) >= 2:
            n = int(compared.min())
            bands = curves[(curves["study"] == study) & (curves["n"] == n)].set_index("encoder")
            ranked = sorted(compared.index, key=lambda encoder: (-bands.loc[encoder, "expected_max"], encoder))
            a, b = ranked[:2]
            low, high = bands["band_low"], bands["band_high"]
            overlapping = bool(low[a] <= high[b] and low[b] <= high[a])
            overlap = f"{'yes' if overlapping else 'no'} at n={n}"
            flat = [encoder for encoder in (a, b) if low[encoder] == high[encoder]]
            if n <= TOO_FEW_TRIALS:
                fewest = ", ".join(compared.index[compared == n])
                verdict = (f"too few trials to compare: at n={n} complete trial(s) each (the fewest, {fewest}), "
                           f"{a} leads {b}; run more trials before reading a ranking")
            elif overlapping:
                verdict = (f"{a} and {b} overlap at n={n} complete trials each: more trials, not a choice between "
                           "them, is what the data supports")
            elif flat:
                verdict = (f"no verdict between {a} and {b} at n={n} complete trials each: every complete trial of "
                           f"{' and of '.join(flat)} scored the same, so its band has no width and shows no spread "
                           "to compare against")
            else:
                leader, other = (a, b) if low[a] > high[b] else (b, a)
                verdict = (f"{leader} ahead of {other}: their expected-performance bands are apart at n={n} complete "
                           "trials each")
        rows.append({"dataset": columns[study],
                     "complete_per_encoder": ", ".join(f"{encoder} {count}" for encoder, count in counts.items()),
                     "top_two_bands_overlap": overlap, "search_verdict": verdict})
    return pd.DataFrame(rows, columns=VERDICT_STRENGTH_COLUMNS)


FINAL_COLUMNS = ["dataset", "encoder", "metric", "seeds", "seeds_requested", "test_examples", "mean", "ci_low",
                 "ci_high", "source_trial", "not_shown_worse_than_best", "missing"]
PAIRWISE_COLUMNS = ["dataset", "encoder_a", "encoder_b", "metric", "difference", "ci_low", "ci_high", "p_value",
                    "p_holm", "significant_after_holm", "df", "pairs", "test_examples", "seeds_a", "seeds_b", "missing"]
VERDICT_COLUMNS = ["dataset", "final_verdict", "final_not_shown_worse_than_best", "final_missing"]


def final_evaluation(expected: pd.DataFrame, runs: pd.DataFrame,
                     labels: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The final runs' test predictions, summarized per encoder and compared pairwise per dataset.

    `expected` has a row per encoder that the final evaluation should have run (`dataset`,
    `encoder`, `metric`, `source_trial`, `seeds_requested`); `runs` a row per run of those
    (`dataset`, `encoder`, `seed`, `predictions`); `labels` each dataset's test labels.
    Means, 95% t intervals and two-sided p-values come from `stats.compare_seeded` (a
    variance that counts the test examples and the seeds, with the seeds' few degrees of
    freedom); p-values are Holm-adjusted over every pair of encoders in a dataset.

    `not_shown_worse_than_best`: the encoder's adjusted p against the top-mean encoder is at
    least 0.05 (the top one included); empty where that p is unknown (no spread in the runs,
    see `stats.t_interval`). The best was chosen after the fact, and this is no proof of
    equivalence: the test set and seeds could not tell them apart, nothing more.
    Where an encoder has no run or fewer seeds than requested, `missing` says so and the
    dataset gets no verdict (the adjusted p-values and this column stay empty): the missing
    runs could change it. Each pair's `missing` lists the dataset's missing runs, since they
    would join the pairs that Holm adjusts over.
    """
    final_rows, pair_rows = [], []
    for dataset, plan in expected.groupby("dataset", sort=True):
        truth = np.asarray(labels[dataset])
        metric, requested = plan["metric"].iloc[0], int(plan["seeds_requested"].max())
        mine = runs[runs["dataset"] == dataset].sort_values("seed")
        predictions = {encoder: np.stack(list(group["predictions"])) for encoder, group in mine.groupby("encoder")}
        missing = {row.encoder: _missing(len(predictions.get(row.encoder, ())), requested)
                   for row in plan.itertuples()}
        complete = not any(missing.values())
        estimates, differences = {}, {}
        if predictions:  # keyed in name order (groupby sorts), so ties rank by name
            estimates, differences = stats.compare_seeded(truth, predictions, metric)
        adjusted = dict(zip(differences, stats.holm([d.p_value for d in differences.values()])))
        order = [*estimates, *(name for name in sorted(missing) if name not in estimates)]
        missing_text = missing_runs_text((encoder, missing[encoder]) for encoder in order)
        for (a, b), difference in differences.items():
            pair_rows.append({
                "dataset": dataset, "encoder_a": a, "encoder_b": b, "metric": metric,
                "difference": difference.value, "ci_low": difference.low, "ci_high": difference.high,
                "p_value": difference.p_value, "p_holm": adjusted[a, b] if complete else np.nan,
                "significant_after_holm": adjusted[a, b] < SIGNIFICANCE_LEVEL if complete else None,
                "df": difference.df, "pairs": len(differences), "test_examples": len(truth),
                "seeds_a": len(predictions[a]), "seeds_b": len(predictions[b]), "missing": missing_text,
            })
        sources = plan.set_index("encoder")["source_trial"]
        top = next(iter(estimates), None)
        for encoder in order:
            estimate = estimates.get(encoder)
            not_worse = None
            if complete and estimate is not None and (encoder == top or not np.isnan(adjusted[top, encoder])):
                not_worse = encoder == top or bool(adjusted[top, encoder] >= SIGNIFICANCE_LEVEL)
            final_rows.append({
                "dataset": dataset, "encoder": encoder, "metric": metric,
                "seeds": len(predictions.get(encoder, ())), "seeds_requested": requested,
                "test_examples": len(truth),
                "mean": np.nan if estimate is None else estimate.value,
                "ci_low": np.nan if estimate is None else estimate.low,
                "ci_high": np.nan if estimate is None else estimate.high,
                "source_trial": int(sources[encoder]), "not_shown_worse_than_best": not_worse,
                "missing": missing[encoder],
            })
    return pd.DataFrame(final_rows, columns=FINAL_COLUMNS), pd.DataFrame(pair_rows, columns=PAIRWISE_COLUMNS)


def _missing(seeds: int, requested: int) -> str:
    if seeds == 0:
        return "not evaluated"
    return f"{requested - seeds} of {requested} seeds missing" if seeds < requested else ""


def missing_runs_text(missing: Iterable[tuple[str, str]]) -> str:
    """(encoder, its `missing` entry) pairs as one text, naming only those with runs missing."""
    return "; ".join(f"{encoder}: {text}" for encoder, text in missing if text)


def top_encoder_verdicts(final: pd.DataFrame, pairwise: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, one line that says what the final evaluation shows and what it rests on,
    the encoders not shown worse than the best, and the runs still missing."""
    rows = []
    for dataset, group in final.groupby("dataset", sort=True):
        evaluated = group[group["seeds"] > 0]  # `final_evaluation` lists them best first
        missing = missing_runs_text(zip(group["encoder"], group["missing"]))
        seeds = evaluated["seeds"].unique()
        # "each" only where every encoder has them: one not evaluated has none.
        if len(seeds) == 1 and not missing:
            rests_on = f" x {seeds[0]} seed{'s' if seeds[0] != 1 else ''} each"
        elif evaluated.empty:
            rests_on = ", no run finished yet"
        else:
            rests_on = " x seeds " + ", ".join(f"{row.encoder} {row.seeds}" for row in evaluated.itertuples())
        header = f"{dataset} (test split, {group['test_examples'].iloc[0]} examples{rests_on})"
        not_worse = group[group["not_shown_worse_than_best"].eq(True)]["encoder"].tolist()  # None: no verdict
        if missing:
            verdict = f"{header}: incomplete ({missing}); no verdict until --final-eval finishes"
        elif len(evaluated) < 2:
            verdict = f"{header}: only {evaluated['encoder'].iloc[0]} evaluated, nothing to compare"
        else:
            top, second = evaluated["encoder"].iloc[:2]
            pair = pairwise[(pairwise["dataset"] == dataset) & (pairwise["encoder_a"] == top)
                            & (pairwise["encoder_b"] == second)].iloc[0]
            # No spread across seeds or examples: a zero-width interval would read as certainty.
            interval = ("no interval: the runs show no spread" if pd.isna(pair["ci_low"])
                        else f"95% CI {pair['ci_low']:+.3f}, {pair['ci_high']:+.3f}")
            outcome = (f"{top} higher" if pair["significant_after_holm"] else "not shown different"
                       if pd.notna(pair["p_holm"]) else "no verdict, the runs show no spread to test against")
            verdict = (f"{header}: {top} - {second} = {pair['difference']:+.3f} {pair['metric']} "
                       f"[{interval}], Holm-adjusted p = {pair['p_holm']:.2g} over {pair['pairs']} "
                       f"pair{'s' if pair['pairs'] != 1 else ''}: {outcome}")
            if len(evaluated) > 2:
                verdict += f"; not shown worse than {top}: {', '.join(not_worse)}"
        rows.append({"dataset": dataset, "final_verdict": verdict,
                     "final_not_shown_worse_than_best": ", ".join(not_worse), "final_missing": missing})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def final_predictions(runs: pd.DataFrame, labels: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every test-split prediction of every final run, one row per run and test example."""
    frames = [pd.DataFrame({"dataset": run.dataset, "encoder": run.encoder, "seed": run.seed,
                            "source_trial": run.source_trial, "example": np.arange(len(run.predictions)),
                            "label": labels[run.dataset], "prediction": run.predictions})
              for run in runs.sort_values(["dataset", "encoder", "seed"]).itertuples()]
    columns = ["dataset", "encoder", "seed", "source_trial", "example", "label", "prediction"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def _plain(value: object) -> object:
    """numpy scalars to plain Python, so the parameters serialize as JSON."""
    return value.item() if hasattr(value, "item") else value


def to_markdown(table: pd.DataFrame, float_format: str = ".4f") -> str:
    # Missing values (a reference row's rank, say) print blank rather than "nan"; tabulate
    # leaves only None blank.
    shown = table.astype(object).where(table.notna(), None)
    return shown.to_markdown(index=False, floatfmt=float_format) + "\n"
