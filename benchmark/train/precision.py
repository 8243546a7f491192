"""`training.precision`, per encoder: fp32, TF32 matmuls (CUDA) or bf16 autocast; `auto` times them here.

Neither a flag nor a rule can decide it. A 2-core Xeon that reports AVX-512 BF16 (no AMX) ran
MiniLM-L6 11-38% slower in bf16 than in fp32; on a 2-core AMD EPYC without native bf16 (AVX2)
a bf16 step took 28x fp32's. On an H200 the winner depends on the model and the batch: at
32x128 tokens MiniLM-L6 stepped in 13.3 ms in fp32, 16.9 ms in TF32 and 17.6 ms in bf16, a
BERT-base-size model in 57.8, 28.7 and 41.4 ms; and every first call there is 10-100x slower
than the next.

So `auto` times each encoder on this device (`measure`, a pure function of a step timer, so
the tests replay other devices' timings):
1. the probe: per candidate, fp32 first, an untimed warm-up step of one short example, then
   one timed step of the same shape. A candidate whose probe takes over GIVE_UP_RATIO times
   fp32's probe (the same shape: like with like) is clearly slower and stops there; if only
   fp32 is left, it wins;
2. the batch: fp32 takes an untimed warm-up step and a timed one at the largest batch the
   search samples, halved while the probes say that every candidate's warm-up and
   TIMED_STEPS timed steps would not fit in what is left of BUDGET_S (or, where nothing
   fits, while fp32's two steps would take over half of it). Scaled from that real step by
   the probes' ratios (a GPU's one-example probe is bound by launches, so the probes
   overestimate a batch there), the largest batch that fits is timed: an untimed warm-up
   step and up to TIMED_STEPS timed steps per candidate, in rounds of one step each, the
   fastest counting (another process only ever slows a step, and in rounds a load that
   comes or goes reaches every candidate; the reference's calibration step, taken before
   the rounds, counts only where they gave it no step);
3. the fastest at that batch wins, where anything but fp32 must be MIN_SPEEDUP faster.
Every step, warm-ups included, counts toward BUDGET_S, and no step starts that its estimate
says would overrun it; where not even fp32 fits at a batch of two, the probes decide. A step
is estimated from the candidate's own warm-up at that shape once it has one, and before that
from the probes, which can be far off: on this project's EPYC with its ISA capped at AVX2
(oneDNN and ATen, as on an AVX2-only CPU), MiniLM-L6's bf16 probe took under 10x fp32's, but
its step at 32x64 18x, and the measurement ran to 34 s. So a step that would still overrun is
stopped (`OutOfBudget`): between the encoder's layers once the budget is spent, and before
its backward pass where the forward says that the backward (about twice the forward) would
not fit. The measurement ends there with what it has timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from benchmark.errors import BenchmarkError
from benchmark.train.encoders import Encoder, load_classifier
from benchmark.train.memory import release_memory


@dataclass(frozen=True)
class Mode:
    """How a candidate computes: an autocast dtype, and whether fp32 matmuls may use TF32."""

    autocast: torch.dtype | None = None
    tf32: bool = False


CANDIDATES: dict[str, Mode] = {"fp32": Mode(), "tf32": Mode(tf32=True), "bf16": Mode(torch.bfloat16)}
# TF32 matmuls need tensor cores of this CUDA compute capability or newer (Ampere).
TF32_CAPABILITY = (8, 0)
# Anything but fp32 must beat fp32 by this share of its step time: TF32 and bf16 also cost
# accuracy headroom (10 and 8 mantissa bits), which a speed-up within timing noise does not repay.
MIN_SPEEDUP = 0.10
# The whole measurement of one encoder, its model loading and every warm-up included, on any
# device: the EPYC above spent 480 s timing bf16 for two encoders.
BUDGET_S = 30.0
# The probe: one example of PROBE_TOKENS tokens (or max_length, if shorter). A fallback kernel
# shows at once (the EPYC's bf16 step is 28x fp32's at any shape), at a fraction of a batch
# step's cost: at 64 tokens a probe of MPNet-base there would cost about 11 s in bf16.
PROBE_EXAMPLES = 1
PROBE_TOKENS = 16
# A candidate whose warm probe takes this many times fp32's warm probe is a fallback kernel
# (the EPYC's bf16: 28x). Not less: on a GPU small steps are bound by launches, which autocast
# multiplies (casts): on the H200, bf16 stepped a BERT-base-size model in 41 ms at 32x128 and
# at 128x128 alike, a floor that a one-example probe can put at several times fp32's, while
# bf16 was the fastest at 128x128.
GIVE_UP_RATIO = 10.0
# Timed steps per candidate at the batch, after its warm-up; the fastest is kept, which
# steps slowed by another process do not move.
TIMED_STEPS = 3
MEASURED = "measured"
FORCED = "forced by training.precision"

# (candidate, batch size, tokens, seconds left) -> seconds of one forward and backward step of
# that shape; raises OutOfBudget where the step would take longer than the seconds left.
Timer = Callable[[str, int, int, float], float]


class OutOfBudget(Exception):
    """A step stopped because it would have overrun the budget, after `seconds` of it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"stopped after {seconds:.2f} s: the budget ran out")
        self.seconds = seconds


