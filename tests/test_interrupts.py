"""Ctrl-C and SIGTERM act where that is safe: at once within computation, after a write to the
storage or a tracker, never within one."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from benchmark import interrupts
from benchmark.schema import INTERRUPTED_ATTR
from benchmark.search.study import run_study
from tests.helpers import tiny_dataset_study


@pytest.fixture(autouse=True)
def _ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt here as in a terminal, also when the tests were started
    in the background (`.ci/run &`), where the shell has SIGINT ignored and Python then leaves
    it so: every test below would see no signal at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _signal_self(signum: int = signal.SIGINT) -> None:
    os.kill(os.getpid(), signum)


def test_a_deferred_signal_acts_where_the_block_ends_and_the_block_runs_to_its_end():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            _signal_self()
            done.append("after the signal")  # Python would have raised before this line
            done.append("the block's end")
    assert done == ["after the signal", "the block's end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is back"


def test_an_interruptible_block_acts_at_once_and_on_a_signal_that_came_before_it():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.interruptible():
                _signal_self()
                done.append("not reached")
    assert done == []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            _signal_self()
            done.append("deferred")
            with interrupts.interruptible():
                done.append("not reached")
    assert done == ["deferred"]


def test_a_write_inside_the_computation_finishes_and_the_computation_stops_right_after():
    """A callback of the training loop (deferred) inside its computation (interruptible)."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts.deferred():
            with interrupts.interruptible():
                with interrupts.deferred():
                    _signal_self()
                    done.append("written")
                done.append("not reached: the computation stops as the write ends")
    assert done == ["written"]


def test_sigterm_acts_through_the_handler_it_had_and_a_change_that_handler_makes_stands():
    class Stopped(KeyboardInterrupt):
        pass

    def once(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as the command line's: a second one is ignored
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, once)
    try:
        with pytest.raises(Stopped):
            with interrupts.deferred():
                _signal_self(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_error_in_the_block_still_lets_a_deferred_signal_act_and_the_notice_is_said_once(capsys):
    with pytest.raises(KeyboardInterrupt) as stopped:
        with interrupts.deferred("finishing the write first"):
            _signal_self()
            _signal_self()
            raise RuntimeError("the write failed")
    assert isinstance(stopped.value.__context__, RuntimeError)
    assert capsys.readouterr().err == "SIGINT: finishing the write first\n"


def test_outside_the_main_thread_nothing_changes():
    import threading

    seen = []

    def worker():
        with interrupts.deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


def test_ctrl_c_inside_a_storage_write_lets_the_write_finish_and_stops_the_trial(tmp_path, tiny_encoders,
                                                                                 monkeypatch):
    """Ctrl-C comes while the first checkpoint's value is being written. Python would raise
    within the storage call (where a connection pool's lock may be held, and the trial's own
    bookkeeping then waited on it for ever); now the value is written, and the trial stops
    right after, marked interrupted."""
    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders, encoders=("bert",))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    real = storage.set_trial_intermediate_value
    written = []

    def write_interrupted(trial_id, step, value):
        _signal_self()
        real(trial_id, step, value)
        written.append(step)

    monkeypatch.setattr(storage, "set_trial_intermediate_value", write_interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(storage, "sqlite:///db", dataset_study, n_trials=2, timeout_s=None, seed=0)
    trial, = optuna.load_study(study_name=dataset_study.study_name, storage=storage).trials
    assert len(written) == 1 and list(trial.intermediate_values) == written, "the write finished, and was the last"
    assert trial.state == TrialState.FAIL and trial.user_attrs[INTERRUPTED_ATTR] is True


def test_an_interrupted_trials_log_is_dropped_and_a_later_failure_of_that_number_is_not():
    """Optuna logs a stopped trial as failed, with the KeyboardInterrupt's traceback, then its
    value: both are dropped (the command says it in one line). A trial of the same number in a
    later study of the process (tests, the perf tools) that really fails is logged."""
    import logging

    from benchmark.search.trial import InterruptedTrialLog

    log = InterruptedTrialLog()

    def shown(message: str, error: BaseException | None = None) -> bool:
        return log.filter(logging.LogRecord("optuna", logging.WARNING, __file__, 0, message, None,
                                            (type(error), error, None) if error else None))

    assert not shown("Trial 0 failed with parameters: {} because of the following error: KeyboardInterrupt().",
                     KeyboardInterrupt())
    assert not shown("Trial 0 failed with value None.")
    assert shown("Trial 0 failed with parameters: {} because of the following error: ValueError('boom').",
                 ValueError("boom"))
    assert shown("Trial 0 failed with value None.")
