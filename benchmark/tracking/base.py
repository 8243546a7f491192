"""The interface the harness streams to: one `Tracker` per experiment tracker.

The trial loop talks to a single `Tracker`. `TrackerGroup` fans out to several, and
`Guarded` keeps a failing tracker (no server, a network error, a full disk) from ever
deciding a trial's result: it says so once and carries on without that tracker.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial

from benchmark.redaction import mask_password
from benchmark.train.records import Evaluation, StepLog

StudyCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass(frozen=True)
class StudyInfo:
    study_name: str
    benchmark: str
    dataset: str
    metric: str
    storage_url: str  # already masked: never a password
    n_trials: int = 0  # the study's target of finished trials
    finished: int = 0  # finished trials it held when this run opened it
    train_examples: int | None = None  # the training split's size

    def __post_init__(self) -> None:
        if mask_password(self.storage_url) != self.storage_url:
            raise ValueError("StudyInfo.storage_url must be masked")


class TrialRun(Protocol):
    """One trial's record in a tracker."""

    def links(self) -> dict[str, str]:
        """Ids to store on the Optuna trial as user attributes, e.g. {"neptune_run_id": "BEN-3"}."""

    def log_step(self, log: StepLog) -> None: ...

    def log_evaluation(self, evaluation: Evaluation) -> None: ...

    def finish(self, state: str, reason: str | None) -> None:
        """`state` is "complete", "pruned" or "failed"; `reason` says why for the last two."""


class Tracker(Protocol):
    name: str

    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        """Open the study-level record; the callbacks go to `study.optimize`."""

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun: ...

    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        """Attach the leaderboard files to the study-level record and close it."""

    def close(self) -> None: ...


class RunGroup:
    """One trial's records in several trackers (or beside them: the dashboard's trial note),
    seen as one `TrialRun`: each call goes to every run in turn, and their links are merged."""

    def __init__(self, runs: list[TrialRun]) -> None:
        self._runs = runs

    def links(self) -> dict[str, str]:
        return {key: value for run in self._runs for key, value in run.links().items()}

    def log_step(self, log: StepLog) -> None:
        for run in self._runs:
            run.log_step(log)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        for run in self._runs:
            run.log_evaluation(evaluation)

    def finish(self, state: str, reason: str | None) -> None:
        for run in self._runs:
            run.finish(state, reason)


class TrackerGroup:
    name = "group"

    def __init__(self, trackers: list[Tracker]) -> None:
        self._trackers = trackers

    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        return [callback for tracker in self._trackers for callback in tracker.start_study(info)]

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        return RunGroup([t.start_trial(study_name, trial_number, params, tags) for t in self._trackers])

    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        for tracker in self._trackers:
            tracker.end_study(study_name, attachments)

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()


class _Fuse:
    """Shared by a tracker and its runs: the first error disables them all, said once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.blown = False

    def call(self, action: Callable[[], object], fallback: object = None) -> object:
        if self.blown:
            return fallback
        try:
            return action()
        except Exception as error:  # any tracker fault; the study's own data is unaffected
            self.blown = True
            print(f"warning: tracker '{self.name}' failed ({type(error).__name__}: "
                  f"{mask_password(str(error))[:300]}); continuing without it",
                  file=sys.stderr, flush=True)
            return fallback


class _GuardedRun:
    def __init__(self, run: TrialRun | None, fuse: _Fuse) -> None:
        self._run, self._fuse = run, fuse

    def links(self) -> dict[str, str]:
        return self._fuse.call(lambda: self._run.links(), {}) if self._run else {}

    def log_step(self, log: StepLog) -> None:
        if self._run:
            self._fuse.call(lambda: self._run.log_step(log))

    def log_evaluation(self, evaluation: Evaluation) -> None:
        if self._run:
            self._fuse.call(lambda: self._run.log_evaluation(evaluation))

    def finish(self, state: str, reason: str | None) -> None:
        if self._run:
            self._fuse.call(lambda: self._run.finish(state, reason))


class Guarded:
    """A tracker whose failures are reported once and then ignored."""

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._fuse = _Fuse(tracker.name)
        self.name = tracker.name

    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        callbacks = self._fuse.call(lambda: self._tracker.start_study(info), [])
        return [self._guard_callback(callback) for callback in callbacks]

    def _guard_callback(self, callback: StudyCallback) -> StudyCallback:
        return lambda study, trial: self._fuse.call(lambda: callback(study, trial))

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        run = self._fuse.call(lambda: self._tracker.start_trial(study_name, trial_number, params, tags))
        return _GuardedRun(run, self._fuse)

    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        self._fuse.call(lambda: self._tracker.end_study(study_name, attachments))

    def close(self) -> None:
        # Close even after a failure: a backend may hold files or threads to release.
        try:
            self._tracker.close()
        except Exception as error:
            if not self._fuse.blown:
                print(f"warning: tracker '{self.name}' failed to close ({type(error).__name__})", file=sys.stderr)
