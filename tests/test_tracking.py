"""The tracker interface: fan-out, fault isolation, and what reaches each backend."""

from __future__ import annotations

import pytest

from benchmark.errors import BenchmarkError
from benchmark.tracking import StudyInfo, make_tracker
from benchmark.tracking.base import Guarded, TrackerGroup
from benchmark.training import Evaluation, StepLog


class Recording:
    """A backend that records every call, and can be told to break at one of them."""

    name = "recording"

    def __init__(self, break_at: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.break_at = break_at
        self.closed = False

    def _hit(self, what: str, *args) -> None:
        if what == self.break_at:
            raise ConnectionError("server at postgresql://bob:hunter2@db/x is gone")
        self.calls.append((what, *args))

    def start_study(self, info):
        self._hit("start_study", info.study_name)
        return [lambda study, trial: self._hit("callback", trial)]

    def start_trial(self, study_name, trial_number, params, tags):
        self._hit("start_trial", trial_number)
        backend = self

        class Run:
            def links(self):
                return {"recording_run_id": f"R-{trial_number}"}

            def log_step(self, log):
                backend._hit("log_step", log.step)

            def log_evaluation(self, evaluation):
                backend._hit("log_evaluation", evaluation.step)

            def finish(self, state, reason):
                backend._hit("finish", state, reason)

        return Run()

    def end_study(self, study_name, attachments):
        self._hit("end_study", study_name, tuple(attachments))

    def close(self):
        self.closed = True


INFO = StudyInfo("bench-news", "bench", "news", "accuracy", "sqlite:///x.db")
STEP = StepLog(step=1, loss=0.5, learning_rate=1e-4, grad_norm=1.0, tokens_per_second=10.0)
EVALUATION = Evaluation(step=1, examples=16, epoch=0.5, loss=0.4, metrics={"accuracy": 0.9})


def _drive(tracker):
    callbacks = tracker.start_study(INFO)
    run = tracker.start_trial("bench-news", 0, {"lr": 1e-4}, {"dataset": "news", "encoder": "bert"})
    links = run.links()
    run.log_step(STEP)
    run.log_evaluation(EVALUATION)
    run.finish("pruned", "pruned after 16 examples")
    for callback in callbacks:
        callback(None, "trial-0")
    tracker.end_study("bench-news", [])
    tracker.close()
    return links


def test_group_fans_out_and_merges_links():
    first, second = Recording(), Recording()
    links = _drive(TrackerGroup([first, second]))
    assert links == {"recording_run_id": "R-0"}
    expected = [("start_study", "bench-news"), ("start_trial", 0), ("log_step", 1), ("log_evaluation", 1),
                ("finish", "pruned", "pruned after 16 examples"), ("callback", "trial-0"), ("end_study", "bench-news", ())]
    assert first.calls == expected and second.calls == expected
    assert first.closed and second.closed


@pytest.mark.parametrize("break_at", ["start_study", "start_trial", "log_step", "log_evaluation", "finish", "callback"])
def test_a_failing_tracker_is_reported_once_then_skipped(break_at, capsys):
    broken, healthy = Recording(break_at=break_at), Recording()
    _drive(TrackerGroup([Guarded(broken), healthy]))
    err = capsys.readouterr().err
    assert err.count("tracker 'recording' failed") == 1
    assert "hunter2" not in err and "bob:***@db" in err
    assert len(healthy.calls) == 7, "the healthy tracker saw everything"
    names = [call[0] for call in broken.calls]
    order = ["start_study", "start_trial", "log_step", "log_evaluation", "finish", "callback", "end_study"]
    assert names == order[:order.index(break_at)], "nothing reaches a tracker after it failed"
    assert broken.closed, "a failed tracker is still closed"


def test_unknown_tracker_is_refused_up_front(tmp_path):
    with pytest.raises(BenchmarkError, match="--tracker: unknown tracker wandb"):
        make_tracker(["wandb"], tmp_path)


def test_storage_url_in_study_info_must_be_masked():
    with pytest.raises(ValueError):
        StudyInfo("s", "b", "d", "accuracy", "postgresql://u:secret@h/db")


def test_neptune_and_mlflow_together_each_get_every_trial(tmp_path, tiny_encoders, monkeypatch):
    import optuna
    from mlflow import MlflowClient

    from benchmark.cli import main
    from tests.test_study import write_config

    for name in ("NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEPTUNE_MODE", "offline")
    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(tmp_path / "neptune"))
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results), "--datasets", "topics",
                 "--n-trials", "2", "--tracker", "neptune,mlflow"]) == 0

    study = optuna.load_study(study_name="tiny-topics", storage=f"sqlite:///{results / 'optuna.db'}")
    client = MlflowClient(f"sqlite:///{results.resolve() / 'mlflow.db'}")
    for trial in study.trials:
        assert trial.user_attrs["neptune_run_id"].startswith("offline/")
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["trial_number"] == str(trial.number)
    assert any((tmp_path / "neptune").rglob("*")), "neptune wrote its offline runs"
