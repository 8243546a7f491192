"""End to end through the command line and the storage, on tiny encoders."""

from __future__ import annotations

import math
import random
from pathlib import Path

import optuna
import pandas as pd
import pydantic
import pytest
import torch
import yaml

from benchmark import schema
from benchmark.config.spec import BenchmarkConfig, load_config
from benchmark.report.html import REPORT_FILE
from benchmark.report.results import RESULT_FILES, trials_frame
from benchmark.schema import FINISHED
from benchmark.search import final_eval
from benchmark.search import trial as trial_module
from benchmark.search.preflight import prepare_studies
from benchmark.search.study import open_study, settle_memory
from tests.helpers import make_texts, run_cli, tiny_dataset_study, write_config


def test_study_end_to_end_and_leaderboard_rebuilt_from_storage(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders)
    results = tmp_path / "results"
    assert run_cli("--study", "--config", str(config), "--results-dir", str(results), "--n-trials", "4") == 0
    err = capsys.readouterr().err
    assert "[topics] trial 0" in err and ", 48 examples (epoch " in err  # evaluation lines while training
    assert "4/4 finished:" in err  # the study's progress line

    storage = f"sqlite:///{results / 'optuna.db'}"
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    assert set(summaries) == {"tiny-topics", "tiny-topic_pairs"}
    best = {}
    for name in summaries:
        study = optuna.load_study(study_name=name, storage=storage)
        trials = study.get_trials(states=FINISHED)
        assert len(trials) == 4
        for trial in study.trials:
            assert trial.params["encoder"] in {"bert", "roberta"}
            assert trial.intermediate_values, "every trial reports its evaluations"
        for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            encoder = trial.params["encoder"]
            best[(name, encoder)] = max(best.get((name, encoder), -math.inf), trial.value)
            assert trial.user_attrs["train_tokens"] > 0
            assert trial.user_attrs["eval_tokens"] > 0  # with train_tokens, what evaluation cost in arithmetic

    board = pd.read_csv(results / "leaderboard.csv").set_index("encoder")
    for (name, encoder), value in best.items():
        column = name.removeprefix("tiny-")
        assert board.loc[encoder, column] == pytest.approx(value)
    trials_csv = pd.read_csv(results / "trials.csv")
    assert len(trials_csv) == 8
    assert {"study", "dataset", "number", "state", "value", "duration_s", "param_learning_rate",
            "param_dropout", "encoder"} <= set(trials_csv.columns)
    datasets = pd.read_csv(results / "datasets.csv").set_index("dataset")
    assert (datasets["complete"] + datasets["pruned"]).tolist() == [4, 4]
    # The balanced comparison (the default): two trials for each of the two encoders.
    assert trials_csv.groupby(["study", "encoder"]).size().tolist() == [2, 2, 2, 2]
    assert board.loc[["bert", "roberta"], ["trials: topics", "trials: topic_pairs"]].values.tolist() == [[2, 2], [2, 2]]
    # The reference rows come from the baselines stored with each study, and take no rank.
    stored = optuna.load_study(study_name="tiny-topic_pairs", storage=storage).user_attrs["reference_baselines"]
    assert board.loc["(reference) tf-idf + logreg", "topic_pairs"] == pytest.approx(
        stored["tfidf_logreg"]["validation"]["macro_f1"])
    assert board.loc["(reference) majority class", ["mean_rank", "normalized_score"]].isna().all()

    # The final evaluation: each encoder's best trial, retrained with 2 seeds, on the test split.
    assert run_cli("--final-eval", "--config", str(config), "--results-dir", str(results), "--seeds", "2") == 0
    captured = capsys.readouterr()
    assert "final bert (trial" in captured.err
    assert "topics (test split, " in captured.out and "topic_pairs (test split, " in captured.out
    final_study = optuna.load_study(study_name=schema.final_study_name("tiny-topics"), storage=storage)
    runs = final_study.get_trials()
    assert sorted((t.params["encoder"], t.user_attrs["seed"]) for t in runs) == sorted(
        (encoder, seed) for (name, encoder) in best if name == "tiny-topics" for seed in (0, 1))
    search = optuna.load_study(study_name="tiny-topics", storage=storage)
    for run in runs:
        source = search.trials[run.user_attrs["source_trial"]]
        assert source.value == best[("tiny-topics", run.params["encoder"])]
        assert run.params == source.params  # the best configuration, retrained as it was
        assert run.value == run.user_attrs["test_accuracy"]  # scored on the test split
        labels = final_study.user_attrs["test_labels"]
        predictions = run.user_attrs["test_predictions"]
        assert len(predictions) == len(labels)  # every test prediction is kept
        assert run.value == pytest.approx(sum(p == y for p, y in zip(predictions, labels)) / len(labels))
    final = pd.read_csv(results / "final.csv")
    assert set(final["dataset"]) == {"topics", "topic_pairs"} and (final["seeds"] == 2).all()
    written = pd.read_csv(results / "final_predictions.csv")
    topics = written[written["dataset"] == "topics"]
    assert len(topics) == len(runs) * len(labels)
    assert topics.groupby(["encoder", "seed"])["label"].apply(list).map(lambda y: y == labels).all()
    # A second run finds every seed done and trains nothing.
    assert run_cli("--final-eval", "--config", str(config), "--results-dir", str(results), "--seeds", "2") == 0
    err = capsys.readouterr().err
    assert "[topics] final evaluation: 0 run(s) to train" in err and ") seed " not in err, "no run line"
    assert len(optuna.load_study(study_name=schema.final_study_name("tiny-topics"), storage=storage).trials) == len(runs)

    before = {name: (results / name).read_text() for name in (*RESULT_FILES, REPORT_FILE)}
    for name in before:
        (results / name).unlink()
    assert run_cli("--leaderboard", "--results-dir", str(results)) == 0
    assert {name: (results / name).read_text() for name in before} == before


