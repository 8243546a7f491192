"""Pure functions from the measurements of `perf.perf` to ratios, verdicts and the table."""

from __future__ import annotations

from dataclasses import dataclass

from benchmark.train.estimate import FORWARD_SHARE

TARGETS = {
    "throughput_ratio": 1.3,   # ours as configured / Trainer with TrainingArguments' defaults, at least
    "mfu": 0.60,               # of the measured matmul peak of the precision in use, largest encoder, at least
    "overhead_share": 0.05,    # of the search's wall time outside training steps, at most
    "time_to_peer_best": 0.5,  # of the peer search's wall time, at most
    "busy_share": 0.60,        # of the search's wall time with a GPU kernel running, at least (CUDA only)
}
AT_MOST = ("overhead_share", "time_to_peer_best")
# What `precision: auto` must pick for a base-size model on a GPU.
GPU_PRECISIONS = ("bf16", "tf32")


@dataclass(frozen=True)
class Measurement:
    tokens: int  # real (non-padding) training tokens
    seconds: float
    loss: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def best_so_far(trials: list[dict]) -> list[tuple[float, float]]:
    """(seconds since the search started, best value yet) at each complete trial that improved it."""
    curve: list[tuple[float, float]] = []
    for trial in sorted(trials, key=lambda t: t["ended_s"]):
        if trial["state"] == "complete" and (not curve or trial["value"] > curve[-1][1]):
            curve.append((trial["ended_s"], trial["value"]))
    return curve


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((when for when, value in curve if value >= target), None)


def _tokens_per_second(row: dict) -> float:
    return row["tokens"] / row["seconds"]


