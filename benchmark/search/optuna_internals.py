"""A study seen through some encoders' trials only, for the per-encoder pruner and sampler."""

from __future__ import annotations

from collections.abc import Collection, Container

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from benchmark.schema import ENCODER_PARAM


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
