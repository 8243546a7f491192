"""Notes for optuna-dashboard on every trial and study.

The dashboard shows a trial as "trial #N" with its parameters; its curves' legend cannot
be named (optuna-dashboard 0.21 fixes it to `trial #N`). So each trial's note says at its
top which encoder it trained and how it ended, and the study's note holds its leaderboard,
rebuilt from the storage's trials after every trial. optuna-dashboard keeps notes in the
storage (study system attributes), so the storage stays the single source of truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from benchmark.redaction import mask_password
from benchmark.schema import ENCODER_PARAM
from benchmark.tracking.base import RunGroup, TrialRun
from benchmark.train.records import Evaluation, StepLog


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


def trial_note(encoder: str, state: str, reason: str | None, metric: str,
               evaluations: Sequence[Evaluation]) -> str:
    """Markdown: encoder and outcome first, then the curve the trial reported."""
    outcome = state if not reason else f"{state}: {mask_password(reason)}"
    lines = [f"**{encoder}**: {outcome}", ""]
    if evaluations:
        lines += [f"| examples seen | validation {metric} | validation loss |", "| ---: | ---: | ---: |"]
        lines += [f"| {e.examples} | {_number(e.metrics.get(metric))} | {_number(e.loss)} |" for e in evaluations]
    else:
        lines.append("no evaluation was reached")
    return "\n".join(lines) + "\n"


def study_note(trials: Sequence[FrozenTrial], metric: str, n_trials: int) -> str:
    """Markdown: one row per encoder, best validation value first; what each row rests on."""
    rows: dict[str, dict[str, object]] = {}
    for trial in trials:
        encoder = trial.params.get(ENCODER_PARAM)
        if encoder is None or trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        row = rows.setdefault(encoder, {"best": None, "best_trial": None, TrialState.COMPLETE: 0,
                                        TrialState.PRUNED: 0, TrialState.FAIL: 0})
        row[trial.state] += 1
        if trial.state == TrialState.COMPLETE and (row["best"] is None or trial.value > row["best"]):
            row["best"], row["best_trial"] = trial.value, trial.number
    finished = sum(row[TrialState.COMPLETE] + row[TrialState.PRUNED] for row in rows.values())
    lines = [f"**Leaderboard** ({finished} of {n_trials} trials finished; best validation {metric} of each "
             "encoder's complete trials, so pruned trials do not count toward it)", "",
             f"| encoder | best validation {metric} | best trial | complete | pruned | failed |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ordered = sorted(rows.items(), key=lambda item: (item[1]["best"] is None, -(item[1]["best"] or 0.0), item[0]))
    for encoder, row in ordered:
        best_trial = "" if row["best_trial"] is None else f"#{row['best_trial']}"
        lines.append(f"| {encoder} | {_number(row['best'])} | {best_trial} | {row[TrialState.COMPLETE]} | "
                     f"{row[TrialState.PRUNED]} | {row[TrialState.FAIL]} |")
    lines += ["", "All tables, the final evaluation and the statistics: `report.html` in the results directory."]
    return "\n".join(lines) + "\n"


def _save_note(study_or_trial: optuna.Study | optuna.Trial, body: str) -> None:
    # Imported on first use: optuna_dashboard loads scikit-learn's ensembles (seconds).
    from optuna_dashboard import save_note

    save_note(study_or_trial, body)


def study_note_writer(metric: str, n_trials: int,
                      counted: Callable[[FrozenTrial], bool]) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A study callback that rewrites the study's note after every trial, from the trials
    that `counted` keeps."""

    def write(study: optuna.Study, trial: FrozenTrial) -> None:
        trials = [t for t in study.get_trials(deepcopy=False) if counted(t)]
        _save_note(study, study_note(trials, metric, n_trials))

    return write


class _TrialNote:
    """Writes the trial's note when it ends; keeps the evaluations for it meanwhile."""

    def __init__(self, trial: optuna.Trial, encoder: str, metric: str) -> None:
        self._trial, self._encoder, self._metric = trial, encoder, metric
        self._evaluations: list[Evaluation] = []

    def links(self) -> dict[str, str]:
        return {}

    def log_step(self, log: StepLog) -> None:
        pass

    def log_evaluation(self, evaluation: Evaluation) -> None:
        self._evaluations.append(evaluation)

    def finish(self, state: str, reason: str | None) -> None:
        _save_note(self._trial, trial_note(self._encoder, state, reason, self._metric, self._evaluations))


def with_trial_note(run: TrialRun, trial: optuna.Trial, encoder: str, metric: str) -> TrialRun:
    """`run`, plus a dashboard note written on the trial when it ends."""
    return RunGroup([run, _TrialNote(trial, encoder, metric)])
