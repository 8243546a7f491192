"""Opening the Optuna storage, with errors a user can act on and no password in sight."""

from __future__ import annotations

import errno
import json
import sqlite3
import time
import warnings
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import optuna

from benchmark.config.spec import HeartbeatSpec
from benchmark.config.storage_url import StorageUrl, parse_storage_url
from benchmark.errors import BenchmarkError
from benchmark.redaction import mask_password, mask_secrets_of
from benchmark.search.optuna_internals import stale_trial_retry_callback


def default_storage_url(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'optuna.db'}"


def open_storage(url: str, heartbeat: HeartbeatSpec = HeartbeatSpec()) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL.

    Database URLs (sqlite, postgresql, mysql) get heartbeats, and a dead worker's trial
    is failed and queued again with the same parameters. `journal:PATH` is a journal
    file and `redis://...` a Redis journal, for users with no database (Optuna has no
    heartbeats for journals).
    """
    parsed = parse_storage_url(url)
    try:
        if parsed.kind == "journal":
            parsed.path.parent.mkdir(parents=True, exist_ok=True)
            return _journal(parsed.path)
        if parsed.kind == "redis":
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(url))
        if parsed.kind == "sqlite":
            if parsed.path.is_file():
                check_sqlite_file(parsed.path)
            parsed.path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats have been "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _database(parsed, heartbeat)
    except BenchmarkError:
        raise
    except Exception as exc:  # drivers raise their own types; all mean "cannot use it"
        raise _unusable(url, exc) from None


def open_existing_storage(url: str) -> optuna.storages.BaseStorage | None:
    """The storage at `url` opened for reading, or None where nothing is stored there yet.

    Creates nothing, neither a file nor a directory nor Optuna's tables (which opening a
    database storage does), so a command that only reads leaves no trace.
    """
    parsed = parse_storage_url(url)
    database_url = url
    try:
        if parsed.kind == "journal":
            return _journal(parsed.path) if parsed.path.is_file() else None
        if parsed.kind == "redis":
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(url))
        if parsed.kind == "sqlite":
            if not parsed.path.is_file():
                return None
            check_sqlite_file(parsed.path)
            # SQLite's own read-only mode: not even a lock or journal file is written. The
            # user's query (a `timeout`) goes along.
            query = "&".join(part for part in ("mode=ro&uri=true", parsed.query) if part)
            database_url = f"sqlite:///file:{quote(str(parsed.path))}?{query}"
        import sqlalchemy

        engine = sqlalchemy.create_engine(database_url)
        try:
            if not sqlalchemy.inspect(engine).has_table("studies"):
                return None
        finally:
            engine.dispose()
        return optuna.storages.RDBStorage(database_url)
    except BenchmarkError:
        raise
    except Exception as exc:  # drivers raise their own types; all mean "cannot use it"
        raise _unusable(url, exc) from None


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _unusable(url: str, exc: Exception) -> BenchmarkError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return BenchmarkError(f"--storage: cannot open {mask_password(url)}: {mask_secrets_of(url, detail)}")


def refused_write(error: BaseException) -> str | None:
    """What the storage's driver said, where `error` comes from a write the storage refused (a
    full disk, a lost connection): the deepest such error of its chain. None for any other error.

    Optuna wraps the driver's error, and where it fails while recording a trial's end it raises
    `AssertionError: Should not reach.` over it."""
    import sqlalchemy.exc

    said = None
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (isinstance(error, (sqlite3.Error, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError))
                or isinstance(error, OSError) and error.errno in _DISK_ERRNOS):  # a journal file's
            said = str(error).splitlines()[0] if str(error) else type(error).__name__
        error = error.__cause__ or error.__context__
    return said


def _roll_back_a_killed_write(path: Path) -> None:
    """A process killed mid-write (kill -9, a lost machine) leaves its rollback journal beside
    the database, and only a connection that may write rolls it back: every read-only one
    fails with "attempt to write a readonly database". Reading once, read-write, restores the
    database as it was before that write; with no such journal there is nothing to do."""
    journal = path.with_name(path.name + "-journal")
    if not journal.is_file() or journal.stat().st_size == 0:
        return
    with closing(sqlite3.connect(path, timeout=60)) as connection:
        connection.execute("PRAGMA schema_version").fetchone()


def check_sqlite_file(path: Path) -> None:
    """A damaged SQLite file opens without complaint and fails at the first write, where
    Optuna blames "invalid data in the commit": check it whole first (SQLite's
    `quick_check` reads every page: 2 ms for the default run's 290 KB storage)."""
    _roll_back_a_killed_write(path)
    try:
        # Other workers may be writing: wait for their lock as the storage itself does.
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)) as connection:
            problem = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.OperationalError:
        raise  # locked or unreadable, not damaged: the caller says it cannot open it
    except sqlite3.DatabaseError as error:  # "file is not a database", "disk image is malformed"
        problem = str(error)
    if problem != "ok":
        first = problem.replace("*** in database main ***", "").strip().splitlines()[0]
        raise BenchmarkError(f"--storage: {path} is not an SQLite database or is corrupt (SQLite: {first}); "
                             "restore it from a backup or point --storage at another file")


