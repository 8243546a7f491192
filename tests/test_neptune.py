"""The Neptune tracker, end to end, with no network: offline runs read back from disk.

How runs are read back. Debug mode keeps runs in memory only, hands every run the same
sys/id (OFFLINE-1) and renumbers series steps 0, 1, 2... on fetch, so it cannot show what
a server would get. Offline mode writes, per run, the exact operations `neptune sync`
later uploads: RESULTS/neptune/.neptune/offline/run__<uuid>__<pid>__<key>/ with
`metadata.json`, `data-<n>.log` (one JSON object a line, {"obj": <Operation.to_dict()>,
"version": n, "at": t}; see neptune/core/components/queue/disk_queue.py and
neptune/internal/operation.py) and `upload_path/` (the content of in-memory files). The
tests replay those operations into fields, series, tags and files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pytest

from benchmark.cli import main
from benchmark.errors import BenchmarkError
from benchmark.redaction import mask_password
from benchmark.report.html import EXPECTED_PERFORMANCE_PNG, REPORT_FILE, REPORT_FILES
from benchmark.report.results import RESULT_FILES
from benchmark.schema import SURPLUS_ATTR
from benchmark.search import study as study_module
from benchmark.search import trial as trial_module
from benchmark.tracking.base import StudyInfo
from benchmark.tracking.neptune_backend import NeptuneTracker, resolve_mode
from benchmark.train.records import Evaluation, StepLog
from tests.helpers import write_config

NEPTUNE_ENV = ("NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT", "NEPTUNE_MODE", "NEPTUNE_DATA_DIRECTORY")
TRAIN_SERIES = ("train/loss", "train/lr", "train/grad_norm", "train/tokens_per_second")


@pytest.fixture(autouse=True)
def _no_neptune_env(monkeypatch):
    for name in NEPTUNE_ENV:
        monkeypatch.delenv(name, raising=False)


@dataclass
class OfflineRun:
    id: str  # the container id: the run is "offline/<id>" until synced
    directory: Path
    fields: dict[str, object] = field(default_factory=dict)
    series: dict[str, list[tuple[float, object]]] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    files: dict[str, bytes] = field(default_factory=dict)

    def steps(self, name: str) -> list[float]:
        return [step for step, _ in self.series[name]]

    def values(self, name: str) -> list[object]:
        return [value for _, value in self.series[name]]


def read_offline_runs(data_dir: Path) -> list[OfflineRun]:
    runs = []
    for directory in sorted((data_dir / "offline").glob("run__*")):
        metadata = json.loads((directory / "metadata.json").read_text())
        assert metadata["mode"] == "offline" and metadata["containerType"] == "run"
        entries = []
        for log in sorted(directory.glob("data-*.log"), key=lambda p: int(p.stem.split("-")[1])):
            entries += [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        run = OfflineRun(metadata["containerId"], directory)
        for entry in sorted(entries, key=lambda e: e["version"]):
            op = entry["obj"]
            path = "/".join(op["path"])
            kind = op["type"]
            if kind.startswith("Assign"):
                run.fields[path] = op["value"]
            elif kind in ("LogFloats", "LogStrings"):
                run.series.setdefault(path, []).extend((v["step"], v["value"]) for v in op["values"])
            elif kind == "AddStrings" and path == "sys/tags":
                run.tags |= set(op["values"])
            elif kind == "UploadFile":
                source = Path(op["file_path"]) if op["file_path"] else directory / "upload_path" / op["tmp_file_name"]
                run.files[path] = source.read_bytes()
            elif kind == "DeleteAttribute":
                for fields in (run.fields, run.series, run.files):
                    fields.pop(path, None)
            elif kind != "UploadFileSet":
                raise AssertionError(f"unexpected operation {kind} at {path}")
        runs.append(run)
    return runs


def all_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file())


def disk_use(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


class PruneTrialZero(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == 0


def test_cli_study_gives_one_run_per_trial_and_a_study_run(tmp_path, tiny_encoders, monkeypatch, capsys):
    """Trial 0 pruned (so no trial is complete at the first callback), trial 1 failed
    (its value is None): both broke neptune-optuna's stock callback."""
    monkeypatch.setattr(study_module, "make_pruner", lambda spec: PruneTrialZero())
    real_loader, calls = trial_module.load_classifier, []

    def failing_second_load(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("simulated")
        return real_loader(*args, **kwargs)

    monkeypatch.setattr(trial_module, "load_classifier", failing_second_load)
    # Three trials of two encoders: the sampler, not the balanced comparison, picks them.
    config = write_config(tmp_path, tiny_encoders, encoders=("bert", "distilbert"), comparison="search")
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results), "--datasets", "topics",
                 "--n-trials", "3", "--tracker", "neptune"]) == 0
    captured = capsys.readouterr()
    assert "tracker 'neptune' failed" not in captured.err
    assert captured.err.count("neptune: offline mode") == 1
    data_dir = results / "neptune" / ".neptune"
    assert f"sync()' --path {results.resolve() / 'neptune'} --project WORKSPACE/PROJECT" in captured.err \
        or f"neptune sync --path {results.resolve() / 'neptune'} --project WORKSPACE/PROJECT" in captured.err
    assert "[neptune]" not in captured.out, "the client's log lines stay off stdout (the leaderboard)"

    runs = read_offline_runs(data_dir)
    trial_runs = {run.fields["trial_number"]: run for run in runs if run.fields.get("kind") == "trial"}
    study_runs = [run for run in runs if run.fields.get("kind") == "study"]
    storage = f"sqlite:///{results / 'optuna.db'}"
    study = optuna.load_study(study_name="tiny-topics", storage=storage)
    states = {t.number: t.state for t in study.trials}
    # 3 finished trials: 0 pruned, 1 failed (not counted), then complete ones.
    assert states[0] == optuna.trial.TrialState.PRUNED and states[1] == optuna.trial.TrialState.FAIL
    assert len(states) >= 3 and all(states[n] == optuna.trial.TrialState.COMPLETE for n in states if n >= 2)
    assert sorted(trial_runs) == sorted(states) and len(study_runs) == 1

    expected_state = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
                      optuna.trial.TrialState.FAIL: "failed"}
    for trial in study.trials:
        run = trial_runs[trial.number]
        assert trial.user_attrs["neptune_run_id"] == f"offline/{run.id}" == run.fields["offline_id"]
        assert run.fields["study_name"] == "tiny-topics" and run.fields["dataset"] == "topics"
        assert run.fields["benchmark"] == "tiny" and run.fields["metric"] == "accuracy"
        assert run.fields["sys/name"] == f"tiny-topics trial {trial.number}"
        encoder = trial.params["encoder"]
        state = expected_state[trial.state]
        assert run.tags == {"tiny-topics", "topics", encoder, state}
        assert run.fields["state"] == state
        params = {path.removeprefix("parameters/"): value for path, value in run.fields.items()
                  if path.startswith("parameters/")}
        assert params.keys() == trial.params.keys()
        for name, value in trial.params.items():
            assert params[name] == (pytest.approx(value) if isinstance(value, float) else value)
        # What the client must not collect: streams, hardware, tracebacks, sources, git.
        assert not any(p.startswith(("monitoring", "source_code/files", "source_code/diff", "source_code/git"))
                       for p in [*run.fields, *run.series, *run.files])
        assert not any(p.startswith("source_code/") and p != "source_code/entrypoint" for p in run.fields)

        if trial.state == optuna.trial.TrialState.FAIL:
            assert run.fields["state_reason"] == trial.user_attrs["fail_reason"] == "MemoryError: simulated"
            assert run.fields["sys/failed"] is True
            assert not any(name.startswith(("train/", "eval/")) for name in run.series)
            continue
        assert run.fields["sys/failed"] is False
        # Curves: one point per step (short trials: no downsampling), x = the step.
        for name in TRAIN_SERIES:
            steps = run.steps(name)
            assert steps == list(range(1, len(steps) + 1)), name
            assert all(isinstance(v, float) and math.isfinite(v) for v in run.values(name))
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert "state_reason" not in run.fields
            assert len(run.steps("train/loss")) == trial.user_attrs["steps"]
        else:
            assert run.fields["state_reason"] == trial.user_attrs["prune_reason"]
            assert run.fields["state_reason"].startswith("pruned after 48 examples")
        # Evaluations: x = examples seen, the same x as the trial's intermediate values.
        examples = sorted(trial.intermediate_values)
        for name in ("eval/loss", "eval/accuracy", "eval/macro_f1", "eval/mcc", "eval/epoch", "eval/step"):
            assert run.steps(name) == examples, name
        assert run.values("eval/accuracy") == pytest.approx([trial.intermediate_values[x] for x in examples])
        last_epoch = run.values("eval/epoch")[-1]
        assert 0 < last_epoch <= trial.params["num_epochs"]

    (study_run,) = study_runs
    assert study_run.tags == {"tiny-topics", "topics", "study"}
    assert study_run.fields["study/storage_url"] == storage  # masked already: sqlite has no password
    assert study_run.fields["study/storage_type"] == "RDBStorage"
    assert study_run.fields["study/study_name"] == "tiny-topics"
    assert study_run.fields["study/user_attrs/dataset"] == "topics"  # logged although trial 0 was pruned
    assert study_run.fields["source_code/integrations/neptune-optuna"]
    for trial in study.trials:  # every trial, the failed one too; and the link back to its run
        prefix = f"trials/trials/{trial.number}"
        assert study_run.fields[f"{prefix}/user_attrs/neptune_run_id"] == trial.user_attrs["neptune_run_id"]
        assert study_run.fields[f"{prefix}/params/encoder"] == trial.params["encoder"]
    assert study_run.fields["trials/trials/1/state"] == repr(optuna.trial.TrialState.FAIL)
    assert study_run.fields["best/value"] == pytest.approx(study.best_value)
    # A pruned trial's value is its last report; a failed trial has none.
    assert study_run.steps("trials/values") == [n for n in sorted(states) if n != 1]
    for name in ("plot_optimization_history", "plot_intermediate_values", "plot_parallel_coordinate",
                 "plot_slice", "plot_param_importances"):
        html = study_run.files[f"visualizations/{name}"]
        assert b"cdn.plot.ly" in html and len(html) < 200_000, name  # plotly.js loaded, not embedded
    attached = [name for name in (*RESULT_FILES, *REPORT_FILES) if (results / name).is_file()]
    assert {REPORT_FILE, EXPECTED_PERFORMANCE_PNG} <= set(attached)
    for name in attached:
        stem, extension = name.split(".")
        assert study_run.files[f"leaderboards/{stem}_{extension}"] == (results / name).read_bytes()
    best_paths = {path.split("/")[2] for path in study_run.fields if path.startswith("best/trials/")}
    assert best_paths == {str(study.best_trial.number)}, "only the current best trial under best/"


