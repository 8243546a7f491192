"""One Optuna study per dataset, kept in the storage and topped up on every run."""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from benchmark import baselines
from benchmark.config import BenchmarkConfig
from benchmark.leaderboard import timeout_stop_text
from benchmark.pruning import make_pruner
from benchmark.sampling import PerEncoderSampler, make_sampler
from benchmark.storage import mask_password
from benchmark.tracking import StudyInfo
from benchmark.trial import ENCODER_PARAM, DatasetStudy, run_trial

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# Study user attributes that mark a study as ours and say how to read it.
BENCHMARK_ATTR = "benchmark"
DATASET_ATTR = "dataset"
METRIC_ATTR = "metric"
DATA_SEED_ATTR = "data_seed"


def study_name(config: BenchmarkConfig, dataset: str) -> str:
    return f"{config.name}-{dataset}"


WORKER_ENV = "ENCODER_BENCHMARK_WORKER"


def worker_offset() -> int:
    """0 for a lone process; distinct per `--workers` child and per machine otherwise."""
    index = os.environ.get(WORKER_ENV)
    if index is None:
        return 0
    return 1_000_003 * (int(index) + 1) + zlib.crc32(socket.gethostname().encode())


def study_sampler(study: optuna.Study, config: BenchmarkConfig, encoders: list[str], seed: int) -> PerEncoderSampler:
    """In the balanced comparison each trial gets the encoder with the fewest trials so far;
    in search mode the sampler picks it."""
    fixed_encoder = (lambda: next_balanced_encoder(study, encoders)) if config.comparison == "balanced" else None
    return make_sampler(config.sampler, seed, encoders, fixed_encoder)


def open_study(storage: optuna.storages.BaseStorage, dataset_study: DatasetStudy, seed: int) -> optuna.Study:
    config = dataset_study.config
    study = optuna.create_study(
        storage=storage,
        study_name=dataset_study.study_name,
        direction="maximize",  # every supported metric is higher-is-better
        pruner=make_pruner(config.pruner),
        load_if_exists=True,
    )
    # Offset by the trials already there, so a resumed study does not replay the first
    # run's random draws, and by the worker, so workers started together draw apart.
    study.sampler = study_sampler(study, config, list(dataset_study.encoders),
                                  seed + len(study.get_trials(deepcopy=False)) + worker_offset())
    data = dataset_study.data
    study.set_user_attr(BENCHMARK_ATTR, config.name)
    study.set_user_attr(DATASET_ATTR, data.name)
    study.set_user_attr(METRIC_ATTR, dataset_study.metric)
    study.set_user_attr(DATA_SEED_ATTR, config.training.seed)
    study.set_user_attr("label_names", list(data.label_names))
    study.set_user_attr("split_sizes", {split: len(getattr(data, split)) for split in ("train", "validation", "test")})
    study.set_user_attr("duplicates_dropped", data.duplicates_dropped)
    # This run's choice; a study topped up on another machine may hold trials of another
    # (each trial's own `precision` attribute says which).
    chosen = dataset_study.precision
    study.set_user_attr("precision", chosen.choice)
    study.set_user_attr("precision_timings", chosen.seconds_per_step)
    study.set_user_attr("precision_decided", chosen.basis)
    # The leaderboards' reference rows, computed once per study (seconds on a CPU). The test
    # split is scored here only as a reference number for the final table: nothing of the
    # search reads it.
    if not baselines.is_current(study.user_attrs.get(baselines.REFERENCE_ATTR), data):
        study.set_user_attr(baselines.REFERENCE_ATTR, baselines.reference_baselines(data))
    return study


SURPLUS_ATTR = "surplus"
_WAIT_FOR_OTHERS_S = 2.0


class SurplusTrial(Exception):
    """Another worker claimed the study's last trial between our count and our ask."""


def _claiming_states(storage: optuna.storages.BaseStorage) -> tuple[TrialState, ...]:
    """The trials that hold a place toward `n_trials`.

    Running trials count only where heartbeats tell a dead worker's trial from a live
    one. Elsewhere (journals) a dead worker's trial would hold its place for ever, so
    there workers may overshoot `n_trials` by a trial each instead.
    """
    return (*FINISHED, TrialState.RUNNING) if is_heartbeat_enabled(storage) else FINISHED


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=_claiming_states(study._storage))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def _guard_against_surplus(trial: optuna.Trial, n_trials: int, encoder: str, per_encoder: int | None) -> None:
    """Trial numbers are handed out in order, so the trials before this one decide
    whether it is still needed: exactly `n_trials` finish, however many workers race,
    and in a balanced comparison exactly `per_encoder` of them per encoder."""
    claiming = _claiming_states(trial.study._storage)
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=claiming) if t.number < trial.number]
    if len(earlier) >= n_trials:
        reason = "other workers already hold the study's trials"
    elif per_encoder is not None and sum(t.params.get(ENCODER_PARAM) == encoder for t in earlier) >= per_encoder:
        reason = f"other workers already hold {encoder}'s {per_encoder} trials"
    else:
        return
    trial.set_user_attr(SURPLUS_ATTR, True)
    trial.set_user_attr("fail_reason", f"surplus: {reason}")
    raise SurplusTrial()


