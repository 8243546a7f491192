"""Inputs a new user tries, run through the command line: each is refused with exit
2 and one `error:` line, no traceback, and nothing written anywhere.

In-process, so that each probe costs what the refusal costs: the tiny encoders load in
milliseconds, and every probe stops before training.
"""

from __future__ import annotations

import errno
import hashlib
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from benchmark.cli import main
from tests.helpers import make_texts, study_with_every_state, write_config

MODES = ("--study", "--check", "--final-eval", "--leaderboard")


def _tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            for path in sorted(root.rglob("*"))}


def refused(tmp_path: Path, capsys, *argv: str) -> str:
    """Run the command line; check it refused in one line and wrote nothing; return that line."""
    capsys.readouterr()
    before = _tree(tmp_path)
    code = main([*argv, "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert "Traceback" not in err and "[W " not in err, err
    assert _tree(tmp_path) == before, "nothing written, no folder created"
    return errors[0]


@pytest.fixture()
def config(tmp_path, tiny_encoders) -> Path:
    return write_config(tmp_path, tiny_encoders, encoders=("bert",), training__precision="fp32")


# Storage URLs (points 8, 9 and 14)

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_storage_is_refused_by_every_mode(tmp_path, capsys, config, mode, url):
    line = refused(tmp_path, capsys, mode, "--config", str(config), "--storage", url)
    assert line == (f"error: --storage: {url} is an in-memory SQLite database, which nothing outlives (the studies "
                    "vanish at exit and the tables cannot be rebuilt); give a file, e.g. sqlite:///results/optuna.db")


@pytest.mark.parametrize("mode", MODES)
def test_a_file_that_is_no_journal_is_refused_by_every_mode(tmp_path, capsys, config, mode):
    other = tmp_path / "other.db"
    study_with_every_state(f"sqlite:///{other}")  # an SQLite file where a journal was meant
    line = refused(tmp_path, capsys, mode, "--config", str(config), "--storage", f"journal:{other}",
                   *(["--datasets", "topics"] if mode != "--leaderboard" else []))
    assert line.startswith(f"error: --storage: {other} is not an Optuna journal file (its first line is not a JSON "
                           "record)")


# Flags that --final-eval would have ignored, and --seeds (point 13)

@pytest.mark.parametrize("flags, named", [
    (["--workers", "2"], "error: --workers 2: --final-eval trains its runs one after another in this process"),
    (["--tracker", "mlflow"], "error: --tracker mlflow: --final-eval sends nothing to trackers"),
    (["--seeds", "51"], "error: --seeds must be at most 50 per encoder, got 51"),
])
def test_final_eval_refuses_flags_it_cannot_honour(tmp_path, capsys, config, flags, named):
    assert refused(tmp_path, capsys, "--final-eval", "--config", str(config), *flags).startswith(named)


# Data (point 14)

def _data_probe(tmp_path, capsys, tiny_encoders, table: pd.DataFrame, suffix: str = ".csv", **overrides) -> str:
    data = tmp_path / f"data{suffix}"
    (table.to_parquet if suffix == ".parquet" else table.to_csv)(data, index=False)
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), training__precision="fp32",
                          datasets__topics__path=str(data), **overrides)
    # Both commands that load the data: --study creates its storage only once the inputs are good.
    lines = {refused(tmp_path, capsys, mode, "--config", str(config), "--datasets", "topics")
             for mode in ("--study", "--check")}
    assert len(lines) == 1, lines
    return lines.pop()


def test_identical_texts_say_how_many_duplicates_were_dropped(tmp_path, capsys, tiny_encoders):
    table = pd.DataFrame({"text": ["the same words"] * 90, "label": ["a"] * 45 + ["b"] * 45})
    assert _data_probe(tmp_path, capsys, tiny_encoders, table) == (
        "error: datasets.topics: column 'label' has a single class (a) in the train split after dropping 89 "
        "duplicate text(s); classification needs at least two")


def test_a_test_split_mapped_to_train_is_named(tmp_path, capsys, tiny_encoders):
    line = _data_probe(tmp_path, capsys, tiny_encoders, make_texts(60, seed=1),
                       datasets__topics__splits={"train": "train", "test": "train"})
    assert line.startswith("error: datasets.topics.splits.test: names the source split 'train', which is already "
                           "the train split")


def test_a_digits_only_text_column_is_shown_as_the_file_holds_it(tmp_path, capsys, tiny_encoders):
    table = make_texts(60, seed=1).assign(text=range(1000, 1060))
    line = _data_probe(tmp_path, capsys, tiny_encoders, table)
    assert "the first being 1000 (a number) (rows 1, 2, 3, 4, 5, ... of " in line and "np." not in line, line


def test_a_parquet_list_column_is_shown_on_one_line(tmp_path, capsys, tiny_encoders):
    table = make_texts(60, seed=1).assign(text=[["goal", "match", "team", "coach"]] * 60)
    line = _data_probe(tmp_path, capsys, tiny_encoders, table, suffix=".parquet")
    assert "the first being ['goal', 'match', 'team', ...] (rows 1, 2, 3, 4, 5, ... of " in line, line
    assert "array(" not in line and "dtype" not in line


# Encoders and the results dir

def test_a_hub_encoder_with_the_hub_unreachable_fails_at_once(tmp_path, capsys, tiny_encoders, monkeypatch):
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests run offline

    def no_network(address, timeout=None):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",),
                          encoders__bert={"source": "hub", "id": "nobody-here/no-such-encoder"})
    started = time.perf_counter()
    line = refused(tmp_path, capsys, "--check", "--config", str(config), "--datasets", "topics")
    assert time.perf_counter() - started < 10
    assert line == ("error: encoders.bert: the Hugging Face hub is unreachable (huggingface.co:443: Network is "
                    "unreachable) and 'nobody-here/no-such-encoder' is not in the local Hugging Face cache; connect "
                    "to the network, or give a local copy (source: local)")


def test_a_results_dir_without_room_for_the_report_is_refused(tmp_path, capsys, config, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=2 * 10**5))
    line = refused(tmp_path, capsys, "--study", "--config", str(config), "--datasets", "topics")
    assert line.startswith(f"error: --results-dir: {tmp_path / 'results'} has 0.2 MB free, and the report and "
                           "tables need about ")
