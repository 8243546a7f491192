"""What the training loop hands out: a trial's hyperparameters, each step's log and each
evaluation. Plain records without torch, so that the trackers, which receive them, do not
load the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass

from benchmark.config.hyperparameters import HYPERPARAMETERS

# A field with a default is keyword-only, so that a hyperparameter appended after one (the
# order trials suggest them in, config/hyperparameters.py) may still have none.
Hyperparameters = make_dataclass(
    "Hyperparameters",
    [(h.name, h.value_type) if h.default is None else
     (h.name, h.value_type, field(default=h.default, kw_only=True)) for h in HYPERPARAMETERS],
    frozen=True,
)
Hyperparameters.__module__ = __name__  # for pickling, where make_dataclass cannot take it (Python < 3.12)
Hyperparameters.__doc__ = "One trial's training settings, as sampled from the search space:\n\n" + "\n".join(
    f"- {h.name}: {h.used_by}" for h in HYPERPARAMETERS)


@dataclass(frozen=True)
class StepLog:
    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    tokens: int = 0  # real (non-padding) tokens in the step's batch


@dataclass(frozen=True)
class Evaluation:
    step: int
    examples: int  # training examples seen: the resource the pruner compares trials at
    epoch: float
    loss: float
    metrics: dict[str, float]
    last: bool = False  # the end of training: nothing is left to save by stopping
