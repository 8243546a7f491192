"""The hyperparameters every trial samples besides its encoder, declared once each.

The config's `search_space` (config/spec.py) and the record a trial trains with
(`train.records.Hyperparameters`) are both built from `HYPERPARAMETERS`, so a new
hyperparameter is one entry here, plus the training code that reads it from the record
(`hp.<name>`) and the YAMLs that search it. Trials suggest the hyperparameters in this
order, and the order decides which value each draw gives: append a new one, never insert.

No pydantic, torch or Optuna here: the torch-free record imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

# Far above any batch that fits in memory, and small enough that the batch sizes a range
# allows can be listed (see `BenchmarkConfig.batch_sizes`).
MAX_BATCH_SIZE = 65536

# The training loss's class weights: `balanced` weighs each class by n_samples / (n_classes *
# its count) in the train split (scikit-learn's "balanced"), so a rare class is not drowned
# out by the majority one; `none` weighs every example alike.
ClassWeights = Literal["none", "balanced"]
CLASS_WEIGHTS = get_args(ClassWeights)


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: what a search space may sample for it and where training reads it."""

    name: str
    # `float`: a float or int range, or choices; `int`: an int range or choices; `name`: text
    # choices only (a categorical parameter).
    kind: Literal["float", "int", "name"]
    # What each sampled value must satisfy, checked at a range's bounds (every rule is an
    # interval) and at each choice, and the rule in words for the error message.
    allowed: Callable[[object], bool]
    allowed_text: str
    # Where the trial's value reaches training, for whoever changes either side.
    used_by: str
    # Unset in `search_space`, the search space is this one value (a one-choice categorical),
    # and the record's field defaults to it; None: `search_space` must set it.
    default: object = None

    @property
    def value_type(self) -> type:
        """The type of the record's field (an int range of a `float` hyperparameter gives ints)."""
        return {"float": float, "int": int, "name": str}[self.kind]


HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    Hyperparameter("learning_rate", "float", lambda v: v > 0, "positive numbers",
                   "AdamW's peak learning rate (train.loop)"),
    Hyperparameter("warmup_ratio", "float", lambda v: 0 <= v < 1, "numbers in [0, 1)",
                   "the share of steps the learning rate warms up over (train.loop)"),
    Hyperparameter("dropout", "float", lambda v: 0 <= v < 1, "numbers in [0, 1)",
                   "the classifier's dropout, set when it is loaded (train.encoders.load_classifier)"),
    # A norm of 0 clips every gradient to zero: the model would not train.
    Hyperparameter("max_grad_norm", "float", lambda v: v > 0, "positive numbers",
                   "the gradient norm clipped to at each step (train.loop)"),
    Hyperparameter("weight_decay", "float", lambda v: v >= 0, "non-negative numbers",
                   "AdamW's weight decay of the weight matrices (train.loop)"),
    Hyperparameter("batch_size", "int", lambda v: isinstance(v, int) and 1 <= v <= MAX_BATCH_SIZE,
                   f"positive integers up to {MAX_BATCH_SIZE}", "examples per optimizer step (train.loop)"),
    Hyperparameter("num_epochs", "int", lambda v: isinstance(v, int) and v >= 1, "positive integers",
                   "passes over the train split (train.loop)"),
    # Unsearched, it is `training.class_weights` (see `BenchmarkConfig._class_weights_in_space`).
    Hyperparameter("class_weights", "name", lambda v: v in CLASS_WEIGHTS, " or ".join(map(repr, CLASS_WEIGHTS)),
                   "the training loss's class weights (train.loop)", default="none"),
)

HYPERPARAMETERS_BY_NAME = {hyperparameter.name: hyperparameter for hyperparameter in HYPERPARAMETERS}