def test_rerun_tops_up_instead_of_restarting(tmp_path, tiny_encoders):
    config = write_config(tmp_path, tiny_encoders, encoders=("distilbert",))
    common = ["--study", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics"]
    assert run_cli(*common, "--n-trials", "2") == 0
    assert run_cli(*common, "--n-trials", "3") == 0
    storage = f"sqlite:///{tmp_path / 'r' / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny-topics", storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 3
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert run_cli(*common, "--n-trials", "3") == 0
    assert len(optuna.load_study(study_name="tiny-topics", storage=storage).trials) == 3


def test_topping_up_with_another_seed_is_refused(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    common = ["--study", "--config", str(config), "--results-dir", str(tmp_path / "r"),
              "--datasets", "topics", "--n-trials", "1"]
    assert run_cli(*common) == 0
    assert run_cli(*common, "--seed", "7") == 2
    assert "seed 0" in capsys.readouterr().err


def test_one_backbone_with_two_heads_is_two_encoders(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders)
    path = str(tiny_encoders["bert"])
    raw = yaml.safe_load(config.read_text())
    raw["encoders"] = {"bert-cls": {"source": "local", "path": path, "pooling": "cls"},
                       "bert-mean": {"source": "local", "path": path, "pooling": "mean"}}
    config.write_text(yaml.safe_dump(raw))
    assert run_cli("--study", "--config", str(config), "--results-dir", str(tmp_path / "r"),
                   "--datasets", "topics", "--n-trials", "2") == 0
    err = capsys.readouterr().err
    assert "encoder bert-cls: bert, cls pooling (set in the config)" in err
    assert "encoder bert-mean: bert, mean pooling (set in the config)" in err
    study = optuna.load_study(study_name="tiny-topics", storage=f"sqlite:///{tmp_path / 'r' / 'optuna.db'}")
    heads = {t.params["encoder"]: t.user_attrs["pooling"] for t in study.get_trials(states=FINISHED)}
    assert heads == {"bert-cls": "cls", "bert-mean": "mean"}


def test_pruned_trial_is_stored_as_pruned_with_its_reason(tmp_path, tiny_encoders):
    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders)
    # Accuracy can never reach 2, so this pruner stops every trial at its first report.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=2)
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert list(trial.intermediate_values) == [48]  # eval_every_examples, whatever the batch size
        assert trial.user_attrs["prune_reason"].startswith("pruned after 48 examples")
        # its time up to the prune is kept, for the cost and overhead figures
        attrs = trial.user_attrs
        assert 0 < attrs["train_seconds"] and 0 < attrs["eval_seconds"]
        assert attrs["train_seconds"] + attrs["eval_seconds"] <= attrs["wall_seconds"]


def test_geometric_checkpoints_reach_the_pruner_at_the_same_examples_whatever_the_batch_size(tmp_path,
                                                                                           tiny_encoders):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("electra",),
                                      training__eval_every_examples=16, training__eval_schedule="geometric"))
    dataset_study = prepare_studies(config.restricted(["topics"], None), f"sqlite:///{tmp_path / 'db.sqlite'}",
                                    ["none"], tmp_path).studies[0]
    study = optuna.create_study(direction="maximize")
    for batch_size in (8, 16):
        study.enqueue_trial({"batch_size": batch_size, "num_epochs": 2})
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=2)
    train = len(dataset_study.data.train)
    for trial in study.trials:
        batch_size = trial.params["batch_size"]
        total = 2 * (train // batch_size) * batch_size  # full batches only
        # 1, 2, 4, 8, ... x 16 examples, then the end of training
        assert list(trial.intermediate_values) == [n for n in (16, 32, 64, 128, 256) if n < total] + [total]
    assert {trial.params["batch_size"] for trial in study.trials} == {8, 16}


def test_an_encoder_that_is_not_pruned_evaluates_only_at_the_end_and_is_never_pruned(tmp_path, tiny_encoders):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert", "electra"),
                                      training__eval_every_examples=16,
                                      encoders__electra__prune=False))
    dataset_study = prepare_studies(config.restricted(["topics"], None), f"sqlite:///{tmp_path / 'db.sqlite'}",
                                    ["none"], tmp_path).studies[0]
    # Accuracy never reaches 2: this pruner stops every trial at its first checkpoint, if it has one.
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    for encoder in ("bert", "electra"):
        study.enqueue_trial({"encoder": encoder, "batch_size": 8, "num_epochs": 1})
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=2)
    pruned, unpruned = study.trials
    assert pruned.state == optuna.trial.TrialState.PRUNED and list(pruned.intermediate_values) == [16]
    total = len(dataset_study.data.train) // 8 * 8
    assert unpruned.state == optuna.trial.TrialState.COMPLETE
    assert list(unpruned.intermediate_values) == [total]  # the whole split once, the trial's value
    # one evaluation of the whole validation split, nothing before it
    validation = dataset_study.tokenization.get(dataset_study.data, (dataset_study.encoders["electra"].location,
                                                                     dataset_study.encoders["electra"].revision),
                                                32, lambda: None).validation
    assert unpruned.user_attrs["eval_tokens"] == validation.lengths.sum()


