"""Entry point: `python run_benchmark.py --help`."""

from benchmark.cli import run

if __name__ == "__main__":
    raise SystemExit(run())
