"""Experiment trackers behind one interface (`base.Tracker`): the console, Neptune, MLflow,
optuna-dashboard notes and a live display; `make_tracker` builds them by name. Imports
of train only `train.records` (a step's and an evaluation's records, no torch), and config
and the root modules.

Importing this package loads nothing else: the command line lists TRACKERS in its help
before it knows the config is good, and a bad config answers before Optuna or torch load.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmark.tracking.base import Tracker


def _neptune(results_dir: Path) -> Tracker:
    from benchmark.tracking.neptune_backend import NeptuneTracker

    return NeptuneTracker(results_dir)


def _mlflow(results_dir: Path) -> Tracker:
    # MLflow 3 reports usage to its makers unless told not to; a user who wants it says so.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from benchmark.tracking.mlflow_backend import MlflowTracker

    return MlflowTracker(results_dir)


# name -> factory(results_dir). A backend imports its client library only when chosen.
TRACKERS: dict[str, Callable[[Path], Tracker]] = {"neptune": _neptune, "mlflow": _mlflow}


def make_tracker(names: list[str], results_dir: Path, live_display: bool = True) -> Tracker:
    """The console plus the named trackers, each guarded (`none` adds nothing); the live
    display too where `live_display` and a person is at the terminal."""
    from benchmark.errors import BenchmarkError
    from benchmark.tracking.base import Guarded, TrackerGroup
    from benchmark.tracking.console import ConsoleTracker

    unknown = [name for name in names if name != "none" and name not in TRACKERS]
    if unknown:
        raise BenchmarkError(
            f"--tracker: unknown tracker {', '.join(unknown)}; choose from none, {', '.join(TRACKERS)}"
            if TRACKERS else f"--tracker: unknown tracker {', '.join(unknown)}; only 'none' is available"
        )
    backends = [Guarded(TRACKERS[name](results_dir)) for name in dict.fromkeys(names) if name != "none"]
    return TrackerGroup([ConsoleTracker(), *(_live_progress() if live_display else []), *backends])


def _live_progress() -> list[Tracker]:
    """A live display for a person at a terminal. Logs and pipes keep the lines alone, and
    so do `--workers` children: several displays on one terminal would overwrite each other."""
    from benchmark.schema import WORKER_ENV
    from benchmark.tracking.base import Guarded

    if not sys.stderr.isatty() or os.environ.get(WORKER_ENV) is not None:
        return []
    from rich.console import Console

    from benchmark.tracking.progress import LiveProgress

    return [Guarded(LiveProgress(Console(stderr=True)))]
