"""Reference baselines: hand-computed majority-class metrics, a TF-IDF model on a separable
toy set, and the stored attribute read back from the storage into the leaderboard."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import optuna
import pytest

from benchmark.data.dataset import Split, TextClassificationData
from benchmark.report.leaderboard import encoder_leaderboard, reference_flags
from benchmark.report.results import references_frame, trials_frame
from benchmark.schema import BENCHMARK_ATTR, DATASET_ATTR, METRIC_ATTR, REFERENCE_ATTR
from benchmark.search.study import open_study
from benchmark.train import baselines
from benchmark.train.baselines import (
    PAIR_SEPARATOR,
    documents,
    is_current,
    majority_scores,
    random_guessing_scores,
    reference_baselines,
    tfidf_logreg_scores,
)
from tests.helpers import tiny_dataset_study


def _split(texts, labels, pairs=None) -> Split:
    return Split(texts=tuple(texts), text_pairs=None if pairs is None else tuple(pairs),
                 labels=np.array(labels, dtype=np.int64))


def _data(train, validation, test, labels=("A", "B")) -> TextClassificationData:
    return TextClassificationData(name="toy", train=train, validation=validation, test=test, label_names=labels)


# Train: 3 of 5 labels are A (id 0), so the majority class is A.
MAJORITY_DATA = _data(
    train=_split(["same text"] * 5, [0, 0, 0, 1, 1]),
    validation=_split(["same text"] * 4, [0, 0, 1, 1]),
    test=_split(["same text"] * 3, [0, 1, 1]),
)


def test_majority_class_metrics_by_hand():
    scores = majority_scores(MAJORITY_DATA)
    # Validation 2 A, 2 B, all predicted A: accuracy 2/4; F1(A) = 2*2 / (4 + 2) = 2/3, F1(B) = 0,
    # macro-F1 1/3; MCC is undefined for a constant prediction and reported as 0.
    assert scores["validation"] == pytest.approx({"accuracy": 0.5, "macro_f1": 1 / 3, "mcc": 0.0})
    # Test 1 A, 2 B: accuracy 1/3; F1(A) = 2*1 / (3 + 1) = 1/2, F1(B) = 0, macro-F1 1/4.
    assert scores["test"] == pytest.approx({"accuracy": 1 / 3, "macro_f1": 0.25, "mcc": 0.0})


def test_a_tie_for_the_majority_goes_to_the_lowest_label_id():
    assert baselines.majority_class(np.array([1, 0, 1, 0])) == 0


def test_random_guessing_is_the_expectation_of_uniform_guesses():
    # Classes in proportions 0.43 / 0.40 / 0.17 (the issue's). Guessing uniformly, class k's
    # precision is its share p_k and its recall 1/3, so F1_k = 2 p_k (1/3) / (p_k + 1/3):
    # macro-F1 0.3214 in the limit, where the majority class scores 0.2005. Accuracy is 1/3,
    # MCC 0; the seeded draws land within 0.003 of each, and the same data give the same row.
    labels = np.repeat([0, 1, 2], [430, 400, 170])
    data = _data(_split(["some text"] * 1000, labels), _split(["some text"] * 1000, labels),
                 _split(["some text"] * 100, labels[::10]),
                 labels=("a", "b", "c"))
    shares = np.array([0.43, 0.40, 0.17])
    guessed = random_guessing_scores(data)
    assert guessed["validation"] == pytest.approx(
        {"accuracy": 1 / 3, "macro_f1": float(np.mean(2 * shares / 3 / (shares + 1 / 3))), "mcc": 0.0}, abs=3e-3)
    assert majority_scores(data)["validation"]["macro_f1"] == pytest.approx(0.2005, abs=1e-4)
    assert random_guessing_scores(data) == guessed
    assert reference_baselines(data)["random"] == guessed


SENTIMENT = _data(
    train=_split(["good great day", "great fine good", "fine good lovely", "bad awful day", "awful poor bad",
                  "poor bad dreadful"], [1, 1, 1, 0, 0, 0]),
    validation=_split(["a good day", "lovely and fine", "an awful day", "dreadful and poor"], [1, 1, 0, 0]),
    test=_split(["great", "bad"], [1, 0]),
    labels=("negative", "positive"),
)


def test_tfidf_logreg_separates_a_separable_toy_set():
    scores = tfidf_logreg_scores(SENTIMENT)
    assert scores["validation"] == pytest.approx({"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0})
    assert scores["test"] == pytest.approx({"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0})


def test_pairs_are_scored_on_both_texts_without_a_bigram_across_them():
    # The label is in the pair alone, so a model that saw only the first text would be at chance.
    first = ["same words here"] * 6
    pairs = _data(
        train=_split(first, [1, 1, 1, 0, 0, 0], pairs=["yes indeed", "yes truly", "yes sure",
                                                      "no never", "no way", "no nope"]),
        validation=_split(["same words here"] * 2, [1, 0], pairs=["yes", "no"]),
        test=_split(["same words here"] * 2, [1, 0], pairs=["sure yes", "never no"]),
    )
    assert documents(pairs.validation.subset(np.array([0]))) == [f"same words here{PAIR_SEPARATOR}yes"]
    assert tfidf_logreg_scores(pairs)["validation"]["accuracy"] == 1.0
    from sklearn.feature_extraction.text import TfidfVectorizer

    vocabulary = TfidfVectorizer(ngram_range=(1, 2)).fit(documents(pairs.train)).vocabulary_
    assert "here yes" not in vocabulary and "here __pair__" in vocabulary


def test_recomputed_only_when_the_splits_change():
    recorded = reference_baselines(SENTIMENT)
    assert recorded["split_sizes"] == {"train": 6, "validation": 4, "test": 2}
    assert recorded["majority"]["class"] == "negative"  # a 3-3 tie goes to the lowest id
    assert is_current(recorded, SENTIMENT)
    fewer = replace(SENTIMENT, validation=SENTIMENT.validation.subset(np.array([0, 2])))
    assert not is_current(recorded, fewer)
    assert not is_current({**recorded, "settings": "another model"}, SENTIMENT)
    assert not is_current(None, SENTIMENT)


def test_open_study_stores_the_rows_once_per_split_sizes(tmp_path, tiny_encoders, monkeypatch):

    dataset_study = tiny_dataset_study(tmp_path, tiny_encoders)
    storage = optuna.storages.InMemoryStorage()
    study = open_study(storage, dataset_study, seed=0)
    stored = study.user_attrs[REFERENCE_ATTR]
    data = dataset_study.data
    assert stored == reference_baselines(data)
    assert stored["split_sizes"] == {"train": len(data.train), "validation": len(data.validation),
                                     "test": len(data.test)}

    calls = []
    monkeypatch.setattr(baselines, "reference_baselines", lambda d: calls.append(d) or stored)
    open_study(storage, dataset_study, seed=0)
    assert calls == []  # the stored rows are current
    smaller = replace(dataset_study, data=replace(data, train=data.train.subset(np.arange(len(data.train) - 1))))
    open_study(storage, smaller, seed=0)
    assert len(calls) == 1


def test_stored_rows_reach_the_leaderboard_from_the_storage():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="bench-toy", direction="maximize")
    for name, value in ((BENCHMARK_ATTR, "bench"), (DATASET_ATTR, "toy"), (METRIC_ATTR, "macro_f1"),
                        (REFERENCE_ATTR, reference_baselines(SENTIMENT))):
        study.set_user_attr(name, value)
    # The majority class (a 3-3 tie in training, so id 0, negative) scores macro-F1 1/3 on
    # the 2 + 2 validation texts; tf-idf separates them, 1.0. e1 at 1/3 ties the majority
    # class: at chance. e2 at 0.9 clears it, but not tf-idf.
    for encoder, value in (("e1", 1 / 3), ("e2", 0.9)):
        study.add_trial(optuna.trial.create_trial(value=value, params={"encoder": encoder},
                                                  distributions={"encoder": optuna.distributions.
                                                                 CategoricalDistribution(["e1", "e2"])}))

    trials, references = trials_frame(storage), references_frame(storage)
    table = encoder_leaderboard(trials, references).set_index("encoder")
    majority = table.loc["(reference) majority class"]
    assert majority["toy"] == pytest.approx(1 / 3)
    assert np.isnan(majority["mean_rank"]) and np.isnan(majority["normalized_score"])
    assert table.loc["(reference) tf-idf + logreg", "toy"] == pytest.approx(1.0)
    assert table.loc["e2", "mean_rank"] == 1.0 and table.loc["e1", "mean_rank"] == 2.0
    assert table.loc["e1", "reference_flags"] == "toy: at chance and not above tf-idf + logreg"
    assert table.loc["e2", "reference_flags"] == "toy: not above tf-idf + logreg"
    flags = reference_flags(trials, references)
    assert flags[["encoder", "at_chance", "validation_examples", "train_examples"]].values.tolist() == [
        ["e1", True, 4, 6], ["e2", False, 4, 6]]
    test_rows = references[references["split"] == "test"].set_index("reference")
    # The test split (1 positive, 1 negative): majority accuracy 1/2, guessing 1/2 expected, tf-idf 1.
    assert test_rows["accuracy"].to_dict() == pytest.approx(
        {"(reference) majority class": 0.5, "(reference) random guessing": 0.5, "(reference) tf-idf + logreg": 1.0},
        abs=0.02)
    assert test_rows["examples"].tolist() == [2, 2, 2]
    assert table.loc["(reference) random guessing", "toy"] == pytest.approx(
        reference_baselines(SENTIMENT)["random"]["validation"]["macro_f1"])


def test_a_study_stored_before_random_guessing_still_reads():
    # Its attribute lacks the row (and its settings differ, so its next run recomputes it).
    recorded = {name: value for name, value in reference_baselines(SENTIMENT).items() if name != "random"}
    rows = baselines.reference_rows(recorded)
    assert {row["reference"] for row in rows} == {"(reference) majority class", "(reference) tf-idf + logreg"}
    assert not is_current({**recorded, "settings": "TfidfVectorizer(...) without guessing"}, SENTIMENT)


def test_texts_without_words_are_a_clear_error():
    from benchmark.errors import BenchmarkError

    no_words = replace(SENTIMENT, train=_split(["a", "b", "?", "c", "!", "d"], [1, 1, 1, 0, 0, 0]))
    with pytest.raises(BenchmarkError, match=r"datasets\.toy: the training texts hold no word"):
        tfidf_logreg_scores(no_words)
