"""The search benchmark's table arithmetic on hand-made curves, the warm start it measures,
and a run of it end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from benchmark.config.spec import BenchmarkConfig, load_config
from benchmark.schema import BENCHMARK_ATTR, DATASET_ATTR, ENCODER_PARAM, WARM_START_ATTR
from benchmark.search.warm_start import enqueue_warm_start
from perf import search
from tests.helpers import BEST_LR, run_cli, run_synthetic, search_space, synthetic_config, write_config

# --- the table arithmetic ------------------------------------------------------------------------


def test_time_to_target_medians_and_success_counts_on_step_curves():
    curves = {
        # the peer's final bests at 100 s: 0.8, 0.7, 0.9 -> target 0.8 (a trial at 120 s is too late)
        "trainer": [[(10.0, 0.5), (60.0, 0.8)], [(30.0, 0.7), (120.0, 0.95)], [(20.0, 0.9)]],
        # reaches 0.8 at 40 s, 70 s and never: median time of (40, 70, never) = 70 s
        "fast": [[(5.0, 0.6), (40.0, 0.85)], [(70.0, 0.8)], [(10.0, 0.75)]],
        # never reaches the target; one run has no complete trial at all
        "floor": [[(50.0, 0.6)], [], [(90.0, 0.7)]],
    }
    summary = search.summarize_methods(curves, budget_s=100.0)
    assert summary["target"] == 0.8
    trainer, fast, floor = (summary["methods"][name] for name in ("trainer", "fast", "floor"))
    assert trainer["final_best"] == [0.8, 0.7, 0.9]
    assert trainer["times_to_target"] == [60.0, None, 20.0]
    assert trainer["median_time_to_target"] == 60.0  # of (20, 60, never)
    assert (trainer["reached"], trainer["reached_in_half_budget"]) == (2, 1)
    assert fast["median_final_best"] == 0.8  # of 0.85, 0.8, 0.75
    assert fast["times_to_target"] == [40.0, 70.0, None]
    assert fast["median_time_to_target"] == 70.0
    assert (fast["reached"], fast["reached_in_half_budget"]) == (2, 1)
    # a run with no complete trial counts as the worst: median of (0.6, none, 0.7) = 0.6
    assert floor["median_final_best"] == 0.6
    assert floor["median_time_to_target"] is None and floor["reached"] == 0
    runs = {name: [{"seed": 1000 * index, "trials": [{"state": "complete", "ended_s": when} for when, _ in curve]}
                   for index, curve in enumerate(curves[name])] for name in curves}
    # a pruned trial counts among the trials, not the complete ones; one ended past the budget in neither
    runs["fast"][0]["trials"] += [{"state": "pruned", "ended_s": 45.0}, {"state": "complete", "ended_s": 101.0}]
    table = search.render_markdown({
        "plan": {"repeats": 3, "budget_s": 100.0, "train_examples": 240}, "encoder": "enc", "dataset": "d",
        "metric": "macro_f1", "device": "cpu", "precision": "fp32", "warm_start_sources": [], "source_runs": [],
        "methods": {name: {"description": name, "runs": runs[name]} for name in curves}, "summary": summary})
    assert "| fast | 0.8000 | 70 | 2/3 | 1/3 | 0.850, 0.800, 0.750 | 2/3, 1/1, 1/1 |" in table
    assert "| floor | 0.6000 | not reached | 0/3 | 0/3 | 0.600, -, 0.700 | 1/1, 0/0, 1/1 |" in table
    assert "Target: the peer's (trainer) median final best, 0.8000." in table
    assert "3 runs per method, each in a fresh process with its own seed (0, 1000, 2000)" in table


def test_an_even_count_whose_middle_runs_never_reach_has_no_median():
    assert search.median_or_none([10.0, None], np.inf) is None
    assert search.median_or_none([10.0, 30.0, None, None], np.inf) is None
    assert search.median_or_none([10.0, 30.0, 50.0, None], np.inf) == 40.0
    assert search.median_or_none([0.5, None, 0.7], -np.inf) == 0.5


def test_without_the_peer_there_is_no_target():
    summary = search.summarize_methods({"shipped": [[(1.0, 0.5)], [(2.0, 0.6)]]}, budget_s=10.0)
    assert summary["target"] is None
    assert summary["methods"]["shipped"]["median_final_best"] == pytest.approx(0.55)
    assert summary["methods"]["shipped"]["reached"] == 0


def test_the_band_holds_actual_runs_values_and_nothing_before_half_have_one():
    runs = [[(1.0, 0.2), (5.0, 0.6)], [(2.0, 0.4)], [(3.0, 0.5)], [(8.0, 0.9)]]
    low, median, high = search.anytime_band(runs, [0.5, 2.0, 6.0, 9.0])
    # at 0.5 s no run has a value; at 2 s two of four (0.2, 0.4): the lower median is still none
    assert np.isnan(median[0]) and np.isnan(median[1]) and high[1] == 0.2
    # at 6 s: none, 0.4, 0.5, 0.6; at 9 s: 0.4, 0.5, 0.6, 0.9
    assert np.isnan(low[2]) and (median[2], high[2]) == (0.4, 0.5)
    assert (low[3], median[3], high[3]) == (0.4, 0.5, 0.6)


def test_the_default_budget_fills_an_hour():
    # 10 methods x 5 runs and 2 warm-start source studies in each of the 5 rounds, 25 s of each outside its budget
    assert search.default_budget_s(50, 10) == 35


def test_every_lever_is_a_valid_config_of_the_harness():
    config = load_config("search_spaces/default.yaml")
    for name, method in search.METHODS.items():
        if method.patch is None:
            continue
        configured = search.configure(config, method.patch(config))
        assert configured.encoders == config.encoders, name
    assert search.configure(config, search.METHODS["all-levers"].patch(config)).pruner.min_resource == 192
    assert [name for name, method in search.METHODS.items() if method.warm(config)] == ["warm-start", "all-levers"]


def test_the_cli_refuses_one_repeat_and_unknown_methods_before_running(capsys):
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--repeats", "1"])
    assert exit_info.value.code == 2 and "--repeats must be at least 2, got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--methods", "no-warm-start,nope"])
    assert exit_info.value.code == 2 and "--methods: unknown nope" in capsys.readouterr().err


def test_the_gp_sampler_proposes_per_encoder_after_its_startup_trials():
    # the synthetic study of test_sampling: best learning rate 1e-4 for A, 1e-3 for B

    trials = run_synthetic(synthetic_config(sampler={"type": "gp", "n_startup_trials": 3}, n_trials=24))
    for encoder, best_lr in BEST_LR.items():
        own = [t for t in trials if t.params[ENCODER_PARAM] == encoder]
        best = max(own, key=lambda t: t.value)
        assert own.index(best) >= 3  # a GP proposal, not a random startup trial
        assert abs(math.log10(best.params["learning_rate"] / best_lr)) < 0.15


# --- warm start ----------------------------------------------------------------------------------


def _config(warm_start: str = "other_datasets", top_k: int = 1) -> BenchmarkConfig:
    return BenchmarkConfig.model_validate({
        "name": "b",
        "encoders": {"a": {"source": "offline"},
                     "c": {"source": "offline", "overrides": {"learning_rate": {"low": 1e-5, "high": 1e-4}}}},
        "datasets": {"news": {"source": "offline"}},
        "search_space": search_space(learning_rate={"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                                     dropout={"type": "float", "low": 0.0, "high": 0.2}),
        "sampler": {"warm_start": warm_start, "warm_start_top_k": top_k},
        "budget": {"n_trials": 4},
    })


_DISTRIBUTIONS = {"encoder": CategoricalDistribution(["a", "c"]),
                  "learning_rate": FloatDistribution(1e-6, 1e-1, log=True),
                  "batch_size": CategoricalDistribution([8, 16, 32]), "num_epochs": IntDistribution(1, 5)}


def _add(study: optuna.Study, encoder: str, value: float | None, state=TrialState.COMPLETE, **params) -> None:
    params = {"encoder": encoder, "learning_rate": 5e-5, "batch_size": 16, "num_epochs": 2, **params}
    intermediate = {192: 0.99} if state == TrialState.PRUNED else None
    study.add_trial(create_trial(params=params, distributions={k: _DISTRIBUTIONS[k] for k in params},
                                 value=value if state == TrialState.COMPLETE else None, state=state,
                                 intermediate_values=intermediate,
                                 user_attrs={"test_accuracy": 1.0} if value == 0.1 else {}))


def _source(storage, name: str, benchmark: str, dataset: str) -> optuna.Study:
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
    study.set_user_attr(BENCHMARK_ATTR, benchmark)
    study.set_user_attr(DATASET_ATTR, dataset)
    return study


def _storage_with_sources() -> optuna.storages.BaseStorage:
    storage = optuna.storages.InMemoryStorage()
    topics = _source(storage, "b-topics", "b", "topics")
    _add(topics, "a", 0.5, learning_rate=1e-4)
    _add(topics, "a", 0.9, learning_rate=2e-4, batch_size=32)
    _add(topics, "a", 0.8, learning_rate=3e-4)
    _add(topics, "a", None, TrialState.PRUNED, learning_rate=9e-4)  # its 0.99 is a checkpoint's, not a value
    _add(topics, "a", 0.1, learning_rate=4e-4)  # its test score (user attr) plays no part
    _add(topics, "c", 0.7, learning_rate=5e-5)
    _add(topics, "c", 0.95, learning_rate=5e-4)  # above c's override: learning rate dropped
    pairs = _source(storage, "b-pairs", "b", "pairs")
    _add(pairs, "a", 0.6, learning_rate=1e-2, batch_size=8, num_epochs=5)  # outside the space: all three dropped
    _add(pairs, "c", 0.4)
    # the same dataset (a study of it under another name), and another benchmark's study
    _add(_source(storage, "b-news-old", "b", "news"), "a", 0.99, learning_rate=7e-4)
    _add(_source(storage, "other-topics", "other", "topics"), "a", 0.99, learning_rate=8e-4)
    return storage


def _queued(storage, config: BenchmarkConfig, encoders=("a", "c")) -> list[tuple[dict, str]]:
    study = optuna.create_study(storage=storage, study_name="b-news", direction="maximize")
    dataset_study = SimpleNamespace(config=config, data=SimpleNamespace(name="news"), encoders=dict.fromkeys(encoders))
    enqueue_warm_start(study, dataset_study)
    # a queued trial holds its parameters as Optuna's `fixed_params` until it runs
    return [(t.system_attrs["fixed_params"], t.user_attrs[WARM_START_ATTR])
            for t in study.get_trials(states=(TrialState.WAITING,))]


def test_warm_start_queues_each_encoders_best_of_every_other_dataset_in_its_space():
    queued = _queued(_storage_with_sources(), _config())
    # sources by study name (b-pairs, b-topics), then the encoders in the run's order
    assert queued == [
        ({"encoder": "a"}, "b-pairs trial 0"),
        ({"encoder": "c", "learning_rate": 5e-5, "batch_size": 16, "num_epochs": 2}, "b-pairs trial 1"),
        ({"encoder": "a", "learning_rate": 2e-4, "batch_size": 32, "num_epochs": 2}, "b-topics trial 1"),
        ({"encoder": "c", "batch_size": 16, "num_epochs": 2}, "b-topics trial 6"),
    ]


def test_warm_start_top_k_goes_rank_by_rank_without_repeating_a_configuration():
    queued = _queued(_storage_with_sources(), _config(top_k=2), encoders=("a",))
    # a's second best on pairs: none; on topics: 0.8 at 3e-4
    assert [origin for _, origin in queued] == ["b-pairs trial 0", "b-topics trial 1", "b-topics trial 2"]


def test_no_warm_start_when_disabled_or_when_the_study_has_trials():
    storage = _storage_with_sources()
    assert _queued(storage, _config(warm_start="none")) == []
    study = optuna.load_study(storage=storage, study_name="b-news")
    _add(study, "a", 0.3)
    before = len(study.get_trials())
    enqueue_warm_start(study, SimpleNamespace(config=_config(), data=SimpleNamespace(name="news"),
                                              encoders={"a": None}))
    assert len(study.get_trials()) == before


def test_a_new_dataset_study_starts_from_the_other_datasets_best(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), sampler__warm_start="other_datasets",
                          budget__n_trials=2)
    results = tmp_path / "results"
    assert run_cli("--study", "--config", str(config), "--results-dir", str(results)) == 0
    err = capsys.readouterr().err
    # the study run first has no other dataset's study to start from; the second has the first's
    first, second = sorted(("topics", "topic_pairs"), key=lambda name: err.index(f"[{name}] running"))
    assert f"[{first}] warm start: 0 configuration(s) queued from 0 other dataset(s)' studies of tiny" in err
    assert f"[{second}] warm start: 1 configuration(s) queued from 1 other dataset(s)' studies of tiny" in err
    storage = f"sqlite:///{results / 'optuna.db'}"
    source = optuna.load_study(study_name=f"tiny-{first}", storage=storage)
    warmed = optuna.load_study(study_name=f"tiny-{second}", storage=storage)
    best = max((t for t in source.trials if t.state == TrialState.COMPLETE), key=lambda t: (t.value, -t.number))
    assert warmed.trials[0].params == best.params
    assert warmed.trials[0].user_attrs[WARM_START_ATTR] == f"tiny-{first} trial {best.number}"
    assert WARM_START_ATTR not in warmed.trials[1].user_attrs


# --- independent repeats -------------------------------------------------------------------------


def test_the_run_seed_reaches_every_trials_training_seed(tmp_path, tiny_encoders, monkeypatch):
    from benchmark.search import trial as trial_module
    from benchmark.search.preflight import prepare_studies
    from benchmark.search.study import run_study

    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("electra",))).restricted(["topics"], None)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    prepared = prepare_studies(config, url, ["none"], tmp_path)
    seeds = []
    real = trial_module.fine_tune_with_oom_retry

    def recording(trial, study, encoder, hp, tokenized, settings, *rest):
        seeds.append(settings.seed)
        return real(trial, study, encoder, hp, tokenized, settings, *rest)

    monkeypatch.setattr(trial_module, "fine_tune_with_oom_retry", recording)
    run_study(prepared.storage, url, prepared.studies[0], 2, None, seed=1000)
    assert config.training.seed == 0 and seeds == [1000, 1001]


def _fake_searches(calls: list):
    """Stands in for `in_fresh_process`: records each search and answers at once. A source
    search leaves a storage naming its round's seed; a method's run reports the storage it got."""
    def fake(function, config, plan, workdir, seed):
        workdir = Path(workdir)
        calls.append((function.__name__, list(config.datasets), seed, workdir))
        if list(config.datasets) != ["topic_pairs"]:  # a warm-start source
            (workdir / search.SOURCE_DB).write_text(f"sources of seed {seed}")
            return {"seconds": 3.0, "trials": [], "rss_peak": 1}
        storage = workdir / search.SOURCE_DB
        value = 0.5 if function is search.search_trainer else 0.6
        return {"seconds": 4.0, "rss_peak": 1, "sources": storage.read_text() if storage.exists() else None,
                "trials": [{"number": 0, "state": "complete", "value": value, "ended_s": 1.0}]}
    return fake


def test_every_round_searches_its_own_sources_with_its_seed_and_states_their_cost(tmp_path, tiny_encoders,
                                                                                   monkeypatch):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",)))
    calls: list = []
    monkeypatch.setattr(search, "in_fresh_process", _fake_searches(calls))
    plan = search.SearchPlan(repeats=3, budget_s=4, train_examples=16, validation_examples=16, precision="fp32")
    report = search.run(config, plan, ["all-levers", "hyperband", "trainer"], tmp_path / "out",
                        dataset="topic_pairs")
    seeds = [0, search.RUN_SEED_STRIDE, 2 * search.RUN_SEED_STRIDE]
    sources = [(datasets, seed) for name, datasets, seed, _ in calls if datasets != ["topic_pairs"]]
    assert sources == [(["topics"], seed) for seed in seeds]
    runs = report["methods"]
    # each warm-started run starts from its own round's sources; a cold one from none
    assert [run["sources"] for run in runs["all-levers"]["runs"]] == [f"sources of seed {seed}" for seed in seeds]
    assert [run["sources"] for run in runs["hyperband"]["runs"]] == [None] * 3
    for name in runs:
        assert [run["seed"] for run in runs[name]["runs"]] == seeds
    assert [(run["dataset"], run["seed"], run["seconds"]) for run in report["source_runs"]] == [
        ("topics", seed, 3.0) for seed in seeds]
    text = (tmp_path / "out" / "SEARCH.md").read_text()
    assert "3 source searches, 3 s each (median), so 3 s per warm-started run that its clock does not count" in text


def test_a_benchmark_stopped_in_a_round_keeps_the_rounds_it_finished(tmp_path, tiny_encoders, monkeypatch):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",)))
    calls: list = []
    fake = _fake_searches(calls)

    def stopped_in_round_two(function, config, plan, workdir, seed):
        if seed == search.RUN_SEED_STRIDE and function is search.search_trainer:
            raise KeyboardInterrupt
        return fake(function, config, plan, workdir, seed)

    monkeypatch.setattr(search, "in_fresh_process", stopped_in_round_two)
    plan = search.SearchPlan(repeats=3, budget_s=4, train_examples=16, validation_examples=16, precision="fp32")
    with pytest.raises(KeyboardInterrupt):
        search.run(config, plan, ["warm-start", "trainer"], tmp_path / "out", dataset="topic_pairs")
    written = json.loads((tmp_path / "out" / "SEARCH.json").read_text())
    assert [len(entry["runs"]) for entry in written["methods"].values()] == [1, 1]
    assert "**1 of the 3 planned rounds**" in (tmp_path / "out" / "SEARCH.md").read_text()


def test_a_report_of_the_old_code_says_its_repeats_are_not_independent():
    assert "not independent" in search.repeats_text({"plan": {"repeats": 5}, "methods": {}})[0]
    cold = search.repeats_text({"plan": {"repeats": 5}, "warm_start_sources": [], "source_runs": []})
    assert "no source was searched" in cold[0]


# --- the benchmark end to end --------------------------------------------------------------------


def test_tiny_run_writes_every_run_of_every_method(tmp_path, tiny_encoders):
    # Balanced class weights, as default.yaml trains: the peer weighs its loss the same way.
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",), training__class_weights="balanced"))
    # 15 s: a peer trial of the tiny model took about 4 s on a 2-core machine at load 10, over 8 s at load 17
    plan = search.SearchPlan(repeats=2, budget_s=15, train_examples=16, validation_examples=16, precision="fp32")
    report = search.run(config, plan, ["all-levers", "trainer"], tmp_path / "out", dataset="topic_pairs")
    written = json.loads((tmp_path / "out" / "SEARCH.json").read_text())
    assert written["warm_start_sources"] == ["topics"]
    for name in ("all-levers", "trainer"):
        runs = written["methods"][name]["runs"]
        assert [r["seed"] for r in runs] == [0, search.RUN_SEED_STRIDE]
        assert all(r["trials"] for r in runs), name
    # the peer's runs completed a trial within the budget: the table has a target
    assert report["summary"]["target"] is not None
    assert (tmp_path / "out" / "search_anytime.png").stat().st_size > 0
    assert "| all-levers |" in (tmp_path / "out" / "SEARCH.md").read_text()

    # --render rebuilds the table and the plot from the JSON alone
    (tmp_path / "out" / "SEARCH.md").unlink()
    (tmp_path / "out" / "search_anytime.png").unlink()
    assert search.main(["--render", str(tmp_path / "out" / "SEARCH.json")]) == 0
    assert "| all-levers |" in (tmp_path / "out" / "SEARCH.md").read_text()
    assert (tmp_path / "out" / "search_anytime.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_mode_runs_on_the_offline_assets(tmp_path):
    assert search.main(["--quick", "--out", str(tmp_path)]) == 0
    written = json.loads((tmp_path / "SEARCH.json").read_text())
    assert list(written["methods"]) == list(search.QUICK_METHODS)
    assert all(len(entry["runs"]) == 2 for entry in written["methods"].values())
