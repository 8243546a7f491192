"""The command line's edges: bad flags, read-only rebuilds, SIGTERM and Ctrl-C, secrets."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from benchmark import tracking
from benchmark.cli import main
from benchmark.schema import BENCHMARK_ATTR, DATASET_ATTR, INTERRUPTED_ATTR, METRIC_ATTR
from tests.helpers import ROOT, as_if_in_a_terminal, study_with_every_state, training_trial, wait_for, write_config

SLOW_TRIALS = {"type": "int", "low": 40, "high": 40}  # epochs: a tiny trial that lasts seconds


@pytest.mark.parametrize("flags, named", [
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "inf"], "--timeout"),
    (["--timeout=-inf"], "--timeout"),  # spelled so that argparse does not take it for a flag
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "-5"], "--timeout"),
    (["--n-trials", "0"], "--n-trials"),
    (["--n-trials", "-2"], "--n-trials"),
    (["--workers", "0"], "--workers"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "4294967296"], "--seed"),
    (["--seeds", "1"], "--seeds"),
    (["--storage", " "], "--storage"),
])
def test_a_bad_flag_value_is_one_line_exit_2_and_creates_nothing(tmp_path, capsys, flags, named):
    results = tmp_path / "results"
    code = main(["--study", "--config", str(tmp_path / "never_read.yaml"), "--results-dir", str(results), *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {named} ") and err.count("\n") == 1, err
    assert not results.exists()


def test_tracker_help_lists_every_tracker_make_tracker_accepts(capsys, monkeypatch):
    monkeypatch.setitem(tracking.TRACKERS, "recorder", object)  # a registered tracker shows up too
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("--tracker"))
    assert line.endswith("experiment trackers for trial curves, comma-separated: none (default), neptune, "
                         "mlflow, recorder"), line


def test_the_largest_seed_runs(tmp_path, tiny_encoders, capsys):
    """Every seed derived from --seed (per trial, per final run, per sampler) stays valid; the
    final evaluation says what it will train and how long that takes before it starts."""
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space__num_epochs={
        "type": "int", "low": 1, "high": 1})
    results = tmp_path / "results"
    assert main(["--study", "--config", str(config), "--results-dir", str(results), "--datasets", "topics",
                 "--n-trials", "1", "--seed", str(2**32 - 1)]) == 0
    assert main(["--final-eval", "--config", str(config), "--results-dir", str(results), "--datasets", "topics",
                 "--seeds", "2", "--seed", str(2**32 - 1)]) == 0
    assert pd.read_csv(results / "final.csv")["seeds"].tolist() == [2]
    err = capsys.readouterr().err
    plan = err.index("[topics] final evaluation: 2 run(s) to train: bert 2 (")
    assert plan < err.index("final evaluation: about ") < err.index("[topics] final bert"), err
    assert main(["--final-eval", "--config", str(config), "--results-dir", str(results), "--datasets", "topics",
                 "--seeds", "2", "--seed", str(2**32 - 1)]) == 0
    assert "[topics] final evaluation: 0 run(s) to train: bert 0 (0 s)" in capsys.readouterr().err, "resumed"


def test_leaderboard_reads_running_and_queued_trials_quietly(tmp_path, capfd):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    study_with_every_state(url)
    results = tmp_path / "results"
    optuna.logging.set_verbosity(optuna.logging.INFO)  # as in a fresh process
    try:
        assert main(["--leaderboard", "--storage", url, "--results-dir", str(results)]) == 0
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    captured = capfd.readouterr()
    assert captured.err == "", "a read-only command prints only the tables"
    assert "| bert " in captured.out
    row = pd.read_csv(results / "datasets.csv").iloc[0]
    assert (row["complete"], row["pruned"], row["failed"], row["interrupted"], row["running"]) == (2, 0, 1, 1, 2)
    assert row["best_value"] == 0.8
    trials = pd.read_csv(results / "trials.csv")
    assert trials["state"].tolist() == ["COMPLETE", "COMPLETE", "FAIL", "INTERRUPTED", "RUNNING", "WAITING"]
    costs = pd.read_csv(results / "costs.csv").set_index("encoder")
    assert costs["failed"].to_dict() == {"bert": 1, "roberta": 0}, "an interrupted trial is no failure"


@pytest.mark.parametrize("mistyped", ["sqlite:///{dir}/optuna_typo.db", "sqlite:///{dir}/no/such/dir/optuna.db",
                                      "journal:{dir}/typo.log"])
def test_leaderboard_with_a_mistyped_storage_writes_and_creates_nothing(tmp_path, capsys, mistyped):
    url = f"sqlite:///{tmp_path / 'good.db'}"
    study_with_every_state(url)
    results = tmp_path / "results"
    assert main(["--leaderboard", "--storage", url, "--results-dir", str(results)]) == 0
    before = {path: path.read_bytes() for path in results.iterdir()}
    listing = sorted(tmp_path.rglob("*"))
    capsys.readouterr()

    typo = mistyped.format(dir=tmp_path)
    assert main(["--leaderboard", "--storage", typo, "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage: no benchmark study") and typo in err and err.count("\n") == 1
    assert sorted(tmp_path.rglob("*")) == listing, "no storage file or folder created"
    assert {path: path.read_bytes() for path in results.iterdir()} == before, "the tables are untouched"


def test_leaderboard_on_a_database_without_benchmark_studies_writes_nothing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(storage=url, study_name="someone-else").add_trial(optuna.trial.create_trial(value=1.0))
    results = tmp_path / "results"
    assert main(["--leaderboard", "--storage", url, "--results-dir", str(results)]) == 2
    assert "no benchmark study" in capsys.readouterr().err
    assert not results.exists()


def test_final_eval_with_a_mistyped_storage_creates_nothing(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    typo = tmp_path / "typo.db"
    assert main(["--final-eval", "--config", str(config), "--storage", f"sqlite:///{typo}",
                 "--results-dir", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --final-eval: no study tiny-topic_pairs, tiny-topics in ") and "--study" in err
    assert not typo.exists() and not (tmp_path / "results").exists()


def test_an_unwritable_results_dir_fails_before_training(tmp_path, tiny_encoders, capsys):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    storage = tmp_path / "optuna.db"
    assert main(["--study", "--config", str(config), "--results-dir", str(blocker / "results"),
                 "--storage", f"sqlite:///{storage}", "--n-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --results-dir: cannot write to {blocker / 'results'} (Not a directory); "
                   "choose another directory or fix its permissions\n")
    assert not storage.exists(), "stopped before the storage was opened, let alone a trial trained"


def _stop_mid_trial(tmp_path: Path, tiny_encoders, sent: signal.Signals, workers: int = 1):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space__num_epochs=SLOW_TRIALS,
                          training__precision="fp32")  # nothing to measure before the first trial
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    results = tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "--study", "--config", str(config), "--results-dir", str(results),
         "--storage", storage, "--datasets", "topics", "--n-trials", "3", "--workers", str(workers)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_if_in_a_terminal)
    wait_for(lambda: training_trial(storage), 120, "a trial to start training")
    process.send_signal(sent)  # to this process alone: a --workers parent must pass it on
    _, err = process.communicate(timeout=120)
    return process.returncode, err, optuna.load_study(study_name="tiny-topics", storage=storage), results


@pytest.mark.parametrize("sent, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_mid_trial_stops_cleanly_and_marks_the_trial_interrupted(tmp_path, tiny_encoders, sent, code, name):
    returncode, err, study, results = _stop_mid_trial(tmp_path, tiny_encoders, sent)
    assert returncode == code, err
    lines = [line for line in err.splitlines() if "interrupt" in line.lower()]
    assert lines == [f"interrupted by {name}: finished trials are kept in the storage; run the same command "
                     "to top up"], err
    assert "Traceback" not in err and "failed with" not in err, err
    stopped = study.get_trials(states=(TrialState.FAIL,))
    assert len(stopped) == 1 and stopped[0].user_attrs[INTERRUPTED_ATTR] is True
    assert stopped[0].user_attrs["fail_reason"] == "interrupted by Ctrl-C/SIGTERM"
    assert not study.get_trials(states=(TrialState.RUNNING,))
    datasets = pd.read_csv(results / "datasets.csv").iloc[0]
    assert (datasets["failed"], datasets["interrupted"]) == (0, 1), "the tables were written, and say so"


def test_sigterm_to_a_workers_parent_reaches_its_workers(tmp_path, tiny_encoders):
    returncode, err, study, results = _stop_mid_trial(tmp_path, tiny_encoders, signal.SIGTERM, workers=2)
    assert returncode == 143, err
    assert not study.get_trials(states=(TrialState.RUNNING,)), "no worker left training"
    assert all(t.user_attrs.get(INTERRUPTED_ATTR) for t in study.get_trials(states=(TrialState.FAIL,)))
    assert (results / "datasets.csv").exists()


SECRET_URLS = [
    "postgresql://bench:secret@secret@db.example.com/optuna",  # the password holds an @
    "postgresql://bench@db.example.com/optuna?password=secretpw&sslmode=require",
    "postgresql:///optuna?host=db.example.com&user=bench&PassWord=secretpw",
]


class Recorder:
    """A tracker backend that keeps everything it is handed."""

    name = "recorder"
    received: list = []

    def __init__(self, results_dir: Path) -> None:
        pass

    def __getattr__(self, name):
        def record(*args, **kwargs):
            Recorder.received.append((name, args, kwargs))
            return [] if name == "start_study" else _NullRun()

        return record


class _NullRun:
    def __getattr__(self, name):
        return lambda *args, **kwargs: {} if name == "links" else None


def test_no_channel_shows_a_password(tmp_path, tiny_encoders, capsys, monkeypatch):
    """Every URL shape, through stdout, stderr, every written file and what the trackers get."""
    from benchmark.search import preflight, storage

    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space__num_epochs={
        "type": "int", "low": 1, "high": 1})
    real = f"sqlite:///{tmp_path / 'real.db'}"
    opened = storage.open_storage(real)
    # The database is a local SQLite file; the URL the user typed is what every channel sees.
    monkeypatch.setattr(preflight, "open_storage", lambda url, heartbeat=None: opened)
    monkeypatch.setattr(storage, "open_existing_storage", lambda url: opened)
    monkeypatch.setattr(preflight, "open_existing_storage", lambda url: opened)
    monkeypatch.setitem(tracking.TRACKERS, "recorder", Recorder)
    results = tmp_path / "results"
    for n_trials, url in enumerate(SECRET_URLS, start=1):
        assert main(["--study", "--config", str(config), "--results-dir", str(results), "--storage", url,
                     "--datasets", "topics", "--n-trials", str(n_trials), "--tracker", "recorder"]) == 0
        assert main(["--leaderboard", "--results-dir", str(results), "--storage", url]) == 0
    printed = capsys.readouterr()
    assert "storage: postgresql://bench:***@db.example.com/optuna" in printed.err
    assert "?password=***&sslmode=require" in printed.err and "&PassWord=***" in printed.err
    files = "".join(path.read_text(errors="replace") for path in results.rglob("*") if path.is_file())
    received = repr(Recorder.received)
    assert "storage_url" in received
    for channel in (printed.out, printed.err, files, received):
        assert "secret" not in channel


def test_a_study_without_a_complete_trial_prints_no_raw_optuna_warning(tmp_path):
    """Optuna's `[W ...] There are no complete trials.` once leaked to stderr from the report's
    plots. In a process of its own: Optuna's log handler holds the stderr of the process it started in."""
    url = f"sqlite:///{tmp_path / 'failed.db'}"
    study = optuna.create_study(storage=url, study_name="tiny-topics", direction="maximize")
    for name, value in ((BENCHMARK_ATTR, "tiny"), (DATASET_ATTR, "topics"), (METRIC_ATTR, "accuracy")):
        study.set_user_attr(name, value)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params={"encoder": "bert", "dropout": 0.1}, user_attrs={"fail_reason": "boom"},
        distributions={"encoder": CategoricalDistribution(["bert"]), "dropout": FloatDistribution(0, 0.3)}))
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "benchmark.cli", "--leaderboard", "--storage", url, "--results-dir",
                          str(results)], cwd=ROOT, capture_output=True, text=True)
    assert (run.returncode, run.stderr) == (0, "")
    assert "No complete trial in topics yet: nothing to draw." in (results / "report.html").read_text()


