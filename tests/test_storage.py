"""Storage URLs: passwords never shown, unusable storages a clean BenchmarkError."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import optuna
import pytest

from benchmark.errors import BenchmarkError
from benchmark.redaction import mask_password
from benchmark.search.storage import default_storage_url, open_existing_storage, open_storage
from tests.helpers import postgres_url


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


@pytest.mark.parametrize("url, masked", [
    ("postgresql://user:secret@pw@db/optuna", "postgresql://user:***@db/optuna"),
    ("postgresql://user:pa/ss@db:5432/optuna", "postgresql://user:***@db:5432/optuna"),
    ("postgresql://user@host/db?password=secretpw", "postgresql://user@host/db?password=***"),
    ("postgresql:///db?host=pg&user=u&password=secretpw&sslmode=require",
     "postgresql:///db?host=pg&user=u&password=***&sslmode=require"),
    ("postgresql://u@h/db?sslmode=require&PASSWORD=x1;passwd=x2&pwd=x3",
     "postgresql://u@h/db?sslmode=require&PASSWORD=***;passwd=***&pwd=***"),
    ("mysql://u@h/db?sslpassword=x&api_key=y&Token=z&client_secret=w",
     "mysql://u@h/db?sslpassword=***&api_key=***&Token=***&client_secret=***"),
    ("host=pg user=u password=secretpw dbname=optuna", "host=pg user=u password=*** dbname=optuna"),
    ("redis://:secretpw@localhost:6379/0", "redis://:***@localhost:6379/0"),
])
def test_every_password_shape_is_masked(url, masked):
    assert mask_password(url) == masked
    assert mask_password(masked) == masked


@pytest.mark.parametrize("url", [
    "postgresql://u:secret@pw@127.0.0.1:1/db",
    "postgresql://u@127.0.0.1:1/db?password=secretpw",
    "postgresql:///db?host=127.0.0.1&port=1&user=u&password=secretpw",
])
def test_an_unreachable_storage_error_shows_no_password(url):
    with pytest.raises(BenchmarkError) as caught:
        open_storage(url)
    assert "secret" not in str(caught.value) and "pw@" not in str(caught.value)


def _overwrite_a_page(path: Path, page: int) -> None:
    with path.open("r+b") as database:
        database.seek(4096 * page)
        database.write(b"\xde\xad" * 2048)


def test_a_corrupt_sqlite_file_is_named_as_such(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(storage=url, study_name="s")
    for value in range(60):
        study.add_trial(optuna.trial.create_trial(value=float(value), user_attrs={"note": "x" * 200}))
    _overwrite_a_page(tmp_path / "optuna.db", 5)
    message = f"--storage: {tmp_path / 'optuna.db'} is not an SQLite database or is corrupt (SQLite: "
    with pytest.raises(BenchmarkError) as caught:
        open_storage(url)
    assert str(caught.value).startswith(message) and "restore it from a backup" in str(caught.value)

    from benchmark.cli import main

    assert main(["--leaderboard", "--storage", url, "--results-dir", str(tmp_path / "results")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_a_file_that_is_no_database_is_named_as_such(tmp_path):
    table = tmp_path / "results.csv"
    table.write_text("encoder,accuracy\n" * 50)
    with pytest.raises(BenchmarkError, match=r"results.csv is not an SQLite database or is corrupt "
                                             r"\(SQLite: file is not a database\)"):
        open_storage(f"sqlite:///{table}")


@pytest.mark.parametrize("suffix", ["?timeout=30", "?timeout=30&cached_statements=50"])
def test_a_sqlite_url_with_a_query_names_the_same_file_for_writing_and_reading(tmp_path, monkeypatch, suffix):
    """`--check`, `--final-eval` and `--leaderboard` read what `--study` wrote: the query string
    names no other file."""
    monkeypatch.chdir(tmp_path)
    for url in (f"sqlite:///s.db{suffix}", f"sqlite:///{tmp_path / 'abs.db'}{suffix}"):
        optuna.create_study(storage=open_storage(url), study_name="s").add_trial(optuna.trial.create_trial(value=1.0))
        existing = open_existing_storage(url)
        assert existing is not None, url
        assert optuna.get_all_study_names(existing) == ["s"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["abs.db", "s.db"], "no file named after the query"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_an_in_memory_sqlite_storage_is_refused(url):
    """Each connection to an in-memory SQLite database sees its own empty one: the heartbeat thread
    would write where no one reads, and nothing outlives the run."""
    for opener in (open_storage, open_existing_storage):
        with pytest.raises(BenchmarkError, match=r"^--storage: .* is an in-memory SQLite database, which nothing "
                                                 r"outlives .*give a file, e.g. sqlite:///results/optuna.db$"):
            opener(url)


@pytest.mark.parametrize("content", [b"", b"SQLite format 3\x00\xff\xfe", b"encoder,accuracy\nbert,0.5\n",
                                     b"not json at all\n"])
def test_a_file_that_is_no_journal_is_named_as_such(tmp_path, content):
    """A file that is not a journal is named as such, not met with a bare JSON parser's message
    ("Expecting value: line 1 column 1"); an empty file is a new journal."""
    path = tmp_path / "optuna.log"
    path.write_bytes(content)
    if not content:
        assert optuna.get_all_study_names(open_storage(f"journal:{path}")) == []
        return
    for opener in (open_storage, open_existing_storage):
        with pytest.raises(BenchmarkError) as caught:
            opener(f"journal:{path}")
        assert str(caught.value) == (f"--storage: {path} is not an Optuna journal file (its first line is not a "
                                     "JSON record); give journal: a journal file or a new path, or an SQLite "
                                     "file as sqlite:///PATH")
    assert path.read_bytes() == content, "left as it was"


def test_a_storage_left_by_a_process_killed_mid_write_is_read_as_it_was_before_that_write(tmp_path):
    """After kill -9 a rollback journal lies beside the database, and a read-only connection
    cannot roll it back: `--study`, `--check` and `--leaderboard` said "attempt to write a
    readonly database"."""
    import subprocess
    import sys

    path = tmp_path / "optuna.db"
    url = f"sqlite:///{path}"
    optuna.create_study(storage=url, study_name="s").add_trial(optuna.trial.create_trial(value=1.0))
    killed_mid_write = (
        "import os, sqlite3\n"
        f"connection = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "connection.execute('PRAGMA cache_size=1')\n"  # pages spill to the file before the commit
        "connection.execute('BEGIN IMMEDIATE')\n"
        "connection.execute('CREATE TABLE half_written (x)')\n"
        "connection.executemany('INSERT INTO half_written VALUES (?)', [('x' * 1000,)] * 2000)\n"
        "os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", killed_mid_write])
    assert (tmp_path / "optuna.db-journal").stat().st_size > 0, "a hot journal"
    existing = open_existing_storage(url)
    assert optuna.get_all_study_names(existing) == ["s"]
    assert len(optuna.load_study(study_name="s", storage=existing).trials) == 1


def _open_together(url: str, barrier, errors) -> None:
    barrier.wait()
    try:
        open_storage(url)
    except Exception as error:  # noqa: BLE001 - reported to the test
        errors.put(f"{type(error).__name__}: {error}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_opening_a_new_database_together_all_get_it(tmp_path, kind):
    """Optuna creates its tables and inserts its schema version in two steps: workers started
    together on a new database used to fail on each other's version row."""

    url = f"sqlite:///{tmp_path / 'new.db'}" if kind == "sqlite" else postgres_url()
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_open_together, args=(url, barrier, errors)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 6
    failures = [errors.get() for _ in range(errors.qsize())]
    assert failures == []
    assert optuna.get_all_study_summaries(open_storage(url)) == []
