"""One Optuna study per dataset, kept in the storage and topped up on every run."""

from __future__ import annotations

import gc
import sys
import time
from collections import Counter
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmark import interrupts
from benchmark.config import provenance
from benchmark.config.spec import BenchmarkConfig
from benchmark.errors import BenchmarkError
from benchmark.redaction import mask_password
from benchmark.schema import (
    BENCHMARK_ATTR,
    DATA_SEED_ATTR,
    DATASET_ATTR,
    DUPLICATES_DROPPED_ATTR,
    ENCODER_CHOICES_ATTR,
    ENCODER_PARAM,
    FAIL_REASON_ATTR,
    FINISHED,
    INTERRUPTED_ATTR,
    LABEL_NAMES_ATTR,
    METRIC_ATTR,
    PRUNE_REASON_ATTR,
    REFERENCE_ATTR,
    STOPPED_ATTR,
    SURPLUS_ATTR,
    TIMEOUT_STOP_ATTR,
    timeout_stop_text,
)
from benchmark.search import lineage
from benchmark.search.dataset_study import DatasetStudy
from benchmark.search.optuna_internals import fail_running_trial, fail_stale_trials, heartbeat_enabled, storage_of
from benchmark.search.pruning import make_pruner
from benchmark.search.sampling import PerEncoderSampler, balanced_round_order, make_sampler
from benchmark.search.storage import refused_write
from benchmark.search.trial import run_trial
from benchmark.search.warm_start import enqueue_warm_start
from benchmark.tracking.base import StudyInfo
from benchmark.tracking.dashboard import study_note_writer
from benchmark.train import baselines


def study_sampler(study: optuna.Study, config: BenchmarkConfig, dataset: str, encoders: list[str],
                  seed: int) -> PerEncoderSampler:
    """In the balanced comparison each trial gets the next encoder of the rotation; in search
    mode the sampler picks it. The draws follow `seed`, the dataset and the trial's number,
    the rotation `seed` and the dataset, so that every worker assigns the same slots."""
    def candidates() -> list[str]:
        return active_encoders(study, encoders)

    fixed_encoder = ((lambda: next_balanced_encoder(study, candidates(), seed, dataset))
                     if config.comparison == "balanced" else None)
    return make_sampler(config.sampler, seed, dataset, candidates, fixed_encoder)


def open_study(storage: optuna.storages.BaseStorage, dataset_study: DatasetStudy, seed: int) -> optuna.Study:
    config = dataset_study.config
    study = optuna.create_study(
        storage=storage,
        study_name=dataset_study.study_name,
        direction="maximize",  # every supported metric is higher-is-better
        pruner=make_pruner(config.pruner),
        load_if_exists=True,
    )
    # Seeded per trial number (see `PerEncoderSampler`): a resumed study does not replay the
    # first run's draws, and workers started together draw apart.
    study.sampler = study_sampler(study, config, dataset_study.data.name, list(dataset_study.encoders), seed)
    data = dataset_study.data
    study.set_user_attr(BENCHMARK_ATTR, config.name)
    study.set_user_attr(DATASET_ATTR, data.name)
    study.set_user_attr(METRIC_ATTR, dataset_study.metric)
    # optuna-dashboard and optuna.visualization name the objective by it ("Objective 0" without).
    study.set_metric_names([dataset_study.metric])
    study.set_user_attr(DATA_SEED_ATTR, config.training.seed)
    study.set_user_attr(ENCODER_CHOICES_ATTR, list(dataset_study.encoder_choices))
    study.set_user_attr(LABEL_NAMES_ATTR, list(data.label_names))
    lineage.record(study, data, config)  # refused by preflight where this run's differ
    study.set_user_attr(DUPLICATES_DROPPED_ATTR, data.duplicates_dropped)
    for name, value in provenance.study_attrs(config).items():  # what the report's header names
        study.set_user_attr(name, value)
    # The leaderboards' reference rows, computed once per study (seconds on a CPU). The test
    # split is scored here only as a reference number for the final table: nothing of the
    # search reads it.
    if not baselines.is_current(study.user_attrs.get(REFERENCE_ATTR), data):
        study.set_user_attr(REFERENCE_ATTR, baselines.reference_baselines(data))
    return study


_WAIT_FOR_OTHERS_S = 2.0


