"""The report's words: how numbers, parameters and metrics are written, and the notes and
sentences the page (and `--leaderboard`'s output) shows beside its tables and figures: what a
method rests on, the timeout, stopped-encoder and search-verdict lines, the reference notes.

Words only: no figure is drawn here (`figures`) and no page assembled (`html`, which keeps the
one-line placeholders of its empty sections). Verdicts are worded where they are decided
(`leaderboard`, `ranking`); this module shows them. A paragraph for the page comes back
HTML-escaped, the rest as plain strings.
"""

from __future__ import annotations

import html
import math

import optuna
import pandas as pd

from benchmark.report.leaderboard import reference_flag_sentences
from benchmark.schema import (
    BASELINE_NAMES,
    COMPARISON_ATTR,
    MAJORITY,
    RANDOM,
    REFERENCE_PREFIX,
    TFIDF_LOGREG,
    TRIAL,
)


def format_number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.2e}"  # p-values and tiny costs keep their significant digits


def format_param(value: object) -> str:
    """A hyperparameter as a slide shows it: a small float (a learning rate) in scientific
    notation with two significant digits, any other float with three."""
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 1e-2 else f"{value:.3g}"
    return str(value)


METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC"}


def metric_label(metric: object) -> str:
    return METRIC_LABELS.get(str(metric), str(metric))


def dataset_metrics(datasets: pd.DataFrame | None) -> dict[str, str]:
    """Dataset -> the metric its study ranks by, as headers and axes name it."""
    return {row["dataset"]: metric_label(row["metric"]) for row in rows_of(datasets) if "metric" in row}


STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


def trial_counts(trials: pd.DataFrame) -> str:
    """'N trials: c complete, p pruned, f failed', plus any other state that occurs."""
    counts = trials[TRIAL.state].value_counts()
    others = {state: state.lower() for state in counts.index if state not in STATE_WORDS}
    return f"{len(trials)} trials: " + ", ".join(
        f"{counts.get(state, 0)} {word}" for state, word in {**STATE_WORDS, **others}.items())


def rests_on(trials: pd.DataFrame | None, what: str) -> str:
    """A note saying how many trials of how many studies a table or figure rests on."""
    if trials is None or trials.empty:
        return ""
    studies = trials[TRIAL.study].nunique()
    return note_html(f"{what} {studies} stud{'ies' if studies != 1 else 'y'}, {trial_counts(trials)}.")


FINAL_METHOD = (
    "A score is the metric on the test split, averaged over the seeds. Means, 95% intervals and p-values are t "
    "intervals and t-tests whose variance counts both the test examples (the same ones for every encoder: a paired "
    "comparison) and the seeds, on the seeds' few degrees of freedom, so 2 or 3 seeds give wide intervals; a "
    "difference is a minus b in metric points. p_holm is Holm-adjusted over every pair of encoders of the dataset. "
    "Where the runs show no spread at all, there is no interval (–) and no verdict. The best encoder is picked "
    "after the fact; \"not shown worse than the best\" means its adjusted p against the best is 0.05 or more, "
    "which is no proof that the two are equivalent. A dataset with missing runs gets no verdict.")


def reference_notes(references: pd.DataFrame | None, flags: pd.DataFrame | None) -> str:
    """What the leaderboard's reference rows are, and each encoder that does not clear them."""
    if references is None or references.empty or flags is None:
        return ""
    about = (f"The rows marked {REFERENCE_PREFIX.strip()} are baselines fitted on the same training split and "
             f"scored on the same validation split as the encoders, at fixed settings: the "
             f"{BASELINE_NAMES[MAJORITY]}, {BASELINE_NAMES[RANDOM]} (uniform over the labels, the mean of seeded "
             f"draws), and {BASELINE_NAMES[TFIDF_LOGREG]} (TF-IDF of words and word pairs, logistic regression). "
             f"Chance is the better of the first two in the dataset's metric: on macro-F1 guessing can beat the "
             f"majority class. They take no rank and no normalized score. An encoder's value is the best "
             f"of its trials on the same validation split, so a small margin above a reference row is no proof "
             f"that it does better.")
    verdicts = [f"{sentence}." for sentence in reference_flag_sentences(flags)] or [
        "Every encoder's best validation value clears chance and tf-idf on every dataset it has a complete "
        "trial on."]
    return "".join(f"<p>{html.escape(text)}</p>" for text in [about, *verdicts])


