"""Evaluation lines on stderr, so a long trial shows it is moving."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmark.tracking.base import StudyCallback, StudyInfo, TrialRun
from benchmark.train.records import Evaluation, StepLog


class _ConsoleRun:
    def __init__(self, prefix: str) -> None:
        self._prefix = prefix

    def links(self) -> dict[str, str]:
        return {}

    def log_step(self, log: StepLog) -> None:
        pass  # one line per evaluation is enough on a terminal

    def log_evaluation(self, evaluation: Evaluation) -> None:
        metrics = " ".join(f"{name}={value:.4f}" for name, value in evaluation.metrics.items())
        print(f"{self._prefix} step {evaluation.step}, {evaluation.examples} examples "
              f"(epoch {evaluation.epoch:.2f}): loss={evaluation.loss:.4f} {metrics}",
              file=sys.stderr, flush=True)

    def finish(self, state: str, reason: str | None) -> None:
        pass  # the study's progress line reports the outcome


class ConsoleTracker:
    name = "console"

    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        return []

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        return _ConsoleRun(f"[{tags['dataset']}] trial {trial_number} {tags['encoder']}")

    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        pass

    def close(self) -> None:
        pass
