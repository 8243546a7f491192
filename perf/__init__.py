"""The harness measured (speed against Trainer, search methods, workers) and the docs'
screenshots taken: tools run by hand from the repository root as `python -m perf.<name>`, not
part of the installed package."""

from pathlib import Path

# Every tool's default --out lies under here, relative to the repository root: git ignores
# /runs/, so no run overwrites a published result (those live in docs/, copied on purpose).
RUNS = Path("runs")
