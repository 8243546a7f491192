"""This harness against Hugging Face `Trainer` and `Trainer.hyperparameter_search`, side by side.

    python -m perf.perf [--quick] [--config search_spaces/default.yaml] [--out runs/perf]

Every row is measured in this one run, on this machine, with the same model, data and
hyperparameters on both sides; the table reports ratios, because absolute times on a
shared machine are noise. Each search runs in a fresh process, so its memory figures are
its own. Writes PERF.json (every measurement) and PERF.md (the table); PERF-cuda.json and
PERF-cuda.md on a GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from functools import partial
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from benchmark.train.precision import CANDIDATES, TF32_CAPABILITY, candidates, matmuls, measure_model
from perf import RUNS, interleaved_medians
from perf.table import Measurement, render_markdown, summarize

DEFAULT_OUT = RUNS / "perf"
# Batch orders on both sides: shuffled, and shuffled in groups of similar length.
SAMPLINGS = ("random", "group_by_length")
# The hyperparameters of the throughput rows: one epoch, mid-range values of the default space.
THROUGHPUT_HP = dict(learning_rate=5e-5, warmup_ratio=0.1, dropout=0.1, max_grad_norm=1.0, weight_decay=0.01)


@dataclass(frozen=True)
class Plan:
    """How much work each row does; `QUICK` only proves that the script works."""

    throughput_examples: int
    batch_size: int
    search_budget_s: float
    search_train_examples: int
    matmul_size: int
    # `precision: auto`'s own measurement of each base-size model (precision.BUDGET_S in a run).
    precision_budget_s: float = 30.0
    # Interleaved rounds of the evaluation levers, each timed after a warm-up round.
    evaluation_rounds: int = 3


FULL = Plan(throughput_examples=192, batch_size=16, search_budget_s=240, search_train_examples=240, matmul_size=2048)
# A GPU does in milliseconds what takes a CPU seconds: more work per row, or start-up dominates.
FULL_CUDA = Plan(throughput_examples=1024, batch_size=32, search_budget_s=90, search_train_examples=1200,
                 matmul_size=8192)
QUICK = Plan(throughput_examples=32, batch_size=8, search_budget_s=8, search_train_examples=48, matmul_size=256,
             precision_budget_s=1.0, evaluation_rounds=1)


# --- the measurements ----------------------------------------------------------------------------


# The matmul peak's precisions: how each multiplies fp32 or bf16 operands.
# The matmul peak's sizes double from this while one product takes under SLOW_PRODUCT_S, up
# to the plan's size: a fallback kernel (bf16 on a CPU without it: 100x slower) stops at a
# small size instead of taking minutes, and a fast device reaches a size where the launch and
# the synchronization no longer count.
FIRST_MATMUL_SIZE = 256
SLOW_PRODUCT_S = 0.05
# Products per timing on a GPU: one 8192^3 bf16 product takes ~1.4 ms on an H200, near the
# cost of the synchronization that ends a timing.
CUDA_PRODUCTS_PER_TIMING = 10


def matmul_precisions(device: torch.device) -> list[str]:
    """fp32 and bf16 everywhere; TF32 where the GPU has its tensor cores."""
    tf32 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= TF32_CAPABILITY
    return ["fp32", *(["tf32"] if tf32 else []), "bf16"]


def matmul_peak(max_size: int, precision: str, device: torch.device, seconds: float = 2.0) -> float:
    """FLOP/s of warm square matrix multiplies in `precision`, the best of repeated timings.

    Warm: the first product at a size loads the kernels and picks an algorithm, costing
    up to hundreds of times a warm one on a GPU, so each size is multiplied once untimed
    before its timings. The size grows as FIRST_MATMUL_SIZE and SLOW_PRODUCT_S describe."""
    dtype = CANDIDATES[precision].autocast or torch.float32
    products = CUDA_PRODUCTS_PER_TIMING if device.type == "cuda" else 1
    with matmuls(precision):
        size = min(FIRST_MATMUL_SIZE, max_size)
        while True:
            a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
            _timed_products(a, b, device, 1)  # untimed warm-up
            one = _timed_products(a, b, device, 1)
            if size * 2 > max_size or one >= SLOW_PRODUCT_S:
                break
            size *= 2
        best = one * products if products == 1 else _timed_products(a, b, device, products)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            best = min(best, _timed_products(a, b, device, products))
    return 2 * size**3 * products / best


def _timed_products(a: torch.Tensor, b: torch.Tensor, device: torch.device, products: int) -> float:
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(products):
        torch.matmul(a, b)
    _synchronize(device)
    return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_flops_per_token(model: torch.nn.Module) -> float:
    """6 x the parameters a token passes through (forward 2, backward 4); embeddings are
    look-ups, not multiplies, so they are left out. Attention's own multiplies add a few
    percent at 128 tokens and are left out too: the estimate errs low."""
    embedding = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Embedding))
    return 6.0 * (sum(p.numel() for p in model.parameters()) - embedding)


def measure_ours(study, encoder_name: str, train, hp, dtype, sampling: str, fused: bool = True,
                 attention: str | None = None, compiled: bool = False, tf32: bool = False,
                 model_type: str | None = None) -> tuple[Measurement, float]:
    """One fine-tune in our loop; `attention` swaps the model's attention implementation,
    `compiled` runs it under torch.compile (any compilation it triggers is counted), `tf32`
    lets fp32 matmuls use TF32. With `model_type`, the model is that architecture at its base
    size with random weights (see base_size_classifier) in place of the encoder."""
    from benchmark.search.trial import loop_settings
    from benchmark.train.encoders import load_classifier
    from benchmark.train.loop import fine_tune, padding_multiple

    # One tiny evaluation at the end, which fine_tune always does; its time is subtracted.
    validation = train.subset(np.arange(min(len(train), 8)))
    settings = replace(loop_settings(study, encoder_name, seed=0, only_at_end=True), autocast_dtype=dtype,
                       fused_optimizer=fused, eval_subset_examples=None,
                       group_by_length=sampling == "group_by_length", compile=compiled,
                       pad_to_multiple_of=padding_multiple(study.device, compiled))
    torch.manual_seed(0)
    model = (base_size_classifier(model_type, study.data.num_labels, hp.dropout) if model_type else
             load_classifier(study.encoders[encoder_name], study.data.label_names, hp.dropout))
    flops = training_flops_per_token(model)
    if attention is not None:
        _transformer(model).set_attn_implementation(attention)
    started = time.perf_counter()
    with matmuls("tf32" if tf32 else "fp32"):
        result = fine_tune(model, train, validation, study.data.num_labels, hp, settings, _ignore, _ignore)
    seconds = time.perf_counter() - started - result.eval_seconds
    return Measurement(tokens=result.train_tokens, seconds=seconds, loss=result.final.loss), flops


# The seeds' architectures at their base sizes, measured on any machine: speed does not depend
# on the weights, so they are built from their configs (transformers' defaults are the base
# sizes: 12 layers of 768) with random weights, and nothing is downloaded.
BASE_SIZE_MODELS = {"bert-base-size": "bert", "roberta-base-size": "roberta"}


def base_size_classifier(model_type: str, num_labels: int, dropout: float) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, num_labels=num_labels, hidden_dropout_prob=dropout,
                                  attention_probs_dropout_prob=dropout)
    return AutoModelForSequenceClassification.from_config(config)


def within_vocabulary(split, model_type: str):
    """`split` with its token ids folded into `model_type`'s default vocabulary: any ids do
    for a speed measurement, but not ids past the embedding table."""
    from transformers import AutoConfig

    from benchmark.data.tokenization import TokenizedSplit

    vocabulary = AutoConfig.for_model(model_type).vocab_size
    return TokenizedSplit(input_ids=tuple(ids % vocabulary for ids in split.input_ids),
                          token_type_ids=split.token_type_ids, labels=split.labels, pad_token_id=split.pad_token_id)


def _transformer(model: torch.nn.Module):
    """The transformers model inside a classifier (ours may wrap one for mean pooling)."""
    return next(module for module in model.modules() if hasattr(module, "set_attn_implementation"))


def measure_trainer(study, encoder_name: str, train, hp, bf16: bool, sampling: str, workdir: Path) -> Measurement:
    """Trainer with our settings: the same hyperparameters, precision and batch order."""
    args = _trainer_arguments(workdir, study.device, bf16, sampling, batch_size=hp.batch_size,
                              num_train_epochs=hp.num_epochs, learning_rate=hp.learning_rate,
                              warmup_steps=hp.warmup_ratio, weight_decay=hp.weight_decay,
                              max_grad_norm=hp.max_grad_norm, eval_strategy="no", dataloader_drop_last=True)
    return _train_with_trainer(study, encoder_name, train, hp, args)


def measure_default_trainer(study, encoder_name: str, train, hp, workdir: Path) -> Measurement:
    """Trainer as users run it: TrainingArguments' defaults (fp32, shuffled batches, no warm-up
    or weight decay) apart from what the task needs."""
    args = default_trainer_arguments(workdir, batch_size=hp.batch_size, num_epochs=hp.num_epochs,
                                     learning_rate=hp.learning_rate)
    return _train_with_trainer(study, encoder_name, train, hp, args)


def default_trainer_arguments(workdir: Path, batch_size: int, num_epochs: int, learning_rate: float):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(workdir), num_train_epochs=num_epochs,
                             per_device_train_batch_size=batch_size, learning_rate=learning_rate,
                             eval_strategy="no", save_strategy="no", report_to="none")


def _train_with_trainer(study, encoder_name: str, train, hp, args) -> Measurement:
    from transformers import DataCollatorWithPadding, Trainer

    from benchmark.train.encoders import load_classifier, load_tokenizer

    encoder = study.encoders[encoder_name]
    torch.manual_seed(0)
    model = load_classifier(encoder, study.data.label_names, hp.dropout)
    trainer = Trainer(model=model, args=args, train_dataset=_hf_dataset(train),
                      data_collator=DataCollatorWithPadding(load_tokenizer(encoder)))
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    # Trainer drops no example here (the count is a multiple of the batch size), so it
    # sees exactly the tokens our loop sees.
    tokens = int(train.lengths.sum()) * hp.num_epochs
    return Measurement(tokens=tokens, seconds=seconds, loss=float(output.training_loss))


def _trainer_arguments(workdir: Path, device: torch.device, bf16: bool, sampling: str, batch_size: int,
                       seed: int = 0, **overrides):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(workdir), per_device_train_batch_size=batch_size, per_device_eval_batch_size=64,
        bf16=bf16, use_cpu=device.type == "cpu", train_sampling_strategy=sampling,
        save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        seed=seed, **overrides,
    )


def _hf_dataset(split):
    import datasets

    columns = {"input_ids": [ids.tolist() for ids in split.input_ids], "labels": split.labels.tolist()}
    if split.token_type_ids is not None:
        columns["token_type_ids"] = [segments.tolist() for segments in split.token_type_ids]
    return datasets.Dataset.from_dict(columns)


def _ignore(_) -> None:
    pass


# --- the searches, each in its own process ---------------------------------------------------------


class Sampler:
    """`read()` every `interval` seconds on a background thread, as (time, value) readings."""

    def __init__(self, read: Callable[[], float], interval: float = 0.25) -> None:
        self._read = read
        self._interval = interval
        self.readings: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.readings.append((time.time(), self._read()))
            self._stop.wait(self._interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, moment: float) -> float:
        """The last reading at or before `moment`."""
        before = [value for when, value in self.readings if when <= moment]
        return before[-1] if before else self.readings[0][1]


def rss_sampler() -> Sampler:
    """The process's resident memory."""
    import psutil

    process = psutil.Process()
    return Sampler(lambda: process.memory_info().rss)


