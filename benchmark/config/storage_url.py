"""The one reading of a `--storage` URL that every command shares.

Pure and light (no SQLAlchemy, no Optuna): the command line checks a URL with it before
any heavy import, and `search.storage` opens what it describes. SQLite URLs are split as
SQLAlchemy splits them, so `sqlite:///s.db?timeout=30` names the file `s.db` for every
command, not a file called `s.db?timeout=30`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from benchmark.errors import BenchmarkError

JOURNAL_PREFIX = "journal:"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# SQLAlchemy's URL grammar, narrowed to SQLite: no user or host, the database up to the
# first `?`, the query after it.
_SQLITE = re.compile(r"sqlite(?:\+\w+)?://(?P<host>[^/?]*)(?:/(?P<database>[^?]*))?(?:\?(?P<query>.*))?",
                     re.DOTALL)


@dataclass(frozen=True)
class StorageUrl:
    url: str  # as the user gave it, and as Optuna opens it
    kind: Literal["journal", "redis", "sqlite", "database"]
    path: Path | None = None  # the file of a journal or SQLite storage
    query: str = ""  # an SQLite URL's query string, without the `?`


def parse_storage_url(url: str) -> StorageUrl:
    """What `url` names; a BenchmarkError for a storage that cannot keep a study."""
    if url.startswith(JOURNAL_PREFIX):
        return StorageUrl(url, "journal", Path(url.removeprefix(JOURNAL_PREFIX)))
    if url.startswith(REDIS_SCHEMES):
        return StorageUrl(url, "redis")
    sqlite = _SQLITE.fullmatch(url)
    if sqlite is None:
        return StorageUrl(url, "database")
    database = sqlite["database"] or ""
    if not database or database == ":memory:" or "mode=memory" in (sqlite["query"] or ""):
        # Optuna's heartbeat thread opens its own connection, which sees another, empty
        # in-memory database; and the study would vanish with the process.
        raise BenchmarkError(
            f"--storage: {url} is an in-memory SQLite database, which nothing outlives (the studies "
            "vanish at exit and the tables cannot be rebuilt); give a file, e.g. sqlite:///results/optuna.db")
    return StorageUrl(url, "sqlite", Path(database), sqlite["query"] or "")
