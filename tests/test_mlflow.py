"""The MLflow backend: a real study through a real `mlflow server` on loopback, an
unreachable server, and the local SQLite store driven directly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("mlflow", reason="mlflow is not installed: pip install -e '.[mlflow]'")

from mlflow import MlflowClient  # noqa: E402

from benchmark.cli import main  # noqa: E402
from benchmark.errors import BenchmarkError  # noqa: E402
from benchmark.report.html import EXPECTED_PERFORMANCE_PNG, REPORT_FILE, REPORT_FILES  # noqa: E402
from benchmark.report.results import RESULT_FILES  # noqa: E402
from benchmark.schema import FINISHED
from benchmark.search import study as study_module  # noqa: E402
from benchmark.search import trial as trial_module  # noqa: E402
from benchmark.tracking import mlflow_backend  # noqa: E402
from benchmark.tracking.base import (
    Guarded,  # noqa: E402
    StudyInfo,  # noqa: E402
)
from benchmark.train.records import Evaluation, StepLog  # noqa: E402
from tests.helpers import free_port, write_config

PARENT = "mlflow.parentRunId"
STATUS = {TrialState.COMPLETE: ("FINISHED", "complete"), TrialState.PRUNED: ("FINISHED", "pruned"),
          TrialState.FAIL: ("FAILED", "failed")}
SERVER_START_S = 90  # imports alone take a while on a loaded CI machine


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _stop(server: subprocess.Popen) -> None:
    """The server and the uvicorn worker it spawned share the session started for them."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real tracking server: SQLite backend, proxied artifacts, loopback only."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with opener.open(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not ready after {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(server)


class PruneOddTrials(optuna.pruners.BasePruner):
    """Prunes every odd-numbered trial at its first report: a pruned trial, deterministically."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1


def test_a_study_reads_back_from_the_server_as_optuna_stored_it(
        mlflow_server, tmp_path, tiny_encoders, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setattr(study_module, "make_pruner", lambda spec: PruneOddTrials())
    real_loader, loads = trial_module.load_classifier, []

    def loader(*args, **kwargs):  # the third trial overall (the second study's first) crashes
        loads.append(1)
        if len(loads) == 3:
            raise MemoryError("simulated")
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(trial_module, "load_classifier", loader)
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results), "--n-trials", "2",
                 "--tracker", "mlflow"]) == 0
    out, err = capsys.readouterr()
    assert f"mlflow: tracking to {mlflow_server}" in err
    assert "tracker 'mlflow' failed" not in err
    link = re.search(rf"mlflow: tiny-topics -> ({re.escape(mlflow_server)}/#/experiments/\S+)", err).group(1)
    assert link.endswith("?workflowType=machine_learning"), "the UI's switch to training runs, not GenAI"
    assert "View run" not in out, "stdout carries only the leaderboard"

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "opens on training runs"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {run.data.tags["study"]: run for run in runs if PARENT not in run.data.tags}
    assert set(parents) == {"tiny-topics", "tiny-topic_pairs"}, "one parent run per study"
    storage = f"sqlite:///{results / 'optuna.db'}"
    states = set()
    for study_name, parent in parents.items():
        study = optuna.load_study(study_name=study_name, storage=storage)
        metric = study.user_attrs["metric"]
        parent_id = parent.info.run_id
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["dataset"] == study.user_attrs["dataset"]
        assert parent.data.tags["metric"] == metric
        assert parent.data.tags["optuna_storage"] == storage
        artifacts = {item.path for item in client.list_artifacts(parent_id, "leaderboard")}
        assert artifacts == {f"leaderboard/{name}" for name in (*RESULT_FILES, *REPORT_FILES)
                             if (results / name).is_file()}
        assert {f"leaderboard/{REPORT_FILE}", f"leaderboard/{EXPECTED_PERFORMANCE_PNG}"} <= artifacts
        best = client.get_metric_history(parent_id, f"study/best_{metric}")
        if study.get_trials(states=(TrialState.COMPLETE,)):
            assert max(best, key=lambda point: point.step).value == study.best_value
        else:
            assert not best, "no best value before a complete trial"

        children = {run.data.tags["trial_number"]: run for run in runs
                    if run.data.tags.get(PARENT) == parent_id}
        assert sorted(children) == sorted(str(trial.number) for trial in study.trials), \
            "one nested run per Optuna trial"
        for trial in study.trials:
            states.add(trial.state)
            run = children[str(trial.number)]
            run_id = run.info.run_id
            assert trial.user_attrs["mlflow_run_id"] == run_id
            assert run.data.params == {name: str(value) for name, value in trial.params.items()}
            assert (run.info.status, run.data.tags["state"]) == STATUS[trial.state]
            reason = trial.user_attrs.get("prune_reason") or trial.user_attrs.get("fail_reason")
            assert run.data.tags.get("state_reason") == reason
            assert run.data.tags["encoder"] == trial.params["encoder"]
            assert run.data.tags["dataset"] == study.user_attrs["dataset"]
            history = client.get_metric_history(run_id, f"eval/{metric}")
            assert sorted((point.step, point.value) for point in history) == \
                sorted(trial.intermediate_values.items()), "the curve Optuna saw, at the same steps"
            assert not {"eval/step", "eval/epoch"} & set(run.data.metrics), "no step counters as metrics"
            if trial.state == TrialState.COMPLETE:
                assert max(history, key=lambda m: m.step).value == trial.value
                assert run.data.metrics[metric] == trial.value, "the objective under the metric's name"
                # Train and eval curves on one x: training examples seen.
                steps = [point.step for point in client.get_metric_history(run_id, "train/loss")]
                batch = trial.params["batch_size"]
                assert sorted(steps) == [batch * step for step in range(1, trial.user_attrs["steps"] + 1)]
                assert {point.step for point in history} <= set(steps)
                assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "eval/loss",
                        "eval/accuracy", "eval/macro_f1", "eval/mcc"} <= set(run.data.metrics)
            else:
                assert metric not in run.data.metrics, "only a complete trial has an objective value"
    assert states == set(STATUS), "complete, pruned and failed trials all checked"


def test_an_unreachable_server_costs_the_study_nothing(tmp_path, tiny_encoders, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:hunter2@127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the default retries for minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results), "--datasets", "topics",
                 "--n-trials", "2", "--tracker", "mlflow"]) == 0
    err = capsys.readouterr().err
    assert err.count("tracker 'mlflow' failed") == 1
    assert "hunter2" not in err and "http://bob:***@127.0.0.1:1" in err
    study = optuna.load_study(study_name="tiny-topics", storage=f"sqlite:///{results / 'optuna.db'}")
    assert len(study.trials) == len(study.get_trials(states=FINISHED)) == 2
    assert not any("mlflow_run_id" in trial.user_attrs for trial in study.trials)


def _step(step: int) -> StepLog:
    return StepLog(step=step, loss=1.0 / step, learning_rate=1e-4, grad_norm=1.0, tokens_per_second=100.0)


def test_local_store_batches_reopens_and_closes_what_was_cut_short(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "results"
    tracker = mlflow_backend.MlflowTracker(results)
    uri = f"sqlite:///{results / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}" in capsys.readouterr().err
    requests = []
    real_log_batch = tracker.client.log_batch

    def counting_log_batch(run_id, **kwargs):
        requests.append(run_id)
        return real_log_batch(run_id, **kwargs)

    monkeypatch.setattr(tracker.client, "log_batch", counting_log_batch)
    news = StudyInfo("bench-news", "bench", "news", "accuracy", "sqlite:///o.db")
    tracker.start_study(news)
    run = tracker.start_trial("bench-news", 0, {"encoder": "bert", "learning_rate": 1e-4, "batch_size": 16},
                              {"study": "bench-news", "dataset": "news", "encoder": "bert"})
    run_id = run.links()["mlflow_run_id"]
    for step in range(1, 301):
        run.log_step(_step(step))
    run.log_evaluation(Evaluation(step=300, examples=4800, epoch=1.0, loss=0.3, metrics={"accuracy": 0.9}))
    run.finish("complete", None)
    # params, the full buffer (250 steps x 4 curves), the evaluation, the final tags
    assert requests.count(run_id) == 4
    table = tmp_path / "leaderboard.md"
    table.write_text("| encoder |\n")
    tracker.end_study("bench-news", [table])
    tracker.close()

    # A second process tops the study up: a parent run of its own, so that neither run's
    # duration counts the idle time between them. It is interrupted.
    again = mlflow_backend.MlflowTracker(results)
    again.start_study(news)
    cut = again.start_trial("bench-news", 1, {"encoder": "bert"}, {"study": "bench-news", "encoder": "bert"})
    cut.log_step(_step(1))
    again.close()
    # The study made anew (its storage deleted): trial 0 again, so a parent of its own.
    anew = mlflow_backend.MlflowTracker(results)
    anew.start_study(news)
    fresh = anew.start_trial("bench-news", 0, {"encoder": "bert"}, {"study": "bench-news", "encoder": "bert"})
    fresh.finish("pruned", "pruned after 48 examples")
    anew.end_study("bench-news", [])
    anew.close()

    client = MlflowClient(uri)
    assert [point.step for point in client.get_metric_history(run_id, "train/loss")] == \
        [16 * step for step in range(1, 301)], "x = examples seen = steps x batch size"
    finished = client.get_run(run_id)
    parent_id = finished.data.tags[PARENT]
    assert finished.info.status == "FINISHED" and finished.data.params["learning_rate"] == "0.0001"
    assert finished.data.metrics["accuracy"] == 0.9
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    interrupted = client.get_run(cut.links()["mlflow_run_id"])
    top_up_parent = client.get_run(interrupted.data.tags[PARENT])
    assert top_up_parent.info.run_id != parent_id and top_up_parent.data.tags["study"] == "bench-news"
    assert top_up_parent.info.start_time >= parent.info.end_time, "no idle gap inside a parent run"
    assert (interrupted.info.status, interrupted.data.tags["state"]) == ("KILLED", "interrupted")
    assert interrupted.data.tags["state_reason"] == "the harness stopped before the trial ended"
    assert len(client.get_metric_history(interrupted.info.run_id, "train/loss")) == 1, "flushed at close"
    assert top_up_parent.info.status == "KILLED", "its study never reached end_study"
    artifacts = [item.path for item in client.list_artifacts(parent_id, "leaderboard")]
    assert artifacts == ["leaderboard/leaderboard.md"]
    assert list((results / "mlartifacts").rglob("leaderboard.md")), "artifacts stay in the results dir"
    assert not (tmp_path / "mlruns").exists()
    fresh_run = client.get_run(fresh.links()["mlflow_run_id"])
    assert fresh_run.data.tags[PARENT] not in (parent_id, top_up_parent.info.run_id)
    assert (fresh_run.info.status, fresh_run.data.tags["state"], fresh_run.data.tags["state_reason"]) == \
        ("FINISHED", "pruned", "pruned after 48 examples")
    assert "accuracy" not in fresh_run.data.metrics
    assert client.get_run(fresh_run.data.tags[PARENT]).info.status == "FINISHED"


def test_after_a_failure_not_even_close_makes_a_request(tmp_path, monkeypatch, capsys):
    """An unreachable server costs minutes of retries per request: one failure must be the last."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    backend = mlflow_backend.MlflowTracker(tmp_path)
    tracker = Guarded(backend)
    tracker.start_study(StudyInfo("bench-news", "bench", "news", "accuracy", "sqlite:///o.db"))
    run = tracker.start_trial("bench-news", 0, {"encoder": "bert"}, {"encoder": "bert"})
    requests = []

    def gone(name):
        def request(*args, **kwargs):
            requests.append(name)
            raise ConnectionError("server gone")
        return request

    for name in ("log_batch", "set_terminated", "update_run", "create_run", "search_runs", "log_artifact"):
        monkeypatch.setattr(backend.client, name, gone(name))
    run.log_step(_step(1))  # buffered: no request yet
    run.log_evaluation(Evaluation(step=1, examples=8, epoch=0.1, loss=0.5, metrics={"accuracy": 0.5}))
    run.finish("complete", None)
    tracker.end_study("bench-news", [])
    tracker.close()
    assert requests == ["log_batch"]
    assert capsys.readouterr().err.count("tracker 'mlflow' failed") == 1


def test_workers_opening_a_fresh_local_store_at_once_all_get_it(tmp_path):
    """MLflow migrates a new database on first use; done by several processes at once it breaks."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = ("import sys; from benchmark.tracking.mlflow_backend import MlflowTracker; "
            "MlflowTracker(sys.argv[1]).client.search_experiments()")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "results")], env=env,
                                cwd=Path(__file__).parents[1], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err.decode()[-2000:]


def test_without_the_mlflow_package_the_tracker_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setattr(mlflow_backend, "MlflowClient", None)
    with pytest.raises(BenchmarkError, match=r"pip install -e '\.\[mlflow\]'"):
        mlflow_backend.MlflowTracker(tmp_path)


def test_a_file_store_uri_is_refused_before_any_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(BenchmarkError, match="--tracker mlflow: cannot use tracking URI file://"):
        mlflow_backend.MlflowTracker(tmp_path)
