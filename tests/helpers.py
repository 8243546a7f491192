"""What several test modules share: a config on the tiny encoders and the command line, texts,
synthetic searches, trials tables and studies made by hand, and what the process tests wait
on. Fixtures are in conftest.py; a test module imports helpers from here, never from another
test module (tests/test_layout.py checks it).
"""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import socket
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from benchmark import schema
from benchmark.cli import main
from benchmark.config.spec import BenchmarkConfig, load_config
from benchmark.schema import BENCHMARK_ATTR, DATASET_ATTR, ENCODER_PARAM, INTERRUPTED_ATTR, METRIC_ATTR, TRIAL
from benchmark.search.preflight import prepare_studies
from benchmark.search.study import study_sampler
from benchmark.search.trial import sample_hyperparameters

# --- texts and tiny encoders' architectures (conftest.py builds the encoders) ---------------------

ARCHITECTURES = ("bert", "roberta", "albert", "distilbert", "electra", "deberta-v2", "mpnet")


CLASS_WORDS = {
    "sports": ["goal", "match", "team", "coach", "league", "score"],
    "politics": ["vote", "minister", "party", "election", "law", "senate"],
    "tech": ["software", "chip", "robot", "network", "data", "code"],
}
FILLER = ["the", "a", "today", "said", "new", "after", "big", "report", "on", "with", "and", "week"]


def make_texts(n: int, seed: int) -> pd.DataFrame:
    """Short texts whose class shows in two of their words among filler."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(CLASS_WORDS)[i % len(CLASS_WORDS)]
        words = rng.sample(CLASS_WORDS[label], 2) + rng.sample(FILLER, rng.randint(3, 8))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return pd.DataFrame(rows)


# --- a config on the tiny encoders, and the command line ----------------------------------------

ROOT = Path(__file__).resolve().parent.parent


# Every hyperparameter searched over a small range: what the tests' configs start from.
SEARCH_SPACE = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "max_grad_norm": {"type": "float", "low": 0.5, "high": 2.0},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "batch_size": {"type": "categorical", "choices": [16, 32]},
    "num_epochs": {"type": "int", "low": 1, "high": 3},
}


def search_space(**ranges: dict) -> dict:
    """SEARCH_SPACE with some keys' ranges replaced, in its order (which decides the draws)."""
    unknown = set(ranges) - set(SEARCH_SPACE)
    assert not unknown, f"not in SEARCH_SPACE: {unknown}"
    # A deep copy: callers change ranges in place (write_config's `search_space__dropout__low`).
    return copy.deepcopy({**SEARCH_SPACE, **ranges})


def write_config(tmp_path: Path, tiny_encoders: dict[str, Path], encoders=("bert", "roberta"),
                 **overrides) -> Path:
    topics = tmp_path / "topics.csv"
    make_texts(120, seed=3).to_csv(topics, index=False)
    pairs = make_texts(120, seed=4).assign(second=lambda f: make_texts(120, seed=5)["text"])
    pairs_path = tmp_path / "pairs.jsonl"
    pairs.to_json(pairs_path, orient="records", lines=True)
    config = {
        "name": "tiny",
        "encoders": {name: {"source": "local", "path": str(tiny_encoders[name])} for name in encoders},
        "datasets": {
            "topics": {"source": "file", "path": str(topics), "metric": "accuracy"},
            "topic_pairs": {"source": "file", "path": str(pairs_path), "text_pair": "second",
                            "metric": "macro_f1"},
        },
        "search_space": search_space(learning_rate={"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                                     batch_size={"type": "categorical", "choices": [8, 16]},
                                     num_epochs={"type": "int", "low": 1, "high": 2}),
        "training": {"max_length": 32, "eval_every_examples": 48, "eval_batch_size": 32},
        "sampler": {"type": "tpe", "n_startup_trials": 2},
        "pruner": {"type": "median", "n_startup_trials": 1},
        "budget": {"n_trials": 4},
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str) -> int:
    return main(list(args))


def tiny_dataset_study(tmp_path, tiny_encoders, encoders=("electra",)):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=encoders)).restricted(["topics"], None)
    prepared = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path)
    return prepared.studies[0]