def _journal(path: Path) -> optuna.storages.JournalStorage:
    check_journal_file(path)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def check_journal_file(path: Path) -> None:
    """Optuna replays a journal line by line as JSON: another file (an SQLite database, a
    log) would fail there with "Expecting value: line 1 column 1". Its first line says it."""
    if not path.is_file():
        return
    with path.open("rb") as handle:
        first = handle.readline(1 << 20)
    try:
        if first.strip():
            json.loads(first.decode())
    except ValueError:  # UnicodeDecodeError too
        raise BenchmarkError(f"--storage: {path} is not an Optuna journal file (its first line is not a JSON "
                             "record); give journal: a journal file or a new path, or an SQLite file as "
                             "sqlite:///PATH") from None


class _QuietHeartbeatStorage(optuna.storages.RDBStorage):
    """Optuna records heartbeats in a thread of its own, where an error (a full disk) prints a
    traceback and ends the heartbeats. A refused heartbeat is missed instead, and the next one
    tries again: the trial's own writes say why the storage refuses them."""

    def record_heartbeat(self, trial_id: int) -> None:
        import sqlalchemy.exc

        try:
            super().record_heartbeat(trial_id)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
            pass


def _database(parsed: StorageUrl, heartbeat: HeartbeatSpec) -> optuna.storages.RDBStorage:
    # SQLite serializes writers: let local workers wait for the lock instead of failing,
    # unless the URL sets its own `timeout`.
    sqlite_timeout = parsed.kind == "sqlite" and "timeout=" not in parsed.query
    engine_kwargs = ({"connect_args": {"timeout": 60}} if sqlite_timeout
                     else {} if parsed.kind == "sqlite" else {"pool_pre_ping": True})
    attempt = 1
    while True:
        try:
            return _QuietHeartbeatStorage(
                parsed.url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat.interval_s,
                grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=stale_trial_retry_callback(heartbeat.max_retries),
            )
        except Exception as error:  # noqa: BLE001 - only a lost creation race is retried
            if attempt == _CREATION_ATTEMPTS or not _lost_creation_race(error):
                raise
            time.sleep(0.1 * attempt)
            attempt += 1


# Optuna creates its tables and then inserts its schema version, in two steps that are not
# one transaction: two workers opening a new database together (`--study` twice, or
# `--workers` processes) can both find it empty, and the slower one fails on the faster
# one's table or version row. Opening again finds both in place.
_CREATION_ATTEMPTS = 5


def _lost_creation_race(error: BaseException) -> bool:
    import sqlalchemy.exc

    # PostgreSQL reports a table created twice as a duplicate row of its own catalog
    # (pg_type), SQLite as "table ... already exists", both databases a second version row
    # as an IntegrityError. Opening writes nothing else, so no other error is retried.
    return (isinstance(error, sqlalchemy.exc.IntegrityError)
            or isinstance(error, sqlalchemy.exc.DatabaseError) and "already exists" in str(error).lower())