def final_verdict_sentence(dataset: pd.Series) -> str:
    """The dataset's final verdict line, or that it has none yet."""
    verdict = _text(dataset.get("final_verdict"))
    return html.escape(verdict or f"{dataset['dataset']}: no final evaluation yet.")


EXPECTED_PERFORMANCE_NOTE = (
    "Each curve is the expected best validation score of n trials drawn from one encoder's complete trials on "
    "one dataset, with a 95% bootstrap band; how many complete trials it rests on is in each panel's title and "
    "in the complete_trials column of expected_performance.csv. Pruned trials never enter (their value is a "
    "checkpoint's, on a subset of the validation split), nor do failed ones. The trials are the ones this search "
    "drew: under TPE and pruning the curve is the empirical one of this search, not the one random search "
    "would give.")


def search_verdict_sentences(datasets: pd.DataFrame | None) -> list[str]:
    """Per dataset, what the search's expected-performance bands support."""
    return [f"{row['dataset']}: {row['search_verdict']}." for row in rows_of(datasets)
            if _text(row.get("search_verdict"))]


def timeout_sentences(datasets: pd.DataFrame | None) -> list[str]:
    """Per dataset cut short by its timeout, a warning that its comparison rests on fewer trials."""
    return [f"{row['dataset']}: {row['cut_short_by_timeout']}; it compares fewer trials than planned."
            for row in rows_of(datasets) if _text(row.get("cut_short_by_timeout"))]


def stopped_sentences(datasets: pd.DataFrame | None) -> list[str]:
    """Per dataset in which encoders were stopped by failing trials, which and why: their
    comparison rests on the trials they finished before."""
    return [f"{row['dataset']}: {row['stopped_encoders']}; a stopped encoder is compared on the trials it "
            f"finished before, and the next run retries it." for row in rows_of(datasets)
            if _text(row.get("stopped_encoders"))]


PROPOSALS_NOTE = ("Each encoder's hyperparameters are proposed from that encoder's own trials only, within its own "
                  "ranges: one encoder's results never steer another's search. Its first trials (the sampler's "
                  "n_startup_trials, counted per encoder) are drawn at random.")


MIN_IMPORTANCE_TRIALS = 10
MIN_TRIALS_PER_LEVEL = 2
IMPORTANCE_RULE = (
    f"Importances are Optuna's fANOVA: a random forest fitted to the complete trials, each parameter's share of "
    f"the variance of the validation value. They are drawn only with at least {MIN_IMPORTANCE_TRIALS} complete "
    f"trials (with fewer the forest mostly fits noise), and only for parameters that every complete trial shares, "
    f"that vary between them, and whose every categorical value is on at least {MIN_TRIALS_PER_LEVEL} of them "
    f"(a value seen once gives its share to one trial's luck); a constant parameter explains nothing and is not "
    f"drawn.")


def encoder_importance_note(study: optuna.Study) -> str:
    """What the encoder's bar means: in a balanced comparison the encoder is assigned, not
    sampled, so its share is the spread between encoders, not a tuning choice."""
    comparison = study.user_attrs.get(COMPARISON_ATTR)
    how = {"balanced": "In this balanced comparison the encoder is assigned in turn, not sampled: ",
           "search": "In this search the sampler chose the encoder, drawing the better ones more often: "}.get(
        comparison, "")
    return (f"{how}the encoder's bar is the share of the variance of the validation value that lies between "
            "encoders; it says how much the choice of encoder matters here, not which one is better (see the "
            "leaderboards).")


SHA256_SHOWN = 16  # hex digits; the study attribute keeps all 64
PROVENANCE_NOTE = (
    f"config sha256: the first {SHA256_SHOWN} hex digits of the config file's SHA-256 (all 64 are the study "
    "attribute config_sha256). device and precision: counted over the trials that trained, precision per encoder "
    "(how each encoder's was chosen, with its timings: the study attribute precision_by_encoder). The config, seed and "
    "package versions (torch, transformers, optuna) are those of the latest run that opened the study, so they "
    "name what trained, not what drew this page; \"unknown\" marks a study stored before they were kept.")


def rows_of(table: pd.DataFrame | None) -> list[pd.Series]:
    """The table's rows, none for a missing table."""
    return [] if table is None else [row for _, row in table.iterrows()]


def _text(value: object) -> str:
    """A table cell as text: "" for a missing one."""
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def note_html(sentence: str) -> str:
    """`sentence` as the page's note paragraph (grey italics), escaped."""
    return f'<p class="note">{html.escape(sentence)}</p>'
