"""The study's sampler, built from the config: each trial's encoder is chosen first, and
its other parameters are proposed from that encoder's trials only, with random draws seeded
by the trial's number."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from benchmark.config.spec import SamplerSpec
from benchmark.schema import ENCODER_PARAM
from benchmark.search.optuna_internals import encoder_view, enqueued_params


def make_sampler(spec: SamplerSpec, seed: int, dataset: str, encoders: Callable[[], Sequence[str]],
                 fixed_encoder: Callable[[], str] | None) -> PerEncoderSampler:
    """`fixed_encoder` names each trial's encoder (the balanced comparison); without it, a
    sampler of the config's type picks one of `encoders()` (those a trial may get now: an
    encoder can be stopped during the study) from those encoders' trials."""
    return PerEncoderSampler(lambda role_seed: _optuna_sampler(spec, role_seed), seed, dataset, encoders,
                             fixed_encoder)


def _optuna_sampler(spec: SamplerSpec, seed: int) -> BaseSampler:
    if spec.type == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.type == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    # One encoder's trials all have the same parameters and ranges, so the multivariate
    # TPE models them jointly without `group`.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials,
                                      multivariate=spec.multivariate)


def _role_seed(seed: int, *role: str) -> int:
    """The seed of one of the study's draws, from the run's seed and the draw's role (the
    dataset, then the encoder, the trial): every study draws its own stream, and an encoder's
    does not change when encoders are reordered. crc32, not `hash()`, which Python salts per
    process."""
    return int(np.random.SeedSequence([seed, *(zlib.crc32(part.encode()) for part in role)]).generate_state(1)[0])


def balanced_round_order(seed: int, dataset: str, round_index: int, encoders: Sequence[str]) -> list[str]:
    """The order in which the encoders take their trial of one round of the balanced
    rotation: a shuffle seeded by (run seed, dataset, round), so that trial slot k (and the
    draws that come with it) does not go to the same encoder in every round and study. Each
    encoder gets a key of its own, so the others keep their relative order when one is added
    or removed, and the config's order plays no part."""
    return sorted(encoders, key=lambda encoder: (_role_seed(seed, dataset, f"round {round_index}", encoder), encoder))


class PerEncoderSampler(BaseSampler):
    """Chooses each trial's encoder, then proposes the trial's other parameters from that
    encoder's trials only, within that encoder's ranges.

    One sampler over the whole study fits one model to every encoder's trials: the TPE
    proposing MPNet's learning rate would learn from MiniLM's trials, and where an encoder
    overrides a range, a proposal drawn from the other encoder's range falls back to
    independent sampling. Here each encoder has a sampler of its own, which reads the study
    through a view holding only that encoder's trials. Parameter names stay those of the
    search space, so Optuna's plots and the dashboard read the study as before.

    Each trial's draws come from a sampler seeded by the trial's number (and the encoder),
    made for that trial alone. Trial numbers are handed out by the storage, so processes
    sharing a study (`--workers`, or the same command on many machines) never draw alike,
    however they start; a resumed study does not replay its first draws; and trial k draws
    the same whichever process runs it, given the same trials before it. The samplers keep
    nothing between trials but their seed: the history they model is the study's.
    """

    def __init__(self, make_sampler: Callable[[int], BaseSampler], seed: int, dataset: str,
                 encoders: Callable[[], Sequence[str]], fixed_encoder: Callable[[], str] | None) -> None:
        self._make_sampler = make_sampler
        self._seed = seed
        self._dataset = dataset
        self._encoders = encoders
        self._fixed_encoder = fixed_encoder
        # Each trial's encoder and sampler by trial number, from `before_trial` (before the trial
        # suggests anything, when Optuna may already ask for the relative sample) to `after_trial`.
        self._trials: dict[int, tuple[str, BaseSampler]] = {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        encoder = self._choose_encoder(study, trial)
        sampler = self._make_sampler(_role_seed(self._seed, self._dataset, encoder, f"trial {trial.number}"))
        self._trials[trial.number] = (encoder, sampler)
        sampler.before_trial(self._view(study, encoder, sampler), trial)

    def _choose_encoder(self, study: optuna.Study, trial: FrozenTrial) -> str:
        # A trial queued with its parameters (a dead worker's trial, retried) keeps its encoder.
        queued = enqueued_params(trial).get(ENCODER_PARAM)
        if queued is not None:
            return queued
        if self._fixed_encoder is not None:
            return self._fixed_encoder()
        # Only the candidates' trials: the study may hold trials of encoders that this run
        # does not compare (`--encoders`) or has stopped, which the candidates' distribution
        # cannot hold.
        candidates = CategoricalDistribution(list(self._encoders()))
        chooser = self._make_sampler(_role_seed(self._seed, self._dataset, f"trial {trial.number}"))
        compared = encoder_view(study, candidates.choices, chooser, study.pruner)
        return chooser.sample_independent(compared, trial, ENCODER_PARAM, candidates)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        encoder, sampler = self._trials[trial.number]
        space = sampler.infer_relative_search_space(self._view(study, encoder, sampler), trial)
        # The encoder was chosen in `before_trial`; its own sampler must not propose another.
        space.pop(ENCODER_PARAM, None)
        return space

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        encoder, sampler = self._trials[trial.number]
        return sampler.sample_relative(self._view(study, encoder, sampler), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        encoder, sampler = self._trials[trial.number]
        if param_name == ENCODER_PARAM:
            return encoder
        return sampler.sample_independent(self._view(study, encoder, sampler), trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        encoder, sampler = self._trials.pop(trial.number)
        sampler.after_trial(self._view(study, encoder, sampler), trial, state, values)

    @staticmethod
    def _view(study: optuna.Study, encoder: str, sampler: BaseSampler) -> optuna.Study:
        return encoder_view(study, {encoder}, sampler, study.pruner)
