"""One Optuna trial: sample, build the classifier, train, report, prune."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import optuna
import torch

from benchmark import interrupts
from benchmark.config.spec import CategoricalParam, EncoderSpec, FloatParam, SearchSpace
from benchmark.data.tokenization import TokenizedData
from benchmark.schema import (
    DEVICE_ATTR,
    ENCODER_PARAM,
    EVAL_SECONDS_ATTR,
    EVAL_TOKENS_ATTR,
    FAIL_REASON_ATTR,
    INTERRUPTED_ATTR,
    LOAD_SECONDS_ATTR,
    MODEL_TYPE_ATTR,
    NUM_PARAMETERS_ATTR,
    OOM_RETRY_ATTR,
    POOLING_ATTR,
    PRECISION_ATTR,
    PRUNE_REASON_ATTR,
    STEPS_ATTR,
    TRAIN_SECONDS_ATTR,
    TRAIN_TOKENS_ATTR,
    VALIDATION_ATTR_PREFIX,
    WALL_SECONDS_ATTR,
    WORKER_ATTR,
)
from benchmark.search.dataset_study import DatasetStudy
from benchmark.tracking.base import TrialRun
from benchmark.tracking.dashboard import with_trial_note
from benchmark.train.encoders import Encoder, load_classifier, load_tokenizer
from benchmark.train.loop import (
    LoopSettings,
    NonFiniteLoss,
    TrainingResult,
    available_device_memory,
    evaluation_batch_size,
    evaluation_batch_tokens,
    fine_tune,
    padding_multiple,
)
from benchmark.train.memory import is_out_of_memory, release_memory
from benchmark.train import precision
from benchmark.train.records import Evaluation, Hyperparameters, StepLog

INTERRUPTED_REASON = "interrupted by Ctrl-C/SIGTERM"


class InterruptedTrialLog(logging.Filter):
    """Drops Optuna's log of a trial stopped by Ctrl-C or SIGTERM: a "failed" warning with
    the whole KeyboardInterrupt traceback, then "Trial N failed with value None". The
    command line says it in one line."""

    def __init__(self) -> None:
        super().__init__()
        self._trial: str | None = None  # "Trial N" of the interrupted trial

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self._trial = message.split(" failed", 1)[0]
            return False
        if self._trial is not None and message.startswith(f"{self._trial} failed"):
            # Its one follow-up; then a later study's trial of that number is logged again.
            self._trial = None
            return False
        return True


# Installed on the logger of Optuna's optimize loop by `preflight.quiet_libraries`.
INTERRUPTED_TRIAL_LOG = InterruptedTrialLog()


def loop_settings(study: DatasetStudy, encoder: str, seed: int, only_at_end: bool = False) -> LoopSettings:
    """The training loop's settings for this study's device and the encoder's precision, shared
    by search and final evaluation (`only_at_end`: no checkpoint before the last step). Train
    within `precision.matmuls` of the same choice."""
    training = study.config.training
    return LoopSettings(
        eval_every_examples=training.eval_every_examples,
        eval_batch_size=evaluation_batch_size(training.eval_batch_size, training.max_length,
                                              available_device_memory(study.device)),
        eval_batch_tokens=evaluation_batch_tokens(study.device),
        seed=seed,
        device=study.device,
        autocast_dtype=study.precisions[encoder].mode.autocast,
        pad_to_multiple_of=padding_multiple(study.device, training.compile),
        eval_subset_examples=training.eval_subset_examples,
        group_by_length=training.group_by_length,
        eval_schedule="end" if only_at_end else study.config.eval_schedule(encoder),
        compile=training.compile,
    )


def sample_hyperparameters(trial: optuna.Trial, space: SearchSpace, encoder: EncoderSpec) -> Hyperparameters:
    values = {}
    for name, spec in space:
        if isinstance(spec, CategoricalParam):
            values[name] = trial.suggest_categorical(name, list(spec.choices))
            continue
        override = encoder.overrides.get(name)
        low, high = (override.low, override.high) if override else (spec.low, spec.high)
        if isinstance(spec, FloatParam):
            values[name] = trial.suggest_float(name, low, high, log=spec.log)
        else:
            values[name] = trial.suggest_int(name, int(low), int(high), log=spec.log)
    return Hyperparameters(**values)


def sample_trial(trial: optuna.Trial, study: DatasetStudy) -> tuple[str, Hyperparameters]:
    """The trial's encoder and hyperparameters; the trial says where and how it runs."""
    encoder_name = trial.suggest_categorical(ENCODER_PARAM, list(study.encoder_choices))
    encoder = study.encoders[encoder_name]
    hp = sample_hyperparameters(trial, study.config.search_space, study.config.encoders[encoder_name])
    trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr(MODEL_TYPE_ATTR, encoder.model_type)
    trial.set_user_attr(POOLING_ATTR, encoder.pooling)
    trial.set_user_attr(DEVICE_ATTR, str(study.device))
    trial.set_user_attr(PRECISION_ATTR, study.precisions[encoder_name].choice)
    return encoder_name, hp