def refused_write_text(storage_url: str, said: str, study: optuna.Study, number: int | None, grace_s: int) -> str:
    """One line for a write the storage refused mid-trial, after failing trial `number` (the one
    this process started last) with the reason where the storage still takes a write."""
    text = f"--storage: {mask_password(storage_url)} refused a write ({said})"
    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if number in running:
        if fail_running_trial(study, number, f"the storage refused a write: {said}"):
            text += f"; trial {number} is marked failed with this reason"
        else:
            text += (f"; trial {number} stays RUNNING there, since no write gets through, until a later run "
                     f"fails it {grace_s} s after its last heartbeat")
    return text + "; free space on its disk (or check its server) and run the same command again"


def stale_trial_reason(grace_s: int) -> str:
    return f"its process stopped reporting (no heartbeat for {grace_s} s)"


class SurplusTrial(Exception):
    """Another worker claimed the study's last trial between our count and our ask."""


def _claiming_states(storage: optuna.storages.BaseStorage) -> tuple[TrialState, ...]:
    """The trials that hold a place toward `n_trials`.

    Running trials count only where heartbeats tell a dead worker's trial from a live
    one. Elsewhere (journals) a dead worker's trial would hold its place for ever, so
    there workers may overshoot `n_trials` by a trial each instead.
    """
    return (*FINISHED, TrialState.RUNNING) if heartbeat_enabled(storage) else FINISHED


def _counts(study: optuna.Study) -> tuple[int, int]:
    trials = study.get_trials(deepcopy=False, states=_claiming_states(storage_of(study)))
    finished = sum(t.state in FINISHED for t in trials)
    return finished, len(trials) - finished


def _guard_against_surplus(trial: optuna.Trial, n_trials: int, encoder: str, per_encoder: int | None) -> None:
    """Trial numbers are handed out in order, so the trials before this one decide
    whether it is still needed: exactly `n_trials` finish, however many workers race,
    and in a balanced comparison exactly `per_encoder` of them per encoder."""
    claiming = _claiming_states(storage_of(trial.study))
    earlier = [t for t in trial.study.get_trials(deepcopy=False, states=claiming) if t.number < trial.number]
    if len(earlier) >= n_trials:
        reason = "other workers already hold the study's trials"
    elif per_encoder is not None and sum(t.params.get(ENCODER_PARAM) == encoder for t in earlier) >= per_encoder:
        reason = f"other workers already hold {encoder}'s {per_encoder} trials"
    else:
        return
    trial.set_user_attr(SURPLUS_ATTR, True)
    trial.set_user_attr(FAIL_REASON_ATTR, f"surplus: {reason}")
    raise SurplusTrial()


def next_balanced_encoder(study: optuna.Study, encoders: list[str], seed: int, dataset: str) -> str:
    """The next encoder of the balanced rotation: round r gives each encoder its (r+1)-th
    trial (finished, or running elsewhere), in the round's shuffled order (see
    `balanced_round_order`). Both come from the trial counts in the storage, so workers
    racing for the next slot agree on whose it is.

    Running trials count here on every storage, also where they hold no place toward
    `n_trials` (journals, see `_claiming_states`): workers that start together would
    otherwise all take the same encoder, round after round. On a journal a dead worker's
    trial then costs its encoder at most that one place in the rotation."""
    claiming = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    counts = Counter(t.params.get(ENCODER_PARAM) for t in claiming)
    round_index = min(counts[encoder] for encoder in encoders)
    order = balanced_round_order(seed, dataset, round_index, encoders)
    return next(encoder for encoder in order if counts[encoder] == round_index)


