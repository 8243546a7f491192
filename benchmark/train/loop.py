"""Fine-tune a sequence classifier: one loop, read top to bottom.

The loop knows nothing of Optuna or trackers. It hands every step and every
evaluation to callbacks; the trial decides what they mean (a report, a pruning
decision, a curve point).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.data.dataset import stratified_split
from benchmark.data.tokenization import TokenizedSplit, batches, length_grouped
from benchmark.train.metrics import classification_metrics
from benchmark.train.records import Evaluation, Hyperparameters, StepLog

# Devices with a fused AdamW kernel in PyTorch; elsewhere the multi-tensor (foreach) one.
FUSED_ADAMW_DEVICES = ("cpu", "cuda")
# Every trial of a study evaluates its checkpoints on the same validation subset.
EVAL_SUBSET_SEED = 0


def balanced_class_weights(labels: np.ndarray, num_labels: int) -> np.ndarray:
    """scikit-learn's "balanced" weights, n_samples / (n_classes * count), one per label id;
    a label with no example has no weight to give, and is refused."""
    counts = np.bincount(labels, minlength=num_labels)
    if not counts.all():
        raise ValueError(f"label id(s) {np.flatnonzero(counts == 0).tolist()} have no training example; "
                         "balanced class weights need every class in the train split")
    return len(labels) / (num_labels * counts)


@dataclass(frozen=True)
class LoopSettings:
    eval_every_examples: int
    eval_batch_size: int
    seed: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    # Forward/backward in chunks of this many examples, accumulating gradients, so a
    # batch that does not fit in memory still trains with the same effective batch.
    micro_batch_size: int | None = None
    # Batch widths rounded up to a multiple of this (see padding_multiple).
    pad_to_multiple_of: int = 1
    # One fused kernel for all parameters' AdamW updates, where the device has it.
    fused_optimizer: bool = True
    # Pruning checkpoints are evaluated on this many validation examples (a fixed
    # stratified subset, the same in every trial); the last evaluation on all of them.
    eval_subset_examples: int | None = None
    # Training batches of similar lengths (see tokenization.length_grouped): less padding.
    group_by_length: bool = False
    # Checkpoints every `eval_every_examples`, or at 1, 2, 4, ... times it, or only at the
    # end (see checkpoint_steps).
    eval_schedule: str = "fixed"
    # The model runs under torch.compile (pad_to_multiple_of should then be padding_multiple's).
    compile: bool = False
    # Steps whose losses and gradient norms are read on the host together; None: the device's
    # default (see host_sync_every).
    sync_every: int | None = None
    # Evaluation batches hold at most this many padded tokens; None: only eval_batch_size
    # bounds them (see evaluation_batch_tokens).
    eval_batch_tokens: int | None = None


@dataclass
class TrainingResult:
    evaluations: list[Evaluation] = field(default_factory=list)
    steps: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    # Real tokens of the evaluated examples, every checkpoint's and the last evaluation's
    # (padding left out): with train_tokens, the arithmetic that evaluation costs a run.
    eval_tokens: int = 0
    eval_seconds: float = 0.0

    @property
    def final(self) -> Evaluation:
        return self.evaluations[-1]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the run cannot recover."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at step {step}")
        self.step = step


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# Under torch.compile, batch widths are rounded up to a multiple of this: a few shapes to
# compile for (max_length / 16), not one per batch width.
COMPILE_PAD = 16


def padding_multiple(device: torch.device, compiled: bool = False) -> int:
    """Batch widths are rounded up to this: 8 suits a GPU's tensor cores and bounds the number of
    distinct shapes its kernel caches see; on a CPU any padding is wasted work, but for a
    compiled model (COMPILE_PAD)."""
    return max(8 if device.type == "cuda" else 1, COMPILE_PAD if compiled else 1)


# Steps between host reads of the loss on a GPU: a NaN is noticed this many steps late at most.
CUDA_SYNC_EVERY = 32


def host_sync_every(device: torch.device) -> int:
    """Steps whose losses and gradient norms the host reads at once. Reading a value off a GPU
    waits for every kernel queued before it, so read after each step the GPU would idle while
    Python prepares the next; on a CPU the value is there as the step ends."""
    return CUDA_SYNC_EVERY if device.type == "cuda" else 1


# Activation bytes per token that an evaluation forward pass holds at its peak, generously for a
# base-size encoder in fp32 (the 4x-wide feed-forward output and attention's score rows, with
# their copies). Too high for a small encoder, whose batches are then only smaller than they could be.
EVAL_BYTES_PER_TOKEN = 64 * 1024
# Larger evaluation batches gain little even on a large GPU, and pad more.
MAX_EVAL_BATCH = 1024
# What evaluation's activations may take of the memory left to the process: the trial's model,
# gradients and optimizer state are loaded after it is read.
EVAL_MEMORY_SHARE = 0.25


def evaluation_batch_size(configured: int, max_length: int, available_bytes: int | None) -> int:
    """Evaluation batches sized to the device: where `available_bytes` is known (a CUDA GPU),
    the largest power of two up to MAX_EVAL_BATCH whose activations fit EVAL_MEMORY_SHARE of
    it, if that is more than `configured`. Inference keeps no activations for a backward pass,
    so a GPU takes far larger batches than training does, and a small batch leaves it waiting
    on the host. Elsewhere (None) the configured size."""
    if available_bytes is None:
        return configured
    fits = int(available_bytes * EVAL_MEMORY_SHARE) // (max_length * EVAL_BYTES_PER_TOKEN)
    return max(configured, min(MAX_EVAL_BATCH, 1 << (fits.bit_length() - 1))) if fits else configured


def available_device_memory(device: torch.device) -> int | None:
    """Bytes this process may still allocate on a CUDA device, within the share of it that the
    process was given (set_per_process_memory_fraction, see search/workers.py); None elsewhere:
    a CPU's evaluation batches are bounded by tokens instead (evaluation_batch_tokens), and
    MPS shares the host's memory."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    share = torch.cuda.get_per_process_memory_fraction(device)
    return max(0, min(free, int(share * total) - torch.cuda.memory_reserved(device)))


