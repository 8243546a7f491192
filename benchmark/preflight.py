"""Everything checked and loaded before the first trial: storage, encoders, datasets."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from benchmark import data, encoders
from benchmark.config import BenchmarkConfig
from benchmark.errors import BenchmarkError
from benchmark.storage import open_storage
from benchmark.study import DATA_SEED_ATTR, study_name
from benchmark.tokenization import TokenizationCache
from benchmark.tracking import Tracker, make_tracker
from benchmark.training import autocast_dtype, pick_device
from benchmark.trial import DatasetStudy


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
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def prepare(config: BenchmarkConfig, storage_url: str, tracker_names: list[str], results_dir: Path) -> Prepared:
    quiet_libraries()
    tracker = make_tracker(tracker_names, results_dir)
    storage = open_storage(storage_url, config.heartbeat)
    seed = config.training.seed
    _check_seed_matches(storage, config, seed)
    resolved = {}
    for name, spec in config.encoders.items():
        print(f"encoder {name}: resolving", file=sys.stderr, flush=True)
        resolved[name] = encoders.resolve(name, spec)
    device = pick_device()
    dtype = autocast_dtype(device, config.training.precision)
    print(f"device: {device}, autocast: {dtype or 'off (fp32)'}", file=sys.stderr)
    if dtype == torch.bfloat16 and autocast_dtype(device, "auto") is None:
        print(f"warning: {config.source_file or 'the config'}: training.precision is bf16, but this {device.type} "
              f"has no native bf16; its matmuls fall back to kernels far slower than fp32 "
              f"(precision: auto picks fp32 here)", file=sys.stderr)
    tokenization = TokenizationCache()
    studies = []
    for name, spec in config.datasets.items():
        loaded = data.load_dataset(name, spec, seed)
        if len(loaded.train) < max(config.batch_sizes()):
            raise BenchmarkError(
                f"datasets.{name}: the train split has {len(loaded.train)} examples, fewer than "
                f"the largest search_space.batch_size ({max(config.batch_sizes())})"
            )
        print(f"dataset {name}: {loaded.num_labels} classes, train {len(loaded.train)}, "
              f"validation {len(loaded.validation)}, test {len(loaded.test)}", file=sys.stderr, flush=True)
        studies.append(DatasetStudy(study_name(config, name), config, loaded, spec.metric, resolved,
                                    tokenization, tracker, device, dtype))
    return Prepared(storage, tracker, studies)


def _check_seed_matches(storage: optuna.storages.BaseStorage, config: BenchmarkConfig, seed: int) -> None:
    """A study topped up with another seed would mix trials scored on different splits."""
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for name in config.datasets:
        summary = existing.get(study_name(config, name))
        if summary is None:
            continue
        recorded = summary.user_attrs.get(DATA_SEED_ATTR)
        if recorded is not None and recorded != seed:
            raise BenchmarkError(
                f"--seed: study '{summary.study_name}' was run with seed {recorded}, which fixes its "
                f"data splits; top it up with --seed {recorded} or use another storage"
            )
