"""Pins what the harness relies on in Optuna's private API (benchmark/search/optuna_internals.py)
against the installed Optuna: an upgrade that moves any of it fails here, not in a study."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from benchmark.schema import FAIL_REASON_ATTR
from benchmark.search import optuna_internals
from benchmark.search.optuna_internals import (
    OPTIMIZE_LOGGER,
    encoder_view,
    enqueued_params,
    fail_stale_trials,
    heartbeat_enabled,
    stale_trial_retry_callback,
    storage_of,
    trials_of_every_study,
)

DISTRIBUTIONS = {"encoder": CategoricalDistribution(["bert", "roberta"]), "lr": FloatDistribution(1e-5, 1e-3)}


def _sqlite(tmp_path, name: str = "optuna.db", **heartbeat) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}", **heartbeat)


def test_heartbeat_enabled_tells_storages_with_heartbeats_from_the_rest(tmp_path):
    with_heartbeat = optuna.create_study(storage=_sqlite(tmp_path, heartbeat_interval=60, grace_period=120))
    assert heartbeat_enabled(storage_of(with_heartbeat))
    assert not heartbeat_enabled(storage_of(optuna.create_study(storage=_sqlite(tmp_path, "plain.db"))))
    assert not heartbeat_enabled(storage_of(optuna.create_study()))
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    assert not heartbeat_enabled(storage_of(optuna.create_study(storage=journal)))


def test_storage_of_a_study_reads_and_writes_its_trials(tmp_path):
    study = optuna.create_study(storage=_sqlite(tmp_path), study_name="s")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"encoder": "bert", "lr": 1e-4},
                                              distributions=DISTRIBUTIONS))
    stored = storage_of(study).get_all_trials(study._study_id)
    assert [(t.value, t.params["encoder"]) for t in stored] == [(0.5, "bert")]


def test_trials_of_every_study_in_name_order(tmp_path):
    storage = _sqlite(tmp_path)
    for name, values in (("b-news", [0.25, 0.5]), ("a-tweets", [0.75])):
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        study.set_user_attr("dataset", name)
        for value in values:
            study.add_trial(optuna.trial.create_trial(value=value, params={"encoder": "bert", "lr": 1e-4},
                                                      distributions=DISTRIBUTIONS))
    found = trials_of_every_study(storage)
    assert [(study.study_name, study.user_attrs["dataset"], [t.value for t in trials]) for study, trials in found] \
        == [("a-tweets", "a-tweets", [0.75]), ("b-news", "b-news", [0.25, 0.5])]


class _Recording(optuna.samplers.RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.fixed: list[dict] = []

    def before_trial(self, study, trial) -> None:
        self.fixed.append(enqueued_params(trial))


def test_enqueued_params_before_the_trial_is_sampled(tmp_path):
    sampler = _Recording()
    study = optuna.create_study(storage=_sqlite(tmp_path), sampler=sampler)
    study.enqueue_trial({"encoder": "roberta"})
    for _ in range(2):
        trial = study.ask()
        trial.suggest_categorical("encoder", ["bert", "roberta"])
        study.tell(trial, 0.5)
    assert sampler.fixed == [{"encoder": "roberta"}, {}]


def test_a_stale_trial_is_queued_again_with_its_parameters(tmp_path):
    """The heartbeat callback's retry: the dead worker's trial fails with the reason, and a
    waiting copy carries its parameters, which the sampler sees as fixed."""
    storage = _sqlite(tmp_path, heartbeat_interval=1, grace_period=1,
                      failed_trial_callback=stale_trial_retry_callback(max_retry=2))
    sampler = _Recording()
    study = optuna.create_study(storage=storage, sampler=sampler)
    dead = study.ask()
    dead.suggest_categorical("encoder", ["bert", "roberta"])
    encoder = dead.params["encoder"]
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    assert fail_stale_trials(study, "its process stopped reporting") == [dead.number]
    failed, waiting = study.get_trials()
    assert (failed.state, waiting.state) == (TrialState.FAIL, TrialState.WAITING)
    assert failed.user_attrs[FAIL_REASON_ATTR] == "its process stopped reporting"
    assert FAIL_REASON_ATTR not in waiting.user_attrs, "the retry has not failed"
    assert fail_stale_trials(study, "again") == [], "a failed trial is failed once"
    retried = study.ask()
    assert retried.suggest_categorical("encoder", ["bert", "roberta"]) == encoder
    assert sampler.fixed[-1] == {"encoder": encoder}


def test_the_retry_callback_under_its_old_name(monkeypatch):
    """Optuna renamed RetryFailedTrialCallback to RetryHeartbeatStaleTrialCallback."""
    assert isinstance(stale_trial_retry_callback(3), optuna.storages.RetryHeartbeatStaleTrialCallback)

    class OldName:
        def __init__(self, max_retry):
            self.max_retry = max_retry

    monkeypatch.delattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
    monkeypatch.setattr(optuna.storages, "RetryFailedTrialCallback", OldName, raising=False)
    made = optuna_internals.stale_trial_retry_callback(3)
    assert isinstance(made, OldName) and made.max_retry == 3


def test_a_failed_trial_is_logged_on_the_optimize_logger():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(OPTIMIZE_LOGGER)
    logger.addHandler(handler)
    try:
        study = optuna.create_study()

        def objective(trial):
            raise ValueError("boom")

        with pytest.raises(ValueError):
            study.optimize(objective, n_trials=1)
    finally:
        logger.removeHandler(handler)
    assert any(record.getMessage().startswith("Trial 0 failed") for record in records)


def test_encoder_view_shows_one_encoders_trials_and_writes_through(tmp_path):
    study = optuna.create_study(storage=_sqlite(tmp_path), direction="maximize")
    for encoder, value in (("bert", 0.25), ("roberta", 0.5), ("bert", 0.75)):
        study.add_trial(optuna.trial.create_trial(value=value, params={"encoder": encoder, "lr": 1e-4},
                                                  distributions=DISTRIBUTIONS))
    view = encoder_view(study, ["bert"], optuna.samplers.RandomSampler(seed=0), optuna.pruners.NopPruner())
    # what Optuna's samplers read: the study's trials through its storage
    assert [t.value for t in view.get_trials()] == [0.25, 0.75]
    assert [t.value for t in view._get_trials(deepcopy=False, use_cache=True)] == [0.25, 0.75]
    assert view.best_value == 0.75
    view.set_user_attr("written", True)
    assert study.user_attrs["written"] is True
