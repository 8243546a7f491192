"""Command line: validate everything up front, run the studies, rebuild the tables."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmark.errors import BenchmarkError

if TYPE_CHECKING:  # like every module that needs torch, imported only where used
    from benchmark.precision import Precision

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
    mode.add_argument("--final-eval", action="store_true",
                      help="retrain each encoder's best configuration of every study with --seeds seeds, "
                           "score it on the held-out test split, and compare the encoders; resumes if cut short")
    mode.add_argument("--leaderboard", action="store_true",
                      help="rebuild every leaderboard file and the report from the storage alone, training nothing")
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
    parser.add_argument("--seeds", type=int, default=5, metavar="K",
                        help="--final-eval: seeds per encoder and dataset, at least 2 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="local worker processes sharing the studies through the storage, one GPU "
                             "each when there are several (default: 1); on many machines, run the same "
                             "command against one --storage database instead")
    parser.add_argument("--tracker", type=_names, default=["none"], metavar="NAME",
                        help="experiment tracker for trial curves: none (default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout), ("--workers", args.workers)):
        if value is not None and value <= 0:
            print(f"error: {flag} must be positive, got {value}", file=sys.stderr)
            return 2
    if args.seeds < 2:
        print(f"error: --seeds must be at least 2 (a confidence interval needs two runs), got {args.seeds}",
              file=sys.stderr)
        return 2
    try:
        if args.study:
            _study(args, argv)
        elif args.final_eval:
            _final_eval(args)
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
    from benchmark.leaderboard import reference_flag_sentences, to_markdown
    from benchmark.ranking import ranking_verdict
    from benchmark.report import REPORT_FILE, search_verdict_sentences, timeout_sentences
    from benchmark.results import PREDICTIONS_FILE, TABLES

    print(to_markdown(tables["leaderboard"]))
    for sentence in reference_flag_sentences(tables["reference_flags"]):
        print(sentence)
    for sentence in [*timeout_sentences(tables["datasets"]), *search_verdict_sentences(tables["datasets"])]:
        print(sentence)
    print(ranking_verdict(tables["ranking_tests"]))
    if not tables["final"].empty:
        print(to_markdown(tables["final"]))
        for row in tables["datasets"].itertuples():
            print(row.final_verdict or f"{row.dataset}: no final evaluation yet (run --final-eval)")
    print(f"written to {results_dir}/: {', '.join(f'{name}.csv/.md' for name in TABLES)}, trials.csv, "
          f"{PREDICTIONS_FILE}, {REPORT_FILE} (open it in a browser)")


def _config(args: argparse.Namespace):
    """The config file, narrowed and reseeded by the command line."""
    from benchmark.config import load_config

    config = load_config(args.config).restricted(args.datasets, args.encoders)
    seed = config.training.seed if args.seed is None else args.seed
    return config.model_copy(update={"training": config.training.model_copy(update={"seed": seed})})


def _study(args: argparse.Namespace, argv: list[str]) -> None:
    from benchmark import preflight
    from benchmark.results import RESULT_FILES, write_leaderboards
    from benchmark.study import run_study

    config = _config(args)
    seed = config.training.seed
    n_trials = args.n_trials or config.budget.n_trials
    problem = config.unbalanced_budget(n_trials)
    if problem:
        flag = "--n-trials" if args.n_trials else f"{config.source_file}: budget.n_trials (with --encoders)"
        raise BenchmarkError(f"{flag}: {problem}")
    timeout = args.timeout or config.budget.timeout_s
    url = _storage_url(args)
    # Everything that can be wrong with the input fails here, before any training (and
    # before any worker starts: they find the offline assets already fetched).
    # With several workers each one streams to the trackers itself.
    trackers = ["none"] if args.workers > 1 else args.tracker
    prepared = preflight.prepare(config, url, trackers, args.results_dir)
    print(f"storage: {_masked(url)}  (optuna-dashboard {_masked(url)})", file=sys.stderr)
    started = time.perf_counter()
    tables = None
    try:
        if args.workers > 1:
            _run_workers(args.workers, argv, prepared.studies[0].precision)
        else:
            for dataset_study in prepared.studies:
                run_study(prepared.storage, url, dataset_study, n_trials, timeout, seed)
        print(f"studies done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    finally:
        # Also on Ctrl-C: the tables then show every trial that finished.
        tables = write_leaderboards(prepared.storage, args.results_dir)
        for dataset_study in prepared.studies:
            prepared.tracker.end_study(dataset_study.study_name, [args.results_dir / name for name in RESULT_FILES])
        prepared.tracker.close()
    _print_tables(tables, args.results_dir)


def _final_eval(args: argparse.Namespace) -> None:
    from benchmark import preflight
    from benchmark.final_eval import evaluation_candidates, run_final_evaluation
    from benchmark.results import write_leaderboards

    config = _config(args)
    url = _storage_url(args)
    prepared = preflight.prepare(config, url, ["none"], args.results_dir)
    candidates = [evaluation_candidates(prepared.storage, study) for study in prepared.studies]
    try:
        for dataset_study, trials in zip(prepared.studies, candidates):
            run_final_evaluation(prepared.storage, dataset_study, trials, args.seeds)
    finally:
        tables = write_leaderboards(prepared.storage, args.results_dir)
    _print_tables(tables, args.results_dir)


def _run_workers(count: int, argv: list[str], chosen: Precision) -> None:
    """Start `count` copies of this command as single workers on the same storage, training
    in the precision measured here."""
    import os
    import subprocess

    from benchmark.precision import for_workers
    from benchmark.study import WORKER_ENV

    gpus = _visible_gpus()
    workers = []
    for index in range(count):
        env = dict(os.environ, **{WORKER_ENV: str(index)}, **for_workers(chosen))
        if len(gpus) > 1:
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        # A later --workers wins over the user's, so each child is a single worker.
        command = [sys.executable, "-m", "benchmark.cli", *argv, "--workers", "1"]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    print(f"started {count} workers (pids {', '.join(str(w.pid) for w in workers)})", file=sys.stderr)
    try:
        codes = [worker.wait() for worker in workers]
    except KeyboardInterrupt:
        # Ctrl-C reached the workers too (same process group); let them stop cleanly.
        for worker in workers:
            worker.wait()
        raise
    failed = [code for code in codes if code != 0]
    if failed:
        raise BenchmarkError(f"--workers: {len(failed)} of {count} workers exited with an error (codes {failed})")


def _visible_gpus() -> list[str]:
    import os

    import torch

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


if __name__ == "__main__":
    raise SystemExit(main())