def test_no_password_or_api_token_reaches_the_run_data(tmp_path, monkeypatch, capsys):
    token = "tok-3c1f-very-secret-api-token"
    monkeypatch.setenv("NEPTUNE_API_TOKEN", token)
    monkeypatch.setenv("NEPTUNE_PROJECT", "team/encoders")
    monkeypatch.setenv("NEPTUNE_MODE", "offline")  # credentials set, yet offline when told so
    url = "postgresql://bench:secret@db.internal/optuna"
    tracker = NeptuneTracker(tmp_path)
    assert tracker.mode == "offline"
    info = StudyInfo("bench-news", "bench", "news", "accuracy", mask_password(url))
    callbacks = tracker.start_study(info)
    # An RDB storage that holds the password, as a PostgreSQL one would (sqlite underneath).
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    storage.url = url
    study = optuna.create_study(direction="maximize", study_name="bench-news", storage=storage)
    study.set_user_attr("dataset", "news")

    def objective(trial):
        if trial.number == 3:  # what benchmark.search.study does with a trial two workers claimed
            trial.set_user_attr(SURPLUS_ATTR, True)
            raise RuntimeError("surplus")
        params = {"learning_rate": trial.suggest_float("learning_rate", 1e-5, 1e-3)}
        run = tracker.start_trial("bench-news", trial.number, params,
                                  {"study": "bench-news", "dataset": "news", "encoder": "bert"})
        for key, value in run.links().items():
            trial.set_user_attr(key, value)
        run.log_step(StepLog(1, 0.7, 1e-4, 1.0, 100.0))
        run.log_evaluation(Evaluation(1, 16, 0.5, 0.6, {"accuracy": 0.5}))
        if trial.number == 1:  # a failure whose message holds the URL, as the harness records it
            reason = f"OperationalError: could not connect to {url}"
            trial.set_user_attr("fail_reason", reason)
            run.finish("failed", reason)
            raise RuntimeError("storage gone")
        run.finish("complete", None)
        return 0.5

    study.optimize(objective, n_trials=4, callbacks=callbacks, catch=(RuntimeError,))
    (tmp_path / "leaderboard.md").write_text("| encoder | news |\n")
    tracker.end_study("bench-news", [tmp_path / "leaderboard.md"])
    tracker.close()

    data = all_bytes(tmp_path / "neptune")
    assert data and b"secret" not in data and token.encode() not in data
    assert b"postgresql://bench:***@db.internal/optuna" in data
    runs = read_offline_runs(tmp_path / "neptune" / ".neptune")
    (study_run,) = [run for run in runs if run.fields["kind"] == "study"]
    assert study_run.fields["study/storage_url"] == "postgresql://bench:***@db.internal/optuna"
    assert study_run.fields["study/storage_type"] == "RDBStorage"
    masked_reason = "OperationalError: could not connect to postgresql://bench:***@db.internal/optuna"
    assert study_run.fields["trials/trials/1/user_attrs/fail_reason"] == masked_reason
    assert not any(path.startswith("trials/trials/3/") for path in study_run.fields), "a surplus trial never ran"
    assert sum(run.fields["kind"] == "trial" for run in runs) == 3
    failed = next(run for run in runs if run.fields.get("state") == "failed")
    assert failed.fields["state_reason"] == masked_reason
    assert study_run.files["leaderboards/leaderboard_md"] == b"| encoder | news |\n"
    err = capsys.readouterr().err
    assert "--project team/encoders" in err and token not in err


