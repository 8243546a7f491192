"""The harness measured (speed against Trainer, search methods, workers) and the docs'
screenshots taken: tools run by hand from the repository root as `python -m perf.<name>`, not
part of the installed package."""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Every tool's default --out lies under here, relative to the repository root: git ignores
# /runs/, so no run overwrites a published result (those live in docs/, copied on purpose).
RUNS = Path("runs")


def interleaved_medians(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each call over `rounds` rounds, the calls alternating within a round,
    so that a slow moment of a shared machine falls on all of them; an untimed round first
    warms each one up."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds + 1):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            if round_:
                seconds[name].append(time.perf_counter() - started)
    return {name: float(np.median(times)) for name, times in seconds.items()}
