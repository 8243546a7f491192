"""Everything checked and loaded before the first trial: storage, encoders, datasets."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from benchmark import data, encoders, precision
from benchmark.config import BenchmarkConfig
from benchmark.errors import BenchmarkError
from benchmark.storage import open_storage
from benchmark.study import DATA_SEED_ATTR, study_name
from benchmark.tokenization import TokenizationCache
from benchmark.tracking import Tracker, make_tracker
from benchmark.training import pick_device
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
        print(f"encoder {name}: {resolved[name].model_type}, {resolved[name].pooling} pooling "
              f"({'set in the config' if spec.pooling else 'the checkpoint default'})", file=sys.stderr, flush=True)
    device = pick_device()
    print(f"device: {device}", file=sys.stderr)
    tokenization = TokenizationCache()
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
    # After every input check: bad input fails before this costs a few training steps. At
    # the largest batch the search can sample, where the choice matters most.
    started = time.perf_counter()
    chosen = precision.decide(config.training.precision, resolved.values(),
                              max(loaded.num_labels for loaded in datasets.values()), max(config.batch_sizes()),
                              config.training.max_length, device)
    # What the measurement itself cost, so a user can weigh it against the run.
    cost = f"; the measurement took {time.perf_counter() - started:.0f} s" if chosen.seconds_per_step else ""
    print(chosen.describe() + cost, file=sys.stderr, flush=True)
    studies = [DatasetStudy(study_name(config, name), config, loaded, config.datasets[name].metric, resolved,
                            tokenization, tracker, device, chosen) for name, loaded in datasets.items()]
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
