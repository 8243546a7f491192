"""`precision: auto` decides per encoder from warm, like-for-like timings within BUDGET_S; the
decision replays three measured devices through fake timers. A forced precision is not measured."""

from __future__ import annotations

import optuna
import pytest
import torch

from benchmark.config.spec import EncoderSpec, load_config
from benchmark.errors import BenchmarkError
from benchmark.search.preflight import prepare_studies
from benchmark.train import precision
from benchmark.train.encoders import resolve
from benchmark.train.precision import (
    BUDGET_S,
    FORCED,
    EncoderPrecision,
    candidates,
    choose,
    decide,
    measure,
    measure_encoder,
)
from tests.helpers import write_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_encoders):
    return [resolve(name, EncoderSpec(source="local", path=tiny_encoders[name])) for name in ("bert", "distilbert")]


class FakeDevice:
    """A timer: warm seconds per step from `warm(candidate, tokens)` (tokens = batch x length),
    the first call of each (candidate, shape) `cold(...)` times slower. Records every call."""

    def __init__(self, warm, cold=lambda name, batch, tokens, first: 1.0):
        self.warm, self.cold = warm, cold
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, name: str, batch: int, tokens: int, left_s: float) -> float:
        first = (name, batch, tokens) not in self.calls
        self.calls.append((name, batch, tokens))
        seconds = self.warm(name, batch * tokens)
        seconds = seconds * self.cold(name, batch, tokens, not self.calls[:-1]) if first else seconds
        if seconds > left_s:  # stopped there, as a real step is between its layers
            raise precision.OutOfBudget(max(left_s, 0.0))
        return seconds


def linear(points: dict[str, tuple[float, float]], at: tuple[int, int]):
    """Warm step seconds linear in tokens through each candidate's two measured (ms) points."""
    def warm(name: str, tokens: int) -> float:
        low, high = points[name]
        slope = (high - low) / (at[1] - at[0])
        return (low + slope * (tokens - at[0])) / 1000

    return warm


# Measured on an H200: warm ms per step at 32x128 and 128x128 tokens.
H200 = {
    "minilm": {"fp32": (13.3, 34.0), "tf32": (16.9, 18.9), "bf16": (17.6, 22.8)},
    "bert-base": {"fp32": (57.8, 195.7), "tf32": (28.7, 62.5), "bf16": (41.4, 42.0)},
}
H200_FIRST_BF16_MS = {("minilm", 32): 2148, ("minilm", 128): 236, ("bert-base", 32): 235, ("bert-base", 128): 258}


def h200(model: str) -> FakeDevice:
    def cold(name, batch, tokens, first_of_process):
        if first_of_process:
            return 100.0  # CUDA's lazy initialization
        if name == "bf16" and (model, batch) in H200_FIRST_BF16_MS and tokens == 128:
            return H200_FIRST_BF16_MS[model, batch] / H200[model]["bf16"][batch == 128]
        return 10.0

    return FakeDevice(linear(H200[model], (32 * 128, 128 * 128)), cold)


@pytest.mark.parametrize(("model", "batch", "winner"), [
    ("minilm", 32, "fp32"), ("minilm", 128, "tf32"), ("bert-base", 32, "tf32"), ("bert-base", 128, "bf16")])
def test_h200_cold_first_calls_do_not_count_and_each_model_gets_its_winner(model, batch, winner):
    device = h200(model)
    measured = measure(["fp32", "tf32", "bf16"], device, batch, 128, BUDGET_S)
    assert measured.choice == winner
    # Warm steps at the search's batch, compared there: the cold first bf16 step (up to 160x
    # fp32's warm one) is an untimed warm-up, and nothing was stopped.
    assert measured.shape == (batch, 128) and measured.stopped == ()
    expected = {name: points[batch == 128] / 1000 for name, points in H200[model].items()}
    assert measured.seconds_per_step == pytest.approx(expected)
    assert measured.spent < 10
    for name in ("fp32", "tf32", "bf16"):
        timed = [call for call in device.calls if call == (name, batch, 128)]
        assert len(timed) == 1 + precision.TIMED_STEPS  # one warm-up, then the timed steps


# Measured on a 2-core AMD EPYC without AVX-512: per 32x64 step, fp32 14.93 s summed over
# MiniLM-L6 and MPNet-base (about 1:5), bf16 28.17x slower.
EPYC_FP32_S = {"minilm-l6": 2.5, "mpnet-base": 12.43}


