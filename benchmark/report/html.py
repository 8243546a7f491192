"""The HTML report and the PNGs of its key plots, built from the leaderboard tables and the storage.

Pure builders turn tables and studies into plotly figures, matplotlib figures or HTML;
`write_report` alone reads the storage and writes files. The page is self-contained:
plotly.js is inlined once, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.search_space import intersection_search_space
from optuna.trial import TrialState
from optuna.visualization import plot_optimization_history, plot_parallel_coordinate, plot_param_importances
from plotly.colors import hex_to_rgb, make_colorscale, qualitative, sample_colorscale, sequential
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots
from scikit_posthocs import critical_difference_diagram

from benchmark.config import provenance
from benchmark.files import write_atomic
from benchmark.report import ranking
from benchmark.report.leaderboard import reference_flag_sentences
from benchmark.schema import (
    BASELINE_NAMES,
    BENCHMARK_ATTR,
    COMPARISON_ATTR,
    CONFIG_FILE_ATTR,
    CONFIG_SHA256_ATTR,
    DATA_SEED_ATTR,
    DEVICE_ATTR,
    ENCODER_PARAM,
    MAJORITY,
    PRECISION_ATTR,
    PRECISION_BY_ENCODER_ATTR,
    PRUNE_REASON_ATTR,
    RANDOM,
    REFERENCE_NAMES,
    REFERENCE_PREFIX,
    SURPLUS_ATTR,
    TFIDF_LOGREG,
    VERSIONS_ATTR,
)

REPORT_FILE = "report.html"
EXPECTED_PERFORMANCE_PNG = "expected_performance.png"
FINAL_EVALUATION_PNG = "final_evaluation.png"
CRITICAL_DIFFERENCE_PNG = "critical_difference.png"
# Each PNG also as SVG, which scales on a slide or in a paper.
FIGURE_FORMATS = ("png", "svg")
# What the trackers' study runs carry (those written); a new figure file belongs here too.
REPORT_FILES = (REPORT_FILE, *(str(Path(png).with_suffix(f".{ext}")) for png in (
    EXPECTED_PERFORMANCE_PNG, FINAL_EVALUATION_PNG, CRITICAL_DIFFERENCE_PNG) for ext in FIGURE_FORMATS))

FINAL_METHOD = (
    "A score is the metric on the test split, averaged over the seeds. Means, 95% intervals and p-values are t "
    "intervals and t-tests whose variance counts both the test examples (the same ones for every encoder: a paired "
    "comparison) and the seeds, on the seeds' few degrees of freedom, so 2 or 3 seeds give wide intervals; a "
    "difference is a minus b in metric points. p_holm is Holm-adjusted over every pair of encoders of the dataset. "
    "Where the runs show no spread at all, there is no interval (–) and no verdict. The best encoder is picked "
    "after the fact; \"not shown worse than the best\" means its adjusted p against the best is 0.05 or more, "
    "which is no proof that the two are equivalent. A dataset with missing runs gets no verdict.")

PALETTE = qualitative.Plotly + qualitative.D3
FIGURE_HEIGHT_PX = 460
PANEL_COLUMNS = 3
Colours = dict[str, str]

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

def format_number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    if value == 0 or abs(value) >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.2e}"  # p-values and tiny costs keep their significant digits


def table_html(table: pd.DataFrame | None, empty_sentence: str) -> str:
    """The table in a container that scrolls sideways, so a wide one never runs off the page."""
    if table is None or table.empty:
        return _note(empty_sentence)
    return ('<div class="table-scroll">'
            + table.to_html(index=False, border=0, classes="report", float_format=format_number, na_rep="–")
            + "</div>")


METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "mcc": "MCC"}


def metric_label(metric: object) -> str:
    return METRIC_LABELS.get(str(metric), str(metric))


def dataset_metrics(datasets: pd.DataFrame | None) -> dict[str, str]:
    """Dataset -> the metric its study ranks by, as headers and axes name it."""
    return {row["dataset"]: metric_label(row["metric"]) for row in _rows(datasets) if "metric" in row}


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
    shown.insert(at, "metric", shown["dataset"].map({row["dataset"]: row["metric"] for row in _rows(datasets)}))
    return shown


def format_param(value: object) -> str:
    """A hyperparameter as a slide shows it: a small float (a learning rate) in scientific
    notation with two significant digits, any other float with three."""
    if isinstance(value, float):
        return f"{value:.1e}" if value != 0 and abs(value) < 1e-2 else f"{value:.3g}"
    return str(value)


def best_params_table(datasets: pd.DataFrame | None) -> pd.DataFrame:
    """Per dataset with a complete trial: its best trial's parameters, a column each."""
    rows = [{"dataset": row["dataset"], "metric": row["metric"], "best validation value": row["best_value"],
             "best encoder": row["best_encoder"], "trial": int(row["best_trial"]),
             **{name: format_param(value) for name, value in sorted(json.loads(row["best_params"]).items())}}
            for row in _rows(datasets) if pd.notna(row.get("best_trial"))]
    return pd.DataFrame(rows)


