"""`training.precision: auto`: fp32 or bf16 autocast, chosen by timing both on this machine.

A CPU flag cannot decide it: a 2-core Xeon that reports AVX-512 BF16 (no AMX) ran
MiniLM-L6 11-38% slower in bf16 than in fp32, and on a 2-core AMD EPYC without native bf16
(AVX2) bf16 matmuls ran on fallback kernels 88-112x slower than fp32 (the matmul peaks of
two `benchmarks.perf` runs). So before the first trial, every encoder trains a few steps at
the run's batch shape in each candidate precision, and the fastest wins.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from benchmark.train.encoders import Encoder, load_classifier
from benchmark.train.memory import release_memory

# Autocast dtype per candidate; fp32 means no autocast.
CANDIDATES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
# bf16 must beat fp32 by this share of fp32's step time: it also costs accuracy headroom
# (8 mantissa bits in activations), which a speed-up within timing noise does not repay.
BF16_MIN_SPEEDUP = 0.10
# Timed steps per encoder and candidate, after one warm-up step; their median is kept,
# which a single step slowed by another process does not move.
TIMED_STEPS = 3
# `--check` times one step per candidate at this batch size instead, so a check costs
# seconds, not a minute: per token, a batch of 8 steps 1.1-1.25x slower than one of 32 on a
# 2-core CPU (MiniLM-L6 and MPNet-base, fp32 and bf16), an estimate error well inside 2x.
PROBE_BATCH = 8
PROBE_STEPS = 1
# A candidate whose step already takes this many times fp32's is clearly slower: it is timed
# no further, so a fallback kernel like the EPYC's costs a step or two, not minutes.
GIVE_UP_RATIO = 3.0
# The warm-up step (first-use costs) is this one example, not the batch: the cheap first look
# at a candidate that such a fallback needs.
WARM_UP_EXAMPLES = 1
FORCED = "forced by training.precision"
# Workers started by `--workers` train in the precision their parent measured: measuring in
# each at once, slowed by one another, could even set workers of one study apart.
INHERITED_ENV = "ENCODER_BENCHMARK_PRECISION"


@dataclass(frozen=True)
class Precision:
    """The precision trials train in, and what it rests on."""

    choice: str  # a key of CANDIDATES
    # Summed over the encoders, seconds per forward+backward step at `shape`; None when not measured.
    seconds_per_step: dict[str, float] | None = None
    decided: str = FORCED
    shape: tuple[int, int] | None = None  # batch size x tokens
    encoders: int = 0
    # Candidates stopped after their one-example warm-up step (GIVE_UP_RATIO): their seconds
    # are a lower bound on a batch step.
    lower_bounds: tuple[str, ...] = ()
    # Per encoder, seconds per step of `choice` at `shape`: what `--check` estimates a run from.
    per_encoder: dict[str, float] | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return CANDIDATES[self.choice]

    @property
    def basis(self) -> str:
        """How the choice was made: `measured ...`, or why nothing was measured."""
        if self.seconds_per_step is None:
            return f"{self.decided}; not measured"
        batch, tokens = self.shape
        stopped = "".join(f"; {name} stopped after a one-example step (a lower bound)" for name in self.lower_bounds)
        return f"{self.decided} per step, summed over {self.encoders} encoder(s), at {batch}x{tokens}{stopped}"

    def describe(self) -> str:
        """One line for stderr: the choice, and the measured ratio it rests on."""
        if self.seconds_per_step is None:
            return f"precision: {self.choice} ({self.basis})"
        fp32 = self.seconds_per_step["fp32"]
        parts = [f"fp32 {fp32:.2f} s"]
        for name, seconds in self.seconds_per_step.items():
            if name == "fp32":
                continue
            bound = ">" if name in self.lower_bounds else ""
            ratio = seconds / fp32
            speed = f"{ratio:.2f}x slower" if ratio >= 1 else f"{1 / ratio:.2f}x faster"
            parts.append(f"{name} {bound}{seconds:.2f} s = {bound}{speed}")
        return (f"precision: {self.choice} ({self.basis}: {', '.join(parts)}; "
                f"bf16 needs >={BF16_MIN_SPEEDUP:.0%} faster)")


def choose(seconds_per_step: dict[str, float]) -> str:
    """The fastest candidate, where anything but fp32 must be BF16_MIN_SPEEDUP faster than fp32."""
    limit = (1 - BF16_MIN_SPEEDUP) * seconds_per_step["fp32"]
    eligible = {name: seconds for name, seconds in seconds_per_step.items() if name == "fp32" or seconds <= limit}
    return min(eligible, key=eligible.__getitem__)


def candidates(device: torch.device) -> list[str]:
    """bf16 autocast is tried on a CPU and on a CUDA GPU that has bf16; elsewhere only fp32."""
    if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return ["fp32", "bf16"]
    return ["fp32"]


def decide(setting: str, encoders: Iterable[Encoder], num_labels: int, batch_size: int, max_length: int,
           device: torch.device, timed_steps: int = TIMED_STEPS) -> Precision:
    """`training.precision`: fp32 or bf16 as forced, or (`auto`) the measured fastest."""
    if setting != "auto":
        return Precision(setting)
    if INHERITED_ENV in os.environ:
        return inherited(os.environ[INHERITED_ENV])
    names = candidates(device)
    if names == ["fp32"]:
        return Precision("fp32", decided=f"the only candidate on {device.type}")
    encoders = list(encoders)
    totals = dict.fromkeys(names, 0.0)
    bounded: set[str] = set()
    by_encoder = {}
    for encoder in encoders:
        by_encoder[encoder.name] = measure_encoder(encoder, num_labels, batch_size, max_length, device, names,
                                                   timed_steps)
        for name, (seconds, lower_bound) in by_encoder[encoder.name].items():
            totals[name] += seconds
            if lower_bound:
                bounded.add(name)
    choice = choose(totals)
    return Precision(choice, totals, "measured", (batch_size, max_length), len(encoders),
                     tuple(name for name in names if name in bounded),
                     {encoder: measured[choice][0] for encoder, measured in by_encoder.items()})


def step_seconds(chosen: Precision, encoders: Iterable[Encoder], num_labels: int, batch_size: int, max_length: int,
                 device: torch.device, timed_steps: int = TIMED_STEPS) -> dict[str, float]:
    """Per encoder, seconds per training step in the chosen precision at `batch_size` x
    `max_length`: the measurement's own where `decide` measured, else timed now the same way."""
    if chosen.per_encoder is not None and chosen.shape == (batch_size, max_length):
        return dict(chosen.per_encoder)
    return {encoder.name: measure_encoder(encoder, num_labels, batch_size, max_length, device,
                                          [chosen.choice], timed_steps)[chosen.choice][0] for encoder in encoders}


