"""Neptune: one run per trial (curves, parameters, state), one run per study (neptune-optuna).

Modes. `NEPTUNE_MODE` wins when set (async, sync, offline or debug). Otherwise the runs go
to the server in `async` mode when both NEPTUNE_API_TOKEN and NEPTUNE_PROJECT are set, and
are written to disk in `offline` mode when not; the first run says once, on stderr, where
the data lies and which `neptune sync` command uploads it. The client reads the
`NEPTUNE_DATA_DIRECTORY` environment variable each time it creates a run (neptune 1.x,
`internal/operation_processors/utils.py`), so unless the user set it we point it at
RESULTS_DIR/neptune/.neptune while a run is created: the offline data (and the async
queue) sits next to the study it belongs to, in the layout `neptune sync --path` expects.

What a run never holds. The client's own captures are all turned off:
  - stdout/stderr: the whole process's streams, copied into every open run; they may carry
    connection strings or tokens that a library printed, and they repeat per trial;
  - hardware metrics: a series per device every few seconds in every run: disk for nothing
    (the trial records device and precision itself);
  - traceback: a process-wide excepthook; the trial's own failure reason is logged instead;
  - source files and git: `git_ref` would store the remote URLs (which may embed a
    credential) and upload the uncommitted diff to every run; `source_files=[]` keeps only
    the entrypoint's file name;
  - dependencies: not tracked (the default).
The API token is read by the client from the environment and never written as run data.
The storage URL is logged by us, already masked (`StudyInfo`); neptune-optuna's own
storage logging is off (see `_StudyCallback`).

Disk. Train curves are logged for every step at first, then at a stride that doubles
every `POINTS_PER_LEVEL` points (each point the mean over its stride), so a trial's curve
points grow with the logarithm of its steps; points are buffered and written a few at a
time, which costs ~60 bytes a point instead of ~170 for one operation per point. The
study plots are drawn by us with plotly.js loaded from its CDN (~10 KB each instead of
~4.8 MB with plotly.js embedded, which is what neptune-optuna's NeptuneCallback does).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import neptune
import optuna
from neptune.types import File
from neptune.utils import stringify_unsupported
from neptune_optuna import NeptuneCallback
from optuna.trial import FrozenTrial, TrialState

from benchmark.errors import BenchmarkError
from benchmark.redaction import mask_password
from benchmark.schema import SURPLUS_ATTR
from benchmark.tracking.base import StudyCallback, StudyInfo, TrialRun
from benchmark.train.records import Evaluation, StepLog

MODES = ("async", "sync", "offline", "debug")
ONLINE_MODES = ("async", "sync")
DATA_DIRECTORY_ENV = "NEPTUNE_DATA_DIRECTORY"  # read by neptune 1.x when it creates a run

POINTS_PER_LEVEL = 250  # train-curve points per stride level: stride 1, 2, 4, ... after each 250
FLUSH_POINTS = 200  # buffered train points per series before they are written
FLUSH_SECONDS = 5.0  # ... or this long after the oldest buffered point (the client's own flush period)
STOP_TIMEOUT_S = 60.0  # async: wait this long for a finished trial's data to reach the server
CLOSE_TIMEOUT_S = 120.0  # async: for all runs still open at close

# Study plots: the informative ones for a single-objective study with pruning. Left out:
# contour (a grid of every parameter pair) and EDF (for comparing studies).
PLOTS: dict[str, Callable[[optuna.Study], object]] = {
    "plot_optimization_history": lambda study: _vis().plot_optimization_history(study),
    "plot_intermediate_values": lambda study: _vis().plot_intermediate_values(study),
    "plot_parallel_coordinate": lambda study: _vis().plot_parallel_coordinate(study),
    "plot_slice": lambda study: _vis().plot_slice(study),
    "plot_param_importances": lambda study: _vis().plot_param_importances(study),
}
PLOTS_EVERY = 5  # redraw the study plots after every 5th trial of a run, and at the end


def _vis():
    import optuna.visualization as vis

    return vis


def resolve_mode(environ: Mapping[str, str] | None = None) -> str:
    """The connection mode the environment asks for; bad settings fail before any training."""
    env = os.environ if environ is None else environ
    has_credentials = bool(env.get("NEPTUNE_API_TOKEN")) and bool(env.get("NEPTUNE_PROJECT"))
    explicit = env.get("NEPTUNE_MODE", "").strip()
    if not explicit:
        return "async" if has_credentials else "offline"
    if explicit not in MODES:
        raise BenchmarkError(f"NEPTUNE_MODE: '{explicit}' is not a mode a tracker can log in; "
                             f"choose from {', '.join(MODES)}")
    if explicit in ONLINE_MODES and not has_credentials:
        raise BenchmarkError(f"NEPTUNE_MODE={explicit} needs NEPTUNE_API_TOKEN and NEPTUNE_PROJECT; "
                             "unset NEPTUNE_MODE to log offline instead")
    return explicit


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (as the client's own handler does for
    stdout), so a replaced stderr (pytest's capture, say) is followed."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _quiet_neptune_logging() -> None:
    """The client logs 3 info lines per run, and its warnings, to *stdout*, where the
    leaderboard goes: keep the warnings only, on stderr."""
    logger = logging.getLogger("neptune")
    logger.setLevel(logging.WARNING)
    for handler in list(logger.handlers):
        if not isinstance(handler, _StderrHandler):
            logger.removeHandler(handler)
            replacement = _StderrHandler()
            replacement.setFormatter(handler.formatter)
            logger.addHandler(replacement)


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """`name=value` for the duration (nothing changes when value is None)."""
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _storage_type(url: str) -> str:
    """The Optuna storage class benchmark.search.storage.open_storage builds for `url`."""
    return "JournalStorage" if url.startswith(("journal:", "redis://", "rediss://", "unix://")) else "RDBStorage"


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class _Downsampler:
    """Keeps every step for the first POINTS_PER_LEVEL points, then one point per 2, 4, ...
    steps, each the mean of its window (the last learning rate)."""

    def __init__(self, points_per_level: int = POINTS_PER_LEVEL) -> None:
        self._per_level = points_per_level
        self._emitted = 0
        self._window: list[StepLog] = []

    @property
    def stride(self) -> int:
        return 2 ** (self._emitted // self._per_level)

    def add(self, log: StepLog) -> dict[str, float] | None:
        self._window.append(log)
        return self.flush() if len(self._window) >= self.stride else None

    def flush(self) -> dict[str, float] | None:
        """The pending window as one point, if any."""
        if not self._window:
            return None
        window, self._window = self._window, []
        self._emitted += 1
        point: dict[str, float] = {"step": window[-1].step}
        for name, attribute in (("train/loss", "loss"), ("train/grad_norm", "grad_norm"),
                                ("train/tokens_per_second", "tokens_per_second")):
            values = [getattr(log, attribute) for log in window if _finite(getattr(log, attribute))]
            if values:
                point[name] = sum(values) / len(values)
        if _finite(window[-1].learning_rate):
            point["train/lr"] = window[-1].learning_rate
        return point


class _NeptuneTrialRun:
    def __init__(self, tracker: NeptuneTracker, run: neptune.Run, link: str) -> None:
        self.run = run  # the neptune.Run, for callers that want to add fields
        self._tracker = tracker
        self._link = link
        self._sampler = _Downsampler()
        self._buffer: dict[str, tuple[list[float], list[float], list[float]]] = {}
        self._buffered_since: float | None = None
        self.open = True

    def links(self) -> dict[str, str]:
        return {"neptune_run_id": self._link}

    def log_step(self, log: StepLog) -> None:
        point = self._sampler.add(log)
        if point is not None:
            self._buffer_point(point)
        if self._buffered_since is not None and (
                time.monotonic() - self._buffered_since >= FLUSH_SECONDS
                or max(len(steps) for _, steps, _ in self._buffer.values()) >= FLUSH_POINTS):
            self._flush()

    def _buffer_point(self, point: dict[str, float]) -> None:
        step, now = point.pop("step"), time.time()
        for name, value in point.items():
            values, steps, stamps = self._buffer.setdefault(name, ([], [], []))
            values.append(value)
            steps.append(step)
            stamps.append(now)
        if self._buffered_since is None:
            self._buffered_since = time.monotonic()

    def _flush(self) -> None:
        buffer, self._buffer, self._buffered_since = self._buffer, {}, None
        for name, (values, steps, stamps) in buffer.items():
            self.run[name].extend(values, steps=steps, timestamps=stamps)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        self._flush()  # the train curve up to this evaluation goes out with it
        # x = training examples seen: the resource Optuna's pruner compares trials at (the
        # trial reports the same value at the same x), comparable across batch sizes.
        x = evaluation.examples
        values = {"eval/loss": evaluation.loss, "eval/epoch": evaluation.epoch, "eval/step": evaluation.step,
                  **{f"eval/{name}": value for name, value in evaluation.metrics.items()}}
        for name, value in values.items():
            if _finite(value):
                self.run[name].append(float(value), step=x)

    def finish(self, state: str, reason: str | None) -> None:
        self._end(state, reason, self._tracker.stop_timeout_s)

    def _end(self, state: str, reason: str | None, timeout_s: float) -> None:
        if not self.open:
            return
        self.open = False
        self._tracker._forget(self)
        try:
            tail = self._sampler.flush()
            if tail is not None:
                self._buffer_point(tail)
            self._flush()
            self.run["state"] = state
            if reason:
                self.run["state_reason"] = mask_password(reason)[:1000]
            self.run["sys/tags"].add(state)
            if state == "failed":
                self.run["sys/failed"] = True
        finally:
            self.run.stop(seconds=timeout_s)


@dataclass
class _StudyRecord:
    info: StudyInfo
    run: neptune.Run
    plots: tuple[str, ...]
    plots_every: int | None
    study: optuna.Study | None = None
    trials_seen: int = 0
    plotted_at: int = -1  # trials_seen when the plots were last drawn

    def after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Study callback: redraw the plots every `plots_every` trials."""
        self.study = study
        self.trials_seen += 1
        if self.plots_every and self.trials_seen % self.plots_every == 0:
            self.draw_plots()

    def draw_plots(self) -> None:
        if self.study is None or self.plotted_at == self.trials_seen:
            return
        self.plotted_at = self.trials_seen
        log_study_plots(self.run, self.study, self.plots)


