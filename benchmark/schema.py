"""Names that cross layers: what the search writes into the Optuna storage and the report
reads back, the `encoder` parameter, and the workers' environment variables.

The storage is the single source of truth, so these strings are its schema: renaming one
orphans every stored study. Only Optuna (no torch) is imported here, so the read-only
`--leaderboard` path stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import TrialState

# The categorical parameter that picks the encoder of a trial.
ENCODER_PARAM = "encoder"

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)

# `--workers` children find their index here (they show no live display).
WORKER_ENV = "ENCODER_BENCHMARK_WORKER"
# ... and the fraction of their GPU's memory they may allocate, where several share it.
GPU_MEMORY_SHARE_ENV = "ENCODER_BENCHMARK_GPU_MEMORY_SHARE"

# --- study user attributes ----------------------------------------------------------------------
# Mark a study as ours and say how to read it.
BENCHMARK_ATTR = "benchmark"
DATASET_ATTR = "dataset"
METRIC_ATTR = "metric"
DATA_SEED_ATTR = "data_seed"
# The `encoder` parameter's choices. Optuna refuses a categorical whose choices change within
# a study, so they are fixed when the study is created (see `DatasetStudy.encoder_choices`).
ENCODER_CHOICES_ATTR = "encoder_choices"
LABEL_NAMES_ATTR = "label_names"
SPLIT_SIZES_ATTR = "split_sizes"  # as the study was created
# As the study was created: each split's sha256 (`TextClassificationData.fingerprints`) and the
# training settings that shaped its trials (`search.lineage`); a later run must match them.
SPLIT_FINGERPRINTS_ATTR = "split_fingerprints"
TRAINING_SETTINGS_ATTR = "training_settings"
DUPLICATES_DROPPED_ATTR = "duplicates_dropped"
# Per encoder, the precision its trials train in and what the choice rests on
# (train/precision.py's EncoderPrecision): kept, so a resumed study trains as it did.
PRECISION_BY_ENCODER_ATTR = "precision_by_encoder"
# A trial attribute: the precision it trained in. Studies stored before the per-encoder
# choice hold one for all their encoders under this name too.
PRECISION_ATTR = "precision"
# Encoders stopped after failing again and again: {encoder: the last failure's reason}.
STOPPED_ATTR = "stopped_encoders"
# Set when `budget.timeout_s` ended the study short of its trial budget.
TIMEOUT_STOP_ATTR = "timeout_stop"
# The reference baselines' scores of the study's data (train/baselines.py), under their names below.
REFERENCE_ATTR = "reference_baselines"
# The reference baselines, as the attribute above keys them.
MAJORITY = "majority"
RANDOM = "random"
TFIDF_LOGREG = "tfidf_logreg"
# The baselines whose scores need no learning: the better of them is chance.
CHANCE = (MAJORITY, RANDOM)
# How the tables and the report name them; a leaderboard row's prefix keeps it apart from any encoder name.
BASELINE_NAMES = {MAJORITY: "majority class", RANDOM: "random guessing", TFIDF_LOGREG: "tf-idf + logreg"}
REFERENCE_PREFIX = "(reference) "
REFERENCE_NAMES = {key: f"{REFERENCE_PREFIX}{name}" for key, name in BASELINE_NAMES.items()}
# Provenance (config/provenance.py).
CONFIG_FILE_ATTR = "config_file"
CONFIG_SHA256_ATTR = "config_sha256"
COMPARISON_ATTR = "comparison"
VERSIONS_ATTR = "package_versions"

# --- trial user attributes ----------------------------------------------------------------------
# A trial created past the study's budget by a racing worker: never counted anywhere.
SURPLUS_ATTR = "surplus"
# A trial stopped by Ctrl-C or SIGTERM: its state is FAIL, its configuration untested.
INTERRUPTED_ATTR = "interrupted"
# Why a trial was pruned or failed, in one line.
PRUNE_REASON_ATTR = "prune_reason"
FAIL_REASON_ATTR = "fail_reason"
# Enqueued from another dataset's study: the study and trial it came from.
WARM_START_ATTR = "warm_start_from"
WORKER_ATTR = "worker"
MODEL_TYPE_ATTR = "model_type"
POOLING_ATTR = "pooling"
DEVICE_ATTR = "device"
NUM_PARAMETERS_ATTR = "num_parameters"
LOAD_SECONDS_ATTR = "load_seconds"
OOM_RETRY_ATTR = "oom_retry"
VALIDATION_ATTR_PREFIX = "validation_"  # + a metric name, and `validation_loss`
STEPS_ATTR = "steps"
# Pruned and failed trials too: the overhead and cost figures need every trial's time.
WALL_SECONDS_ATTR = "wall_seconds"
TRAIN_SECONDS_ATTR = "train_seconds"
EVAL_SECONDS_ATTR = "eval_seconds"
TRAIN_TOKENS_ATTR = "train_tokens"
EVAL_TOKENS_ATTR = "eval_tokens"

# --- the final evaluation's studies ---------------------------------------------------------------
FINAL_OF_ATTR = "final_evaluation_of"  # study: the search study whose best configurations it retrains
SEED_ATTR = "seed"  # trial
SOURCE_TRIAL_ATTR = "source_trial"  # trial: the search trial it retrains
# Every test prediction is kept in the storage, so the paired comparison is rebuilt from it:
# the run's predicted label ids and the final study's true ones, in the test split's order.
PREDICTIONS_ATTR = "test_predictions"  # trial
TEST_LABELS_ATTR = "test_labels"  # study
# What the last --final-eval asked for, so that the tables can say which runs are missing.
SEEDS_REQUESTED_ATTR = "seeds_requested"  # study


# --- the trials table -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialsColumns:
    """The columns of the trials table (`report.results.trials_frame`): a row per trial of
    every benchmark study, which every leaderboard, the ranking and the report read, and
    trials.csv writes out for the user's own scripts, so a rename is a schema change here too.
    They live here, not in `report.results`, because `report.leaderboard` and `report.ranking`
    read them and `results` imports those."""

    study: str = "study"
    benchmark: str = "benchmark"
    dataset: str = "dataset"
    metric: str = "metric"
    number: str = "number"
    state: str = "state"
    value: str = "value"
    encoder: str = "encoder"
    duration_s: str = "duration_s"
    datetime_start: str = "datetime_start"
    datetime_complete: str = "datetime_complete"
    train_tokens: str = "train_tokens"
    prune_reason: str = "prune_reason"
    fail_reason: str = "fail_reason"
    # Study attributes, on every row of the study.
    timeout_stop: str = "timeout_stop"
    stopped_encoders: str = "stopped_encoders"
    # + the name of each sampled parameter but the encoder.
    param_prefix: str = "param_"


TRIAL = TrialsColumns()

def study_name(benchmark: str, dataset: str) -> str:
    """The search study of `dataset` in the benchmark (config) named `benchmark`."""
    return f"{benchmark}-{dataset}"


def final_study_name(search_study: str) -> str:
    """The final evaluation's study of `search_study`. The ':' is a character no config or
    dataset name may hold (config/spec.py), so no search study can take this name: with a
    '-', dataset `d-final` would share one study with the final evaluation of `d`."""
    return f"{search_study}:final"


def legacy_final_study_name(search_study: str) -> str:
    """The name `final_study_name` gave before it took a ':', kept where a storage holds one."""
    return f"{search_study}-final"


def timeout_stop_text(stop: object) -> str:
    """The study attribute `timeout_stop` (see `search.study.mark_timeout_stop`) in words; "" when the
    study reached its `n_trials`."""
    if not isinstance(stop, dict):
        return ""
    counts = ", ".join(f"{encoder} {count}" for encoder, count in stop["per_encoder"].items())
    return (f"stopped by the {stop['timeout_s']:g} s timeout after {stop['finished']} of {stop['n_trials']} "
            f"trials ({counts})")