@dataclass(frozen=True)
class EncoderPrecision:
    """The precision one encoder's trials train in, and what the choice rests on. Stored in
    each study (see `search.preflight`), so a resumed study keeps it."""

    choice: str  # a key of CANDIDATES
    decided: str = FORCED  # MEASURED, FORCED, or why nothing was measured
    shape: tuple[int, int] | None = None  # batch x tokens that `seconds_per_step` was timed at
    seconds_per_step: dict[str, float] | None = None  # per candidate timed at `shape` (its fastest step)
    probe_seconds: dict[str, float] | None = None  # per candidate probed: its warm step of the probe
    stopped: tuple[str, ...] = ()  # stopped after the probe: GIVE_UP_RATIO x fp32's or slower
    unmeasured: tuple[str, ...] = ()  # not timed at `shape`: the budget did not allow it
    cost_seconds: float | None = None  # wall time of the measurement, loading included
    # Per unmeasured candidate that took its warm-up step at `shape`: that step's seconds.
    warm_up_seconds: dict[str, float] | None = None
    budget_s: float = BUDGET_S  # what the measurement was allowed

    @property
    def mode(self) -> Mode:
        return CANDIDATES[self.choice]

    def stored(self) -> dict:
        return asdict(self)

    @classmethod
    def from_stored(cls, value: dict) -> EncoderPrecision:
        known = {field.name for field in fields(cls)}
        value = {key: item for key, item in value.items() if key in known}  # JSON has no tuples
        return cls(**{**value, **{key: tuple(value[key]) for key in ("shape", "stopped", "unmeasured")
                                  if value.get(key) is not None}})

    def describe(self) -> str:
        """The choice and, where measured, the timings it rests on and what they cost."""
        if self.seconds_per_step is None:
            return f"{self.choice} ({self.decided}; not measured)"
        fp32 = self.seconds_per_step.get("fp32")
        timed = []
        for name, seconds in self.seconds_per_step.items():
            ratio = "" if name == "fp32" or not fp32 else (
                f" = {seconds / fp32:.2f}x slower" if seconds >= fp32 else f" = {fp32 / seconds:.2f}x faster")
            timed.append(f"{name} {_duration(seconds)}{ratio}")
        batch, tokens = self.shape
        parts = [f"{self.decided} at {batch}x{tokens} after an untimed warm-up step each: {', '.join(timed)}"]
        probe_fp32 = (self.probe_seconds or {}).get("fp32")
        for name in self.stopped:
            parts.append(f"{name} stopped after its {PROBE_EXAMPLES}-example probe at "
                         f"{self.probe_seconds[name] / probe_fp32:.1f}x fp32's")
        warm_ups = self.warm_up_seconds or {}
        for name in self.unmeasured:
            if name in warm_ups and fp32:
                parts.append(f"{name} not timed: its warm-up step took {_duration(warm_ups[name])} "
                             f"({warm_ups[name] / fp32:.1f}x fp32's step), and another would overrun the "
                             f"{self.budget_s:g} s budget")
            else:
                parts.append(f"{name} not timed: the {self.budget_s:g} s budget ran out")
        if len(self.seconds_per_step) > 1 or self.stopped:
            parts.append(f"anything but fp32 must be >={MIN_SPEEDUP:.0%} faster")
        if self.cost_seconds is not None:
            parts.append(f"the measurement took {self.cost_seconds:.1f} s")
        return f"{self.choice} ({'; '.join(parts)})"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def choose(seconds_per_step: dict[str, float]) -> str:
    """The fastest candidate, where anything but fp32 must be MIN_SPEEDUP faster than fp32."""
    limit = (1 - MIN_SPEEDUP) * seconds_per_step.get("fp32", math.inf)
    eligible = {name: seconds for name, seconds in seconds_per_step.items() if name == "fp32" or seconds <= limit}
    return min(eligible, key=eligible.__getitem__)


