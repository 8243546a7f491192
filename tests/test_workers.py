"""Many workers on one storage, a worker killed mid-trial, and Ctrl-C, all for real."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.report.results import trials_frame
from benchmark.schema import FINISHED
from benchmark.search.storage import open_storage
from tests.helpers import ROOT, as_if_in_a_terminal, postgres_url, training_trial, wait_for, write_config

SLOW_TRIALS = {"type": "int", "low": 40, "high": 40}  # epochs: a tiny trial that lasts seconds
# Epochs: unpruned tiny trials of 3-8 s on this project's 2-core machine, while a copy of the
# command takes about 8 s to start there.
SHARED_TRIALS = {"type": "int", "low": 80, "high": 80}


@pytest.fixture(params=["sqlite", "postgresql", "journal"])
def storage_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    if request.param == "journal":
        return f"journal:{tmp_path / 'journal.log'}"
    return postgres_url()


def _args(config: Path, results: Path, storage: str, n_trials: int) -> list[str]:
    return ["--study", "--config", str(config), "--results-dir", str(results), "--storage", storage,
            "--datasets", "topics", "--n-trials", str(n_trials)]


def test_three_workers_finish_exactly_n_trials(tmp_path, tiny_encoders, storage_url):
    # Unpruned trials of seconds each: the two copies, which take seconds to start, must find
    # trials left by the command, which searches from its start (8 one-epoch trials were all done
    # first, and at 12 epochs, pruned ones shorter still, a loaded CI machine saw it on a journal).
    config = write_config(tmp_path, tiny_encoders, encoders=("bert", "distilbert"),
                          search_space__num_epochs=SHARED_TRIALS, pruner__type="none")
    results = tmp_path / "results"
    assert main([*_args(config, results, storage_url, 8), "--workers", "3"]) == 0

    study = optuna.load_study(study_name="tiny-topics", storage=open_storage(storage_url))
    finished = study.get_trials(states=FINISHED)
    per_encoder = [sum(t.params["encoder"] == name for t in finished) for name in ("bert", "distilbert")]
    if storage_url.startswith("journal:"):  # no heartbeats: each worker may finish one extra
        assert 8 <= len(finished) <= 8 + 2
        assert min(per_encoder) >= 4
    else:
        assert len(finished) == 8, [(t.number, t.state.name) for t in study.trials]
        assert per_encoder == [4, 4], "the balanced comparison holds under racing workers"
    real = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert len({t.number for t in real}) == len(real)
    assert all(t.state in FINISHED for t in real), "no trial lost or left running"
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) >= 2, "the trials were shared between worker processes"
    configurations = {tuple(sorted(t.params.items())) for t in finished}
    assert len(configurations) == len(finished), "workers started together do not draw the same parameters"

    # the tables equal what a rebuild from the storage alone gives
    written = pd.read_csv(results / "leaderboard.csv")
    assert main(["--leaderboard", "--storage", storage_url, "--results-dir", str(tmp_path / "rebuilt")]) == 0
    pd.testing.assert_frame_equal(written, pd.read_csv(tmp_path / "rebuilt" / "leaderboard.csv"))
    assert len(trials_frame(open_storage(storage_url))) == len(real)


def _worker(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmark.cli", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=as_if_in_a_terminal)


def test_a_worker_killed_mid_trial_is_retried_and_the_study_still_finishes(tmp_path, tiny_encoders):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space__num_epochs=SLOW_TRIALS,
                          heartbeat={"interval_s": 1, "grace_s": 3, "max_retries": 2})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    args = _args(config, tmp_path / "results", storage, 2)
    victim = _worker(args)
    killed = wait_for(lambda: training_trial(storage), 90, "the first worker's trial to start training")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)

    assert main(args) == 0
    study = optuna.load_study(study_name="tiny-topics", storage=storage)
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == optuna.trial.TrialState.FAIL
    assert len(study.get_trials(states=FINISHED)) == 2
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state in FINISHED
    assert retried[0].params == killed.params, "the retry runs the same configuration"


def test_ctrl_c_keeps_finished_trials_and_a_rerun_tops_up(tmp_path, tiny_encoders):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space__num_epochs=SLOW_TRIALS)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    results = tmp_path / "results"
    args = _args(config, results, storage, 3)
    worker = _worker(args)
    wait_for(lambda: training_trial(storage), 90, "a trial to start training")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) == 130
    assert (results / "leaderboard.csv").exists(), "tables are written on Ctrl-C too"
    study = optuna.load_study(study_name="tiny-topics", storage=storage)
    interrupted = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(interrupted) == 1

    assert main(args) == 0
    study = optuna.load_study(study_name="tiny-topics", storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 3, "topped up to 3, not 3 more"


def test_three_workers_give_the_tables_one_worker_gives(tmp_path, tiny_encoders, storage_url):
    """With every parameter fixed, trial k trains the same model (its seed is base + k)
    whichever worker runs it, so the tables must match a single worker's exactly."""
    if storage_url.startswith("journal:"):
        pytest.skip("journal storages have no heartbeats, so workers may run a trial more than n_trials")
    fixed = {name: {"type": "categorical", "choices": [value]} for name, value in
             {"learning_rate": 1e-3, "warmup_ratio": 0.1, "dropout": 0.0, "max_grad_norm": 1.0,
              "weight_decay": 0.0, "batch_size": 16, "num_epochs": 1}.items()}
    # A fixed precision: `auto` measures in each run, and two runs could choose apart.
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), search_space=fixed,
                          pruner={"type": "none"}, training__precision="fp32")
    single = f"sqlite:///{tmp_path / 'single.db'}"
    assert main(_args(config, tmp_path / "one", single, 6)) == 0
    assert main([*_args(config, tmp_path / "three", storage_url, 6), "--workers", "3"]) == 0

    def values(url):
        study = optuna.load_study(study_name="tiny-topics", storage=open_storage(url))
        return {t.number: t.value for t in study.get_trials(states=FINISHED)}

    assert values(storage_url) == pytest.approx(values(single))
    for table in ("leaderboard.csv", "datasets.csv"):
        one, three = pd.read_csv(tmp_path / "one" / table), pd.read_csv(tmp_path / "three" / table)
        timing = [c for c in one.columns if c.endswith("_seconds")]
        pd.testing.assert_frame_equal(one.drop(columns=timing), three.drop(columns=timing))