def test_sampled_dropout_reaches_the_trained_model(tmp_path, tiny_encoders, monkeypatch):
    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders, encoders=("albert", "deberta-v2"))
    seen = []

    def recording_loader(*args, **kwargs):
        model = real_loader(*args, **kwargs)
        seen.append(model)
        return model

    real_loader = trial_module.load_classifier
    monkeypatch.setattr(trial_module, "load_classifier", recording_loader)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=3)
    for trial, model in zip(study.trials, seen):
        rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert rates and rates == pytest.approx([trial.params["dropout"]] * len(rates))
        assert model.config.model_type == trial.params["encoder"]


def test_non_finite_loss_prunes_with_reason_and_a_crash_fails_only_its_trial(tmp_path, tiny_encoders, monkeypatch):
    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders)
    real_loader = trial_module.load_classifier
    calls = []

    def sabotaged_loader(*args, **kwargs):
        calls.append(1)
        model = real_loader(*args, **kwargs)
        if len(calls) == 1:
            with torch.no_grad():
                model.classifier.dense.weight.fill_(float("nan"))
        elif len(calls) == 2:
            raise MemoryError("simulated")
        return model

    monkeypatch.setattr(trial_module, "load_classifier", sabotaged_loader)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=3, catch=(Exception,))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[0].user_attrs["prune_reason"].startswith("non-finite loss")
    assert study.trials[1].user_attrs["fail_reason"] == "MemoryError: simulated"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"--encoders": "nope"}, "--encoders: unknown encoder nope"),
        ({"--datasets": "nope"}, "--datasets: unknown dataset nope"),
        ({"datasets__topics__label": "category"}, "datasets.topics.label: column 'category' is missing"),
        ({"encoders__bert__path": "/does/not/exist"}, "encoders.bert.path: /does/not/exist is not a model directory"),
        ({"search_space__dropout__low": 0.5}, "search_space.dropout: low (0.5) is above high (0.3)"),
        ({"budgett": 3}, "budgett: unknown key"),
    ],
)
def test_bad_input_fails_before_any_training(tmp_path, tiny_encoders, capsys, change, expected):
    flags = {key: value for key, value in change.items() if key.startswith("--")}
    config = write_config(tmp_path, tiny_encoders,
                          **{key: value for key, value in change.items() if not key.startswith("--")})
    results = tmp_path / "r"
    args = ["--study", "--config", str(config), "--results-dir", str(results)]
    for flag, value in flags.items():
        args += [flag, value]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
    storage = f"sqlite:///{results / 'optuna.db'}"
    assert not (results / "optuna.db").exists() or trials_frame(storage).empty