def start_run(trial: optuna.Trial, study: DatasetStudy, encoder_name: str, hp: Hyperparameters) -> TrialRun:
    """The trial's record in the trackers; the trial keeps their ids."""
    run = study.tracker.start_trial(
        study.study_name, trial.number, {ENCODER_PARAM: encoder_name, **asdict(hp)},
        {"study": study.study_name, "dataset": study.data.name, "encoder": encoder_name},
    )
    run = with_trial_note(run, trial, encoder_name, study.metric)
    for key, value in run.links().items():
        trial.set_user_attr(key, value)
    return run


@contextmanager
def trial_outcome(trial: optuna.Trial, run: TrialRun) -> Iterator[None]:
    """Finishes the tracker run as the block ended and says why on the trial: pruned (by the
    pruner, or a diverged loss), failed (any other error) or interrupted (Ctrl-C, SIGTERM)."""
    try:
        yield
        run.finish("complete", None)
    except optuna.TrialPruned as pruned:
        trial.set_user_attr(PRUNE_REASON_ATTR, str(pruned))
        run.finish("pruned", str(pruned))
        raise
    except NonFiniteLoss as diverged:
        reason = f"non-finite loss: {diverged}"
        trial.set_user_attr(PRUNE_REASON_ATTR, reason)
        run.finish("pruned", reason)
        raise optuna.TrialPruned(reason) from None
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        trial.set_user_attr(FAIL_REASON_ATTR, reason[:1000])
        run.finish("failed", reason)
        raise
    except KeyboardInterrupt:
        # Optuna records the trial as FAIL; this says the user stopped it, so that nothing
        # counts it as a failure of its configuration.
        trial.set_user_attr(INTERRUPTED_ATTR, True)
        trial.set_user_attr(FAIL_REASON_ATTR, INTERRUPTED_REASON)
        run.finish("interrupted", INTERRUPTED_REASON)  # MLflow: KILLED, not FAILED
        raise


@dataclass
class TrialCost:
    """What a trial spent, by every attempt: the cost side of the comparison, so pruned and
    failed trials keep it too."""

    started: float = field(default_factory=time.perf_counter)
    progress: TrainingResult = field(default_factory=TrainingResult)  # the training loop's timings
    tokens: int = 0  # real tokens of the steps handed to `on_step`

    def save(self, trial: optuna.Trial) -> None:
        trial.set_user_attr(WALL_SECONDS_ATTR, round(time.perf_counter() - self.started, 3))
        trial.set_user_attr(TRAIN_SECONDS_ATTR, round(self.progress.train_seconds, 3))
        trial.set_user_attr(EVAL_SECONDS_ATTR, round(self.progress.eval_seconds, 3))
        trial.set_user_attr(TRAIN_TOKENS_ATTR, self.tokens)
        trial.set_user_attr(EVAL_TOKENS_ATTR, self.progress.eval_tokens)


def trial_callbacks(trial: optuna.Trial, study: DatasetStudy, run: TrialRun, cost: TrialCost
                    ) -> tuple[Callable[[StepLog], None], Callable[[Evaluation], None]]:
    """The training loop's `on_step` and `on_evaluation`: every step to the trackers, every
    checkpoint to the trackers and to the pruner, which may stop the trial there."""
    reported_through = -1  # examples: the last checkpoint reported, by any attempt

    # Both are called from the training's interruptible computation, and write to the trackers
    # and the storage: deferred (see benchmark/interrupts.py).
    def on_step(log: StepLog) -> None:
        with interrupts.deferred():
            cost.tokens += log.tokens
            run.log_step(log)

    def on_evaluation(evaluation: Evaluation) -> None:
        nonlocal reported_through
        # After an out-of-memory retry, the checkpoints the failed attempt reported stay its
        # own (Optuna keeps a step's first report): asking the pruner there again would have
        # it read the failed attempt's later checkpoints as this one's.
        if evaluation.examples <= reported_through:
            return
        reported_through = evaluation.examples
        value = evaluation.metrics[study.metric]
        with interrupts.deferred():
            run.log_evaluation(evaluation)
            trial.report(value, evaluation.examples)
            prune = not evaluation.last and trial.should_prune()
        if prune:
            raise optuna.TrialPruned(
                f"pruned after {evaluation.examples} examples with {study.metric} {value:.4f}")

    return on_step, on_evaluation