def test_each_local_worker_gets_its_own_gpu(monkeypatch):
    from benchmark import cli

    started = []

    class FakeWorker:
        def __init__(self, command, env, stdout):
            started.append((command, env.get("CUDA_VISIBLE_DEVICES")))
            self.pid = len(started)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    # This process is the first worker: on the first visible GPU, its CUDA default device.
    assert cli._run_workers(3, ["--study", "--workers", "3"], lambda: "searched here") == "searched here"
    assert [gpu for _, gpu in started] == ["5", "2"]
    assert all(command[-2:] == ["--workers", "1"] for command, _ in started)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    started.clear()
    cli._run_workers(2, ["--study"], lambda: None)
    assert [gpu for _, gpu in started] == ["0"], "one GPU: the workers share it, as inherited"


def test_more_workers_than_cores_and_no_gpu_is_said_in_one_line(monkeypatch, capsys):
    """K workers on fewer cores, with no GPU, each get one thread and take turns on the cores
    (docs/scaling.md has what that cost on this project's 2-core CPU)."""
    from benchmark import cli
    from benchmark.search import workers

    class FakeWorker:
        def __init__(self, command, env, stdout):
            self.pid = 7

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(workers, "usable_cores", lambda: 2)
    said = []
    for count, visible in ((4, ""), (2, ""), (4, "0")):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        cli._run_workers(count, ["--study"], lambda: None)
        said.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("--workers")])
    assert said == [["--workers 4: more workers than the 2 core(s) this process may use, and no GPU: each gets one "
                     "thread and they take turns on the cores; --workers 2 makes better use of them "
                     "(docs/scaling.md#many-workers-and-machines)"], [], []]


