"""The tracker interface: fan-out, fault isolation, and what reaches each backend."""

from __future__ import annotations

import pytest

from benchmark.errors import BenchmarkError
from benchmark.tracking import make_tracker
from benchmark.tracking.base import Guarded, StudyInfo, TrackerGroup
from benchmark.train.records import Evaluation, StepLog
from tests.helpers import write_config


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


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rendered(console_file, start: int) -> tuple[str, int]:
    """The plain text written to a fake terminal since `start`, and where it ends."""
    from rich.text import Text

    raw = console_file.getvalue()
    return Text.from_ansi(raw[start:]).plain, len(raw)


def test_live_progress_shows_trials_examples_loss_and_an_eta_on_a_terminal():
    import datetime
    import io

    import optuna
    from rich.console import Console

    from benchmark.tracking.progress import LiveProgress

    terminal, clock = io.StringIO(), FakeClock()
    display = LiveProgress(Console(file=terminal, force_terminal=True, width=200), clock=clock)
    info = StudyInfo("bench-news", "bench", "news", "accuracy", "sqlite:///x.db",
                     n_trials=4, finished=1, train_examples=100)
    callbacks = display.start_study(info)
    run = display.start_trial("bench-news", 1, {"batch_size": 16, "num_epochs": 2}, {"encoder": "bert"})
    for step in (1, 2, 3):
        clock.now = 2.0 * step
        run.log_step(StepLog(step=step, loss=1.0 / step, learning_rate=1e-4, grad_norm=1.0, tokens_per_second=10.0))
    display.progress.refresh()
    text, end = _rendered(terminal, 0)
    # 2 epochs x 6 full batches of 16 = 192 examples; 48 seen in 6 s = 8 examples/s, so
    # 144 left = 18 s, then 2 more trials of 192 / 8 = 24 s each: 66 s.
    assert "[news]" in text and "trials 1/4 finished" in text
    assert "trial 1 bert" in text and "48/192 examples" in text and "loss 0.3333" in text
    assert "ETA 1m 06s: this trial at 8.0 examples/s, then 2 x 0m 24s (this trial's rate)" in text

    run.finish("complete", None)
    start = datetime.datetime(2026, 1, 1)
    finished = optuna.trial.FrozenTrial(
        number=1, state=optuna.trial.TrialState.COMPLETE, value=0.9, datetime_start=start,
        datetime_complete=start + datetime.timedelta(seconds=30), params={}, distributions={},
        user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=1)
    for callback in callbacks:
        callback(None, finished)
    display.end_study("bench-news", [])
    text, _ = _rendered(terminal, end)
    assert "trials 2/4 finished" in text
    assert "ETA 1m 00s: 2 x 0m 30s (mean of 1 finished here)" in text
    display.close()


def test_without_a_terminal_the_log_lines_are_all_there_is(tmp_path, capsys, monkeypatch):
    import sys

    from benchmark.schema import WORKER_ENV

    group = make_tracker(["none"], tmp_path)  # pytest's captured stderr is no terminal
    assert [tracker.name for tracker in group._trackers] == ["console"]
    _drive(group)
    assert capsys.readouterr().err == (
        "[news] trial 0 bert step 1, 16 examples (epoch 0.50): loss=0.4000 accuracy=0.9000\n")

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert [tracker.name for tracker in make_tracker(["none"], tmp_path)._trackers] == ["console", "progress"]
    assert [tracker.name for tracker in make_tracker(["none"], tmp_path, live_display=False)._trackers] == [
        "console"], "the first of several workers: lines only"
    monkeypatch.setenv(WORKER_ENV, "0")
    assert [tracker.name for tracker in make_tracker(["none"], tmp_path)._trackers] == ["console"], \
        "workers share one terminal: lines only"