def log_study_plots(run: neptune.Run, study: optuna.Study, plots: tuple[str, ...]) -> None:
    """The chosen optuna.visualization plots under visualizations/ (neptune-optuna's paths),
    as HTML that loads plotly.js from its CDN instead of embedding its 4.8 MB."""
    if not _vis().is_available():
        return
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.COMPLETE for t in trials):
        return  # every plot needs at least one complete trial
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for name in plots:
        if name == "plot_intermediate_values" and not any(t.intermediate_values for t in trials):
            continue
        if name == "plot_param_importances":
            if finished < 2:
                continue
            # As neptune-optuna does: importances cannot be computed when, e.g., no
            # parameter varies; that is no fault of the tracker.
            with contextlib.suppress(RuntimeError, ValueError, ZeroDivisionError):
                run[f"visualizations/{name}"] = File.as_html(PLOTS[name](study), include_plotlyjs="cdn")
            continue
        run[f"visualizations/{name}"] = File.as_html(PLOTS[name](study), include_plotlyjs="cdn")


class _StudyCallback(NeptuneCallback):
    """neptune-optuna's callback (1.4.x) with its live plots and study upload off, the stale
    `best/trials/<old>` namespace removed when a later trial becomes best (the callback only
    ever adds, so the run showed every former best as if it were current), and three faults
    fixed that would otherwise switch the tracker off mid-study:

    - `_log_best_trials` reads `study.best_trial`, which raises ValueError while no trial is
      complete: a study whose first trial is pruned or failed broke on its first callback;
    - `_log_single_trial` appends `trial.value` to the float series `trials/values`; a failed
      trial's value is None and the append raises TypeError;
    - study details (direction, user attributes) are logged only when `trial.number == 0`,
      so never for a topped-up study, nor when trial 0 hit the first fault.
    """

    def __init__(self, run: neptune.Run) -> None:
        # plots_update_freq: the callback redraws *every* plot after *every* trial, each an
        # HTML file embedding plotly.js (~4.8 MB; ~34 MB a trial): we draw compact ones.
        # study_update_freq: for RDB storages it would log the storage URL with its
        # password, but its check names optuna.storages.RedisStorage, which Optuna 4
        # removed, so the AttributeError it suppresses skips it: we log the masked URL.
        # For in-memory storages it pickles the whole study after every trial.
        super().__init__(run, plots_update_freq="never", study_update_freq="never", log_all_trials=True)
        self._details_logged = False
        self._best_logged: int | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS_ATTR):
            return  # claimed by two racing workers: it never ran (benchmark.search.study)
        super().__call__(study, trial)

    def _log_best_trials(self, study: optuna.Study) -> None:
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial.number
        if self._best_logged is not None and self._best_logged != best:
            self.run.pop(f"best/trials/{self._best_logged}")
        super()._log_best_trials(study)
        self._best_logged = best

    def _log_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # A failure reason is free text: mask any URL password in it, as the trial run does.
        trial = copy.copy(trial)
        trial.user_attrs = {key: mask_password(value) if isinstance(value, str) else value
                            for key, value in trial.user_attrs.items()}
        if trial.values is not None:
            super()._log_trial(study, trial)
            return
        handle = self.run[f"trials/trials/{trial.number}"]  # the layout of _log_single_trial
        handle["datetime_start"] = stringify_unsupported(trial.datetime_start)
        handle["datetime_complete"] = stringify_unsupported(trial.datetime_complete)
        handle["duration"] = stringify_unsupported(trial.duration)
        handle["distributions"] = stringify_unsupported(trial.distributions)
        handle["intermediate_values"] = stringify_unsupported(trial.intermediate_values)
        handle["params"] = stringify_unsupported(trial.params)
        handle["user_attrs"] = stringify_unsupported(trial.user_attrs)
        handle["state"] = repr(trial.state)

    def _log_study_details(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self._details_logged:
            self._details_logged = True
            self.run["study/study_name"] = study.study_name
            self.run["study/direction"] = stringify_unsupported(study.direction)
            self.run["study/user_attrs"] = stringify_unsupported(study.user_attrs)


class NeptuneTracker:
    name = "neptune"

    def __init__(self, results_dir: Path, *, mode: str | None = None, plots: tuple[str, ...] = tuple(PLOTS),
                 plots_every: int | None = PLOTS_EVERY, stop_timeout_s: float = STOP_TIMEOUT_S,
                 close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        if mode is not None and mode not in MODES:
            raise BenchmarkError(f"neptune mode '{mode}': choose from {', '.join(MODES)}")
        unknown = [name for name in plots if name not in PLOTS]
        if unknown:
            raise BenchmarkError(f"neptune plots: unknown {', '.join(unknown)}; choose from {', '.join(PLOTS)}")
        self.mode = mode or resolve_mode()
        user_directory = os.environ.get(DATA_DIRECTORY_ENV)
        # Only set while a run is created, and only when the user has not chosen one.
        self._directory_override = None if user_directory else str((results_dir / "neptune" / ".neptune").resolve())
        self.data_dir = Path(user_directory or self._directory_override).resolve()
        self.stop_timeout_s = stop_timeout_s
        self._close_timeout_s = close_timeout_s
        self._plots, self._plots_every = tuple(plots), plots_every
        self._studies: dict[str, _StudyRecord] = {}
        self._open_trials: list[_NeptuneTrialRun] = []
        self._announced = False
        _quiet_neptune_logging()

    # -- runs ---------------------------------------------------------------------------

    def _init_run(self, name: str, tags: list[str]) -> neptune.Run:
        self._announce()
        with _environment(DATA_DIRECTORY_ENV, self._directory_override):
            return neptune.init_run(
                mode=self.mode,
                name=name,
                tags=list(dict.fromkeys(tag for tag in tags if tag)),
                capture_stdout=False,
                capture_stderr=False,
                capture_hardware_metrics=False,
                capture_traceback=False,
                source_files=[],
                git_ref=False,
                dependencies=None,
            )

    def _link(self, run: neptune.Run) -> str:
        """The run's id: sys/id on the server; offline and debug runs have a placeholder
        sys/id (OFFLINE-1 for all), so their own id, `offline/<uuid>`, as `neptune sync
        --object` names them."""
        if self.mode in ONLINE_MODES:
            return run["sys/id"].fetch()
        return run.get_url()

    def sync_command(self) -> str:
        path = self.data_dir.parent if self.data_dir.name == ".neptune" else self.data_dir
        project = os.environ.get("NEPTUNE_PROJECT") or "WORKSPACE/PROJECT"
        arguments = f"--path {shlex.quote(str(path))} --project {shlex.quote(project)}"
        if importlib.util.find_spec("pkg_resources") is None:
            # neptune 1.x's `neptune` entry point imports pkg_resources, gone from setuptools>=81.
            return f"python -c 'from neptune.cli.commands import sync; sync()' {arguments}"
        return f"neptune sync {arguments}"

    def _announce(self) -> None:
        if self._announced:
            return
        self._announced = True
        if self.mode == "offline":
            print(f"neptune: offline mode (NEPTUNE_API_TOKEN and NEPTUNE_PROJECT are not both set); "
                  f"runs are stored in {self.data_dir}\n"
                  f"neptune: to upload them to a self-hosted Neptune 2.x server (the hosted service closed in "
                  f"March 2026), with its NEPTUNE_API_TOKEN set, run: {self.sync_command()}",
                  file=sys.stderr, flush=True)
        elif self.mode in ONLINE_MODES:
            print(f"neptune: {self.mode} mode, project {os.environ.get('NEPTUNE_PROJECT')}; "
                  f"data not yet sent is kept in {self.data_dir}", file=sys.stderr, flush=True)

    def _forget(self, run: _NeptuneTrialRun) -> None:
        if run in self._open_trials:
            self._open_trials.remove(run)

    # -- Tracker ------------------------------------------------------------------------

    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        previous = self._studies.pop(info.study_name, None)
        if previous is not None:
            previous.run.stop(seconds=self.stop_timeout_s)
        run = self._init_run(info.study_name, [info.study_name, info.dataset, "study"])
        record = _StudyRecord(info, run, self._plots, self._plots_every)
        self._studies[info.study_name] = record
        run["kind"] = "study"
        run["study_name"] = info.study_name
        run["benchmark"] = info.benchmark
        run["dataset"] = info.dataset
        run["metric"] = info.metric
        run["study/storage_type"] = _storage_type(info.storage_url)
        run["study/storage_url"] = mask_password(info.storage_url)  # masked already; belt and braces
        return [_StudyCallback(run), record.after_trial]

    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        run = self._init_run(f"{study_name} trial {trial_number}", list(tags.values()))
        try:
            link = self._link(run)
        except Exception:
            run.stop(seconds=self.stop_timeout_s)  # no run left open behind a failure
            raise
        trial_run = _NeptuneTrialRun(self, run, link)
        self._open_trials.append(trial_run)
        run["kind"] = "trial"
        run["study_name"] = study_name
        run["trial_number"] = trial_number
        for key in ("dataset", "encoder"):
            if key in tags:
                run[key] = tags[key]
        record = self._studies.get(study_name)
        if record is not None:
            run["benchmark"] = record.info.benchmark
            run["metric"] = record.info.metric
        if self.mode == "offline":
            run["offline_id"] = link  # to find the run again once `neptune sync` gives it a sys/id
        run["parameters"] = stringify_unsupported(dict(params))
        return trial_run

    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        record = self._studies.pop(study_name, None)
        if record is None:
            return  # no trial ran in this invocation: no study run was opened
        try:
            record.draw_plots()
            for path in attachments:
                if path.is_file():
                    # The content, not the path: neptune reads a path only when it uploads
                    # (offline: at `neptune sync`), when a later run may have rewritten it.
                    extension = path.suffix.lstrip(".") or "txt"
                    record.run[f"leaderboards/{path.stem}_{extension}"] = File.from_content(
                        path.read_bytes(), extension=extension)
        finally:
            record.run.stop(seconds=self.stop_timeout_s)

    def close(self) -> None:
        """Stop every run still open: a trial cut short (Ctrl-C, a crash) is marked
        `interrupted`. Online modes wait at most close_timeout_s for the upload in all."""
        deadline = time.monotonic() + self._close_timeout_s
        errors: list[Exception] = []

        def left() -> float:
            return max(1.0, deadline - time.monotonic())

        for trial_run in list(self._open_trials):
            try:
                trial_run._end("interrupted", "the harness stopped before the trial finished", left())
            except Exception as error:  # stop the others, then report
                errors.append(error)
        for record in list(self._studies.values()):
            try:
                record.run.stop(seconds=left())
            except Exception as error:
                errors.append(error)
        self._open_trials.clear()
        self._studies.clear()
        if self.mode in ONLINE_MODES and self._unsent():
            print(f"neptune: some data was not uploaded within the time allowed; it is kept in "
                  f"{self.data_dir}; upload it with: {self.sync_command()}", file=sys.stderr, flush=True)
        if errors:
            raise errors[0]

    def _unsent(self) -> bool:
        queue = self.data_dir / "async"
        return queue.is_dir() and any(queue.iterdir())