@pytest.mark.parametrize("stop, signalled", [(RuntimeError("storage gone"), True), (KeyboardInterrupt(), False)])
def test_the_other_workers_stop_with_this_one(monkeypatch, stop, signalled):
    """An error in this process's own search, or a SIGTERM sent to it alone, reaches the other
    workers as a SIGTERM; a Ctrl-C has reached them already (one process group). Either way
    this process waits for them before it stops."""
    from benchmark import cli

    events = []

    class FakeWorker:
        def __init__(self, command, env, stdout):
            self.pid = 7

        def send_signal(self, sent):
            events.append(sent)

        def wait(self):
            events.append("waited")
            return 0

    def search():
        raise stop

    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(type(stop)):
        cli._run_workers(2, ["--study"], search)
    assert events == ([signal.SIGTERM] if signalled else []) + ["waited"]


def test_worker_shares_split_the_cores_and_a_shared_gpus_memory():
    from benchmark.search.workers import SHARED_GPU_MEMORY, worker_shares

    one_gpu = worker_shares(4, cores=16, gpus=["0"])
    assert [s.threads for s in one_gpu] == [4] * 4
    assert [s.gpu for s in one_gpu] == [None] * 4, "one GPU: inherited by every worker"
    assert [s.memory_fraction for s in one_gpu] == pytest.approx([SHARED_GPU_MEMORY / 4] * 4)
    two_gpus = worker_shares(3, cores=2, gpus=["2", "5"])
    assert [s.gpu for s in two_gpus] == ["2", "5", "2"]
    assert [s.memory_fraction for s in two_gpus] == pytest.approx([SHARED_GPU_MEMORY / 2, None, SHARED_GPU_MEMORY / 2])
    assert [s.threads for s in two_gpus] == [1, 1, 1], "never fewer than one thread"
    alone = worker_shares(2, cores=4, gpus=["0", "1"])
    assert [(s.threads, s.gpu, s.memory_fraction) for s in alone] == [(2, "0", None), (2, "1", None)]
    assert [s.threads for s in worker_shares(2, cores=2, gpus=[])] == [1, 1]


def test_each_worker_starts_with_its_threads_and_gpu_memory_share(monkeypatch):
    import torch

    from benchmark import cli
    from benchmark.schema import GPU_MEMORY_SHARE_ENV
    from benchmark.search import workers

    started = []

    class FakeWorker:
        def __init__(self, command, env, stdout):
            started.append(env)
            self.pid = len(started)

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", FakeWorker)
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "16")  # the user's, for a single process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fractions = [1.0]
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda *args: fractions[-1])
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, *args: fractions.append(f))
    threads = torch.get_num_threads()
    seen_here = cli._run_workers(4, ["--study"], lambda: (torch.get_num_threads(), fractions[-1]))
    assert [(env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) for env in started] == [("4", "4")] * 3
    assert [float(env[GPU_MEMORY_SHARE_ENV]) for env in started] == pytest.approx([workers.SHARED_GPU_MEMORY / 4] * 3)
    assert seen_here == (4, pytest.approx(workers.SHARED_GPU_MEMORY / 4)), "this process searched as the first worker"
    assert (torch.get_num_threads(), fractions[-1]) == (threads, 1.0), "and has its own back for the tables"


def test_a_worker_takes_its_share_before_training_and_a_lone_process_keeps_its_own(monkeypatch):
    import torch

    from benchmark.schema import GPU_MEMORY_SHARE_ENV, WORKER_ENV
    from benchmark.search.workers import apply_share

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f: calls.append(("memory", f)))
    share = {"OMP_NUM_THREADS": "4", GPU_MEMORY_SHARE_ENV: "0.2375"}
    apply_share(share)
    assert calls == [], "not a --workers child: nothing changes"
    apply_share({**share, WORKER_ENV: "1"})
    assert calls == [("threads", 4), ("memory", 0.2375)]
    calls.clear()
    apply_share({WORKER_ENV: "0", "OMP_NUM_THREADS": "8"})
    assert calls == [("threads", 8)], "a worker with a GPU of its own keeps all of its memory"