def test_stock_callback_skips_rdb_storage_urls_only_because_optuna_removed_redis_storage(tmp_path, monkeypatch):
    """Why the study run logs the (masked) storage URL itself: neptune-optuna 1.4's
    `_log_study` tests `isinstance(storage, optuna.storages.RedisStorage)` first, inside
    `contextlib.suppress(AttributeError)`; Optuna 4 removed RedisStorage, so nothing after it
    runs and the URL is never logged. Were it logged, it would be `storage.url`, password and
    all. If this test starts failing, neptune-optuna has changed that code: look again."""
    import neptune
    from neptune_optuna import NeptuneCallback

    assert not hasattr(optuna.storages, "RedisStorage")
    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(tmp_path / ".neptune"))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    storage.url = "postgresql://bench:secret@db.internal/optuna"
    study = optuna.create_study(direction="maximize", storage=storage, study_name="s")
    run = neptune.init_run(mode="offline", capture_stdout=False, capture_stderr=False,
                           capture_hardware_metrics=False, capture_traceback=False, source_files=[], git_ref=False)
    stock = NeptuneCallback(run, plots_update_freq="never")  # study_update_freq=1: the default
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1, callbacks=[stock])
    run.stop()
    (logged,) = read_offline_runs(tmp_path / ".neptune")
    assert logged.fields["study/study_name"] == "s"  # the callback ran
    assert "study/storage_url" not in logged.fields and "study/storage_type" not in logged.fields
    assert b"secret" not in all_bytes(tmp_path / ".neptune")