# NVML's utilization covers the last sample period, 1/6 s to 1 s by GPU: read more often than that.
UTILIZATION_INTERVAL_S = 0.1


def utilization_sampler(device: torch.device) -> Sampler | None:
    """The GPU's utilization as NVML reports it (the percentage of its last sample period
    during which a kernel was running), or None where it cannot be read: not a CUDA device,
    or no nvidia-ml-py (`pip install -e ".[perf]"`)."""
    if device.type != "cuda":
        return None
    try:
        torch.cuda.utilization(device)
    except ModuleNotFoundError:  # torch reads NVML through nvidia-ml-py's pynvml
        return None
    return Sampler(lambda: torch.cuda.utilization(device), UTILIZATION_INTERVAL_S)


def busy_share(readings: list[tuple[float, float]]) -> float | None:
    """The share of the time from the first reading to the last with a kernel running: each
    reading (a percentage of the period before it) weighted by the time since the one before.
    None with fewer than two readings."""
    if len(readings) < 2 or readings[-1][0] <= readings[0][0]:
        return None
    busy = sum(value / 100 * (when - before) for (before, _), (when, value) in pairwise(readings))
    return busy / (readings[-1][0] - readings[0][0])


def _search_config(config, plan: Plan):
    """The config's first encoder on its first dataset, with the search's training-set size."""
    encoder = next(iter(config.encoders))
    dataset_name, dataset = next(iter(config.datasets.items()))
    return config.model_copy(update={
        "encoders": {encoder: config.encoders[encoder]},
        "datasets": {dataset_name: dataset.model_copy(update={"max_train_examples": plan.search_train_examples})},
        "comparison": "search",
        "budget": config.budget.model_copy(update={"n_trials": 10_000, "timeout_s": plan.search_budget_s}),
    })


