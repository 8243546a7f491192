"""The search benchmark: each search method, repeated, against `Trainer.hyperparameter_search`.

    python -m perf.search [--quick] [--repeats R] [--budget-s S] [--methods a,b] [--out runs/search]

Every method searches the same space (the config's), for one encoder on one dataset, with
the same training examples and wall-clock budget; each of its R runs has its own seed (run
i: `RUN_SEED_STRIDE` x i for every method, so runs pair up across methods), which seeds its
sampler and every trial's training, and its own fresh process. Each round of runs has its
own warm-start sources: the config's other datasets, searched by the shipped harness with
the round's seed and the same budget (their time is reported beside the result, not on the
methods' clocks). Runs go round by round (a round's sources, then every method's run 0,
then the next round's ...), so a change of machine load falls on every method alike. The levers are config options of the
harness, set here through the config: the benchmark has no search code of its own.

One encoder (the config's first, MiniLM-L6 by default): the peer searches one model, and
with two, each encoder's sampler would see half of a few-minute budget's trials.

The default budget fills about an hour on a 2-core CPU: (3600 s / ((methods + sources) x R))
less `OVERHEAD_S` per run (a fresh process imports torch and transformers, loads the data and
model before its clock starts, and its last trial runs past the budget), where the sources
are the warm-start studies, one per other dataset of the config and round. With the 10
methods, R = 5 and the default config's 2 other datasets: 3600 / 60 - 25 = 35 s a run, plus
one `precision: auto` measurement.

Writes SEARCH.json (every trial of every run), SEARCH.md (the table) and search_anytime.png
(best-so-far against time: every run thin, each method's median and interquartile band).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmark.train.loop import pick_device
from perf import RUNS
from perf.perf import FULL, describe_device, in_fresh_process, search_ours, search_trainer
from perf.table import best_so_far, time_to_reach

DEFAULT_OUT = RUNS / "search"
HOUR_S = 3600.0
# Seconds of a run outside its budget on a 2-core CPU: process start, imports, data and model
# before its clock starts, and the last trial, started in time, running past it.
OVERHEAD_S = 25.0
PEER = "trainer"
# Run i's seed: its trials train with seeds seed + trial number, so with this stride no two
# runs share a training seed (a run ends far fewer than this many trials).
RUN_SEED_STRIDE = 1000
# Warm-started methods read the sources' studies from this file in their run's folder.
SOURCE_DB = "ours.db"


@dataclass(frozen=True)
class Method:
    description: str
    # Config sections to change (section -> fields), from the config; None: the peer.
    patch: Callable[[object], dict[str, dict]] | None

    def warm(self, config) -> bool:
        """Whether its runs need the other datasets' studies in their storage."""
        return self.patch is not None and \
            configure(config, self.patch(config)).sampler.warm_start == "other_datasets"


def _hyperband(config) -> dict:
    # The first rung at the first checkpoint: halving starts with the first evaluation.
    return {"pruner": {"type": "hyperband", "min_resource": config.training.eval_every_examples,
                       "reduction_factor": 3}}


def _cold(config, **sampler) -> dict:
    """Sampler fields changed, and no warm start: a lever measured on its own."""
    return {"sampler": {"warm_start": "none", **sampler}}


# Methods are named by what they do, not by what ships, so a published table keeps its
# meaning when the default changes. Each lever alone is measured against `no-warm-start`,
# the shipped default since warm start showed no advantage on independent repeats.
METHODS: dict[str, Method] = {
    "no-warm-start": Method("the shipped default (default.yaml: TPE with 2 startup trials, no warm start, median "
                            "pruner, geometric checkpoints on a 100-example subset)",
                            lambda config: _cold(config)),
    "warm-start": Method("no-warm-start + sampler.warm_start: other_datasets (each encoder's best configuration "
                         "from the other datasets' studies is tried first)",
                         lambda config: {"sampler": {"warm_start": "other_datasets"}}),
    "hyperband": Method("no-warm-start + pruner: hyperband over examples seen (reduction factor 3, first rung at "
                        "the first checkpoint)", lambda config: {**_cold(config), **_hyperband(config)}),
    "fixed-checkpoints": Method("no-warm-start - cheaper checkpoints: a checkpoint every eval_every_examples on "
                                "the whole validation split (what the shipped schedule saves)",
                                lambda config: {**_cold(config), "training": {"eval_schedule": "fixed",
                                                                              "eval_subset_examples": None}}),
    "tpe-startup-1": Method("no-warm-start, sampler.n_startup_trials: 1",
                            lambda config: _cold(config, n_startup_trials=1)),
    "tpe-startup-5": Method("no-warm-start, sampler.n_startup_trials: 5",
                            lambda config: _cold(config, n_startup_trials=5)),
    "gp": Method("no-warm-start, sampler.type: gp (Optuna's GPSampler per encoder, 2 startup trials)",
                 lambda config: _cold(config, type="gp", n_startup_trials=2)),
    "all-levers": Method("warm start + hyperband + gp together",
                         lambda config: {"sampler": {"type": "gp", "n_startup_trials": 2,
                                                     "warm_start": "other_datasets"},
                                         **_hyperband(config)}),
    PEER: Method('Trainer.hyperparameter_search(backend="optuna"): TPE, and its default pruning: '
                 "create_study's MedianPruner on the evaluation after each epoch", None),
    "random": Method("the floor: random search, no pruning, no warm start",
                     lambda config: {"sampler": {"type": "random", "warm_start": "none"}, "pruner": {"type": "none"}}),
}
QUICK_METHODS = ("no-warm-start", "warm-start", PEER, "random")


