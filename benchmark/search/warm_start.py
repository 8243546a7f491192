"""Warm start across datasets: a new study first tries the configurations that the same
encoder did best with on the benchmark's other datasets (`sampler.warm_start`).

One storage holds every dataset's study, so what an encoder liked elsewhere is at hand.
Only trial values are read, and a trial's value is its validation metric: no test score of
any dataset steers the search.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmark.config.spec import BenchmarkConfig, CategoricalParam, FloatParam
from benchmark.schema import BENCHMARK_ATTR, DATASET_ATTR, ENCODER_PARAM, WARM_START_ATTR
from benchmark.search.dataset_study import DatasetStudy
from benchmark.search.optuna_internals import storage_of, trials_of_every_study


def in_space(config: BenchmarkConfig, encoder: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` less those this config's space (with `encoder`'s overrides) does not hold;
    a dropped parameter is sampled as usual."""
    kept = {}
    for name, spec in config.search_space:
        if name not in params:
            continue
        value = params[name]
        if isinstance(spec, CategoricalParam):
            if value in spec.choices:
                kept[name] = value
            continue
        override = config.encoders[encoder].overrides.get(name)
        low, high = (override.low, override.high) if override else (spec.low, spec.high)
        if (isinstance(spec, FloatParam) or float(value).is_integer()) and low <= value <= high:
            kept[name] = value
    return kept


def best_configurations(sources: Iterable[tuple[str, Sequence[FrozenTrial]]], config: BenchmarkConfig,
                        encoders: Sequence[str], top_k: int) -> list[tuple[dict[str, Any], str]]:
    """(params, origin) to queue: for each source study (name, trials) and each of `encoders`,
    that encoder's `top_k` complete trials by value, in this config's space; rank by rank, so
    the encoders' first trials come first. A configuration already queued is not repeated."""
    ranked: list[tuple[int, int, dict[str, Any], str]] = []
    for source_index, (name, trials) in enumerate(sources):
        for encoder in encoders:
            own = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                   and t.params.get(ENCODER_PARAM) == encoder]
            own.sort(key=lambda t: (-t.value, t.number))
            for rank, trial in enumerate(own[:top_k]):
                params = {ENCODER_PARAM: encoder, **in_space(config, encoder, trial.params)}
                ranked.append((rank, source_index, params, f"{name} trial {trial.number}"))
    chosen: list[tuple[dict[str, Any], str]] = []
    for _, _, params, origin in sorted(ranked, key=lambda item: (item[0], item[1])):
        if all(params != seen for seen, _ in chosen):
            chosen.append((params, origin))
    return chosen


def enqueue_warm_start(study: optuna.Study, dataset_study: DatasetStudy) -> None:
    """Queue the other datasets' best configurations in a study that has no trial yet."""
    config = dataset_study.config
    if config.sampler.warm_start == "none" or study.get_trials(deepcopy=False):
        return
    sources = [(other.study_name, trials) for other, trials in trials_of_every_study(storage_of(study))
               if other.user_attrs.get(BENCHMARK_ATTR) == config.name
               and other.user_attrs.get(DATASET_ATTR) not in (None, dataset_study.data.name)]
    queued = best_configurations(sources, config, list(dataset_study.encoders), config.sampler.warm_start_top_k)
    for params, origin in queued:
        # skip_if_exists: workers starting together on a new study queue each one once.
        study.enqueue_trial(params, user_attrs={WARM_START_ATTR: origin}, skip_if_exists=True)
    print(f"[{dataset_study.data.name}] warm start: {len(queued)} configuration(s) queued from "
          f"{len(sources)} other dataset(s)' studies of {config.name}", file=sys.stderr, flush=True)
