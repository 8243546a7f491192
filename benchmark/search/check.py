"""`--check`: every check a run makes before its first trial, then the plan and its cost.

Trains nothing beyond the few timed steps a run also takes, and writes nothing: the storage
is only read, and only where it exists.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import torch

from benchmark.config.spec import BenchmarkConfig, PrunerSpec
from benchmark.data.tokenization import tokenize_split
from benchmark.redaction import mask_password
from benchmark.schema import ENCODER_PARAM, FINISHED, SURPLUS_ATTR, study_name
from benchmark.search import lineage, preflight
from benchmark.search.pruning import STARTUP_PRUNERS
from benchmark.search.storage import open_existing_storage
from benchmark.train import estimate, precision
from benchmark.train.encoders import Encoder


def run_check(config: BenchmarkConfig, storage_url: str, n_trials: int, results_dir: Path,
              timeout_s: float | None = None) -> None:
    """Check everything a run checks, then print (stdout) what the run would do and how long it
    would take, and warn (stderr) where one trial will outlast the study's `timeout_s`."""
    started = time.perf_counter()
    preflight.quiet_libraries()
    storage = open_existing_storage(storage_url)
    if storage is not None:
        preflight.check_study_owners(storage, config)
        preflight.check_seed_matches(storage, config)
        preflight.encoder_choices(storage, config)  # refuses an encoder the study cannot take

    def check_data(datasets: dict) -> None:
        if storage is not None:
            lineage.check_unchanged(storage, config, datasets, lineage.SEARCH_SETTINGS)

    # What a run reuses: `auto` keeps a study's stored choice (a forced precision overrides it).
    stored = preflight.stored_precisions(storage, config) if config.training.precision == "auto" else {}
    inputs = preflight.load_inputs(config, stored, check_data=check_data)
    max_length = config.training.max_length
    num_labels = max(loaded.num_labels for loaded in inputs.datasets.values())
    # What the run will measure again: the encoders whose choice no study stores.
    measured = {name: chosen for name, chosen in inputs.precisions.items()
                if chosen.decided == precision.MEASURED and name not in stored}
    # Each encoder's step in its precision: the measurement's own where it timed a batch, else
    # (forced, stored, the only candidate, a lone survivor of the probes) timed now the same way.
    timed = {name: chosen if name in measured and chosen.shape[0] > precision.PROBE_EXAMPLES
             else precision.measure_encoder(inputs.encoders[name], num_labels, max(config.batch_sizes()), max_length,
                                            inputs.device, [chosen.choice])
             for name, chosen in inputs.precisions.items()}
    # Per encoder: seconds per step, and the batch and tokens of that step.
    steps = {name: (chosen.seconds_per_step[inputs.precisions[name].choice], *chosen.shape)
             for name, chosen in timed.items()}
    tokenizers = inputs.tokenizers
    lengths = _token_lengths(tokenizers, inputs.datasets, max_length)
    # The run loads what this check loaded, and measures again what this check measured.
    setup_seconds = time.perf_counter() - started + sum(chosen.cost_seconds for chosen in measured.values())

    print(f"check: {config.source_file or 'the config'} is valid; every encoder and dataset loaded")
    for name, encoder in inputs.encoders.items():
        train_widths = ", ".join(f"{dataset} {np.mean(split[0]):.1f}" for (enc, dataset), split in lengths.items()
                                 if enc == name)
        print(f"encoder {name}: {encoder.model_type}, {_backbone_parameters(encoder) / 1e6:.1f}M parameters "
              f"(without the classification head), {encoder.pooling} pooling, tokenizer "
              f"{type(tokenizers[name]).__name__}; mean tokens per training example: {train_widths}; "
              f"one training step of {steps[name][1]}x{steps[name][2]} in {inputs.precisions[name].choice}: "
              f"{steps[name][0]:.2f} s"
              f"{'' if config.encoders[name].prune else '; not pruned (prune: false): evaluated at the end of each trial only'}")
    for name, loaded in inputs.datasets.items():
        counts = np.bincount(loaded.train.labels, minlength=loaded.num_labels)
        classes = ", ".join(f"{label!r} {count}" for label, count in zip(loaded.label_names, counts))
        print(f"dataset {name}: {loaded.num_labels} classes, train {len(loaded.train)} ({classes}), "
              f"validation {len(loaded.validation)}, test {len(loaded.test)}, "
              f"{loaded.duplicates_dropped} duplicates dropped")
    for name, chosen in inputs.precisions.items():
        print(f"precision {name}: {chosen.describe()}; "
              f"{'stored in a study: the run keeps it' if name in stored else 'the run decides the same way'}")
    print(f"storage: {mask_password(storage_url)} ("
          f"{'holds ' + str(len(optuna.get_all_study_summaries(storage, False))) + ' studies' if storage else 'new'})")
    print(f"results: {results_dir}/ ({_results_dir_state(results_dir)})")

    encoders = list(inputs.encoders)
    total = 0.0
    total_trials = 0.0
    estimates = {}  # per (encoder, dataset): one trial's
    for name, loaded in inputs.datasets.items():
        study = study_name(config.name, name)
        finished = _finished_per_encoder(storage, study)
        to_run = estimate.remaining_trials(n_trials, finished, encoders, config.comparison == "balanced")
        for encoder in encoders:
            seconds_per_token = steps[encoder][0] / (steps[encoder][1] * steps[encoder][2])
            estimates[encoder, name] = _trial_estimate(config, encoder, seconds_per_token, *lengths[encoder, name])
        per_trial = {encoder: estimates[encoder, name].seconds for encoder in encoders}
        seconds = sum(to_run[encoder] * per_trial[encoder] for encoder in encoders)
        total, total_trials = total + seconds, total_trials + sum(to_run.values())
        held = (f"the storage holds {sum(finished.values())} finished trial(s) "
                f"({_per_encoder_text(finished)}), topped up" if finished else "new")
        share = ("an equal share each expected, the sampler picks" if config.comparison == "search"
                 else f"{config.trials_per_encoder(n_trials)} per encoder")
        print(f"study {study} ({config.datasets[name].metric}): {held} to {n_trials} trials ({share}); "
              f"to run: {_per_encoder_text(to_run)}; estimate {estimate.duration_text(seconds)} "
              f"({', '.join(f'{e} {estimate.duration_text(per_trial[e])} per trial' for e in encoders)})")
        longest = max(encoders, key=per_trial.__getitem__)
        if timeout_s is not None and per_trial[longest] > timeout_s:
            print(f"warning: study {study}: one {longest} trial is estimated at {estimate.duration_text(per_trial[longest])}, "
                  f"longer than the timeout of {estimate.duration_text(timeout_s)} (--timeout or budget.timeout_s), "
                  "which starts no new trial after it but stops none that runs; lower search_space.num_epochs or "
                  "raise the timeout", file=sys.stderr)
    for encoder in encoders:
        advice = _pruning_advice(config, encoder, n_trials, [estimates[encoder, name] for name in inputs.datasets])
        if advice:
            print(advice)
    print(f"estimate: {estimate.duration_text(total)} for {total_trials:g} trial(s) in {len(inputs.datasets)} "
          f"study(ies), plus about {estimate.duration_text(setup_seconds)} of loading and measuring before the "
          f"first trial (what this check took, and the run's own precision measurement); "
          f"an upper bound as far as pruning goes: a pruned trial stops early")
    print(f"estimate rests on: each encoder's training step timed here in its precision ("
          f"{', '.join(f'{name} {inputs.precisions[name].choice} at {steps[name][1]}x{steps[name][2]}' for name in steps)}"
          f" tokens), scaled to the tokens a trial trains on (padded as the run pads) and "
          f"evaluates (a forward pass taken as {estimate.FORWARD_SHARE:.2f} of a step), averaged over num_epochs "
          f"and batch_size as random sampling draws them; optimizer updates and model loading are not timed")
    print("check: nothing was trained or written")