def search_ours(config, plan: Plan, workdir: str, seed: int) -> dict:
    """This harness's search, its sampler and training seeded by `seed` (the data split keeps the config's)."""
    from benchmark.search.preflight import prepare_studies
    from benchmark.search.study import run_study

    config = _search_config(config, plan)
    url = f"sqlite:///{workdir}/ours.db"
    prepared = prepare_studies(config, url, ["none"], Path(workdir))
    study_spec = prepared.studies[0]
    with rss_sampler() as memory, _or_none(utilization_sampler(study_spec.device)) as utilization:
        started = time.time()
        study = run_study(prepared.storage, url, study_spec, config.budget.n_trials, plan.search_budget_s, seed)
        ended = time.time()
    return _search_record(_finished(study), started, ended, memory, utilization)


def search_trainer(config, plan: Plan, workdir: str, seed: int) -> dict:
    """`Trainer.hyperparameter_search(backend="optuna")` over the same space, data and budget;
    `seed` seeds its sampler and its training (Trainer seeds every trial's model with it)."""
    import optuna
    from transformers import DataCollatorWithPadding, Trainer

    from benchmark.config.spec import CategoricalParam, FloatParam
    from benchmark.data.tokenization import tokenize_split
    from benchmark.search.preflight import prepare_studies
    from benchmark.search.trial import sample_hyperparameters
    from benchmark.train.encoders import load_classifier, load_tokenizer
    from benchmark.train.loop import balanced_class_weights
    from benchmark.train.metrics import classification_metrics

    config = _search_config(config, plan)
    prepared = prepare_studies(config, f"sqlite:///{workdir}/unused.db", ["none"], Path(workdir))
    study_spec = prepared.studies[0]
    encoder_name = next(iter(config.encoders))
    encoder = study_spec.encoders[encoder_name]
    tokenizer = load_tokenizer(encoder)
    max_length = config.training.max_length
    train = _hf_dataset(tokenize_split(tokenizer, study_spec.data.train, max_length))
    validation = _hf_dataset(tokenize_split(tokenizer, study_spec.data.validation, max_length))
    metric = study_spec.metric
    dropout_spec = config.search_space.dropout
    weights = torch.tensor(balanced_class_weights(study_spec.data.train.labels, study_spec.data.num_labels),
                           dtype=torch.float32)
    sampled = {}  # the running trial's class weights, which TrainingArguments has no field for

    def hp_space(trial: optuna.Trial) -> dict:
        # The same sampling code as our trials, mapped onto TrainingArguments' names.
        hp = sample_hyperparameters(trial, config.search_space, config.encoders[encoder_name])
        sampled["class_weights"] = hp.class_weights
        return {"learning_rate": hp.learning_rate, "warmup_steps": hp.warmup_ratio, "weight_decay": hp.weight_decay,
                "max_grad_norm": hp.max_grad_norm, "per_device_train_batch_size": hp.batch_size,
                "num_train_epochs": hp.num_epochs}

    def model_init(trial):
        if trial is None:  # Trainer builds one model before the search starts
            dropout = dropout_spec.low if isinstance(dropout_spec, FloatParam) else 0.1
        elif isinstance(dropout_spec, CategoricalParam):
            dropout = trial.suggest_categorical("dropout", list(dropout_spec.choices))
        else:
            dropout = trial.suggest_float("dropout", dropout_spec.low, dropout_spec.high, log=dropout_spec.log)
        return load_classifier(encoder, study_spec.data.label_names, dropout)

    def weighted_loss(outputs, labels, num_items_in_batch=None):
        """The harness's loss (see `loop._accumulate_gradients`), so both sides train on the same objective."""
        weight = weights.to(labels.device) if sampled["class_weights"] == "balanced" else None
        loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, weight=weight, reduction="sum")
        return loss / (len(labels) if num_items_in_batch is None else num_items_in_batch)

    def compute_metrics(prediction) -> dict:
        predictions = np.asarray(prediction.predictions).argmax(-1)
        return classification_metrics(np.asarray(prediction.label_ids), predictions, study_spec.data.num_labels)

    args = _trainer_arguments(Path(workdir) / "trainer", study_spec.device,
                              bf16=study_spec.precisions[encoder_name].choice == "bf16",
                              sampling="group_by_length" if config.training.group_by_length else "random",
                              batch_size=16, seed=seed, eval_strategy="epoch")
    # Trainer's own loss where no trial weighs the classes: the peer as it ships.
    weighing = "balanced" in config.search_space.class_weights.choices
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, eval_dataset=validation,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics,
                      compute_loss_func=weighted_loss if weighing else None)
    storage = f"sqlite:///{workdir}/trainer.db"
    with rss_sampler() as memory, _or_none(utilization_sampler(study_spec.device)) as utilization:
        started = time.time()
        trainer.hyperparameter_search(
            backend="optuna", direction="maximize", hp_space=hp_space, n_trials=10_000,
            timeout=plan.search_budget_s, compute_objective=lambda metrics: metrics[f"eval_{metric}"],
            storage=storage, study_name="trainer", sampler=optuna.samplers.TPESampler(seed=seed),
        )
        ended = time.time()
    study = optuna.load_study(study_name="trainer", storage=storage)
    return _search_record(_finished(study), started, ended, memory, utilization)