@dataclass(frozen=True)
class SearchPlan:
    repeats: int
    budget_s: float
    train_examples: int
    validation_examples: int | None
    # None: the config's `training.precision`; `auto` is measured once, for every run.
    precision: str | None = None


QUICK = SearchPlan(repeats=2, budget_s=15, train_examples=32, validation_examples=32, precision="fp32")


def default_budget_s(runs: int, sources: int) -> float:
    """Seconds per run that fit the benchmark into about an hour (see the module docstring);
    `runs` and `sources` count every round's."""
    return round(HOUR_S / (runs + sources) - OVERHEAD_S)


def configure(config, patch: dict[str, dict]):
    """`config` with `patch`'s fields changed, each changed section validated again."""
    update = {}
    for section, fields in patch.items():
        current = getattr(config, section)
        update[section] = type(current).model_validate({**current.model_dump(), **fields})
    return config.model_copy(update=update)


# --- the table arithmetic (pure) ------------------------------------------------------------------


def best_at(curve: Sequence[tuple[float, float]], moment: float) -> float | None:
    """The best value of a step curve at `moment`; None before its first complete trial."""
    reached = [value for when, value in curve if when <= moment]
    return reached[-1] if reached else None


def median_or_none(values: Sequence[float | None], missing: float) -> float | None:
    """The median, a missing value counted as `missing` (-inf: worst value, inf: never); None
    when the median itself is missing (over half the runs, or a middle one of an even count)."""
    median = float(np.median([missing if value is None else value for value in values]))
    return None if np.isinf(median) else median


def summarize_methods(curves: dict[str, list[list[tuple[float, float]]]], budget_s: float,
                      peer: str = PEER) -> dict:
    """Per method, from its runs' best-so-far curves cut at `budget_s`: the median final best;
    the target (the peer's median final best); the median time to reach it (a run that never
    does counts as never); how many runs reach it, and how many within half the budget."""
    finals = {name: [best_at(curve, budget_s) for curve in runs] for name, runs in curves.items()}
    target = median_or_none(finals[peer], -np.inf) if peer in finals else None
    summary = {"target": target, "budget_s": budget_s, "methods": {}}
    for name, runs in curves.items():
        times = [None if target is None else time_to_reach([p for p in curve if p[0] <= budget_s], target)
                 for curve in runs]
        summary["methods"][name] = {
            "runs": len(runs),
            "final_best": finals[name],
            "median_final_best": median_or_none(finals[name], -np.inf),
            "times_to_target": times,
            "median_time_to_target": median_or_none(times, np.inf) if target is not None else None,
            "reached": sum(t is not None for t in times),
            "reached_in_half_budget": sum(t is not None and t <= budget_s / 2 for t in times),
        }
    return summary


def anytime_band(runs: list[list[tuple[float, float]]], grid: Sequence[float]) -> np.ndarray:
    """Rows: the 25th, 50th and 75th percentile over the runs of best-so-far at each grid
    time, each an actual run's value (no interpolation). A run with no complete trial yet
    counts as the worst; NaN where a percentile falls on such a run."""
    bests = [[best_at(curve, t) for t in grid] for curve in runs]
    values = np.array([[-np.inf if best is None else best for best in row] for row in bests])
    band = np.quantile(values, [0.25, 0.5, 0.75], axis=0, method="inverted_cdf")
    return np.where(np.isinf(band), np.nan, band)


