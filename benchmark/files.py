"""Result files are written whole or not at all."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from benchmark.errors import BenchmarkError

# A temporary file this old is a write that was killed (kill -9 cannot be caught): a real
# write of the largest file, the report, takes seconds. Younger ones may be another
# worker's write in progress.
STALE_TEMPORARY_S = 600


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write whole or not at all: a crash never leaves half a table behind. A write the disk
    refuses (full, read-only) is a BenchmarkError naming the file, with nothing left of it."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
        # mkstemp makes the file private (0600); results get the usual umask permissions.
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb" if isinstance(content, bytes) else "w") as out:
            out.write(content)
        os.replace(temporary, path)
    except BaseException as error:  # KeyboardInterrupt too: no temporary file is left
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise BenchmarkError(
                f"--results-dir: cannot write {path} ({error.strerror or error}); nothing half-written is left, "
                "and the storage keeps every trial: free space (or choose another --results-dir) and run "
                "--leaderboard to write the tables") from None
        raise


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: Path) -> None:
    """Remove what killed writes of `path` left (see STALE_TEMPORARY_S)."""
    now = time.time()
    for left in path.parent.glob(f"{_temporary_prefix(path)}*"):
        try:
            if now - left.stat().st_mtime > STALE_TEMPORARY_S:
                left.unlink()
        except FileNotFoundError:
            pass  # another process removed it first
