"""The HTML report and its PNGs, from a real storage and hand-made leaderboard tables;
and the page as a headless Chromium renders it."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib import image
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from plotly.offline import get_plotlyjs

from benchmark import schema
from benchmark.report import figures as report_figures
from benchmark.report import html as report_page
from benchmark.report import text as report_text
from benchmark.report.results import trials_frame
from benchmark.schema import BENCHMARK_ATTR, DATA_SEED_ATTR, DATASET_ATTR, METRIC_ATTR, SURPLUS_ATTR

ENCODERS = ("bert", "roberta")
DISTRIBUTIONS = {
    "encoder": CategoricalDistribution([*ENCODERS, "ghost"]),
    "learning_rate": FloatDistribution(1e-5, 1e-3, log=True),
    "dropout": FloatDistribution(0.0, 0.3),
}
STEPS = (48, 96, 144)

# Figures the full page draws; neither dataset has the complete trials importances need.
FIGURES = {"expected-performance", "final-evaluation",
           *(f"dataset-{i}-{kind}" for i in (0, 1) for kind in ("history", "parallel", "proposals", "curves", "cost"))}
# What the topics study was trained from and with; the pairs study predates these attributes.
TOPICS_PROVENANCE = {schema.CONFIG_FILE_ATTR: "tiny.yaml", schema.CONFIG_SHA256_ATTR: "ab12" * 16,
                     schema.COMPARISON_ATTR: "balanced", DATA_SEED_ATTR: 7,
                     schema.VERSIONS_ATTR: {"torch": "2.13.0+cpu", "transformers": "5.24.0", "optuna": "5.0.0"}}


def add_trial(study: optuna.Study, encoder: str, state: TrialState, curve: list[float], **user_attrs) -> None:
    rng = np.random.default_rng(len(study.trials))
    study.add_trial(optuna.trial.create_trial(
        state=state, value=curve[-1] if state == TrialState.COMPLETE else None,
        params={"encoder": encoder, "learning_rate": float(10 ** rng.uniform(-5, -3)),
                "dropout": float(rng.uniform(0, 0.3))},
        distributions=DISTRIBUTIONS, intermediate_values=dict(zip(STEPS, curve)),
        user_attrs={"device": "cpu", "precision": "fp32", **user_attrs},
    ))


def make_study(storage: str, dataset: str, metric: str) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=f"tiny-{dataset}", direction="maximize")
    for name, value in ((BENCHMARK_ATTR, "tiny"), (DATASET_ATTR, dataset), (METRIC_ATTR, metric)):
        study.set_user_attr(name, value)
    return study


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'optuna.db'}"
    topics = make_study(url, "topics", "accuracy")
    for name, value in TOPICS_PROVENANCE.items():
        topics.set_user_attr(name, value)
    add_trial(topics, "bert", TrialState.COMPLETE, [0.50, 0.70, 0.81])
    add_trial(topics, "roberta", TrialState.COMPLETE, [0.45, 0.66, 0.78])
    add_trial(topics, "bert", TrialState.PRUNED, [0.30, 0.35])
    add_trial(topics, "roberta", TrialState.COMPLETE, [0.52, 0.71, 0.84])
    # Only the surplus mark keeps this trial out: were it drawn, "ghost" would show.
    add_trial(topics, "ghost", TrialState.COMPLETE, [0.9, 0.95, 0.99], **{SURPLUS_ATTR: True})
    add_trial(topics, "bert", TrialState.COMPLETE, [0.55, 0.69, 0.80])
    pairs = make_study(url, "pairs", "macro_f1")
    add_trial(pairs, "bert", TrialState.COMPLETE, [0.40, 0.55, 0.61])
    add_trial(pairs, "roberta", TrialState.PRUNED, [0.20], prune_reason="below the median at 48 examples")
    return url


TOPICS_VERDICT = ("topics (test split, 400 examples x 5 seeds each): roberta - bert = +0.039 accuracy "
                  "[95% CI +0.015, +0.062], Holm-adjusted p = 0.003 over 1 pair: roberta higher")


def full_tables(storage: str) -> dict[str, pd.DataFrame]:
    """Tables in the shapes `results` builds, with values that agree with the storage."""
    curve = lambda dataset, encoder, best, trials=3: [  # noqa: E731
        {"dataset": dataset, "encoder": encoder, "n": n, "expected_max": best - 0.04 / n,
         "band_low": best - 0.08 / n, "band_high": best, "complete_trials": trials} for n in range(1, trials + 1)]
    return {
        "leaderboard": pd.DataFrame({
            "encoder": ["roberta", "bert"], "pairs": [np.nan, 0.61], "topics": [0.84, 0.81],
            "trials: pairs": [1, 1], "trials: topics": [2, 3], "mean_rank": [1.0, 1.5],
            "normalized_score": [1.0, 0.5], "datasets": [1, 2]}),
        "datasets": pd.DataFrame({
            "dataset": ["pairs", "topics"], "study": ["tiny-pairs", "tiny-topics"], "metric": ["macro_f1", "accuracy"],
            "best_value": [0.61, 0.84], "best_encoder": ["bert", "roberta"], "best_trial": [0, 3],
            "best_params": ['{"batch_size": 16, "dropout": 0.123456, "learning_rate": 2.3456e-05}',
                            '{"dropout": 0.2, "learning_rate": 0.00012}'], "complete": [1, 4], "pruned": [1, 1],
            "failed": [0, 0], "trial_seconds": [12.5, 1234.5], "wall_seconds": [20.0, 1500.0],
            "final_verdict": ["", TOPICS_VERDICT], "final_not_shown_worse_than_best": ["", "roberta"],
            "final_missing": ["", ""]}),
        "costs": pd.DataFrame({
            "dataset": ["pairs", "topics", "topics"], "encoder": ["bert", "bert", "roberta"],
            "trials": [1, 3, 2], "complete": [1, 2, 2], "pruned": [0, 1, 0], "failed": [0, 0, 0],
            "trial_seconds": [12.5, 600.0, 634.5], "device_hours": [0.00035, 0.1667, 0.1763],
            "train_tokens": [5000, 90000, 80000], "best_value": [0.61, 0.81, 0.84], "pareto": [True, True, True]}),
        "expected_performance": pd.DataFrame(
            curve("topics", "bert", 0.81) + curve("topics", "roberta", 0.84) + curve("pairs", "bert", 0.61, 1)),
        "final": pd.DataFrame({
            "dataset": ["topics", "topics"], "encoder": ["roberta", "bert"], "metric": ["accuracy"] * 2,
            "seeds": [5, 5], "seeds_requested": [5, 5], "test_examples": [400, 400], "mean": [0.8312, 0.7923],
            "ci_low": [0.8187, 0.7732], "ci_high": [0.8437, 0.8114], "source_trial": [3, 0],
            "not_shown_worse_than_best": [True, False], "missing": ["", ""]}),
        "pairwise": pd.DataFrame({
            "dataset": ["topics"], "encoder_a": ["roberta"], "encoder_b": ["bert"], "metric": ["accuracy"],
            "difference": [0.0389], "ci_low": [0.0151], "ci_high": [0.0622], "p_value": [0.003], "p_holm": [0.003],
            "significant_after_holm": [True], "pairs": [1], "test_examples": [400], "seeds_a": [5],
            "seeds_b": [5]}),
        "trials": trials_frame(storage),
    }


def empty_tables() -> dict[str, pd.DataFrame]:
    return {name: pd.DataFrame() for name in ("leaderboard", "datasets", "costs", "final", "pairwise", "trials")}


@pytest.fixture(scope="module")
def written(storage, tmp_path_factory) -> tuple[Path, list[Path]]:
    results_dir = tmp_path_factory.mktemp("results")
    return results_dir, report_page.write_report(storage, full_tables(storage), results_dir)


def figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="([^"]+)" class="plotly-graph-div', page)


def test_page_holds_tables_figures_and_sections(written):
    results_dir, paths = written
    assert paths == [results_dir / name for name in ("report.html", "expected_performance.png",
                                                     "expected_performance.svg", "final_evaluation.png",
                                                     "final_evaluation.svg")]
    page = paths[0].read_text()
    assert page.count(get_plotlyjs()) == 1
    page = page.replace(get_plotlyjs(), "")  # keeps failure messages readable
    assert "<script src" not in page and "plotly.js v" not in page
    assert sorted(figure_ids(page)) == sorted(FIGURES)
    # provenance, encoders, datasets, best configurations, costs, final, pairwise
    assert page.count('<div class="table-scroll"><table class="dataframe report">') == 7
    for cell in ("<th>trials: topics</th>", "<td>1,234.5</td>", "<td>12.50</td>", "<td>0.8400</td>",
                 "<td>3.50e-04</td>", "<td>5 of 5</td>", "<td>[0.8187, 0.8437]</td>", "<th>p_holm</th>",
                 "<th>not shown worse than the best</th>",
                 # best_params, a column per parameter, rounded for reading
                 "<th>batch_size</th>", "<th>learning_rate</th>", "<td>2.3e-05</td>", "<td>0.123</td>",
                 "<td>1.2e-04</td>", "<td>16</td>",
                 "Rests on 2 studies, 7 trials: 5 complete, 2 pruned, 0 failed.",
                 "Rests on the complete trials only: 2 studies, 5 trials: 5 complete, 0 pruned, 0 failed."):
        assert cell in page, cell
    assert "best_params" not in page.replace("datasets.csv (best_params)", "") and '{"dropout"' not in page
    assert '<h2>Dataset topics</h2>' in page and '<h2>Dataset pairs</h2>' in page
    assert "No parameter importances: they need at least 10 complete trials; this study has 4." in page
    assert f"<p>{TOPICS_VERDICT}</p>" in page
    assert "which is no proof that the two are equivalent" in page
    assert "pairs: no final evaluation yet." in page
    assert "ghost" not in page


def test_surplus_trials_are_left_out_but_numbers_kept(storage, written):
    studies = report_page.load_studies(storage, full_tables(storage)["datasets"])
    trials = studies["topics"].get_trials()
    assert [trial.number for trial in trials if trial.state != TrialState.FAIL] == [0, 1, 2, 3, 5]
    assert trials[4].state == TrialState.FAIL and not trials[4].params and not trials[4].intermediate_values


def test_every_figure_colours_an_encoder_alike(storage):
    tables = full_tables(storage)
    studies = report_page.load_studies(storage, tables["datasets"])
    colours = report_figures.encoder_colours(report_figures.page_encoders(tables, studies))
    assert set(colours) == {"bert", "roberta"} and len(set(colours.values())) == 2
    figures = [report_figures.expected_performance_figure(tables["expected_performance"], colours),
               report_figures.final_figure(tables["final"], colours),
               report_figures.learning_curves_figure(studies["topics"], "accuracy", colours),
               report_figures.cost_figure(tables["costs"][tables["costs"]["dataset"] == "topics"], "accuracy", colours)]
    for figure in figures:
        drawn = {trace.name: trace.marker.color or trace.line.color for trace in figure.data if trace.name in colours}
        assert drawn == {name: colours[name] for name in drawn} and set(drawn) == set(colours)
        legend = [trace.name for trace in figure.data if trace.showlegend is not False and trace.name in colours]
        assert sorted(legend) == sorted(set(legend)), "one legend entry per encoder"


def test_learning_curves_dash_pruned_trials(storage):
    study = report_page.load_studies(storage, full_tables(storage)["datasets"])["topics"]
    figure = report_figures.learning_curves_figure(study, "accuracy", report_figures.encoder_colours(ENCODERS))
    *trials, legend = figure.data
    assert [trace.line.dash for trace in trials] == ["solid", "solid", "dash", "solid", "solid"]
    assert [trace.marker.symbol for trace in trials] == ["circle", "circle", "x", "circle", "circle"]
    assert list(trials[2].x) == [48, 96]
    assert (legend.name, legend.line.dash, legend.marker.symbol) == ("pruned (dashed, x)", "dash", "x")


def test_a_trial_pruned_at_its_first_checkpoint_shows_as_pruned(storage):
    study = report_page.load_studies(storage, full_tables(storage)["datasets"])["pairs"]
    figure = report_figures.learning_curves_figure(study, "macro_f1", report_figures.encoder_colours(ENCODERS))
    complete, pruned, legend = figure.data
    assert list(pruned.x) == [48] and pruned.marker.symbol == "x" and pruned.line.dash == "dash"
    assert "trial 1 (pruned at 48 examples: below the median at 48 examples)" in pruned.hovertemplate
    assert complete.marker.symbol == "circle" and legend.showlegend is not False
    assert figure.layout.yaxis.title.text == "validation macro-F1"


def test_proposals_figure_has_a_series_per_encoder_and_parameter(storage):
    study = report_page.load_studies(storage, full_tables(storage)["datasets"])["topics"]
    figure = report_figures.proposals_figure(study, report_figures.encoder_colours(ENCODERS))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    series = {(trace.name, trace.xaxis): trace for trace in figure.data}
    # One panel per numeric parameter (dropout, learning_rate), one series per encoder in each.
    assert sorted(series) == [("bert", "x"), ("bert", "x2"), ("roberta", "x"), ("roberta", "x2")]
    for encoder in ENCODERS:
        own = [t for t in finished if t.params["encoder"] == encoder]
        assert list(series[encoder, "x"].x) == [t.number for t in own]
        assert list(series[encoder, "x"].y) == [t.params["dropout"] for t in own]
        assert list(series[encoder, "x2"].y) == [t.params["learning_rate"] for t in own]
        assert list(series[encoder, "x2"].marker.symbol) == [
            "circle" if t.state == TrialState.COMPLETE else "x" for t in own]
    assert figure.layout.yaxis2.type == "log" and figure.layout.yaxis.type == "linear"


def test_proposals_figure_of_a_study_without_finished_trials_is_empty():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    figure = report_figures.proposals_figure(study, report_figures.encoder_colours(ENCODERS))
    assert not figure.data and "no finished trial" in figure.layout.title.text


def test_pngs_are_real_images(written):
    _, paths = written
    for path in paths[1:]:
        if path.suffix == ".svg":
            continue
        pixels = image.imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 400
        assert distinct_colours(pixels) > 20, f"{path.name} looks blank"


def test_svgs_hold_the_pngs_figures_with_editable_text(written):
    _, paths = written
    svgs = {path.stem: ElementTree.parse(path).getroot() for path in paths if path.suffix == ".svg"}
    assert sorted(svgs) == ["expected_performance", "final_evaluation"]
    texts = {stem: "".join(root.itertext()) for stem, root in svgs.items()}
    assert all(root.tag == "{http://www.w3.org/2000/svg}svg" for root in svgs.values())
    assert "topics (complete trials: bert 3, roberta 3)" in texts["expected_performance"]
    assert "test accuracy (mean, 95% CI)" in texts["final_evaluation"]


def test_png_panels_share_one_legend_of_every_encoder(storage):
    tables = full_tables(storage)
    colours = report_figures.encoder_colours(ENCODERS)
    for figure in (report_figures.expected_performance_png(tables["expected_performance"], colours),
                   report_figures.final_evaluation_png(tables["final"], colours)):
        [legend] = figure.legends
        assert [text.get_text() for text in legend.get_texts()] == ["bert", "roberta"]
    curves = report_page.with_metric(tables["expected_performance"], tables["datasets"])
    panels = [ax for ax in report_figures.expected_performance_png(curves, colours).axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        "pairs (complete trials: bert 1)", "topics (complete trials: bert 3, roberta 3)"]
    assert [ax.get_ylabel() for ax in panels] == ["expected best validation macro-F1",
                                                  "expected best validation accuracy"]
    assert [text.get_text() for text in panels[0].texts] == ["bert: 1 complete trial, no curve to draw yet"]
    assert len(panels[1].texts) == 0


def test_expected_performance_names_its_metric_and_counts_in_integers(storage):
    tables = full_tables(storage)
    curves = report_page.with_metric(tables["expected_performance"], tables["datasets"])
    figure = report_figures.expected_performance_figure(curves, report_figures.encoder_colours(ENCODERS))
    assert [figure.layout[axis].title.text for axis in ("yaxis", "yaxis2")] == [
        "expected best validation macro-F1", "expected best validation accuracy"]
    for axis, last in (("xaxis", 1), ("xaxis2", 3)):
        assert (figure.layout[axis].tickformat, figure.layout[axis].dtick) == ("d", 1)
        assert list(figure.layout[axis].range) == [0.5, last + 0.5]
    # pairs: bert's single complete trial is a point, said to be no curve yet; topics' are curves.
    means = {(trace.xaxis, trace.name): trace.mode for trace in figure.data if trace.name}
    assert means == {("x", "bert"): "markers", ("x2", "bert"): "lines+markers", ("x2", "roberta"): "lines+markers"}
    notes = [a.text for a in figure.layout.annotations if a.xref == "x domain"]
    assert notes == ["bert: 1 complete trial, no curve to draw yet"]
    many = curves.assign(n=curves["n"] * 10)  # n up to 30: a tick every 3 trials, still whole numbers
    assert report_figures.expected_performance_figure(many, report_figures.encoder_colours(ENCODERS)).layout.xaxis2.dtick == 3


def test_missing_pieces_are_said_not_drawn(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(storage=storage, study_name="someone-elses")
    paths = report_page.write_report(storage, empty_tables(), tmp_path / "results")
    assert paths == [tmp_path / "results" / "report.html"]
    page = paths[0].read_text()
    assert figure_ids(page) == [] and "<table" not in page
    for sentence in ("No complete trial yet, so no encoder leaderboard.", "No study in the storage yet.",
                     "No cost figures yet.", "No complete trial yet, so no expected validation performance.",
                     "run `python run_benchmark.py --final-eval`"):
        assert sentence in page, sentence


def test_final_evaluation_pending_says_how_to_run_it(storage, tmp_path):
    tables = {**full_tables(storage), "final": pd.DataFrame(), "pairwise": pd.DataFrame()}
    paths = report_page.write_report(storage, tables, tmp_path)
    assert [path.name for path in paths] == ["report.html", "expected_performance.png", "expected_performance.svg"]
    page = paths[0].read_text()
    assert "run `python run_benchmark.py --final-eval`" in page
    assert "final-evaluation" not in figure_ids(page) and "Pairwise comparison" not in page


def test_an_unevaluated_encoder_is_listed_and_named_on_the_axis_not_drawn(storage):
    tables = full_tables(storage)
    final = tables["final"].assign(seeds=[5, 0], mean=[0.8312, float("nan")], ci_low=[0.8187, float("nan")],
                                   ci_high=[0.8437, float("nan")], not_shown_worse_than_best=[None, None],
                                   missing=["", "not evaluated"])
    shown = report_page.final_display(final)
    assert shown.iloc[1][["seeds", "95% CI (seeds and examples)", "not shown worse than the best", "missing"]].tolist() == [
        "0 of 5", "–", "–", "not evaluated"]
    colours = report_figures.encoder_colours(ENCODERS)
    # Its place on the axis says it is missing, so an empty place is not read as no encoder.
    figure = report_figures.final_figure(final, colours)
    assert [(list(trace.x), trace.showlegend) for trace in figure.data] == [
        (["roberta"], True), (["bert (not evaluated)"], False)]
    assert pd.isna(figure.data[1].y[0])
    [panel] = [ax for ax in report_figures.final_evaluation_png(final, colours).axes if ax.get_visible()]
    assert [label.get_text() for label in panel.get_xticklabels()] == ["bert (not evaluated)", "roberta"]
    assert [container.get_label() for container in panel.containers] == ["roberta"]  # the only error bar


@pytest.mark.parametrize(("verdict", "sentence"), [
    ("x (test split, 9 examples x 2 seeds each): a - b = +0.100 accuracy [95% CI -0.1, +0.3], Holm-adjusted p = 0.5 "
     "over 1 pair: not shown different",
     "x (test split, 9 examples x 2 seeds each): a - b = +0.100 accuracy [95% CI -0.1, +0.3], Holm-adjusted p = 0.5 "
     "over 1 pair: not shown different"),
    ("x <b>", "x &lt;b&gt;"),
    ("", "x: no final evaluation yet."),
])
def test_final_verdict_sentence(verdict, sentence):
    assert report_text.final_verdict_sentence(pd.Series({"dataset": "x", "final_verdict": verdict})) == sentence


def test_a_single_varying_parameter_has_no_importances():
    study = optuna.create_study(direction="maximize")
    for value in np.linspace(0.0, 0.3, 12):
        study.add_trial(optuna.trial.create_trial(
            value=float(value), params={"encoder": "bert", "dropout": float(value)},
            distributions={"encoder": CategoricalDistribution(["bert"]), "dropout": FloatDistribution(0, 0.3)}))
    assert report_figures.importance_obstacle(study) == (
        "No parameter importances: they need at least two parameters that all complete trials share and "
        "that vary between them; this study has 1 (dropout).")


def importance_study(trials: int, comparison: str | None) -> optuna.Study:
    """Two encoders in turn, a varying learning rate, a constant dropout, and a batch size of
    which one value is on a single trial."""
    study = optuna.create_study(direction="maximize")
    if comparison:
        study.set_user_attr(schema.COMPARISON_ATTR, comparison)
    distributions = {**DISTRIBUTIONS, "batch_size": CategoricalDistribution([16, 32])}
    for i in range(trials):
        encoder = ENCODERS[i % 2]
        study.add_trial(optuna.trial.create_trial(
            value=0.5 + 0.2 * (encoder == "roberta") + 0.01 * i,
            params={"encoder": encoder, "learning_rate": 10 ** (-5 + i / trials * 2), "dropout": 0.1,
                    "batch_size": 32 if i == 0 else 16}, distributions=distributions))
    return study


def test_importances_need_ten_complete_trials_and_leave_out_what_cannot_explain_anything():
    assert report_figures.importance_obstacle(importance_study(9, "balanced")) == (
        "No parameter importances: they need at least 10 complete trials; this study has 9.")
    study = importance_study(12, "balanced")
    assert report_figures.importance_obstacle(study) is None
    figure, _ = report_figures.importances_figure(study, "accuracy")
    # dropout is constant; batch size 32 is on one trial only
    assert sorted(figure.data[0].y) == ["encoder", "learning_rate"]
    page = report_page.importances_html(study, "accuracy", "importances")
    assert "at least 10 complete trials" in page and "a constant parameter explains nothing" in page
    assert "In this balanced comparison the encoder is assigned in turn, not sampled" in page
    assert "In this search the sampler chose the encoder" in report_page.importances_html(
        importance_study(12, "search"), "accuracy", "importances")


def test_parallel_coordinates_draw_no_line_white_and_each_tick_label_once():
    study = optuna.create_study(direction="maximize")
    # The smallest learning rate lies just below 1e-4: Optuna labels both it and 1e-4 "0.0001".
    for value, rate in ((0.50, 0.99999e-4), (0.70, 5e-4), (0.90, 2e-4)):
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"encoder": "bert" if value < 0.8 else "roberta", "learning_rate": rate,
                                 "dropout": value / 4}, distributions=DISTRIBUTIONS))
    labels = lambda figure: [(a.x, a.text) for a in figure.layout.annotations]  # noqa: E731
    assert len(set(labels(optuna.visualization.plot_parallel_coordinate(study)))) < len(
        labels(optuna.visualization.plot_parallel_coordinate(study)))  # what is fixed here
    figure = report_figures.parallel_coordinate_figure(study, "accuracy")
    assert len(set(labels(figure))) == len(labels(figure))
    assert [text for x, text in labels(figure) if x == 2] == ["bert", "roberta"]  # axes in name order
    lines = [trace for trace in figure.data if trace.mode == "lines"]
    assert len(lines) == 3
    worst, best = sorted(lines, key=lambda trace: trace.y[0])[::2]
    assert lightness(worst.line.color) < 0.85 and lightness(best.line.color) < 0.3
    [scale] = [trace.marker.colorscale for trace in figure.data if trace.marker.showscale]
    ends = [lightness(colour) for _, colour in (scale[0], scale[-1])]
    assert ends == pytest.approx([585 / 765, 163 / 765])  # rgb(158,202,225) and rgb(8,48,107)


def lightness(colour: str) -> float:
    """0 black .. 1 white: the mean of the RGB channels."""
    return sum(float(c) for c in re.findall(r"[\d.]+", colour)[:3]) / 3 / 255


def test_metric_names_in_the_table_headers(storage):
    tables = full_tables(storage)
    shown = report_page.leaderboard_display(tables["leaderboard"], report_text.dataset_metrics(tables["datasets"]))
    assert list(shown.columns[:3]) == ["encoder", "pairs: best validation macro-F1", "topics: best validation accuracy"]
    costs = report_page.value_display(tables["costs"], tables["datasets"])
    assert list(costs.columns[-4:]) == ["train_tokens", "metric", "best validation value", "pareto"]
    assert list(costs["metric"]) == ["macro_f1", "accuracy", "accuracy"]
    assert "best_params" not in report_page.value_display(tables["datasets"], tables["datasets"])


@pytest.mark.parametrize(("value", "shown"), [
    (2.3456e-05, "2.3e-05"), (0.00012, "1.2e-04"), (0.0123, "0.0123"), (0.123456, "0.123"), (0.1, "0.1"),
    (0.0, "0"), (3.0, "3"), (16, "16"), ("linear", "linear")])
def test_format_param(value, shown):
    assert report_text.format_param(value) == shown


def distinct_colours(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


CHROMIUM = shutil.which("chromium")


def test_chromium_renders_every_figure(written, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide chromium (.ci/run installs Debian's package)")
        pytest.skip("no chromium binary on PATH (CI installs Debian's chromium)")
    results_dir, _ = written
    url = (results_dir / "report.html").as_uri()
    shot = tmp_path / "report.png"
    subprocess.run([*chromium(1400), f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True)
    dom, probe = probed(results_dir / "report.html", tmp_path, 1400)

    assert dom.count('class="dataframe report"') == 7
    ids = figure_ids(dom)
    assert sorted(ids) == sorted(FIGURES)
    # Figures never nest, so each one's drawing lies between its div and the next figure's.
    chunks = re.split(r'<div id="[^"]+" class="plotly-graph-div', dom)[1:]
    unrendered = [div_id for div_id, chunk in zip(ids, chunks) if 'class="main-svg"' not in chunk]
    assert unrendered == []
    assert distinct_colours(image.imread(shot)) > 50

    # The header: provenance per dataset, as stored; "unknown" where a study predates it.
    header, *tables = probe["tables"]
    assert header["rows"][0] == ["dataset", "config", "config file", "config sha256", "seed", "device", "precision",
                                 "torch", "transformers", "optuna", "trials"]
    versions = TOPICS_PROVENANCE[schema.VERSIONS_ATTR]
    assert header["rows"][1:] == [
        ["pairs", "tiny", *["unknown"] * 3, "cpu", "bert fp32; roberta fp32", *["unknown"] * 3,
         "2 trials: 1 complete, 1 pruned, 0 failed"],
        ["topics", "tiny", "tiny.yaml", "ab12" * 4, "7", "cpu", "bert fp32; roberta fp32", versions["torch"],
         versions["transformers"],
         versions["optuna"], "5 trials: 4 complete, 1 pruned, 0 failed"]]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", probe["generated"])
    # Every column and axis names its metric.
    assert tables[0]["rows"][0][1:3] == ["pairs: best validation macro-F1", "topics: best validation accuracy"]
    figures = probe["figures"]
    expected = figures["expected-performance"]
    assert [expected["layout"][axis]["title"]["text"] for axis in ("yaxis", "yaxis2")] == [
        "expected best validation macro-F1", "expected best validation accuracy"]
    assert figures["final-evaluation"]["layout"]["yaxis"]["title"]["text"] == "test accuracy (mean, 95% CI)"
    assert figures["dataset-0-curves"]["layout"]["yaxis"]["title"]["text"] == "validation macro-F1"
    # Integer ticks for n, as drawn; pairs' single trial is a point with its sentence.
    assert expected["xticks"] and all(tick.isdigit() for tick in expected["xticks"])
    assert "bert: 1 complete trial, no curve to draw yet" in expected["annotations"]
    # pairs' roberta, pruned at its first checkpoint: one x marker, dashed, and a legend entry saying so.
    pruned = [trace for trace in figures["dataset-0-curves"]["data"] if trace["marker"]["symbol"] == "x"]
    assert [(trace["x"], trace["line"]["dash"]) for trace in pruned] == [([48], "dash"), ([None], "dash")]
    assert pruned[1]["name"] == "pruned (dashed, x)"
    # Parallel coordinates: no line near white, each tick label once.
    for div_id in ("dataset-0-parallel", "dataset-1-parallel"):
        lines = [trace["line"]["color"] for trace in figures[div_id]["data"] if trace.get("mode") == "lines"]
        assert lines and max(map(lightness, lines)) < 0.8
        labels = figures[div_id]["annotations"]
        assert len(labels) == len(set(labels))


def chromium(width: int) -> list[str]:
    # Virtual time lets plotly finish drawing before the DOM is dumped or the page shot.
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},4000",
            "--virtual-time-budget=20000"]


PROBE = """<script>window.addEventListener("load", () => setTimeout(() => {
  const rows = box => [...box.querySelectorAll("tr")].map(tr => [...tr.children].map(cell => cell.textContent));
  const out = {width: window.innerWidth, generated: document.getElementById("generated").textContent,
    tables: [...document.querySelectorAll("div.table-scroll")].map(box => ({rows: rows(box),
      left: box.getBoundingClientRect().left, right: box.getBoundingClientRect().right,
      scrollWidth: box.scrollWidth, clientWidth: box.clientWidth})), figures: {}};
  for (const div of document.querySelectorAll(".plotly-graph-div")) {
    out.figures[div.id] = {data: div.data, layout: div.layout,
      xticks: [...div.querySelectorAll(".xaxislayer-above text")].map(text => text.textContent),
      annotations: [...div.querySelectorAll(".annotation-text")].map(text => text.textContent)};
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1000));</script>"""


def probed(report_file: Path, tmp_path: Path, width: int) -> tuple[str, dict]:
    """The page's DOM as Chromium draws it `width` pixels wide, and what `PROBE` measured in it:
    each table container's cells and geometry, each figure's data, layout, drawn x ticks and
    annotations."""
    probe = tmp_path / f"probe-{width}.html"
    probe.write_text(report_file.read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([*chromium(width), "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=180, check=True).stdout
    [found] = re.findall(r'<pre id="probe">(.*?)</pre>', dom, flags=re.S)
    return dom, json.loads(html.unescape(found))


def test_chromium_keeps_wide_tables_in_a_scrolling_box_with_margins(written, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide chromium (.ci/run installs Debian's package)")
        pytest.skip("no chromium binary on PATH (CI installs Debian's chromium)")
    results_dir, _ = written
    for width in (700, 1400):
        _, probe = probed(results_dir / "report.html", tmp_path, width)
        boxes = probe["tables"]
        assert len(boxes) == 7
        # Nothing runs off the page, and a margin is kept on either side.
        assert all(box["left"] >= 16 and box["right"] <= probe["width"] - 16 for box in boxes), boxes
        # On a narrow screen the datasets table, the widest, scrolls inside its box.
        datasets = next(box for box in boxes if box["rows"][0][:2] == ["dataset", "study"])
        assert datasets["scrollWidth"] > datasets["clientWidth"] or width > 700
        # Its verdicts are paragraphs of the page, not cells ten lines high.
        assert "final_verdict" not in datasets["rows"][0] and "search_verdict" not in datasets["rows"][0]


def test_reference_notes_state_the_flags_in_words():
    from benchmark.report.leaderboard import FLAG_COLUMNS

    references = pd.DataFrame({"study": ["tiny-topics"], "reference": ["(reference) majority class"]})
    flags = pd.DataFrame([["topics", "bert", "accuracy", 0.5, 2, 0.5, 0.25, 0.5, 0.7, 200, 400, True, True]],
                         columns=FLAG_COLUMNS)
    notes = report_text.reference_notes(references, flags)
    assert "They take no rank and no normalized score." in notes
    assert "Chance is the better of the first two in the dataset&#x27;s metric" in notes
    assert ("topics: bert is at chance and not above tf-idf + logreg: its best validation accuracy is 0.5000 "
            "(best of 2 complete trials), against 0.5000 for the majority class, 0.2500 for random guessing and "
            "0.7000 for tf-idf + logreg (fitted on the same 400 training examples, scored on the same 200 "
            "validation examples).") in notes
    cleared = report_text.reference_notes(references, flags.iloc[:0])
    assert "Every encoder&#x27;s best validation value clears chance and tf-idf" in cleared
    assert report_text.reference_notes(pd.DataFrame(), flags) == ""  # a storage from before the reference rows


def ranked_tables(storage: str, encoders: int) -> dict[str, pd.DataFrame]:
    """`full_tables` plus a ranking over three datasets, built as `results` builds it."""
    from benchmark.report import ranking

    scores = pd.DataFrame({"bert": [0.81, 0.61, 0.70], "roberta": [0.84, 0.66, 0.75], "electra": [0.70, 0.50, 0.60]},
                          index=["pairs", "topics", "third"]).iloc[:, :encoders]
    return {**full_tables(storage), "ranking": ranking.mean_ranks(scores), "ranking_tests": ranking.ranking_tests(scores, dict.fromkeys(scores.index, "accuracy"))}


@pytest.mark.parametrize("encoders", [2, 3])
def test_ranking_section_and_critical_difference_png(storage, tmp_path, encoders):
    paths = report_page.write_report(storage, ranked_tables(storage, encoders), tmp_path)
    assert tmp_path / "critical_difference.png" in paths
    pixels = image.imread(tmp_path / "critical_difference.png")
    assert pixels.shape[1] > 400 and distinct_colours(pixels) > 20
    page = paths[0].read_text()
    assert '<h2>Ranking across datasets</h2>' in page and 'id="critical-difference"' in page
    # roberta beats bert on all 3 datasets (and electra, last everywhere, when it takes part)
    expected = ("Across 3 datasets, roberta and bert cannot be told apart (Wilcoxon signed-rank p = 0.25;"
                if encoders == 2 else "Across 3 datasets, Friedman's test finds the encoders' ranks differ (p = 0.0498")
    assert html.escape(expected) in page  # Friedman with perfectly consistent ranks: chi2 = 6, p = e^-3


def test_verdict_strength_and_timeout_lines_in_the_report(storage):
    tables = full_tables(storage)
    tables["datasets"] = tables["datasets"].assign(
        cut_short_by_timeout=["", "stopped by the 480 s timeout after 3 of 8 trials (bert 2, roberta 1)"],
        search_verdict=["no two encoders have a complete trial to compare",
                        "roberta and bert overlap at n=3 complete trials each: more trials, not a choice between "
                        "them, is what the data supports"])
    page = report_page.report_html(tables, report_page.load_studies(storage, tables["datasets"]), report_figures.encoder_colours(ENCODERS))
    assert ("topics: stopped by the 480 s timeout after 3 of 8 trials (bert 2, roberta 1); it compares fewer "
            "trials than planned.") in page
    assert "topics: roberta and bert overlap at n=3 complete trials each: more trials, not a choice" in page
    assert "not the one random search would give" in page


def test_chromium_draws_the_critical_difference_diagram(storage, tmp_path):
    """The diagram is an embedded PNG: Chromium must decode it from the page's own markup."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provide chromium (.ci/run installs Debian's package)")
        pytest.skip("no chromium binary on PATH (CI installs Debian's chromium)")
    section = report_page.ranking_section(ranked_tables(storage, 3))
    [tag] = re.findall(r'<img id="critical-difference"[^>]*>', section)
    probe = tmp_path / "probe.html"
    probe.write_text(f"<html><body>{tag}<script>window.onload = () => document.body.dataset.size = "
                     "document.getElementById('critical-difference').naturalWidth + 'x' + "
                     "document.getElementById('critical-difference').naturalHeight;</script></body></html>")
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180, check=True).stdout
    width, height = map(int, re.search(r'data-size="(\d+)x(\d+)"', dom).groups())
    assert width > 400 and height > 100


