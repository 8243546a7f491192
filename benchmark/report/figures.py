"""The report's figures: the plotly figures of the page and their matplotlib counterparts,
written as PNG and SVG, each a pure function of the leaderboard tables or of one study, with
the words drawn inside them (titles, axes, legends) and the rule of when one can be drawn at
all (`importance_obstacle`).

Every figure colours an encoder alike (`encoder_colours`). Where the page shows which figure,
and the notes around it, are `html`'s and `text`'s.
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
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
from optuna.visualization import plot_parallel_coordinate, plot_param_importances
from plotly.colors import hex_to_rgb, make_colorscale, qualitative, sample_colorscale, sequential
from plotly.subplots import make_subplots
from scikit_posthocs import critical_difference_diagram

from benchmark.files import write_atomic
from benchmark.report import ranking
from benchmark.report.text import MIN_IMPORTANCE_TRIALS, MIN_TRIALS_PER_LEVEL, metric_label
from benchmark.schema import ENCODER_PARAM, PRUNE_REASON_ATTR, SURPLUS_ATTR

PALETTE = qualitative.Plotly + qualitative.D3
FIGURE_HEIGHT_PX = 460
PANEL_COLUMNS = 3
Colours = dict[str, str]
# Each PNG also as SVG, which scales on a slide or in a paper.
FIGURE_FORMATS = ("png", "svg")


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


def importances_figure(study: optuna.Study, metric: str) -> tuple[go.Figure, list[str]]:
    """The importances of `importance_parameters`, and Optuna's caveats about them."""
    with warnings.catch_warnings(record=True) as caveats:
        warnings.simplefilter("always")
        figure = plot_param_importances(study, params=importance_parameters(study), target_name=metric_label(metric))
    return figure, list(dict.fromkeys(str(caveat.message) for caveat in caveats))


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


# Writing

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
