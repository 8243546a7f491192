"""Faults during a study: an encoder whose trials keep failing, `--encoders` on an
existing study, a max_length longer than an encoder's positions, the out-of-memory retry."""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from benchmark.cli import main
from benchmark.config.spec import load_config
from benchmark.schema import ENCODER_PARAM, FINISHED, STOPPED_ATTR
from benchmark.search import trial as trial_module
from benchmark.search.preflight import prepare_studies
from benchmark.search.study import study_sampler
from benchmark.train.encoders import max_tokens
from tests.helpers import ARCHITECTURES, run_cli, study_with_every_state, synthetic_config, write_config

# One epoch per trial: these tests are about the study loop, not the training.
ONE_EPOCH = {"search_space__num_epochs": {"type": "int", "low": 1, "high": 1}}


def _study_args(config, results, *more: str) -> tuple[str, ...]:
    # The timeout bounds the run where a fault would make the study loop for ever.
    return ("--study", "--config", str(config), "--datasets", "topics", "--results-dir", str(results),
            "--timeout", "60", *more)


def _load(results) -> optuna.Study:
    return optuna.load_study(study_name="tiny-topics", storage=f"sqlite:///{results / 'optuna.db'}")


def _outcomes(study: optuna.Study) -> Counter:
    return Counter((t.params[ENCODER_PARAM], "failed" if t.state == TrialState.FAIL else "finished")
                   for t in study.trials)


def _fail_encoders(monkeypatch, names: set[str]) -> None:
    """The named encoders' every trial fails while loading the model, as a bad config would."""
    load = trial_module.load_classifier

    def failing(encoder, *args, **kwargs):
        if encoder.name in names:
            raise ValueError(f"no weights for {encoder.name}\nsecond line of the message")
        return load(encoder, *args, **kwargs)

    monkeypatch.setattr(trial_module, "load_classifier", failing)


def test_an_encoder_that_keeps_failing_is_stopped_the_study_ends_and_a_later_run_retries_it_once(
        tmp_path, tiny_encoders, monkeypatch, capsys):
    _fail_encoders(monkeypatch, {"roberta"})
    results = tmp_path / "results"
    args = _study_args(write_config(tmp_path, tiny_encoders, **ONE_EPOCH), results, "--n-trials", "4")
    assert run_cli(*args) == 0
    out, err = capsys.readouterr()
    reason = "3 consecutive failed trials, the last: ValueError: no weights for roberta"
    assert err.count("stopped roberta") == 1
    assert f"[topics] stopped roberta after {reason}; the study goes on with the others\n" in err
    study = _load(results)
    # Balanced, 2 trials per encoder: bert's 2, and roberta's missing 2 are not waited for.
    assert _outcomes(study) == {("bert", "finished"): 2, ("roberta", "failed"): 3}
    assert study.user_attrs[STOPPED_ATTR] == {"roberta": reason}
    assert study.user_attrs.get("timeout_stop") is None  # ended by the stop, not the timeout
    said = f"roberta stopped after {reason}"
    assert pd.read_csv(results / "datasets.csv").loc[0, "stopped_encoders"] == said
    assert f"topics: {said}; a stopped encoder is compared on the trials it finished before" in out

    assert run_cli(*args) == 0
    err = capsys.readouterr().err
    assert f"[topics] retrying roberta, stopped by an earlier run after {reason}\n" in err
    assert "[topics] stopped roberta after 4 consecutive failed trials, the last: ValueError" in err
    assert _outcomes(_load(results)) == {("bert", "finished"): 2, ("roberta", "failed"): 4}


def test_a_run_whose_every_encoder_is_stopped_ends_and_exits_with_an_error(tmp_path, tiny_encoders, monkeypatch,
                                                                            capsys):
    _fail_encoders(monkeypatch, {"bert", "roberta"})
    results = tmp_path / "results"
    assert run_cli(*_study_args(write_config(tmp_path, tiny_encoders, **ONE_EPOCH), results)) == 2
    err = capsys.readouterr().err
    assert "; no encoder is left\n[topics] every encoder is stopped; the study ends\n" in err
    assert err.endswith(
        "error: every encoder was stopped by failed trials in a row in topics (bert: 3 consecutive failed trials, "
        "the last: ValueError: no weights for bert; roberta: 3 consecutive failed trials, the last: ValueError: "
        "no weights for roberta); fix the cause and run the same command again (it retries them)\n")
    assert _outcomes(_load(results)) == {("bert", "failed"): 3, ("roberta", "failed"): 3}
    assert pd.read_csv(results / "datasets.csv").loc[0, "stopped_encoders"].count("stopped after 3") == 2