def cpu(seconds_per_32x64: float, bf16_factor: float) -> FakeDevice:
    per_token = seconds_per_32x64 / (32 * 64)
    return FakeDevice(lambda name, tokens: per_token * tokens * (bf16_factor if name == "bf16" else 1.0),
                      lambda name, batch, tokens, first: 1.5)


@pytest.mark.parametrize("model", EPYC_FP32_S)
def test_epyc_without_fast_bf16_decides_fp32_after_a_probe_well_under_the_budget(model):
    device = cpu(EPYC_FP32_S[model], 28.17)
    measured = measure(["fp32", "bf16"], device, 32, 64, BUDGET_S)
    assert measured.choice == "fp32" and measured.stopped == ("bf16",)
    assert measured.spent < BUDGET_S / 3
    # bf16 never stepped anything bigger than its probe; nothing was left to compare fp32 with.
    assert {call for call in device.calls if call[0] == "bf16"} == {("bf16", 1, precision.PROBE_TOKENS)}
    assert measured.probe_seconds["bf16"] / measured.probe_seconds["fp32"] == pytest.approx(28.17)
    chosen = EncoderPrecision(measured.choice, precision.MEASURED, measured.shape, measured.seconds_per_step,
                              measured.probe_seconds, measured.stopped, measured.unmeasured, 7.0)
    assert "bf16 stopped after its 1-example probe at 28.2x fp32's" in chosen.describe()


@pytest.mark.parametrize("model", EPYC_FP32_S)
def test_xeon_with_slow_avx512_bf16_times_both_within_the_budget_and_keeps_fp32(model):
    # AVX-512 BF16 without AMX: bf16 at 0.9x fp32's speed.
    device = cpu(EPYC_FP32_S[model], 1 / 0.9)
    measured = measure(["fp32", "bf16"], device, 32, 64, BUDGET_S)
    assert measured.choice == "fp32" and measured.stopped == () and measured.unmeasured == ()
    assert measured.seconds_per_step["bf16"] / measured.seconds_per_step["fp32"] == pytest.approx(1 / 0.9)
    assert measured.spent <= BUDGET_S
    batch = measured.shape[0]
    assert batch == (32 if model == "minilm-l6" else 8)  # MPNet-base's 32 would not fit: halved
    assert all(call[1:] in ((batch, 64), (1, precision.PROBE_TOKENS)) for call in device.calls)


def test_a_fast_bf16_cpu_picks_bf16_and_a_lone_fp32_survivor_is_not_timed_further():
    assert measure(["fp32", "bf16"], cpu(2.0, 0.5), 32, 64, BUDGET_S).choice == "bf16"
    stopped = cpu(2.0, 50.0)
    assert measure(["fp32", "bf16"], stopped, 32, 64, BUDGET_S).shape == (1, precision.PROBE_TOKENS)
    assert all(batch == 1 for _, batch, _ in stopped.calls)


# Measured on this project's AMD EPYC with its ISA capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2,
# ATEN_CPU_CAPABILITY=avx2), MiniLM-L6: ms per step at the probe (1x16) and at 32x64. bf16's
# probe took 3.8x fp32's, its batch step 18x: the probe understated it.
AVX2_CAPPED_MINILM = {"fp32": (39.4, 824.3), "bf16": (148.3, 15010.0)}


@pytest.mark.parametrize("bf16_at_batch_ms", [15010.0, 40000.0])
def test_a_candidate_far_slower_than_its_probe_said_cannot_overrun_the_budget(bf16_at_batch_ms):
    """With 15 s bf16 steps the old measurement took a warm-up and a timed step, 34 s in all;
    with 40 s ones its warm-up alone overran. Now the warm-up's own time estimates the next
    step, and a step that would overrun is stopped at the budget."""
    points = {**AVX2_CAPPED_MINILM, "bf16": (AVX2_CAPPED_MINILM["bf16"][0], bf16_at_batch_ms)}
    measured = measure(["fp32", "bf16"], FakeDevice(linear(points, (16, 32 * 64))), 32, 64, BUDGET_S)
    assert measured.spent <= BUDGET_S
    assert measured.choice == "fp32" and measured.shape == (32, 64) and measured.unmeasured == ("bf16",)
    assert measured.seconds_per_step == {"fp32": pytest.approx(0.8243)}
    chosen = EncoderPrecision(measured.choice, precision.MEASURED, measured.shape, measured.seconds_per_step,
                              measured.probe_seconds, measured.stopped, measured.unmeasured, 20.0, measured.warm_ups)
    if bf16_at_batch_ms < BUDGET_S * 1000:  # the warm-up finished, and said how slow bf16 is
        assert (f"bf16 not timed: its warm-up step took 15.01 s (18.2x fp32's step), and another would overrun "
                f"the {BUDGET_S:g} s budget") in chosen.describe()
    else:  # the warm-up itself was stopped at the budget
        assert measured.warm_ups == {} and "bf16 not timed: the 30 s budget ran out" in chosen.describe()
    assert EncoderPrecision.from_stored(chosen.stored()) == chosen
    smaller = EncoderPrecision(measured.choice, precision.MEASURED, measured.shape, measured.seconds_per_step,
                               measured.probe_seconds, measured.stopped, ("bf16",), 1.2, None, budget_s=1.0)
    assert "bf16 not timed: the 1 s budget ran out" in smaller.describe(), "the budget it had, not the default"


