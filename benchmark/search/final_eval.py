"""The final evaluation: each encoder's best configuration, retrained with several seeds
and scored once on the test split, which the search never touched.

Every run is stored as a trial of a companion study (`<search study>:final`) in the same
storage, so the tables are rebuilt from the storage like the search's, and an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from benchmark import interrupts
from benchmark.data.tokenization import tokenize_split
from benchmark.errors import BenchmarkError
from benchmark.schema import (
    BENCHMARK_ATTR,
    DATASET_ATTR,
    ENCODER_PARAM,
    FINAL_OF_ATTR,
    METRIC_ATTR,
    PRECISION_ATTR,
    PREDICTIONS_ATTR,
    SEED_ATTR,
    SEEDS_REQUESTED_ATTR,
    SOURCE_TRIAL_ATTR,
    TEST_LABELS_ATTR,
    WALL_SECONDS_ATTR,
    final_study_name,
    legacy_final_study_name,
)
from benchmark.search.dataset_study import DatasetStudy
from benchmark.search.trial import loop_settings
from benchmark.train.encoders import load_classifier, load_tokenizer
from benchmark.train.estimate import duration_text
from benchmark.train.loop import fine_tune, predict
from benchmark.train.memory import release_memory
from benchmark.train.metrics import classification_metrics
from benchmark.train.precision import matmuls
from benchmark.train.records import Evaluation, Hyperparameters, StepLog

# Far from the search's training seeds (the data seed plus the trial number).
SEED_OFFSET = 1_000_000



def best_trial_per_encoder(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Each encoder's best complete trial; the earlier one wins a tie."""
    best: dict[str, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        encoder = trial.params[ENCODER_PARAM]
        if encoder not in best or trial.value > best[encoder].value:
            best[encoder] = trial
    return best


def evaluation_candidates(storage: optuna.storages.BaseStorage, dataset_study: DatasetStudy) -> dict[str, FrozenTrial]:
    """The trials to retrain (each encoder's best), after checking that the study exists
    (`preflight.prepare_studies` checked that it was searched on the data the config gives now, with
    `lineage.FINAL_SETTINGS`). Cheap: run it for every dataset before training any."""
    name = dataset_study.data.name
    try:
        search = optuna.load_study(study_name=dataset_study.study_name, storage=storage)
    except KeyError:
        raise BenchmarkError(
            f"--final-eval: no study '{dataset_study.study_name}' in the storage; run --study first"
        ) from None
    data = dataset_study.data
    final_name = final_study_of(storage, search.study_name)
    if final_name in optuna.get_all_study_names(storage):
        # The stored predictions are compared example by example, so the test split must not move.
        scored = optuna.load_study(study_name=final_name, storage=storage).user_attrs.get(TEST_LABELS_ATTR)
        if scored is not None and scored != data.test.labels.tolist():
            raise BenchmarkError(
                f"datasets.{name}: the test split's labels differ from those study '{final_name}' scored; "
                f"run --final-eval with the config (and --seed) the search used"
            )
    candidates = {encoder: trial for encoder, trial in best_trial_per_encoder(search).items()
                  if encoder in dataset_study.encoders}
    if not candidates:
        raise BenchmarkError(f"--final-eval: study '{search.study_name}' has no complete trial to evaluate")
    return candidates


def pending_seeds(storage: optuna.storages.BaseStorage, dataset_study: DatasetStudy,
                  candidates: dict[str, FrozenTrial], seeds: int) -> dict[str, list[int]]:
    """Per encoder, the seeds still to run: an interrupted evaluation resumes. Reads only."""
    final_name = final_study_of(storage, dataset_study.study_name)
    done = set()
    if final_name in optuna.get_all_study_names(storage):
        # A run stored before predictions were kept is run again: the comparison needs them.
        done = {(t.user_attrs[SOURCE_TRIAL_ATTR], t.user_attrs[SEED_ATTR])
                for t in optuna.load_study(study_name=final_name, storage=storage).get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE,))
                if PREDICTIONS_ATTR in t.user_attrs}
    return {encoder: [seed for seed in range(seeds) if (source.number, seed) not in done]
            for encoder, source in candidates.items()}


def plan_text(dataset_study: DatasetStudy, candidates: dict[str, FrozenTrial], pending: dict[str, list[int]]
              ) -> tuple[str, float]:
    """What the evaluation of one study will run, and its estimated seconds: each run as long
    as the search trial it retrains took (which also evaluated at every checkpoint: an upper
    bound as far as that goes)."""
    seconds = {encoder: len(pending[encoder]) * float(source.user_attrs.get(WALL_SECONDS_ATTR) or 0)
               for encoder, source in candidates.items()}
    runs = ", ".join(f"{encoder} {len(pending[encoder])} ({duration_text(seconds[encoder])})"
                     for encoder in candidates)
    return (f"[{dataset_study.data.name}] final evaluation: {sum(map(len, pending.values()))} run(s) to train: "
            f"{runs}"), sum(seconds.values())