# A CPU evaluates fastest in batches of about this many padded tokens, not in the largest that
# fit. The length-sorted split pads less in small batches; and glibc hands an allocation over
# its mmap threshold (at most 32 MiB) fresh pages each time, which fault in and are zeroed,
# so a batch whose activations exceed that pays for its memory on every pass (with the
# threshold raised by MALLOC_MMAP_THRESHOLD_, one batch of BBC ran as fast as batches of 32).
# On this project's 2-core EPYC (median of 3 interleaved runs), MPNet-base's fp32 pass over
# twitter's 300 validation tweets took 20.1 s as one batch against 9.7 s in batches of
# 32 x 64 tokens, and at max_length 256 MiniLM-L6 ran BBC's 191 articles in 5.98 s in
# batches of 8 x 256, 7.12 s in batches of 64 x 256
# (`python -m perf.eval_batches`; docs/performance.md#evaluation-batches-on-a-cpu).
CPU_EVAL_BATCH_TOKENS = 2048


def evaluation_batch_tokens(device: torch.device) -> int | None:
    """The bound on an evaluation batch's padded tokens: CPU_EVAL_BATCH_TOKENS on a CPU; None
    (eval_batch_size alone) on a GPU, which evaluation_batch_size fills instead."""
    return CPU_EVAL_BATCH_TOKENS if device.type == "cpu" else None


def _autocast(settings: LoopSettings):
    if settings.autocast_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=settings.device.type, dtype=settings.autocast_dtype)


def _optimizer(model: torch.nn.Module, hp: Hyperparameters, settings: LoopSettings) -> torch.optim.Optimizer:
    # Biases and normalization weights are conventionally exempt from weight decay.
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": hp.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = settings.fused_optimizer and settings.device.type in FUSED_ADAMW_DEVICES
    return torch.optim.AdamW(groups, lr=hp.learning_rate, fused=fused or None)