def summarize(report: dict) -> dict:
    """Every row of the table, with its ratio and whether the target was met."""
    summary: dict = {"throughput": {}, "mfu": {}, "levers": {}}
    in_use = report["configured"]["precision"]
    configured = "ours {precision} {sampling}".format(**report["configured"])
    for encoder, rows in report["throughput"].items():
        # "ours <precision> <batch order>"; the lever rows add a word.
        ours = {key: _tokens_per_second(row) for key, row in rows.items()
                if key.startswith("ours ") and len(key.split()) == 3}
        peer = {key: _tokens_per_second(row) for key, row in rows.items() if key.startswith("trainer ")}
        precisions = sorted({key.split()[1] for key in ours})
        best_ours, best_peer = max(ours, key=ours.get), max(peer, key=peer.get)

        def best_at(side: dict, precision: str) -> float:
            return max(v for k, v in side.items() if k.split()[1] == precision)

        summary["throughput"][encoder] = {
            "ours": best_ours, "ours_tokens_per_second": ours[best_ours],
            "trainer": best_peer, "trainer_tokens_per_second": peer[best_peer],
            "ratio": ours[best_ours] / peer[best_peer],
            "same_precision_ratios": {p: best_at(ours, p) / best_at(peer, p) for p in precisions},
            "configured": configured, "configured_tokens_per_second": ours[configured],
            "trainer_defaults_tokens_per_second": _tokens_per_second(rows["trainer-defaults"]),
            "default_ratio": ours[configured] / _tokens_per_second(rows["trainer-defaults"]),
        }
        summary["mfu"][encoder] = {
            p: rows["flops_per_token"] * best_at(ours, p) / report["matmul_peak_flops"][p] for p in precisions}
        summary["levers"][f"fused AdamW ({encoder}, fp32)"] = (
            ours["ours fp32 random"] / _tokens_per_second(rows["ours fp32 random foreach-adamw"]))
        summary["levers"][f"length-grouped batches ({encoder}, fp32)"] = (
            ours["ours fp32 group_by_length"] / ours["ours fp32 random"])
        if "bf16" in precisions:
            summary["levers"][f"bf16 autocast ({encoder})"] = best_at(ours, "bf16") / best_at(ours, "fp32")
        tf32 = rows.get("ours fp32 random tf32")
        if tf32:
            summary["levers"][f"TF32 matmuls ({encoder}, fp32)"] = _tokens_per_second(tf32) / ours["ours fp32 random"]
            summary["mfu"][encoder]["tf32"] = (rows["flops_per_token"] * _tokens_per_second(tf32)
                                               / report["matmul_peak_flops"]["tf32"])
        eager = rows.get(f"{configured} eager-attention")
        summary["levers"][f"SDPA attention against eager ({encoder}, {in_use})"] = (
            ours[configured] / _tokens_per_second(eager) if eager else
            f"not measured: transformers gives {encoder} '{rows['attention']}' attention, no SDPA")
        summary["levers"][f"torch.compile ({encoder}, {in_use}), first model: compilation included"] = (
            _tokens_per_second(rows[f"{configured} compiled first"]) / ours[configured])
        summary["levers"][f"torch.compile ({encoder}, {in_use}), next model in the process: compiled code reused"] = (
            _tokens_per_second(rows[f"{configured} compiled again"]) / ours[configured])
    step_seconds = report["precision"]["seconds_per_step"]
    if step_seconds and "bf16" in step_seconds:
        summary["levers"]["bf16 autocast, as `precision: auto` timed a step of every encoder"] = (
            step_seconds["fp32"] / step_seconds["bf16"])
    evaluation = report["levers"]["eval_subset"]
    summary["levers"]["evaluation on the stratified subset (time per checkpoint)"] = (
        evaluation["full"]["seconds"] / evaluation["subset"]["seconds"])
    if "one_batch" in evaluation:  # reports since the device's evaluation batches were timed against one batch
        summary["levers"][f"evaluation in the device's batches against one batch of all "
                          f"{evaluation['one_batch']['examples']} examples (time per evaluation)"] = (
            evaluation["one_batch"]["seconds"] / evaluation["full"]["seconds"])
    summary["eval_schedule"] = _eval_schedule(report["levers"]["eval_schedule"])
    summary["levers"][summary["eval_schedule"]["lever"]] = summary["eval_schedule"]["speed_up"]
    largest = max(report["throughput"], key=lambda e: report["throughput"][e]["flops_per_token"])
    summary["mfu_target_encoder"] = largest
    summary["search"] = _search_summary(report["search"])
    summary["overhead"] = _overhead(report["search"]["ours"])
    summary["memory"] = {side: _memory(report["search"][side]) for side in ("ours", "trainer")}
    summary["base_size_mfu"] = {
        name: {"precision": in_use, "tokens_per_second": _tokens_per_second(row[configured]),
               "mfu": row["flops_per_token"] * _tokens_per_second(row[configured]) / report["matmul_peak_flops"][in_use]}
        for name, row in report.get("base_size", {}).items()}
    # On a GPU, auto must pick a tensor-core precision for a base-size model: fp32 there was the
    # slowest option (4.7x bf16's step on an H200 at 128x128). A CPU has no such target.
    on_gpu = report.get("device_type") == "cuda"
    summary["base_size_precision"] = {
        name: {**row["precision_auto"], "target_met": row["precision_auto"]["choice"] in GPU_PRECISIONS if on_gpu
               else None}
        for name, row in report.get("base_size", {}).items() if "precision_auto" in row}
    summary["busy_share"] = {side: report["search"][side].get("busy_share") for side in ("ours", "trainer")}
    summary["targets"] = {
        "throughput_ratio": min(row["default_ratio"] for row in summary["throughput"].values()),
        "mfu": summary["mfu"][largest][in_use],
        "overhead_share": summary["overhead"]["share"],
        "time_to_peer_best": summary["search"]["ours_time_share"],
        # Measured only on a GPU with NVML; elsewhere not a target.
        **({"busy_share": summary["busy_share"]["ours"]} if summary["busy_share"]["ours"] is not None else {}),
    }
    return summary


def _eval_schedule(lever: dict) -> dict:
    """The longest trial under each checkpoint schedule: evaluations, their share of its time, the speed-up.

    Both runs train the same steps, so their mean training time stands for both: the
    schedules differ only in evaluation, and a slow moment on a shared machine during one
    run's training would otherwise pass for a difference between them."""
    fixed, geometric = lever["fixed"], lever["geometric"]
    train = (fixed["train_seconds"] + geometric["train_seconds"]) / 2
    seconds = {name: train + run["eval_seconds"] for name, run in (("fixed", fixed), ("geometric", geometric))}
    shares = {name: run["eval_seconds"] / seconds[name] for name, run in (("fixed", fixed), ("geometric", geometric))}
    return {
        "eval_shares": shares,
        "speed_up": seconds["fixed"] / seconds["geometric"],
        "lever": (f"geometric checkpoint schedule ({lever['encoder']}, {lever['epochs']} epochs of "
                  f"{lever['train_examples']} examples at batch {lever['batch_size']}, base interval "
                  f"{lever['eval_every_examples']}: {fixed['checkpoints']} evaluations -> {geometric['checkpoints']}, "
                  f"{shares['fixed']:.1%} -> {shares['geometric']:.1%} of the trial's time)"),
    }