def test_interrupted_and_surplus_trials_do_not_count_as_failures():
    from benchmark.search.study import consecutive_failures

    def trial(number, state, **attrs):
        return optuna.trial.create_trial(state=state, params={ENCODER_PARAM: "A"}, user_attrs=attrs,
                                         distributions={ENCODER_PARAM: optuna.distributions.CategoricalDistribution(
                                             ["A"])}, value=0.5 if state == TrialState.COMPLETE else None)

    trials = [trial(0, TrialState.FAIL), trial(1, TrialState.COMPLETE), trial(2, TrialState.FAIL),
              trial(3, TrialState.FAIL, interrupted=True), trial(4, TrialState.FAIL, surplus=True),
              trial(5, TrialState.FAIL)]
    for number, t in enumerate(trials):
        t.number = number
    assert [t.number for t in consecutive_failures(trials, "A")] == [2, 5]


@pytest.mark.parametrize("comparison", ["balanced", "search"])
def test_a_stopped_encoder_is_never_sampled_again(comparison):
    config = synthetic_config(comparison, {"type": "random"}, n_trials=12)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(STOPPED_ATTR, {"A": "3 consecutive failed trials, the last: ValueError: x"})
    study.sampler = study_sampler(study, config, "toy", ["A", "B"], seed=0)
    study.optimize(lambda t: float(t.suggest_categorical(ENCODER_PARAM, ["A", "B"]) == "B"), n_trials=12)
    assert [t.params[ENCODER_PARAM] for t in study.trials] == ["B"] * 12


@pytest.mark.parametrize(("encoder", "max_length", "limit"), [("bert", 161, 160), ("roberta", 160, 159)])
def test_a_max_length_beyond_an_encoders_positions_is_refused_before_training(
        tmp_path, tiny_encoders, capsys, encoder, max_length, limit):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert", "roberta"), training__max_length=max_length)
    assert run_cli(*_study_args(config, tmp_path / "results")) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        f"error: training.max_length: {max_length} tokens is more than encoders.{encoder} can read ({limit}, "
        f"from its config's max_position_embeddings); set training.max_length to at most {limit}\n")
    assert "trial" not in err


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_max_tokens_is_the_longest_input_the_model_takes(tiny_encoders, architecture):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_encoders[architecture]).eval()
    limit = max_tokens(model.config)

    def forward(length: int) -> None:
        with torch.inference_mode():
            model(input_ids=torch.full((1, length), 5), attention_mask=torch.ones(1, length, dtype=torch.long))

    forward(limit)
    with pytest.raises((IndexError, RuntimeError)):
        forward(limit + 1)


def test_narrowing_the_encoders_of_an_existing_study_runs_and_the_leaderboard_keeps_both(
        tmp_path, tiny_encoders, capsys):
    results = tmp_path / "results"
    config = write_config(tmp_path, tiny_encoders, **ONE_EPOCH)
    assert run_cli(*_study_args(config, results, "--n-trials", "2")) == 0
    assert run_cli(*_study_args(config, results, "--encoders", "bert", "--n-trials", "3")) == 0
    study = _load(results)
    assert _outcomes(study) == {("bert", "finished"): 2, ("roberta", "finished"): 1}
    assert study.trials[2].params[ENCODER_PARAM] == "bert"
    assert set(pd.read_csv(results / "leaderboard.csv")["encoder"]) >= {"bert", "roberta"}


