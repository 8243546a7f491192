"""`--check`: validates as a run does, prints the plan and its estimate, trains and writes nothing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from benchmark.cli import main
from benchmark.config.spec import CategoricalParam, IntParam, RangeOverride, TrainingSpec, load_config
from benchmark.schema import DATA_SEED_ATTR
from benchmark.search import check
from benchmark.search import trial as trial_module
from benchmark.search.preflight import prepare_studies
from benchmark.train import estimate, precision
from tests.helpers import write_config

REPO = Path(__file__).resolve().parent.parent


def _tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.fixture()
def steps_of_half_a_second(monkeypatch):
    monkeypatch.setattr(precision, "_timed_step", lambda *args: 0.5)
    monkeypatch.setattr(trial_module, "fine_tune", lambda *args, **kwargs: pytest.fail("--check trained"))


def test_check_prints_the_plan_and_an_estimate_and_writes_nothing(tmp_path, tiny_encoders, capsys,
                                                                   steps_of_half_a_second):
    config = write_config(tmp_path, tiny_encoders, training__precision="fp32")
    before = _tree(tmp_path)
    results = tmp_path / "results"
    assert main(["--check", "--config", str(config), "--results-dir", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"storage: sqlite:///{results}/optuna.db (new)" in out
    assert "study tiny-topics (accuracy): new to 4 trials (2 per encoder); to run: bert 2, roberta 2; estimate" in out
    assert "study tiny-topic_pairs (macro_f1): new to 4 trials (2 per encoder); to run: bert 2, roberta 2" in out
    # fp32 is forced, so nothing was measured for the choice: the check timed its own steps.
    assert "one training step of 16x32 in fp32: 0.50 s" in out
    assert "estimate: " in out and "for 8 trial(s) in 2 study(ies)" in out and "upper bound" in out
    assert ("estimate rests on: each encoder's training step timed here in its precision (bert fp32 at 16x32, "
            "roberta fp32 at 16x32 tokens)") in out
    assert "dataset topics: 3 classes, train " in out and "'politics' " in out
    assert out.rstrip().endswith("check: nothing was trained or written")
    assert not results.exists()
    assert _tree(tmp_path) == before


def test_check_reports_what_an_existing_storage_holds_and_only_reads_it(tmp_path, tiny_encoders, capsys,
                                                                        steps_of_half_a_second):
    config = write_config(tmp_path, tiny_encoders, training__precision="fp32")
    url = f"sqlite:///{tmp_path / 'held.db'}"
    study = optuna.create_study(storage=url, study_name="tiny-topics", direction="maximize")
    study.set_user_attr(DATA_SEED_ATTR, 0)
    encoder = optuna.distributions.CategoricalDistribution(["bert", "roberta"])
    for name in ("bert", "roberta", "bert"):
        study.add_trial(optuna.trial.create_trial(params={"encoder": name}, distributions={"encoder": encoder},
                                                  value=0.5))
    stored = hashlib.sha256((tmp_path / "held.db").read_bytes()).hexdigest()
    assert main(["--check", "--config", str(config), "--storage", url, "--datasets", "topics"]) == 0
    out = capsys.readouterr().out
    assert f"storage: {url} (holds 1 studies)" in out
    assert ("study tiny-topics (accuracy): the storage holds 3 finished trial(s) (bert 2, roberta 1), topped up "
            "to 4 trials (2 per encoder); to run: bert 0, roberta 1; estimate") in out
    assert "for 1 trial(s) in 1 study(ies)" in out
    assert hashlib.sha256((tmp_path / "held.db").read_bytes()).hexdigest() == stored

    # The run's own preflight checks run too: a study split with another seed is refused.
    assert main(["--check", "--config", str(config), "--storage", url, "--seed", "1"]) == 2
    assert "--seed: study 'tiny-topics' was run with seed 0" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["--study", "--check"])
def test_a_bad_config_fails_before_torch_is_imported(tmp_path, mode):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nencoders: {}\n")
    script = ("import sys\nfrom benchmark.cli import main\n"
              f"code = main([{mode!r}, '--config', {str(bad)!r}])\n"
              "print(code, sorted(m for m in ('torch', 'transformers', 'optuna', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "2 []", done.stderr
    assert done.stderr.startswith(f"error: {bad}: encoders: ")


def test_prior_as_random_sampling_draws_it():
    assert estimate.prior(CategoricalParam(type="categorical", choices=(16, 32, 32))) == {16: 1 / 3, 32: 2 / 3}
    assert estimate.prior(IntParam(type="int", low=1, high=3)) == {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}
    # Optuna rounds a uniform draw over [log 0.5, log 3.5]: log 3, log(5/3), log(7/5) of log 7.
    log_scale = estimate.prior(IntParam(type="int", low=1, high=3, log=True))
    assert log_scale == pytest.approx({1: 0.564575, 2: 0.262513, 3: 0.172912}, abs=1e-6)
    assert estimate.prior(IntParam(type="int", low=1, high=3), RangeOverride(low=1, high=1)) == {1: 1.0}


def test_padded_width_is_the_mean_when_grouped_else_the_expected_longest_of_a_batch():
    lengths = np.array([2, 4])
    assert estimate.padded_width(lengths, 2, grouped=True) == 3.0
    # Two draws: both 2 with probability 1/4, else a 4 pads the batch to 4.
    assert estimate.padded_width(lengths, 2, grouped=False) == pytest.approx(0.25 * 2 + 0.75 * 4)


def test_trial_seconds_by_hand():
    training = TrainingSpec(eval_every_examples=4, eval_subset_examples=2)
    train, validation = np.full(10, 5), np.array([2, 4, 2, 4])
    # 1 epoch: 5 steps of 2 x 5 tokens = 50; checkpoints at steps 2, 4 (2-example subset) and 5
    # (all 4): 8 examples x 3 tokens = 24, a third of a step's cost each: 0.01 x (50 + 8) = 0.58.
    # 2 epochs: 100 tokens; checkpoints 2, 4, 6, 8 and 10: 12 examples x 3: 0.01 x (100 + 12) = 1.12.
    cost = estimate.trial_estimate(0.01, train, validation, {2: 1.0}, {1: 0.5, 2: 0.5}, training,
                                   training.eval_schedule)
    assert cost.seconds == pytest.approx(0.5 * 0.58 + 0.5 * 1.12)
    # of which the checkpoints: 2, then 4 subsets of 2 examples x 3 tokens, a third of a step each
    assert cost.checkpoint_seconds == pytest.approx(0.01 * (0.5 * 2 + 0.5 * 4) * 2)
    # pruned at its first checkpoint (step 2), the 2-epoch trial saves 8 steps of 10 tokens
    assert cost.most_saved_seconds == pytest.approx(0.01 * 80)
    # a pruner warming up for 8 examples acts from step 4 on: 6 steps saved at most
    warm = estimate.trial_estimate(0.01, train, validation, {2: 1.0}, {1: 0.5, 2: 0.5}, training,
                                   training.eval_schedule, warmup_examples=8)
    assert warm.most_saved_seconds == pytest.approx(0.01 * 60) and warm.seconds == cost.seconds
    # an encoder that is not pruned evaluates only at the end: 4 examples x 3 tokens either way,
    # 0.01 x (50 + 4) and 0.01 x (100 + 4), and a prune can save nothing
    unpruned = estimate.trial_estimate(0.01, train, validation, {2: 1.0}, {1: 0.5, 2: 0.5}, training, "end")
    assert unpruned == estimate.TrialEstimate(pytest.approx(0.5 * 0.54 + 0.5 * 1.04), 0.0, 0.0)


def test_pruning_advice_compares_every_trials_checkpoints_with_the_most_its_prunable_trials_save(tmp_path,
                                                                                                tiny_encoders):
    def config(**overrides):
        return load_config(write_config(tmp_path, tiny_encoders, budget__n_trials=6, **overrides))

    # per study: 3 trials of bert, 2 of them the pruner's startup trials; two studies
    costs = [estimate.TrialEstimate(seconds=10.0, checkpoint_seconds=2.0, most_saved_seconds=3.0),
             estimate.TrialEstimate(seconds=10.0, checkpoint_seconds=2.0, most_saved_seconds=1.0)]
    median = config(pruner={"type": "median", "n_startup_trials": 2})
    # 3 x (2 + 2) = 12 s of checkpoints against 1 x (3 + 1) = 4 s saved at most
    advice = check._pruning_advice(median, "bert", 6, costs)
    assert advice.startswith("pruning bert: its checkpoint evaluations would take about 12 s over the 2 studies, "
                             "more than pruning could save (at most 4 s: 1 of its 3 trials a study can be pruned")
    assert "`prune: false` under encoders.bert" in advice
    # where one prunable trial could save as much as every trial's checkpoints cost, no advice
    assert check._pruning_advice(median, "bert", 6, [estimate.TrialEstimate(10.0, 2.0, 6.0)] * 2) is None
    # Hyperband has no startup trials: all 3 may be pruned, 12 s against 12 s
    assert check._pruning_advice(config(pruner={"type": "hyperband"}), "bert", 6, costs) is None
    # nothing is pruned: nothing to advise
    assert check._pruning_advice(config(pruner={"type": "none"}), "bert", 6, costs) is None
    assert check._pruning_advice(config(pruner={"type": "median", "n_startup_trials": 2},
                                        encoders__bert__prune=False), "bert", 6, costs) is None


def test_check_advises_against_pruning_an_encoder_whose_trials_are_all_startup_trials(tmp_path, tiny_encoders,
                                                                                       capsys, steps_of_half_a_second):
    # 2 trials per encoder, both the pruner's startup trials: no trial can be pruned
    config = write_config(tmp_path, tiny_encoders, training__precision="fp32",
                          pruner={"type": "median", "n_startup_trials": 2})
    assert main(["--check", "--config", str(config), "--datasets", "topics"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pruning ")]
    assert [line.split(":")[0] for line in lines] == ["pruning bert", "pruning roberta"]
    assert all("(at most 0 s: 0 of its 2 trials a study can be pruned" in line for line in lines)


def test_remaining_trials_fill_the_fewest_first_or_share_equally_in_search_mode():
    assert estimate.remaining_trials(6, {"a": 2, "b": 1}, ["a", "b"], balanced=True) == {"a": 1, "b": 2}
    assert estimate.remaining_trials(6, {"a": 2, "b": 1}, ["a", "b"], balanced=False) == {"a": 1.5, "b": 1.5}
    assert estimate.remaining_trials(4, {"a": 3, "b": 2}, ["a", "b"], balanced=True) == {"a": 0, "b": 0}


def test_duration_text():
    assert [estimate.duration_text(s) for s in (45, 200, 7500)] == ["45 s", "3 min 20 s", "2 h 05 min"]


def test_check_shows_each_encoders_precision_and_times_it_once(tmp_path, tiny_encoders, monkeypatch, capsys):
    per_token = {("fp32", "bert"): 1e-3, ("bf16", "bert"): 4e-4, ("fp32", "roberta"): 1e-3, ("bf16", "roberta"): 3e-3}
    monkeypatch.setattr(precision, "_timed_step", lambda model, inputs, labels, device, name, left_s:
                        per_token[name, model.config.model_type] * inputs["input_ids"].numel())
    measured, real = [], precision.measure_encoder
    monkeypatch.setattr(precision, "measure_encoder",
                        lambda encoder, *args: measured.append((encoder.name, *args[-1:])) or real(encoder, *args))
    config = write_config(tmp_path, tiny_encoders)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["--check", "--config", str(config), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert measured == [("bert", ["fp32", "bf16"]), ("roberta", ["fp32", "bf16"])]  # the estimate reuses them
    assert "precision bert: bf16 (measured at 16x32 after an untimed warm-up step each" in out
    assert "precision roberta: fp32 (measured at 16x32" in out and "the run decides the same way" in out
    assert "one training step of 16x32 in bf16: 0.20 s" in out and "one training step of 16x32 in fp32: 0.51 s" in out
    assert "timed here in its precision (bert bf16 at 16x32, roberta fp32 at 16x32 tokens)" in out

    # Once a run has stored the choices, the check shows them and times only them.
    monkeypatch.setattr(precision, "measure_encoder", real)
    prepare_studies(load_config(config), url, ["none"], tmp_path)  # what a run stores before its first trial
    per_token[("bf16", "bert")] = 1.0  # what this machine would choose now no longer matters
    monkeypatch.setattr(precision, "measure_encoder",
                        lambda encoder, *args: measured.append((encoder.name, *args[-1:])) or real(encoder, *args))
    measured.clear()
    assert main(["--check", "--config", str(config), "--storage", url]) == 0
    out = capsys.readouterr().out
    assert measured == [("bert", ["bf16"]), ("roberta", ["fp32"])]
    assert "precision bert: bf16 (measured at 16x32" in out and "stored in a study: the run keeps it" in out


def test_check_says_which_encoder_is_not_pruned_and_estimates_its_trials_without_checkpoints(
        tmp_path, tiny_encoders, capsys, steps_of_half_a_second, monkeypatch):
    schedules = []
    real = estimate.trial_estimate
    monkeypatch.setattr(estimate, "trial_estimate", lambda *args: schedules.append(args[-2]) or real(*args))
    config = write_config(tmp_path, tiny_encoders, training__precision="fp32", training__eval_schedule="geometric",
                          encoders__roberta__prune=False)
    assert main(["--check", "--config", str(config), "--datasets", "topics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    note = "not pruned (prune: false): evaluated at the end of each trial only"
    assert note in next(line for line in lines if line.startswith("encoder roberta:"))
    assert note not in next(line for line in lines if line.startswith("encoder bert:"))
    assert schedules == ["geometric", "end"]  # bert's checkpoints are estimated, roberta's end only


def test_check_reads_a_storage_named_with_a_query_string(tmp_path, tiny_encoders, capsys, steps_of_half_a_second):
    """`--check` reads the file that `--study` wrote to, with a query string on its URL or not."""
    config = write_config(tmp_path, tiny_encoders, training__precision="fp32")
    optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="tiny-topics")
    url = f"sqlite:///{tmp_path / 's.db'}?timeout=30"
    assert main(["--check", "--config", str(config), "--storage", url, "--datasets", "topics"]) == 0
    assert f"storage: {url} (holds 1 studies)" in capsys.readouterr().out


@pytest.mark.parametrize("flags, warned", [(["--timeout", "5"], True), (["--timeout", "100000"], False), ([], False)])
def test_check_warns_when_one_trial_outlasts_the_timeout(tmp_path, tiny_encoders, capsys, steps_of_half_a_second,
                                                         flags, warned):
    """A trial longer than the whole timeout (`num_epochs: 1000` against 5 s) would run until it was
    killed: `--check` says so before any time is spent."""
    config = write_config(tmp_path, tiny_encoders, encoders=("bert",), training__precision="fp32",
                          search_space__num_epochs={"type": "int", "low": 1000, "high": 1000})
    assert main(["--check", "--config", str(config), "--datasets", "topics", *flags]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("warning: study tiny-topics")]
    assert len(lines) == warned, err
    if warned:
        assert lines[0].startswith("warning: study tiny-topics: one bert trial is estimated at ")
        assert lines[0].endswith("longer than the timeout of 5 s (--timeout or budget.timeout_s), which starts no "
                                 "new trial after it but stops none that runs; lower search_space.num_epochs or "
                                 "raise the timeout")