def test_the_workers_benchmark_gives_every_run_equal_unpruned_trials_and_rates_them_by_hand(tmp_path, tiny_encoders):
    from datetime import datetime, timedelta
    from types import SimpleNamespace

    import yaml

    from benchmark.config.spec import load_config
    from perf import workers

    original = load_config(write_config(tmp_path, tiny_encoders))
    fixed = workers.fixed_work_config(original, trials=6)
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(fixed))
    config = load_config(path)  # still a valid config
    assert list(config.encoders) == [next(iter(original.encoders))]
    assert list(config.datasets) == [next(iter(original.datasets))]
    assert list(config.search_space.batch_size.choices) == [16]
    assert (config.search_space.num_epochs.low, config.search_space.num_epochs.high) == (2, 2)
    assert config.pruner.type == "none" and config.budget.n_trials == 6
    shipped = tmp_path / "quick.yaml"  # offline sources too: only the keys the file set are written
    shipped.write_text(yaml.safe_dump(workers.fixed_work_config(load_config(ROOT / "search_spaces/quick.yaml"), 4)))
    assert load_config(shipped).budget.n_trials == 4

    start = datetime(2026, 1, 1)
    trials = [SimpleNamespace(datetime_start=start + timedelta(seconds=s), datetime_complete=start + timedelta(seconds=e))
              for s, e in ((10, 40), (12, 70), (45, 100))]
    assert workers.study_span(trials) == 90.0
    assert workers.trials_per_hour(3, 90.0) == pytest.approx(120.0)
    runs = [{"workers": k, "trials_per_hour": rate, "trials_per_hour_with_startup": rate / 2}
            for k, rate in ((1, 100.0), (2, 150.0), (1, 120.0), (2, 170.0))]
    one, two = workers.summarize(runs)
    assert (one["median"], two["median"], two["speed_up"]) == (110.0, 160.0, pytest.approx(160 / 110))
    assert two["runs"] == [150.0, 170.0] and two["median_with_startup"] == 80.0


# Run as `python -c` in each twin: the real command, held at a barrier (a folder in which each
# process leaves a file) just before it opens the study, so that both open it before either
# has drawn a trial, as two machines started together do.
TWIN = """
import os, sys, time
from pathlib import Path
from benchmark.cli import main
from benchmark.search import study

barrier, opened = Path(sys.argv[1]), study.open_study

def open_together(*args, **kwargs):
    (barrier / str(os.getpid())).touch()
    while len(list(barrier.iterdir())) < 2:
        time.sleep(0.02)
    return opened(*args, **kwargs)

study.open_study = open_together
raise SystemExit(main(sys.argv[2:]))
"""


def _all_succeed(processes: list[subprocess.Popen], timeout_s: float) -> None:
    """Each process exits 0. The first to fail is reported at once, with its stderr, and the
    others are stopped: one twin's failure would leave the other at the barrier for good."""
    deadline = time.monotonic() + timeout_s
    try:
        while any(process.poll() is None for process in processes) and time.monotonic() < deadline:
            failed = [process for process in processes if process.poll() not in (None, 0)]
            assert not failed, failed[0].stderr.read()
            time.sleep(0.2)
        for process in processes:
            assert process.poll() == 0, process.stderr.read() if process.poll() is not None else "timed out"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()


def test_twin_commands_started_together_draw_apart_and_as_one_process_would(tmp_path, tiny_encoders):
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), sampler={"type": "random"},
                          training__precision="fp32", search_space__num_epochs={"type": "int", "low": 1, "high": 1})
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    twins = [subprocess.Popen([sys.executable, "-c", TWIN, str(barrier), *_args(config, tmp_path / f"r{i}", storage, 4)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    _all_succeed(twins, timeout_s=300)
    trials = optuna.load_study(study_name="tiny-topics", storage=storage).get_trials(states=FINISHED)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both twins ran trials"
    drawn = {t.number: t.params for t in trials}
    assert len({tuple(sorted(params.items())) for params in drawn.values()}) == len(drawn) == 4

    # Reproducible from the seed: a lone run draws each trial number's parameters alike.
    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    assert main(_args(config, tmp_path / "alone", alone, 4)) == 0
    lone = optuna.load_study(study_name="tiny-topics", storage=alone).get_trials(states=FINISHED)
    assert {t.number: t.params for t in lone} == drawn
