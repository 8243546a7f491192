"""What a study's trials were scored on: its splits and the training settings, recorded when
the study is created, and checked by every later run that adds to it (topping up, the final
evaluation). Trials scored on other data or settings cannot be compared with its own."""

from __future__ import annotations

import optuna

from benchmark.config.spec import BenchmarkConfig
from benchmark.data.dataset import SPLITS, TextClassificationData
from benchmark.errors import BenchmarkError
from benchmark.schema import SPLIT_FINGERPRINTS_ATTR, SPLIT_SIZES_ATTR, TRAINING_SETTINGS_ATTR, study_name

# The `training` settings that change what a trial scores. Not the batch size of evaluation
# or `compile`, which change only speed; the seed is checked on its own (preflight).
SEARCH_SETTINGS = ("max_length", "precision", "group_by_length", "eval_every_examples", "eval_schedule",
                   "eval_subset_examples")
# Those that change what the final evaluation's retraining scores: it evaluates once, at the
# end, on the whole validation split.
FINAL_SETTINGS = ("max_length", "precision", "group_by_length")


def training_settings(config: BenchmarkConfig) -> dict[str, object]:
    return {name: getattr(config.training, name) for name in SEARCH_SETTINGS}


def record(study: optuna.Study, data: TextClassificationData, config: BenchmarkConfig) -> None:
    """Store what the study is scored on, once: a study created before these attributes gets
    them from its next run, and is checked from then on."""
    recorded = {
        SPLIT_SIZES_ATTR: {split: len(getattr(data, split)) for split in SPLITS},
        SPLIT_FINGERPRINTS_ATTR: data.fingerprints(),
        TRAINING_SETTINGS_ATTR: training_settings(config),
    }
    for name, value in recorded.items():
        if name not in study.user_attrs:
            study.set_user_attr(name, value)


def changes(attrs: dict, data: TextClassificationData, config: BenchmarkConfig,
            compared: tuple[str, ...]) -> list[str]:
    """What differs between the study's record (`attrs`) and this run's data and `compared`
    settings, each naming its key; [] when nothing does, or nothing was recorded."""
    found = []
    sizes = attrs.get(SPLIT_SIZES_ATTR) or {}
    fingerprints = attrs.get(SPLIT_FINGERPRINTS_ATTR) or {}
    now = data.fingerprints()
    for split in SPLITS:
        size = len(getattr(data, split))
        if split in sizes and sizes[split] != size:
            found.append(f"datasets.{data.name}: the {split} split has {size} examples, {sizes[split]} then")
        elif split in fingerprints and fingerprints[split] != now[split]:
            found.append(f"datasets.{data.name}: the {split} split's texts or labels differ")
    settings = attrs.get(TRAINING_SETTINGS_ATTR) or {}
    current = training_settings(config)
    found += [f"training.{name}: {current[name]!r}, {settings[name]!r} then"
              for name in compared if name in settings and settings[name] != current[name]]
    return found


def check_unchanged(storage: optuna.storages.BaseStorage, config: BenchmarkConfig,
                    datasets: dict[str, TextClassificationData], compared: tuple[str, ...]) -> None:
    """Refuse, before any training, a run that would add to a study trials scored on other
    data or `compared` settings than the study's own."""
    existing = {s.study_name: s.user_attrs for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    for name, data in datasets.items():
        study = study_name(config.name, name)
        found = changes(existing.get(study, {}), data, config, compared)
        if found:
            raise BenchmarkError(
                f"study '{study}' was created on other data or settings than the config gives now "
                f"({'; '.join(found)}); its trials could not be compared with new ones, so run with the data, "
                f"config and --seed it was created with, or start a new study (another `name` in "
                f"{config.source_file or 'the config'}, or another --storage)"
            )