def seeded_classifier(study: DatasetStudy, encoder: Encoder, hp: Hyperparameters, seed: int) -> torch.nn.Module:
    # The new classification head is drawn from the global generator: seed it per trial,
    # so trial k trains the same model whichever worker runs it, and after whatever.
    torch.manual_seed(seed)
    return load_classifier(encoder, study.data.label_names, hp.dropout)


def fine_tune_with_oom_retry(trial: optuna.Trial, study: DatasetStudy, encoder: Encoder, hp: Hyperparameters,
                             tokenized: TokenizedData, settings: LoopSettings, cost: TrialCost,
                             on_step: Callable[[StepLog], None],
                             on_evaluation: Callable[[Evaluation], None]) -> TrainingResult:
    """Fine-tune; if memory runs out, once more from fresh weights with half the micro-batch (the
    same effective batch) and half the evaluation batch: the memory may have run out in either."""
    with interrupts.interruptible():
        model = seeded_classifier(study, encoder, hp, settings.seed)
    trial.set_user_attr(NUM_PARAMETERS_ATTR, sum(p.numel() for p in model.parameters()))
    trial.set_user_attr(LOAD_SECONDS_ATTR, round(time.perf_counter() - cost.started, 3))
    try:
        with interrupts.interruptible():
            return fine_tune(model, tokenized.train, tokenized.validation, study.data.num_labels,
                             hp, settings, on_step, on_evaluation, cost.progress)
    except Exception as error:
        if not is_out_of_memory(error) or (hp.batch_size, settings.eval_batch_size) == (1, 1):
            raise
        out_of_memory = type(error).__name__
    # Retried only here, past the handler: its traceback holds the failed attempt's
    # activations, and the memory comes back only once the handler has ended.
    micro_batch, eval_batch = max(1, hp.batch_size // 2), max(1, settings.eval_batch_size // 2)
    trial.set_user_attr(OOM_RETRY_ATTR, f"{out_of_memory} after {cost.progress.train_seconds:.1f} s of training; "
                                        f"retried with micro-batch {micro_batch} and evaluation batch {eval_batch}")
    model = None
    release_memory(study.device)
    with interrupts.interruptible():
        model = seeded_classifier(study, encoder, hp, settings.seed)
        # `cost.progress` carries on: the failed attempt's seconds were spent too.
        return fine_tune(model, tokenized.train, tokenized.validation, study.data.num_labels, hp,
                         replace(settings, micro_batch_size=micro_batch, eval_batch_size=eval_batch),
                         on_step, on_evaluation, cost.progress)


def run_trial(trial: optuna.Trial, study: DatasetStudy, seed: int | None = None) -> float:
    """Train one sampled configuration; the value is the final validation metric.

    It trains with seed `seed + trial.number`, `seed` being the run's (the command line's is
    `training.seed`, the default): runs with other seeds train other models, not only other draws."""
    encoder_name, hp = sample_trial(trial, study)
    encoder = study.encoders[encoder_name]
    run = start_run(trial, study, encoder_name, hp)
    cost = TrialCost()
    try:
        with trial_outcome(trial, run):
            training = study.config.training
            with interrupts.interruptible():
                tokenized = study.tokenization.get(
                    study.data, (encoder.location, encoder.revision), training.max_length,
                    lambda: load_tokenizer(encoder))
            settings = loop_settings(study, encoder_name, (training.seed if seed is None else seed) + trial.number)
            on_step, on_evaluation = trial_callbacks(trial, study, run, cost)
            with precision.matmuls(study.precisions[encoder_name].choice):
                result = fine_tune_with_oom_retry(trial, study, encoder, hp, tokenized, settings, cost,
                                                  on_step, on_evaluation)
            final = result.final
            for name, value in final.metrics.items():
                trial.set_user_attr(VALIDATION_ATTR_PREFIX + name, value)
            trial.set_user_attr(VALIDATION_ATTR_PREFIX + "loss", final.loss)
            trial.set_user_attr(STEPS_ATTR, result.steps)
            return final.metrics[study.metric]
    finally:
        cost.save(trial)
        release_memory(study.device)
