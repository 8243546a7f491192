"""Trials per hour with K local workers (`--workers K`) on this machine, side by side.

    python -m perf.workers [--config search_spaces/quick.yaml] [--workers 1,2,4] [--trials 8]
                                 [--rounds 2] [--out runs/workers]

Every run does the same work: the config's first encoder on its first dataset, every trial
the same size (one batch size, one epoch count: the largest the space allows) and none
pruned, so only the number of workers differs. Each run is the real command line in a fresh
process on a fresh storage; the rounds alternate the order of the worker counts, so a
slow moment of a shared machine does not fall on one count only. Writes WORKERS.json and
WORKERS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from perf import RUNS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = RUNS / "workers"


def fixed_work_config(config, trials: int) -> dict:
    """`config` narrowed to equal trials: its first encoder and dataset, one batch size and
    epoch count (the largest), no pruning, `trials` trials and no timeout."""
    encoder = next(iter(config.encoders))
    dataset = next(iter(config.datasets))
    data = config.model_dump(mode="json", exclude={"source_file"}, exclude_unset=True)
    space = data["search_space"]
    space["batch_size"] = {"type": "categorical", "choices": [max(config.batch_sizes())]}
    epochs = config.search_space.num_epochs
    most = int(max(getattr(epochs, "choices", None) or (epochs.high,)))
    space["num_epochs"] = {"type": "int", "low": most, "high": most}
    data["encoders"] = {encoder: {**data["encoders"][encoder], "overrides": {}}}
    data["datasets"] = {dataset: data["datasets"][dataset]}
    data["pruner"] = {"type": "none"}
    data["sampler"] = {**data.get("sampler", {}), "warm_start": "none"}  # one dataset: nothing to start from
    data["budget"] = {"n_trials": trials, "timeout_s": 24 * 3600}
    return data


def trials_per_hour(finished: int, seconds: float) -> float:
    return finished / seconds * 3600 if seconds > 0 else 0.0


def study_span(trials: list) -> float:
    """Seconds from the first trial's start to the last one's end: the studies' own time,
    without the command's start-up (imports, data, the precision measurement)."""
    starts = [t.datetime_start.timestamp() for t in trials]
    ends = [t.datetime_complete.timestamp() for t in trials]
    return max(ends) - min(starts) if trials else 0.0


def run_once(config_path: Path, workers: int, trials: int, workdir: Path) -> dict:
    import optuna

    from benchmark.schema import FINISHED, SURPLUS_ATTR

    workdir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{workdir / f'workers{workers}.db'}"
    command = [sys.executable, "run_benchmark.py", "--study", "--config", str(config_path), "--storage", storage,
               "--results-dir", str(workdir / f"results{workers}"), "--n-trials", str(trials),
               "--workers", str(workers)]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               check=False)  # its stderr goes into the error
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"--workers {workers} exited with {completed.returncode}: {completed.stderr[-2000:]}")
    finished = [t for name in optuna.get_all_study_names(storage)
                for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=FINISHED)
                if not t.user_attrs.get(SURPLUS_ATTR)]
    span = study_span(finished)
    return {"workers": workers, "finished": len(finished), "wall_s": wall, "study_s": span,
            "trials_per_hour": trials_per_hour(len(finished), span),
            "trials_per_hour_with_startup": trials_per_hour(len(finished), wall)}


def render_markdown(report: dict) -> str:
    header = (f"{report['machine']}; load average before the runs {report['load_before']}, after "
              f"{report['load_after']}. Config `{report['config']}` narrowed to equal, unpruned trials "
              f"({report['trials']} per run); {report['rounds']} round(s), the worker counts' order "
              "alternating. All rows from one run of `python -m perf.workers`.")
    columns = ("| workers | runs | trials/hour (study span), each run | median | x one worker | "
               "trials/hour with start-up, median |")
    lines = ["# Trials per hour with K local workers", "", header, "", columns, "|---:|---:|:---|---:|---:|---:|"]
    for row in report["summary"]:
        lines.append(f"| {row['workers']} | {len(row['runs'])} | "
                     f"{', '.join(f'{value:.0f}' for value in row['runs'])} | {row['median']:.0f} | "
                     f"{row['speed_up']:.2f}x | {row['median_with_startup']:.0f} |")
    return "\n".join(lines) + "\n"


def summarize(runs: list[dict]) -> list[dict]:
    import statistics

    counts = sorted({run["workers"] for run in runs})
    medians = {k: statistics.median(r["trials_per_hour"] for r in runs if r["workers"] == k) for k in counts}
    return [{"workers": k, "runs": [r["trials_per_hour"] for r in runs if r["workers"] == k], "median": medians[k],
             "speed_up": medians[k] / medians[counts[0]],
             "median_with_startup": statistics.median(r["trials_per_hour_with_startup"]
                                                      for r in runs if r["workers"] == k)}
            for k in counts]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf.workers", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/quick.yaml", help="(default: %(default)s)")
    parser.add_argument("--workers", default="1,2", help="worker counts, comma-separated (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=8, help="finished trials per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per worker count (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where WORKERS.json/.md go (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmark.config.spec import load_config
    from benchmark.errors import BenchmarkError
    from benchmark.files import write_atomic
    from benchmark.search.workers import usable_cores

    try:
        config = load_config(args.config)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = [int(k) for k in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="workers-"))
    config_path = workdir / "fixed.yaml"
    config_path.write_text(yaml.safe_dump(fixed_work_config(config, args.trials)))
    report = {"config": args.config, "trials": args.trials, "rounds": args.rounds,
              "machine": f"{os.uname().machine}, {usable_cores()} cores", "load_before": os.getloadavg(), "runs": []}
    for round_index in range(args.rounds):
        for workers in counts if round_index % 2 == 0 else counts[::-1]:
            run = run_once(config_path, workers, args.trials, workdir / f"round{round_index}")
            report["runs"].append(run)
            print(f"round {round_index}, {workers} worker(s): {run['finished']} trials in {run['study_s']:.0f} s "
                  f"({run['trials_per_hour']:.0f}/hour; command {run['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    report["load_after"] = os.getloadavg()
    report["summary"] = summarize(report["runs"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "WORKERS.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "WORKERS.md", render_markdown(report))
    print(render_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