def _search_summary(search: dict) -> dict:
    ours, peer = best_so_far(search["ours"]["trials"]), best_so_far(search["trainer"]["trials"])
    peer_best = peer[-1][1] if peer else None
    reached = time_to_reach(ours, peer_best) if peer_best is not None else None
    return {
        "ours_curve": ours, "trainer_curve": peer,
        "ours_best": ours[-1][1] if ours else None, "trainer_best": peer_best,
        "ours_trials": len(search["ours"]["trials"]), "trainer_trials": len(search["trainer"]["trials"]),
        "ours_seconds": search["ours"]["seconds"], "trainer_seconds": search["trainer"]["seconds"],
        "ours_time_to_trainer_best": reached,
        "ours_time_share": None if reached is None else reached / search["trainer"]["seconds"],
    }


def _overhead(search: dict) -> dict:
    """Where the search's wall time went: training steps, and everything else.

    `eval_arithmetic_share` is evaluation's share of the search's arithmetic: its forward
    passes over `eval_tokens` against training's forward and backward passes over
    `train_tokens`. Where evaluation runs at training's FLOP rate, it takes that share of the
    time however fast both are: a faster harness leaves it, fewer evaluated examples cut it.
    None for records from before trials counted their evaluated tokens."""
    trials = search["trials"]
    train = sum(t.get("train_seconds", 0.0) for t in trials)
    load = sum(t.get("load_seconds", 0.0) for t in trials)
    evaluation = sum(t.get("eval_seconds", 0.0) for t in trials)
    in_trials = sum(t.get("wall_seconds", 0.0) for t in trials)
    total = search["seconds"]
    counted = [t for t in trials if "eval_tokens" in t and "train_tokens" in t]
    eval_work = FORWARD_SHARE * sum(t["eval_tokens"] for t in counted)
    work = sum(t["train_tokens"] for t in counted) + eval_work
    return {
        "share": (total - train) / total, "train_s": train, "load_s": load, "eval_s": evaluation,
        "other_in_trials_s": in_trials - train - load - evaluation, "between_trials_s": total - in_trials,
        "total_s": total,
        "eval_arithmetic_share": eval_work / work if work and len(counted) == len(trials) else None,
    }


# The allocator and the caches (tokenization, imports) settle over the first trials; growth
# after them is what would add up over a long study.
WARM_TRIAL = 3


def _memory(search: dict) -> dict:
    rss = [t["rss"] for t in search["trials"]]
    warm = rss[min(WARM_TRIAL, len(rss) - 1)] if rss else 0
    return {
        "peak_bytes": search["rss_peak"],
        "growth_bytes": rss[-1] - rss[0] if len(rss) > 1 else 0,
        "growth_after_warmup_bytes": rss[-1] - warm if rss else 0,
        "trials": len(rss),
    }


def _met(name: str, value: float | None) -> str:
    target = TARGETS[name]
    if value is None:
        return "missed (not reached)"
    met = value <= target if name in AT_MOST else value >= target
    return "met" if met else f"missed by {abs(value - target) / target:.0%}"


def _value(value: float | None) -> str:
    return "none complete" if value is None else f"{value:.4f}"


