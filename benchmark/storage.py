"""Opening the Optuna storage, with errors a user can act on and no password in sight."""

from __future__ import annotations

import re
from pathlib import Path

import optuna

from benchmark.errors import BenchmarkError

_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@)")


def mask_password(text: str) -> str:
    """`scheme://user:secret@host` becomes `scheme://user:***@host`, wherever it appears."""
    return _PASSWORD.sub(lambda m: f"{m['head']}***{m['tail']}", text)


def default_storage_url(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'optuna.db'}"


# A worker that dies mid-trial stops beating; after the grace period the next worker to
# start a trial marks it failed, and the retry callback queues the same parameters again.
HEARTBEAT_INTERVAL_S = 20
HEARTBEAT_GRACE_S = 90
MAX_RETRIES = 2


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL.

    Database URLs (sqlite, postgresql, mysql) get heartbeats and retries of dead workers'
    trials. `journal:PATH` is a journal file and `redis://...` a Redis journal, for users
    with no database (Optuna has no heartbeats for journals).
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
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True},
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=HEARTBEAT_GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )
    except Exception as exc:  # drivers raise their own types; all mean "cannot use it"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchmarkError(f"--storage: cannot open {mask_password(url)}: {mask_password(detail)}") from None