def _linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def checkpoint_steps(steps_per_epoch: int, epochs: int, batch_size: int, every_examples: int,
                     schedule: str) -> list[int]:
    """The steps after which a run evaluates: every `every_examples` (`fixed`) or at 1, 2, 4, ...
    times it (`geometric`), and always at the last step (`end`: only there).

    Counted in examples, so every batch size that divides `every_examples` checkpoints after
    the same numbers of examples, which is what the pruner compares trials at. The geometric
    points are Hyperband's rungs for a reduction factor of 2, and a run of n intervals pays
    for about log2(n) checkpoint evaluations instead of n.
    """
    total = steps_per_epoch * epochs
    interval = max(1, every_examples // batch_size)
    if schedule == "fixed":
        steps = list(range(interval, total + 1, interval))
    elif schedule == "geometric":
        steps = [interval * 2**k for k in range(total.bit_length()) if interval * 2**k <= total]
    elif schedule == "end":
        steps = []
    else:
        raise ValueError(f"unknown checkpoint schedule {schedule!r}; expected 'fixed', 'geometric' or 'end'")
    return steps if steps and steps[-1] == total else steps + [total]


def evaluate(model: torch.nn.Module, split: TokenizedSplit, settings: LoopSettings,
             num_labels: int) -> tuple[float, dict[str, float]]:
    """Mean loss and metrics over the whole split."""
    loss, predictions = predict(model, split, settings)
    return loss, classification_metrics(split.labels, predictions, num_labels)


def predict(model: torch.nn.Module, split: TokenizedSplit, settings: LoopSettings) -> tuple[float, np.ndarray]:
    """Mean loss over the whole split and the predicted label ids, in the split's order."""
    model.eval()
    order = np.argsort(split.lengths, kind="stable")  # similar lengths together: less padding
    # Kept on the device and read once at the end: a read per batch would wait for the device.
    losses, predicted = [], []
    with torch.inference_mode(), _autocast(settings):
        for inputs, labels, _ in batches(split, order, settings.eval_batch_size, settings.device,
                                         settings.pad_to_multiple_of, settings.eval_batch_tokens):
            logits = model(**inputs).logits.float()
            losses.append(F.cross_entropy(logits, labels, reduction="sum"))
            predicted.append(logits.argmax(-1))
        loss_sum = torch.stack(losses).sum().item()
        predictions = np.empty(len(split), dtype=np.int64)
        predictions[order] = torch.cat(predicted).cpu().numpy()
    model.train()
    return loss_sum / len(split), predictions


def _accumulate_gradients(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                          settings: LoopSettings, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Backpropagate the batch's mean loss, in micro-batches when asked; returns that loss, on
    the device (read on the host only every `host_sync_every` steps)."""
    chunk = settings.micro_batch_size or len(labels)
    total = torch.zeros((), device=labels.device)
    for start in range(0, len(labels), chunk):
        part = slice(start, start + chunk)
        with _autocast(settings):
            logits = model(**{name: tensor[part] for name, tensor in inputs.items()}).logits
        # Summed over the chunk and divided by the whole batch: the chunks add up to the mean.
        # Balanced weights average 1 over the train split, so weighted or not the loss keeps its scale.
        loss = F.cross_entropy(logits.float(), labels[part], weight=class_weights, reduction="sum") / len(labels)
        loss.backward()
        total += loss.detach()
    return total


def fine_tune(
    model: torch.nn.Module,
    train: TokenizedSplit,
    validation: TokenizedSplit,
    num_labels: int,
    hp: Hyperparameters,
    settings: LoopSettings,
    on_step: Callable[[StepLog], None],
    on_evaluation: Callable[[Evaluation], None],
    result: TrainingResult | None = None,
) -> TrainingResult:
    """Train for `hp.num_epochs`, evaluating at `checkpoint_steps` (the last step among them).

    Each epoch takes only full batches (a fresh shuffle each time), so the examples seen
    are exactly steps x batch size. `on_evaluation` may raise (Optuna's TrialPruned,
    say) to stop at once; a caller that passes its own `result` still has the timings
    of a run stopped that way.

    Steps reach `on_step` in groups of `sync_every` (and before each evaluation), when their
    losses and gradient norms are read off the device together; a non-finite loss raises
    NonFiniteLoss then. Training time is the wall time of those groups, building the batches
    included, and each step of a group reports the group's mean rate.
    """
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model.to(settings.device)
    model.train()
    if settings.compile:
        # In place; a later model of the same class in this process reuses the compiled code.
        model.compile()
    steps_per_epoch = len(train) // hp.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {hp.batch_size} exceeds the {len(train)} training examples")
    total_steps = steps_per_epoch * hp.num_epochs
    checkpoints = set(checkpoint_steps(steps_per_epoch, hp.num_epochs, hp.batch_size,
                                       settings.eval_every_examples, settings.eval_schedule))
    optimizer = _optimizer(model, hp, settings)
    # Only the training loss is weighted: validation losses stay comparable across trials.
    class_weights = (torch.tensor(balanced_class_weights(train.labels, num_labels), dtype=torch.float32,
                                  device=settings.device) if hp.class_weights == "balanced" else None)
    scheduler = _linear_warmup_decay(optimizer, round(hp.warmup_ratio * total_steps), total_steps)
    result = result if result is not None else TrainingResult()
    checkpoint_split = validation
    if settings.eval_subset_examples is not None and settings.eval_subset_examples < len(validation):
        _, subset = stratified_split(validation.labels, settings.eval_subset_examples / len(validation),
                                     np.random.default_rng(EVAL_SUBSET_SEED))
        checkpoint_split = validation.subset(subset)

    def run_evaluation(step: int) -> None:
        started = time.perf_counter()
        split = validation if step == total_steps else checkpoint_split
        loss, metrics = evaluate(model, split, settings, num_labels)
        result.eval_seconds += time.perf_counter() - started
        result.eval_tokens += int(split.lengths.sum())
        evaluation = Evaluation(step=step, examples=step * hp.batch_size, epoch=step / steps_per_epoch,
                                loss=loss, metrics=metrics, last=step == total_steps)
        result.evaluations.append(evaluation)
        on_evaluation(evaluation)

    sync_every = settings.sync_every or host_sync_every(settings.device)
    pending: list[tuple[int, float, torch.Tensor, torch.Tensor, int]] = []  # steps not yet read
    segment_started = time.perf_counter()

    def read_pending() -> None:
        """One host read for the pending steps: their time, then their logs, in order."""
        nonlocal segment_started
        values = torch.stack([torch.stack((loss, norm.float())) for _, _, loss, norm, _ in pending]).tolist()
        elapsed = time.perf_counter() - segment_started
        result.train_seconds += elapsed
        rate = sum(tokens for *_, tokens in pending) / elapsed if elapsed > 0 else 0.0
        steps = [(step, learning_rate, tokens) for step, learning_rate, _, _, tokens in pending]
        pending.clear()
        for (step, learning_rate, tokens), (loss, grad_norm) in zip(steps, values):
            if not math.isfinite(loss):
                raise NonFiniteLoss(step, loss)
            on_step(StepLog(step, loss, learning_rate, grad_norm, rate, tokens))
        segment_started = time.perf_counter()  # the callbacks' time is not training's

    lengths = train.lengths
    step = 0
    try:
        for _ in range(hp.num_epochs):
            order = rng.permutation(len(train))[:steps_per_epoch * hp.batch_size]
            if settings.group_by_length:
                order = length_grouped(order, lengths, hp.batch_size, rng)
            for inputs, labels, tokens in batches(train, order, hp.batch_size, settings.device,
                                                  settings.pad_to_multiple_of):
                loss = _accumulate_gradients(model, inputs, labels, settings, class_weights)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
                learning_rate = scheduler.get_last_lr()[0]  # the step's own: `scheduler.step()` moves on
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                result.steps, result.train_tokens = step, result.train_tokens + tokens
                pending.append((step, learning_rate, loss, grad_norm, tokens))
                if step in checkpoints or len(pending) >= sync_every:
                    read_pending()
                if step in checkpoints:
                    run_evaluation(step)
                    segment_started = time.perf_counter()
    except BaseException:
        if pending:  # stopped mid-group (out of memory, say): its steps took time too
            result.train_seconds += time.perf_counter() - segment_started
        raise
    return result