def trial_counts(runs: list[dict], budget_s: float) -> list[tuple[int, int]]:
    """Per run: (complete trials, all trials) that ended within the budget."""
    ended = [[trial for trial in run["trials"] if trial["ended_s"] <= budget_s] for run in runs]
    return [(sum(trial["state"] == "complete" for trial in trials), len(trials)) for trials in ended]


def repeats_text(report: dict) -> list[str]:
    """What makes the runs independent repeats, and what the warm-start sources cost; a report
    without `source_runs` comes from the code before either."""
    if "source_runs" not in report:
        return ["**Made by the old code: its repeats are not independent.** The run seed reached only the "
                "sampler (every trial trained with seed training.seed + trial number in every run), and the "
                "warm-start sources were searched once and shared by every run, so a warm-started run's first "
                "trials were the same configurations with the same seeds in every run."]
    if not report["source_runs"]:
        return ["Each run's seed seeds its sampler and every trial's training (seed + trial number). "
                "No method warm-starts, so no source was searched."]
    seconds = [run["seconds"] for run in report["source_runs"]]
    per_round = len(seconds) / len(next(iter(report["methods"].values()))["runs"])
    return [f"Each run's seed seeds its sampler and every trial's training (seed + trial number). Each round "
            f"searched its own warm-start sources first ({', '.join(report['warm_start_sources'])}, with the round's "
            f"seed and the same budget): {len(seconds)} source searches, {float(np.median(seconds)):.0f} s each "
            f"(median), so {per_round * float(np.median(seconds)):.0f} s per warm-started run that its clock "
            "does not count. A benchmark run spends it anyway on its other datasets, which is the lever's premise; "
            "a study without them gets no warm start."]


