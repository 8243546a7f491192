"""The study's pruner, built from the config, comparing each trial only with its own encoder's."""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from benchmark.config.spec import PrunerSpec
from benchmark.schema import ENCODER_PARAM
from benchmark.search.optuna_internals import encoder_view


# The pruners that never prune their first `n_startup_trials` trials, nor before `n_warmup_steps`.
STARTUP_PRUNERS = ("median", "percentile")


def make_pruner(spec: PrunerSpec) -> BasePruner:
    if spec.per_encoder and spec.type != "none":
        return PerEncoderPruner(lambda: _optuna_pruner(spec))
    return _optuna_pruner(spec)


def _optuna_pruner(spec: PrunerSpec) -> BasePruner:
    if spec.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials,
                                           n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "percentile":
        return optuna.pruners.PercentilePruner(spec.percentile, n_startup_trials=spec.n_startup_trials,
                                               n_warmup_steps=spec.n_warmup_steps)
    if spec.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource,
                                              reduction_factor=spec.reduction_factor)
    if spec.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_resource,
                                                      reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


class PerEncoderPruner(BasePruner):
    """Runs a separate pruner per encoder, each seeing only that encoder's trials.

    A stock pruner compares a trial with every trial of the study at the same step. In a
    study that compares encoders, a small encoder that learns more slowly per example is
    then pruned against a large one's curve before it has shown what it reaches, and the
    comparison loses its trials. Each encoder's pruner keeps its own state (Hyperband's
    brackets, for one), and its startup trials count that encoder's trials only.
    """

    def __init__(self, make_pruner: Callable[[], BasePruner]) -> None:
        self._make_pruner = make_pruner
        self._pruners: dict[object, BasePruner] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        encoder = trial.params.get(ENCODER_PARAM)
        pruner = self._pruners.setdefault(encoder, self._make_pruner())
        return pruner.prune(encoder_view(study, {encoder}, study.sampler, pruner), trial)
