"""Storage URLs: passwords never shown, unusable storages a clean BenchmarkError."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from benchmark.errors import BenchmarkError
from benchmark.storage import default_storage_url, mask_password, open_storage


@pytest.mark.parametrize("url, masked", [
    ("postgresql://alice:s3cr3t@db.example.com:5432/optuna",
     "postgresql://alice:***@db.example.com:5432/optuna"),
    ("postgresql+psycopg2://bench_user:p%40ss:w0rd@10.0.0.5/studies",
     "postgresql+psycopg2://bench_user:***@10.0.0.5/studies"),
    ("mysql://root:hunter2@localhost/optuna", "mysql://root:***@localhost/optuna"),
    ("mysql+pymysql://opt-user:xyz!#$%@mysql.internal:3306/db?charset=utf8mb4",
     "mysql+pymysql://opt-user:***@mysql.internal:3306/db?charset=utf8mb4"),
    ("postgresql://:onlypassword@host/db", "postgresql://:***@host/db"),
])
def test_password_is_masked_user_and_host_kept(url, masked):
    assert mask_password(url) == masked


@pytest.mark.parametrize("url", [
    "postgresql://alice@db.example.com:5432/optuna",
    "postgresql://db.example.com:5432/optuna",
    "mysql://root@localhost/optuna",
    "sqlite:///results/optuna.db",
    "sqlite:////abs/path/optuna.db",
    "no url here at all",
])
def test_urls_without_password_unchanged(url):
    assert mask_password(url) == url


def test_password_masked_inside_a_longer_message():
    text = ('connection to "postgresql://bob:topsecret@pg:5432/x" failed; '
            "retrying mysql://eve:other@my/db")
    masked = mask_password(text)
    assert "topsecret" not in masked and "other@" not in masked
    assert "postgresql://bob:***@pg:5432/x" in masked and "mysql://eve:***@my/db" in masked


def test_unreachable_postgres_is_a_benchmark_error_without_the_password():
    with pytest.raises(BenchmarkError) as caught:
        open_storage("postgresql://u:secret@127.0.0.1:1/db")
    message = str(caught.value)
    assert "secret" not in message
    assert message.startswith("--storage: cannot open postgresql://u:***@127.0.0.1:1/db")


def test_unreachable_mysql_is_a_benchmark_error_without_the_password():
    with pytest.raises(BenchmarkError) as caught:
        open_storage("mysql://admin:letmein@127.0.0.1:1/db")
    message = str(caught.value)
    assert "letmein" not in message
    assert "mysql://admin:***@127.0.0.1:1/db" in message


def test_unknown_scheme_is_a_benchmark_error():
    with pytest.raises(BenchmarkError, match=r"--storage: cannot open nosuchdb://"):
        open_storage("nosuchdb://u:pw@host/db")


def test_sqlite_storage_opens_and_creates_its_folder(tmp_path):
    url = default_storage_url(tmp_path / "deep" / "results")
    assert url == f"sqlite:///{tmp_path / 'deep' / 'results' / 'optuna.db'}"
    storage = open_storage(url)
    assert isinstance(storage, optuna.storages.BaseStorage)
    study = optuna.create_study(study_name="s", storage=storage)
    study.add_trial(optuna.trial.create_trial(value=1.0))
    assert Path(tmp_path / "deep" / "results" / "optuna.db").is_file()
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 1