def _token_lengths(tokenizers: dict, datasets: dict, max_length: int) -> dict:
    """Per (encoder, dataset): the train and validation token counts a trial sees. The test
    split is not tokenized, as in the search."""
    lengths = {}
    for name, tokenizer in tokenizers.items():
        for dataset, loaded in datasets.items():
            lengths[name, dataset] = tuple(tokenize_split(tokenizer, getattr(loaded, split), max_length).lengths
                                           for split in ("train", "validation"))
    return lengths


def _trial_estimate(config: BenchmarkConfig, encoder: str, seconds_per_token: float, train: np.ndarray,
                    validation: np.ndarray) -> estimate.TrialEstimate:
    space, overrides = config.search_space, config.encoders[encoder].overrides
    return estimate.trial_estimate(seconds_per_token, train, validation,
                                   estimate.prior(space.batch_size, overrides.get("batch_size")),
                                   estimate.prior(space.num_epochs, overrides.get("num_epochs")), config.training,
                                   config.eval_schedule(encoder), _warmup_examples(config.pruner))


def _warmup_examples(pruner: PrunerSpec) -> int:
    return pruner.n_warmup_steps if pruner.type in STARTUP_PRUNERS else 0


def _pruning_advice(config: BenchmarkConfig, encoder: str, n_trials: int,
                    estimates: list[estimate.TrialEstimate]) -> str | None:
    """A line when the encoder's pruning checkpoints, over its trials of every study, cost more
    than pruning could ever save: the most its prunable trials (all but the pruner's startup
    trials, where they are the encoder's own) could each save, against what every trial's
    checkpoints cost. None when pruning may pay, or nothing is pruned."""
    pruner = config.pruner
    if pruner.type == "none" or not config.encoders[encoder].prune:
        return None
    trials = config.trials_per_encoder(n_trials) or n_trials / len(config.encoders)
    startup = pruner.n_startup_trials if pruner.type in STARTUP_PRUNERS and pruner.per_encoder else 0
    prunable = max(0.0, trials - startup)
    checkpoints = trials * sum(one.checkpoint_seconds for one in estimates)
    most_saved = prunable * sum(one.most_saved_seconds for one in estimates)
    if checkpoints <= most_saved:
        return None
    return (f"pruning {encoder}: its checkpoint evaluations would take about {estimate.duration_text(checkpoints)} "
            f"over the {len(estimates)} studies, more than pruning could save (at most "
            f"{estimate.duration_text(most_saved)}: {prunable:g} of its {trials:g} trials a study can be pruned, "
            f"each of at most what follows its first checkpoint); `prune: false` under encoders.{encoder} skips "
            f"them, and changes no trial's value")


def _finished_per_encoder(storage: optuna.storages.BaseStorage | None, name: str) -> dict[str, int]:
    """What a study already holds toward its `n_trials` (as the run counts them)."""
    if storage is None or name not in {s.study_name for s in optuna.get_all_study_summaries(storage, False)}:
        return {}
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False, states=FINISHED)
    return dict(Counter(t.params.get(ENCODER_PARAM) for t in trials if not t.user_attrs.get(SURPLUS_ATTR)))


def _results_dir_state(directory: Path) -> str:
    if not directory.is_dir():
        return "created by the run"
    return "exists" if os.access(directory, os.W_OK) else "exists, not writable: the run will refuse it"


def _per_encoder_text(counts: dict[str, float]) -> str:
    return ", ".join(f"{encoder} {count:g}" for encoder, count in counts.items())


def _backbone_parameters(encoder: Encoder) -> int:
    """Counted on the meta device: no weights are read."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(encoder.location, revision=encoder.revision,
                                        trust_remote_code=encoder.trust_remote_code)
    with torch.device("meta"):
        model = AutoModel.from_config(config, trust_remote_code=encoder.trust_remote_code)
    return sum(parameter.numel() for parameter in model.parameters())
