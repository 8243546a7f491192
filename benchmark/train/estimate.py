"""How long a run will take, estimated before it starts (`--check`), from measured step times.

Pure functions: the measurements and the token lengths come in, seconds go out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from benchmark.config.spec import CategoricalParam, IntParam, RangeOverride, TrainingSpec
from benchmark.train.loop import checkpoint_steps

# An evaluation runs the forward pass only: about a third of a training step's compute per
# token (the backward pass computes two gradients for each weight multiplication).
FORWARD_SHARE = 1 / 3


def prior(spec: IntParam | CategoricalParam, override: RangeOverride | None = None) -> dict[int, float]:
    """Each value's probability as random sampling draws it (the startup trials of TPE too):
    uniform over the choices or the integers, or, on a log scale, as Optuna rounds a uniform draw
    over [log(low - 0.5), log(high + 0.5)]."""
    if isinstance(spec, CategoricalParam):
        return {value: count / len(spec.choices) for value, count in Counter(spec.choices).items()}
    low, high = (int(override.low), int(override.high)) if override else (spec.low, spec.high)
    if not spec.log:
        return {value: 1 / (high - low + 1) for value in range(low, high + 1)}
    span = math.log(high + 0.5) - math.log(low - 0.5)
    return {value: (math.log(value + 0.5) - math.log(value - 0.5)) / span for value in range(low, high + 1)}


def padded_width(lengths: np.ndarray, batch_size: int, grouped: bool) -> float:
    """Expected tokens per example in a training batch, padding included (a batch is padded to
    its longest example). Grouped by length, a batch holds similar lengths: the mean length.
    Shuffled: the expected longest of `batch_size` draws from the lengths."""
    if grouped:
        return float(np.mean(lengths))
    values, counts = np.unique(lengths, return_counts=True)
    at_most = np.cumsum(counts) / counts.sum()
    below = np.concatenate([[0.0], at_most[:-1]])
    return float(np.sum(values * (at_most ** batch_size - below ** batch_size)))


@dataclass(frozen=True)
class TrialEstimate:
    """One trial's estimated seconds."""

    seconds: float  # expected, run to its end
    checkpoint_seconds: float  # expected, of which its pruning checkpoints' evaluations
    # The most one prune can save: the training after the first checkpoint the pruner may act
    # at, in the longest trial the space allows.
    most_saved_seconds: float


def trial_estimate(seconds_per_token: float, train_lengths: np.ndarray, validation_lengths: np.ndarray,
                   batch_sizes: dict[int, float], epochs: dict[int, float], training: TrainingSpec,
                   schedule: str, warmup_examples: int = 0) -> TrialEstimate:
    """Expected seconds of one trial that runs to its end: its training tokens (full batches,
    padded) at `seconds_per_token`, plus its evaluations (the subset at the checkpoints of
    `schedule`, then the whole validation split at the end; sorted by length, so unpadded) at
    FORWARD_SHARE of it. A pruner acts at checkpoints from `warmup_examples` on."""
    validation = len(validation_lengths)
    subset = min(training.eval_subset_examples or validation, validation)
    validation_width = float(np.mean(validation_lengths))
    per_checkpoint = FORWARD_SHARE * subset * validation_width * seconds_per_token
    expected = expected_checkpoints = most_saved = 0.0
    for batch_size, batch_p in batch_sizes.items():
        width = padded_width(train_lengths, batch_size, training.group_by_length)
        steps_per_epoch = len(train_lengths) // batch_size
        for num_epochs, epochs_p in epochs.items():
            *checkpoints, total = checkpoint_steps(steps_per_epoch, num_epochs, batch_size,
                                                   training.eval_every_examples, schedule)
            train_tokens = total * batch_size * width
            eval_tokens = (subset * len(checkpoints) + validation) * validation_width
            expected += batch_p * epochs_p * seconds_per_token * (train_tokens + FORWARD_SHARE * eval_tokens)
            expected_checkpoints += batch_p * epochs_p * len(checkpoints) * per_checkpoint
            acting = [step for step in checkpoints if step * batch_size >= warmup_examples]
            if acting:
                most_saved = max(most_saved, (total - acting[0]) * batch_size * width * seconds_per_token)
    return TrialEstimate(expected, expected_checkpoints, most_saved)


def remaining_trials(n_trials: int, finished: dict[str, int], encoders: list[str], balanced: bool) -> dict[str, float]:
    """Per encoder, the trials a run adds to a study that holds `finished` of them: in the
    balanced comparison always to an encoder with the fewest; in search mode the sampler
    picks, so an equal share each is what is expected."""
    to_run = max(0, n_trials - sum(finished.values()))
    if not balanced:
        return {encoder: to_run / len(encoders) for encoder in encoders}
    counts = {encoder: finished.get(encoder, 0) for encoder in encoders}
    added = dict.fromkeys(encoders, 0)
    for _ in range(to_run):
        encoder = min(encoders, key=lambda name: counts[name])
        counts[encoder] += 1
        added[encoder] += 1
    return added


def duration_text(seconds: float) -> str:
    """`45 s`, `3 min 20 s`, `2 h 05 min`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