def test_a_study_created_with_fewer_encoders_takes_the_rest_of_the_file_but_not_a_new_one(
        tmp_path, tiny_encoders, capsys):
    results = tmp_path / "results"
    config = write_config(tmp_path, tiny_encoders, **ONE_EPOCH)
    assert run_cli(*_study_args(config, results, "--encoders", "bert", "--n-trials", "1")) == 0
    assert run_cli(*_study_args(config, results, "--n-trials", "4")) == 0
    assert _outcomes(_load(results)) == {("bert", "finished"): 2, ("roberta", "finished"): 2}
    widened = write_config(tmp_path, tiny_encoders, encoders=("bert", "roberta", "albert"), budget__n_trials=6,
                           **ONE_EPOCH)
    capsys.readouterr()
    assert run_cli(*_study_args(widened, results, "--n-trials", "6")) == 2
    err = capsys.readouterr().err
    assert err.endswith(
        "error: encoders: study 'tiny-topics' was created with the encoders bert, roberta, and an Optuna study "
        "cannot take another choice of `encoder`, so albert cannot join it; compare albert in a new study "
        f"(another `name` in {widened}, or another --storage)\n")
    assert "encoder albert: resolving" not in err  # refused before loading anything


class _RecordingPruner(optuna.pruners.BasePruner):
    """Never prunes; records the step the pruner is asked at (the trial's last reported one)."""

    def __init__(self) -> None:
        self.asked_at: list[int] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.asked_at.append(trial.last_step)
        return False


def test_out_of_memory_retry_reports_only_new_checkpoints_halves_the_evaluation_batch_and_keeps_the_seconds(
        tmp_path, tiny_encoders, monkeypatch):
    config = load_config(write_config(
        tmp_path, tiny_encoders, encoders=("bert",), search_space__batch_size={"type": "categorical", "choices": [8]},
        search_space__num_epochs={"type": "int", "low": 2, "high": 2})).restricted(["topics"], None)
    dataset_study = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path).studies[0]
    real = trial_module.fine_tune
    attempts = []
    # The configured evaluation batch (32), not one sized to this host's memory: the retry halves it.
    monkeypatch.setattr(trial_module, "available_device_memory", lambda device: None)

    def fine_tune(model, train, validation, num_labels, hp, settings, on_step, on_evaluation, progress):
        attempt = {"settings": settings, "seconds_before": progress.train_seconds}
        attempts.append(attempt)
        if len(attempts) == 1:
            def then_out_of_memory(evaluation):
                on_evaluation(evaluation)
                if len(progress.evaluations) == 2:  # the failed attempt reported 2 checkpoints
                    attempt["seconds_at_failure"] = progress.train_seconds
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return real(model, train, validation, num_labels, hp, settings, on_step, then_out_of_memory, progress)
        result = real(model, train, validation, num_labels, hp, settings, on_step, on_evaluation, progress)
        attempt["seconds_after"] = progress.train_seconds
        return result

    monkeypatch.setattr(trial_module, "fine_tune", fine_tune)
    pruner = _RecordingPruner()
    study = optuna.create_study(direction="maximize", pruner=pruner)
    study.optimize(lambda t: trial_module.run_trial(t, dataset_study), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    # 96 training examples (120 less validation and test): 12 steps of 8 per epoch, 2 epochs,
    # checkpoints every 48 examples. The failed attempt reported 48 and 96; the retry only
    # what lies beyond, and the pruner was asked once per checkpoint, in order.
    assert sorted(trial.intermediate_values) == [48, 96, 144, 192]
    assert pruner.asked_at == [48, 96, 144]
    failed, retried = attempts
    assert (retried["settings"].micro_batch_size, retried["settings"].eval_batch_size) == (4, 16)
    assert retried["seconds_before"] == failed["seconds_at_failure"] > 0
    assert trial.user_attrs["train_seconds"] == round(retried["seconds_after"], 3)
    assert trial.user_attrs["oom_retry"] == (f"OutOfMemoryError after {failed['seconds_at_failure']:.1f} s of "
                                             f"training; retried with micro-batch 4 and evaluation batch 16")


def test_a_rerun_after_kill_9_says_what_it_waits_for_and_why_the_dead_trial_failed(
        tmp_path, tiny_encoders, capsys, monkeypatch):
    """A rerun after `kill -9` waits for the dead trial's heartbeat to go stale: it
    says so while it waits, and the dead trial fails with its reason, not in silence."""
    from benchmark.config.spec import HeartbeatSpec
    from benchmark.search import study as study_module
    from benchmark.search.storage import open_storage

    heartbeat = {"interval_s": 1, "grace_s": 3, "max_retries": 1}
    results = tmp_path / "results"
    args = _study_args(write_config(tmp_path, tiny_encoders, encoders=("bert",), heartbeat=heartbeat, **ONE_EPOCH),
                       results)
    assert run_cli(*args, "--n-trials", "1") == 0
    # What a process killed mid-trial leaves: a running trial whose heartbeats stopped.
    storage = open_storage(f"sqlite:///{results / 'optuna.db'}", HeartbeatSpec(**heartbeat))
    killed = optuna.load_study(study_name="tiny-topics", storage=storage).ask()
    killed.suggest_categorical(ENCODER_PARAM, ["bert"])
    open_study = study_module.open_study

    def killed_just_before(*args, **kwargs):  # however long the rerun takes to load
        storage.record_heartbeat(killed._trial_id)
        return open_study(*args, **kwargs)

    monkeypatch.setattr(study_module, "open_study", killed_just_before)
    capsys.readouterr()

    assert run_cli(*args, "--n-trials", "2") == 0
    err = capsys.readouterr().err
    assert ("[topics] waiting for 1 trial(s) running elsewhere, in another worker or in a process that stopped: "
            "such a trial is failed and queued again once it has sent no heartbeat for 3 s (heartbeat.grace_s)\n"
            in err)
    assert err.count("waiting for") == 1, "said once, not every poll"
    reason = "its process stopped reporting (no heartbeat for 3 s)"
    assert f"[topics] trial 1 failed: {reason}; its parameters are queued again" in err
    study = _load(results)
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].user_attrs["fail_reason"] == reason
    assert study.trials[2].state in FINISHED and "fail_reason" not in study.trials[2].user_attrs, "the retry ran"