def _fake_trial(tracker: NeptuneTracker, trial: optuna.Trial, steps: int, eval_every: int) -> float:
    """A trial shaped like the default config's longest (2,000 examples x 3 epochs / 16)."""
    lr = trial.suggest_float("learning_rate", 2e-5, 2e-4, log=True)
    encoder = trial.suggest_categorical("encoder", ["minilm-l6", "mpnet-base"])
    params = {"encoder": encoder, "learning_rate": lr,
              "warmup_ratio": trial.suggest_float("warmup_ratio", 0, 0.2),
              "dropout": trial.suggest_float("dropout", 0, 0.2),
              "batch_size": trial.suggest_categorical("batch_size", [16, 32]),
              "num_epochs": trial.suggest_int("num_epochs", 1, 3)}
    run = tracker.start_trial("default-news", trial.number, params,
                              {"study": "default-news", "dataset": "news", "encoder": encoder})
    for key, value in run.links().items():
        trial.set_user_attr(key, value)
    accuracy = 0.0
    for step in range(1, steps + 1):
        run.log_step(StepLog(step, 1.0 / step, lr * (1 - step / steps), 1.0 + 1.0 / step, 5000.0 + step))
        if step % eval_every == 0 or step == steps:
            accuracy = min(1.0, lr * 5000 * step / steps)
            run.log_evaluation(Evaluation(step, step * 16, step * 16 / 2000, 1 - accuracy,
                                          {"accuracy": accuracy, "macro_f1": accuracy, "mcc": accuracy}))
            trial.report(accuracy, step * 16)
            if step < steps and trial.should_prune():
                run.finish("pruned", f"pruned after {step * 16} examples")
                raise optuna.TrialPruned()
    run.finish("complete", None)
    return accuracy


