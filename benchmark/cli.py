"""Command line: validate everything up front, run the studies, rebuild the tables."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmark.errors import BenchmarkError

DEFAULT_CONFIG = Path("search_spaces/default.yaml")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py",
        description="Search hyperparameters of fine-tuned text encoders with Optuna, one study per "
                    "dataset, and compare the encoders across datasets.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--study", action="store_true",
                      help="run (or top up) one Optuna study per dataset, then write the leaderboards")
    mode.add_argument("--leaderboard", action="store_true",
                      help="rebuild every leaderboard file from the storage alone, training nothing")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="search-space YAML file (default: %(default)s)")
    parser.add_argument("--datasets", type=_names, metavar="A,B",
                        help="run only these datasets of the config")
    parser.add_argument("--encoders", type=_names, metavar="X,Y",
                        help="sample only these encoders of the config")
    parser.add_argument("--n-trials", type=int, metavar="N",
                        help="finished trials each study should hold; an existing study is topped up to N "
                             "(default: the config's budget.n_trials)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="per study, start no new trial after this many seconds "
                             "(default: the config's budget.timeout_s)")
    parser.add_argument("--storage", metavar="URL",
                        help="any Optuna storage URL (default: sqlite:///RESULTS_DIR/optuna.db)")
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="where the leaderboards go (default: %(default)s)")
    parser.add_argument("--seed", type=int,
                        help="seed for the data splits, the sampler and training "
                             "(default: the config's training.seed); keep it when topping up a study")
    parser.add_argument("--tracker", type=_names, default=["none"], metavar="NAME",
                        help="experiment tracker for trial curves: none (default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout)):
        if value is not None and value <= 0:
            print(f"error: {flag} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        if args.study:
            _study(args)
        else:
            _leaderboard(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished trials are kept in the storage; run the same command to top up",
              file=sys.stderr)
        return 130
    return 0


def _storage_url(args: argparse.Namespace) -> str:
    from benchmark.storage import default_storage_url

    return args.storage or default_storage_url(args.results_dir)


def _leaderboard(args: argparse.Namespace) -> None:
    from benchmark.results import write_leaderboards
    from benchmark.storage import open_storage

    tables = write_leaderboards(open_storage(_storage_url(args)), args.results_dir)
    if tables["trials"].empty:
        raise BenchmarkError(f"--storage: no benchmark study found in {_masked(_storage_url(args))}")
    _print_tables(tables, args.results_dir)


def _masked(url: str) -> str:
    from benchmark.storage import mask_password

    return mask_password(url)


def _print_tables(tables: dict, results_dir: Path) -> None:
    from benchmark.leaderboard import to_markdown

    print(to_markdown(tables["leaderboard"]))
    print(f"leaderboards written to {results_dir}/: leaderboard.csv/.md, datasets.csv/.md, trials.csv")


def _study(args: argparse.Namespace) -> None:
    from benchmark import preflight
    from benchmark.config import load_config
    from benchmark.results import RESULT_FILES, write_leaderboards
    from benchmark.study import run_study

    config = load_config(args.config).restricted(args.datasets, args.encoders)
    seed = config.training.seed if args.seed is None else args.seed
    config = config.model_copy(update={"training": config.training.model_copy(update={"seed": seed})})
    n_trials = args.n_trials or config.budget.n_trials
    timeout = args.timeout or config.budget.timeout_s
    url = _storage_url(args)
    # Everything that can be wrong with the input fails here, before any training.
    prepared = preflight.prepare(config, url, args.tracker, args.results_dir)
    print(f"storage: {_masked(url)}  (optuna-dashboard {_masked(url)})", file=sys.stderr)
    started = time.perf_counter()
    try:
        for dataset_study in prepared.studies:
            run_study(prepared.storage, url, dataset_study, n_trials, timeout, seed)
        print(f"studies done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
        tables = write_leaderboards(prepared.storage, args.results_dir)
        for dataset_study in prepared.studies:
            prepared.tracker.end_study(dataset_study.study_name, [args.results_dir / name for name in RESULT_FILES])
    finally:
        prepared.tracker.close()
    _print_tables(tables, args.results_dir)