def render_markdown(report: dict) -> str:
    summary = report["summary"]
    plan = report["plan"]
    target = summary["target"]
    target_text = (f"{target:.4f}" if target is not None
                   else "none (the peer was not run, or no run of it completed a trial)")
    runs = next(iter(report["methods"].values()))["runs"]
    seeds = ", ".join(str(run["seed"]) for run in runs)
    stopped = ([] if len(runs) == plan["repeats"] else
               [f"**{len(runs)} of the {plan['repeats']} planned rounds**: the benchmark was stopped, or is still "
                "running, after these.", ""])
    lines = [
        "# Search benchmark",
        "",
        *stopped,
        *repeats_text(report),
        "",
        f"{len(runs)} runs per method, each in a fresh process with its own seed ({seeds}), "
        f"{plan['budget_s']:.0f} s of wall clock each; encoder {report['encoder']}, dataset {report['dataset']} "
        f"({plan['train_examples']} training examples, validation {report['metric']}), {report['precision']}, "
        f"on {report['device']}. "
        f"Target: the peer's ({PEER}) median final best, {target_text}. A run's best is its best complete trial "
        f"ended within the budget; one with none counts as the worst.",
        "",
        "| method | median final best | median time to target (s) | runs reaching target | within half the budget "
        "| final best per run, in seed order | trials per run, complete/ended in the budget |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["methods"].items():
        best = row["median_final_best"]
        time = row["median_time_to_target"]
        per_run = ", ".join("-" if value is None else f"{value:.3f}" for value in row["final_best"])
        counts = ", ".join(f"{complete}/{ended}" for complete, ended in trial_counts(report["methods"][name]["runs"],
                                                                                      summary["budget_s"]))
        lines.append(f"| {name} | {'-' if best is None else f'{best:.4f}'} | "
                     f"{'not reached' if time is None else f'{time:.0f}'} | {row['reached']}/{row['runs']} | "
                     f"{row['reached_in_half_budget']}/{row['runs']} | {per_run} | {counts} |")
    lines += ["", "Methods:", ""]
    lines += [f"- `{name}`: {report['methods'][name]['description']}" for name in summary["methods"]]
    return "\n".join(lines) + "\n"


def plot_anytime(report: dict, curves: dict[str, list[list[tuple[float, float]]]], path: Path) -> None:
    """One panel per method (shared axes): its runs thin, their median bold over the
    interquartile band, and the peer's median in grey on every panel to compare against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = report["summary"]["budget_s"]
    target = report["summary"]["target"]
    grid = np.linspace(0, budget, 200)
    columns = min(5, len(curves))
    rows = -(-len(curves) // columns)
    figure, panels = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.9 * rows), sharex=True, sharey=True,
                                  squeeze=False)
    peer_median = anytime_band(curves[PEER], grid)[1] if PEER in curves else None
    for index, (name, runs) in enumerate(curves.items()):
        axes = panels.flat[index]
        color = plt.cm.tab10(index % 10)
        for curve in runs:
            xs = [0.0, *(when for when, _ in curve if when <= budget), budget]
            ys = [np.nan, *(value for when, value in curve if when <= budget)]
            axes.step(xs, [*ys, ys[-1]], where="post", color=color, alpha=0.6, linewidth=0.8)
        low, median, high = anytime_band(runs, grid)
        axes.fill_between(grid, low, high, step="post", color=color, alpha=0.15)
        axes.step(grid, median, where="post", color=color, linewidth=2.2)
        if peer_median is not None and name != PEER:
            axes.step(grid, peer_median, where="post", color="grey", linewidth=1.2, linestyle="-.")
        if target is not None:
            axes.axhline(target, color="black", linestyle="--", linewidth=0.8)
        axes.axvline(budget / 2, color="grey", linestyle=":", linewidth=0.8)
        axes.set_title(f"{name} ({len(runs)} runs)", fontsize=10)
    for axes in panels.flat[len(curves):]:
        axes.set_visible(False)
    for axes in panels[-1]:
        axes.set_xlabel("seconds since the search started")
    for axes in panels[:, 0]:
        axes.set_ylabel(f"best validation {report['metric']}")
    panels[0, 0].set_xlim(0, budget)
    figure.suptitle(f"{report['encoder']} on {report['dataset']}, {budget:.0f} s per run: thin lines are runs, bold the "
                    f"median, band the interquartile range; grey dash-dot: {PEER}'s median; dashed: the target "
                    f"({PEER}'s median final best); dotted: half the budget", fontsize=9, wrap=True)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- the run -------------------------------------------------------------------------------------


def run(config, plan: SearchPlan, methods: Sequence[str], out: Path, dataset: str | None = None) -> dict:
    """Run every method `plan.repeats` times on `dataset` (default: the config's first) and
    the config's first encoder; write SEARCH.json/.md and search_anytime.png to `out`."""
    encoder = next(iter(config.encoders))
    dataset = dataset or next(iter(config.datasets))
    config = config.restricted(None, [encoder])
    config = config.model_copy(update={"datasets": {
        name: spec.model_copy(update={"max_validation_examples": plan.validation_examples or
                                      spec.max_validation_examples})
        for name, spec in config.datasets.items()}})
    search_plan = replace(FULL, search_budget_s=plan.budget_s, search_train_examples=plan.train_examples)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="search-"))
    precision = plan.precision or config.training.precision
    if precision == "auto":  # as each run would measure it, but once: half a minute a run on a CPU
        precision = in_fresh_process(measured_precision, config.restricted([dataset], None), str(workdir))
    config = configure(config, {"training": {"precision": precision}})
    target_config = config.restricted([dataset], None)
    sources = [name for name in config.datasets if name != dataset]
    warm = any(METHODS[name].warm(config) for name in methods)
    report: dict = {"plan": asdict(plan), "encoder": encoder, "dataset": dataset,
                    "metric": config.datasets[dataset].metric, "device": describe_device(pick_device()),
                    "precision": precision,
                    "warm_start_sources": sources if warm else [], "source_runs": [], "methods": {
                        name: {"description": METHODS[name].description,
                               "config": METHODS[name].patch(config) if METHODS[name].patch else None, "runs": []}
                        for name in methods}}
    for repeat in range(plan.repeats):
        seed = RUN_SEED_STRIDE * repeat
        source_dir = workdir / f"sources-{seed}"
        source_dir.mkdir()
        for name in report["warm_start_sources"]:  # each in one storage, as a benchmark run leaves them
            print(f"warm-start source {name}, round {repeat + 1}/{plan.repeats}", file=sys.stderr, flush=True)
            result = in_fresh_process(search_ours, config.restricted([name], None), search_plan, str(source_dir),
                                      seed)
            report["source_runs"].append({"seed": seed, "dataset": name, **result})
        for name in methods:
            method = METHODS[name]
            run_dir = workdir / f"{name}-{seed}"
            run_dir.mkdir()
            if method.warm(config):
                shutil.copy(source_dir / SOURCE_DB, run_dir / SOURCE_DB)
            print(f"{name} run {repeat + 1}/{plan.repeats}", file=sys.stderr, flush=True)
            if method.patch is None:
                result = in_fresh_process(search_trainer, target_config, search_plan, str(run_dir), seed)
            else:
                result = in_fresh_process(search_ours, configure(target_config, method.patch(target_config)),
                                          search_plan, str(run_dir), seed)
            report["methods"][name]["runs"].append({"seed": seed, **result})
        # After every round: a run stopped later keeps its finished rounds, each a whole set of paired runs.
        write_outputs(report, out)
    return report