def for_workers(chosen: Precision) -> dict[str, str]:
    """The environment that hands `chosen` to the worker processes (see `inherited`)."""
    return {INHERITED_ENV: json.dumps(asdict(chosen))}


def inherited(value: str) -> Precision:
    fields = json.loads(value)  # JSON has no tuples
    shape = fields["shape"] and tuple(fields["shape"])
    return Precision(**{**fields, "shape": shape, "lower_bounds": tuple(fields["lower_bounds"])})


def measure_encoder(encoder: Encoder, num_labels: int, batch_size: int, max_length: int,
                    device: torch.device, names: list[str],
                    timed_steps: int = TIMED_STEPS) -> dict[str, tuple[float, bool]]:
    """Per candidate: seconds per batch step, and whether that is only a lower bound (the
    candidate was stopped after its one-example warm-up step). fp32 comes first: the others
    are judged against it."""
    # Any dropout will do: it costs the same in every candidate.
    model = load_classifier(encoder, tuple(map(str, range(num_labels))), dropout=0.1).to(device).train()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(model.config.vocab_size, (batch_size, max_length), generator=generator)
    inputs = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}
    labels = torch.randint(num_labels, (batch_size,), generator=generator).to(device)
    warm_up = {key: tensor[:WARM_UP_EXAMPLES] for key, tensor in inputs.items()}
    measured: dict[str, tuple[float, bool]] = {}
    try:
        for name in names:
            limit = GIVE_UP_RATIO * measured["fp32"][0] if name != "fp32" and "fp32" in measured else None
            # One example cannot take longer than the batch: past the limit, the batch is too.
            seconds = _timed_step(model, warm_up, labels[:WARM_UP_EXAMPLES], device, CANDIDATES[name])
            if limit is not None and seconds > limit:
                measured[name] = (seconds, True)
                continue
            steps = []
            for _ in range(timed_steps):
                steps.append(_timed_step(model, inputs, labels, device, CANDIDATES[name]))
                if limit is not None and steps[-1] > limit:
                    break
            measured[name] = (statistics.median(steps), False)
    finally:
        del model
        release_memory(device)
    return measured


def _timed_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                device: torch.device, dtype: torch.dtype | None) -> float:
    """Seconds of one forward and backward, as training.fine_tune runs them."""
    _synchronize(device)
    started = time.perf_counter()
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(**inputs).logits
    F.cross_entropy(logits.float(), labels).backward()
    _synchronize(device)
    seconds = time.perf_counter() - started
    model.zero_grad(set_to_none=True)
    return seconds


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
