"""load_config: a valid file becomes typed objects; every bad file names itself and the key."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from benchmark.config.spec import (
    BenchmarkConfig,
    Budget,
    CategoricalParam,
    DatasetSpec,
    EncoderSpec,
    FloatParam,
    IntParam,
    RangeOverride,
    SearchSpace,
    load_config,
)
from benchmark.errors import BenchmarkError

SEARCH_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"

VALID = {
    "encoders": {
        "small-bert": {"source": "local", "path": "models/small-bert",
                       "overrides": {"learning_rate": {"low": 1.0e-5, "high": 1.0e-4}}},
        "hub-roberta": {"source": "hub", "id": "FacebookAI/roberta-base", "revision": "main"},
        "minilm-l6": {"source": "offline"},
    },
    "datasets": {
        "topics": {"source": "file", "path": "data/topics.csv", "metric": "macro_f1",
                   "max_train_examples": 100, "split_fractions": {"validation": 0.2, "test": 0.15}},
        "sst2": {"source": "hub", "id": "glue", "subset": "sst2", "text": "sentence",
                 "splits": {"train": "train", "validation": "validation"}},
    },
    "search_space": {
        "learning_rate": {"type": "float", "low": 1.0e-5, "high": 1.0e-3, "log": True},
        "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "max_grad_norm": {"type": "float", "low": 0.5, "high": 2.0},
        "weight_decay": {"type": "categorical", "choices": [0.0, 0.01]},
        "batch_size": {"type": "categorical", "choices": [8, 16]},
        "num_epochs": {"type": "int", "low": 1, "high": 3},
    },
    "training": {"max_length": 64, "precision": "fp32"},
    "sampler": {"type": "random"},
    "pruner": {"type": "hyperband", "min_resource": 2},
    "budget": {"n_trials": 9, "timeout_s": 60},
}


def _write(tmp_path: Path, data: dict | None = None, *, text: str | None = None, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else yaml.safe_dump(data, sort_keys=False))
    return path


def _valid() -> dict:
    return copy.deepcopy(VALID)


def _error(path: Path) -> str:
    with pytest.raises(BenchmarkError) as caught:
        load_config(path)
    return str(caught.value)


def test_valid_file_loads_into_typed_objects(tmp_path):
    path = _write(tmp_path, _valid(), name="my-bench.yaml")
    config = load_config(path)

    assert isinstance(config, BenchmarkConfig)
    assert config.name == "my-bench"  # defaults to the file stem
    assert config.source_file == path

    space = config.search_space
    assert isinstance(space, SearchSpace)
    assert space.learning_rate == FloatParam(type="float", low=1e-5, high=1e-3, log=True)
    assert space.num_epochs == IntParam(type="int", low=1, high=3)
    assert isinstance(space.batch_size, CategoricalParam) and space.batch_size.choices == (8, 16)
    assert all(isinstance(c, int) and not isinstance(c, bool) for c in space.batch_size.choices)
    assert space.weight_decay.choices == (0.0, 0.01)

    small = config.encoders["small-bert"]
    assert isinstance(small, EncoderSpec) and small.source == "local"
    assert small.path == tmp_path / "models/small-bert"  # relative to the config file
    assert small.overrides == {"learning_rate": RangeOverride(low=1e-5, high=1e-4)}
    assert config.encoders["hub-roberta"].id == "FacebookAI/roberta-base"
    assert config.encoders["hub-roberta"].revision == "main"
    assert list(config.encoders) == ["small-bert", "hub-roberta", "minilm-l6"]

    topics = config.datasets["topics"]
    assert isinstance(topics, DatasetSpec)
    assert topics.path == tmp_path / "data/topics.csv" and topics.metric == "macro_f1"
    assert topics.split_fractions.validation == 0.2 and topics.split_fractions.test == 0.15
    assert topics.max_train_examples == 100 and topics.max_validation_examples is None
    assert config.datasets["sst2"].splits == {"train": "train", "validation": "validation"}
    assert config.datasets["sst2"].text == "sentence" and config.datasets["sst2"].label == "label"

    assert config.training.max_length == 64 and config.training.precision == "fp32"
    assert config.training.eval_every_examples == 960  # default kept
    assert config.sampler.type == "random"
    assert config.pruner.type == "hyperband" and config.pruner.min_resource == 2
    assert config.budget == Budget(n_trials=9, timeout_s=60.0)


def test_explicit_name_wins_over_file_stem(tmp_path):
    data = _valid()
    data["name"] = "explicit_name"
    assert load_config(_write(tmp_path, data)).name == "explicit_name"


def test_config_is_frozen(tmp_path):
    config = load_config(_write(tmp_path, _valid()))
    with pytest.raises(Exception):
        config.budget.n_trials = 100


# --- bad files: each message names the file and the offending key ---------------


def test_unknown_key_in_search_space(tmp_path):
    data = _valid()
    data["search_space"]["learing_rate"] = data["search_space"].pop("learning_rate")
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert "search_space.learing_rate: unknown key" in message
    assert "search_space.learning_rate" in message  # and the key it lacks


def test_unknown_top_level_key(tmp_path):
    data = _valid()
    data["budgett"] = {"n_trials": 3}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert "budgett: unknown key" in message


def test_unknown_key_inside_an_encoder(tmp_path):
    data = _valid()
    data["encoders"]["minilm-l6"]["revison"] = "main"
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and "encoders.minilm-l6.revison: unknown key" in message


def test_wrong_type(tmp_path):
    data = _valid()
    data["budget"]["n_trials"] = "many"
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert "budget.n_trials" in message
    assert "integer" in message


@pytest.mark.parametrize("param, spec", [
    ("dropout", {"type": "float", "low": 0.3, "high": 0.1}),
    ("num_epochs", {"type": "int", "low": 4, "high": 2}),
])
def test_inverted_range(tmp_path, param, spec):
    data = _valid()
    data["search_space"][param] = spec
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    # the discriminator tag ("float"/"int") is dropped from the location
    assert f"search_space.{param}: low ({spec['low']}) is above high ({spec['high']})" in message


@pytest.mark.parametrize("low", [0.0, -1.0e-5])
def test_log_scale_needs_positive_low(tmp_path, low):
    data = _valid()
    data["search_space"]["learning_rate"] = {"type": "float", "low": low, "high": 1.0e-3, "log": True}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert "search_space.learning_rate" in message and "log-scale" in message


def test_malformed_yaml(tmp_path):
    path = _write(tmp_path, text="name: x\nencoders: {a: [\n  b: c\n")
    message = _error(path)
    assert str(path) in message
    assert "malformed YAML" in message
    assert "line 2" in message  # where the problem is


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    path = _write(tmp_path, text=text)
    message = _error(path)
    assert str(path) in message and "mapping" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "space.yaml"
    message = _error(path)
    assert str(path) in message and "not found" in message


def test_directory_is_not_a_config_file(tmp_path):
    message = _error(tmp_path)
    assert str(tmp_path) in message and "not found" in message


def test_override_of_categorical_parameter(tmp_path):
    data = _valid()
    data["encoders"]["minilm-l6"]["overrides"] = {"batch_size": {"low": 8, "high": 16}}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert "encoders.minilm-l6.overrides.batch_size" in message
    assert "only numeric" in message


def test_override_of_log_parameter_with_nonpositive_low(tmp_path):
    data = _valid()
    data["encoders"]["minilm-l6"]["overrides"] = {"learning_rate": {"low": 0, "high": 1.0e-4}}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message
    assert "encoders.minilm-l6.overrides.learning_rate" in message and "low must be > 0" in message


def test_inverted_override(tmp_path):
    data = _valid()
    data["encoders"]["small-bert"]["overrides"] = {"dropout": {"low": 0.2, "high": 0.1}}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and "encoders.small-bert" in message and "above high" in message


def test_local_encoder_without_path(tmp_path):
    data = _valid()
    data["encoders"]["mine"] = {"source": "local"}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and "encoders.mine" in message and "needs 'path'" in message


def test_error_keeps_a_user_key_that_looks_like_a_union_tag(tmp_path):
    data = _valid()
    data["encoders"]["int"] = {"source": "local"}  # missing path
    path = _write(tmp_path, data)
    message = _error(path)
    assert "encoders.int" in message


def test_dropout_outside_unit_interval(tmp_path):
    data = _valid()
    data["search_space"]["dropout"] = {"type": "float", "low": 0.0, "high": 1.0}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and "dropout" in message and "[0, 1)" in message


def test_float_batch_size_rejected(tmp_path):
    data = _valid()
    data["search_space"]["batch_size"] = {"type": "float", "low": 8, "high": 16}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and "batch_size" in message


@pytest.mark.parametrize("warmup", [5, 960])
def test_a_pruner_warmup_at_or_below_the_first_checkpoint_is_refused(tmp_path, warmup):
    """Counted in examples, a warm-up of a few "steps" ends before the first checkpoint (960
    examples by default) and delays nothing; so does one that ends on it."""
    data = _valid()
    data["pruner"] = {"type": "median", "n_warmup_steps": warmup}
    path = _write(tmp_path, data)
    message = _error(path)
    assert str(path) in message and f"pruner.n_warmup_steps: {warmup} delays no pruning decision" in message
    assert "use 0 for no warm-up, or 1920 to spare the first checkpoint" in message


@pytest.mark.parametrize("warmup", [0, 961, 1920])
def test_a_pruner_warmup_past_the_first_checkpoint_or_none_loads(tmp_path, warmup):
    data = _valid()
    data["pruner"] = {"type": "percentile", "n_warmup_steps": warmup}
    assert load_config(_write(tmp_path, data)).pruner.n_warmup_steps == warmup


# --- restricted --------------------------------------------------------------


def test_restricted_keeps_only_named(tmp_path):
    config = load_config(_write(tmp_path, _valid()))
    narrowed = config.restricted(["sst2"], ["minilm-l6", "small-bert"])
    assert list(narrowed.datasets) == ["sst2"]
    assert list(narrowed.encoders) == ["minilm-l6", "small-bert"]
    assert narrowed.search_space == config.search_space
    assert narrowed.source_file == config.source_file
    assert config.restricted(None, None) == config
    assert list(config.datasets) == ["topics", "sst2"]  # the original is untouched


def test_restricted_unknown_dataset(tmp_path):
    path = _write(tmp_path, _valid())
    config = load_config(path)
    with pytest.raises(BenchmarkError) as caught:
        config.restricted(["topics", "imdb"], None)
    message = str(caught.value)
    assert "--datasets" in message and "imdb" in message
    assert str(path) in message
    assert "topics, sst2" in message  # what it does define


def test_restricted_unknown_encoder(tmp_path):
    path = _write(tmp_path, _valid())
    config = load_config(path)
    with pytest.raises(BenchmarkError) as caught:
        config.restricted(None, ["gpt-5"])
    message = str(caught.value)
    assert "--encoders" in message and "gpt-5" in message and str(path) in message


# --- the shipped search spaces -------------------------------------------------

SHIPPED = sorted({"default.yaml", "quick.yaml", "glue.yaml"} | {p.name for p in SEARCH_SPACES.glob("*.yaml")})


@pytest.mark.parametrize("filename", SHIPPED)
def test_shipped_search_space_loads(filename):
    path = SEARCH_SPACES / filename
    if not path.is_file():
        pytest.skip(f"{path} does not exist (yet)")
    config = load_config(path)
    assert isinstance(config, BenchmarkConfig)
    assert config.encoders and config.datasets
    assert config.source_file == path


def test_eval_interval_must_be_a_multiple_of_every_batch_size(tmp_path):
    data = _valid()
    data["training"]["eval_every_examples"] = 40  # 40 % 16 != 0
    message = _error(_write(tmp_path, data))
    assert "training.eval_every_examples: 40 is not a multiple of batch size 16" in message


def test_eval_schedule_is_fixed_unless_asked_and_names_the_key_when_unknown(tmp_path):
    data = _valid()
    assert load_config(_write(tmp_path, data)).training.eval_schedule == "fixed"
    data["training"]["eval_schedule"] = "geometric"
    assert load_config(_write(tmp_path, data)).training.eval_schedule == "geometric"
    data["training"]["eval_schedule"] = "hourly"
    assert "training.eval_schedule: Input should be 'fixed' or 'geometric'" in _error(_write(tmp_path, data))


def test_an_encoder_is_pruned_unless_it_says_prune_false(tmp_path):
    data = _valid()
    first, *_ = data["encoders"]
    config = load_config(_write(tmp_path, data))
    assert config.encoders[first].prune and config.eval_schedule(first) == "fixed"
    data["training"]["eval_schedule"] = "geometric"
    data["encoders"][first]["prune"] = False
    config = load_config(_write(tmp_path, data))
    assert config.eval_schedule(first) == "end"  # evaluated at the end of its trials only
    assert all(config.eval_schedule(name) == "geometric" for name in config.encoders if name != first)
    data["encoders"][first]["prune"] = "no"
    assert f"encoders.{first}.prune: Input should be a valid boolean" in _error(_write(tmp_path, data))


def test_eval_interval_checks_int_ranges_and_per_encoder_overrides(tmp_path):
    data = _valid()
    data["search_space"]["batch_size"] = {"type": "int", "low": 4, "high": 8}
    data["training"]["eval_every_examples"] = 840  # divisible by 4..8
    config = load_config(_write(tmp_path, data))
    assert config.batch_sizes() == [4, 5, 6, 7, 8]
    data["encoders"]["small-bert"]["overrides"]["batch_size"] = {"low": 8, "high": 9}
    message = _error(_write(tmp_path, data))
    assert "not a multiple of batch size 9" in message


def test_balanced_comparison_needs_a_budget_the_encoders_can_share(tmp_path):
    data = _valid()  # three encoders
    assert load_config(_write(tmp_path, data)).comparison == "balanced"  # the default
    data["budget"]["n_trials"] = 10
    message = _error(_write(tmp_path, data))
    assert "budget.n_trials: 10 trials cannot be shared equally among 3 encoders" in message
    data["comparison"] = "search"
    config = load_config(_write(tmp_path, data))
    assert config.trials_per_encoder(10) is None and config.unbalanced_budget(10) is None
    data["comparison"] = "balanced"
    data["budget"]["n_trials"] = 12
    config = load_config(_write(tmp_path, data))
    assert config.trials_per_encoder(12) == 4
    assert "a multiple of 3" in config.unbalanced_budget(7)
    data["comparison"] = "fair"
    assert "comparison" in _error(_write(tmp_path, data))


# --- overrides are held to the base space's rules ---------------------------


@pytest.mark.parametrize("param, base, override, expected", [
    ("dropout", None, {"low": 0.1, "high": 1.0}, "values must be numbers in [0, 1), got 1.0"),
    ("warmup_ratio", None, {"low": -0.1, "high": 0.1}, "values must be numbers in [0, 1), got -0.1"),
    # 0.5..0.9 epochs rounded to 0 epochs and failed every trial with an IndexError
    ("num_epochs", None, {"low": 0.5, "high": 0.9}, "an int parameter needs integer low and high, got 0.5 and 0.9"),
    ("num_epochs", None, {"low": 0, "high": 2}, "values must be positive integers, got 0"),
    ("learning_rate", {"type": "float", "low": 1.0e-5, "high": 1.0e-3}, {"low": 0, "high": 1.0e-4},
     "values must be positive numbers, got 0"),
    ("learning_rate", None, {"low": 0, "high": 1.0e-4}, "the range is log-scale, so low must be > 0, got 0"),
    ("max_grad_norm", None, {"low": 0, "high": 1.0}, "values must be positive numbers, got 0"),
    ("weight_decay", {"type": "float", "low": 0.0, "high": 0.1}, {"low": -0.01, "high": 0.1},
     "values must be non-negative numbers, got -0.01"),
    # batch size 0 was a ZeroDivisionError in the eval-interval check
    ("batch_size", {"type": "int", "low": 4, "high": 8}, {"low": 0, "high": 8},
     "values must be positive integers up to 65536, got 0"),
])
def test_override_is_checked_like_the_base_space(tmp_path, param, base, override, expected):
    data = _valid()
    if base is not None:
        data["search_space"][param] = base
    data["training"]["eval_every_examples"] = 840  # divisible by every batch size 1..8
    data["encoders"]["minilm-l6"]["overrides"] = {param: override}
    path = _write(tmp_path, data)
    message = _error(path)
    assert message == f"{path}: encoders.minilm-l6.overrides.{param}: {expected}"


def test_override_of_an_unknown_parameter(tmp_path):
    data = _valid()
    data["encoders"]["minilm-l6"]["overrides"] = {"dropuot": {"low": 0.0, "high": 0.1}}
    message = _error(_write(tmp_path, data))
    assert "encoders.minilm-l6.overrides.dropuot: unknown parameter; search_space has learning_rate," in message


def test_integer_override_of_an_int_parameter_is_kept_an_int(tmp_path):
    data = _valid()
    data["encoders"]["minilm-l6"]["overrides"] = {"num_epochs": {"low": 2, "high": 3}}
    override = load_config(_write(tmp_path, data)).encoders["minilm-l6"].overrides["num_epochs"]
    assert (override.low, override.high) == (2, 3) and isinstance(override.low, int)


@pytest.mark.parametrize("param, spec, expected", [
    ("learning_rate", {"type": "categorical", "choices": [0.0, 1.0e-4]}, "values must be positive numbers, got 0.0"),
    ("max_grad_norm", {"type": "float", "low": 0.0, "high": 1.0}, "values must be positive numbers, got 0.0"),
    ("batch_size", {"type": "int", "low": 0, "high": 8}, "values must be positive integers up to 65536, got 0"),
    ("num_epochs", {"type": "categorical", "choices": [1, True]}, "values must be positive integers, got True"),
    ("dropout", {"type": "categorical", "choices": [0.1, "0.2"]}, "values must be numbers in [0, 1), got '0.2'"),
])
def test_base_space_values(tmp_path, param, spec, expected):
    data = _valid()
    data["search_space"][param] = spec
    path = _write(tmp_path, data)
    assert _error(path) == f"{path}: search_space.{param}: {expected}"


# --- huge ranges never get enumerated into an error (item 13) -----------------


def test_absurd_batch_size_range_is_refused_with_a_short_message(tmp_path):
    data = _valid()
    data["search_space"]["batch_size"] = {"type": "int", "low": 1, "high": 30_000_000}
    path = _write(tmp_path, data)
    message = _error(path)  # built a 289 MB line from a 30-million-element set before
    assert message == f"{path}: search_space.batch_size: values must be positive integers up to 65536, got 30000000"


def test_absurd_batch_size_override_is_refused(tmp_path):
    data = _valid()
    data["search_space"]["batch_size"] = {"type": "int", "low": 4, "high": 8}
    data["encoders"]["minilm-l6"]["overrides"] = {"batch_size": {"low": 1, "high": 30_000_000}}
    assert "overrides.batch_size: values must be positive integers up to 65536" in _error(_write(tmp_path, data))


def test_eval_interval_error_names_only_a_few_batch_sizes(tmp_path):
    data = _valid()
    data["search_space"]["batch_size"] = {"type": "int", "low": 1, "high": 1000}
    data["training"]["eval_every_examples"] = 960
    message = _error(_write(tmp_path, data))
    # 960 has 28 divisors, so 972 of 1..1000 do not divide it: 7, 9, 11, 13, 14, ...
    assert "960 is not a multiple of batch size 7, 9, 11, 13, 14 and 967 more;" in message


# --- YAML that reads other than it looks (items 12, 13) ------------------------

SPACE_YAML = """\
encoders:
  minilm-l6: {source: offline}
