"""The HTML report: the page assembled from the leaderboard tables, the studies, the
figures (`figures`) and the words (`text`), and the report's files written.

The tables as the page shows them are built here; `write_report` alone reads the storage
and writes files. The page is self-contained: plotly.js is inlined once, so it opens
offline and can be mailed around.
"""

from __future__ import annotations

import html
import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from optuna.visualization import plot_optimization_history
from plotly.offline import get_plotlyjs

from benchmark.config import provenance
from benchmark.files import write_atomic
from benchmark.report import ranking
from benchmark.report.figures import (
    FIGURE_FORMATS,
    Colours,
    cost_figure,
    critical_difference_png,
    encoder_colours,
    expected_performance_figure,
    expected_performance_png,
    figure_div,
    final_evaluation_png,
    final_figure,
    importance_obstacle,
    importance_parameters,
    importances_figure,
    learning_curves_figure,
    page_encoders,
    parallel_coordinate_figure,
    png_data_uri,
    proposals_figure,
    write_figure,
)
from benchmark.report.text import (
    EXPECTED_PERFORMANCE_NOTE,
    FINAL_METHOD,
    IMPORTANCE_RULE,
    PROPOSALS_NOTE,
    PROVENANCE_NOTE,
    SHA256_SHOWN,
    dataset_metrics,
    encoder_importance_note,
    final_verdict_sentence,
    format_number,
    format_param,
    metric_label,
    note_html,
    reference_notes,
    rests_on,
    rows_of,
    search_verdict_sentences,
    stopped_sentences,
    timeout_sentences,
    trial_counts,
)
from benchmark.schema import (
    BENCHMARK_ATTR,
    CONFIG_FILE_ATTR,
    CONFIG_SHA256_ATTR,
    DATA_SEED_ATTR,
    DEVICE_ATTR,
    ENCODER_PARAM,
    PRECISION_ATTR,
    PRECISION_BY_ENCODER_ATTR,
    REFERENCE_NAMES,
    SURPLUS_ATTR,
    TRIAL,
    VERSIONS_ATTR,
)