def test_a_real_step_that_would_overrun_stops_before_its_first_layer_and_leaves_no_hook(tiny):
    model = precision.load_classifier(tiny[0], ("a", "b", "c"), dropout=0.1).train()
    inputs = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    labels = torch.zeros(2, dtype=torch.long)
    with pytest.raises(precision.OutOfBudget) as stopped:
        precision._timed_step(model, inputs, labels, CPU, "fp32", left_s=0.0)
    assert 0 <= stopped.value.seconds < 1
    assert all(param.grad is None for param in model.parameters()), "no backward pass ran"
    assert not any(module._forward_pre_hooks for module in model.modules())
    assert precision._timed_step(model, inputs, labels, CPU, "fp32") > 0  # no limit: a whole step


@pytest.mark.parametrize("budget", [5.0, 0.0])
def test_the_budget_holds_however_slow_the_device(budget):
    # 100 s per 32x64 step in fp32: even one batch step would overrun the budget.
    device = cpu(100.0, 1.0)
    measured = measure(["fp32", "bf16"], device, 32, 64, budget)
    assert measured.shape[0] < 32
    assert measured.spent <= max(budget, 2 * 2 * 100.0 / (32 * 64) * precision.PROBE_TOKENS)  # the probes at least
    assert "fp32" in measured.seconds_per_step  # a decision all the same


def test_candidates_per_device(monkeypatch):
    assert candidates(CPU) == ["fp32", "bf16"]
    assert candidates(torch.device("mps")) == ["fp32"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (9, 0))
    assert candidates(torch.device("cuda")) == ["fp32", "tf32", "bf16"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: (7, 5))  # a T4: no TF32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert candidates(torch.device("cuda")) == ["fp32"]


def test_anything_but_fp32_wins_only_when_at_least_ten_percent_faster():
    assert choose({"fp32": 2.0, "bf16": 1.0}) == "bf16"
    assert choose({"fp32": 10.0, "bf16": 9.0}) == "bf16"  # exactly 10% faster
    assert choose({"fp32": 10.0, "bf16": 9.5}) == "fp32"  # 5% faster: within the margin
    assert choose({"fp32": 10.0, "tf32": 8.0, "bf16": 7.0}) == "bf16"
    assert choose({"fp32": 10.0, "tf32": 9.5, "bf16": 11.0}) == "fp32"
    assert choose({"bf16": 3.0}) == "bf16"  # a forced one, timed alone


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_a_forced_precision_is_not_measured(tiny, setting, monkeypatch):
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("measured a forced precision"))
    chosen = decide(setting, tiny[0], 3, 8, 16, CPU)
    assert chosen == EncoderPrecision(setting) and chosen.decided == FORCED
    assert chosen.describe() == f"{setting} (forced by training.precision; not measured)"


def test_tf32_forced_where_there_is_none_is_one_clear_error(tiny):
    with pytest.raises(BenchmarkError, match=r"training.precision: this run's device \(cpu\) cannot compute in tf32 "
                                             r"\(TF32 needs a CUDA GPU of compute capability 8.0 or newer.*use auto or "
                                             r"fp32 or bf16$"):
        decide("tf32", tiny[0], 3, 8, 16, CPU)


def test_only_fp32_where_the_device_has_no_other_candidate(tiny, monkeypatch):
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("measured a single candidate"))
    assert decide("auto", tiny[0], 3, 8, 16, torch.device("mps")).choice == "fp32"


def test_tf32_matmuls_hold_within_the_block_only():
    before = torch.get_float32_matmul_precision()
    with precision.matmuls("tf32"):
        assert torch.get_float32_matmul_precision() == "high"
    with precision.matmuls("bf16"):
        assert torch.get_float32_matmul_precision() == before
    assert torch.get_float32_matmul_precision() == before


