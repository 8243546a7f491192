"""Opening the Optuna storage, with errors a user can act on and no password in sight."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna

from benchmark.config import HeartbeatSpec
from benchmark.errors import BenchmarkError

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)")


def mask_password(text: str) -> str:
    """`scheme://user:secret@host` becomes `scheme://user:***@host`, wherever it appears."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def default_storage_url(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'optuna.db'}"


def open_storage(url: str, heartbeat: HeartbeatSpec = HeartbeatSpec()) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL.

    Database URLs (sqlite, postgresql, mysql) get heartbeats, and a dead worker's trial
    is failed and queued again with the same parameters. `journal:PATH` is a journal
    file and `redis://...` a Redis journal, for users with no database (Optuna has no
    heartbeats for journals).
    """
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        if url.startswith(("redis://", "rediss://", "unix://")):
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(url))
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats have been "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _database(url, heartbeat)
    except Exception as exc:  # drivers raise their own types; all mean "cannot use it"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchmarkError(f"--storage: cannot open {mask_password(url)}: {mask_password(detail)}") from None


def _database(url: str, heartbeat: HeartbeatSpec) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(
        url,
        # SQLite serializes writers: let local workers wait for the lock instead of failing.
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True},
        heartbeat_interval=heartbeat.interval_s,
        grace_period=heartbeat.grace_s,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=heartbeat.max_retries),
    )