def test_malformed_yaml_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("encoders: [unclosed\n")
    assert run_cli("--study", "--config", str(bad), "--results-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "malformed YAML" in err


def test_train_split_smaller_than_a_batch_is_refused_up_front(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",),
                          datasets__topics__max_train_examples=12)
    args = ["--study", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics"]
    assert run_cli(*args) == 2
    assert "datasets.topics: the train split has 12 examples, fewer than the largest " \
           "search_space.batch_size (16)" in capsys.readouterr().err


def test_the_last_evaluation_never_prunes_a_trial_that_has_finished_training(tmp_path, tiny_encoders):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("electra",),
                                      training__eval_every_examples=4800)).restricted(["topics"], None)
    dataset_study = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path).studies[0]
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert len(trial.intermediate_values) == 1  # only the end-of-training evaluation was reported


class _OutOfMemoryAbove:
    """Wraps a classifier's forward to fail like CUDA does on batches above `limit` rows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, loader):
        def load(*args, **kwargs):
            model = loader(*args, **kwargs)
            forward = model.forward

            def guarded(**inputs):
                if model.training and inputs["input_ids"].shape[0] > self.limit:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
                return forward(**inputs)

            model.forward = guarded
            return model
        return load


@pytest.mark.parametrize(("limit", "state"), [(4, optuna.trial.TrialState.COMPLETE),
                                              (1, optuna.trial.TrialState.FAIL)])
def test_out_of_memory_retries_with_half_micro_batches_then_fails_with_reason(
        tmp_path, tiny_encoders, monkeypatch, limit, state):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",),
                                      search_space__batch_size={"type": "categorical", "choices": [8]},
                                      training__eval_every_examples=48)).restricted(["topics"], None)
    dataset_study = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path).studies[0]
    monkeypatch.setattr(trial_module, "load_classifier", _OutOfMemoryAbove(limit)(trial_module.load_classifier))
    # The configured evaluation batch (32), not one sized to this host's memory: the retry halves it.
    monkeypatch.setattr(trial_module, "available_device_memory", lambda device: None)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=1, catch=(Exception,))
    trial = study.trials[0]
    assert trial.state == state
    # The fake runs out of memory at the first step, before a second of training.
    assert trial.user_attrs["oom_retry"] == ("OutOfMemoryError after 0.0 s of training; retried with micro-batch 4 "
                                             "and evaluation batch 16")
    if state == optuna.trial.TrialState.FAIL:
        assert trial.user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    else:
        assert trial.params["batch_size"] == 8 and trial.user_attrs["steps"] > 0


def test_host_memory_does_not_grow_across_twenty_trials(tmp_path, tiny_encoders):
    import psutil

    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders, encoders=("bert", "roberta"))
    study = optuna.create_study(direction="maximize")
    process = psutil.Process()
    readings, gpu_readings = [], []

    def measure(study, trial):
        readings.append(process.memory_info().rss)
        if torch.cuda.is_available():
            gpu_readings.append(torch.cuda.memory_allocated())

    # as run_study does between trials: collect, then freeze what survived
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=20,
                   callbacks=[settle_memory, measure])
    warm = readings[4]  # after both encoders' tokenizations are cached and allocators warmed up
    assert max(readings[5:]) <= warm * 1.05, [round(r / 2**20) for r in readings]
    if gpu_readings:  # only where the trials ran on a GPU
        assert max(gpu_readings[5:]) <= max(gpu_readings[4], 1) * 1.05


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([], "datasets.topics: the train split is empty"),
        ([{"text": "goal match", "label": "sports"}] * 40, "has a single class (sports)"),
        ([{"text": "goal match", "label": "sports"}, {"text": 42, "label": "tech"}] * 20,
         "datasets.topics.text: column 'text' has 20 empty or non-text value(s), the first being 42"),
    ],
)
def test_bad_data_is_one_clear_line_before_training(tmp_path, tiny_encoders, capsys, rows, expected):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    # JSON Lines keeps a number a number, where CSV would read it back as text
    pd.DataFrame(rows, columns=["text", "label"]).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    text = config.read_text().replace(str(tmp_path / "topics.csv"), str(tmp_path / "bad.jsonl"))
    config.write_text(text)
    assert run_cli("--study", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics") == 2
    err = capsys.readouterr().err
    assert expected in err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "Traceback" not in err


def test_unreachable_storage_is_refused_with_the_password_masked(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    code = run_cli("--study", "--config", str(config), "--results-dir", str(tmp_path / "r"),
                   "--storage", "postgresql://bench:s3cret@127.0.0.1:1/nowhere")
    assert code == 2
    err = capsys.readouterr().err
    assert "error: --storage: cannot open postgresql://bench:***@127.0.0.1:1/nowhere" in err
    assert "s3cret" not in err


def test_final_eval_refuses_a_missing_study_or_changed_data_before_training(tmp_path, tiny_encoders, capsys,
                                                                             monkeypatch):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    common = ["--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics"]
    assert run_cli("--final-eval", *common) == 2
    err = capsys.readouterr().err
    assert "--final-eval: no study tiny-topics in sqlite:///" in err and "run --study first" in err

    assert run_cli("--study", *common, "--n-trials", "1") == 0
    changed = write_config(tmp_path, tiny_encoders, encoders=("bert",), datasets__topics__max_train_examples=50)
    monkeypatch.setattr(final_eval, "fine_tune", lambda *a, **k: pytest.fail("trained despite bad input"))
    assert run_cli("--final-eval", "--config", str(changed), "--results-dir", str(tmp_path / "r"),
                   "--datasets", "topics") == 2
    err = capsys.readouterr().err
    assert "study 'tiny-topics' was created on other data or settings than the config gives now " \
           "(datasets.topics: the train split has 50 examples, 97 then)" in err
    # Stored predictions are compared example by example: a test split that moved is refused too.
    storage = f"sqlite:///{tmp_path / 'r' / 'optuna.db'}"
    moved = optuna.create_study(storage=storage, study_name=schema.final_study_name("tiny-topics"), direction="maximize")
    moved.set_user_attr(schema.TEST_LABELS_ATTR, [0, 1])
    write_config(tmp_path, tiny_encoders, encoders=("bert",))  # the search's config again
    assert run_cli("--final-eval", *common) == 2
    assert f"datasets.topics: the test split's labels differ from those study '{schema.final_study_name('tiny-topics')}' scored" \
        in capsys.readouterr().err
    assert run_cli("--final-eval", *common, "--seeds", "1") == 2
    assert "--seeds must be at least 2" in capsys.readouterr().err


def test_preflight_reports_dropped_duplicates_and_absent_classes_and_the_study_keeps_the_count(
        tmp_path, tiny_encoders, capsys):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",),
                                      datasets__topics__max_validation_examples=3,
                                      datasets__topics__max_test_examples=9)).restricted(["topics"], None)
    topics = make_texts(120, seed=3)
    repeats = topics.iloc[:3].assign(text=lambda f: "  " + f["text"].str.upper())
    rare = pd.DataFrame({"text": ["a lone weather report", "rain on the coast", "a sunny week"], "label": "weather"})
    pd.concat([topics, repeats, rare]).to_csv(tmp_path / "topics.csv", index=False)

    prepared = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path)
    err = capsys.readouterr().err
    # 123 rows left (40 per topic, 3 'weather'). Cut: test 4+4+4 and one 'weather' (each
    # split cut from train keeps one of a class), validation 4+4+3+1 of the other 110, train 98.
    # A cap keeps one of each class while it allows: test 9 of 13 keeps a 'weather' report, but
    # validation 3 of 12 is below the 4 classes, and the rarest, 'weather', is the one left out.
    assert "dataset topics: 4 classes, train 98, validation 3, test 9, 3 duplicates dropped" in err
    assert ("warning: datasets.topics: the validation split has no example of class(es) 'weather'; "
            "its accuracy cannot reward them") in err
    assert "the test split has no example" not in err
    assert "the train split has no example" not in err
    study = open_study(prepared.storage, prepared.studies[0], seed=0)
    assert study.user_attrs["duplicates_dropped"] == 3


def test_the_study_keeps_what_the_report_header_names(tmp_path, tiny_encoders):
    import hashlib

    import transformers

    path = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    config = load_config(path).restricted(["topics"], None)
    prepared = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path)
    attrs = open_study(prepared.storage, prepared.studies[0], seed=0).user_attrs
    assert attrs["config_file"] == "tiny.yaml" and attrs["comparison"] == "balanced"
    assert attrs["config_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert attrs["package_versions"] == {"torch": torch.__version__, "transformers": transformers.__version__,
                                         "optuna": optuna.__version__}


def test_a_timeout_short_of_n_trials_is_said_and_recorded_then_cleared(tmp_path, tiny_encoders, monkeypatch, capsys):
    import time as time_module

    from benchmark.search import study as study_module

    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders, encoders=("bert", "roberta"))
    clock = [0.0]
    monkeypatch.setattr(time_module, "monotonic", lambda: clock[0])

    def hundred_second_trial(trial, *_):
        clock[0] += 100.0  # each trial takes 100 s of the fake clock
        return 0.5

    monkeypatch.setattr(study_module, "run_trial", hundred_second_trial)
    storage = optuna.storages.InMemoryStorage()
    # Trials start at t = 0, 100 and 200 (< 250); the one due at t = 300 never starts: 3 of 6.
    # Seed 0's rotation on topics: round 0 bert then roberta, round 1 roberta first.
    study = study_module.run_study(storage, "memory", dataset_study, n_trials=6, timeout_s=250, seed=0)
    assert study.user_attrs["timeout_stop"] == {"finished": 3, "n_trials": 6, "timeout_s": 250,
                                                "per_encoder": {"bert": 1, "roberta": 2}}
    assert ("[topics] stopped by the 250 s timeout after 3 of 6 trials (bert 1, roberta 2): the comparison rests on "
            "fewer trials than planned") in capsys.readouterr().err
    # A later run without the deadline fills the study and clears the mark.
    study = study_module.run_study(storage, "memory", dataset_study, n_trials=6, timeout_s=None, seed=0)
    assert study.user_attrs["timeout_stop"] is None
    assert "stopped by the" not in capsys.readouterr().err


# --- study names: no dataset reaches another study --------------------------------------------


SEARCH_SPACE = {name: {"type": "categorical", "choices": [value]} for name, value in
                {"learning_rate": 1e-3, "warmup_ratio": 0.0, "dropout": 0.0, "max_grad_norm": 1.0,
                 "weight_decay": 0.0, "batch_size": 8, "num_epochs": 1}.items()}


def _accepted_names(candidates: list[str]) -> list[str]:
    """The candidates that a config accepts as dataset names."""
    accepted = []
    for name in candidates:
        try:
            BenchmarkConfig.model_validate({
                "name": "x", "encoders": {"e": {"source": "local", "path": "unused"}},
                "datasets": {name: {"source": "file", "path": "unused.csv"}},
                "search_space": SEARCH_SPACE})
        except pydantic.ValidationError:
            continue
        accepted.append(name)
    return accepted


def test_no_dataset_name_a_user_can_write_reaches_a_final_evaluation_study():
    suffixes = ["final", "Final", "FINAL", "final-final"]
    separators = ["-", "_", ".", ":", "/", " ", "#", "", "--"]
    written = ["d"] + [f"d{sep}{suffix}" for sep in separators for suffix in suffixes]
    rng = random.Random(0)
    written += ["".join(rng.choice("df-_.:/ ina") for _ in range(rng.randint(1, 9))) for _ in range(2000)]
    accepted = _accepted_names(written)
    assert {"d", "d-final", "d_final", "d.final"} <= set(accepted)
    for config_name in ("x", "x-y"):
        searches = {schema.study_name(config_name, name) for name in accepted}
        finals = {schema.final_study_name(study) for study in searches}
        assert not searches & finals


def test_a_dataset_named_like_a_final_study_keeps_its_own_study(tmp_path, tiny_encoders, capsys):
    config = _quick_config(tmp_path, tiny_encoders)
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["topics-final"] = dict(raw["datasets"]["topics"])
    config.write_text(yaml.safe_dump(raw))
    common = ["--config", str(config), "--results-dir", str(tmp_path / "r")]
    assert run_cli("--study", *common, "--datasets", "topics,topics-final", "--n-trials", "2") == 0
    assert run_cli("--final-eval", *common, "--datasets", "topics", "--seeds", "2") == 0

    storage = f"sqlite:///{tmp_path / 'r' / 'optuna.db'}"
    other = optuna.load_study(study_name="tiny-topics-final", storage=storage)
    assert len(other.trials) == 2 and other.user_attrs[schema.DATASET_ATTR] == "topics-final"
    assert schema.FINAL_OF_ATTR not in other.user_attrs
    final = optuna.load_study(study_name=schema.final_study_name("tiny-topics"), storage=storage)
    assert len(final.trials) == 2 and final.user_attrs[schema.FINAL_OF_ATTR] == "tiny-topics"
    trials = pd.read_csv(tmp_path / "r" / "trials.csv")
    assert trials.groupby("dataset").size().to_dict() == {"topics": 2, "topics-final": 2}


def test_a_final_study_from_an_older_version_is_kept_and_no_search_joins_it(tmp_path, tiny_encoders, capsys):
    storage_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    storage = optuna.storages.RDBStorage(storage_url)
    old = optuna.create_study(storage=storage, study_name="tiny-topics-final", direction="maximize")
    old.set_user_attr(schema.FINAL_OF_ATTR, "tiny-topics")
    # Where a search study holds the name, the final evaluation takes a study of its own.
    assert final_eval.final_study_of(storage, "tiny-topics") == "tiny-topics-final"
    assert final_eval.final_study_of(storage, "tiny-other") == schema.final_study_name("tiny-other")

    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["topics-final"] = raw["datasets"].pop("topics")
    config.write_text(yaml.safe_dump(raw))
    for mode in ("--study", "--check"):
        assert run_cli(mode, "--config", str(config), "--storage", storage_url, "--results-dir", str(tmp_path / "r"),
                       "--datasets", "topics-final") == 2
        assert ("error: datasets.topics-final: the storage's study 'tiny-topics-final' holds the final evaluation "
                "of study 'tiny-topics', not this dataset's search") in capsys.readouterr().err
    assert len(optuna.load_study(study_name="tiny-topics-final", storage=storage).trials) == 0


# --- data and settings changed under a study ------------------------------------------------------


def _quick_config(tmp_path: Path, tiny_encoders: dict[str, Path], **overrides) -> Path:
    return write_config(tmp_path, tiny_encoders, encoders=("bert",), **{
        "training__precision": "fp32", "search_space__num_epochs": {"type": "int", "low": 1, "high": 1}, **overrides})


def _refused(capsys, *args: str) -> str:
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith("error: study 'tiny-topics' was created on other data or settings than the config "
                                "gives now ("), err
    return errors[0]


def test_final_eval_refuses_a_data_file_whose_texts_were_replaced(tmp_path, tiny_encoders, capsys, monkeypatch):
    config = _quick_config(tmp_path, tiny_encoders)
    common = ["--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics"]
    assert run_cli("--study", *common, "--n-trials", "1") == 0
    capsys.readouterr()
    # The same rows and labels, other texts: every split keeps its size.
    make_texts(120, seed=99).to_csv(tmp_path / "topics.csv", index=False)
    monkeypatch.setattr(final_eval, "fine_tune", lambda *a, **k: pytest.fail("trained on changed data"))
    err = _refused(capsys, "--final-eval", *common, "--seeds", "2")
    for split in ("train", "validation", "test"):
        assert f"datasets.topics: the {split} split's texts or labels differ" in err


def test_topping_up_after_the_file_grew_is_refused_and_the_recorded_sizes_stay(tmp_path, tiny_encoders, capsys):
    config = _quick_config(tmp_path, tiny_encoders)
    common = ["--study", "--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics"]
    assert run_cli(*common, "--n-trials", "1") == 0
    storage = f"sqlite:///{tmp_path / 'r' / 'optuna.db'}"
    recorded = optuna.load_study(study_name="tiny-topics", storage=storage).user_attrs
    capsys.readouterr()
    make_texts(180, seed=3).to_csv(tmp_path / "topics.csv", index=False)  # 60 rows more
    err = _refused(capsys, *common, "--n-trials", "2")
    assert "datasets.topics: the train split has 146 examples, 97 then" in err
    assert "datasets.topics: the validation split has 16 examples, 11 then" in err
    study = optuna.load_study(study_name="tiny-topics", storage=storage)
    assert len(study.trials) == 1
    for name in (schema.SPLIT_SIZES_ATTR, schema.SPLIT_FINGERPRINTS_ATTR):
        assert study.user_attrs[name] == recorded[name]
    _refused(capsys, "--check", *common[1:], "--n-trials", "2")


def test_final_eval_or_a_top_up_with_other_training_settings_is_refused(tmp_path, tiny_encoders, capsys, monkeypatch):
    config = _quick_config(tmp_path, tiny_encoders)
    common = ["--config", str(config), "--results-dir", str(tmp_path / "r"), "--datasets", "topics"]
    assert run_cli("--study", *common, "--n-trials", "1") == 0
    capsys.readouterr()
    monkeypatch.setattr(final_eval, "fine_tune", lambda *a, **k: pytest.fail("trained with other settings"))
    _quick_config(tmp_path, tiny_encoders, training__max_length=64, training__precision="bf16")
    err = _refused(capsys, "--final-eval", *common, "--seeds", "2")
    assert "training.max_length: 64, 32 then; training.precision: 'bf16', 'fp32' then" in err
    _quick_config(tmp_path, tiny_encoders, training__eval_every_examples=96)
    err = _refused(capsys, "--study", *common, "--n-trials", "2")
    assert "(training.eval_every_examples: 96, 48 then)" in err


def test_only_the_settings_that_shape_the_final_retraining_are_compared_for_it(tmp_path, tiny_encoders):
    from benchmark.data.dataset import load_dataset
    from benchmark.search import lineage

    config = load_config(_quick_config(tmp_path, tiny_encoders))
    data = load_dataset("topics", config.datasets["topics"], seed=0)
    attrs = {schema.SPLIT_SIZES_ATTR: {"train": 97, "validation": 11, "test": 12},
             schema.SPLIT_FINGERPRINTS_ATTR: data.fingerprints(),
             schema.TRAINING_SETTINGS_ATTR: lineage.training_settings(config)}
    assert lineage.changes(attrs, data, config, lineage.SEARCH_SETTINGS) == []
    evaluated = config.model_copy(update={"training": config.training.model_copy(update={
        "eval_every_examples": 500, "eval_schedule": "geometric", "eval_batch_size": 7})})
    assert lineage.changes(attrs, data, evaluated, lineage.FINAL_SETTINGS) == []
    assert lineage.changes(attrs, data, evaluated, lineage.SEARCH_SETTINGS) == [
        "training.eval_every_examples: 500, 48 then", "training.eval_schedule: 'geometric', 'fixed' then"]
    assert lineage.changes({}, data, evaluated, lineage.SEARCH_SETTINGS) == []  # nothing recorded
