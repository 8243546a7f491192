"""The HTML report and the PNGs of its key plots, built from the leaderboard tables and the storage.

Pure builders turn tables and studies into plotly figures, matplotlib figures or HTML;
`write_report` alone reads the storage and writes files. The page is self-contained:
plotly.js is inlined once, so it opens offline and can be mailed around.
"""

from __future__ import annotations

import html
import io
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import optuna
import pandas as pd
import plotly.graph_objects as go
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.search_space import intersection_search_space
from optuna.trial import TrialState
from optuna.visualization import plot_optimization_history, plot_parallel_coordinate, plot_param_importances
from plotly.colors import hex_to_rgb, qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from benchmark.files import write_atomic
from benchmark.study import SURPLUS_ATTR
from benchmark.trial import ENCODER_PARAM

REPORT_FILE = "report.html"
EXPECTED_PERFORMANCE_PNG = "expected_performance.png"
FINAL_EVALUATION_PNG = "final_evaluation.png"

PALETTE = qualitative.Plotly + qualitative.D3
FIGURE_HEIGHT_PX = 460
PANEL_COLUMNS = 3
Colours = dict[str, str]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1, h2, h3 { font-weight: 600; }
section { margin-bottom: 3em; }
table.report { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; display: block; overflow-x: auto; }
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
    if table is None or table.empty:
        return _note(empty_sentence)
    return table.to_html(index=False, border=0, classes="report", float_format=format_number, na_rep="–")


def final_display(final: pd.DataFrame) -> pd.DataFrame:
    """The final evaluation as read: mean ± std and the 95% confidence interval."""
    shown = final[["dataset", "encoder", "metric", "seeds"]].copy()
    shown["mean ± std"] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(final["mean"], final["std"])]
    shown["95% CI"] = [f"[{low:.4f}, {high:.4f}]" for low, high in zip(final["ci_low"], final["ci_high"])]
    shown["source trial"] = final["source_trial"]
    shown["indistinguishable from best"] = final["indistinguishable_from_best"].map({True: "yes", False: "no"})
    return shown


def top_encoders_sentence(dataset: pd.Series) -> str:
    """Whether the final evaluation tells the dataset's top encoders apart."""
    verdict = _text(dataset.get("final_top_differ"))
    name = html.escape(str(dataset["dataset"]))
    if not verdict:
        return f"{name}: no final evaluation yet."
    top = html.escape(_text(dataset.get("final_top_encoders")))
    answer, _, detail = verdict.partition(" ")  # "yes (p=0.003)"
    can = "can" if answer == "yes" else "cannot"
    sentence = f"On {name}, the top encoders ({top}) {can} be told apart"
    return f"{sentence} {html.escape(detail)}." if detail else f"{sentence}."


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


def dataset_panels(frame: pd.DataFrame, add_traces: TraceAdder, colours: Colours, y_title: str) -> go.Figure:
    """A plotly panel per dataset of `frame`, one legend entry per encoder."""
    datasets = sorted(frame["dataset"].unique())
    rows, columns = _grid(len(datasets))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=datasets)
    for i, dataset in enumerate(datasets):
        row, column = divmod(i, columns)
        add_traces(figure, row + 1, column + 1, frame[frame["dataset"] == dataset], colours)
    figure.update_yaxes(title_text=y_title, col=1)
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
    """A matplotlib panel per dataset of `frame`; the plotly page's PNG counterpart."""
    datasets = sorted(frame["dataset"].unique())
    rows, columns = _grid(len(datasets))
    # A bare Figure renders through Agg without pyplot, so no display backend is ever tried.
    figure = Figure(figsize=(5 * columns, 4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets):
        draw(ax, frame[frame["dataset"] == dataset], colours)
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets):]:
        ax.set_visible(False)
    for ax in axes[::columns]:
        ax.set_ylabel(y_label)
    entries = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    figure.legend(entries.values(), entries.keys(), loc="outside right upper", title="encoder")
    return figure


# Expected validation performance (Dodge et al. 2019, "Show Your Work")