def next_balanced_encoder(study: optuna.Study, encoders: list[str]) -> str:
    """The encoder with the fewest trials so far (finished, or running elsewhere); the
    config's order breaks ties."""
    claiming = study.get_trials(deepcopy=False, states=_claiming_states(study._storage))
    counts = Counter(t.params.get(ENCODER_PARAM) for t in claiming)
    return min(encoders, key=lambda encoder: (counts[encoder], encoders.index(encoder)))


def run_study(storage: optuna.storages.BaseStorage, storage_url: str, dataset_study: DatasetStudy,
              n_trials: int, timeout_s: float | None, seed: int) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished ones, or the time is up.

    Other workers may share the study (many processes or machines on one storage):
    a worker starts a trial only while finished plus running trials are short of
    `n_trials`, and waits while the last ones run elsewhere, in case their worker dies
    and its trial comes back to be retried (database storages; see `_claiming_states`).
    """
    study = open_study(storage, dataset_study, seed)
    name = dataset_study.data.name
    finished, running = _counts(study)
    if finished >= n_trials:
        print(f"[{name}] already has {finished} finished trials (target {n_trials}); nothing to run",
              file=sys.stderr)
        mark_timeout_stop(study, name, n_trials, timeout_s, list(dataset_study.encoders))
        return study
    print(f"[{name}] running up to {n_trials - finished} trial(s) toward {n_trials}", file=sys.stderr)
    tracker_callbacks = dataset_study.tracker.start_study(StudyInfo(
        study_name=study.study_name, benchmark=dataset_study.config.name, dataset=name,
        metric=dataset_study.metric, storage_url=mask_password(storage_url),
    ))
    callbacks = [settle_memory, progress_printer(name, dataset_study.metric, n_trials), *tracker_callbacks]
    encoders = list(dataset_study.encoders)
    per_encoder = dataset_study.config.trials_per_encoder(n_trials)

    def objective(trial: optuna.Trial) -> float:
        # Asked first (run_trial asks again and gets the same answer), so the guard knows it;
        # the sampler chose it before the trial started (see `sampling.PerEncoderSampler`).
        encoder = trial.suggest_categorical(ENCODER_PARAM, encoders)
        _guard_against_surplus(trial, n_trials, encoder, per_encoder)
        return run_trial(trial, dataset_study)

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        if is_heartbeat_enabled(storage):
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial is failed and requeued
        finished, running = _counts(study)
        if finished >= n_trials:
            break
        if finished + running >= n_trials:
            time.sleep(_WAIT_FOR_OTHERS_S)
            continue
        # A failed trial is recorded as failed; it never ends the study.
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
    mark_timeout_stop(study, name, n_trials, timeout_s, encoders)
    return study


TIMEOUT_STOP_ATTR = "timeout_stop"


def mark_timeout_stop(study: optuna.Study, name: str, n_trials: int, timeout_s: float | None,
                      encoders: list[str]) -> None:
    """Say so, and record it on the study, when the timeout left it short of `n_trials`;
    clear the mark once a later run has filled it. A study cut short compares fewer trials
    than planned, and nothing else in the tables would show it."""
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if not t.user_attrs.get(SURPLUS_ATTR)]
    if len(trials) >= n_trials:
        if study.user_attrs.get(TIMEOUT_STOP_ATTR) is not None:
            study.set_user_attr(TIMEOUT_STOP_ATTR, None)
        return
    counts = Counter(t.params.get(ENCODER_PARAM) for t in trials)
    stop = {"finished": len(trials), "n_trials": n_trials, "timeout_s": timeout_s,
            "per_encoder": {encoder: counts[encoder] for encoder in encoders}}
    study.set_user_attr(TIMEOUT_STOP_ATTR, stop)
    print(f"[{name}] {timeout_stop_text(stop)}: the comparison rests on fewer trials than planned; "
          "run the same command again to top the study up", file=sys.stderr, flush=True)


def settle_memory(study: optuna.Study, trial: FrozenTrial) -> None:
    """Between trials: collect the finished trial's cyclic garbage, then freeze what is left.

    What outlives a trial is the process's long-lived state (torch, transformers, the
    data: about half a million objects), which every full collection would traverse again:
    0.35 s after each trial on a 2-core CPU, and in the automatic collections during
    training. Frozen objects are never collected as cyclic garbage, so only what has
    outlived a trial, and will outlive the study, is frozen.
    """
    gc.collect()
    gc.freeze()


def progress_printer(name: str, metric: str, n_trials: int) -> Callable[[optuna.Study, FrozenTrial], None]:
    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = {state: sum(t.state == state and not t.user_attrs.get(SURPLUS_ATTR) for t in trials)
                  for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        if trial.user_attrs.get(SURPLUS_ATTR):
            return
        outcome = trial.state.name.lower()
        if trial.state == TrialState.COMPLETE:
            outcome += f" {metric}={trial.value:.4f}"
        elif trial.state == TrialState.PRUNED:
            outcome += f" ({trial.user_attrs.get('prune_reason', '')})"
        elif trial.state == TrialState.FAIL:
            outcome += f" ({trial.user_attrs.get('fail_reason', 'see the log above')})"
        best = max((t.value for t in trials if t.state == TrialState.COMPLETE), default=None)
        best_text = f"best {metric} {best:.4f}" if best is not None else "no complete trial yet"
        print(
            f"[{name}] trial {trial.number} {trial.params.get('encoder', '?')}: {outcome} | "
            f"{counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]}/{n_trials} finished: "
            f"{counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
            f"{counts[TrialState.FAIL]} failed | {best_text}",
            file=sys.stderr, flush=True,
        )

    return report