def write_outputs(report: dict, out: Path) -> dict:
    """SEARCH.json, SEARCH.md and search_anytime.png in `out`, from `report`'s runs (the summary is recomputed)."""
    from benchmark.files import write_atomic

    curves = {name: [best_so_far(r["trials"]) for r in entry["runs"]] for name, entry in report["methods"].items()}
    report["summary"] = summarize_methods(curves, report["plan"]["budget_s"])
    write_atomic(out / "SEARCH.json", json.dumps(report, indent=2, default=float) + "\n")
    write_atomic(out / "SEARCH.md", render_markdown(report))
    plot_anytime(report, curves, out / "search_anytime.png")
    return report


def measured_precision(config, workdir: str) -> str:
    """What `precision: auto` chooses for `config`'s one encoder on this machine."""
    from benchmark.search.preflight import prepare_studies

    prepared = prepare_studies(config, f"sqlite:///{workdir}/precision.db", ["none"], Path(workdir))
    (chosen,) = prepared.studies[0].precisions.values()
    return chosen.choice


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf.search", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/default.yaml",
                        help="space, first encoder and datasets to search (default: %(default)s)")
    parser.add_argument("--dataset", default="twitter_sentiment",
                        help="the dataset searched; the config's others are the warm-start sources "
                             "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help=f"R=2, a {QUICK.budget_s:.0f}-second budget, {QUICK.train_examples} examples, "
                             f"methods {','.join(QUICK_METHODS)}: only proves the script works")
    parser.add_argument("--repeats", type=int, help="runs per method, at least 2 (default: 5; --quick: 2)")
    parser.add_argument("--budget-s", type=float, help="seconds per run (default: about an hour in all)")
    parser.add_argument("--methods", help=f"comma-separated, of {','.join(METHODS)} (default: all)")
    parser.add_argument("--train-examples", type=int, default=240, help="(default: %(default)s)")
    parser.add_argument("--out", help=f"where the outputs go (default: {DEFAULT_OUT}; --quick: a new temporary "
                                      "folder, so a quick run never replaces a full one's outputs)")
    parser.add_argument("--render", type=Path, metavar="SEARCH.json",
                        help="run nothing: write SEARCH.md and search_anytime.png again beside this SEARCH.json")
    return parser


def output_dir(out: str | None, quick: bool) -> Path:
    """--out if given; else a fresh temporary folder for --quick, DEFAULT_OUT for a full run."""
    if out:
        return Path(out)
    return Path(tempfile.mkdtemp(prefix="search-quick-")) if quick else DEFAULT_OUT


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.render is not None:
        try:
            report = json.loads(args.render.read_text())
        except (OSError, ValueError) as error:
            print(f"error: --render {args.render}: {error}", file=sys.stderr)
            return 2
        write_outputs(report, args.render.parent)
        print(f"written to {args.render.parent}/SEARCH.md and search_anytime.png", file=sys.stderr)
        return 0
    from benchmark.config.spec import load_config
    from benchmark.errors import BenchmarkError

    methods = (args.methods.split(",") if args.methods else list(QUICK_METHODS if args.quick else METHODS))
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    repeats = args.repeats if args.repeats is not None else QUICK.repeats if args.quick else 5
    if repeats < 2:
        parser.error(f"--repeats must be at least 2, got {repeats}: one run shows none of the spread")
    if args.budget_s is not None and not 0 < args.budget_s < float("inf"):
        parser.error(f"--budget-s must be a positive number of seconds, got {args.budget_s}")
    try:
        config = load_config(args.config)
        if args.dataset not in config.datasets:
            raise BenchmarkError(f"--dataset {args.dataset!r} is not in {args.config}; "
                                 f"choose from {', '.join(config.datasets)}")
        sources = len(config.datasets) - 1 if any(METHODS[name].warm(config) for name in methods) else 0
        if args.quick:
            plan = replace(QUICK, repeats=repeats, budget_s=args.budget_s or QUICK.budget_s)
        else:
            plan = SearchPlan(repeats=repeats, budget_s=args.budget_s or default_budget_s(len(methods) * repeats,
                                                                                          sources * repeats),
                              train_examples=args.train_examples, validation_examples=None)
        if plan.budget_s <= 0:
            raise BenchmarkError(f"{len(methods)} methods x {repeats} runs do not fit an hour; "
                                 "give --budget-s or fewer --methods/--repeats")
        out = output_dir(args.out, args.quick)
        run(config, plan, methods, out, args.dataset)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"written to {out}/SEARCH.md, SEARCH.json and search_anytime.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
