"""The interface the trial loop streams to; one backend per experiment tracker."""

from __future__ import annotations

from typing import Protocol

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


class _NoRun:
    def log_step(self, log: StepLog) -> None:
        pass

    def log_evaluation(self, evaluation: Evaluation) -> None:
        pass

    def finish(self, state: str, reason: str | None) -> None:
        pass


class NoTracker:
    """`--tracker none`: the study's storage alone keeps the record."""

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        return _NoRun()

    def close(self) -> None:
        pass


def make_tracker(names: list[str]) -> Tracker:
    unsupported = [name for name in names if name != "none"]
    if unsupported:
        from benchmark.errors import BenchmarkError

        raise BenchmarkError(
            f"--tracker: {', '.join(unsupported)} is not available yet; use --tracker none"
        )
    return NoTracker()
