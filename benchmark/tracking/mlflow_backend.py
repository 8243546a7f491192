"""MLflow: one parent run per study, one nested run per trial, curves sent in batches.

Where it logs: the tracking URI in MLFLOW_TRACKING_URI (a tracking server, a database),
else a SQLite store at RESULTS_DIR/mlflow.db with artifacts in RESULTS_DIR/mlartifacts
(MLflow 3 refuses its old ./mlruns file store by default). The experiment is named after
the benchmark; each study is a parent run in it, and each trial a run nested under its
study's. Another worker on the same study finds its parent run while that is still running
and nests its trials there too. A later top-up opens a parent run of its own (same `study`
tag): MLflow's duration is end minus start, so a reopened parent would count the idle days
between the two runs. The parent runs carry the leaderboard files, report.html and its PNGs.

Every curve's x is training examples seen (the step Optuna's pruner compares trials at),
so train and validation loss overlay in one chart. Run statuses tell the outcomes apart
without making a pruned trial look broken: complete and pruned -> FINISHED (a pruned trial
ran as intended: the pruner stopped it early, its curves stay for comparison), failed ->
FAILED, interrupted (the harness stopped mid-trial) -> KILLED. The `state` and
`state_reason` tags say which and why, and a complete trial logs its objective as a metric
named after the study's metric (`accuracy`, say), next to the `encoder` parameter and tag.

Only `MlflowClient` is used, never the fluent active-run API, so nothing here depends on
or changes MLflow's process-wide state. Errors are not caught here: `Guarded` reports the
first one and disables the tracker; after that this backend makes no further requests,
not even at `close`, since an unreachable server costs minutes of retries per request.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import TrialState

from benchmark.errors import BenchmarkError
from benchmark.redaction import mask_password
from benchmark.tracking.base import StudyCallback, StudyInfo, TrialRun
from benchmark.train.records import Evaluation, StepLog

try:
    import fcntl
except ImportError:  # Windows: no lock around the local store's creation
    fcntl = None

try:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
except ImportError:  # the optional extra is not installed: refused up front, in __init__
    MlflowClient = None

# Run status per harness state; the `state` tag separates complete from pruned.
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# The MLflow UI opens an experiment of this kind on its training runs, not on GenAI traces.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# MLflow 3.17's UI ignores that tag behind its own GenAI / Model training switch, which
# defaults to GenAI and is remembered by the browser; a link with this query sets it.
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"

MAX_PENDING_METRICS = 1000  # MLflow's limit for one log_batch request
FLUSH_EVERY_S = 30.0  # train curves also reach the UI between evaluations far apart
MAX_REASON_CHARS = 5000  # tag values are limited to 8000 characters
ARTIFACT_DIR = "leaderboard"
INTERRUPTED = "the harness stopped before the trial ended"


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Held while opening a local store: MLflow creates and migrates its schema on first
    use, and workers doing that at once leave a broken database."""
    if fcntl is None:
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _marks_failure(method):
    """An error leaving the backend disables its requests (Guarded reports the error)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception:
            (self if isinstance(self, MlflowTracker) else self._tracker).failed = True
            raise

    return wrapper


@dataclass
class _Study:
    info: StudyInfo
    experiment_id: str
    run_id: str | None = None  # the parent run, chosen when the first trial starts


class _MlflowRun:
    """One trial's nested run. Metrics wait in a bounded buffer and leave in batches."""

    def __init__(self, tracker: MlflowTracker, run_id: str, batch_size: int, metric: str) -> None:
        self._tracker = tracker
        self.run_id = run_id
        self._batch_size = batch_size  # examples per optimizer step (the effective batch)
        self._metric = metric
        self._objective: float | None = None
        self._pending: list[Metric] = []
        self._last_flush = time.monotonic()

    def links(self) -> dict[str, str]:
        return {"mlflow_run_id": self.run_id}

    @_marks_failure
    def log_step(self, log: StepLog) -> None:
        now, examples = _now_ms(), log.step * self._batch_size
        self._pending += [
            Metric("train/loss", float(log.loss), now, examples),
            Metric("train/lr", float(log.learning_rate), now, examples),
            Metric("train/grad_norm", float(log.grad_norm), now, examples),
            Metric("train/tokens_per_second", float(log.tokens_per_second), now, examples),
        ]
        if len(self._pending) >= MAX_PENDING_METRICS or time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
            self._flush()

    @_marks_failure
    def log_evaluation(self, evaluation: Evaluation) -> None:
        # Step = training examples seen, the x the trial reports to Optuna at: comparable
        # across batch sizes.
        now, step = _now_ms(), evaluation.examples
        values = {**{f"eval/{name}": value for name, value in evaluation.metrics.items()}, "eval/loss": evaluation.loss}
        self._pending += [Metric(name, float(value), now, step) for name, value in values.items()]
        self._objective = evaluation.metrics.get(self._metric)
        self._flush()  # the train curve up to this evaluation goes out with it

    @_marks_failure
    def finish(self, state: str, reason: str | None) -> None:
        tags = [RunTag("state", state)]
        if reason:
            tags.append(RunTag("state_reason", mask_password(reason)[:MAX_REASON_CHARS]))
        if state == "complete" and self._objective is not None:
            # The trial's value in Optuna: its last evaluation's metric, under the metric's name.
            self._pending.append(Metric(self._metric, float(self._objective), _now_ms(), 0))
        self._flush(tags)
        self._tracker.terminate(self.run_id, STATUS[state])
        self._tracker.open_runs.pop(self.run_id, None)

    def _flush(self, tags: list[RunTag] | None = None) -> None:
        if self._pending or tags:
            self._tracker.client.log_batch(self.run_id, metrics=self._pending, tags=tags or [])
        self._pending = []
        self._last_flush = time.monotonic()