REPORT_FILE = "report.html"
EXPECTED_PERFORMANCE_PNG = "expected_performance.png"
FINAL_EVALUATION_PNG = "final_evaluation.png"
CRITICAL_DIFFERENCE_PNG = "critical_difference.png"
# What the trackers' study runs carry (those written); a new figure file belongs here too.
REPORT_FILES = (REPORT_FILE, *(str(Path(png).with_suffix(f".{ext}")) for png in (
    EXPECTED_PERFORMANCE_PNG, FINAL_EVALUATION_PNG, CRITICAL_DIFFERENCE_PNG) for ext in FIGURE_FORMATS))


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; padding: 0 1.5em; color: #222; }
h1, h2, h3 { font-weight: 600; }
section { margin-bottom: 3em; }
div.table-scroll { overflow-x: auto; max-width: 100%; }
table.report { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
table.report th, table.report td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
table.report th { background: #f4f4f4; }
table.report td:first-child, table.report th:first-child { text-align: left; }
p.note { color: #555; font-style: italic; }
"""


def without_surplus(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of `study` whose surplus trials (claimed by racing workers, never
    trained) are bare failed trials: no figure draws them, and every other trial keeps
    its number, which Optuna's plots index by and the leaderboards name trials by."""
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    for name, value in study.user_attrs.items():  # the header's provenance and the importances' notes
        copy.set_user_attr(name, value)
    copy.add_trials([optuna.trial.create_trial(state=TrialState.FAIL) if trial.user_attrs.get(SURPLUS_ATTR) else trial
                     for trial in study.get_trials(deepcopy=False)])
    return copy


def load_studies(storage: optuna.storages.BaseStorage | str, datasets: pd.DataFrame) -> dict[str, optuna.Study]:
    """Dataset name -> its study, surplus trials left out."""
    storage = optuna.storages.get_storage(storage)
    return {row.dataset: without_surplus(optuna.load_study(study_name=row.study, storage=storage))
            for row in datasets.itertuples()}


# Tables

def table_html(table: pd.DataFrame | None, empty_sentence: str) -> str:
    """The table in a container that scrolls sideways, so a wide one never runs off the page."""
    if table is None or table.empty:
        return note_html(empty_sentence)
    return ('<div class="table-scroll">'
            + table.to_html(index=False, border=0, classes="report", float_format=format_number, na_rep="–")
            + "</div>")


def leaderboard_display(leaderboard: pd.DataFrame | None, metrics: dict[str, str]) -> pd.DataFrame | None:
    """The encoder leaderboard, each dataset's column naming the metric its values are in."""
    if leaderboard is None:
        return None
    return leaderboard.rename(columns={dataset: f"{dataset}: best validation {metric}"
                                       for dataset, metric in metrics.items()})


def value_display(table: pd.DataFrame | None, datasets: pd.DataFrame | None) -> pd.DataFrame | None:
    """A table with a `best_value` per row (datasets, costs), the metric it is in beside it;
    `best_params` go to their own table (see `best_params_table`)."""
    if table is None or "best_value" not in table:
        return table
    shown = with_metric(table.drop(columns=["best_params"], errors="ignore"), datasets)
    return shown.rename(columns={"best_value": "best validation value"})


# Sentences the page shows as paragraphs (see `timeout_sentences`, `search_verdict_sentences`,
# `final_verdict_sentence`): as cells they squeeze the datasets table into ten-line rows.
SENTENCE_COLUMNS = ["cut_short_by_timeout", "search_verdict", "final_verdict"]


def datasets_display(datasets: pd.DataFrame | None) -> pd.DataFrame | None:
    return value_display(None if datasets is None else datasets.drop(columns=SENTENCE_COLUMNS, errors="ignore"),
                         datasets)


def with_metric(table: pd.DataFrame, datasets: pd.DataFrame | None) -> pd.DataFrame:
    """`table` with a `metric` column (from the datasets table), before `best_value` if it has one."""
    if "metric" in table:
        return table
    shown = table.copy()
    at = int(shown.columns.get_loc("best_value")) if "best_value" in shown else len(shown.columns)
    shown.insert(at, "metric", shown["dataset"].map({row["dataset"]: row["metric"] for row in rows_of(datasets)}))
    return shown


def best_params_table(datasets: pd.DataFrame | None) -> pd.DataFrame:
    """Per dataset with a complete trial: its best trial's parameters, a column each."""
    rows = [{"dataset": row["dataset"], "metric": row["metric"], "best validation value": row["best_value"],
             "best encoder": row["best_encoder"], "trial": int(row["best_trial"]),
             **{name: format_param(value) for name, value in sorted(json.loads(row["best_params"]).items())}}
            for row in rows_of(datasets) if pd.notna(row.get("best_trial"))]
    return pd.DataFrame(rows)


def final_display(final: pd.DataFrame) -> pd.DataFrame:
    """The final evaluation as read: what each mean rests on, its 95% t interval over seeds and
    test examples, and what is missing."""
    shown = final[["dataset", "encoder", "metric"]].copy()
    shown["seeds"] = [f"{seeds} of {requested}" for seeds, requested in zip(final["seeds"], final["seeds_requested"])]
    shown["test examples"] = final["test_examples"]
    shown["mean"] = final["mean"]
    shown["95% CI (seeds and examples)"] = ["–" if math.isnan(low) else f"[{low:.4f}, {high:.4f}]"
                                   for low, high in zip(final["ci_low"], final["ci_high"])]
    shown["source trial"] = final["source_trial"]
    shown["not shown worse than the best"] = final["not_shown_worse_than_best"].map(
        lambda value: "–" if value is None or value != value else ("yes" if value else "no"))
    shown["missing"] = final["missing"]
    for column in REFERENCE_NAMES.values():
        if column in final:
            shown[f"{column} (test)"] = final[column]
    return shown


# Sections

def ranking_section(tables: dict[str, pd.DataFrame]) -> str:
    ranks, tests = tables.get("ranking"), tables.get("ranking_tests")
    parts = ['<section id="ranking"><h2>Ranking across datasets</h2>']
    if ranks is None or ranks.empty or tests is None:
        parts.append(note_html("No ranking yet: no encoder has a complete trial on every dataset."))
        return "\n".join([*parts, "</section>"])
    parts += [f"<p>{html.escape(ranking.ranking_verdict(tests))}</p>",
              note_html("Each dataset ranks the encoders that have a complete trial on every dataset by their best "
                    "validation value (1 = best). With three datasets or more, Friedman's test (three encoders or "
                    "more, then Nemenyi's post-hoc test) or Wilcoxon's signed-rank test (two encoders) says whether "
                    "the ranking is real; both from scipy and scikit-posthocs."),
              table_html(ranks, ""), rests_on(tables.get("trials"), "Rests on the best complete trials of"),
              table_html(tests.drop(columns=["encoder_a", "encoder_b"], errors="ignore"),
                         "No test: fewer than two encoders to compare.")]
    figure = critical_difference_png(ranks, tests)
    if figure is not None:
        parts.append(f'<img id="critical-difference" alt="critical-difference diagram" src="{png_data_uri(figure)}">')
    return "\n".join([*parts, "</section>"])


def importances_html(study: optuna.Study, metric: str, div_id: str) -> str:
    """The importances plot, with what it rests on and Optuna's caveats shown under it rather
    than lost in a log."""
    figure, caveats = importances_figure(study, metric)
    notes = [IMPORTANCE_RULE, *([encoder_importance_note(study)] if ENCODER_PARAM in importance_parameters(study)
                                else []), *(f"Optuna: {caveat}" for caveat in caveats)]
    return figure_div(figure, div_id) + "".join(note_html(note) for note in notes)


def dataset_section(index: int, dataset: pd.Series, study: optuna.Study, costs: pd.DataFrame | None,
                    colours: Colours) -> str:
    name, metric = str(dataset["dataset"]), str(dataset["metric"])
    prefix = f"dataset-{index}"
    # Optuna draws nothing of a study without a complete trial, and logs a warning to stderr
    # instead: the page says it once in place of both plots.
    nothing_complete = (note_html(f"No complete trial in {name} yet: nothing to draw.")
                        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None)
    parts = [f'<section id="{prefix}"><h2>Dataset {html.escape(name)}</h2>',
             f"<p>Study <code>{html.escape(str(dataset['study']))}</code>, metric {html.escape(metric)}.</p>",
             "<h3>Optimization history</h3>",
             nothing_complete or figure_div(plot_optimization_history(study, target_name=metric_label(metric)),
                                            f"{prefix}-history"),
             "<h3>Parameter importances</h3>"]
    obstacle = importance_obstacle(study)
    parts.append(note_html(obstacle) if obstacle else importances_html(study, metric, f"{prefix}-importances"))
    parts += ["<h3>Parallel coordinates</h3>",
              nothing_complete or figure_div(parallel_coordinate_figure(study, metric), f"{prefix}-parallel"),
              "<h3>Proposals per encoder</h3>", note_html(PROPOSALS_NOTE),
              figure_div(proposals_figure(study, colours), f"{prefix}-proposals"),
              "<h3>Learning curves</h3>",
              figure_div(learning_curves_figure(study, metric, colours), f"{prefix}-curves"),
              "<h3>Quality versus cost</h3>"]
    dataset_costs = None if costs is None or costs.empty else costs[costs["dataset"] == name]
    if dataset_costs is None or dataset_costs.empty:
        parts.append(note_html(f"No cost figures for {name} yet."))
    else:
        parts.append(figure_div(cost_figure(dataset_costs, metric, colours), f"{prefix}-cost"))
    parts.append("</section>")
    return "\n".join(parts)


def final_section(tables: dict[str, pd.DataFrame], colours: Colours) -> str:
    final = tables.get("final")
    parts = ['<section id="final"><h2>Final evaluation</h2>']
    if final is None or final.empty:
        parts.append(note_html("No final evaluation yet: run `python run_benchmark.py --final-eval` "
                           "to retrain the best configurations over several seeds and test them."))
        return "\n".join([*parts, "</section>"])
    parts += [table_html(final_display(final), ""), figure_div(final_figure(final, colours), "final-evaluation"),
              "<h3>Pairwise comparison on the same test examples</h3>",
              table_html(tables.get("pairwise"), "No pairwise comparison: each dataset has one encoder evaluated."),
              note_html(FINAL_METHOD),
              *(f"<p>{final_verdict_sentence(row)}</p>" for row in rows_of(tables.get("datasets"))),
              "</section>"]
    return "\n".join(parts)


# The page

def _tally(values: Iterable[object]) -> str:
    """'cpu' when every trial agrees, 'cuda:0 (4), cpu (2)' when not."""
    counts = Counter(str(value) for value in values if value is not None)
    if len(counts) <= 1:
        return next(iter(counts), provenance.UNKNOWN)
    return ", ".join(f"{value} ({count})" for value, count in counts.most_common())


def precision_per_encoder(attrs: dict, trained: list[optuna.trial.FrozenTrial]) -> str:
    """'bert fp32; roberta bf16': per encoder, the precision its trials trained in (see `_tally`);
    before any trained, the study's stored choices (`attrs`)."""
    by_encoder: dict[str, list[object]] = {}
    for trial in trained:
        by_encoder.setdefault(str(trial.params.get(ENCODER_PARAM)), []).append(trial.user_attrs.get(PRECISION_ATTR))
    if not by_encoder:
        by_encoder = {encoder: [stored.get("choice")] for encoder, stored in
                      (attrs.get(PRECISION_BY_ENCODER_ATTR) or {}).items()}
    if not by_encoder:  # a study stored before the per-encoder choice
        return str(attrs.get(PRECISION_ATTR, provenance.UNKNOWN))
    return "; ".join(f"{encoder} {_tally(values)}" for encoder, values in sorted(by_encoder.items()))


def provenance_table(studies: dict[str, optuna.Study], trials: pd.DataFrame | None) -> pd.DataFrame:
    """Per dataset: the config, seed, device, precision and package versions behind its
    trials, and its trials by state. Device and precision are counted over the trials that
    trained; the rest are the study attributes of the latest run that opened the study."""
    rows = []
    for dataset, study in studies.items():
        attrs = study.user_attrs
        versions = attrs.get(VERSIONS_ATTR) or {}
        trained = [trial for trial in study.get_trials(deepcopy=False)
                   if DEVICE_ATTR in trial.user_attrs and not trial.user_attrs.get(SURPLUS_ATTR)]
        own = (trials[trials[TRIAL.study] == study.study_name] if trials is not None and TRIAL.study in trials
               else None)
        rows.append({
            "dataset": dataset, "config": attrs.get(BENCHMARK_ATTR, provenance.UNKNOWN),
            "config file": attrs.get(CONFIG_FILE_ATTR, provenance.UNKNOWN),
            "config sha256": str(attrs.get(CONFIG_SHA256_ATTR, provenance.UNKNOWN))[:SHA256_SHOWN],
            "seed": attrs.get(DATA_SEED_ATTR, provenance.UNKNOWN),
            "device": _tally(trial.user_attrs.get(DEVICE_ATTR) for trial in trained),
            "precision": precision_per_encoder(attrs, trained),
            **{package: versions.get(package, provenance.UNKNOWN) for package in provenance.PACKAGES},
            "trials": trial_counts(own) if own is not None and not own.empty else "0 trials",
        })
    return pd.DataFrame(rows)


def provenance_header(studies: dict[str, optuna.Study], trials: pd.DataFrame | None, generated: datetime) -> str:
    table = provenance_table(studies, trials)
    return "\n".join([
        '<header id="provenance"><h1>Encoder benchmark report</h1>',
        f'<p>Generated <time id="generated">{generated:%Y-%m-%d %H:%M} UTC</time> from the Optuna storage alone.</p>',
        table_html(table, "No study in the storage yet."), "" if table.empty else note_html(PROVENANCE_NOTE),
        "</header>"])


def report_html(tables: dict[str, pd.DataFrame], studies: dict[str, optuna.Study], colours: Colours,
                generated: datetime | None = None) -> str:
    datasets = tables.get("datasets")
    curves = tables.get("expected_performance")
    trials = tables.get("trials")
    complete = None if trials is None or trials.empty else trials[trials[TRIAL.state] == "COMPLETE"]
    params = best_params_table(datasets)
    body = [
        provenance_header(studies, trials, generated or datetime.now(timezone.utc)),
        '<section id="leaderboards"><h2>Leaderboards</h2><h3>Encoders</h3>',
        table_html(leaderboard_display(tables.get("leaderboard"), dataset_metrics(datasets)),
                   "No complete trial yet, so no encoder leaderboard."),
        rests_on(trials, "Rests on"),
        reference_notes(tables.get("references"), tables.get("reference_flags")),
        "<h3>Datasets</h3>", table_html(datasets_display(datasets), "No study in the storage yet."),
        *(f"<p><strong>{html.escape(sentence)}</strong></p>"
          for sentence in [*timeout_sentences(datasets), *stopped_sentences(datasets)]),
        "<h3>Best configuration per dataset</h3>",
        table_html(params, "No complete trial yet, so no best configuration."),
        "" if params.empty else note_html("The parameters of each dataset's best complete trial (the first, on a tie): "
                                      "floats under 0.01 to two significant digits, others to three; the exact "
                                      "values are in datasets.csv (best_params) and trials.csv."),
        "<h3>Costs</h3>", table_html(value_display(tables.get("costs"), datasets), "No cost figures yet."),
        rests_on(trials, "Rests on"),
        "</section>",
        '<section id="expected-performance-section"><h2>Expected validation performance</h2>',
        note_html("No complete trial yet, so no expected validation performance.") if curves is None or curves.empty
        else figure_div(expected_performance_figure(with_metric(curves, datasets), colours), "expected-performance"),
        rests_on(complete, "Rests on the complete trials only:"),
        note_html(EXPECTED_PERFORMANCE_NOTE),
        *(f"<p>{html.escape(sentence)}</p>" for sentence in search_verdict_sentences(datasets)),
        "</section>",
        ranking_section(tables),
        *(dataset_section(i, row, studies[row["dataset"]], tables.get("costs"), colours)
          for i, row in enumerate(rows_of(datasets))),
        final_section(tables, colours),
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Encoder benchmark report</title>'
            f"<style>{CSS}</style>\n<script>{get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# Writing

def bytes_needed(results_dir: Path) -> int:
    """Free space the results need, at least: the report (plotly's script alone is megabytes)
    written beside the one it replaces, and as much again for the tables and figures."""
    files = [results_dir / name for name in REPORT_FILES]
    written = sum(path.stat().st_size for path in files if path.is_file())
    return 2 * max(len(get_plotlyjs()), written)


def write_report(storage: optuna.storages.BaseStorage | str, tables: dict[str, pd.DataFrame],
                 results_dir: Path) -> list[Path]:
    """Write report.html and its key plots as PNG and SVG; returns the paths written."""
    datasets = tables.get("datasets")
    studies = load_studies(storage, datasets) if datasets is not None and not datasets.empty else {}
    colours = encoder_colours(page_encoders(tables, studies))
    report = results_dir / REPORT_FILE
    write_atomic(report, report_html(tables, studies, colours))
    written = [report]
    pngs = ((EXPECTED_PERFORMANCE_PNG, "expected_performance", expected_performance_png),
            (FINAL_EVALUATION_PNG, "final", final_evaluation_png))
    for file_name, table_name, build in pngs:
        table = tables.get(table_name)
        if table is not None and not table.empty:
            written += write_figure(results_dir / file_name, build(with_metric(table, datasets), colours))
    ranks, tests = tables.get("ranking"), tables.get("ranking_tests")
    diagram = None if ranks is None or ranks.empty or tests is None else critical_difference_png(ranks, tests)
    if diagram is not None:
        written += write_figure(results_dir / CRITICAL_DIFFERENCE_PNG, diagram)
    return written