STATE_WORDS = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


def trial_counts(trials: pd.DataFrame) -> str:
    """'N trials: c complete, p pruned, f failed', plus any other state that occurs."""
    counts = trials["state"].value_counts()
    others = {state: state.lower() for state in counts.index if state not in STATE_WORDS}
    return f"{len(trials)} trials: " + ", ".join(
        f"{counts.get(state, 0)} {word}" for state, word in {**STATE_WORDS, **others}.items())


def rests_on(trials: pd.DataFrame | None, what: str) -> str:
    """A note saying how many trials of how many studies a table or figure rests on."""
    if trials is None or trials.empty:
        return ""
    return _note(f"{what} {trials['study'].nunique()} stud{'ies' if trials['study'].nunique() != 1 else 'y'}, "
                 f"{trial_counts(trials)}.")


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


def _rows(table: pd.DataFrame | None) -> list[pd.Series]:
    return [] if table is None else [row for _, row in table.iterrows()]


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _note(sentence: str) -> str:
    return f'<p class="note">{html.escape(sentence)}</p>'


# Colours and panels shared by the plotly and matplotlib figures

def encoder_colours(encoders: Iterable[str]) -> Colours:
    """One colour per encoder, the same in every figure of the page and in the PNGs."""
    names = sorted({str(name) for name in encoders if isinstance(name, str)})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def page_encoders(tables: dict[str, pd.DataFrame], studies: dict[str, optuna.Study]) -> list[str]:
    names = [trial.params.get(ENCODER_PARAM)
             for study in studies.values() for trial in study.get_trials(deepcopy=False)]
    for name in ("leaderboard", "costs", "expected_performance", "final"):
        table = tables.get(name)
        if table is not None and "encoder" in table:
            names.extend(table["encoder"])
    return names


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = hex_to_rgb(colour)
    return f"rgba({red},{green},{blue},{alpha})"


def _grid(panels: int) -> tuple[int, int]:
    columns = min(PANEL_COLUMNS, max(panels, 1))
    return math.ceil(panels / columns), columns


TraceAdder = Callable[[go.Figure, int, int, pd.DataFrame, Colours], None]


def panel_metric(panel: pd.DataFrame) -> str:
    """The metric a dataset's panel plots, from the frame's `metric` column (see `with_metric`)."""
    return metric_label(panel["metric"].iloc[0]) if "metric" in panel and panel["metric"].notna().any() else "score"


def dataset_panels(frame: pd.DataFrame, add_traces: TraceAdder, colours: Colours, y_title: str) -> go.Figure:
    """A plotly panel per dataset of `frame`, one legend entry per encoder; `y_title` names
    each panel's axis, its `{metric}` filled in with the panel's (datasets differ)."""
    datasets = sorted(frame["dataset"].unique())
    rows, columns = _grid(len(datasets))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=datasets)
    for i, dataset in enumerate(datasets):
        row, column = divmod(i, columns)
        panel = frame[frame["dataset"] == dataset]
        add_traces(figure, row + 1, column + 1, panel, colours)
        figure.update_yaxes(title_text=y_title.format(metric=panel_metric(panel)), row=row + 1, col=column + 1)
    figure.update_layout(height=max(FIGURE_HEIGHT_PX, 360 * rows), legend_title_text="encoder")
    return _one_legend_entry_per_encoder(figure)