def test_twenty_trials_offline_stay_under_20_mb(tmp_path):
    tracker = NeptuneTracker(tmp_path)
    info = StudyInfo("default-news", "default", "news", "accuracy", "sqlite:///results/optuna.db")
    callbacks = tracker.start_study(info)
    study = optuna.create_study(direction="maximize", study_name="default-news",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=960))
    study.optimize(lambda trial: _fake_trial(tracker, trial, steps=375, eval_every=30), n_trials=20,
                   callbacks=callbacks)
    for name in ("leaderboard.csv", "trials.csv"):
        (tmp_path / name).write_text("x\n" * 200)
    tracker.end_study("default-news", [tmp_path / "leaderboard.csv", tmp_path / "trials.csv"])
    tracker.close()

    used = disk_use(tmp_path / "neptune")
    print(f"\nneptune offline data for 20 trials: {used / 1e6:.2f} MB")
    assert used <= 20 * 1024 * 1024
    runs = read_offline_runs(tmp_path / "neptune" / ".neptune")
    trial_runs = [run for run in runs if run.fields["kind"] == "trial"]
    assert len(trial_runs) == 20 and sum(run.fields["kind"] == "study" for run in runs) == 1
    assert {run.fields["state"] for run in trial_runs} == {"complete", "pruned"}
    links = {trial.user_attrs["neptune_run_id"] for trial in study.trials}
    assert links == {f"offline/{run.id}" for run in trial_runs}
    for run in trial_runs:
        first = run.steps("train/loss")[:250]
        assert first == list(range(1, len(first) + 1))  # every step at first
        if run.fields["state"] == "complete":  # 375 steps: 250 points, then one per 2 steps
            assert run.steps("train/loss")[250:] == [*range(252, 376, 2), 375]
        assert run.steps("train/loss")[-1] == run.values("eval/step")[-1]  # the curve reaches the last evaluation
        assert run.steps("eval/accuracy") == [int(step) * 16 for step in run.values("eval/step")]