def run_study(storage: optuna.storages.BaseStorage, storage_url: str, dataset_study: DatasetStudy,
              n_trials: int, timeout_s: float | None, seed: int) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished ones, or the time is up.

    Other workers may share the study (many processes or machines on one storage):
    a worker starts a trial only while finished plus running trials are short of
    `n_trials`, and waits while the last ones run elsewhere, in case their worker dies
    and its trial comes back to be retried (database storages; see `_claiming_states`).
    """
    study = open_study(storage, dataset_study, seed)
    enqueue_warm_start(study, dataset_study)  # `sampler.warm_start`; a no-op by default
    name = dataset_study.data.name
    finished, running = _counts(study)
    if finished >= n_trials:
        print(f"[{name}] already has {finished} finished trials (target {n_trials}); nothing to run",
              file=sys.stderr)
        mark_timeout_stop(study, name, n_trials, timeout_s, list(dataset_study.encoders))
        return study
    print(f"[{name}] running up to {n_trials - finished} trial(s) toward {n_trials}", file=sys.stderr)
    encoders = list(dataset_study.encoders)
    retried = retry_stopped_encoders(study, name, encoders)
    tracker_callbacks = dataset_study.tracker.start_study(StudyInfo(
        study_name=study.study_name, benchmark=dataset_study.config.name, dataset=name,
        metric=dataset_study.metric, storage_url=mask_password(storage_url),
        n_trials=n_trials, finished=finished, train_examples=len(dataset_study.data.train),
    ))
    callbacks = [settle_memory, progress_printer(name, dataset_study.metric, n_trials),
                 study_note_writer(dataset_study.metric, n_trials, lambda t: not t.user_attrs.get(SURPLUS_ATTR)),
                 *tracker_callbacks]
    per_encoder = dataset_study.config.trials_per_encoder(n_trials)

    started = None  # the number of the trial this process started last

    def objective(trial: optuna.Trial) -> float:
        nonlocal started
        started = trial.number
        # Asked first (run_trial asks again and gets the same answer), so the guard knows it;
        # the sampler chose it before the trial started (see `sampling.PerEncoderSampler`).
        encoder = trial.suggest_categorical(ENCODER_PARAM, list(dataset_study.encoder_choices))
        _guard_against_surplus(trial, n_trials, encoder, per_encoder)
        return run_trial(trial, dataset_study, seed)

    grace_s = dataset_study.config.heartbeat.grace_s
    waiting = False  # said once per wait, not every _WAIT_FOR_OTHERS_S
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        if heartbeat_enabled(storage):  # a dead worker's trial is failed and requeued
            for number in fail_stale_trials(study, stale_trial_reason(grace_s)):
                print(f"[{name}] trial {number} failed: {stale_trial_reason(grace_s)}; its parameters are "
                      "queued again (up to heartbeat.max_retries times)", file=sys.stderr, flush=True)
        stopped = stop_failing_encoders(study, name, encoders, retried)
        if all(encoder in stopped for encoder in encoders):
            print(f"[{name}] every encoder is stopped; the study ends", file=sys.stderr, flush=True)
            break
        target = trial_target(study, n_trials, per_encoder, encoders, stopped)
        finished, running = _counts(study)
        if finished >= target:
            break
        if finished + running >= target:
            if not waiting:
                print(f"[{name}] waiting for {running} trial(s) running elsewhere, in another worker or in a "
                      f"process that stopped: such a trial is failed and queued again once it has sent no "
                      f"heartbeat for {grace_s} s (heartbeat.grace_s)", file=sys.stderr, flush=True)
            waiting = True
            time.sleep(_WAIT_FOR_OTHERS_S)
            continue
        waiting = False
        # A failed trial is recorded as failed; only a run of them stops its encoder. Ctrl-C and
        # SIGTERM stop the trial's computation at once, and never a write to the storage.
        try:
            with interrupts.deferred():
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
        except Exception as error:  # the objective's own are caught: here the storage refused a write
            said = refused_write(error)
            if said is None:
                raise
            raise BenchmarkError(refused_write_text(storage_url, said, study, started, grace_s)) from None
    mark_timeout_stop(study, name, trial_target(study, n_trials, per_encoder, encoders, stopped_encoders(study)),
                      timeout_s, encoders)
    return study


# Failures in a row of one encoder's trials after which it is stopped. An out-of-memory
# failure has already been retried inside its trial, and a diverging run is pruned, not
# failed: three in a row, with no trial of the encoder finishing in between, point to its
# configuration (an override, max_length, the model files), which every further trial
# would repeat within seconds.
STOP_AFTER_FAILURES = 3


def stopped_encoders(study: optuna.Study) -> dict[str, str]:
    """Encoder -> why it was stopped in this study (see `stop_failing_encoders`)."""
    return dict(study.user_attrs.get(STOPPED_ATTR) or {})


def active_encoders(study: optuna.Study, encoders: list[str]) -> list[str]:
    """The encoders a trial may get now: this run's, less those stopped in the study."""
    stopped = stopped_encoders(study)
    return [encoder for encoder in encoders if encoder not in stopped]