def _one_legend_entry_per_encoder(figure: go.Figure) -> go.Figure:
    seen: set[str] = set()
    for trace in figure.data:
        if trace.legendgroup and trace.showlegend is not False:
            trace.showlegend = trace.legendgroup not in seen
            seen.add(trace.legendgroup)
    return figure


PanelDrawer = Callable[[Axes, pd.DataFrame, Colours], None]


def panels_png(frame: pd.DataFrame, draw: PanelDrawer, colours: Colours, y_label: str) -> Figure:
    """A matplotlib panel per dataset of `frame`; the plotly page's PNG counterpart (`y_label` as
    `dataset_panels`' `y_title`)."""
    datasets = sorted(frame["dataset"].unique())
    rows, columns = _grid(len(datasets))
    # A bare Figure renders through Agg without pyplot, so no display backend is ever tried.
    figure = Figure(figsize=(5 * columns, 4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets):
        panel = frame[frame["dataset"] == dataset]
        draw(ax, panel, colours)
        ax.set_title(dataset)
        ax.set_ylabel(y_label.format(metric=panel_metric(panel)))
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    entries = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    figure.legend(entries.values(), entries.keys(), loc="outside right upper", title="encoder")
    return figure


# Expected validation performance (Dodge et al. 2019, "Show Your Work")

NO_CURVE_YET = "1 complete trial, no curve to draw yet"


def single_trial_encoders(curves: pd.DataFrame) -> list[str]:
    """The encoders of one panel whose curve is a single point."""
    return sorted(encoder for encoder, curve in curves.groupby("encoder") if len(curve) == 1)


def _expected_traces(figure: go.Figure, row: int, column: int, curves: pd.DataFrame, colours: Colours) -> None:
    for encoder, curve in curves.groupby("encoder", sort=True):
        colour = colours[encoder]
        common = dict(x=curve["n"], legendgroup=encoder, row=row, col=column)
        figure.add_scatter(y=curve["band_high"], mode="lines", line_width=0, showlegend=False,
                           hoverinfo="skip", **common)
        figure.add_scatter(y=curve["band_low"], mode="lines", line_width=0, fill="tonexty",
                           fillcolor=_rgba(colour, 0.2), showlegend=False, hoverinfo="skip", **common)
        figure.add_scatter(y=curve["expected_max"], mode="lines+markers" if len(curve) > 1 else "markers",
                           name=encoder, line_color=colour, marker_size=7 if len(curve) > 1 else 12, **common)
    single = single_trial_encoders(curves)
    if single:
        figure.add_annotation(text=f"{', '.join(single)}: {NO_CURVE_YET}", xref="x domain", yref="y domain",
                              x=0.5, y=0.02, showarrow=False, row=row, col=column)
    # Integer ticks (n counts trials), about ten at most.
    last = int(curves["n"].max())
    figure.update_xaxes(title_text="trials (n)", tickformat="d", tick0=1, dtick=max(1, math.ceil(last / 10)),
                        range=[0.5, last + 0.5], row=row, col=column)


EXPECTED_PERFORMANCE_NOTE = (
    "Each curve is the expected best validation score of n trials drawn from one encoder's complete trials on "
    "one dataset, with a 95% bootstrap band; how many complete trials it rests on is in each panel's title and "
    "in the complete_trials column of expected_performance.csv. Pruned trials never enter (their value is a "
    "checkpoint's, on a subset of the validation split), nor do failed ones. The trials are the ones this search "
    "drew: under TPE and pruning the curve is the empirical one of this search, not the one random search "
    "would give.")


def expected_performance_titles(curves: pd.DataFrame) -> dict[str, str]:
    """Dataset -> its panel title, saying how many complete trials each curve rests on."""
    counts = curves.groupby(["dataset", "encoder"], sort=True)["complete_trials"].first()
    return {dataset: f"{dataset} (complete trials: {', '.join(f'{e} {c}' for e, c in group.droplevel(0).items())})"
            for dataset, group in counts.groupby(level=0)}


def expected_performance_figure(curves: pd.DataFrame, colours: Colours) -> go.Figure:
    figure = dataset_panels(curves, _expected_traces, colours, "expected best validation {metric}")
    titles = expected_performance_titles(curves)
    figure.for_each_annotation(lambda annotation: annotation.update(text=titles.get(annotation.text, annotation.text)))
    return figure.update_layout(title="Expected validation performance after n complete trials")


def _expected_panel(ax: Axes, curves: pd.DataFrame, colours: Colours) -> None:
    for encoder, curve in curves.groupby("encoder", sort=True):
        ax.fill_between(curve["n"], curve["band_low"], curve["band_high"], color=colours[encoder], alpha=0.2)
        ax.plot(curve["n"], curve["expected_max"], color=colours[encoder], marker="." if len(curve) > 1 else "o",
                label=encoder)
    single = single_trial_encoders(curves)
    if single:
        ax.text(0.5, 0.03, f"{', '.join(single)}: {NO_CURVE_YET}", transform=ax.transAxes, ha="center",
                fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials (n)")


def expected_performance_png(curves: pd.DataFrame, colours: Colours) -> Figure:
    figure = panels_png(curves, _expected_panel, colours, "expected best validation {metric}")
    titles = expected_performance_titles(curves)
    for ax in figure.axes:
        ax.set_title(titles.get(ax.get_title(), ax.get_title()), fontsize="medium")
    figure.suptitle("Expected validation performance after n complete trials")
    return figure


def search_verdict_sentences(datasets: pd.DataFrame | None) -> list[str]:
    """Per dataset, what the search's expected-performance bands support."""
    return [f"{row['dataset']}: {row['search_verdict']}." for row in _rows(datasets) if _text(row.get("search_verdict"))]


def timeout_sentences(datasets: pd.DataFrame | None) -> list[str]:
    """Per dataset cut short by its timeout, a warning that its comparison rests on fewer trials."""
    return [f"{row['dataset']}: {row['cut_short_by_timeout']}; it compares fewer trials than planned."
            for row in _rows(datasets) if _text(row.get("cut_short_by_timeout"))]


def stopped_sentences(datasets: pd.DataFrame | None) -> list[str]:
    """Per dataset in which encoders were stopped by failing trials, which and why: their
    comparison rests on the trials they finished before."""
    return [f"{row['dataset']}: {row['stopped_encoders']}; a stopped encoder is compared on the trials it "
            f"finished before, and the next run retries it." for row in _rows(datasets)
            if _text(row.get("stopped_encoders"))]


# Ranking across datasets

def critical_difference_png(ranks: pd.DataFrame, tests: pd.DataFrame) -> Figure | None:
    """scikit-posthocs' critical-difference diagram of the mean ranks: encoders joined by a
    bar are not told apart by the post-hoc test. None when nothing was tested."""
    significance = ranking.tested_significance(tests)
    if significance is None:
        return None
    figure = Figure(figsize=(8, 1 + 0.45 * len(ranks)), layout="constrained")
    ax = figure.subplots()
    critical_difference_diagram(ranks.set_index("encoder")["mean_rank"], significance, ax=ax,
                                alpha=ranking.ALPHA, label_fmt_left="{label} ({rank:.2f})  ",
                                label_fmt_right="  ({rank:.2f}) {label}")
    test = tests[tests["encoder_a"].notna()]["test"].iloc[0]
    ax.set_title(f"Mean rank over {int(ranks['datasets'].iloc[0])} datasets (1 = best)\nbars join encoders the "
                 f"{test} test does not tell apart at p < {ranking.ALPHA}", fontsize="medium")
    return figure


def png_data_uri(figure: Figure) -> str:
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(image.getvalue()).decode("ascii")


def ranking_section(tables: dict[str, pd.DataFrame]) -> str:
    ranks, tests = tables.get("ranking"), tables.get("ranking_tests")
    parts = ['<section id="ranking"><h2>Ranking across datasets</h2>']
    if ranks is None or ranks.empty or tests is None:
        parts.append(_note("No ranking yet: no encoder has a complete trial on every dataset."))
        return "\n".join([*parts, "</section>"])
    parts += [f"<p>{html.escape(ranking.ranking_verdict(tests))}</p>",
              _note("Each dataset ranks the encoders that have a complete trial on every dataset by their best "
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


# Final evaluation

def _final_label(encoder) -> str:
    """An encoder's place on the final plots' axis; one with runs missing says so there too,
    so that an empty place reads as not evaluated rather than as no encoder."""
    return f"{encoder.encoder} ({encoder.missing})" if encoder.missing else encoder.encoder


def _error_bar(encoder) -> tuple[float, float]:
    """How far the interval reaches below and above the mean; no bar where there is no interval
    (the runs showed no spread), since a bar of zero length would read as a score known exactly.
    A mean rounded past its metric's bound (MCC 1.0000000000000002) lies beside its cut
    interval, and a negative length would stop matplotlib from drawing the figure at all."""
    if math.isnan(encoder.ci_low):
        return math.nan, math.nan
    return max(encoder.mean - encoder.ci_low, 0.0), max(encoder.ci_high - encoder.mean, 0.0)


def _final_traces(figure: go.Figure, row: int, column: int, final: pd.DataFrame, colours: Colours) -> None:
    for encoder in final.itertuples():
        figure.add_scatter(
            x=[_final_label(encoder)], y=[encoder.mean], mode="markers", name=encoder.encoder,
            legendgroup=encoder.encoder, showlegend=bool(encoder.seeds),  # nothing drawn, nothing in the legend
            marker=dict(color=colours[encoder.encoder], size=10),
            error_y=dict(type="data", symmetric=False, array=[_error_bar(encoder)[1]],
                         arrayminus=[_error_bar(encoder)[0]]),
            row=row, col=column,
        )


def final_figure(final: pd.DataFrame, colours: Colours) -> go.Figure:
    figure = dataset_panels(final, _final_traces, colours, "test {metric} (mean, 95% CI)")
    return figure.update_layout(title="Final evaluation over seeds and test examples")


def _final_panel(ax: Axes, final: pd.DataFrame, colours: Colours) -> None:
    final = final.sort_values("encoder")
    for i, encoder in enumerate(final.itertuples()):
        if encoder.seeds > 0:
            below, above = _error_bar(encoder)
            ax.errorbar([i], [encoder.mean], yerr=[[below], [above]],
                        fmt="o", capsize=5, color=colours[encoder.encoder], label=encoder.encoder)
    ax.set_xticks(range(len(final)), [_final_label(encoder) for encoder in final.itertuples()],
                  rotation=30, ha="right")
    ax.set_xlim(-0.5, len(final) - 0.5)


def final_evaluation_png(final: pd.DataFrame, colours: Colours) -> Figure:
    return panels_png(final, _final_panel, colours, "test {metric} (mean, 95% CI)")


# Per dataset

PRUNED_LEGEND = "pruned (dashed, x)"


def learning_curves_figure(study: optuna.Study, metric: str, colours: Colours) -> go.Figure:
    """Validation metric against training examples seen, a line per trial; pruned ones dashed
    with x markers, so that one pruned at its first checkpoint (a single point) shows as pruned."""
    figure = go.Figure()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if not trial.intermediate_values:
            continue
        encoder = str(trial.params.get(ENCODER_PARAM))
        steps = sorted(trial.intermediate_values)
        pruned = trial.state == TrialState.PRUNED
        outcome = f"pruned at {steps[-1]} examples: {trial.user_attrs.get(PRUNE_REASON_ATTR) or 'no reason stored'}" \
            if pruned else "complete"
        figure.add_scatter(
            x=steps, y=[trial.intermediate_values[step] for step in steps], mode="lines+markers",
            name=encoder, legendgroup=encoder, line=dict(color=colours.get(encoder, "#888888"),
                                                         dash="dash" if pruned else "solid"),
            marker=dict(symbol="x" if pruned else "circle", size=10 if pruned else 6),
            hovertemplate=(f"trial {trial.number} ({html.escape(outcome)})<br>"
                           f"%{{x}} examples: %{{y:.4f}}<extra>{encoder}</extra>"),
        )
    if any(trace.marker.symbol == "x" for trace in figure.data):
        figure.add_scatter(x=[None], y=[None], mode="lines+markers", name=PRUNED_LEGEND,
                           line=dict(color="#888888", dash="dash"), marker=dict(symbol="x", size=10))
    figure.update_layout(title="Learning curves (dashed, x: pruned)", xaxis_title="training examples seen",
                         yaxis_title=f"validation {metric_label(metric)}", legend_title_text="encoder")
    return _one_legend_entry_per_encoder(figure)


def proposals_figure(study: optuna.Study, colours: Colours) -> go.Figure:
    """Each sampled numeric hyperparameter against the trial number, a series per encoder:
    each encoder's proposals come from its own trials (see `sampling.PerEncoderSampler`),
    so each series should close in on its own region once its sampler has a model."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if not t.user_attrs.get(SURPLUS_ATTR)]
    names = sorted({name for t in trials for name, value in t.params.items()
                    if name != ENCODER_PARAM and isinstance(value, (int, float))})
    if not names:
        return go.Figure(layout=dict(title="Proposals per encoder: no finished trial with a sampled number yet"))
    rows, columns = _grid(len(names))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=names)
    for index, name in enumerate(names):
        row, column = divmod(index, columns)
        log = any(isinstance(t.distributions.get(name), optuna.distributions.FloatDistribution)
                  and t.distributions[name].log for t in trials)
        for encoder in sorted({str(t.params.get(ENCODER_PARAM)) for t in trials}):
            own = [t for t in trials if str(t.params.get(ENCODER_PARAM)) == encoder and name in t.params]
            figure.add_scatter(
                x=[t.number for t in own], y=[t.params[name] for t in own], mode="lines+markers", name=encoder,
                legendgroup=encoder, line=dict(color=colours.get(encoder, "#888888")),
                marker_symbol=["circle" if t.state == TrialState.COMPLETE else "x" for t in own],
                hovertemplate=f"trial %{{x}}: %{{y:.4g}}<extra>{encoder}</extra>", row=row + 1, col=column + 1)
        figure.update_yaxes(type="log" if log else "linear", row=row + 1, col=column + 1)
        figure.update_xaxes(title_text="trial", dtick=1, row=row + 1, col=column + 1)
    figure.update_layout(height=max(FIGURE_HEIGHT_PX, 300 * rows), legend_title_text="encoder",
                         title="Proposals per encoder (x: pruned)")
    return _one_legend_entry_per_encoder(figure)


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


def importance_parameters(study: optuna.Study) -> list[str]:
    """The parameters whose importance `IMPORTANCE_RULE` lets the report draw."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    names = []
    for name, distribution in intersection_search_space(complete).items():
        counts = Counter(repr(trial.params[name]) for trial in complete)
        categorical = isinstance(distribution, optuna.distributions.CategoricalDistribution)
        if len(counts) > 1 and not (categorical and min(counts.values()) < MIN_TRIALS_PER_LEVEL):
            names.append(name)
    return sorted(names)


def importance_obstacle(study: optuna.Study) -> str | None:
    """Why parameter importances are not drawn for `study`, or None when they are."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return (f"No parameter importances: they need at least {MIN_IMPORTANCE_TRIALS} complete trials; "
                f"this study has {len(complete)}.")
    names = importance_parameters(study)
    if len(names) < 2:
        return ("No parameter importances: they need at least two parameters that all complete trials share and "
                f"that vary between them; this study has {len(names)} ({', '.join(names) or 'none'}).")
    return None


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


def importances_figure(study: optuna.Study, metric: str) -> tuple[go.Figure, list[str]]:
    """The importances of `importance_parameters`, and Optuna's caveats about them."""
    with warnings.catch_warnings(record=True) as caveats:
        warnings.simplefilter("always")
        figure = plot_param_importances(study, params=importance_parameters(study), target_name=metric_label(metric))
    return figure, list(dict.fromkeys(str(caveat.message) for caveat in caveats))


def importances_html(study: optuna.Study, metric: str, div_id: str) -> str:
    """The importances plot, with what it rests on and Optuna's caveats shown under it rather
    than lost in a log."""
    figure, caveats = importances_figure(study, metric)
    notes = [IMPORTANCE_RULE, *([encoder_importance_note(study)] if ENCODER_PARAM in importance_parameters(study)
                                else []), *(f"Optuna: {caveat}" for caveat in caveats)]
    return figure_div(figure, div_id) + "".join(_note(note) for note in notes)


PARALLEL_SCALE = make_colorscale(sequential.Blues[3:])  # Blues short of its near-white end


def parallel_coordinate_figure(study: optuna.Study, metric: str) -> go.Figure:
    """Optuna's parallel coordinates, its lines coloured on a scale that never reaches the white
    background (Optuna's Blues draws the worst trial white on white), each tick label once."""
    figure = plot_parallel_coordinate(study, target_name=metric_label(metric))
    scales = [trace for trace in figure.data if trace.marker is not None and trace.marker.showscale]
    reverse = any(trace.marker.reversescale for trace in scales)
    for trace in scales:
        trace.marker.colorscale = PARALLEL_SCALE
    for trace in figure.data:
        if trace.mode == "lines" and trace.customdata is not None:
            # A trace per trial; its first point sits on the objective's axis, scaled to 0..1
            # between the worst and best value, which is also where its colour lies on the scale.
            position = 1 - trace.y[0] if reverse else trace.y[0]
            trace.line.color = sample_colorscale(PARALLEL_SCALE, [position])[0]
    # Optuna labels a log axis at its minimum and at each power of ten, which repeat when the
    # minimum lies just below one (9.99e-05 and 1e-04 both print 0.0001).
    seen: set[tuple[object, str]] = set()
    labels = []
    for annotation in figure.layout.annotations:
        if (annotation.x, annotation.text) not in seen:
            seen.add((annotation.x, annotation.text))
            labels.append(annotation)
    figure.layout.annotations = labels
    return figure


def cost_figure(costs: pd.DataFrame, metric: str, colours: Colours) -> go.Figure:
    """Best validation value against device hours per encoder; the Pareto front joined."""
    figure = go.Figure()
    front = costs[costs["pareto"].astype(bool)].sort_values("device_hours")
    figure.add_scatter(x=front["device_hours"], y=front["best_value"], mode="lines", name="Pareto front",
                       line=dict(color="#444444", dash="dot"))
    for row in costs.itertuples():
        figure.add_scatter(
            x=[row.device_hours], y=[row.best_value], mode="markers+text", name=row.encoder, text=[row.encoder],
            textposition="top center",
            marker=dict(color=colours[row.encoder], size=16 if row.pareto else 10,
                        line=dict(color="#222222", width=2 if row.pareto else 0)),
        )
    figure.update_layout(title="Quality versus cost (outlined: Pareto-optimal)", xaxis_title="device hours",
                         yaxis_title=f"best validation {metric_label(metric)}", legend_title_text="encoder")
    return figure


def figure_div(figure: go.Figure, div_id: str) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                          default_height=f"{FIGURE_HEIGHT_PX}px")


def dataset_section(index: int, dataset: pd.Series, study: optuna.Study, costs: pd.DataFrame | None,
                    colours: Colours) -> str:
    name, metric = str(dataset["dataset"]), str(dataset["metric"])
    prefix = f"dataset-{index}"
    # Optuna draws nothing of a study without a complete trial, and logs a warning to stderr
    # instead: the page says it once in place of both plots.
    nothing_complete = (_note(f"No complete trial in {name} yet: nothing to draw.")
                        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None)
    parts = [f'<section id="{prefix}"><h2>Dataset {html.escape(name)}</h2>',
             f"<p>Study <code>{html.escape(str(dataset['study']))}</code>, metric {html.escape(metric)}.</p>",
             "<h3>Optimization history</h3>",
             nothing_complete or figure_div(plot_optimization_history(study, target_name=metric_label(metric)),
                                            f"{prefix}-history"),
             "<h3>Parameter importances</h3>"]
    obstacle = importance_obstacle(study)
    parts.append(_note(obstacle) if obstacle else importances_html(study, metric, f"{prefix}-importances"))
    parts += ["<h3>Parallel coordinates</h3>",
              nothing_complete or figure_div(parallel_coordinate_figure(study, metric), f"{prefix}-parallel"),
              "<h3>Proposals per encoder</h3>", _note(PROPOSALS_NOTE),
              figure_div(proposals_figure(study, colours), f"{prefix}-proposals"),
              "<h3>Learning curves</h3>",
              figure_div(learning_curves_figure(study, metric, colours), f"{prefix}-curves"),
              "<h3>Quality versus cost</h3>"]
    dataset_costs = None if costs is None or costs.empty else costs[costs["dataset"] == name]
    if dataset_costs is None or dataset_costs.empty:
        parts.append(_note(f"No cost figures for {name} yet."))
    else:
        parts.append(figure_div(cost_figure(dataset_costs, metric, colours), f"{prefix}-cost"))
    parts.append("</section>")
    return "\n".join(parts)


# The page

def final_section(tables: dict[str, pd.DataFrame], colours: Colours) -> str:
    final = tables.get("final")
    parts = ['<section id="final"><h2>Final evaluation</h2>']
    if final is None or final.empty:
        parts.append(_note("No final evaluation yet: run `python run_benchmark.py --final-eval` "
                           "to retrain the best configurations over several seeds and test them."))
        return "\n".join([*parts, "</section>"])
    parts += [table_html(final_display(final), ""), figure_div(final_figure(final, colours), "final-evaluation"),
              "<h3>Pairwise comparison on the same test examples</h3>",
              table_html(tables.get("pairwise"), "No pairwise comparison: each dataset has one encoder evaluated."),
              _note(FINAL_METHOD),
              *(f"<p>{final_verdict_sentence(row)}</p>" for row in _rows(tables.get("datasets"))),
              "</section>"]
    return "\n".join(parts)


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


SHA256_SHOWN = 16  # hex digits; the study attribute keeps all 64


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
        own = trials[trials["study"] == study.study_name] if trials is not None and "study" in trials else None
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


PROVENANCE_NOTE = (
    f"config sha256: the first {SHA256_SHOWN} hex digits of the config file's SHA-256 (all 64 are the study "
    "attribute config_sha256). device and precision: counted over the trials that trained, precision per encoder "
    "(how each encoder's was chosen, with its timings: the study attribute precision_by_encoder). The config, seed and "
    "package versions (torch, transformers, optuna) are those of the latest run that opened the study, so they "
    "name what trained, not what drew this page; \"unknown\" marks a study stored before they were kept.")


def provenance_header(studies: dict[str, optuna.Study], trials: pd.DataFrame | None, generated: datetime) -> str:
    table = provenance_table(studies, trials)
    return "\n".join([
        '<header id="provenance"><h1>Encoder benchmark report</h1>',
        f'<p>Generated <time id="generated">{generated:%Y-%m-%d %H:%M} UTC</time> from the Optuna storage alone.</p>',
        table_html(table, "No study in the storage yet."), "" if table.empty else _note(PROVENANCE_NOTE),
        "</header>"])


def report_html(tables: dict[str, pd.DataFrame], studies: dict[str, optuna.Study], colours: Colours,
                generated: datetime | None = None) -> str:
    datasets = tables.get("datasets")
    curves = tables.get("expected_performance")
    trials = tables.get("trials")
    complete = None if trials is None or trials.empty else trials[trials["state"] == "COMPLETE"]
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
        "" if params.empty else _note("The parameters of each dataset's best complete trial (the first, on a tie): "
                                      "floats under 0.01 to two significant digits, others to three; the exact "
                                      "values are in datasets.csv (best_params) and trials.csv."),
        "<h3>Costs</h3>", table_html(value_display(tables.get("costs"), datasets), "No cost figures yet."),
        rests_on(trials, "Rests on"),
        "</section>",
        '<section id="expected-performance-section"><h2>Expected validation performance</h2>',
        _note("No complete trial yet, so no expected validation performance.") if curves is None or curves.empty
        else figure_div(expected_performance_figure(with_metric(curves, datasets), colours), "expected-performance"),
        rests_on(complete, "Rests on the complete trials only:"),
        _note(EXPECTED_PERFORMANCE_NOTE),
        *(f"<p>{html.escape(sentence)}</p>" for sentence in search_verdict_sentences(datasets)),
        "</section>",
        ranking_section(tables),
        *(dataset_section(i, row, studies[row["dataset"]], tables.get("costs"), colours)
          for i, row in enumerate(_rows(datasets))),
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


def write_figure(png: Path, figure: Figure) -> list[Path]:
    """`figure` in each of `FIGURE_FORMATS`, named like `png`; returns the paths written."""
    paths = []
    for extension in FIGURE_FORMATS:
        image = io.BytesIO()
        with rc_context({"svg.fonttype": "none"}):  # text stays text, editable on a slide
            figure.savefig(image, format=extension, dpi=110)
        paths.append(png.with_suffix(f".{extension}"))
        write_atomic(paths[-1], image.getvalue())
    return paths


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