# --- servers, databases and worker processes -----------------------------------------------------

def free_port() -> int:
    """A TCP port free on loopback now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_url() -> str:
    """A fresh database on the PostgreSQL server that .ci/run starts."""
    admin_url = os.environ.get("BENCHMARK_TEST_POSTGRES_URL")
    if not admin_url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide BENCHMARK_TEST_POSTGRES_URL (.ci/run starts PostgreSQL)")
        pytest.skip("no PostgreSQL server: set BENCHMARK_TEST_POSTGRES_URL (as .ci/run does)")
    import sqlalchemy

    name = f"bench_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def training_trial(storage: str):
    """A running trial that has reported an evaluation, so every parameter has been sampled
    (a trial caught earlier may hold only its encoder: a loaded CI machine is slow to get there)."""
    try:
        study = optuna.load_study(study_name="tiny-topics", storage=storage)
    except KeyError:
        return None
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    return running[0] if running and running[0].intermediate_values else None


def as_if_in_a_terminal() -> None:
    """A worker that Ctrl-C reaches, as in a terminal, even when the tests themselves were
    started in the background (`.ci/run &`), where the shell sets SIGINT to be ignored and
    every child inherits that: Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# --- a synthetic search: the harness's sampling on a known score, no training ----------------------

BEST_LR = {"A": 1e-4, "B": 1e-3}


def synthetic_config(comparison: str = "balanced", sampler: dict | None = None, n_trials: int = 60,
                     overrides: dict[str, dict] | None = None,
                     encoders: tuple[str, ...] = ("A", "B")) -> BenchmarkConfig:
    overrides = overrides or {}
    return BenchmarkConfig.model_validate({
        "name": "synthetic",
        "encoders": {name: {"source": "local", "path": f"unused-{name}", "overrides": overrides.get(name, {})}
                     for name in encoders},
        "datasets": {"toy": {"source": "file", "path": "unused.csv"}},
        "search_space": search_space(),
        "sampler": sampler or {"type": "tpe", "n_startup_trials": 5},
        "pruner": {"type": "none"},
        "comparison": comparison,
        "budget": {"n_trials": n_trials},
    })


def run_synthetic(config: BenchmarkConfig, seed: int = 0, penalty: dict[str, float] | None = None,
                  best_lr: dict[str, float] = BEST_LR, enqueue: list[dict] = (), dataset: str = "toy",
                  workers: int = 1) -> list[optuna.trial.FrozenTrial]:
    """The study's trials after `budget.n_trials` synthetic ones. The score is the distance
    in decades from the encoder's best learning rate, squared and negated (0 at the best),
    minus the encoder's `penalty`. With `workers`, the trials alternate between samplers built
    as `open_study` builds them in that many workers."""
    study = optuna.create_study(direction="maximize")
    encoders = list(config.encoders)
    samplers = [study_sampler(study, config, dataset, encoders, seed) for _ in range(workers)]
    for params in enqueue:
        study.enqueue_trial(params)

    def objective(trial: optuna.Trial) -> float:
        encoder = trial.suggest_categorical(ENCODER_PARAM, encoders)
        hp = sample_hyperparameters(trial, config.search_space, config.encoders[encoder])
        return -(math.log10(hp.learning_rate) - math.log10(best_lr[encoder])) ** 2 - (penalty or {}).get(encoder, 0)

    for number in range(config.budget.n_trials):
        study.sampler = samplers[number % workers]
        study.optimize(objective, n_trials=1)
    return study.trials


# --- studies and trials tables made by hand ------------------------------------------------------