def consecutive_failures(trials: list[FrozenTrial], encoder: str) -> list[FrozenTrial]:
    """The encoder's failed trials since its last finished one. A surplus trial never ran,
    and an interrupted one was stopped by the user: neither failed nor finished."""
    failures: list[FrozenTrial] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if (trial.params.get(ENCODER_PARAM) != encoder or trial.user_attrs.get(SURPLUS_ATTR)
                or trial.user_attrs.get(INTERRUPTED_ATTR)):
            continue
        failures = [*failures, trial] if trial.state == TrialState.FAIL else []
    return failures


def stop_failing_encoders(study: optuna.Study, name: str, encoders: list[str],
                          retried: dict[str, int]) -> dict[str, str]:
    """Stop, in this study, each of `encoders` whose last `STOP_AFTER_FAILURES` trials all
    failed (a `retried` one: that failed again): one line that quotes the last failure, and a
    record in the study (its tables say so). Counted from the storage, so every worker sharing
    the study agrees. Returns every encoder stopped in the study."""
    stopped = stopped_encoders(study)
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
    newly = {}
    for encoder in encoders:
        failures = consecutive_failures(trials, encoder)
        if encoder in stopped or len(failures) < max(STOP_AFTER_FAILURES, retried.get(encoder, 0) + 1):
            continue
        last = str(failures[-1].user_attrs.get(FAIL_REASON_ATTR) or "no reason recorded").splitlines()[0]
        newly[encoder] = f"{len(failures)} consecutive failed trials, the last: {last}"
    if not newly:
        return stopped
    stopped.update(newly)
    study.set_user_attr(STOPPED_ATTR, stopped)
    rest = ("the study goes on with the others" if any(encoder not in stopped for encoder in encoders)
            else "no encoder is left")
    for encoder, reason in newly.items():
        print(f"[{name}] stopped {encoder} after {reason}; {rest}", file=sys.stderr, flush=True)
    return stopped


def retry_stopped_encoders(study: optuna.Study, name: str, encoders: list[str]) -> dict[str, int]:
    """A new run gives each of its encoders that an earlier run stopped one more trial (the
    config may have been fixed since); a failure stops it again. Returns, per retried
    encoder, the failures in a row it already had."""
    stopped = stopped_encoders(study)
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL))
    retried = {encoder: len(consecutive_failures(trials, encoder)) for encoder in encoders if encoder in stopped}
    for encoder in retried:
        print(f"[{name}] retrying {encoder}, stopped by an earlier run after {stopped.pop(encoder)}",
              file=sys.stderr, flush=True)
    if retried:
        study.set_user_attr(STOPPED_ATTR, stopped)
    return retried


def trial_target(study: optuna.Study, n_trials: int, per_encoder: int | None, encoders: list[str],
                 stopped: dict[str, str]) -> int:
    """The finished trials the study now waits for: `n_trials`, less what stopped encoders
    will not run. In the balanced comparison that is each stopped encoder's unfilled share;
    in search mode the other encoders take over the stopped ones' trials, while any is left."""
    finished = Counter(t.params.get(ENCODER_PARAM) for t in study.get_trials(deepcopy=False, states=FINISHED))
    if per_encoder is not None:
        return n_trials - sum(max(0, per_encoder - finished[encoder]) for encoder in encoders if encoder in stopped)
    return n_trials if any(encoder not in stopped for encoder in encoders) else sum(finished.values())


def every_encoder_stopped(study: optuna.Study, encoders: list[str]) -> str:
    """Why each of `encoders` was stopped, when all were; "" otherwise."""
    stopped = stopped_encoders(study)
    if any(encoder not in stopped for encoder in encoders):
        return ""
    return "; ".join(f"{encoder}: {stopped[encoder]}" for encoder in encoders)




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
            outcome += f" ({trial.user_attrs.get(PRUNE_REASON_ATTR, '')})"
        elif trial.state == TrialState.FAIL:
            outcome += f" ({trial.user_attrs.get(FAIL_REASON_ATTR, 'see the log above')})"
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
