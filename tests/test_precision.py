"""`precision: auto` chooses by timing fp32 and bf16 steps; a forced precision is not measured."""

from __future__ import annotations

import optuna
import pytest
import torch

from benchmark.config.spec import EncoderSpec, load_config
from benchmark.search.preflight import prepare
from benchmark.search.study import open_study
from benchmark.train import precision
from benchmark.train.encoders import resolve
from benchmark.train.precision import FORCED, Precision, choose, decide, measure_encoder
from tests.test_study import write_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_encoders):
    return [resolve(name, EncoderSpec(source="local", path=tiny_encoders[name])) for name in ("bert", "distilbert")]


def test_bf16_wins_only_when_at_least_ten_percent_faster():
    assert choose({"fp32": 2.0, "bf16": 1.0}) == "bf16"
    assert choose({"fp32": 10.0, "bf16": 9.0}) == "bf16"  # exactly 10% faster
    assert choose({"fp32": 10.0, "bf16": 9.5}) == "fp32"  # 5% faster: within the margin
    assert choose({"fp32": 1.0, "bf16": 7.7}) == "fp32"
    assert choose({"fp32": 1.0}) == "fp32"


@pytest.fixture()
def fake_steps(monkeypatch):
    """Replaces the timed step by seconds looked up per (precision, batch size); records calls."""
    calls = []

    def install(seconds: dict[tuple[str, int], float]) -> list[tuple[str, int]]:
        def fake(model, inputs, labels, device, dtype):
            key = ("fp32" if dtype is None else "bf16", len(labels))
            calls.append(key)
            return seconds[key]

        monkeypatch.setattr(precision, "_timed_step", fake)
        return calls

    return install


def test_auto_never_picks_a_slower_bf16_and_stops_timing_it(tiny, fake_steps):
    # bf16's first batch step takes 3.5x fp32's: past GIVE_UP_RATIO, so no second one.
    calls = fake_steps({("fp32", 1): 0.1, ("fp32", 8): 1.0, ("bf16", 1): 0.2, ("bf16", 8): 3.5})
    chosen = decide("auto", tiny, 3, 8, 16, CPU)
    assert chosen.choice == "fp32" and chosen.autocast_dtype is None
    assert chosen.seconds_per_step == {"fp32": 2.0, "bf16": 7.0}  # summed over the two encoders
    assert chosen.lower_bounds == ()
    per_encoder = [("fp32", 1), ("fp32", 8), ("fp32", 8), ("fp32", 8), ("bf16", 1), ("bf16", 8)]
    assert calls == per_encoder * 2
    assert chosen.describe() == ("precision: fp32 (measured per step, summed over 2 encoder(s), at 8x16: "
                                 "fp32 2.00 s, bf16 7.00 s = 3.50x slower; bf16 needs >=10% faster)")


def test_a_fallback_slower_on_one_example_than_fp32_on_the_batch_is_never_timed_on_the_batch(tiny, fake_steps):
    calls = fake_steps({("fp32", 1): 0.1, ("fp32", 8): 1.0, ("bf16", 1): 30.0})
    chosen = decide("auto", tiny, 3, 8, 16, CPU)
    assert chosen.choice == "fp32"
    assert calls.count(("bf16", 1)) == 2 and ("bf16", 8) not in calls
    assert chosen.seconds_per_step == {"fp32": 2.0, "bf16": 60.0} and chosen.lower_bounds == ("bf16",)
    assert "bf16 >60.00 s = >30.00x slower" in chosen.describe()
    assert "bf16 stopped after a one-example step (a lower bound)" in chosen.basis


def test_auto_picks_bf16_where_it_is_clearly_faster(tiny, fake_steps):
    calls = fake_steps({("fp32", 1): 0.1, ("fp32", 8): 1.0, ("bf16", 1): 0.1, ("bf16", 8): 0.5})
    chosen = decide("auto", tiny, 3, 8, 16, CPU)
    assert chosen.choice == "bf16" and chosen.autocast_dtype is torch.bfloat16
    assert calls.count(("bf16", 8)) == 2 * precision.TIMED_STEPS
    assert "bf16 1.00 s = 2.00x faster" in chosen.describe()


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_a_forced_precision_is_not_measured(tiny, setting, monkeypatch):
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("measured a forced precision"))
    chosen = decide(setting, tiny, 3, 8, 16, CPU)
    assert chosen == Precision(setting)
    assert chosen.seconds_per_step is None and chosen.decided == FORCED
    assert chosen.describe() == f"precision: {setting} (forced by training.precision; not measured)"


def test_only_fp32_where_the_device_has_no_bf16_candidate(tiny, monkeypatch):
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("measured a single candidate"))
    assert decide("auto", tiny, 3, 8, 16, torch.device("mps")).choice == "fp32"


def test_workers_train_in_the_precision_their_parent_measured(tiny, monkeypatch):
    parent = Precision("bf16", {"fp32": 2.0, "bf16": 1.0}, "measured", (8, 16), 2)
    for name, value in precision.for_workers(parent).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(precision, "measure_encoder", lambda *args: pytest.fail("a worker measured again"))
    assert decide("auto", tiny, 3, 8, 16, CPU) == parent
    unmeasured = Precision("fp32", decided="the only candidate on mps")
    monkeypatch.setenv(precision.INHERITED_ENV, precision.for_workers(unmeasured)[precision.INHERITED_ENV])
    assert decide("auto", tiny, 3, 8, 16, CPU) == unmeasured
    assert decide("fp32", tiny, 3, 8, 16, CPU) == Precision("fp32")  # the config still forces


def test_a_real_measurement_times_both_candidates(tiny):
    measured = measure_encoder(tiny[0], 3, 4, 16, CPU, ["fp32", "bf16"])
    assert set(measured) == {"fp32", "bf16"}
    assert all(seconds > 0 for seconds, _ in measured.values())
    assert measured["fp32"][1] is False  # fp32 is always timed on the batch


@pytest.mark.parametrize("setting", ["auto", "bf16"])
def test_the_study_stores_the_choice_and_its_timings(tmp_path, tiny_encoders, fake_steps, capsys, setting):
    fake_steps({("fp32", 1): 0.1, ("fp32", 16): 1.0, ("bf16", 1): 0.2, ("bf16", 16): 4.0})
    path = write_config(tmp_path, tiny_encoders, encoders=("bert",), training__precision=setting)
    config = load_config(path).restricted(["topics"], None)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'db.sqlite'}")
    dataset_study = prepare(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path).studies[0]
    attrs = open_study(storage, dataset_study, seed=0).user_attrs
    err = capsys.readouterr().err
    if setting == "auto":
        # The largest batch the search can sample (16) by training.max_length (32).
        assert ("precision: fp32 (measured per step, summed over 1 encoder(s), at 16x32: fp32 1.00 s, "
                "bf16 4.00 s = 4.00x slower; bf16 needs >=10% faster)") in err
        assert attrs["precision"] == "fp32"
        assert attrs["precision_timings"] == {"fp32": 1.0, "bf16": 4.0}
        assert attrs["precision_decided"] == "measured per step, summed over 1 encoder(s), at 16x32"
    else:
        assert "precision: bf16 (forced by training.precision; not measured)" in err
        assert attrs["precision"] == "bf16" and attrs["precision_timings"] is None
        assert attrs["precision_decided"] == "forced by training.precision; not measured"