def candidates(device: torch.device) -> list[str]:
    """fp32 always; bf16 autocast on a CPU and on a CUDA GPU with bf16; TF32 on a CUDA GPU with
    TF32 tensor cores. MPS and others: fp32 only."""
    if device.type == "cpu":
        return ["fp32", "bf16"]
    if device.type != "cuda":
        return ["fp32"]
    tf32 = ["tf32"] if torch.cuda.get_device_capability(device) >= TF32_CAPABILITY else []
    return ["fp32", *tf32, *(["bf16"] if torch.cuda.is_bf16_supported() else [])]


@dataclass(frozen=True)
class Measurement:
    """What `measure` timed (see EncoderPrecision for the fields)."""

    shape: tuple[int, int]
    seconds_per_step: dict[str, float]
    probe_seconds: dict[str, float]
    stopped: tuple[str, ...]
    unmeasured: tuple[str, ...]
    spent: float  # the timer's seconds, warm-ups included
    warm_ups: dict[str, float]  # per unmeasured candidate that took one at `shape`, its warm-up step

    @property
    def choice(self) -> str:
        return choose(self.seconds_per_step)


def measure(names: list[str], timer: Timer, batch_size: int, max_length: int, budget_s: float) -> Measurement:
    """Time `names` (fp32 first, where it is one) with `timer` as the module docstring says;
    pure but for the timer."""
    spent = 0.0
    probe_tokens = min(PROBE_TOKENS, max_length)
    probe: dict[str, float] = {}
    steps: dict[str, list[float]] = {}  # per candidate, its timed steps at `batch`
    warm_ups: dict[str, float] = {}  # per candidate, its warm-up step at `batch`
    batch = PROBE_EXAMPLES
    calibration_batch = None  # where the reference took its calibration step

    def step(name: str, batch: int, tokens: int = max_length) -> float:
        nonlocal spent
        # The first candidate's probe runs to its end whatever the budget: a decision needs it.
        left = budget_s - spent if probe else math.inf
        try:
            seconds = timer(name, batch, tokens, left)
        except OutOfBudget as stopped:
            spent += stopped.seconds
            raise
        spent += seconds
        return seconds

    def time_candidates() -> None:
        nonlocal batch, steps, calibration_batch
        for name in names:
            if probe and spent >= budget_s:
                break
            step(name, PROBE_EXAMPLES, probe_tokens)  # first-use costs: kernel selection, caches, lazy init
            probe[name] = step(name, PROBE_EXAMPLES, probe_tokens)
        timing = _timing(probe)
        reference = timing[0]
        # Seconds per token, first from the probes: about right on a CPU, far too high where a
        # small step is launch-bound (a GPU); then from the reference's own step at a batch.
        per_token = {name: probe[name] / (PROBE_EXAMPLES * probe_tokens) for name in timing}

        def fits(b: int) -> bool:
            """Whether every candidate's warm-up and timed steps at batch b, less those taken, fit."""
            cost = 0.0
            for name in timing:
                taken = steps.get(name, []) if b == batch else []
                warm_up = 0 if b == batch and name in steps else 1
                cost += (warm_up + TIMED_STEPS - len(taken)) * per_token[name] * b * max_length
            return spent + cost <= budget_s

        def largest(fit: Callable[[int], bool]) -> int:
            b = batch_size
            while b > PROBE_EXAMPLES and not fit(b):
                b //= 2
            return b

        if len(timing) > 1 or len(names) == 1:  # a lone survivor of several wins without more timing
            # Calibrated where the probes say everything fits, or else where the reference's
            # warm-up and first step take at most half of what is left.
            batch = largest(fits)
            if batch == PROBE_EXAMPLES:
                batch = largest(lambda b: 2 * per_token[reference] * b * max_length <= (budget_s - spent) / 2)
        if batch > PROBE_EXAMPLES:
            warm_ups[reference] = step(reference, batch)
            steps[reference] = [step(reference, batch)]
            calibration_batch = batch
            per_token = {name: steps[reference][0] * probe[name] / probe[reference] / (batch * max_length)
                         for name in timing}
            # Where the probes overestimated, the search's own batch may fit after all.
            if largest(fits) != batch:
                batch, steps = largest(fits), {}
        if batch > PROBE_EXAMPLES:
            # Round-robin, one timed step per candidate a round, so that a change in the machine's
            # load falls on every candidate alike instead of on whichever was timed last.
            for _ in range(TIMED_STEPS):
                for name in timing:
                    if name not in steps:
                        if spent + 2 * per_token[name] * batch * max_length > budget_s:  # not even a warm-up and a step
                            continue
                        warm_ups[name] = step(name, batch)
                        steps[name] = []
                    # A candidate's next step is estimated from its own steps at this batch, warm-up
                    # included: a probe can be far off (see the module docstring).
                    if (len(steps[name]) < TIMED_STEPS and spent + max(steps[name] or [warm_ups[name]]) <= budget_s
                            and not (steps[name] and name != reference and reference in steps
                                     and steps[name][-1] > GIVE_UP_RATIO * min(steps[reference]))):
                        steps[name].append(step(name, batch))

    try:
        time_candidates()
    except OutOfBudget:
        pass  # a step was stopped at the budget: the decision rests on what was timed before it
    timing = _timing(probe)
    reference = timing[0]
    # The reference's calibration step came before the rounds, and before a load that the
    # others' steps met: where the rounds gave it a step of its own, that one counts.
    calibrated = reference in steps and batch == calibration_batch
    timed = {name: min(seconds[1:] if name == reference and calibrated and len(seconds) > 1 else seconds)
             for name, seconds in steps.items() if seconds}
    shape = (batch, max_length)
    if reference not in timed:  # the reference did not fit at a batch: the probes decide
        shape, timed = (PROBE_EXAMPLES, probe_tokens), {name: probe[name] for name in timing}
    stopped = tuple(name for name in probe if name not in timing)
    unmeasured = tuple(name for name in names if name not in timed and name not in stopped)
    warm_ups = {name: seconds for name, seconds in warm_ups.items() if name in unmeasured and shape[0] == batch}
    return Measurement(shape, timed, probe, stopped, unmeasured, spent, warm_ups)