def _expected_traces(figure: go.Figure, row: int, column: int, curves: pd.DataFrame, colours: Colours) -> None:
    for encoder, curve in curves.groupby("encoder", sort=True):
        colour = colours[encoder]
        common = dict(x=curve["n"], legendgroup=encoder, row=row, col=column)
        figure.add_scatter(y=curve["band_high"], mode="lines", line_width=0, showlegend=False,
                           hoverinfo="skip", **common)
        figure.add_scatter(y=curve["band_low"], mode="lines", line_width=0, fill="tonexty",
                           fillcolor=_rgba(colour, 0.2), showlegend=False, hoverinfo="skip", **common)
        figure.add_scatter(y=curve["expected_max"], mode="lines+markers", name=encoder,
                           line_color=colour, **common)
    figure.update_xaxes(title_text="trials (n)", row=row, col=column)


def expected_performance_figure(curves: pd.DataFrame, colours: Colours) -> go.Figure:
    figure = dataset_panels(curves, _expected_traces, colours, "expected best validation score")
    return figure.update_layout(title="Expected validation performance after n trials")


def _expected_panel(ax: Axes, curves: pd.DataFrame, colours: Colours) -> None:
    for encoder, curve in curves.groupby("encoder", sort=True):
        ax.fill_between(curve["n"], curve["band_low"], curve["band_high"], color=colours[encoder], alpha=0.2)
        ax.plot(curve["n"], curve["expected_max"], color=colours[encoder], marker=".", label=encoder)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials (n)")


def expected_performance_png(curves: pd.DataFrame, colours: Colours) -> Figure:
    return panels_png(curves, _expected_panel, colours, "expected best validation score")


# Final evaluation

def _final_traces(figure: go.Figure, row: int, column: int, final: pd.DataFrame, colours: Colours) -> None:
    for encoder in final.itertuples():
        figure.add_scatter(
            x=[encoder.encoder], y=[encoder.mean], mode="markers", name=encoder.encoder,
            legendgroup=encoder.encoder, marker=dict(color=colours[encoder.encoder], size=10),
            error_y=dict(type="data", symmetric=False, array=[encoder.ci_high - encoder.mean],
                         arrayminus=[encoder.mean - encoder.ci_low]),
            row=row, col=column,
        )


def final_figure(final: pd.DataFrame, colours: Colours) -> go.Figure:
    figure = dataset_panels(final, _final_traces, colours, "test score (mean, 95% CI)")
    return figure.update_layout(title="Final evaluation over seeds")


def _final_panel(ax: Axes, final: pd.DataFrame, colours: Colours) -> None:
    for i, encoder in enumerate(final.sort_values("encoder").itertuples()):
        ax.errorbar([i], [encoder.mean], yerr=[[encoder.mean - encoder.ci_low], [encoder.ci_high - encoder.mean]],
                    fmt="o", capsize=5, color=colours[encoder.encoder], label=encoder.encoder)
    ax.set_xticks(range(len(final)), sorted(final["encoder"]), rotation=30, ha="right")
    ax.set_xlim(-0.5, len(final) - 0.5)


def final_evaluation_png(final: pd.DataFrame, colours: Colours) -> Figure:
    return panels_png(final, _final_panel, colours, "test score (mean, 95% CI)")


# Per dataset

def learning_curves_figure(study: optuna.Study, metric: str, colours: Colours) -> go.Figure:
    """Validation metric against training examples seen, a line per trial; pruned ones dashed."""
    figure = go.Figure()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if not trial.intermediate_values:
            continue
        encoder = str(trial.params.get(ENCODER_PARAM))
        steps = sorted(trial.intermediate_values)
        dash = "dash" if trial.state == TrialState.PRUNED else "solid"
        figure.add_scatter(
            x=steps, y=[trial.intermediate_values[step] for step in steps], mode="lines+markers",
            name=encoder, legendgroup=encoder, line=dict(color=colours.get(encoder, "#888888"), dash=dash),
            hovertemplate=(f"trial {trial.number} ({trial.state.name.lower()})<br>"
                           f"%{{x}} examples: %{{y:.4f}}<extra>{encoder}</extra>"),
        )
    figure.update_layout(title="Learning curves (dashed: pruned)", xaxis_title="training examples seen",
                         yaxis_title=f"validation {metric}", legend_title_text="encoder")
    return _one_legend_entry_per_encoder(figure)