def _or_none(sampler: Sampler | None):
    return nullcontext() if sampler is None else sampler


def _search_record(trials: list, started: float, ended: float, memory: Sampler, utilization: Sampler | None) -> dict:
    """A search's timings, memory and, on a GPU with NVML, the share of its time the GPU was busy."""
    return {
        "seconds": ended - started,
        "trials": [_trial_record(t, started, memory) for t in trials],
        "rss_peak": max(rss for _, rss in memory.readings),
        "busy_share": None if utilization is None else busy_share(utilization.readings),
    }


def _finished(study) -> list:
    from optuna.trial import TrialState

    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                  key=lambda t: t.datetime_complete)


def _trial_record(trial, started: float, memory: Sampler) -> dict:
    ended = trial.datetime_complete.timestamp()
    return {
        "number": trial.number, "state": trial.state.name.lower(), "value": trial.value,
        "ended_s": ended - started, "rss": memory.at(ended),
        **{key: trial.user_attrs[key] for key in ("wall_seconds", "train_seconds", "eval_seconds", "load_seconds",
                                                    "train_tokens", "eval_tokens")
           if key in trial.user_attrs},
    }


def in_fresh_process(function, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


# --- the run -------------------------------------------------------------------------------------


def run(config, plan: Plan, out: Path) -> dict:
    """Measure every row for `config`'s encoders on its first dataset; write PERF.json/.md."""
    from benchmark.files import write_atomic
    from benchmark.search.preflight import prepare_studies
    from benchmark.train.records import Hyperparameters

    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="perf-"))
    dataset_name = next(iter(config.datasets))
    prepared = prepare_studies(config.model_copy(update={"datasets": {dataset_name: config.datasets[dataset_name]}}),
                       f"sqlite:///{workdir}/throughput.db", ["none"], workdir)
    study = prepared.studies[0]
    device = study.device
    hp = Hyperparameters(**THROUGHPUT_HP, batch_size=plan.batch_size, num_epochs=1)
    # bf16 is trained only where `precision: auto` measured it faster than fp32 (prepare_studies did,
    # unless the config forces a precision): elsewhere it is slower, or even a fallback kernel
    # far slower than fp32 (a CPU without AVX-512 BF16 or AMX).
    # `precision: auto` chooses per encoder; these tables know one configured precision: the
    # first encoder's (the one the table says).
    chosen = study.precisions
    first = next(iter(chosen.values()))
    in_use = first.choice
    native_bf16 = any(encoder.choice == "bf16" for encoder in chosen.values())
    precisions = {"fp32": None, **({"bf16": torch.bfloat16} if native_bf16 else {})}
    # Summed over the encoders where each timed fp32 and bf16 at the same batch.
    timed = [encoder.seconds_per_step for encoder in chosen.values()]
    comparable = all(step and {"fp32", "bf16"} <= step.keys() for step in timed)
    report: dict = {
        "plan": asdict(plan), "device": describe_device(device), "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "dataset": dataset_name, "native_bf16": native_bf16, "matmul_peak_flops": {}, "throughput": {},
        "base_size": {}, "levers": {},
        "precision": {"choice": in_use,
                      "seconds_per_step": {name: sum(step[name] for step in timed) for name in ("fp32", "bf16")}
                      if comparable else None,
                      "described": "; ".join(f"{name}: {encoder.describe()}" for name, encoder in chosen.items())},
        # The path a trial takes: the lever rows and the target against default Trainer use it.
        "configured": {"precision": in_use,
                       "sampling": "group_by_length" if config.training.group_by_length else "random"},
    }
    configured = "ours {precision} {sampling}".format(**report["configured"])
    configured_dtype = first.mode.autocast
    tf32 = "tf32" in matmul_precisions(device)
    for name in matmul_precisions(device):
        report["matmul_peak_flops"][name] = matmul_peak(plan.matmul_size, name, device)
        print(f"matmul peak {name}: {report['matmul_peak_flops'][name] / 1e9:.1f} GFLOP/s", file=sys.stderr)

    for encoder_name, encoder in study.encoders.items():
        train = _throughput_split(study, encoder, config.training.max_length, plan)
        rows: dict = {}
        for precision, dtype in precisions.items():
            for sampling in SAMPLINGS:
                rows[f"ours {precision} {sampling}"], flops_per_token = measure_ours(
                    study, encoder_name, train, hp, dtype, sampling)
                rows[f"trainer {precision} {sampling}"] = measure_trainer(
                    study, encoder_name, train, hp, precision == "bf16", sampling, workdir / "trainer")
        # The fused-optimizer lever: the same run with the multi-tensor (foreach) AdamW.
        rows["ours fp32 random foreach-adamw"], _ = measure_ours(study, encoder_name, train, hp, None, "random",
                                                                 fused=False)
        if tf32:  # the TF32 lever: the same fp32 run with its matmuls in TF32
            rows["ours fp32 random tf32"], _ = measure_ours(study, encoder_name, train, hp, None, "random", tf32=True)
        rows["trainer-defaults"] = measure_default_trainer(study, encoder_name, train, hp, workdir / "trainer")
        sampling = report["configured"]["sampling"]
        attention = _attention_implementation(study, encoder_name)
        if attention == "sdpa":  # against the implementation it replaces
            rows[f"{configured} eager-attention"], _ = measure_ours(study, encoder_name, train, hp, configured_dtype,
                                                                    sampling, attention="eager")
        # The first compiled model of an architecture compiles; the next, as a study's next
        # trial in the same process, reuses the compiled code.
        for run in ("first", "again"):
            rows[f"{configured} compiled {run}"], _ = measure_ours(study, encoder_name, train, hp, configured_dtype,
                                                                   sampling, compiled=True)
        report["throughput"][encoder_name] = {
            "flops_per_token": flops_per_token, "attention": attention,
            **{key: asdict(value) for key, value in rows.items()}}
        for key, value in rows.items():
            print(f"{encoder_name} {key}: {value.tokens_per_second:.0f} tokens/s", file=sys.stderr, flush=True)

    # The base-size architectures, on the first encoder's tokens (ids folded into each vocabulary).
    encoder_name, encoder = next(iter(study.encoders.items()))
    train = _throughput_split(study, encoder, config.training.max_length, plan)
    sampling = report["configured"]["sampling"]
    for name, model_type in BASE_SIZE_MODELS.items():
        measured, flops_per_token = measure_ours(study, encoder_name, within_vocabulary(train, model_type), hp,
                                                 configured_dtype, sampling, model_type=model_type)
        # What `precision: auto` would choose for this architecture itself, as a run measures it.
        auto = measure_model(partial(base_size_classifier, model_type, study.data.num_labels, 0.1),
                             study.data.num_labels, max(config.batch_sizes()), config.training.max_length, device,
                             candidates(device), plan.precision_budget_s)
        report["base_size"][name] = {"model_type": model_type, "flops_per_token": flops_per_token,
                                     configured: asdict(measured),
                                     "precision_auto": {**auto.stored(), "described": auto.describe()}}
        print(f"{name} {configured}: {measured.tokens_per_second:.0f} tokens/s; precision auto: {auto.describe()}",
              file=sys.stderr, flush=True)

    report["levers"]["eval_subset"] = _evaluation_levers(study, config, rounds=plan.evaluation_rounds)
    report["levers"]["eval_schedule"] = _eval_schedule_lever(study, config, plan)
    report["search"] = {
        "budget_s": plan.search_budget_s,
        "ours": in_fresh_process(search_ours, config, plan, str(workdir), config.training.seed),
        "trainer": in_fresh_process(search_trainer, config, plan, str(workdir), config.training.seed),
    }
    summary = summarize(report)
    report["summary"] = summary
    stem = report_stem(device)
    write_atomic(out / f"{stem}.json", json.dumps(report, indent=2, default=float) + "\n")
    write_atomic(out / f"{stem}.md", render_markdown(report, summary))
    return report