def study_with_every_state(url: str) -> None:
    """A benchmark study holding a trial in every state a live or crashed run leaves."""
    distributions = {"encoder": CategoricalDistribution(["bert", "roberta"]), "dropout": FloatDistribution(0, 0.3)}
    study = optuna.create_study(storage=url, study_name="tiny-topics", direction="maximize")
    for name, value in ((BENCHMARK_ATTR, "tiny"), (DATASET_ATTR, "topics"), (METRIC_ATTR, "accuracy")):
        study.set_user_attr(name, value)

    def add(state, value=None, encoder="bert", **attrs):
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params={"encoder": encoder,
                        "dropout": 0.1}, distributions=distributions, user_attrs=attrs))

    add(TrialState.COMPLETE, 0.8)
    add(TrialState.COMPLETE, 0.6, encoder="roberta")
    add(TrialState.FAIL, fail_reason="ValueError: boom")
    add(TrialState.FAIL, encoder="roberta", **{INTERRUPTED_ATTR: True, "fail_reason": "interrupted"})
    running = study.ask()  # started, never finished: no datetime_complete
    running.suggest_categorical("encoder", ["bert", "roberta"])
    study.enqueue_trial({"encoder": "roberta", "dropout": 0.2})  # WAITING: no start either


T0 = datetime(2025, 1, 1, 12, 0, 0)
NAN = float("nan")


def trial_row(study, dataset, metric, number, state, value, encoder, start_s, duration_s, params,
              benchmark="bench"):
    """A row of the trials table (`results.trials_frame`), started `start_s` seconds after T0."""
    start = T0 + timedelta(seconds=start_s)
    complete = None if duration_s is None else start + timedelta(seconds=duration_s)
    row = {
        TRIAL.study: study, TRIAL.benchmark: benchmark, TRIAL.dataset: dataset, TRIAL.metric: metric,
        TRIAL.number: number, TRIAL.state: state, TRIAL.value: value, TRIAL.encoder: encoder,
        TRIAL.duration_s: NAN if duration_s is None else float(duration_s),
        TRIAL.datetime_start: start, TRIAL.datetime_complete: complete,
    }
    row.update({f"{TRIAL.param_prefix}{name}": v for name, v in params.items()})
    return row


def trials_table(rows) -> pd.DataFrame:
    """`trial_row`s as the trials table, its times as timestamps."""
    frame = pd.DataFrame(rows)
    frame[TRIAL.datetime_start] = pd.to_datetime(frame[TRIAL.datetime_start])
    frame[TRIAL.datetime_complete] = pd.to_datetime(frame[TRIAL.datetime_complete])
    return frame


STORED_LABELS = [0, 1, 1, 0]


def stored_final_evaluation(tmp_path, search_trials, runs, seeds_requested=2) -> str:
    """A search study of `search_trials` ((encoder, value), in trial order) and its final
    study of `runs` ((encoder, source trial, seed, predictions)), stored as the harness
    stores them; the storage URL."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    distributions = {"encoder": CategoricalDistribution(sorted({encoder for encoder, _ in search_trials}))}
    search = optuna.create_study(storage=storage, study_name="b-news", direction="maximize")
    for name, value in ((BENCHMARK_ATTR, "b"), (DATASET_ATTR, "news"), (METRIC_ATTR, "accuracy")):
        search.set_user_attr(name, value)
    for encoder, value in search_trials:
        search.add_trial(optuna.trial.create_trial(value=value, params={"encoder": encoder},
                                                   distributions=distributions))
    final = optuna.create_study(storage=storage, study_name=schema.final_study_name("b-news"),
                                direction="maximize")
    for name, value in ((schema.FINAL_OF_ATTR, "b-news"), (DATASET_ATTR, "news"), (METRIC_ATTR, "accuracy"),
                        (schema.TEST_LABELS_ATTR, STORED_LABELS),
                        (schema.SEEDS_REQUESTED_ATTR, seeds_requested)):
        final.set_user_attr(name, value)
    for encoder, source, seed, predictions in runs:
        final.add_trial(optuna.trial.create_trial(
            value=float(np.mean(np.equal(predictions, STORED_LABELS))), params={"encoder": encoder},
            distributions=distributions,
            user_attrs={schema.SEED_ATTR: seed, schema.SOURCE_TRIAL_ATTR: source,
                        schema.PREDICTIONS_ATTR: predictions}))
    return storage