def test_long_trials_are_downsampled_to_a_logarithmic_number_of_points(tmp_path):
    tracker = NeptuneTracker(tmp_path)
    run = tracker.start_trial("s", 0, {"encoder": "bert"}, {"study": "s", "dataset": "d", "encoder": "bert"})
    steps = 20_000
    for step in range(1, steps + 1):
        run.log_step(StepLog(step, float(step), 1e-4, 1.0, 100.0))
    run.finish("complete", None)
    tracker.close()
    (offline,) = read_offline_runs(tmp_path / "neptune" / ".neptune")
    points = offline.series["train/loss"]
    # 250 points each at stride 1, 2, 4, 8, 16, 32 (15,750 steps), then 4,250 steps at
    # stride 64: 66 full windows and a partial one. 1,567 points, not 20,000.
    assert len(points) == 6 * 250 + 67
    assert [step for step, _ in points][:251] == [*range(1, 251), 252]
    assert points[250] == (252, 251.5)  # a window's point is its mean, at its last step
    assert points[-1][0] == steps  # the last, partial window is kept
    assert all(b[0] > a[0] for a, b in zip(points, points[1:]))
    for name in TRAIN_SERIES:
        assert len(offline.series[name]) == len(points)


@pytest.mark.parametrize(
    ("url", "expected"),
    [("sqlite:///results/optuna.db", "RDBStorage"), ("postgresql://u:***@h/db", "RDBStorage"),
     ("journal:results/optuna.log", "JournalStorage"), ("redis://:***@h:6379/0", "JournalStorage")],
)
def test_study_run_names_the_storage_class_the_url_opens(url, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("NEPTUNE_MODE", "debug")
    tracker = NeptuneTracker(tmp_path)
    tracker.start_study(StudyInfo("s", "b", "d", "accuracy", url))
    run = tracker._studies["s"].run
    assert run["study/storage_type"].fetch() == expected and run["study/storage_url"].fetch() == url
    tracker.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "offline"),
        ({"NEPTUNE_API_TOKEN": "t"}, "offline"),
        ({"NEPTUNE_API_TOKEN": "t", "NEPTUNE_PROJECT": "w/p"}, "async"),
        ({"NEPTUNE_API_TOKEN": "t", "NEPTUNE_PROJECT": "w/p", "NEPTUNE_MODE": "sync"}, "sync"),
        ({"NEPTUNE_MODE": "debug"}, "debug"),
        ({"NEPTUNE_MODE": "offline", "NEPTUNE_API_TOKEN": "t", "NEPTUNE_PROJECT": "w/p"}, "offline"),
    ],
)
def test_mode_follows_the_environment(env, expected):
    assert resolve_mode(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"NEPTUNE_MODE": "read-only"}, "NEPTUNE_MODE: 'read-only' is not a mode"),
        ({"NEPTUNE_MODE": "async"}, "NEPTUNE_MODE=async needs NEPTUNE_API_TOKEN and NEPTUNE_PROJECT"),
    ],
)
def test_unusable_mode_fails_before_any_training(env, message, tmp_path, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BenchmarkError, match=message):
        NeptuneTracker(tmp_path)