def _throughput_split(study, encoder, max_length: int, plan: Plan):
    """The throughput rows' examples: the first whole batches of the training split, up to
    `plan.throughput_examples`, in the encoder's tokens."""
    from benchmark.data.tokenization import tokenize_split
    from benchmark.train.encoders import load_tokenizer

    tokenized = tokenize_split(load_tokenizer(encoder), study.data.train, max_length)
    return tokenized.subset(np.arange(min(plan.throughput_examples, len(tokenized)) // plan.batch_size
                                      * plan.batch_size))


def report_stem(device: torch.device) -> str:
    """PERF on a CPU, PERF-cuda on a GPU: the two tables live side by side in one folder."""
    return "PERF-cuda" if device.type == "cuda" else "PERF"


def _attention_implementation(study, encoder_name: str) -> str:
    """What transformers picks for the model by default: "sdpa" where the architecture has it."""
    from benchmark.train.encoders import load_classifier

    model = load_classifier(study.encoders[encoder_name], study.data.label_names, 0.0)
    return _transformer(model).config._attn_implementation


def _eval_schedule_lever(study, config, plan: Plan) -> dict:
    """The longest trial the space allows (the most epochs at the smallest batch size, on the
    search's training set), once per checkpoint schedule: seconds training and evaluating."""
    from benchmark.data.tokenization import tokenize_split
    from benchmark.search.trial import loop_settings
    from benchmark.train.encoders import load_classifier, load_tokenizer
    from benchmark.train.loop import fine_tune
    from benchmark.train.records import Hyperparameters

    encoder_name, encoder = next(iter(study.encoders.items()))
    epochs_spec = config.search_space.num_epochs
    epochs = int(max(getattr(epochs_spec, "choices", None) or (epochs_spec.high,)))
    override = config.encoders[encoder_name].overrides.get("num_epochs")
    epochs = int(override.high) if override else epochs
    hp = Hyperparameters(**THROUGHPUT_HP, batch_size=min(config.batch_sizes()), num_epochs=epochs)
    tokenizer = load_tokenizer(encoder)
    tokenized = tokenize_split(tokenizer, study.data.train, config.training.max_length)
    train = tokenized.subset(np.arange(min(plan.search_train_examples, len(tokenized))))
    validation = tokenize_split(tokenizer, study.data.validation, config.training.max_length)
    timings = {"encoder": encoder_name, "epochs": epochs, "batch_size": hp.batch_size,
               "train_examples": len(train), "eval_every_examples": config.training.eval_every_examples}
    for schedule in ("fixed", "geometric"):
        settings = replace(loop_settings(study, encoder.name, seed=0), eval_schedule=schedule)
        torch.manual_seed(0)
        model = load_classifier(encoder, study.data.label_names, hp.dropout)
        result = fine_tune(model, train, validation, study.data.num_labels, hp, settings, _ignore, _ignore)
        timings[schedule] = {"checkpoints": len(result.evaluations), "train_seconds": result.train_seconds,
                             "eval_seconds": result.eval_seconds}
    return timings