# Full disks, without root: the writes are refused as a full disk refuses them.

def _no_space(*args) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *args)


def test_a_results_dir_too_small_for_the_report_is_one_line_and_leaves_nothing_half_written(
        tmp_path, capsys, monkeypatch):
    from benchmark import files

    url = f"sqlite:///{tmp_path / 'full.db'}"
    study_with_every_state(url)
    real_fdopen = os.fdopen

    class SmallDisk:
        """The report (megabytes) does not fit; the tables (bytes) do."""

        def __init__(self, handle, mode):
            self.file = real_fdopen(handle, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, content):
            if len(content) > 1_000_000:
                self.file.write(content[:4096])  # what fitted
                raise _no_space()
            return self.file.write(content)

    monkeypatch.setattr(files, "os", SimpleNamespace(**{**vars(os), "fdopen": SmallDisk}))
    results = tmp_path / "results"
    assert main(["--leaderboard", "--storage", url, "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --results-dir: cannot write {results / 'report.html'} (No space left on device); "
                   "nothing half-written is left, and the storage keeps every trial: free space (or choose another "
                   "--results-dir) and run --leaderboard to write the tables\n")
    assert not (results / "report.html").exists()
    assert not [path.name for path in results.iterdir() if path.name.startswith(".")], "no temporary file left"


def test_a_results_dir_without_room_for_the_report_is_refused_before_training(tmp_path, tiny_encoders, capsys,
                                                                                monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9 - 10**6,
                                                                           free=10**6))
    results = tmp_path / "results"
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    assert run_cli(*_study_args(config, results)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --results-dir: {results} has 1.0 MB free, and the report and tables need about ")
    assert err.endswith(" MB; free space or choose another directory\n") and err.count("\n") == 1
    assert not (results / "optuna.db").exists(), "refused before the storage was opened"


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write_and_an_interrupted_one_leaves_none(
        tmp_path, monkeypatch):
    from benchmark import files

    target = tmp_path / "report.html"
    stale, live = tmp_path / ".report.html.killed", tmp_path / ".report.html.another_worker"
    for path in (stale, live):
        path.write_bytes(b"")
    old = time.time() - files.STALE_TEMPORARY_S - 60
    os.utime(stale, (old, old))
    files.write_atomic(target, "<html>")
    assert sorted(path.name for path in tmp_path.iterdir()) == [".report.html.another_worker", "report.html"]

    real_fdopen = os.fdopen

    def interrupted(handle, mode):
        real_fdopen(handle, mode).close()
        raise KeyboardInterrupt

    monkeypatch.setattr(files, "os", SimpleNamespace(**{**vars(os), "fdopen": interrupted}))
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(target, "<html> new")
    assert target.read_text() == "<html>"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".report.html.another_worker", "report.html"]