def test_a_real_measurement_times_both_candidates_and_says_what_it_cost(tiny):
    # A budget no loaded machine exhausts on this tiny model: the shape is the one asked for.
    chosen = measure_encoder(tiny[0], 3, 4, 16, CPU, ["fp32", "bf16"], budget_s=600)
    assert chosen.decided == precision.MEASURED and chosen.shape == (4, 16)
    assert set(chosen.seconds_per_step) == {"fp32", "bf16"} and chosen.cost_seconds > 0
    assert chosen.describe().endswith(f"the measurement took {chosen.cost_seconds:.1f} s)")
    assert EncoderPrecision.from_stored(chosen.stored()) == chosen  # what the study keeps


@pytest.fixture()
def fake_steps(monkeypatch):
    """Replaces the timed step by seconds per (precision, encoder model type), linear in tokens."""
    def install(per_token: dict[tuple[str, str], float]) -> None:
        def fake(model, inputs, labels, device, name, left_s):
            return per_token[name, model.config.model_type] * inputs["input_ids"].numel()

        monkeypatch.setattr(precision, "_timed_step", fake)

    return install


def test_each_encoder_gets_its_own_precision_stored_in_every_study_and_a_rerun_reuses_it(
        tmp_path, tiny_encoders, fake_steps, capsys, monkeypatch):
    fake_steps({("fp32", "bert"): 1e-3, ("bf16", "bert"): 4e-4, ("fp32", "roberta"): 1e-3, ("bf16", "roberta"): 3e-3})
    path = write_config(tmp_path, tiny_encoders)
    config = load_config(path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    studies = prepare_studies(config, url, ["none"], tmp_path).studies
    err = capsys.readouterr().err
    assert "precision bert: bf16 (measured at 16x32 after an untimed warm-up step each: fp32 " in err
    assert "precision roberta: fp32 (measured at 16x32" in err and "the measurement took" in err
    for study in studies:
        assert {name: chosen.choice for name, chosen in study.precisions.items()} == {"bert": "bf16", "roberta": "fp32"}
        stored = optuna.load_study(study_name=study.study_name, storage=url).user_attrs["precision_by_encoder"]
        assert {name: value["choice"] for name, value in stored.items()} == {"bert": "bf16", "roberta": "fp32"}
        assert stored["bert"]["seconds_per_step"] == pytest.approx({"fp32": 0.512, "bf16": 0.2048})
    # The storage decides: a rerun (or a --workers child) measures nothing and trains as stored,
    # even where this machine would now choose otherwise.
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("measured a stored choice"))
    again = prepare_studies(config, url, ["none"], tmp_path).studies
    assert [study.precisions for study in again] == [study.precisions for study in studies]
    err = capsys.readouterr().err
    assert "precision bert: bf16 (measured at 16x32" in err and "; stored in a study: kept" in err


def test_a_forced_precision_trains_as_forced_whatever_the_study_holds(tmp_path, tiny_encoders, fake_steps):
    fake_steps({("fp32", "bert"): 1e-3, ("bf16", "bert"): 4e-4, ("fp32", "roberta"): 1e-3, ("bf16", "roberta"): 3e-3})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    prepare_studies(load_config(write_config(tmp_path, tiny_encoders)), url, ["none"], tmp_path)
    forced = prepare_studies(load_config(write_config(tmp_path, tiny_encoders, training__precision="fp32")), url,
                             ["none"], tmp_path).studies[0]
    assert {chosen.choice for chosen in forced.precisions.values()} == {"fp32"}
    stored = optuna.load_study(study_name=forced.study_name, storage=url).user_attrs["precision_by_encoder"]
    assert stored["bert"]["choice"] == "bf16", "the study's own choice stays for later `auto` runs"


def test_a_study_from_before_per_encoder_choices_keeps_its_one_precision(tmp_path, tiny_encoders, monkeypatch):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    old = optuna.create_study(storage=url, study_name="tiny-topics", direction="maximize")
    old.set_user_attr("precision", "bf16")
    old.set_user_attr("encoder_choices", ["bert", "roberta"])
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("measured a stored choice"))
    config = load_config(write_config(tmp_path, tiny_encoders)).restricted(["topics"], None)
    study = prepare_studies(config, url, ["none"], tmp_path).studies[0]
    assert {chosen.choice for chosen in study.precisions.values()} == {"bf16"}


