"""The performance benchmark: a tiny run proves the script works end to end (the measured
run is `python -m perf.perf`, not a test), and its arithmetic is checked by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.config.spec import load_config
from perf import perf
from perf.table import best_so_far, render_markdown, summarize, time_to_reach
from tests.helpers import write_config


def test_best_so_far_keeps_improvements_of_complete_trials_only():
    trials = [
        {"ended_s": 30.0, "state": "complete", "value": 0.5},
        {"ended_s": 10.0, "state": "complete", "value": 0.6},
        {"ended_s": 20.0, "state": "pruned", "value": None},
        {"ended_s": 40.0, "state": "complete", "value": 0.9},
    ]
    curve = best_so_far(trials)
    assert curve == [(10.0, 0.6), (40.0, 0.9)]
    assert time_to_reach(curve, 0.6) == 10.0
    assert time_to_reach(curve, 0.7) == 40.0
    assert time_to_reach(curve, 0.95) is None


def _report(ours_seconds: float, trainer_seconds: float, default_trainer_seconds: float = 2.0) -> dict:
    def row(tokens, seconds):
        return {"tokens": tokens, "seconds": seconds, "loss": 1.0}

    search_side = {
        "seconds": 100.0, "rss_peak": 3 * 2**30,
        "trials": [
            {"ended_s": 40.0, "state": "complete", "value": 0.8, "rss": 2**30, "wall_seconds": 40.0,
             "train_seconds": 30.0, "eval_seconds": 6.0, "load_seconds": 2.0,
             "train_tokens": 9000, "eval_tokens": 3000},
            {"ended_s": 90.0, "state": "complete", "value": 0.9, "rss": 2**30 + 2**20, "wall_seconds": 50.0,
             "train_seconds": 45.0, "eval_seconds": 3.0, "load_seconds": 1.0,
             "train_tokens": 18000, "eval_tokens": 6000},
        ],
    }
    peer_side = {**search_side, "trials": [
        {"ended_s": 60.0, "state": "complete", "value": 0.85, "rss": 2**30},
        {"ended_s": 120.0, "state": "complete", "value": 0.8, "rss": 2**30}]}
    return {
        "device": "cpu", "torch_threads": 2, "dataset": "topics", "native_bf16": False,
        "matmul_peak_flops": {"fp32": 100e9, "bf16": 1.3e9},
        "precision": {"choice": "fp32", "seconds_per_step": {"fp32": 0.5, "bf16": 2.0},
                      "described": "precision: fp32 (measured)"},
        "configured": {"precision": "fp32", "sampling": "group_by_length"},
        "throughput": {"enc": {
            "flops_per_token": 1e6, "attention": "sdpa",
            "ours fp32 random": row(1000, ours_seconds * 1.25), "ours fp32 group_by_length": row(1000, ours_seconds),
            "ours fp32 random foreach-adamw": row(1000, ours_seconds * 1.375),
            "ours fp32 group_by_length eager-attention": row(1000, ours_seconds * 1.25),
            "ours fp32 group_by_length compiled first": row(1000, ours_seconds * 4),
            "ours fp32 group_by_length compiled again": row(1000, ours_seconds / 1.6),
            "trainer fp32 random": row(1000, trainer_seconds),
            "trainer fp32 group_by_length": row(1000, trainer_seconds * 2),
            "trainer-defaults": row(1000, default_trainer_seconds),
        }},
        "levers": {"eval_subset": {"full": {"examples": 200, "seconds": 4.0},
                                   "subset": {"examples": 100, "seconds": 2.0},
                                   "one_batch": {"examples": 200, "seconds": 6.0}},
                   "eval_schedule": {"encoder": "enc", "epochs": 3, "batch_size": 16, "train_examples": 240,
                                     "eval_every_examples": 192,
                                     "fixed": {"checkpoints": 4, "train_seconds": 28.0, "eval_seconds": 10.0},
                                     "geometric": {"checkpoints": 3, "train_seconds": 32.0, "eval_seconds": 2.0}}},
        "search": {"budget_s": 100, "ours": search_side, "trainer": {**peer_side, "seconds": 125.0}},
    }


def test_summary_ratios_and_verdicts_by_hand():
    summary = summarize(_report(ours_seconds=1.0, trainer_seconds=1.5))
    throughput = summary["throughput"]["enc"]
    assert throughput["ratio"] == pytest.approx(1.5)  # 1000 t/s against 666.7 t/s
    assert throughput["trainer"] == "trainer fp32 random"
    assert summary["mfu"]["enc"]["fp32"] == pytest.approx(1e6 * 1000 / 100e9)
    assert throughput["ours"] == "ours fp32 group_by_length"
    # as configured (fp32, length-grouped): 1000 t/s against the default Trainer's 500 t/s
    assert throughput["default_ratio"] == pytest.approx(2.0)
    assert summary["targets"]["throughput_ratio"] == pytest.approx(2.0)
    levers = summary["levers"]
    assert levers["fused AdamW (enc, fp32)"] == pytest.approx(1.1)  # 800 t/s against 727 t/s
    assert levers["length-grouped batches (enc, fp32)"] == pytest.approx(1.25)
    assert levers["SDPA attention against eager (enc, fp32)"] == pytest.approx(1.25)  # 1000 against 800 t/s
    assert levers["torch.compile (enc, fp32), first model: compilation included"] == pytest.approx(0.25)  # 250 t/s
    assert levers["torch.compile (enc, fp32), next model in the process: compiled code reused"] == pytest.approx(1.6)
    assert levers["bf16 autocast, as `precision: auto` timed a step of every encoder"] == pytest.approx(0.25)
    assert levers["evaluation on the stratified subset (time per checkpoint)"] == pytest.approx(2.0)  # 4 s / 2 s
    # the whole split in the device's batches, 4 s, against 6 s as one batch
    assert levers["evaluation in the device's batches against one batch of all 200 examples "
                  "(time per evaluation)"] == pytest.approx(1.5)
    # the same training, 30 s on average: 40 s of trial with fixed checkpoints (10 s evaluating),
    # 32 s with geometric ones (2 s)
    assert summary["eval_schedule"]["eval_shares"] == pytest.approx({"fixed": 0.25, "geometric": 0.0625})
    assert summary["eval_schedule"]["speed_up"] == pytest.approx(1.25)
    # the MFU target is read at the precision in use: 1e6 FLOP x 1000 t/s of 100 GFLOP/s
    assert summary["targets"]["mfu"] == pytest.approx(0.01)
    # 100 s of search, 75 s of it in training steps
    assert summary["overhead"]["share"] == pytest.approx(0.25)
    assert summary["overhead"]["between_trials_s"] == pytest.approx(10.0)
    # forward passes over 9,000 evaluated tokens (a third of a training token's arithmetic each)
    # against training over 27,000: 3,000 / (27,000 + 3,000)
    assert summary["overhead"]["eval_arithmetic_share"] == pytest.approx(0.1)
    # the peer's best, 0.85, was passed by ours at 90 s, of the peer's 125 s
    assert summary["search"]["ours_time_to_trainer_best"] == 90.0
    assert summary["search"]["ours_time_share"] == pytest.approx(0.72)
    assert summary["memory"]["ours"]["growth_bytes"] == 2**20
    # with two trials, the warm-up reading is the last one
    assert summary["memory"]["ours"]["growth_after_warmup_bytes"] == 0
    table = render_markdown(_report(1.0, 1.5), summary)
    assert ("| 1. training throughput, enc, against Trainer with our settings (real tokens/s; each side's best) | "
            "1000 (ours fp32 group_by_length) | 667 (trainer fp32 random) | 1.50x | - | - |") in table
    assert ("| 1. training throughput, enc, against Trainer with TrainingArguments' defaults (real tokens/s) | "
            "1000 (ours fp32 group_by_length, as configured) | 500 (trainer-defaults) | 2.00x | >= 1.3x | met |") in table
    assert ("| geometric checkpoint schedule (enc, 3 epochs of 240 examples at batch 16, base interval 192: "
            "4 evaluations -> 3, 25.0% -> 6.2% of the trial's time) | 1.25x |") in table
    assert "| 3. model FLOPs utilization, enc fp32 | 1% of the fp32 matmul peak | - | - | >= 60% | missed by 98% |" in table
    assert "missed by 44%" in table  # 0.72 against at most 0.5
    # outside training: load 3 s, evaluation 9 s, other in trials 90-75-3-9 = 3 s, between trials 10 s
    assert ("| overhead_share (<= 0.05) | 0.25 | missed by 400% | the largest part is between trials: 10.0 s of 100 s; "
            "evaluation is 10.0% of the search's arithmetic (its forward passes against training's forward and "
            "backward passes): the share of the time it takes wherever both run at the same FLOP rate |") in table
    assert "| mfu (>= 0.6) | 0.01 | missed by 98% | the matmuls of enc run near the fp32 peak" in table


def test_a_search_recorded_before_trials_counted_evaluated_tokens_gives_no_arithmetic_share():
    report = _report(ours_seconds=1.0, trainer_seconds=1.5)
    for trial in report["search"]["ours"]["trials"][1:]:
        del trial["eval_tokens"]
    summary = summarize(report)
    assert summary["overhead"]["eval_arithmetic_share"] is None  # not a share of some of the trials
    assert "| the largest part is between trials: 10.0 s of 100 s |" in render_markdown(report, summary)


def test_throughput_target_against_default_trainer_says_why_when_missed():
    report = _report(ours_seconds=1.0, trainer_seconds=1.5, default_trainer_seconds=1.2)
    del report["throughput"]["enc"]["ours fp32 group_by_length eager-attention"]
    report["throughput"]["enc"]["attention"] = "eager"
    summary = summarize(report)
    assert summary["targets"]["throughput_ratio"] == pytest.approx(1.2)  # 1000 t/s against 833 t/s
    assert summary["levers"]["SDPA attention against eager (enc, fp32)"] == (
        "not measured: transformers gives enc 'eager' attention, no SDPA")
    table = render_markdown(report, summary)
    assert ("| throughput_ratio (>= 1.3) | 1.20 | missed by 8% | enc: both loops spend their time in the same fp32 "
            "kernels of the same model (with our settings ours is fp32 1.50x of Trainer's); bf16, the lever that "
            "could give 1.3x, multiplies at 1.3 GFLOP/s against fp32's 100 here; `precision: auto` timed its step "
            "at 4.00x fp32's |") in table
    assert "| SDPA attention against eager (enc, fp32) | not measured: transformers gives enc 'eager' attention, no SDPA |" in table


def test_default_trainer_differs_from_training_arguments_defaults_only_where_the_task_needs(tmp_path):
    from transformers import TrainingArguments

    args = perf.default_trainer_arguments(tmp_path, batch_size=16, num_epochs=2, learning_rate=3e-5).to_dict()
    defaults = TrainingArguments(output_dir=str(tmp_path)).to_dict()
    differing = {key for key, value in args.items() if defaults[key] != value}
    # evaluation, saving and reporting are off by default already
    assert differing == {"num_train_epochs", "per_device_train_batch_size", "learning_rate", "save_strategy"}
    assert args["save_strategy"] == "no" and args["eval_strategy"] == "no" and args["report_to"] == []


def test_quick_run_measures_every_row_against_trainer(tmp_path, tiny_encoders, monkeypatch):
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert", "roberta")))
    plan = perf.Plan(throughput_examples=32, batch_size=8, search_budget_s=6, search_train_examples=48,
                     matmul_size=128)
    report = perf.run(config, plan, tmp_path / "perf")
    written = json.loads((tmp_path / "perf" / "PERF.json").read_text())
    assert set(written["throughput"]) == {"bert", "roberta"}
    for rows in written["throughput"].values():
        # Both sides trained on the same 32 examples: the same real tokens
        assert rows["ours fp32 random"]["tokens"] == rows["trainer fp32 random"]["tokens"] > 0
        assert rows["ours fp32 group_by_length"]["tokens"] == rows["trainer fp32 group_by_length"]["tokens"]
    for side in ("ours", "trainer"):
        assert written["search"][side]["trials"], side
    ours_trials = written["search"]["ours"]["trials"]
    assert all(t["train_seconds"] <= t["wall_seconds"] for t in ours_trials)
    # every trial evaluated at least its last checkpoint: its real tokens are counted
    assert all(t["eval_tokens"] > 0 and t["train_tokens"] > 0 for t in ours_trials)
    assert 0 < report["summary"]["overhead"]["eval_arithmetic_share"] < 1
    markdown = (tmp_path / "perf" / "PERF.md").read_text()
    for row in ("1. training throughput, bert", "2. search", "3. model FLOPs utilization", "4. overhead",
                "5. memory"):
        assert row in markdown
    assert report["summary"]["targets"].keys() == {"throughput_ratio", "mfu", "overhead_share", "time_to_peer_best"}
    configured = "ours {precision} {sampling}".format(**written["configured"])
    for rows in written["throughput"].values():
        assert {"trainer-defaults", f"{configured} compiled first", f"{configured} compiled again"} <= rows.keys()
        # the same 32 examples again: the default Trainer sees the tokens ours sees
        assert rows["trainer-defaults"]["tokens"] == rows["ours fp32 random"]["tokens"]
    schedule = written["levers"]["eval_schedule"]
    assert schedule["geometric"]["checkpoints"] <= schedule["fixed"]["checkpoints"]
    assert "geometric checkpoint schedule" in markdown and "torch.compile" in markdown
    for name in ("bert-base-size", "roberta-base-size"):  # auto's own choice, as a run would measure it
        assert written["base_size"][name]["precision_auto"]["decided"] == "measured"
        assert f"`precision: auto` for {name} (its config, random weights) | " in markdown
    evaluation = written["levers"]["eval_subset"]
    assert evaluation["one_batch"]["examples"] == evaluation["full"]["examples"] > evaluation["subset"]["examples"]
    assert "evaluation in the device's batches against one batch of all" in markdown


def test_eval_batches_times_every_size_of_every_encoder_and_dataset(tmp_path, tiny_encoders, capsys):
    from perf import eval_batches

    config = write_config(tmp_path, tiny_encoders, encoders=("bert", "roberta"))
    assert eval_batches.main(["--config", str(config), "--precisions", "fp32", "--sizes", "64,4",
                              "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    datasets = list(load_config(config).datasets)
    assert len(datasets) > 1
    assert [line.split(" (")[0] + " " + line.split(") ")[1].split(" on ")[0] for line in lines] == [
        f"{dataset} {encoder} fp32" for dataset in datasets for encoder in ("bert", "roberta")]
    assert all(", 4: " in line and ": 64: " in line for line in lines)


def test_eval_batches_refuses_a_bad_flag_in_one_line(capsys):
    from perf import eval_batches

    assert eval_batches.main(["--precisions", "fp32,fp16"]) == 2
    assert capsys.readouterr().err == "error: --precisions: unknown fp16; expected some of fp32, bf16\n"
    with pytest.raises(SystemExit):
        eval_batches.main(["--sizes", "32,0"])
    assert "argument --sizes: batch sizes must be positive, got 32,0" in capsys.readouterr().err


def test_memory_growth_is_also_read_after_the_warm_up_trials():
    from perf.table import _memory

    mib = 2**20
    trials = [{"rss": r * mib} for r in (100, 150, 180, 200, 205, 210)]
    memory = _memory({"rss_peak": 250 * mib, "trials": trials})
    assert memory["growth_bytes"] == 110 * mib  # first to last, allocator warm-up included
    assert memory["growth_after_warmup_bytes"] == 10 * mib  # from trial 3 (200 MiB) to the last


def test_on_a_gpu_the_table_adds_tf32_base_size_models_and_the_busy_share_by_hand():
    report = _report(ours_seconds=1.0, trainer_seconds=1.5)
    report["matmul_peak_flops"]["tf32"] = 50e9
    report["throughput"]["enc"]["ours fp32 random tf32"] = {"tokens": 1000, "seconds": 0.5, "loss": 1.0}
    configured = "ours fp32 group_by_length"
    report["device_type"] = "cuda"
    auto = {"choice": "fp32", "described": "fp32 (measured at 32x128 ...)"}
    report["base_size"] = {"bert-base-size": {"model_type": "bert", "flops_per_token": 5e8,
                                              configured: {"tokens": 1000, "seconds": 10.0, "loss": 1.0},
                                              "precision_auto": auto}}
    report["search"]["ours"]["busy_share"] = 0.45
    report["search"]["trainer"]["busy_share"] = 0.30
    summary = summarize(report)
    # 2000 t/s against fp32's 800 t/s; MFU against TF32's own peak: 1e6 x 2000 / 50e9
    assert summary["levers"]["TF32 matmuls (enc, fp32)"] == pytest.approx(2.5)
    assert summary["mfu"]["enc"]["tf32"] == pytest.approx(0.04)
    # 5e8 FLOP x 100 t/s of the fp32 peak in use, 100 GFLOP/s
    assert summary["base_size_mfu"]["bert-base-size"] == pytest.approx(
        {"precision": "fp32", "tokens_per_second": 100.0, "mfu": 0.5})
    assert summary["targets"]["busy_share"] == 0.45
    table = render_markdown(report, summary)
    assert "measured matmul peak (warm) 100.0 GFLOP/s fp32, 1.3 GFLOP/s bf16, 50.0 GFLOP/s tf32" in table
    assert ("| 3. model FLOPs utilization, bert-base-size (its config, random weights), fp32 | 50% of the fp32 "
            "matmul peak (100 tokens/s) | - | - | - | - |") in table
    assert ("| 6. device busy share: the search's wall time with a GPU kernel running (NVML) | 45% | 30% | - | "
            ">= 60% | missed by 25% |") in table
    # On the GPU, auto keeping fp32 for a base-size model misses (fp32 was its slowest option on an H200).
    assert ("| 3. `precision: auto` for bert-base-size (its config, random weights) | fp32 (measured at 32x128 ...) "
            "| - | - | bf16 or tf32 | missed |") in table
    report["base_size"]["bert-base-size"]["precision_auto"] = {**auto, "choice": "bf16"}
    assert "| bf16 or tf32 | met |" in render_markdown(report, summarize(report))
    assert "| busy_share (>= 0.6) | 0.45 | missed by 25% | the GPU idled while the host loaded" in table
    cpu = _report(ours_seconds=1.0, trainer_seconds=1.5)
    cpu["base_size"] = {"bert-base-size": {**report["base_size"]["bert-base-size"], "precision_auto": auto}}
    assert "| fp32 (measured at 32x128 ...) | - | - | - | - |" in render_markdown(cpu, summarize(cpu)), \
        "no target for the CPU's choice"
    assert "busy_share" not in summarize(cpu)["targets"], "no GPU, no busy-share target"
    assert "6. device busy share" not in render_markdown(cpu, summarize(cpu))


def test_busy_share_weights_each_utilization_reading_by_its_period():
    # 100% over the first second, 50% over the next two: 2 busy seconds of 3
    assert perf.busy_share([(10.0, 0.0), (11.0, 100.0), (13.0, 50.0)]) == pytest.approx(2 / 3)
    assert perf.busy_share([(10.0, 0.0), (12.0, 0.0)]) == 0.0
    assert perf.busy_share([(10.0, 80.0)]) is None, "one reading covers no period"


def test_gpu_utilization_is_sampled_only_where_nvml_answers(monkeypatch):
    import time

    import torch

    assert perf.utilization_sampler(torch.device("cpu")) is None

    def no_nvml(device):
        raise ModuleNotFoundError("pynvml")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    assert perf.utilization_sampler(torch.device("cuda")) is None
    monkeypatch.setattr(torch.cuda, "utilization", lambda device: 70)
    with perf.utilization_sampler(torch.device("cuda")) as sampler:
        time.sleep(3 * perf.UTILIZATION_INTERVAL_S)
    assert len(sampler.readings) >= 2 and perf.busy_share(sampler.readings) == pytest.approx(0.7)


def test_tf32_is_measured_where_the_gpu_has_its_tensor_cores(monkeypatch):
    import torch

    assert perf.matmul_precisions(torch.device("cpu")) == ["fp32", "bf16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))  # H100, H200
    assert perf.matmul_precisions(torch.device("cuda")) == ["fp32", "tf32", "bf16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))  # T4
    assert perf.matmul_precisions(torch.device("cuda")) == ["fp32", "bf16"]


def test_the_matmul_peak_is_timed_warm_and_a_slow_kernel_stops_the_sizes_growing(monkeypatch):
    import time

    import torch

    cold_s, warm_s = 0.2, 0.001
    products = {}

    def first_call_cold(a, b):
        size = a.shape[0]
        products[size] = products.get(size, 0) + 1
        time.sleep(cold_s if products[size] == 1 else warm_s)

    monkeypatch.setattr(torch, "matmul", first_call_cold)
    peak = perf.matmul_peak(1024, "fp32", torch.device("cpu"), seconds=0.05)
    assert set(products) == {256, 512, 1024}, "doubles up to the plan's size while products are fast"
    assert peak > 2 * 1024**3 / (2 * warm_s), "the cold first call is not the peak"

    sizes = []

    def fallback_kernel(a, b):  # bf16 on a CPU without it: every product slow
        sizes.append(a.shape[0])
        time.sleep(perf.SLOW_PRODUCT_S)

    monkeypatch.setattr(torch, "matmul", fallback_kernel)
    perf.matmul_peak(4096, "bf16", torch.device("cpu"), seconds=0.0)
    assert set(sizes) == {perf.FIRST_MATMUL_SIZE}, "a slow kernel is not grown to 4096"


def test_base_size_models_are_built_from_their_configs_and_fed_ids_they_hold():
    import numpy as np

    from benchmark.data.tokenization import TokenizedSplit

    model = perf.base_size_classifier("bert", num_labels=3, dropout=0.1)
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 12
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 120e6  # BERT-base: 110M
    split = TokenizedSplit(input_ids=(np.array([0, 30521, 50264]),), token_type_ids=None, labels=np.array([0]),
                           pad_token_id=0)
    assert perf.within_vocabulary(split, "bert").input_ids[0].tolist() == [0, 30521, 50264 - 30522]
    assert perf.within_vocabulary(split, "roberta").input_ids[0].tolist() == [0, 30521, 50264]


def test_a_gpu_run_writes_its_table_beside_the_cpu_one():
    import torch

    assert perf.report_stem(torch.device("cpu")) == "PERF"
    assert perf.report_stem(torch.device("cuda")) == "PERF-cuda"


def _gpu_check(out, **environment):
    return subprocess.run(["bash", "perf/gpu_check.sh", str(out)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, check=False, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **environment})


def test_gpu_check_runs_only_the_steps_asked_for_so_that_a_lent_gpu_can_take_it_in_two_calls(tmp_path,
                                                                                             tiny_encoders):
    """A lent machine runs a command for at most 10 minutes, and the four steps' limits add up
    to 17: STEPS splits the run. On a machine with no GPU the check still runs, on the CPU."""
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), training__precision="fp32")
    out = tmp_path / "check-only"
    done = _gpu_check(out, STEPS="check", CONFIG=str(config), ENCODERS="bert")
    assert done.returncode == 0, done.stderr
    steps = (out / "steps.log").read_text().splitlines()
    assert [line.split(":")[0] for line in steps] == ["== check (limit 120s)", "== check"]
    assert steps[-1].startswith("== check: exit 0 after"), (out / "check.log").read_text()
    assert sorted(path.name for path in out.iterdir()) == ["check.log", "config.yaml", "machine.txt",
                                                           "steps.log"], "no other step ran (--check writes nothing)"


def test_gpu_check_refuses_an_unknown_step_in_one_line_before_any_work(tmp_path):
    done = _gpu_check(tmp_path / "out", STEPS="check bogus")
    assert done.returncode == 2
    assert done.stderr == "STEPS: unknown step bogus; expected some of check study workers perf\n"
    assert not (tmp_path / "out").exists()
