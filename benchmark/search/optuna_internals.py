"""Every use of Optuna's private API, in one place.

The harness needs a few things Optuna has no public API for: whether a storage runs
heartbeats, a study's storage and id, which of its running trials stopped beating, how to
fail a running trial, the parameters an enqueued trial is fixed to, the logger of the
optimize loop, and a study seen through some encoders' trials only (for the per-encoder
pruner and sampler). tests/test_optuna_internals.py pins each against the installed
Optuna, so an upgrade that moves one fails a test instead of a study.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container
from copy import deepcopy
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from benchmark.schema import ENCODER_PARAM, FAIL_REASON_ATTR

# The logger of `Study.optimize`'s loop, which logs a trial's failure with its traceback.
OPTIMIZE_LOGGER = "optuna.study._optimize"


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether `storage` runs heartbeats, so that a RUNNING trial is known to be alive."""
    return is_heartbeat_enabled(storage)


def fail_stale_trials(study: optuna.Study, reason: str) -> list[int]:
    """`optuna.storages.fail_stale_trials`, with `reason` stored on each failed trial (Optuna
    stores none) but not on its retry. Returns the numbers of the trials failed here.

    The reason is written while the trial still runs (a finished trial takes no attribute);
    a trial that a slow process finishes in between keeps it, stale, beside its COMPLETE.
    """
    storage = study._storage
    failed = []
    for trial_id in storage._get_stale_trial_ids(study._study_id):
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, reason)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed by another worker, or finished by its own at the last moment
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial in failed:
        if retry is not None:
            # The retry copies the trial's attributes: not the reason why this one failed.
            retry(study, _without_user_attr(trial, FAIL_REASON_ATTR))
    return [trial.number for trial in failed]


def fail_running_trial(study: optuna.Study, number: int, reason: str) -> bool:
    """Fail trial `number`, if it still runs, with `reason`; whether the storage took it (a full
    disk takes no write at all)."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    if trial.state != TrialState.RUNNING:
        return False
    try:
        study._storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
        return study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except (optuna.exceptions.OptunaError, OSError):
        return False


def _without_user_attr(trial: FrozenTrial, key: str) -> FrozenTrial:
    copy = deepcopy(trial)
    copy.user_attrs.pop(key, None)
    return copy


def trials_of_every_study(storage: optuna.storages.BaseStorage) -> list[tuple[FrozenStudy, list[FrozenTrial]]]:
    """Each study of `storage` with its trials, in name order, read straight from the storage
    (`optuna.load_study` per study would build a sampler for each)."""
    studies = sorted(storage.get_all_studies(), key=lambda study: study.study_name)
    return [(study, storage.get_all_trials(study._study_id, deepcopy=False)) for study in studies]


def enqueued_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters fixed before `trial` is sampled: by `Study.enqueue_trial` (kept in a
    system attribute until suggested), or by the stale-trial callback, which queues a dead
    worker's trial again with its parameters set. {} for a trial of the sampler's own."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def stale_trial_retry_callback(max_retry: int) -> Callable[[optuna.storages.BaseStorage, FrozenTrial], None]:
    """Optuna's callback that queues a dead worker's trial again: `RetryHeartbeatStaleTrialCallback`
    since Optuna renamed it, `RetryFailedTrialCallback` before."""
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    return retry(max_retry=max_retry)


def encoder_view(study: optuna.Study, encoders: Collection[object], sampler: BaseSampler,
                 pruner: BasePruner) -> optuna.Study:
    """`study` as if it held only the trials of `encoders`; writes pass through.

    The filter sits in the storage, not in `study.get_trials`, because that is what every
    reader reaches: Optuna's samplers read `study._get_trials` (and its per-study trial
    cache), Hyperband builds its bracket studies on `study._storage`. Make a view for each
    use: its trial cache is never cleared, so a kept view would go stale.
    """
    return optuna.Study(study.study_name, _EncoderStorage(study._storage, encoders), sampler, pruner)


class _EncoderStorage:
    """A study's storage in which the study holds only some encoders' trials; writes pass through."""

    def __init__(self, storage: optuna.storages.BaseStorage, encoders: Collection[object]) -> None:
        self._storage = storage
        self._encoders = frozenset(encoders)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if t.params.get(ENCODER_PARAM) in self._encoders]

    def __getattr__(self, name: str):
        return getattr(self._storage, name)
