"""Reference baselines for the leaderboards: the majority class, random guessing, and TF-IDF
with logistic regression. Each is fitted on the training split the encoders train on (random
guessing needs only the label set) and scored, with the harness's own metrics, on the same
validation and test splits.

Chance, per metric, is the better of the majority class and random guessing: the majority
class wins on accuracy, but on macro-F1 it scores one class and zero for the rest, and
guessing can beat it (0.32 against 0.20 for classes in proportions 0.43 / 0.40 / 0.17).
A fine-tuned encoder that does not clear chance has learned nothing usable; one that does
not beat a bag of n-grams fitted in seconds does not earn its cost. The settings are fixed
and documented, not searched, so the rows mean the same on every dataset and no test score
steers them.
"""

from __future__ import annotations

import numpy as np

from benchmark.data.dataset import Split, TextClassificationData
from benchmark.errors import BenchmarkError
from benchmark.schema import MAJORITY, RANDOM, REFERENCE_NAMES, TFIDF_LOGREG
from benchmark.train.metrics import METRIC_NAMES, classification_metrics

SCORED_SPLITS = ("validation", "test")

# lbfgs is deterministic, so the rows need no seed: the same data gives the same numbers.
# Classes are weighted by inverse frequency: with a few hundred training examples the L2
# penalty otherwise pulls the model to the class prior (on drug_reviews' validation split
# it predicted the majority class for every review), and two of the default datasets are
# scored by macro-F1, where the rare classes count as much as the common ones.
SETTINGS = ("TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1); "
            "LogisticRegression(C=1.0, class_weight='balanced', max_iter=1000, solver='lbfgs'); "
            "random guessing: uniform over the labels, mean of 2000 draws seeded 0")
# Macro-F1 and MCC of guessing have no closed form at a finite split size, so the row is the
# mean of seeded draws; 2000 put it within about 0.001 of the expectation on 300 examples.
GUESSES = 2000
GUESS_SEED = 0

# Joins a pair's two texts. A bag of n-grams has no segment embeddings, so without a
# boundary the last word of the text and the first of the pair would make a bigram; this
# one is a word to the vectorizer's token pattern, so no bigram spans the two texts.
PAIR_SEPARATOR = " __pair__ "


def documents(split: Split) -> list[str]:
    if split.text_pairs is None:
        return list(split.texts)
    return [text + PAIR_SEPARATOR + pair for text, pair in zip(split.texts, split.text_pairs)]


def majority_class(labels: np.ndarray) -> int:
    """The most frequent training label; a tie goes to the lowest label id."""
    return int(np.bincount(labels).argmax())


def majority_scores(data: TextClassificationData) -> dict[str, dict[str, float]]:
    predicted = majority_class(data.train.labels)
    return {split: classification_metrics(getattr(data, split).labels,
                                          np.full(len(getattr(data, split)), predicted), data.num_labels)
            for split in SCORED_SPLITS}


def random_guessing_scores(data: TextClassificationData) -> dict[str, dict[str, float]]:
    """The expected metrics of guessing every label uniformly at random, per scored split:
    the mean over `GUESSES` seeded draws of the harness's own metrics."""
    rng = np.random.default_rng(GUESS_SEED)
    scores = {}
    for split in SCORED_SPLITS:
        labels = getattr(data, split).labels
        guesses = rng.integers(0, data.num_labels, size=(GUESSES, len(labels)))
        drawn = classification_metrics(labels, guesses, data.num_labels)
        scores[split] = {name: float(np.mean(drawn[name])) for name in METRIC_NAMES}
    return scores


def tfidf_logreg_scores(data: TextClassificationData) -> dict[str, dict[str, float]]:
    # Imported here: the leaderboards read this module's names, and only a study fits models.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, solver="lbfgs")
    try:
        features = vectorizer.fit_transform(documents(data.train))
    except ValueError:  # scikit-learn's "empty vocabulary"
        raise BenchmarkError(f"datasets.{data.name}: the training texts hold no word of two or more letters, "
                             f"so the TF-IDF reference row cannot be fitted") from None
    model.fit(features, data.train.labels)
    scores = {}
    for split in SCORED_SPLITS:
        part = getattr(data, split)
        predicted = model.predict(vectorizer.transform(documents(part)))
        scores[split] = classification_metrics(part.labels, predicted, data.num_labels)
    return scores


def split_sizes(data: TextClassificationData) -> dict[str, int]:
    return {split: len(getattr(data, split)) for split in ("train", *SCORED_SPLITS)}


def reference_baselines(data: TextClassificationData) -> dict:
    """Both baselines' metrics per scored split, with what they rest on: the JSON-ready
    value of the study's `reference_baselines` user attribute."""
    return {
        MAJORITY: {**majority_scores(data), "class": data.label_names[majority_class(data.train.labels)]},
        RANDOM: random_guessing_scores(data),
        TFIDF_LOGREG: tfidf_logreg_scores(data),
        "split_sizes": split_sizes(data),
        "settings": SETTINGS,
    }


def is_current(recorded: dict | None, data: TextClassificationData) -> bool:
    """Whether a stored attribute was computed on splits of these sizes, with these settings."""
    return (recorded is not None and recorded.get("split_sizes") == split_sizes(data)
            and recorded.get("settings") == SETTINGS)


def reference_rows(recorded: dict) -> list[dict]:
    """The stored attribute as table rows: one per baseline and scored split. A study stored
    before random guessing was a row lacks it until its next run recomputes the attribute."""
    sizes = recorded["split_sizes"]
    return [{"reference": REFERENCE_NAMES[name], "split": split, "examples": sizes[split],
             "train_examples": sizes["train"], **recorded[name][split]}
            for name in REFERENCE_NAMES if name in recorded for split in SCORED_SPLITS]