def test_a_mean_just_beside_its_percentile_interval_still_draws(storage):
    # A mean rounded past its metric's bound (MCC 1.0000000000000002) lies beside its cut
    # interval by a hair; matplotlib refuses negative error lengths, which would stop the report.
    final = full_tables(storage)["final"].assign(seeds=[5, 5], mean=[0.80, 0.60], ci_low=[0.801, 0.55],
                                                 ci_high=[0.85, 0.599], missing=["", ""])
    colours = report_figures.encoder_colours(ENCODERS)
    figure = report_figures.final_figure(final, colours)
    assert [(trace.error_y.arrayminus[0], trace.error_y.array[0]) for trace in figure.data] == [
        (0.0, pytest.approx(0.05)), (pytest.approx(0.05), 0.0)]
    [panel] = [ax for ax in report_figures.final_evaluation_png(final, colours).axes if ax.get_visible()]
    assert len(panel.containers) == 2


def test_the_header_gives_each_encoders_precision_as_its_trials_trained(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    trained = make_study(url, "trained", "accuracy")
    add_trial(trained, "bert", TrialState.COMPLETE, [0.5], precision="bf16")
    add_trial(trained, "bert", TrialState.COMPLETE, [0.6], precision="bf16")
    add_trial(trained, "bert", TrialState.COMPLETE, [0.6], precision="fp32")  # topped up on another machine
    add_trial(trained, "roberta", TrialState.COMPLETE, [0.7], precision="tf32")
    add_trial(trained, "ghost", TrialState.COMPLETE, [0.9], **{SURPLUS_ATTR: True})  # never trained
    stored = make_study(url, "stored", "accuracy")  # no trial yet: the choices it stores
    stored.set_user_attr(schema.PRECISION_BY_ENCODER_ATTR, {"roberta": {"choice": "fp32"}, "bert": {"choice": "bf16"}})
    old = make_study(url, "old", "accuracy")  # from before per-encoder choices
    old.set_user_attr(schema.PRECISION_ATTR, "bf16")
    table = report_page.provenance_table({"trained": trained, "stored": stored, "old": old}, None)
    assert table["precision"].tolist() == ["bert bf16 (2), fp32 (1); roberta tf32", "bert bf16; roberta fp32", "bf16"]


def test_a_mean_without_an_interval_draws_no_bar(storage):
    # Runs without spread (every seed right on every example) have no interval: no bar,
    # since one of zero length would read as a score known exactly, and the figures still draw.
    final = full_tables(storage)["final"].assign(seeds=[5, 5], mean=[1.0, 0.60], ci_low=[math.nan, 0.55],
                                                 ci_high=[math.nan, 0.65], missing=["", ""])
    colours = report_figures.encoder_colours(ENCODERS)
    figure = report_figures.final_figure(final, colours)
    bars = [(trace.error_y.arrayminus[0], trace.error_y.array[0]) for trace in figure.data]
    assert all(math.isnan(length) for length in bars[0]) and bars[1] == pytest.approx((0.05, 0.05))
    [panel] = [ax for ax in report_figures.final_evaluation_png(final, colours).axes if ax.get_visible()]
    assert len(panel.containers) == 2
    assert report_page.final_display(final)["95% CI (seeds and examples)"].tolist()[0] == "–"
