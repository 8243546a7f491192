"""The training loop's pieces: schedule, batching, evaluation, determinism, caching."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import benchmark.train.loop
from benchmark.config.spec import DatasetSpec, EncoderSpec
from benchmark.data.dataset import prepare
from benchmark.data.tokenization import TokenizationCache, batch_bounds, batches, length_grouped, tokenize_split
from benchmark.train.encoders import load_classifier, load_tokenizer, resolve
from benchmark.train.loop import (
    LoopSettings,
    _accumulate_gradients,
    _linear_warmup_decay,
    balanced_class_weights,
    _optimizer,
    checkpoint_steps,
    evaluate,
    fine_tune,
    padding_multiple,
    predict,
)
from benchmark.train.metrics import classification_metrics
from benchmark.train.records import Hyperparameters
from tests.helpers import make_texts, write_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def topics():
    frame = make_texts(90, seed=11)
    frame["pair"] = make_texts(90, seed=12)["text"]
    return prepare("topics", {"train": frame}, DatasetSpec(source="file", path="x.csv", text_pair="pair"), seed=0)


@pytest.fixture(scope="module")
def bert(tiny_encoders):
    return resolve("bert", EncoderSpec(source="local", path=tiny_encoders["bert"]))


def test_linear_warmup_then_linear_decay_to_zero():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = _linear_warmup_decay(optimizer, warmup_steps=2, total_steps=6)
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warmup: (step+1)/(warmup+1) for steps 0,1; then (6-step)/(6-2) for steps 2..5
    assert rates == pytest.approx([1 / 3, 2 / 3, 4 / 4, 3 / 4, 2 / 4, 1 / 4])


def test_batches_pad_dynamically_and_count_real_tokens(topics, bert):
    split = tokenize_split(load_tokenizer(bert), topics.train, max_length=32)
    order = np.arange(5)
    inputs, labels, tokens = next(batches(split, order, 5, CPU))
    lengths = [len(split.input_ids[i]) for i in order]
    assert inputs["input_ids"].shape == (5, max(lengths))
    assert inputs["attention_mask"].sum(dim=1).tolist() == lengths
    assert tokens == sum(lengths)
    assert labels.tolist() == split.labels[:5].tolist()
    row = int(np.argmin(lengths))
    assert (inputs["input_ids"][row, lengths[row]:] == split.pad_token_id).all()
    # pairs: the second segment is marked with type id 1
    assert inputs["token_type_ids"][0, :lengths[0]].max().item() == 1


def test_evaluate_matches_a_plain_full_batch_forward(topics, bert):
    split = tokenize_split(load_tokenizer(bert), topics.validation, max_length=32)
    torch.manual_seed(0)
    model = load_classifier(bert, topics.label_names, dropout=0.1)
    settings = LoopSettings(eval_every_examples=1, eval_batch_size=4, seed=0, device=CPU, autocast_dtype=None)
    loss, metrics = evaluate(model, split, settings, topics.num_labels)
    assert model.training, "evaluate hands the model back in training mode"

    model.eval()
    inputs, labels, _ = next(batches(split, np.arange(len(split)), len(split), CPU))
    with torch.no_grad():
        logits = model(**inputs).logits
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    expected = classification_metrics(labels.numpy(), logits.argmax(-1).numpy(), topics.num_labels)
    assert metrics == expected
    # The final evaluation keeps these: in the split's order, though evaluated sorted by length.
    predict_loss, predictions = predict(model, split, settings)
    assert predict_loss == loss and predictions.tolist() == logits.argmax(-1).tolist()


def test_batch_bounds_cap_examples_and_padded_tokens():
    widths = np.array([2, 2, 3, 3, 5, 8, 8, 20])
    assert batch_bounds(widths, 3) == [(0, 3), (3, 6), (6, 8)], "count alone"
    # At most 10 padded tokens: [2, 2, 3] is 3 x 3 = 9 (a fourth makes 4 x 3); [3, 5] is 2 x 5;
    # two 8s would be 16; the 20-token example, over the bound by itself, still gets a batch.
    assert batch_bounds(widths, 8, max_tokens=10) == [(0, 3), (3, 5), (5, 6), (6, 7), (7, 8)]
    assert batch_bounds(widths, 2, max_tokens=100) == [(0, 2), (2, 4), (4, 6), (6, 8)], "count still binds"
    assert batch_bounds(np.array([], dtype=np.int64), 4, max_tokens=8) == []
    # Sorted short-first, short examples share bigger batches than long ones.
    sorted_widths = np.array([4] * 8 + [16] * 4)
    sizes = [end - start for start, end in batch_bounds(sorted_widths, 64, max_tokens=32)]
    assert sizes == [8, 2, 2]
    for start, end in batch_bounds(sorted_widths, 64, max_tokens=32):
        assert (end - start) * sorted_widths[start:end].max() <= 32


def test_a_token_bound_cuts_evaluation_batches_and_changes_no_prediction(topics, bert, monkeypatch):
    split = tokenize_split(load_tokenizer(bert), topics.validation, max_length=32)
    torch.manual_seed(0)
    model = load_classifier(bert, topics.label_names, dropout=0.1)
    unbounded = LoopSettings(eval_every_examples=1, eval_batch_size=1024, seed=0, device=CPU, autocast_dtype=None)
    bounded = LoopSettings(eval_every_examples=1, eval_batch_size=1024, seed=0, device=CPU, autocast_dtype=None,
                           eval_batch_tokens=64)
    shapes = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, **inputs: (
        shapes.append(tuple(inputs["input_ids"].shape)), forward(self, **inputs))[1])
    loss, predictions = predict(model, split, unbounded)
    assert shapes == [(len(split), max(split.lengths))]
    shapes.clear()
    bounded_loss, bounded_predictions = predict(model, split, bounded)
    assert len(shapes) > 1 and all(rows * width <= 64 for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(split)
    assert bounded_loss == pytest.approx(loss, rel=1e-5)
    assert bounded_predictions.tolist() == predictions.tolist()


def test_a_cpu_evaluates_in_token_bounded_batches_of_the_configured_size_a_gpu_in_memory_sized_ones(
        tmp_path, tiny_encoders, monkeypatch):
    from benchmark.config.spec import load_config
    from benchmark.search import trial as trial_module
    from benchmark.search.preflight import prepare_studies
    from benchmark.train.loop import CPU_EVAL_BATCH_TOKENS, MAX_EVAL_BATCH

    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",))).restricted(["topics"], None)
    study = prepare_studies(config, f"sqlite:///{tmp_path / 'db.sqlite'}", ["none"], tmp_path).studies[0]
    on_cpu = trial_module.loop_settings(study, "bert", seed=0)
    assert (on_cpu.eval_batch_size, on_cpu.eval_batch_tokens) == (32, CPU_EVAL_BATCH_TOKENS)
    monkeypatch.setattr(trial_module, "available_device_memory", lambda device: 140 * 2**30)
    on_gpu = trial_module.loop_settings(replace(study, device=torch.device("cuda")), "bert", seed=0)
    assert (on_gpu.eval_batch_size, on_gpu.eval_batch_tokens) == (MAX_EVAL_BATCH, None)


def _train(bert, topics, cache, seed=0, epochs=2):
    tokenized = cache.get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    torch.manual_seed(123)
    model = load_classifier(bert, topics.label_names, dropout=0.1)
    hp = Hyperparameters(learning_rate=3e-3, warmup_ratio=0.1, dropout=0.1, max_grad_norm=1.0,
                         weight_decay=0.01, batch_size=16, num_epochs=epochs)
    settings = LoopSettings(eval_every_examples=32, eval_batch_size=32, seed=seed, device=CPU, autocast_dtype=None)
    steps, evaluations = [], []
    result = fine_tune(model, tokenized.train, tokenized.validation, topics.num_labels, hp, settings,
                       steps.append, evaluations.append)
    return result, steps, evaluations


def test_fine_tune_evaluates_on_schedule_is_deterministic_and_learns(topics, bert):
    cache = TokenizationCache()
    result, steps, evaluations = _train(bert, topics, cache)
    steps_per_epoch = len(topics.train) // 16  # full batches only
    total = 2 * steps_per_epoch
    assert result.steps == total == len(steps)
    # every 32 examples = every 2 steps at batch 16, and once more at the end
    assert [e.step for e in evaluations] == sorted(set(list(range(2, total + 1, 2)) + [total]))
    assert [e.examples for e in evaluations] == [16 * e.step for e in evaluations]
    assert evaluations == result.evaluations
    assert result.final.epoch == pytest.approx(2.0)
    assert all(s.grad_norm > 0 and s.tokens_per_second > 0 for s in steps)
    assert steps[-1].learning_rate < steps[0].learning_rate or steps[0].learning_rate < 3e-3
    train_lengths = cache.get(topics, bert.location, 32, lambda: None).train.lengths
    assert result.train_tokens < 2 * train_lengths.sum()  # the partial last batch is skipped
    assert result.train_tokens >= 2 * (train_lengths.sum() - 15 * train_lengths.max())
    again, _, _ = _train(bert, topics, cache)
    assert [e.metrics for e in again.evaluations] == [e.metrics for e in evaluations]


def test_fine_tune_learns_the_topics(topics, bert):
    result, _, evaluations = _train(bert, topics, TokenizationCache(), epochs=10)
    assert result.final.loss < evaluations[0].loss
    assert result.final.metrics["accuracy"] >= 0.6  # chance is 1/3, on 8 validation texts


def test_each_step_logs_the_learning_rate_it_trained_with(topics, bert):
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    model = load_classifier(bert, topics.label_names, dropout=0.0)
    # 8 steps of one example, 4 of them warmup
    hp = Hyperparameters(learning_rate=1e-3, warmup_ratio=0.5, dropout=0.0, max_grad_norm=1.0,
                         weight_decay=0.0, batch_size=1, num_epochs=1)
    settings = LoopSettings(eval_every_examples=8, eval_batch_size=8, seed=0, device=CPU, autocast_dtype=None)
    steps = []
    fine_tune(model, tokenized.train.subset(np.arange(8)), tokenized.validation, topics.num_labels, hp,
              settings, steps.append, lambda e: None)
    # steps 0..3: (step+1)/(4+1); steps 4..7: (8-step)/(8-4). Read after the scheduler's step,
    # the rates would be one step ahead: 2/5, ..., 1/4, 0.
    assert [s.learning_rate for s in steps] == pytest.approx(
        [1e-3 * f for f in (1 / 5, 2 / 5, 3 / 5, 4 / 5, 4 / 4, 3 / 4, 2 / 4, 1 / 4)])


def _counting_loader(encoder):
    """A tokenizer loader, and the list that grows by one at each of its loads."""
    loads = []

    def loader():
        loads.append(1)
        return load_tokenizer(encoder)

    return loads, loader


def test_tokenizer_runs_once_per_dataset_tokenizer_and_length(topics, bert):
    cache = TokenizationCache()
    loads, loader = _counting_loader(bert)
    first = cache.get(topics, bert.location, 32, loader)
    assert cache.get(topics, bert.location, 32, loader) is first
    cache.get(topics, bert.location, 16, loader)
    assert len(loads) == 2
    assert max(len(ids) for ids in cache.get(topics, bert.location, 16, loader).train.input_ids) <= 16


def test_the_cache_drops_its_least_recently_used_entry_beyond_its_size(topics, bert):
    cache = TokenizationCache(max_entries=2)
    loads, loader = _counting_loader(bert)
    for length in (16, 24, 16, 32):  # 16 used again after 24: 24 is the one dropped for 32
        cache.get(topics, bert.location, length, loader)
    assert len(loads) == 3
    cache.get(topics, bert.location, 16, loader)
    cache.get(topics, bert.location, 32, loader)
    assert len(loads) == 3, "16 and 32 were kept"
    cache.get(topics, bert.location, 24, loader)
    assert len(loads) == 4, "24 was dropped, and is tokenized again"


def test_micro_batches_with_accumulation_train_the_same_model(topics, bert):
    cache = TokenizationCache()
    tokenized = cache.get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    hp = Hyperparameters(learning_rate=3e-3, warmup_ratio=0.1, dropout=0.0, max_grad_norm=1.0,
                         weight_decay=0.01, batch_size=16, num_epochs=2)
    outcomes = []
    for micro in (None, 4):
        torch.manual_seed(123)
        model = load_classifier(bert, topics.label_names, dropout=0.0)
        settings = LoopSettings(eval_every_examples=32, eval_batch_size=32, seed=0, device=CPU,
                                autocast_dtype=None, micro_batch_size=micro)
        steps = []
        result = fine_tune(model, tokenized.train, tokenized.validation, topics.num_labels, hp, settings,
                           steps.append, lambda e: None)
        outcomes.append((result, [s.loss for s in steps], [s.grad_norm for s in steps]))
    (full, full_losses, full_norms), (micro, micro_losses, micro_norms) = outcomes
    assert micro_losses == pytest.approx(full_losses, rel=1e-4)
    assert micro_norms == pytest.approx(full_norms, rel=1e-3)
    assert [e.metrics for e in micro.evaluations] == [e.metrics for e in full.evaluations]


def test_padding_to_a_multiple_widens_the_batch_but_not_the_real_tokens(topics, bert):
    split = tokenize_split(load_tokenizer(bert), topics.train, max_length=32)
    order = np.arange(6)
    plain, _, plain_tokens = next(batches(split, order, 6, CPU))
    padded, _, padded_tokens = next(batches(split, order, 6, CPU, pad_to_multiple_of=8))
    width = plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] == -(-width // 8) * 8
    assert padded_tokens == plain_tokens
    assert torch.equal(padded["attention_mask"][:, :width], plain["attention_mask"])
    assert padded["attention_mask"][:, width:].sum() == 0
    assert padding_multiple(torch.device("cuda")) == 8 and padding_multiple(CPU) == 1


def test_length_grouped_batches_hold_similar_lengths_from_one_group():
    lengths = np.array([5, 1, 7, 3, 8, 2, 6, 4])
    grouped = length_grouped(np.arange(8), lengths, batch_size=2, rng=np.random.default_rng(0), batches_per_group=2)
    # Groups [0..3] and [4..7], each sorted longest first and cut into batches, batches shuffled.
    batches_of_two = {tuple(grouped[i:i + 2]) for i in range(0, 8, 2)}
    assert batches_of_two == {(2, 0), (3, 1), (4, 6), (7, 5)}
    assert sorted(grouped) == list(range(8))

    def padded_tokens(order):
        return sum(2 * lengths[order[i:i + 2]].max() for i in range(0, 8, 2))

    assert padded_tokens(grouped) == 2 * (7 + 3 + 8 + 4)  # 44 for 36 real tokens
    assert padded_tokens(np.arange(8)) == 2 * (5 + 7 + 8 + 6)  # 52 without grouping


def test_length_grouped_training_sees_the_same_examples_with_less_padding(topics, bert, monkeypatch):
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    hp = Hyperparameters(learning_rate=3e-3, warmup_ratio=0.1, dropout=0.0, max_grad_norm=1.0,
                         weight_decay=0.01, batch_size=16, num_epochs=1)
    trained = []
    real_batches = benchmark.train.loop.batches

    def recording_batches(split, order, batch_size, *args):
        if batch_size == hp.batch_size:  # the training batches, not the evaluation's
            trained.append(order.copy())
        yield from real_batches(split, order, batch_size, *args)

    monkeypatch.setattr(benchmark.train.loop, "batches", recording_batches)
    runs = {}
    for grouped in (False, True):
        settings = LoopSettings(eval_every_examples=10**6, eval_batch_size=64, seed=0, device=CPU,
                                autocast_dtype=None, group_by_length=grouped)
        trained.clear()
        result = fine_tune(load_classifier(bert, topics.label_names, dropout=0.0), tokenized.train,
                           tokenized.validation, topics.num_labels, hp, settings, lambda s: None, lambda e: None)
        (order,) = trained
        lengths = tokenized.train.lengths[order]
        padded = sum(len(batch) * batch.max() for batch in np.split(lengths, len(lengths) // hp.batch_size))
        runs[grouped] = result, order, padded
    (plain, plain_order, plain_padded), (grouped, grouped_order, grouped_padded) = runs[False], runs[True]
    assert sorted(grouped_order) == sorted(plain_order), "the epoch's examples, in another order"
    assert grouped.train_tokens == plain.train_tokens
    assert grouped_padded < plain_padded


def test_fused_adamw_where_the_device_has_it(topics, bert):
    model = load_classifier(bert, topics.label_names, dropout=0.0)
    hp = Hyperparameters(1e-3, 0.0, 0.0, 1.0, 0.01, 8, 1)
    for fused in (True, False):
        settings = LoopSettings(1, 1, 0, CPU, None, fused_optimizer=fused)
        assert bool(_optimizer(model, hp, settings).defaults["fused"]) is fused
    assert not _optimizer(model, hp, LoopSettings(1, 1, 0, torch.device("mps"), None)).defaults["fused"]


def _run(bert, topics, tokenized, settings):
    hp = Hyperparameters(learning_rate=3e-3, warmup_ratio=0.1, dropout=0.0, max_grad_norm=1.0,
                         weight_decay=0.01, batch_size=16, num_epochs=2)
    torch.manual_seed(123)
    model = load_classifier(bert, topics.label_names, dropout=0.0)
    steps, logged_at_evaluations = [], []
    result = fine_tune(model, tokenized.train, tokenized.validation, topics.num_labels, hp, settings,
                       steps.append, lambda e: logged_at_evaluations.append(len(steps)))
    return result, steps, logged_at_evaluations


def test_the_fast_path_computes_what_the_plain_path_computes(topics, bert, monkeypatch):
    """Fused AdamW, padding to a multiple of 8 and a validation subset at the checkpoints change
    speed, not the trial: the same losses, and the same final (full-split) metrics."""
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    plain = LoopSettings(eval_every_examples=32, eval_batch_size=32, seed=0, device=CPU, autocast_dtype=None,
                         fused_optimizer=False)
    fast = LoopSettings(eval_every_examples=32, eval_batch_size=32, seed=0, device=CPU, autocast_dtype=None,
                        fused_optimizer=True, pad_to_multiple_of=8, eval_subset_examples=5)
    evaluated, evaluated_tokens = [], []
    real_evaluate = benchmark.train.loop.evaluate

    def recording_evaluate(model, split, settings, num_labels):
        evaluated.append(split.labels.copy())
        evaluated_tokens.append(sum(len(ids) for ids in split.input_ids))
        return real_evaluate(model, split, settings, num_labels)

    monkeypatch.setattr(benchmark.train.loop, "evaluate", recording_evaluate)
    plain_result, plain_steps, _ = _run(bert, topics, tokenized, plain)
    plain_sizes = [len(labels) for labels in evaluated]
    # every evaluation's real tokens, padding left out: here every one is of the whole split
    assert plain_result.eval_tokens == sum(evaluated_tokens) == len(evaluated) * tokenized.validation.lengths.sum()
    evaluated.clear()
    evaluated_tokens.clear()
    fast_result, fast_steps, _ = _run(bert, topics, tokenized, fast)
    # the checkpoints' subsets and the last whole split, padded to a multiple of 8 or not
    assert fast_result.eval_tokens == sum(evaluated_tokens) < plain_result.eval_tokens

    assert [s.loss for s in fast_steps] == pytest.approx([s.loss for s in plain_steps], rel=1e-4)
    assert fast_result.final.metrics == plain_result.final.metrics
    assert fast_result.final.loss == pytest.approx(plain_result.final.loss, rel=1e-4)

    validation = tokenized.validation.labels
    assert set(plain_sizes) == {len(validation)}
    *checkpoints, last = evaluated
    assert len(last) == len(validation), "the trial's value is measured on the whole split"
    assert checkpoints and all(len(labels) == 5 for labels in checkpoints)
    assert all(np.array_equal(labels, checkpoints[0]) for labels in checkpoints), "one fixed subset"
    assert set(checkpoints[0]) == set(validation), "stratified: every class is in the subset"


def test_checkpoints_do_not_change_the_training_or_the_trials_value(topics, bert):
    """What `prune: false` relies on: a run evaluated only at its end trains and scores as one
    with checkpoints (dropout on, so the random stream must not move either)."""
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    hp = Hyperparameters(learning_rate=3e-3, warmup_ratio=0.1, dropout=0.1, max_grad_norm=1.0,
                         weight_decay=0.01, batch_size=16, num_epochs=2)
    runs = {}
    for schedule in ("fixed", "end"):
        settings = LoopSettings(eval_every_examples=16, eval_batch_size=32, seed=0, device=CPU, autocast_dtype=None,
                                eval_schedule=schedule)
        torch.manual_seed(123)
        model = load_classifier(bert, topics.label_names, dropout=0.1)
        steps = []
        result = fine_tune(model, tokenized.train, tokenized.validation, topics.num_labels, hp, settings,
                           steps.append, lambda e: None)
        runs[schedule] = result, [s.loss for s in steps]
    (checked, checked_losses), (at_end, end_losses) = runs["fixed"], runs["end"]
    assert len(checked.evaluations) > 1 and [e.step for e in at_end.evaluations] == [checked.final.step]
    assert end_losses == checked_losses
    assert at_end.final.metrics == checked.final.metrics and at_end.final.loss == checked.final.loss


def test_checkpoint_steps_by_hand():
    # 10 steps an epoch, 3 epochs, batch 16, every 32 examples = every 2 steps
    assert checkpoint_steps(10, 3, 16, 32, "fixed") == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    assert checkpoint_steps(10, 3, 16, 32, "geometric") == [2, 4, 8, 16, 30]
    # the last power of two is the last step: not evaluated twice
    assert checkpoint_steps(4, 2, 8, 8, "geometric") == [1, 2, 4, 8]
    # an interval longer than the run: only the end
    assert checkpoint_steps(5, 1, 32, 192, "geometric") == [5]
    assert checkpoint_steps(5, 1, 32, 192, "fixed") == [5]
    # default.yaml on bbc_news: 240 examples, 3 epochs, every 192 examples
    assert checkpoint_steps(15, 3, 16, 192, "fixed") == [12, 24, 36, 45]
    assert checkpoint_steps(15, 3, 16, 192, "geometric") == [12, 24, 45]
    assert checkpoint_steps(7, 3, 32, 192, "geometric") == [6, 12, 21]
    # an encoder with `prune: false`, and the final evaluation's retraining: the end only
    assert checkpoint_steps(15, 3, 16, 192, "end") == [45]
    with pytest.raises(ValueError, match="'hourly'"):
        checkpoint_steps(10, 1, 16, 32, "hourly")


@pytest.mark.parametrize("schedule", ["fixed", "geometric"])
def test_every_batch_size_reaches_the_pruner_at_the_same_example_counts(schedule):
    """The pruner compares trials at `Evaluation.examples` = step x batch size: every
    checkpoint before the last falls on the same example counts whatever the batch size."""
    train_examples, every = 384, 48  # 1152 examples in 3 epochs: 24 intervals
    seen = {}
    for batch_size in (8, 16, 24, 48):
        steps_per_epoch = train_examples // batch_size
        steps = checkpoint_steps(steps_per_epoch, 3, batch_size, every, schedule)
        assert steps[-1] == 3 * steps_per_epoch
        seen[batch_size] = [step * batch_size for step in steps[:-1]]
    expected = ([48 * k for k in range(1, 24)] if schedule == "fixed" else [48, 96, 192, 384, 768])
    assert all(examples == expected for examples in seen.values()), seen


def test_fine_tune_follows_the_geometric_schedule_at_any_batch_size(topics, bert):
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    settings = LoopSettings(eval_every_examples=16, eval_batch_size=32, seed=0, device=CPU, autocast_dtype=None,
                            eval_schedule="geometric")
    reported = {}
    for batch_size in (8, 16):
        hp = Hyperparameters(learning_rate=1e-4, warmup_ratio=0.0, dropout=0.0, max_grad_norm=1.0,
                             weight_decay=0.0, batch_size=batch_size, num_epochs=2)
        torch.manual_seed(0)
        model = load_classifier(bert, topics.label_names, dropout=0.0)
        evaluations = []
        fine_tune(model, tokenized.train, tokenized.validation, topics.num_labels, hp, settings,
                  lambda _: None, evaluations.append)
        assert evaluations[-1].last and evaluations[-1].examples == 2 * (len(tokenized.train) // batch_size) * batch_size
        reported[batch_size] = [e.examples for e in evaluations[:-1]]
    # 4 batches of 16 an epoch (8 steps, every step 16 examples), 9 of 8 (18 steps, every 2 steps 16)
    assert (len(tokenized.train) // 16, len(tokenized.train) // 8) == (4, 9)
    assert reported == {8: [16, 32, 64, 128], 16: [16, 32, 64]}


def test_the_compile_setting_compiles_the_model_once_and_pads_to_a_few_shapes(topics, bert, monkeypatch):
    # widths 1..64 become 16, 32, 48, 64: four shapes to compile for
    assert padding_multiple(CPU, compiled=True) == 16 and padding_multiple(torch.device("cuda"), compiled=True) == 16
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    hp = Hyperparameters(learning_rate=1e-4, warmup_ratio=0.0, dropout=0.0, max_grad_norm=1.0,
                         weight_decay=0.0, batch_size=16, num_epochs=1)
    for compile_it in (False, True):
        model = load_classifier(bert, topics.label_names, dropout=0.0)
        compiled = []
        monkeypatch.setattr(model, "compile", lambda: compiled.append(True))
        settings = LoopSettings(eval_every_examples=16, eval_batch_size=32, seed=0, device=CPU, autocast_dtype=None,
                                compile=compile_it, pad_to_multiple_of=padding_multiple(CPU, compile_it))
        fine_tune(model, tokenized.train, tokenized.validation, topics.num_labels, hp, settings,
                  lambda _: None, lambda _: None)
        assert compiled == [True] * compile_it


def test_steps_read_off_the_device_in_groups_train_and_log_what_single_reads_do(topics, bert):
    """The host reads losses every `sync_every` steps (a GPU's default, see host_sync_every),
    without changing the training: the same steps, losses, norms and rates, in order, and every
    step logged before the checkpoint that follows it."""
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    runs = [_run(bert, topics, tokenized, LoopSettings(eval_every_examples=96, eval_batch_size=32, seed=0,
                                                        device=CPU, autocast_dtype=None, sync_every=sync_every))
            for sync_every in (1, 5)]
    (single, single_steps, single_logged), (grouped, grouped_steps, grouped_logged) = runs
    assert grouped.steps > 5 + 1, "a group of 5, then the groups the checkpoints cut"
    assert grouped_logged == single_logged == [e.step for e in grouped.evaluations]
    assert [s.step for s in grouped_steps] == list(range(1, grouped.steps + 1))
    assert [s.loss for s in grouped_steps] == pytest.approx([s.loss for s in single_steps], rel=1e-5)
    assert [s.grad_norm for s in grouped_steps] == pytest.approx([s.grad_norm for s in single_steps], rel=1e-5)
    assert [s.learning_rate for s in grouped_steps] == [s.learning_rate for s in single_steps]
    assert all(s.tokens_per_second > 0 for s in grouped_steps) and grouped.train_seconds > 0
    assert grouped.final.metrics == single.final.metrics


def test_a_nan_loss_is_caught_at_the_next_read_with_its_own_step(topics, bert, monkeypatch):
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    real = benchmark.train.loop._accumulate_gradients
    calls = []

    def nan_at_step_3(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(benchmark.train.loop, "_accumulate_gradients", nan_at_step_3)
    hp = Hyperparameters(learning_rate=1e-3, warmup_ratio=0.0, dropout=0.0, max_grad_norm=1.0,
                         weight_decay=0.0, batch_size=8, num_epochs=1)
    settings = LoopSettings(eval_every_examples=10**6, eval_batch_size=32, seed=0, device=CPU,
                            autocast_dtype=None, sync_every=4)
    steps = []
    result = benchmark.train.loop.TrainingResult()
    with pytest.raises(benchmark.train.loop.NonFiniteLoss) as raised:
        fine_tune(load_classifier(bert, topics.label_names, dropout=0.0), tokenized.train, tokenized.validation,
                  topics.num_labels, hp, settings, steps.append, lambda e: None, result)
    assert raised.value.step == 3 and len(calls) == 4, "noticed at the read after step 4, named as step 3"
    assert [s.step for s in steps] == [1, 2] and result.train_seconds > 0


def test_the_host_reads_a_gpu_every_few_steps_and_a_cpu_every_step():
    from benchmark.train.loop import CUDA_SYNC_EVERY, host_sync_every

    assert host_sync_every(torch.device("cuda")) == CUDA_SYNC_EVERY > 1
    assert host_sync_every(CPU) == 1


def test_evaluation_batches_are_sized_to_the_memory_a_gpu_leaves():
    from benchmark.train.loop import (
        EVAL_BYTES_PER_TOKEN,
        MAX_EVAL_BATCH,
        evaluation_batch_size,
    )

    assert evaluation_batch_size(64, 128, None) == 64, "MPS keeps the configured size"
    assert evaluation_batch_size(64, 128, 140 * 2**30) == MAX_EVAL_BATCH  # an H200
    # 16 GiB: a quarter of it holds 4 GiB / (128 x 64 KiB) = 512 examples at 128 tokens, 256 at 256.
    assert evaluation_batch_size(64, 128, 16 * 2**30) == 512
    assert evaluation_batch_size(64, 256, 16 * 2**30) == 256
    one_example = 4 * 128 * EVAL_BYTES_PER_TOKEN
    assert evaluation_batch_size(64, 128, 100 * one_example) == 64, "never below the configured size"
    assert evaluation_batch_size(64, 128, one_example // 2) == 64, "nothing fits: as configured"


def test_available_memory_is_a_gpus_share_of_its_free_memory(monkeypatch):
    from benchmark.train.loop import available_device_memory

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (60 * gib, 100 * gib))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 0.25)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 5 * gib)
    gpu = torch.device("cuda")
    assert available_device_memory(gpu) == 20 * gib, "a quarter of 100 GiB, less the 5 GiB held"
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device: 1.0)
    assert available_device_memory(gpu) == 60 * gib, "the device's free memory"
    assert available_device_memory(CPU) is None, "a CPU's batches are bounded by tokens instead"
    assert available_device_memory(torch.device("mps")) is None


def test_batches_go_to_a_gpu_through_pinned_memory_without_waiting(monkeypatch):
    from benchmark.data.tokenization import to_device

    copies = []

    class Pinned:
        def to(self, device, non_blocking=False):
            copies.append((device, non_blocking))
            return "on the gpu"

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: Pinned())
    gpu = torch.device("cuda")
    assert to_device(np.arange(3), gpu) == "on the gpu" and copies == [(gpu, True)]
    on_cpu = to_device(np.arange(3), CPU)
    assert copies == [(gpu, True)], "no pinning for a CPU"
    assert torch.equal(on_cpu, torch.arange(3))


def test_the_tokenization_cache_is_keyed_by_the_texts_not_the_dataset_name(topics, bert):
    import dataclasses

    cache = TokenizationCache()
    loads, loader = _counting_loader(bert)
    first = cache.get(topics, bert.location, 32, loader)
    renamed = dataclasses.replace(topics, name="another study of the same texts")
    assert cache.get(renamed, bert.location, 32, loader) is first and len(loads) == 1
    fewer = dataclasses.replace(topics, train=topics.train.subset(np.arange(20)))  # same name, other examples
    assert len(cache.get(fewer, bert.location, 32, loader).train) == 20 and len(loads) == 2
    assert cache.get(topics, (bert.location, "another revision"), 32, loader) is not first


def test_a_second_run_in_the_process_reuses_the_first_runs_tokens(tmp_path, tiny_encoders, monkeypatch):
    """Studies, and the final evaluation after them, prepared separately in one process
    (benchmarks, notebooks) tokenize each split once."""
    from benchmark.config.spec import load_config
    from benchmark.data import tokenization
    from benchmark.search import preflight

    monkeypatch.setattr(tokenization, "SHARED", TokenizationCache())
    config = load_config(write_config(tmp_path, tiny_encoders, encoders=("bert",), training__precision="fp32"))
    tokenized = []
    for run in ("study", "final-eval"):
        prepared = preflight.prepare_studies(config, f"sqlite:///{tmp_path / 'optuna.db'}", ["none"], tmp_path / run)
        study = prepared.studies[0]
        encoder = study.encoders["bert"]
        tokenized.append(study.tokenization.get(study.data, (encoder.location, encoder.revision), 32,
                                                lambda encoder=encoder: load_tokenizer(encoder)))
    assert tokenized[1] is tokenized[0]


def test_balanced_class_weights_are_scikit_learns():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 12 + [1] * 5 + [2] * 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert balanced_class_weights(labels, 3) == pytest.approx(expected)
    assert balanced_class_weights(labels, 3) == pytest.approx([20 / 36, 20 / 15, 20 / 9])
    # averaged over the examples, the weights are 1: the loss keeps its scale
    assert balanced_class_weights(labels, 3)[labels].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"label id\(s\) \[3\] have no training example"):
        balanced_class_weights(labels, 4)


def test_weighted_loss_adds_up_over_micro_batches(topics, bert):
    split = tokenize_split(load_tokenizer(bert), topics.train, max_length=32)
    inputs, labels, _ = next(batches(split, np.arange(12), 12, CPU))
    weights = torch.tensor([0.5, 1.0, 3.0])
    losses = []
    for micro in (None, 5):
        torch.manual_seed(0)
        model = load_classifier(bert, topics.label_names, dropout=0.0)
        settings = LoopSettings(eval_every_examples=12, eval_batch_size=12, seed=0, device=CPU, autocast_dtype=None,
                                micro_batch_size=micro)
        losses.append(_accumulate_gradients(model, inputs, labels, settings, weights))
    with torch.no_grad():
        logits = model(**inputs).logits
    by_hand = (weights[labels] * F.cross_entropy(logits, labels, reduction="none")).sum().item() / len(labels)
    assert losses == pytest.approx([by_hand, by_hand], rel=1e-4)


@pytest.mark.parametrize("class_weights", ["none", "balanced"])
def test_fine_tune_weights_the_training_loss_by_the_train_splits_counts(topics, bert, monkeypatch, class_weights):
    tokenized = TokenizationCache().get(topics, bert.location, 32, lambda: load_tokenizer(bert))
    used = []
    real = benchmark.train.loop._accumulate_gradients

    def recording(model, inputs, labels, settings, weights=None):
        used.append(weights)
        return real(model, inputs, labels, settings, weights)

    monkeypatch.setattr(benchmark.train.loop, "_accumulate_gradients", recording)
    hp = Hyperparameters(learning_rate=1e-3, warmup_ratio=0.0, dropout=0.0, max_grad_norm=1.0, weight_decay=0.0,
                         batch_size=16, num_epochs=1, class_weights=class_weights)
    settings = LoopSettings(eval_every_examples=10_000, eval_batch_size=32, seed=0, device=CPU, autocast_dtype=None)
    torch.manual_seed(0)
    fine_tune(load_classifier(bert, topics.label_names, dropout=0.0), tokenized.train, tokenized.validation,
              topics.num_labels, hp, settings, lambda log: None, lambda evaluation: None)
    assert used
    if class_weights == "none":
        assert all(weights is None for weights in used)
    else:
        expected = balanced_class_weights(tokenized.train.labels, topics.num_labels)
        assert all(weights.tolist() == pytest.approx(expected.tolist()) for weights in used)


def test_a_trial_records_its_class_weights_among_its_parameters(tmp_path):
    import optuna

    from benchmark.config.spec import BenchmarkConfig
    from benchmark.search.trial import sample_hyperparameters

    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3},
             **{name: {"type": "float", "low": 0.0, "high": 0.1} for name in ("warmup_ratio", "dropout")},
             "max_grad_norm": {"type": "float", "low": 0.5, "high": 1.0},
             "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
             "batch_size": {"type": "categorical", "choices": [8]}, "num_epochs": {"type": "int", "low": 1, "high": 1}}
    config = BenchmarkConfig.model_validate({
        "name": "x", "encoders": {"e": {"source": "offline"}},
        "datasets": {"d": {"source": "offline"}}, "search_space": space,
        "training": {"class_weights": "balanced", "eval_every_examples": 8}})
    trial = optuna.create_study().ask()
    hp = sample_hyperparameters(trial, config.search_space, config.encoders["e"])
    assert hp.class_weights == "balanced" and trial.params["class_weights"] == "balanced"
