"""A live progress display for a person at a terminal, drawn with rich under the log lines.

Only when stderr is a terminal: logs, pipes and `--workers` children keep the one line per
event of `console.py`, which goes on unchanged above the display. The display shows the
study's finished trials of its target, the running trial's examples seen of its total and
its last training loss, and an ETA, which says what it rests on: the running trial's
measured examples per second, and the mean duration of the trials finished in this run.
Pruning makes trials shorter than that, so the ETA is an upper estimate while it prunes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Column

from benchmark.schema import FINISHED
from benchmark.tracking.base import StudyCallback, StudyInfo, TrialRun
from benchmark.train.records import Evaluation, StepLog


def compact_duration_text(seconds: float) -> str:
    """`3m 20s`, `2h 05m`: the live display's short form (`estimate.duration_text` is the printed one)."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def study_eta(trial_left_s: float, trials_after: int, trial_s: float) -> float:
    """Seconds until the study's target: the running trial's rest, then `trials_after`
    trials of `trial_s` seconds each."""
    return trial_left_s + trials_after * trial_s


class _TrialProgress:
    def __init__(self, display: LiveProgress, number: int, encoder: str, batch_size: int,
                 total_examples: int | None) -> None:
        self._display = display
        self._batch_size = batch_size
        self._total = total_examples
        self._started = display.clock()
        self.examples = 0
        display.progress.update(display.trial_task, description=f"trial {number} {encoder}", completed=0,
                                total=total_examples, count=self._count(), info="starting", visible=True)

    def links(self) -> dict[str, str]:
        return {}

    def _count(self) -> str:
        return f"{self.examples}/{self._total} examples" if self._total else f"{self.examples} examples"

    def rate(self) -> float | None:
        """Examples per second since the trial started (loading and evaluations included)."""
        elapsed = self._display.clock() - self._started
        return self.examples / elapsed if self.examples and elapsed > 0 else None

    def seconds_left(self) -> float | None:
        rate = self.rate()
        return None if rate is None or self._total is None else max(0, self._total - self.examples) / rate

    def seconds_total(self) -> float | None:
        rate = self.rate()
        return None if rate is None or self._total is None else self._total / rate

    def log_step(self, log: StepLog) -> None:
        self.examples = log.step * self._batch_size
        self._display.progress.update(self._display.trial_task, completed=self.examples, count=self._count(),
                                      info=f"loss {log.loss:.4f} (training, last step)")
        self._display.show_eta()

    def log_evaluation(self, evaluation: Evaluation) -> None:
        pass  # the evaluation's line is printed above the display

    def finish(self, state: str, reason: str | None) -> None:
        self._display.progress.update(self._display.trial_task, info=state)
        self._display.trial = None


class LiveProgress:
    """A Tracker that draws; one display per study, stopped when the next one starts."""

    name = "progress"

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self._console = console
        self.clock = clock
        self.progress: Progress | None = None
        self.trial: _TrialProgress | None = None
        self._info: StudyInfo | None = None
        self._finished = 0
        self._durations: list[float] = []  # of the trials finished in this run

    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        self._stop()
        self._info, self._finished, self._durations = info, info.finished, []
        self.progress = Progress(
            TextColumn("{task.description}", markup=False, table_column=Column(no_wrap=True)),
            BarColumn(bar_width=20, table_column=Column(min_width=20)),
            TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[info]}", markup=False, table_column=Column(no_wrap=True)),
            console=self._console, redirect_stdout=False,  # stdout carries the leaderboard
        )
        self.study_task: TaskID = self.progress.add_task(
            f"[{info.dataset}]", total=info.n_trials, completed=info.finished, count=self._count(), info="")
        self.trial_task: TaskID = self.progress.add_task("trial", total=None, count="", info="", visible=False)
        self.progress.start()
        return [self._after_trial]

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        batch_size, epochs = int(params["batch_size"]), int(params["num_epochs"])
        train = self._info.train_examples if self._info else None
        # Each epoch trains on full batches only (see training.fine_tune).
        total = None if train is None else epochs * (train // batch_size) * batch_size
        self.trial = _TrialProgress(self, trial_number, tags.get("encoder", "?"), batch_size, total)
        return self.trial

    def _after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state in FINISHED and trial.duration is not None:
            self._finished += 1
            self._durations.append(trial.duration.total_seconds())
        self.progress.update(self.study_task, completed=self._finished, count=self._count())
        self.show_eta()

    def _count(self) -> str:
        return f"trials {self._finished}/{self._info.n_trials} finished"

    def show_eta(self) -> None:
        info = self._info
        running = self.trial
        trials_after = max(0, info.n_trials - self._finished - (1 if running else 0))
        left = running.seconds_left() if running else 0.0
        if self._durations:
            trial_s = sum(self._durations) / len(self._durations)
            basis = f"mean of {len(self._durations)} finished here"
        else:
            trial_s = running.seconds_total() if running else None
            basis = "this trial's rate"
        if not (trials_after or running):
            text = ""
        elif left is None or trial_s is None:
            text = "ETA: measuring"
        else:
            parts = [f"this trial at {running.rate():.1f} examples/s"] if running else []
            if trials_after:
                parts.append(f"{trials_after} x {compact_duration_text(trial_s)} ({basis})")
            text = f"ETA {compact_duration_text(study_eta(left, trials_after, trial_s))}: {', then '.join(parts)}"
        self.progress.update(self.study_task, info=text)

    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        self._stop()

    def _stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self._stop()