def importance_obstacle(study: optuna.Study) -> str | None:
    """Why parameter importances cannot be computed for `study`, or None when they can."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"Parameter importances need at least two complete trials; this study has {len(complete)}."
    shared = intersection_search_space(complete)
    varying = [name for name in shared if len({repr(trial.params[name]) for trial in complete}) > 1]
    if len(varying) < 2:
        return ("Parameter importances need more than one parameter that all complete trials share and that "
                f"varies between them; this study has {len(varying)} ({', '.join(varying) or 'none'}).")
    return None


def importances_html(study: optuna.Study, metric: str, div_id: str) -> str:
    """The importances plot, with Optuna's caveats about them (few trials, say) shown under
    it rather than lost in a log."""
    with warnings.catch_warnings(record=True) as caveats:
        warnings.simplefilter("always")
        figure = plot_param_importances(study, target_name=metric)
    notes = dict.fromkeys(str(caveat.message) for caveat in caveats)
    return figure_div(figure, div_id) + "".join(_note(f"Optuna: {note}") for note in notes)


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
                         yaxis_title=f"best validation {metric}", legend_title_text="encoder")
    return figure


def figure_div(figure: go.Figure, div_id: str) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                          default_height=f"{FIGURE_HEIGHT_PX}px")


def dataset_section(index: int, dataset: pd.Series, study: optuna.Study, costs: pd.DataFrame | None,
                    colours: Colours) -> str:
    name, metric = str(dataset["dataset"]), str(dataset["metric"])
    prefix = f"dataset-{index}"
    parts = [f'<section id="{prefix}"><h2>Dataset {html.escape(name)}</h2>',
             f"<p>Study <code>{html.escape(str(dataset['study']))}</code>, metric {html.escape(metric)}.</p>",
             "<h3>Optimization history</h3>",
             figure_div(plot_optimization_history(study, target_name=metric), f"{prefix}-history"),
             "<h3>Parameter importances</h3>"]
    obstacle = importance_obstacle(study)
    parts.append(_note(obstacle) if obstacle else importances_html(study, metric, f"{prefix}-importances"))
    parts += ["<h3>Parallel coordinates</h3>",
              figure_div(plot_parallel_coordinate(study, target_name=metric), f"{prefix}-parallel"),
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
              "<h3>Pairwise significance</h3>",
              table_html(tables.get("pairwise"), "No pairwise comparison: each dataset has one encoder evaluated."),
              *(f"<p>{top_encoders_sentence(row)}</p>" for row in _rows(tables.get("datasets"))),
              "</section>"]
    return "\n".join(parts)


def report_html(tables: dict[str, pd.DataFrame], studies: dict[str, optuna.Study], colours: Colours) -> str:
    datasets = tables.get("datasets")
    curves = tables.get("expected_performance")
    body = [
        "<h1>Encoder benchmark report</h1>",
        '<section id="leaderboards"><h2>Leaderboards</h2><h3>Encoders</h3>',
        table_html(tables.get("leaderboard"), "No complete trial yet, so no encoder leaderboard."),
        "<h3>Datasets</h3>", table_html(datasets, "No study in the storage yet."),
        "<h3>Costs</h3>", table_html(tables.get("costs"), "No cost figures yet."),
        "</section>",
        '<section id="expected-performance-section"><h2>Expected validation performance</h2>',
        _note("No complete trial yet, so no expected validation performance.") if curves is None or curves.empty
        else figure_div(expected_performance_figure(curves, colours), "expected-performance"),
        "</section>",
        *(dataset_section(i, row, studies[row["dataset"]], tables.get("costs"), colours)
          for i, row in enumerate(_rows(datasets))),
        final_section(tables, colours),
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Encoder benchmark report</title>'
            f"<style>{CSS}</style>\n<script>{get_plotlyjs()}</script></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# Writing

def write_png(path: Path, figure: Figure) -> None:
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=110)
    write_atomic(path, image.getvalue())


def write_report(storage: optuna.storages.BaseStorage | str, tables: dict[str, pd.DataFrame],
                 results_dir: Path) -> list[Path]:
    """Write report.html and the PNGs of its key plots; returns the paths written."""
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
            write_png(results_dir / file_name, build(table, colours))
            written.append(results_dir / file_name)
    return written