def _timing(probe: dict[str, float]) -> list[str]:
    """The probed candidates that go on to be timed at a batch: all but those whose probe took
    over GIVE_UP_RATIO times fp32's (a fallback kernel), the reference first."""
    return [name for name in probe if name == "fp32" or probe[name] <= GIVE_UP_RATIO * probe.get("fp32", math.inf)]

def computable(name: str, device: torch.device) -> bool:
    """Whether `device` computes in candidate `name`: a study measured on a GPU may hold TF32."""
    return name in candidates(device)


def forced(setting: str, device: torch.device) -> EncoderPrecision:
    """A precision the config forces, refused where this device cannot compute in it."""
    if not computable(setting, device):
        raise BenchmarkError(f"training.precision: this run's device ({device}) cannot compute in {setting} (TF32 "
                             f"needs a CUDA GPU of compute capability {'.'.join(map(str, TF32_CAPABILITY))} or newer, "
                             f"bf16 a CPU or a CUDA GPU with bf16); use auto or {' or '.join(candidates(device))}")
    return EncoderPrecision(setting)


def decide(setting: str, encoder: Encoder, num_labels: int, batch_size: int, max_length: int,
           device: torch.device) -> EncoderPrecision:
    """`training.precision` for one encoder: as forced, or (`auto`) the measured fastest."""
    if setting != "auto":
        return forced(setting, device)
    names = candidates(device)
    if names == ["fp32"]:
        return EncoderPrecision("fp32", decided=f"the only candidate on {device.type}")
    return measure_encoder(encoder, num_labels, batch_size, max_length, device, names)


