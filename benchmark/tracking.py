"""The interface the trial loop streams to, with one backend per tracker.

The trial talks to a single `Tracker`; `TrackerGroup` fans out to several, so the
loop never asks which trackers are on.
"""

from __future__ import annotations

import sys
from typing import Protocol

from benchmark.errors import BenchmarkError
from benchmark.training import Evaluation, StepLog


class TrialRun(Protocol):
    """One trial's record in a tracker."""

    def log_step(self, log: StepLog) -> None: ...

    def log_evaluation(self, evaluation: Evaluation) -> None: ...

    def finish(self, state: str, reason: str | None) -> None: ...


class Tracker(Protocol):
    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun: ...

    def close(self) -> None: ...


class _ConsoleRun:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def log_step(self, log: StepLog) -> None:
        pass  # one line per evaluation is enough on a terminal

    def log_evaluation(self, evaluation: Evaluation) -> None:
        metrics = " ".join(f"{name}={value:.4f}" for name, value in evaluation.metrics.items())
        print(f"{self._prefix} step {evaluation.step}, {evaluation.examples} examples "
              f"(epoch {evaluation.epoch:.2f}): "
              f"loss={evaluation.loss:.4f} {metrics}", file=sys.stderr, flush=True)

    def finish(self, state: str, reason: str | None) -> None:
        pass  # the study's progress line reports the outcome


class ConsoleTracker:
    """Evaluation lines on stderr, so a long trial shows it is moving."""

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        return _ConsoleRun(f"[{tags['dataset']}] trial {trial_number} {tags['encoder']}")

    def close(self) -> None:
        pass


class _RunGroup:
    def __init__(self, runs: list[TrialRun]) -> None:
        self._runs = runs

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
    def __init__(self, trackers: list[Tracker]) -> None:
        self._trackers = trackers

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        return _RunGroup([t.start_trial(study_name, trial_number, params, tags) for t in self._trackers])

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()


def make_tracker(names: list[str]) -> Tracker:
    """The console plus the trackers named on the command line (`none` adds nothing)."""
    unsupported = [name for name in names if name != "none"]
    if unsupported:
        raise BenchmarkError(f"--tracker: {', '.join(unsupported)} is not available yet; use --tracker none")
    return TrackerGroup([ConsoleTracker()])
