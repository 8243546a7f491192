"""Command line: validate everything up front, run the studies, rebuild the tables."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchmark.errors import BenchmarkError

T = TypeVar("T")

DEFAULT_CONFIG = Path("search_spaces/default.yaml")
MAX_SEED = 2**32 - 1
MAX_SEEDS = 50


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def build_parser() -> argparse.ArgumentParser:
    from benchmark.tracking import TRACKERS

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
    mode.add_argument("--check", action="store_true",
                      help="check the config, datasets, encoders and storage as a run would, then print the "
                           "studies, trials and an estimate of the time; trains and writes nothing")
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
                        help="--final-eval: seeds per encoder and dataset, 2 to 50 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="K",
                        help="--study: local worker processes sharing the studies through the storage, one GPU "
                             "each when there are several (default: 1); on many machines, run the same "
                             "command against one --storage database instead")
    parser.add_argument("--tracker", type=_names, default=["none"], metavar="NAMES",
                        help="--study: experiment trackers for trial curves, comma-separated: none (default), "
                             + ", ".join(TRACKERS))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    problem = _flag_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.study:
            _study(args, argv)
        elif args.final_eval:
            _final_eval(args)
        elif args.check:
            _check(args)
        else:
            _leaderboard(args)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from benchmark.search.storage import refused_write

        said = refused_write(error)
        if said is None:
            raise
        # Outside a trial (the study's own attributes, the tables' reads): no trial to fail.
        print(f"error: --storage: {_masked(_storage_url(args))} refused a write ({said}); free space on its disk "
              "(or check its server) and run the same command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(f"interrupted by {'SIGTERM' if terminated else 'Ctrl-C'}: finished trials are kept in the storage; "
              "run the same command to top up", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def _flag_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with a flag's value, in words, or None."""
    for flag, value in (("--n-trials", args.n_trials), ("--timeout", args.timeout), ("--workers", args.workers)):
        # `not value > 0` is also true of NaN, which compares false with everything.
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"{flag} must be a positive number, got {value}"
    if args.seeds < 2:
        return (f"--seeds must be at least 2 per encoder, got {args.seeds}: the final comparison counts the "
                "seed-to-seed spread, and one seed shows none of it")
    if args.seeds > MAX_SEEDS:
        return (f"--seeds must be at most {MAX_SEEDS} per encoder, got {args.seeds}: every seed retrains each "
                "encoder of every dataset once more, and beyond a few dozen the interval barely narrows")
    if args.final_eval and args.workers != 1:
        return (f"--workers {args.workers}: --final-eval trains its runs one after another in this process; "
                "leave --workers out (it shares the work of --study only)")
    if args.final_eval and args.tracker != ["none"]:
        return (f"--tracker {','.join(args.tracker)}: --final-eval sends nothing to trackers (its runs are kept "
                "in the storage, and --leaderboard rebuilds their tables); leave --tracker out")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        return f"--seed must lie in 0..{MAX_SEED} (a 32-bit unsigned seed, as training.seed), got {args.seed}"
    if args.storage is not None and not args.storage.strip():
        return "--storage is empty; give a storage URL, or leave the flag out for sqlite:///RESULTS_DIR/optuna.db"
    if args.storage is not None:
        from benchmark.config.storage_url import parse_storage_url

        try:
            parse_storage_url(args.storage)
        except BenchmarkError as error:
            return str(error)
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, Slurm, Kubernetes): stopped exactly as Ctrl-C stops a run."""


def _on_sigterm(signum: int, frame: object) -> None:
    # Once: a second SIGTERM (sent to the whole process group, then forwarded to the
    # workers by their parent) must not cut short the tables being written.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _storage_url(args: argparse.Namespace) -> str:
    from benchmark.search.storage import default_storage_url

    return args.storage or default_storage_url(args.results_dir)


def _leaderboard(args: argparse.Namespace) -> None:
    """Read only: nothing is created in the storage's place, and no table is written before
    the storage is known to hold a benchmark study."""
    import optuna

    from benchmark.report.results import benchmark_trial_count
    from benchmark.search.storage import open_existing_storage

    url = _storage_url(args)
    storage = open_existing_storage(url)
    if storage is None or benchmark_trial_count(storage) == 0:
        raise BenchmarkError(f"--storage: no benchmark study with a trial in {_masked(url)}; check the URL "
                             "(--leaderboard creates no storage)")
    _check_results_dir(args.results_dir)
    # Optuna announces every in-memory study the report builds for its plots.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _print_tables(_write_tables(storage, args.results_dir), args.results_dir)


def _write_tables(storage, results_dir: Path) -> dict:
    """Every table and the report, written whole: a Ctrl-C or SIGTERM that arrives meanwhile (a
    second Ctrl-C right after the first) waits until they are, then stops the command."""
    from benchmark import interrupts
    from benchmark.report.results import write_leaderboards

    with interrupts.deferred("writing the tables and the report first (seconds); then the command stops"):
        return write_leaderboards(storage, results_dir)


def _check_results_dir(directory: Path) -> None:
    """Before any training: a directory that cannot take the tables would lose the run's summary.
    Creates nothing: the tables create it when they are written."""
    import errno
    import os
    import shutil
    import tempfile

    from benchmark.report.html import bytes_needed

    existing = next(path for path in (directory, *directory.parents) if path.exists() or path == path.parent)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        with tempfile.TemporaryFile(dir=existing):  # where the directory will be made
            pass
    except OSError as error:
        raise BenchmarkError(f"--results-dir: cannot write to {directory} ({error.strerror or error}); "
                             "choose another directory or fix its permissions") from None
    free, needed = shutil.disk_usage(existing).free, bytes_needed(directory)
    if free < needed:
        raise BenchmarkError(f"--results-dir: {directory} has {free / 1e6:.1f} MB free, and the report and tables "
                             f"need about {needed / 1e6:.0f} MB; free space or choose another directory")


def _masked(url: str) -> str:
    from benchmark.redaction import mask_password

    return mask_password(url)


def _print_tables(tables: dict, results_dir: Path) -> None:
    from benchmark.report.html import REPORT_FILE
    from benchmark.report.leaderboard import reference_flag_sentences, to_markdown
    from benchmark.report.ranking import ranking_verdict
    from benchmark.report.results import PREDICTIONS_FILE, TABLES
    from benchmark.report.text import search_verdict_sentences, stopped_sentences, timeout_sentences

    print(to_markdown(tables["leaderboard"]))
    for sentence in reference_flag_sentences(tables["reference_flags"]):
        print(sentence)
    for sentence in [*timeout_sentences(tables["datasets"]), *stopped_sentences(tables["datasets"]),
                     *search_verdict_sentences(tables["datasets"])]:
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
    from benchmark.config.spec import load_config

    config = load_config(args.config).restricted(args.datasets, args.encoders)
    seed = config.training.seed if args.seed is None else args.seed
    return config.model_copy(update={"training": config.training.model_copy(update={"seed": seed})})


def _n_trials(args: argparse.Namespace, config) -> int:
    n_trials = args.n_trials or config.budget.n_trials
    problem = config.unbalanced_budget(n_trials)
    if problem:
        flag = "--n-trials" if args.n_trials else f"{config.source_file}: budget.n_trials (with --encoders)"
        raise BenchmarkError(f"{flag}: {problem}")
    return n_trials


def _check(args: argparse.Namespace) -> None:
    config = _config(args)
    n_trials = _n_trials(args, config)
    from benchmark.search.check import run_check  # torch: only once the config is known good

    run_check(config, _storage_url(args), n_trials, args.results_dir, args.timeout or config.budget.timeout_s)


def _study(args: argparse.Namespace, argv: list[str]) -> None:
    config = _config(args)
    seed = config.training.seed
    n_trials = _n_trials(args, config)
    # Only now the heavy imports (torch, transformers): a config error answers at once.
    from benchmark.report.html import REPORT_FILES
    from benchmark.report.results import RESULT_FILES
    from benchmark.search import preflight
    from benchmark.search.study import every_encoder_stopped, run_study
    from benchmark.search.workers import apply_share

    apply_share()  # a --workers child: its threads and GPU memory, before torch allocates any
    timeout = args.timeout or config.budget.timeout_s
    url = _storage_url(args)
    # Everything that can be wrong with the input fails here, before any training (and
    # before any worker starts: they find the offline assets already fetched). With several
    # workers each one streams to the trackers itself, this process as the first of them,
    # whose live display would be overwritten by the others' lines.
    _check_results_dir(args.results_dir)
    prepared = preflight.prepare_studies(config, url, args.tracker, args.results_dir,
                                         live_display=args.workers == 1)
    print(f"storage: {_masked(url)}  (optuna-dashboard {_masked(url)})", file=sys.stderr)
    started = time.perf_counter()
    tables = None

    def search() -> list[str]:
        """This process's share of the search: the studies in which every encoder was stopped
        by failing trials."""
        halted = []
        for dataset_study in prepared.studies:
            study = run_study(prepared.storage, url, dataset_study, n_trials, timeout, seed)
            reasons = every_encoder_stopped(study, list(dataset_study.encoders))
            halted += [f"{dataset_study.data.name} ({reasons})"] if reasons else []
        return halted

    try:
        halted = _run_workers(args.workers, argv, search) if args.workers > 1 else search()
        print(f"studies done in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    finally:
        # Also on Ctrl-C: the tables then show every trial that finished.
        try:
            tables = _write_tables(prepared.storage, args.results_dir)
        finally:
            attachments = [args.results_dir / name for name in (*RESULT_FILES, *REPORT_FILES)]
            for dataset_study in prepared.studies:
                prepared.tracker.end_study(dataset_study.study_name,
                                           [path for path in attachments if path.is_file()])
            prepared.tracker.close()
    _print_tables(tables, args.results_dir)
    if halted:
        raise BenchmarkError(
            f"every encoder was stopped by failed trials in a row in {'; '.join(halted)}; fix the cause "
            f"and run the same command again (it retries them)")


def _final_eval(args: argparse.Namespace) -> None:
    config = _config(args)
    from benchmark.search import lineage, preflight
    from benchmark.search.final_eval import evaluation_candidates, pending_seeds, plan_text, run_final_evaluation
    from benchmark.train.estimate import duration_text

    url = _storage_url(args)
    _check_studies_exist(config, url)
    _check_results_dir(args.results_dir)
    prepared = preflight.prepare_studies(config, url, ["none"], args.results_dir, lineage.FINAL_SETTINGS)
    candidates = [evaluation_candidates(prepared.storage, study) for study in prepared.studies]
    total = 0.0
    for dataset_study, trials in zip(prepared.studies, candidates):
        line, seconds = plan_text(dataset_study, trials, pending_seeds(prepared.storage, dataset_study, trials,
                                                                       args.seeds))
        print(line, file=sys.stderr)
        total += seconds
    print(f"final evaluation: about {duration_text(total)} in all (each run as long as the search trial it "
          "retrains)", file=sys.stderr, flush=True)
    try:
        for dataset_study, trials in zip(prepared.studies, candidates):
            run_final_evaluation(prepared.storage, dataset_study, trials, args.seeds)
    finally:
        tables = _write_tables(prepared.storage, args.results_dir)
    _print_tables(tables, args.results_dir)


def _check_studies_exist(config, url: str) -> None:
    """--final-eval retrains what a search found: with no search there, fail before loading
    anything, and create no storage in place of a mistyped one."""
    import optuna

    from benchmark.schema import study_name
    from benchmark.search.storage import open_existing_storage

    storage = open_existing_storage(url)
    stored = set(optuna.get_all_study_names(storage)) if storage is not None else set()
    missing = [study_name(config.name, name) for name in config.datasets if study_name(config.name, name) not in stored]
    if missing:
        raise BenchmarkError(f"--final-eval: no study {', '.join(missing)} in {_masked(url)}; run --study first "
                             "(or check --storage)")


def _run_workers(count: int, argv: list[str], search: Callable[[], T]) -> T:
    """`search` in this process as the first of `count` workers on the same storage, beside
    count - 1 copies of this command started as single workers, each on its share of the cores
    and GPUs (search/workers.py). This process has loaded everything and measured each
    encoder's precision already, and the others train in the precision it stored: only they
    pay a process's start-up (torch, the data, the encoders: some 8 s on a 2-core CPU), and a
    study of half a minute no longer runs slower on two workers than on one."""
    import os
    import subprocess

    from benchmark.schema import WORKER_ENV
    from benchmark.search.workers import oversubscription, taken, usable_cores, worker_shares

    cores, gpus = usable_cores(), _visible_gpus()
    warning = oversubscription(count, cores, gpus)
    if warning:
        print(warning, file=sys.stderr)
    shares = worker_shares(count, cores, gpus)
    workers = []
    for index, share in enumerate(shares[1:], start=1):
        env = dict(os.environ, **{WORKER_ENV: str(index)}, **share.environment())
        # A later --workers wins over the user's, so each child is a single worker.
        command = [sys.executable, "-m", "benchmark.cli", *argv, "--workers", "1"]
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
    print(f"started {count - 1} more worker(s) beside this one (pids {', '.join(str(w.pid) for w in workers)})",
          file=sys.stderr)
    try:
        with taken(shares[0]):
            result = search()
        codes = [worker.wait() for worker in workers]
    except BaseException as stopped:
        # Ctrl-C reached the workers too (same process group); a SIGTERM sent to this process
        # alone did not, nor an error here. Either way, let them stop cleanly.
        if not isinstance(stopped, KeyboardInterrupt) or isinstance(stopped, Terminated):
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait()
        raise
    failed = [code for code in codes if code != 0]
    if failed:
        raise BenchmarkError(f"--workers: {len(failed)} of {count - 1} other workers exited with an error "
                             f"(codes {failed})")
    return result


def _visible_gpus() -> list[str]:
    import os

    import torch

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device for device in listed.split(",") if device.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def run() -> int:
    """The process's entry point: once the command has stopped on Ctrl-C or SIGTERM, a further
    one while the interpreter shuts down (torch's exit hooks take a moment) is ignored, not a
    traceback."""
    code = main()
    if code in (130, 128 + signal.SIGTERM):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    raise SystemExit(run())