def measure_encoder(encoder: Encoder, num_labels: int, batch_size: int, max_length: int, device: torch.device,
                    names: list[str], budget_s: float = BUDGET_S) -> EncoderPrecision:
    """`measure` with real steps of the encoder's classifier on random tokens, loading within the budget."""
    # Any dropout will do: it costs the same in every candidate.
    return measure_model(lambda: load_classifier(encoder, tuple(map(str, range(num_labels))), dropout=0.1),
                         num_labels, batch_size, max_length, device, names, budget_s)


def measure_model(build: Callable[[], torch.nn.Module], num_labels: int, batch_size: int, max_length: int,
                  device: torch.device, names: list[str], budget_s: float = BUDGET_S) -> EncoderPrecision:
    """`measure` with real steps of the model that `build` makes (a sequence classifier of
    `num_labels` labels, freed here once measured) on random tokens, building it within the budget."""
    started = time.perf_counter()
    model = build().to(device).train()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(model.config.vocab_size, (batch_size, max_length), generator=generator)
    inputs = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids, device=device)}
    labels = torch.randint(num_labels, (batch_size,), generator=generator).to(device)

    def timer(name: str, batch: int, tokens: int, left_s: float) -> float:
        return _timed_step(model, {key: tensor[:batch, :tokens] for key, tensor in inputs.items()}, labels[:batch],
                           device, name, left_s)

    try:
        measured = measure(names, timer, batch_size, max_length, budget_s - (time.perf_counter() - started))
    finally:
        model = None  # freed before the cache is emptied (the timer, which reads it, is done)
        release_memory(device)
    return EncoderPrecision(measured.choice, MEASURED, measured.shape, measured.seconds_per_step,
                            measured.probe_seconds, measured.stopped, measured.unmeasured,
                            round(time.perf_counter() - started, 3), measured.warm_ups or None, budget_s)


@contextmanager
def matmuls(name: str) -> Iterator[None]:
    """fp32 matmuls as candidate `name` computes them, within the block: TF32 for `tf32`. A
    process-wide setting, restored on leaving; it covers the backward pass, which autocast does not."""
    previous = torch.get_float32_matmul_precision()
    if CANDIDATES[name].tf32:
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _timed_step(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                device: torch.device, name: str, left_s: float = math.inf) -> float:
    """Seconds of one forward and backward, as training.fine_tune runs them; OutOfBudget where
    they would take over `left_s`: at the first layer that starts after it, or before the
    backward pass where the forward took over a third of it (the backward takes about twice
    the forward)."""
    _synchronize(device)
    started = time.perf_counter()
    deadline = started + left_s
    dtype = CANDIDATES[name].autocast
    try:
        with matmuls(name), _stopped_at(model, started, deadline):
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(**inputs).logits
            _synchronize(device)
            forward = time.perf_counter() - started
            if started + 3 * forward > deadline:
                raise OutOfBudget(forward)
            F.cross_entropy(logits.float(), labels).backward()
        _synchronize(device)
        return time.perf_counter() - started
    finally:
        model.zero_grad(set_to_none=True)


@contextmanager
def _stopped_at(model: torch.nn.Module, started: float, deadline: float) -> Iterator[None]:
    """Within the block, the model's forward pass raises OutOfBudget at the first of its
    layers (the items of its ModuleLists) that would start after `deadline`."""
    def check(module: torch.nn.Module, args: tuple) -> None:
        now = time.perf_counter()
        if now > deadline:
            raise OutOfBudget(now - started)

    handles = [layer.register_forward_pre_hook(check) for layers in model.modules()
               if isinstance(layers, torch.nn.ModuleList) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