def test_leaderboard_reads_a_storage_named_with_a_query_string(tmp_path, capsys):
    """A query string on a SQLite URL once made `--leaderboard` look in another file and find no study."""
    study_with_every_state(f"sqlite:///{tmp_path / 's.db'}")
    results = tmp_path / "results"
    assert main(["--leaderboard", "--storage", f"sqlite:///{tmp_path / 's.db'}?timeout=30",
                 "--results-dir", str(results)]) == 0
    assert pd.read_csv(results / "datasets.csv")["complete"].tolist() == [2]


def test_a_second_ctrl_c_while_the_tables_are_written_waits_for_them(tmp_path, tiny_encoders):
    """A second Ctrl-C soon after the first must not leave the results directory without its
    report under a message that says all was written."""
    from benchmark.report.html import REPORT_FILE
    from benchmark.report.results import PREDICTIONS_FILE, TABLES

    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space__num_epochs=SLOW_TRIALS,
                          training__precision="fp32")
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    results = tmp_path / "results"
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmark.cli", "--study", "--config", str(config), "--results-dir", str(results),
         "--storage", storage, "--datasets", "topics", "--n-trials", "3"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=as_if_in_a_terminal)
    wait_for(lambda: training_trial(storage), 120, "a trial to start training")
    process.send_signal(signal.SIGINT)
    # The first file of the tables is written: the report (seconds) is still to come.
    wait_for(lambda: (results / PREDICTIONS_FILE).exists(), 120, "the tables to be written")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    # Sent while the tables are written (deferred, and said once) or, on a fast machine, just
    # after (ignored at exit): either way nothing is cut short and no traceback shows.
    assert err.count("SIGINT: writing the tables and the report first (seconds); then the command stops") <= 1
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    written = {path.name for path in results.iterdir()}
    assert {REPORT_FILE, "trials.csv", *(f"{name}.csv" for name in TABLES)} <= written, written
    assert not [name for name in written if name.startswith(".")], "no temporary file left"