def _evaluation_levers(study, config, rounds: int = 3) -> dict:
    """Seconds per evaluation (median of `rounds` interleaved, after a warm-up of each): the whole
    validation split in the device's batches ("full", as a trial's last evaluation runs), the
    pruning checkpoints' subset ("subset"), and the whole split as one batch ("one_batch")."""
    from benchmark.data.dataset import stratified_split
    from benchmark.data.tokenization import tokenize_split
    from benchmark.search.trial import loop_settings
    from benchmark.train.encoders import load_classifier, load_tokenizer
    from benchmark.train.loop import EVAL_SUBSET_SEED, evaluate

    encoder = next(iter(study.encoders.values()))
    validation = tokenize_split(load_tokenizer(encoder), study.data.validation, config.training.max_length)
    size = config.training.eval_subset_examples or max(1, len(validation) // 2)
    _, subset = stratified_split(validation.labels, min(size, len(validation) - 1) / len(validation),
                                 np.random.default_rng(EVAL_SUBSET_SEED))
    model = load_classifier(encoder, study.data.label_names, 0.0).to(study.device)
    settings = loop_settings(study, encoder.name, seed=0)
    runs = {"full": (validation, settings), "subset": (validation.subset(subset), settings),
            "one_batch": (validation, replace(settings, eval_batch_size=len(validation), eval_batch_tokens=None))}
    seconds = interleaved_medians({name: partial(evaluate, model, split, run_settings, study.data.num_labels)
                                   for name, (split, run_settings) in runs.items()}, rounds)
    return {name: {"examples": len(split), "seconds": seconds[name], "rounds": rounds}
            for name, (split, _) in runs.items()}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m perf.perf", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="search_spaces/default.yaml",
                        help="encoders, first dataset and search space to measure (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a tiny run that only proves the script works")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="where PERF.json and PERF.md go (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from benchmark.config.spec import load_config
    from benchmark.errors import BenchmarkError
    from benchmark.train.loop import pick_device

    try:
        config = load_config(args.config)
        plan = QUICK if args.quick else FULL_CUDA if torch.cuda.is_available() else FULL
        run(config, plan, Path(args.out))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stem = report_stem(pick_device())
    print(f"written to {args.out}/{stem}.md and {stem}.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