datasets:
  bbc_news: {source: offline}
search_space:
  learning_rate: LEARNING_RATE
  warmup_ratio: {type: float, low: 0.0, high: 0.2}
  dropout: {type: float, low: 0.0, high: 0.2}
  max_grad_norm: {type: float, low: 0.5, high: 2.0}
  weight_decay: {type: float, low: 0.0, high: 0.1}
  batch_size: {type: categorical, choices: [16]}
  num_epochs: {type: int, low: 1, high: 1}
budget:
  n_trials: 4
"""


def _space_yaml(learning_rate: str = "{type: float, low: 1.0e-5, high: 1.0e-3, log: true}") -> str:
    return SPACE_YAML.replace("LEARNING_RATE", learning_rate)


def test_e_notation_choice_that_yaml_reads_as_text_gets_a_hint(tmp_path):
    path = _write(tmp_path, text=_space_yaml("{type: categorical, choices: [1e-5, 3.0e-5]}"))
    assert _error(path) == (f"{path}: search_space.learning_rate: the choice '1e-5' is text, not a number: YAML "
                            f"reads e-notation as a number only with a dot and a signed exponent; write 1.0e-5")
    path = _write(tmp_path, text=_space_yaml("{type: categorical, choices: [3.0e5]}"))
    assert _error(path).endswith("write 3.0e+5")


def test_e_notation_in_a_range_is_read_as_the_number(tmp_path):
    config = load_config(_write(tmp_path, text=_space_yaml("{type: float, low: 1e-5, high: 1e-3, log: true}")))
    assert (config.search_space.learning_rate.low, config.search_space.learning_rate.high) == (1e-5, 1e-3)


def test_duplicate_top_level_key_is_an_error(tmp_path):
    path = _write(tmp_path, text=_space_yaml() + "budget:\n  n_trials: 999\n")
    assert _error(path) == (f"{path}: malformed YAML: the key 'budget' appears twice, on line 13 and on line 15; "
                            f"keep one")


def test_duplicate_encoder_is_an_error(tmp_path):
    text = _space_yaml().replace("  minilm-l6: {source: offline}\n",
                                 "  minilm-l6: {source: offline}\n  minilm-l6: {source: hub, id: x/y}\n")
    assert "the key 'minilm-l6' appears twice, on line 2 and on line 3" in _error(_write(tmp_path, text=text))


def test_duplicate_key_within_one_line(tmp_path):
    text = _space_yaml().replace("{source: offline}", "{source: offline, source: hub}", 1)
    assert "the key 'source' appears twice, on line 2 and on line 2" in _error(_write(tmp_path, text=text))


def test_merge_keys_may_be_overridden(tmp_path):
    text = _space_yaml().replace("search_space:\n", "base: &base {type: float, low: 0.0, high: 0.2}\nsearch_space:\n")
    text = text.replace("dropout: {type: float, low: 0.0, high: 0.2}", "dropout: {<<: *base, high: 0.3}")
    message = _error(_write(tmp_path, text=text))
    assert message.endswith("base: unknown key")  # the anchor's key is unknown, the merge itself is fine


def test_malformed_yaml_is_one_line(tmp_path):
    message = _error(_write(tmp_path, text="name: x\nencoders: {a: [\n  b: c\n"))
    assert "\n" not in message and "(line 2, column 15)" in message and "unicode string" not in message


def test_non_utf8_config(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_bytes(_space_yaml().replace("minilm-l6: {source: offline}", "minilm-l6: {source: offline}  # café")
                     .encode("latin-1"))
    assert _error(path) == f"{path}: not UTF-8 text (byte 0xe9 on line 2); save the file as UTF-8"


# --- names, columns, paths, keys a source ignores, wrong types -------------------


@pytest.mark.parametrize("name", ["my data", "news/bbc", "a|b", "-x", ".."])
def test_dataset_and_encoder_names_must_be_file_and_table_safe(tmp_path, name):
    for key in ("datasets", "encoders"):
        data = _valid()
        data[key][name] = data[key].pop("topics" if key == "datasets" else "minilm-l6")
        path = _write(tmp_path, data)
        assert _error(path) == (f"{path}: {key}: {name!r} is not a valid name: use only letters, digits, "
                                f"'_', '-' and '.', starting with a letter or digit")


def test_config_name_from_a_file_name_with_a_space(tmp_path):
    path = _write(tmp_path, _valid(), name="my bench.yaml")
    assert "name: 'my bench' is not a valid name" in _error(path) and "set 'name:'" in _error(path)


@pytest.mark.parametrize("fields, expected", [
    ({"text": "sentence", "text_pair": "sentence"}, "'text_pair' and 'text' both name the column 'sentence'"),
    ({"text": "body", "label": "body"}, "'label' and 'text' both name the column 'body'"),
    ({"text_pair": "label"}, "'label' and 'text_pair' both name the column 'label'"),
])
def test_dataset_columns_must_differ(tmp_path, fields, expected):
    data = _valid()
    data["datasets"]["sst2"].update(fields)
    path = _write(tmp_path, data)
    assert _error(path) == f"{path}: datasets.sst2: {expected}; each must name a column of its own"


def test_relative_paths_resolve_from_the_config_files_folder(tmp_path, monkeypatch):
    data = _valid()
    data["datasets"]["absolute"] = {"source": "file", "path": str(tmp_path / "elsewhere.csv")}
    data["datasets"]["home"] = {"source": "file", "path": "~/data.csv"}
    (tmp_path / "configs").mkdir()
    path = _write(tmp_path / "configs", data)
    monkeypatch.chdir(tmp_path)  # the cwd plays no part
    config = load_config(Path("configs/space.yaml"))
    assert config.encoders["small-bert"].path == Path("configs/models/small-bert")
    assert config.datasets["topics"].path == Path("configs/data/topics.csv")
    assert config.datasets["absolute"].path == tmp_path / "elsewhere.csv"
    assert config.datasets["home"].path == Path.home() / "data.csv"
    assert load_config(path).datasets["topics"].path == tmp_path / "configs/data/topics.csv"


@pytest.mark.parametrize("section, name, fields, expected", [
    ("encoders", "minilm-l6", {"path": "models/x"}, "'path' is used only by source 'local', not by 'offline'"),
    ("encoders", "hub-roberta", {"path": "models/x"}, "'path' is used only by source 'local', not by 'hub'"),
    ("encoders", "small-bert", {"revision": "main"}, "'revision' is used only by source 'hub', not by 'local'"),
    ("datasets", "topics", {"subset": "sst2"}, "'subset' is used only by source 'hub', not by 'file'"),
    ("datasets", "sst2", {"path": "x.csv"}, "'path' is used only by source 'file', not by 'hub'"),
    ("datasets", "sst2", {"encoding": "latin-1"}, "'encoding' is used only by source 'file', not by 'hub'"),
])
def test_key_the_source_ignores_is_refused(tmp_path, section, name, fields, expected):
    data = _valid()
    data[section][name].update(fields)
    path = _write(tmp_path, data)
    assert _error(path) == f"{path}: {section}.{name}: {expected}; remove it or change the source"


@pytest.mark.parametrize("dotted, value, expected", [
    ("budget.n_trials", True, "budget.n_trials: Input should be a valid integer"),
    ("training.max_length", 64.0, "training.max_length: Input should be a valid integer"),
    ("training.compile", 1, "training.compile: Input should be a valid boolean"),
    ("training.seed", -1, "training.seed: Input should be greater than or equal to 0"),
    ("training.seed", 2**32, "training.seed: Input should be less than or equal to 4294967295"),
    ("budget.timeout_s", float("inf"), "budget.timeout_s: Input should be a finite number"),
    ("search_space.dropout", {"type": "float", "low": 0.0, "high": float("nan")},
     "search_space.dropout.high: Input should be a finite number"),
])
def test_wrong_types_and_non_finite_numbers(tmp_path, dotted, value, expected):
    data = _valid()
    section, key = dotted.split(".")
    data[section][key] = value
    assert expected in _error(_write(tmp_path, data))


def test_class_weights_default_to_none_as_a_one_choice_parameter(tmp_path):
    config = load_config(_write(tmp_path, _valid()))
    assert config.training.class_weights == "none"
    assert config.search_space.class_weights == CategoricalParam(type="categorical", choices=("none",))


def test_training_class_weights_become_the_searched_parameter(tmp_path):
    data = _valid()
    data["training"]["class_weights"] = "balanced"
    config = load_config(_write(tmp_path, data))
    assert config.search_space.class_weights.choices == ("balanced",)
    assert ("class_weights", config.search_space.class_weights) in list(config.search_space)


def test_class_weights_can_be_searched(tmp_path):
    data = _valid()
    data["search_space"]["class_weights"] = {"type": "categorical", "choices": ["none", "balanced"]}
    config = load_config(_write(tmp_path, data))
    assert config.search_space.class_weights.choices == ("none", "balanced")


@pytest.mark.parametrize(("training", "space", "expected"), [
    ("inverse", None, "training.class_weights: Input should be 'none' or 'balanced'"),
    (None, {"type": "categorical", "choices": ["none", "inverse"]},
     "search_space.class_weights: values must be 'none' or 'balanced', got 'inverse'"),
    (None, {"type": "float", "low": 0.0, "high": 1.0}, "search_space.class_weights: must be a categorical parameter"),
    ("balanced", {"type": "categorical", "choices": ["none", "balanced"]},
     "training.class_weights: set it here or search it in search_space.class_weights, not both"),
])
def test_bad_class_weights_name_the_key(tmp_path, training, space, expected):
    data = _valid()
    if training is not None:
        data["training"]["class_weights"] = training
    if space is not None:
        data["search_space"]["class_weights"] = space
    path = _write(tmp_path, data)
    message = _error(path)
    assert message.startswith(f"{path}: ") and expected in message


def test_a_new_hyperparameter_is_one_entry_in_the_registry(tmp_path):
    """Appending a `Hyperparameter` is all a new one takes: a config without it stays valid and
    trains with its default, a config that searches it is checked like the other keys, and the
    trial's record carries it. In a subprocess, so the registry grows before spec is imported."""
    searched = _valid()
    searched["search_space"]["label_smoothing"] = {"type": "float", "low": 0.0, "high": 1.5}
    code = textwrap.dedent(f"""
        from benchmark.config import hyperparameters as registry
        new = registry.Hyperparameter("label_smoothing", "float", lambda v: 0 <= v < 1, "numbers in [0, 1)",
                                      "the loss's label smoothing", default=0.0)
        registry.HYPERPARAMETERS += (new,)
        registry.HYPERPARAMETERS_BY_NAME[new.name] = new
        from benchmark.config.spec import load_config
        from benchmark.errors import BenchmarkError
        from benchmark.train.records import Hyperparameters
        space = load_config({str(_write(tmp_path, _valid(), name="old.yaml"))!r}).search_space
        print([name for name, _ in space][-2:], space.label_smoothing.choices)
        print(Hyperparameters(1e-3, 0.0, 0.0, 1.0, 0.0, 8, 1))
        try:
            load_config({str(_write(tmp_path, searched, name="searched.yaml"))!r})
        except BenchmarkError as error:
            print(str(error).split(": ", 1)[1])
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         cwd=Path(__file__).resolve().parent.parent)
    assert run.stdout.splitlines() == [
        "['class_weights', 'label_smoothing'] (0.0,)",
        ("Hyperparameters(learning_rate=0.001, warmup_ratio=0.0, dropout=0.0, max_grad_norm=1.0, weight_decay=0.0, "
         "batch_size=8, num_epochs=1, class_weights='none', label_smoothing=0.0)"),
        "search_space.label_smoothing: values must be numbers in [0, 1), got 1.5",
    ], run.stdout + run.stderr