class MlflowTracker:
    name = "mlflow"

    def __init__(self, results_dir: Path) -> None:
        if MlflowClient is None:
            raise BenchmarkError("--tracker mlflow: the mlflow package is not installed; "
                                 "install it with: pip install -e '.[mlflow]'")
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        self._artifact_location = None
        lock = contextlib.nullcontext()
        if not uri:
            results_dir = Path(results_dir).resolve()
            results_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{results_dir / 'mlflow.db'}"
            # Without this, runs of a local store put their artifacts in ./mlruns of the cwd.
            self._artifact_location = (results_dir / "mlartifacts").as_uri()
            lock = _exclusive(results_dir / "mlflow.db.lock")
        self.failed = False
        self.open_runs: dict[str, _MlflowRun] = {}
        self._studies: dict[str, _Study] = {}
        masked = mask_password(uri)
        try:
            with lock:
                self.client = MlflowClient(tracking_uri=uri)  # checks the URI; no request to a server yet
        except Exception as error:  # a bad URI is bad input, refused before any training
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BenchmarkError(f"--tracker mlflow: cannot use tracking URI {masked}: "
                                 f"{mask_password(detail)}") from None
        self._server = masked.rstrip("/") if uri.startswith(("http://", "https://")) else None
        if self._server:
            how = f"open {masked} in a browser"
        elif uri.startswith("databricks"):
            how = "open the experiment in the Databricks workspace"
        else:
            how = f"mlflow ui --backend-store-uri {masked}"
        print(f"mlflow: tracking to {masked}  ({how})", file=sys.stderr, flush=True)

    # Study level ---------------------------------------------------------------------

    @_marks_failure
    def start_study(self, info: StudyInfo) -> list[StudyCallback]:
        self._studies[info.study_name] = _Study(info, self._experiment_id(info.benchmark))
        return [functools.partial(self._log_study_progress, info.study_name, info.metric)]

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=self._artifact_location,
                                                     tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)  # another worker made it first
        if experiment.lifecycle_stage != "active":
            raise RuntimeError(f"MLflow experiment '{name}' is deleted; restore it with `mlflow "
                               f"experiments restore --experiment-id {experiment.experiment_id}`")
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before this tag; a user's own choice stays
            self.client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return experiment.experiment_id

    def _open_parent(self, record: _Study, trial_number: int) -> str:
        """The study's parent run: the latest one of this study and storage while it is still
        running (another worker of this run); a new one otherwise, e.g. for a top-up.

        A parent that already holds this trial number belongs to an earlier study of the
        same name (its storage deleted and made anew), so it is left alone.
        """
        info = record.info
        tags = {"run_kind": "study", "study": info.study_name, "benchmark": info.benchmark,
                "dataset": info.dataset, "metric": info.metric, "optuna_storage": info.storage_url}
        quotable = "'" not in info.study_name + info.storage_url  # search filters have no escapes
        parents = self.client.search_runs(
            [record.experiment_id], max_results=1, order_by=["attributes.start_time DESC"],
            filter_string=f"tags.run_kind = 'study' and tags.study = '{info.study_name}' "
                          f"and tags.optuna_storage = '{info.storage_url}'",
        ) if quotable else []
        if parents and parents[0].info.status == "RUNNING" and not self.client.search_runs(
            [record.experiment_id], max_results=1,
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parents[0].info.run_id}' "
                          f"and tags.trial_number = '{trial_number}'",
        ):
            run_id = parents[0].info.run_id
        else:
            run_id = self.client.create_run(record.experiment_id, run_name=info.study_name,
                                            tags=tags).info.run_id
        if self._server:
            print(f"mlflow: {info.study_name} -> {self._server}/#/experiments/{record.experiment_id}"
                  f"/runs/{run_id}{MODEL_TRAINING_VIEW}", file=sys.stderr, flush=True)
        return run_id

    @_marks_failure
    def _log_study_progress(self, study_name: str, metric: str, study, trial) -> None:
        """After each trial: the best value so far and the counts, one point per trial number."""
        record = self._studies.get(study_name)
        if record is None or record.run_id is None:
            return
        counts = Counter(t.state for t in study.get_trials(deepcopy=False))
        now = _now_ms()
        metrics = [Metric(f"study/{word}_trials", counts[state], now, trial.number)
                   for word, state in (("complete", TrialState.COMPLETE), ("pruned", TrialState.PRUNED),
                                       ("failed", TrialState.FAIL))]
        if counts[TrialState.COMPLETE]:
            metrics.append(Metric(f"study/best_{metric}", float(study.best_value), now, trial.number))
        self.client.log_batch(record.run_id, metrics=metrics)

    @_marks_failure
    def end_study(self, study_name: str, attachments: list[Path]) -> None:
        record = self._studies.pop(study_name, None)
        if record is None or record.run_id is None:
            return  # no trial ran for this study here (it was already at its target)
        for path in attachments:
            self.client.log_artifact(record.run_id, str(path), artifact_path=ARTIFACT_DIR)
        self.terminate(record.run_id, "FINISHED")

    # Trial level ---------------------------------------------------------------------

    @_marks_failure
    def start_trial(self, study_name: str, trial_number: int, params: dict[str, object],
                    tags: dict[str, str]) -> TrialRun:
        record = self._studies.get(study_name)
        if record is None:
            raise RuntimeError(f"trial {trial_number} of {study_name} started before its study")
        if record.run_id is None:
            record.run_id = self._open_parent(record, trial_number)
        run_tags = {**{key: str(value) for key, value in tags.items()}, "run_kind": "trial",
                    "trial_number": str(trial_number), "state": "running",
                    MLFLOW_PARENT_RUN_ID: record.run_id}
        name = f"trial-{trial_number}" + (f"-{tags['encoder']}" if "encoder" in tags else "")
        run_id = self.client.create_run(record.experiment_id, run_name=name, tags=run_tags).info.run_id
        self.client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
        run = _MlflowRun(self, run_id, int(params.get("batch_size", 1)), record.info.metric)
        self.open_runs[run_id] = run
        return run

    # Shared --------------------------------------------------------------------------

    def terminate(self, run_id: str, status: str) -> None:
        # Against a server MLflow prints two "View run/experiment at: URL" lines on stdout
        # for every run it ends. stdout carries the leaderboard here, and the study's link
        # was printed when its parent run opened: drop them.
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(run_id, status)

    def close(self) -> None:
        if self.failed:
            return  # no more requests to a tracker that failed: each could retry for minutes
        # Still open only if the harness was stopped (Ctrl-C) mid-trial or before end_study.
        # Optuna records such a trial as failed.
        for run in list(self.open_runs.values()):
            run.finish("interrupted", INTERRUPTED)
        for study_name in list(self._studies):
            record = self._studies.pop(study_name)
            if record.run_id is not None:
                self.terminate(record.run_id, "KILLED")