def test_debug_mode_keeps_everything_in_memory(tmp_path, monkeypatch):
    """Debug mode serves fetch() from memory until a run stops (then it refuses): enough to
    check the fields; the offline tests check what a server would get."""
    monkeypatch.setenv("NEPTUNE_MODE", "debug")
    tracker = NeptuneTracker(tmp_path)
    assert tracker.mode == "debug"
    tracker.start_study(StudyInfo("s", "b", "d", "accuracy", "sqlite:///x.db"))
    run = tracker.start_trial("s", 4, {"learning_rate": 1e-4, "encoder": "bert"},
                              {"study": "s", "dataset": "d", "encoder": "bert"})
    assert run.links()["neptune_run_id"].startswith("offline/")
    run.log_step(StepLog(1, 0.5, 1e-4, 1.0, 10.0))
    run.log_evaluation(Evaluation(1, 16, 0.5, 0.4, {"accuracy": 0.9}))
    neptune_run = run.run
    assert neptune_run["parameters/learning_rate"].fetch() == pytest.approx(1e-4)
    assert neptune_run["parameters/encoder"].fetch() == "bert"
    assert neptune_run["trial_number"].fetch() == 4
    assert neptune_run["sys/tags"].fetch() == {"s", "d", "bert"}
    assert list(neptune_run["eval/accuracy"].fetch_values()["value"]) == [0.9]
    assert list(neptune_run["train/loss"].fetch_values()["value"]) == [0.5]
    run.finish("pruned", "pruned after 16 examples")
    assert neptune_run.get_state() == "stopped"
    tracker.end_study("s", [])
    tracker.close()
    assert not [path for path in tmp_path.rglob("*") if path.is_file()], "debug mode writes no file"


def test_close_stops_open_runs_and_marks_unfinished_trials_interrupted(tmp_path):
    tracker = NeptuneTracker(tmp_path)
    tracker.start_study(StudyInfo("s", "b", "d", "accuracy", "sqlite:///x.db"))
    finished = tracker.start_trial("s", 0, {"encoder": "bert"}, {"study": "s", "dataset": "d", "encoder": "bert"})
    finished.finish("complete", None)
    cut_short = tracker.start_trial("s", 1, {"encoder": "bert"}, {"study": "s", "dataset": "d", "encoder": "bert"})
    cut_short.log_step(StepLog(1, 0.5, 1e-4, 1.0, 10.0))  # buffered: written when the run stops
    tracker.close()
    tracker.close()  # twice is harmless
    assert finished.run.get_state() == cut_short.run.get_state() == "stopped"
    runs = {run.fields.get("trial_number"): run for run in read_offline_runs(tmp_path / "neptune" / ".neptune")}
    assert runs[0].fields["state"] == "complete"
    assert runs[1].fields["state"] == "interrupted" and "interrupted" in runs[1].tags
    assert runs[1].series["train/loss"] == [(1, 0.5)]
    assert runs[None].fields["kind"] == "study"


def test_study_run_shows_only_the_current_best_trial(tmp_path):
    """neptune-optuna only adds under best/trials/: a former best stayed there as if current."""
    tracker = NeptuneTracker(tmp_path, mode="offline", plots=())
    callbacks = tracker.start_study(StudyInfo("bench-news", "bench", "news", "accuracy", "sqlite:///o.db"))
    study = optuna.create_study(direction="maximize")
    space = {"lr": optuna.distributions.FloatDistribution(1e-5, 1e-3)}
    for value, lr in ((0.5, 1e-4), (0.7, 2e-4), (0.6, 3e-4)):  # trial 1 overtakes trial 0, then stays
        study.add_trial(optuna.trial.create_trial(value=value, params={"lr": lr}, distributions=space))
        for callback in callbacks:
            callback(study, study.trials[-1])
    tracker.end_study("bench-news", [])
    tracker.close()
    (run,) = read_offline_runs(tmp_path / "neptune" / ".neptune")
    best = {path for path in run.fields if path.startswith("best/trials/")}
    assert best and {path.split("/")[2] for path in best} == {"1"}
    assert run.fields["best/value"] == 0.7 and run.fields["best/trials/1/value"] == 0.7
    assert {path.split("/")[2] for path in run.fields if path.startswith("trials/trials/")} == {"0", "1", "2"}