def test_trials_train_in_their_encoders_precision_and_say_so_even_from_half_precision_checkpoints(
        tmp_path, half_saved, monkeypatch, capsys):
    from benchmark.cli import main
    from benchmark.search import trial as trial_module

    config = write_config(tmp_path, {"fp16-saved": half_saved[torch.float16], "bf16-saved": half_saved[torch.bfloat16]},
                          encoders=("fp16-saved", "bf16-saved"), pruner={"type": "none"})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    # As a run on a GPU would have stored it; the other encoder is measured here, for real.
    # TF32 counts as computable here, so that the trial's matmul setting shows.
    monkeypatch.setattr(precision, "candidates", lambda device: ["fp32", "tf32", "bf16"])
    gpu = EncoderPrecision("tf32", precision.MEASURED, (16, 32), {"fp32": 0.2, "tf32": 0.1})
    optuna.create_study(storage=url, study_name="tiny-topics", direction="maximize").set_user_attr(
        "precision_by_encoder", {"fp16-saved": gpu.stored()})
    seen, real = {}, trial_module.fine_tune

    def recording(model, train, validation, num_labels, hp, settings, *args):
        seen[settings.seed] = ({p.dtype for p in model.parameters()}, settings.autocast_dtype,
                               torch.get_float32_matmul_precision())
        return real(model, train, validation, num_labels, hp, settings, *args)

    monkeypatch.setattr(trial_module, "fine_tune", recording)
    assert main(["--study", "--config", str(config), "--storage", url, "--datasets", "topics",
                 "--results-dir", str(tmp_path / "results")]) == 0
    assert "mixed dtype" not in capsys.readouterr().err
    study = optuna.load_study(study_name="tiny-topics", storage=url)
    stored = study.user_attrs["precision_by_encoder"]
    assert stored["fp16-saved"]["choice"] == "tf32" and stored["bf16-saved"]["decided"] == precision.MEASURED
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert {t.params["encoder"] for t in trials} == {"fp16-saved", "bf16-saved"}
    for trial in trials:
        used = trial.user_attrs["precision"]
        assert used == stored[trial.params["encoder"]]["choice"]
        # The weights in fp32 whatever the checkpoint's dtype; the compute as the trial says.
        assert seen[trial.number] == ({torch.float32}, precision.CANDIDATES[used].autocast,
                                      "high" if used == "tf32" else torch.get_float32_matmul_precision())


def test_a_stored_choice_this_device_cannot_compute_in_is_measured_again_and_the_trials_say_so(
        tmp_path, tiny_encoders, fake_steps):
    fake_steps({("fp32", "bert"): 1e-3, ("bf16", "bert"): 4e-4, ("fp32", "roberta"): 1e-3, ("bf16", "roberta"): 3e-3})
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    gpu = EncoderPrecision("tf32", precision.MEASURED, (16, 32), {"fp32": 0.2, "tf32": 0.1})
    optuna.create_study(storage=url, study_name="tiny-topics", direction="maximize").set_user_attr(
        "precision_by_encoder", {"bert": gpu.stored()})
    config = load_config(write_config(tmp_path, tiny_encoders)).restricted(["topics"], None)
    study = prepare_studies(config, url, ["none"], tmp_path).studies[0]
    assert study.precisions["bert"].choice == "bf16" and study.precisions["bert"].decided == precision.MEASURED
    stored = optuna.load_study(study_name="tiny-topics", storage=url).user_attrs["precision_by_encoder"]
    assert stored["bert"]["choice"] == "tf32", "the GPU's choice stays for the GPU"


@pytest.mark.parametrize(("slow_from", "factor"), [(6, 1.0), (3, 4.0)])
def test_a_load_that_arrives_mid_measurement_reaches_every_candidate_alike(slow_from, factor):
    """bf16 is twice as fast, but from the `slow_from`-th batch step on another process makes
    every step four times slower: mid-rounds, or just after fp32's calibration step. Timed one
    candidate after the other (fp32's steps, then bf16's), bf16's steps all fell in the slow
    part and fp32 won. In rounds, with the fastest step counting and fp32's calibration step
    not (it came before the rounds), both candidates are compared under the same load."""
    batch_steps = 0

    def timer(name: str, batch: int, tokens: int, left_s: float) -> float:
        nonlocal batch_steps
        if batch == 1:
            return {"fp32": 0.02, "bf16": 0.01}[name]
        batch_steps += 1
        seconds = {"fp32": 0.4, "bf16": 0.2}[name] * batch / 32
        return seconds * (4.0 if batch_steps >= slow_from else 1.0)

    measured = measure(["fp32", "bf16"], timer, 32, 64, BUDGET_S)
    assert measured.shape == (32, 64)
    assert measured.choice == "bf16"
    assert measured.seconds_per_step == {"fp32": pytest.approx(0.4 * factor), "bf16": pytest.approx(0.2 * factor)}
