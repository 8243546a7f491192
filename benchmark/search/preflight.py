"""Everything checked and loaded before the first trial: storage, encoders, datasets."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from benchmark.config.spec import BenchmarkConfig
from benchmark.data import dataset as data
from benchmark.data.dataset import TextClassificationData
from benchmark.data import tokenization
from benchmark.errors import BenchmarkError
from benchmark.schema import (
    BENCHMARK_ATTR,
    DATA_SEED_ATTR,
    DATASET_ATTR,
    ENCODER_CHOICES_ATTR,
    ENCODER_PARAM,
    FINAL_OF_ATTR,
    PRECISION_ATTR,
    PRECISION_BY_ENCODER_ATTR,
    study_name,
)
from benchmark.search import lineage
from benchmark.search.dataset_study import DatasetStudy
from benchmark.search.optuna_internals import OPTIMIZE_LOGGER
from benchmark.search.storage import open_existing_storage, open_storage
from benchmark.search.trial import INTERRUPTED_TRIAL_LOG
from benchmark.tracking import make_tracker
from benchmark.tracking.base import Tracker
from benchmark.train import encoders, precision
from benchmark.train.encoders import Encoder
from benchmark.train.loop import pick_device
from benchmark.train.precision import EncoderPrecision


@dataclass
class Prepared:
    storage: optuna.storages.BaseStorage
    tracker: Tracker
    studies: list[DatasetStudy]


def quiet_libraries() -> None:
    """Our progress lines replace Optuna's per-trial log and transformers' load reports."""
    import warnings

    import transformers

    # TPE's `group` option is stable in practice but still flagged experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger(OPTIMIZE_LOGGER).addFilter(INTERRUPTED_TRIAL_LOG)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Inputs:
    """What every trial of every study needs, checked and loaded: the same for `--check` and a run."""

    encoders: dict[str, Encoder]
    datasets: dict[str, TextClassificationData]
    device: torch.device
    # Per encoder: the precision a study of the config already trains it in, else this run's choice.
    precisions: dict[str, EncoderPrecision]
    tokenizers: dict[str, Any]  # per encoder, as loaded for the vocabulary check


def prepare_studies(config: BenchmarkConfig, storage_url: str, tracker_names: list[str], results_dir: Path,
                    compared: tuple[str, ...] = lineage.SEARCH_SETTINGS, live_display: bool = True) -> Prepared:
    """Check and load every input of a run, then open the storage and each dataset's study.

    `compared`: the training settings that must be those each existing study was created
    with (the search's, or for the final evaluation those of its retraining). `live_display`:
    whether a person at the terminal gets the live display (see tracking.make_tracker)."""
    quiet_libraries()
    tracker = make_tracker(tracker_names, results_dir, live_display)
    # The checks read what is stored without creating anything; the storage is created only
    # once every input is known good, so a run refused for its inputs leaves nothing behind.
    existing = open_existing_storage(storage_url)
    if existing is not None:
        check_study_owners(existing, config)
        check_seed_matches(existing, config)

    def check_data(datasets: dict[str, TextClassificationData]) -> None:
        if existing is not None:
            lineage.check_unchanged(existing, config, datasets, compared)

    choices = encoder_choices(existing, config)
    inputs = load_inputs(config, stored_precisions(existing, config), check_data=check_data)
    storage = open_storage(storage_url, config.heartbeat)
    studies = []
    for name, loaded in inputs.datasets.items():
        held = record_precisions(storage, study_name(config.name, name), inputs.precisions)
        # `auto` trains as the study holds, where this device can; a forced precision is this
        # run's, whatever the study holds.
        precisions = {encoder: held[encoder] if config.training.precision == "auto"
                      and precision.computable(held[encoder].choice, inputs.device) else chosen
                      for encoder, chosen in inputs.precisions.items()}
        studies.append(DatasetStudy(study_name(config.name, name), config, loaded, config.datasets[name].metric,
                                    inputs.encoders, tokenization.SHARED, tracker, inputs.device, precisions, choices[name]))
    return Prepared(storage, tracker, studies)


def load_inputs(config: BenchmarkConfig, stored: dict[str, EncoderPrecision],
                check_data: Callable[[dict[str, TextClassificationData]], None] = lambda datasets: None) -> Inputs:
    """Resolve every encoder, load and split every dataset (then `check_data` them), pick the
    device and each encoder's precision (`auto`: as `stored`, else measured); trains nothing but
    the precision measurement's few steps and writes nothing."""
    seed = config.training.seed
    resolved = {}
    for name, spec in config.encoders.items():
        print(f"encoder {name}: resolving", file=sys.stderr, flush=True)
        resolved[name] = encoders.resolve(name, spec)
        limit = resolved[name].max_tokens
        if limit is not None and config.training.max_length > limit:
            raise BenchmarkError(
                f"training.max_length: {config.training.max_length} tokens is more than encoders.{name} can "
                f"read ({limit}, from its config's max_position_embeddings); set training.max_length to at most {limit}"
            )
        print(f"encoder {name}: {resolved[name].model_type}, {resolved[name].pooling} pooling "
              f"({'set in the config' if spec.pooling else 'the checkpoint default'})", file=sys.stderr, flush=True)
    device = pick_device()
    print(f"device: {device}", file=sys.stderr)
    datasets = {}
    for name, spec in config.datasets.items():
        loaded = data.load_dataset(name, spec, seed)
        if len(loaded.train) < max(config.batch_sizes()):
            raise BenchmarkError(
                f"datasets.{name}: the train split has {len(loaded.train)} examples, fewer than "
                f"the largest search_space.batch_size ({max(config.batch_sizes())})"
            )
        print(f"dataset {name}: {loaded.num_labels} classes, train {len(loaded.train)}, "
              f"validation {len(loaded.validation)}, test {len(loaded.test)}, "
              f"{loaded.duplicates_dropped} duplicates dropped", file=sys.stderr, flush=True)
        # A warning, not an error: a rare class can miss a small split of a real dataset.
        for split, classes in loaded.absent_classes().items():
            effect = ("the model never trains on them" if split == "train" else
                      f"its {spec.metric} cannot reward them (macro-F1 averages over the classes found in "
                      f"the split's labels or predictions)")
            print(f"warning: datasets.{name}: the {split} split has no example of class(es) "
                  f"{', '.join(map(repr, classes))}; {effect}", file=sys.stderr, flush=True)
        datasets[name] = loaded
    check_data(datasets)
    # Per dataset: a tokenizer can cover one dataset's language and not another's.
    tokenizers = {}
    for name, encoder in resolved.items():
        tokenizer = tokenizers[name] = encoders.load_tokenizer(encoder)
        for loaded in datasets.values():
            encoders.check_vocabulary(encoder, tokenizer, loaded.name,
                                      loaded.sample_texts(encoders.VOCABULARY_SAMPLE, seed))
    # After every input check: bad input fails before this costs a few training steps. At
    # the largest batch the search can sample, where the choice matters most.
    setting = config.training.precision
    num_labels = max(loaded.num_labels for loaded in datasets.values())
    precisions = {}
    for name, encoder in resolved.items():
        if setting == "auto" and name in stored and precision.computable(stored[name].choice, device):
            precisions[name] = stored[name]
            print(f"precision {name}: {stored[name].describe()}; stored in a study: kept", file=sys.stderr,
                  flush=True)
            continue
        precisions[name] = precision.decide(setting, encoder, num_labels, max(config.batch_sizes()),
                                            config.training.max_length, device)
        print(f"precision {name}: {precisions[name].describe()}", file=sys.stderr, flush=True)
    return Inputs(resolved, datasets, device, precisions, tokenizers)


def study_precisions(attrs: dict[str, Any]) -> dict[str, EncoderPrecision]:
    """The per-encoder precisions a study's user attributes `attrs` hold. A study stored before
    them held one precision for all its encoders."""
    if PRECISION_BY_ENCODER_ATTR in attrs:
        return {encoder: EncoderPrecision.from_stored(value) for encoder, value in attrs[PRECISION_BY_ENCODER_ATTR].items()}
    if PRECISION_ATTR in attrs:
        return {encoder: EncoderPrecision(attrs[PRECISION_ATTR], decided="one choice for every encoder, stored "
                                                                         "before choices were per encoder")
                for encoder in attrs.get(ENCODER_CHOICES_ATTR) or ()}
    return {}


def stored_precisions(storage: optuna.storages.BaseStorage | None, config: BenchmarkConfig
                      ) -> dict[str, EncoderPrecision]:
    """Per encoder of the config, the precision one of its studies already trains it in (the
    first, in the config's dataset order): a resumed or topped-up run keeps it, unmeasured."""
    existing = {summary.study_name: summary for summary in
                (optuna.get_all_study_summaries(storage, include_best_trial=False) if storage else ())}
    stored: dict[str, EncoderPrecision] = {}
    for name in config.datasets:
        summary = existing.get(study_name(config.name, name))
        for encoder, chosen in (study_precisions(summary.user_attrs) if summary else {}).items():
            if encoder in config.encoders:
                stored.setdefault(encoder, chosen)
    return stored


def record_precisions(storage: optuna.storages.BaseStorage, name: str, chosen: dict[str, EncoderPrecision]
                      ) -> dict[str, EncoderPrecision]:
    """Store in study `name` (created if new) the precision of each encoder it holds none for,
    and return what it holds: the storage decides, so `--workers` children, started after this,
    and a later run train each encoder as its first trials did."""
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    held = study_precisions(study.user_attrs)
    missing = {encoder: value for encoder, value in chosen.items() if encoder not in held}
    if missing or PRECISION_BY_ENCODER_ATTR not in study.user_attrs:
        study.set_user_attr(PRECISION_BY_ENCODER_ATTR, {encoder: value.stored() for encoder, value in
                                                        {**held, **missing}.items()})
    # Read back: of two processes that recorded at once, the later one's choice is the one stored.
    stored = study_precisions(optuna.load_study(study_name=name, storage=storage).user_attrs)
    return {encoder: stored[encoder] for encoder in chosen}


def check_study_owners(storage: optuna.storages.BaseStorage, config: BenchmarkConfig) -> None:
    """Each dataset's study name must not hold another's study: another config's (config `a`
    with dataset `b-c`, and config `a-b` with dataset `c`) or a final evaluation's (named
    `<study>-final` in storages from before `schema.final_study_name` took a ':')."""
    existing = {s.study_name: s.user_attrs for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for name in config.datasets:
        attrs = existing.get(study_name(config.name, name))
        if attrs is None:
            continue
        if FINAL_OF_ATTR in attrs:
            owner = f"the final evaluation of study '{attrs[FINAL_OF_ATTR]}'"
        elif attrs.get(BENCHMARK_ATTR, config.name) != config.name or attrs.get(DATASET_ATTR, name) != name:
            owner = f"dataset '{attrs.get(DATASET_ATTR)}' of config '{attrs.get(BENCHMARK_ATTR)}'"
        else:
            continue
        raise BenchmarkError(
            f"datasets.{name}: the storage's study '{study_name(config.name, name)}' holds {owner}, "
            f"not this dataset's search; rename the dataset (or `name` in {config.source_file or 'the config'}), "
            f"or use another --storage"
        )


def check_seed_matches(storage: optuna.storages.BaseStorage, config: BenchmarkConfig) -> None:
    """A study topped up with another seed would mix trials scored on different splits."""
    seed = config.training.seed
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for name in config.datasets:
        summary = existing.get(study_name(config.name, name))
        if summary is None:
            continue
        recorded = summary.user_attrs.get(DATA_SEED_ATTR)
        if recorded is not None and recorded != seed:
            raise BenchmarkError(
                f"--seed: study '{summary.study_name}' was run with seed {recorded}, which fixes its "
                f"data splits; top it up with --seed {recorded} or use another storage"
            )


def encoder_choices(storage: optuna.storages.BaseStorage | None, config: BenchmarkConfig
                    ) -> dict[str, tuple[str, ...]]:
    """Per dataset, its study's `encoder` choices. Optuna refuses a categorical whose choices
    change within a study, so a new study gets every encoder of the config file (a run with
    `--encoders` samples only some of them), and an existing one keeps those it was created
    with: a later run may compare fewer, and is refused before training if it adds one."""
    existing = ({s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
                if storage is not None else set())
    choices = {}
    for name in config.datasets:
        recorded = None
        if study_name(config.name, name) in existing:
            study = optuna.load_study(study_name=study_name(config.name, name), storage=storage)
            # Studies from before the attribute: the choices their first trial recorded.
            recorded = study.user_attrs.get(ENCODER_CHOICES_ATTR) or next(
                (t.distributions[ENCODER_PARAM].choices for t in study.get_trials(deepcopy=False)
                 if ENCODER_PARAM in t.distributions), None)
        if recorded is None:
            choices[name] = config.file_encoders
            continue
        added = [encoder for encoder in config.encoders if encoder not in recorded]
        if added:
            raise BenchmarkError(
                f"encoders: study '{study_name(config.name, name)}' was created with the encoders "
                f"{', '.join(recorded)}, and an Optuna study cannot take another choice of `encoder`, so "
                f"{', '.join(added)} cannot join it; compare {', '.join(added)} in a new study (another "
                f"`name` in {config.source_file or 'the config'}, or another --storage)"
            )
        choices[name] = tuple(recorded)
    return choices
