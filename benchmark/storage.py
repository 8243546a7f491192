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


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.get_storage(url)
    except Exception as exc:  # drivers raise their own types; all mean "cannot use it"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchmarkError(f"--storage: cannot open {mask_password(url)}: {mask_password(detail)}") from None