def final_study_of(storage: optuna.storages.BaseStorage, search_name: str) -> str:
    """The name of the final evaluation's study of `search_name`: `final_study_name`, or where
    a storage from before that name holds one, the `<search study>-final` study it made. That
    one is told from a search study of a dataset named `<dataset>-final` by its attributes
    (a final study, and not a search study), so its runs are topped up, not run again."""
    legacy = legacy_final_study_name(search_name)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if (summary.study_name == legacy and attrs.get(FINAL_OF_ATTR) == search_name
                and BENCHMARK_ATTR not in attrs):
            return legacy
    return final_study_name(search_name)


def run_final_evaluation(storage: optuna.storages.BaseStorage, dataset_study: DatasetStudy,
                         candidates: dict[str, FrozenTrial], seeds: int) -> None:
    name = dataset_study.data.name
    search_name = dataset_study.study_name
    pending = pending_seeds(storage, dataset_study, candidates, seeds)
    final = optuna.create_study(storage=storage, study_name=final_study_of(storage, search_name),
                                direction="maximize", load_if_exists=True)
    final.set_user_attr(FINAL_OF_ATTR, search_name)
    final.set_user_attr(DATASET_ATTR, name)
    final.set_user_attr(METRIC_ATTR, dataset_study.metric)
    final.set_user_attr(TEST_LABELS_ATTR, dataset_study.data.test.labels.tolist())
    final.set_user_attr(SEEDS_REQUESTED_ATTR, seeds)
    for encoder_name, source in candidates.items():
        todo = pending[encoder_name]
        if not todo:
            continue
        encoder = dataset_study.encoders[encoder_name]
        # Tokenized here, not by the search's cache: the search must never see the test split.
        test = tokenize_split(load_tokenizer(encoder), dataset_study.data.test,
                              dataset_study.config.training.max_length)
        for seed in todo:
            started = time.perf_counter()
            validation_loss, validation, test_loss, predictions = _train_and_test(dataset_study, source, test, seed)
            scores = classification_metrics(test.labels, predictions, dataset_study.data.num_labels)
            metric = dataset_study.metric
            with interrupts.deferred():  # Ctrl-C between runs, never within the write of one
                final.add_trial(optuna.trial.create_trial(
                    state=TrialState.COMPLETE, value=scores[metric], params=source.params,
                    distributions=source.distributions,
                    user_attrs={
                        SEED_ATTR: seed, SOURCE_TRIAL_ATTR: source.number, "test_loss": test_loss,
                        PRECISION_ATTR: dataset_study.precisions[encoder_name].choice,
                        PREDICTIONS_ATTR: predictions.tolist(),
                        **{f"test_{key}": value for key, value in scores.items()},
                        "validation_loss": validation_loss,
                        **{f"validation_{key}": value for key, value in validation.items()},
                        "wall_seconds": round(time.perf_counter() - started, 3),
                    },
                ))
            print(f"[{name}] final {encoder_name} (trial {source.number}) seed {seed}: test {metric} "
                  f"{scores[metric]:.4f} (validation {validation[metric]:.4f})", file=sys.stderr, flush=True)


def _train_and_test(dataset_study: DatasetStudy, source: FrozenTrial, test, seed: int):
    encoder = dataset_study.encoders[source.params[ENCODER_PARAM]]
    # A trial stored before `class_weights` was a parameter trained unweighted: its default.
    hp = Hyperparameters(**{field.name: source.params[field.name]
                            for field in dataclasses.fields(Hyperparameters) if field.name in source.params})
    training = dataset_study.config.training
    tokenized = dataset_study.tokenization.get(dataset_study.data, (encoder.location, encoder.revision), training.max_length,
                                               lambda: load_tokenizer(encoder))
    # No evaluation before the end: nothing is pruned here, and the final one is what counts.
    settings = loop_settings(dataset_study, encoder.name, training.seed + SEED_OFFSET + seed, only_at_end=True)
    torch.manual_seed(settings.seed)
    model = load_classifier(encoder, dataset_study.data.label_names, hp.dropout)
    try:
        with matmuls(dataset_study.precisions[encoder.name].choice):
            result = fine_tune(model, tokenized.train, tokenized.validation, dataset_study.data.num_labels, hp,
                               settings, _ignore, _ignore)
            test_loss, predictions = predict(model, test, settings)
        return result.final.loss, result.final.metrics, test_loss, predictions
    finally:
        del model
        release_memory(dataset_study.device)


def _ignore(_: StepLog | Evaluation) -> None:
    pass
