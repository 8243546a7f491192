"""Per-encoder pruning: a trial is compared only with trials of its own encoder."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from benchmark.config.spec import PrunerSpec
from benchmark.search.pruning import make_pruner

ENCODERS = {"encoder": CategoricalDistribution(["mpnet", "minilm"])}


def _trial(study: optuna.Study, encoder: str, value: float) -> bool:
    """One trial of `encoder` that reports `value` at step 1, asks the pruner, and finishes; True if pruned."""
    study.enqueue_trial({"encoder": encoder})
    trial = study.ask(ENCODERS)
    trial.report(value, 1)
    pruned = bool(trial.should_prune())
    study.tell(trial, None if pruned else value,
               state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE)
    return pruned


@pytest.mark.parametrize("kind", ["median", "successive_halving", "hyperband"])
def test_a_slow_encoder_is_pruned_against_its_own_trials_only(tmp_path, kind):
    def study(per_encoder: bool) -> optuna.Study:
        spec = PrunerSpec(type=kind, n_startup_trials=2, min_resource=1, reduction_factor=3, per_encoder=per_encoder)
        return optuna.create_study(storage=f"sqlite:///{tmp_path}/{per_encoder}.db", direction="maximize",
                                   pruner=make_pruner(spec))

    stock, per_encoder = study(per_encoder=False), study(per_encoder=True)
    for each in (stock, per_encoder):
        assert [_trial(each, "mpnet", 0.9) for _ in range(3)] == [False, False, False]
    # The first MiniLM trial, at 0.3 after one step: the median of the complete trials at
    # that step is 0.9, and the successive-halving rung (one bracket: every trial reported
    # at step 1 only) keeps the top third of [0.9, 0.9, 0.9, 0.3]. Both prune it when they
    # see MPNet's trials; against MiniLM's own (none yet) neither does.
    assert _trial(stock, "minilm", 0.3) is True
    assert _trial(per_encoder, "minilm", 0.3) is False
    # Within the encoder, pruning still works: after MiniLM's 0.3 and 0.5, a 0.2 is below
    # their median (0.4) and outside the rung's top third of [0.3, 0.5, 0.2].
    assert _trial(per_encoder, "minilm", 0.5) is False
    assert _trial(per_encoder, "minilm", 0.2) is True


def test_none_never_prunes_and_per_encoder_needs_no_encoder_param(tmp_path):
    assert isinstance(make_pruner(PrunerSpec(type="none")), optuna.pruners.NopPruner)
    # A study without an encoder parameter (one encoder's final evaluation) still prunes.
    study = optuna.create_study(direction="maximize", pruner=make_pruner(PrunerSpec(n_startup_trials=1)))
    first = study.ask()
    first.report(0.9, 1)
    study.tell(first, 0.9)
    second = study.ask()
    second.report(0.1, 1)
    assert second.should_prune()