def _why_missed(name: str, report: dict, summary: dict) -> str:
    """The measured reason behind a missed target, in a few words."""
    if name == "throughput_ratio":
        worst = min(summary["throughput"], key=lambda e: summary["throughput"][e]["default_ratio"])
        row = summary["throughput"][worst]
        same_precision = ", ".join(f"{p} {r:.2f}x" for p, r in row["same_precision_ratios"].items())
        return (f"{worst}: both loops spend their time in the same {report['configured']['precision']} kernels "
                f"of the same model (with our settings ours is {same_precision} of Trainer's); "
                f"{_precision_why(report)}")
    if name == "mfu":
        encoder, in_use = summary["mfu_target_encoder"], report["configured"]["precision"]
        return (f"the matmuls of {encoder} run near the {in_use} peak, but attention's softmax, layer norms, "
                f"GELU, dropout and the optimizer step are memory-bound and take the rest of each step")
    if name == "overhead_share":
        overhead = summary["overhead"]
        parts = {"evaluation": overhead["eval_s"], "model load": overhead["load_s"],
                 "other in trials": overhead["other_in_trials_s"], "between trials": overhead["between_trials_s"]}
        largest = max(parts, key=parts.get)
        why = f"the largest part is {largest}: {parts[largest]:.1f} s of {overhead['total_s']:.0f} s"
        arithmetic = overhead.get("eval_arithmetic_share")
        if arithmetic is None:
            return why
        return (f"{why}; evaluation is {arithmetic:.1%} of the search's arithmetic (its forward passes against "
                f"training's forward and backward passes): the share of the time it takes wherever both run at "
                f"the same FLOP rate")
    if name == "busy_share":
        overhead = summary["overhead"]
        return (f"the GPU idled while the host loaded, evaluated and ran between trials "
                f"({overhead['total_s'] - overhead['train_s']:.0f} s of {overhead['total_s']:.0f} s outside training "
                "steps), and during steps too small to fill it")
    search = summary["search"]
    return (f"ours reached {_value(search['ours_best'])} in {search['ours_trials']} trials; "
            f"Trainer's search {_value(search['trainer_best'])} in {search['trainer_trials']}")


def _precision_why(report: dict) -> str:
    """Why bf16, the lever that could give 1.3x, is not in use here."""
    if report["configured"]["precision"] == "bf16":
        return "bf16 is already in use"
    peak = report["matmul_peak_flops"]
    seconds = report["precision"]["seconds_per_step"]
    measured = "" if not seconds or "bf16" not in seconds else (
        f"; `precision: auto` timed its step at {seconds['bf16'] / seconds['fp32']:.2f}x fp32's")
    return (f"bf16, the lever that could give 1.3x, multiplies at {peak['bf16'] / 1e9:.1f} GFLOP/s against "
            f"fp32's {peak['fp32'] / 1e9:.0f} here{measured}")


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def _memory_text(memory: dict) -> str:
    return (f"{_gb(memory['peak_bytes'])}; {memory['growth_bytes'] / 2**20:+.0f} MiB and "
            f"{memory['growth_after_warmup_bytes'] / 2**20:+.0f} MiB over {memory['trials']} trials")