def _refuse_storage_writes(monkeypatch, heal_after: int | None, first: str = "set_trial_intermediate_value") -> None:
    """From the first call of `first` on (by default: a trial's first evaluation), every write
    to an SQLite storage fails as on a full disk (or only the first `heal_after` of them)."""
    import sqlite3

    refused: list[str] = []
    full = False

    def refusing(method: str):
        real = getattr(optuna.storages.RDBStorage, method)

        def write(self, *args, **kwargs):
            nonlocal full
            full = full or method == first
            if full and (heal_after is None or len(refused) < heal_after):
                refused.append(method)
                try:
                    raise sqlite3.OperationalError("database or disk is full")
                except sqlite3.OperationalError as driver_error:
                    raise optuna.exceptions.StorageInternalError(
                        "An exception is raised during the commit. This typically happens due to invalid data in "
                        "the commit, e.g. exceeding max length. ") from driver_error
            return real(self, *args, **kwargs)

        return write

    for method in ("set_trial_intermediate_value", "set_trial_user_attr", "set_trial_state_values",
                   "set_trial_param", "set_study_user_attr", "record_heartbeat"):
        monkeypatch.setattr(optuna.storages.RDBStorage, method, refusing(method))


def test_a_full_storage_disk_mid_trial_is_one_line_and_says_the_trial_stays_running(
        tmp_path, tiny_encoders, capsys, monkeypatch):
    results = tmp_path / "results"
    args = _study_args(write_config(tmp_path, tiny_encoders, encoders=("bert",), **ONE_EPOCH), results)
    _refuse_storage_writes(monkeypatch, heal_after=None)
    assert run_cli(*args, "--n-trials", "1", "--datasets", "topics") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Should not reach" not in err, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert error_lines == [
        f"error: --storage: sqlite:///{results / 'optuna.db'} refused a write (database or disk is full); trial 0 "
        "stays RUNNING there, since no write gets through, until a later run fails it 90 s after its last "
        "heartbeat; free space on its disk (or check its server) and run the same command again"], err
    monkeypatch.undo()
    assert _load(results).trials[0].state == TrialState.RUNNING


def test_a_storage_that_refuses_one_write_mid_trial_gets_the_trial_failed_with_the_reason(
        tmp_path, tiny_encoders, capsys, monkeypatch):
    results = tmp_path / "results"
    args = _study_args(write_config(tmp_path, tiny_encoders, encoders=("bert",), **ONE_EPOCH), results)
    # The report of the value, the trial's failure reason and its cost, then Optuna's record of
    # its failure are refused: the storage takes writes again only after Optuna gave up.
    _refuse_storage_writes(monkeypatch, heal_after=4)
    assert run_cli(*args, "--n-trials", "1", "--datasets", "topics") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Should not reach" not in err, err
    assert err.endswith(
        f"error: --storage: sqlite:///{results / 'optuna.db'} refused a write (database or disk is full); trial 0 "
        "is marked failed with this reason; free space on its disk (or check its server) and run the same "
        "command again\n"), err
    monkeypatch.undo()
    trial = _load(results).trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "the storage refused a write: database or disk is full"


def test_a_full_storage_disk_before_any_trial_is_one_line(tmp_path, tiny_encoders, capsys, monkeypatch):
    results = tmp_path / "results"
    args = _study_args(write_config(tmp_path, tiny_encoders, encoders=("bert",), **ONE_EPOCH), results)
    _refuse_storage_writes(monkeypatch, heal_after=None, first="set_study_user_attr")
    assert run_cli(*args, "--n-trials", "1") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert err.endswith(f"error: --storage: sqlite:///{results / 'optuna.db'} refused a write (database or disk is "
                        "full); free space on its disk (or check its server) and run the same command again\n"), err