def render_markdown(report: dict, summary: dict) -> str:
    search, overhead, targets = summary["search"], summary["overhead"], summary["targets"]
    in_use = report["configured"]["precision"]
    lines = [
        "# Performance: this harness against Hugging Face Trainer",
        "",
        f"Device: {report['device']}, {report['torch_threads']} threads; dataset `{report['dataset']}`; "
        f"measured matmul peak (warm) "
        + ", ".join(f"{flops / 1e9:.1f} GFLOP/s {name}" for name, flops in report["matmul_peak_flops"].items())
        + f". {report['precision']['described']}"
        f"{'' if in_use == 'bf16' else ' (so bf16 rows are not trained)'}. All rows from one run of "
        "`python -m perf.perf`; ratios compare measurements taken side by side.",
        "",
        "| row | this harness | peer | ratio | target | verdict |",
        "|:----|:-------------|:-----|------:|:-------|:--------|",
    ]
    for encoder, row in summary["throughput"].items():
        lines.append(
            f"| 1. training throughput, {encoder}, against Trainer with our settings (real tokens/s; each side's best) | "
            f"{row['ours_tokens_per_second']:.0f} ({row['ours']}) | "
            f"{row['trainer_tokens_per_second']:.0f} ({row['trainer']}) | {row['ratio']:.2f}x | - | - |")
        lines.append(
            f"| 1. training throughput, {encoder}, against Trainer with TrainingArguments' defaults (real tokens/s) | "
            f"{row['configured_tokens_per_second']:.0f} ({row['configured']}, as configured) | "
            f"{row['trainer_defaults_tokens_per_second']:.0f} (trainer-defaults) | {row['default_ratio']:.2f}x | "
            f">= 1.3x | {_met('throughput_ratio', row['default_ratio'])} |")
    reached = search["ours_time_to_trainer_best"]
    reached_text = "not reached" if reached is None else f"{reached:.0f} s"
    share_text = "-" if search["ours_time_share"] is None else f"{search['ours_time_share']:.2f}"
    lines.append(
        f"| 2. search: time to reach Trainer.hyperparameter_search's final best ({_value(search['trainer_best'])}) | "
        f"{reached_text} ({search['ours_trials']} trials, best "
        f"{_value(search['ours_best'])}) | {search['trainer_seconds']:.0f} s ({search['trainer_trials']} trials) | "
        f"{share_text} | <= 0.5 | "
        f"{_met('time_to_peer_best', search['ours_time_share'])} |")
    for encoder, shares in summary["mfu"].items():
        for precision, share in shares.items():
            is_target = encoder == summary["mfu_target_encoder"] and precision == in_use
            lines.append(
                f"| 3. model FLOPs utilization, {encoder} {precision} | {share:.0%} of the {precision} matmul peak | "
                f"- | - | {'>= 60%' if is_target else '-'} | {_met('mfu', share) if is_target else '-'} |")
    for name, row in summary["base_size_mfu"].items():
        lines.append(
            f"| 3. model FLOPs utilization, {name} (its config, random weights), {row['precision']} | "
            f"{row['mfu']:.0%} of the {row['precision']} matmul peak ({row['tokens_per_second']:.0f} tokens/s) | "
            "- | - | - | - |")
    for name, row in summary["base_size_precision"].items():
        target, verdict = ("-", "-") if row["target_met"] is None else (
            " or ".join(GPU_PRECISIONS), "met" if row["target_met"] else "missed")
        lines.append(f"| 3. `precision: auto` for {name} (its config, random weights) | {row['described']} | - | - | "
                     f"{target} | {verdict} |")
    lines.append(
        f"| 4. overhead: search wall time outside training steps | {overhead['share']:.1%} "
        f"(load {overhead['load_s']:.1f} s, evaluation {overhead['eval_s']:.1f} s, other in trials "
        f"{overhead['other_in_trials_s']:.1f} s, between trials {overhead['between_trials_s']:.1f} s, of "
        f"{overhead['total_s']:.0f} s) | - | - | <= 5% | {_met('overhead_share', overhead['share'])} |")
    ours_memory, peer_memory = summary["memory"]["ours"], summary["memory"]["trainer"]
    lines.append(
        f"| 5. memory: peak RSS; growth from the first trial to the last, and from trial {WARM_TRIAL} to the last | "
        f"{_memory_text(ours_memory)} | {_memory_text(peer_memory)} | "
        f"{ours_memory['peak_bytes'] / peer_memory['peak_bytes']:.2f}x | - | - |")
    busy = summary["busy_share"]
    if busy["ours"] is not None:
        peer_busy = "-" if busy["trainer"] is None else f"{busy['trainer']:.0%}"
        lines.append(f"| 6. device busy share: the search's wall time with a GPU kernel running (NVML) | "
                     f"{busy['ours']:.0%} | {peer_busy} | - | >= 60% | {_met('busy_share', busy['ours'])} |")
    lines += ["", "## Levers (speed-up of this harness's own path with the lever on)", "",
              "| lever | speed-up |", "|:------|---------:|"]
    lines += [f"| {name} | {ratio if isinstance(ratio, str) else f'{ratio:.2f}x'} |"
              for name, ratio in summary["levers"].items()]
    lines += ["", "## Targets", "", "| target | measured | verdict | why, where missed |",
              "|:-------|---------:|:--------|:------------------|"]
    for name, value in targets.items():
        bound = "<=" if name in AT_MOST else ">="
        measured = "-" if value is None else f"{value:.2f}"
        verdict = _met(name, value)
        why = "-" if verdict == "met" else _why_missed(name, report, summary)
        lines.append(f"| {name} ({bound} {TARGETS[name]}) | {measured} | {verdict} | {why} |")
    return "\n".join(lines) + "\n"
