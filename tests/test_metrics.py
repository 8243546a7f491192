"""Metrics against values worked out by hand, and against scikit-learn on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from benchmark.train.metrics import accuracy, classification_metrics, confusion_matrix, macro_f1, mcc


def _metrics(labels, predictions, num_labels):
    return classification_metrics(np.array(labels), np.array(predictions), num_labels)


def test_confusion_matrix_rows_are_true_labels_columns_predictions():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([1, 0, 1, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_two_classes_by_hand():
    # labels      0 0 0 1 1
    # predictions 0 0 1 1 0
    # confusion (rows true, cols predicted): [[2, 1], [1, 1]]
    # accuracy  = (2 + 1) / 5                             = 3/5
    # F1 class0 = 2*TP / (predicted + actual) = 2*2/(3+3) = 2/3
    # F1 class1 = 2*1/(2+2)                               = 1/2
    # macro F1  = (2/3 + 1/2) / 2                         = 7/12
    # MCC (class 1 positive): TP=1 TN=2 FP=1 FN=1
    #   (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(2*2*3*3) = 1/6
    result = _metrics([0, 0, 0, 1, 1], [0, 0, 1, 1, 0], 2)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["macro_f1"] == pytest.approx(7 / 12)
    assert result["mcc"] == pytest.approx(1 / 6)


def test_three_classes_by_hand():
    # labels      0 0 1 1 2 2
    # predictions 0 1 1 1 2 0
    # confusion: [[1, 1, 0],
    #             [0, 2, 0],
    #             [1, 0, 1]]
    # column sums (predicted) p = [2, 3, 1]; row sums (actual) t = [2, 2, 2]; total s = 6; correct c = 4
    # accuracy = 4/6 = 2/3
    # F1: class0 = 2*1/(2+2) = 1/2, class1 = 2*2/(3+2) = 4/5, class2 = 2*1/(1+2) = 2/3
    # macro F1 = (1/2 + 4/5 + 2/3) / 3 = (15/30 + 24/30 + 20/30) / 3 = 59/90
    # MCC (Gorodkin R_K) = (c*s - p.t) / (sqrt(s^2 - p.p) * sqrt(s^2 - t.t))
    #   p.t = 4 + 6 + 2 = 12;  p.p = 4 + 9 + 1 = 14;  t.t = 12
    #   = (24 - 12) / (sqrt(36 - 14) * sqrt(36 - 12)) = 12 / sqrt(22 * 24) = 12 / sqrt(528)
    result = _metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == pytest.approx(59 / 90)
    assert result["mcc"] == pytest.approx(12 / math.sqrt(528))


def test_perfect_and_inverted_predictions():
    perfect = _metrics([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2], 3)
    assert perfect == pytest.approx({"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0})
    # two classes, every prediction wrong: TP=TN=0, FP=FN=2 -> MCC = (0 - 4) / sqrt(2*2*2*2) = -1
    inverted = _metrics([0, 0, 1, 1], [1, 1, 0, 0], 2)
    assert inverted == pytest.approx({"accuracy": 0.0, "macro_f1": 0.0, "mcc": -1.0})


def test_class_never_predicted_counts_as_zero_f1():
    # labels      0 1 2 2
    # predictions 0 1 1 1     (class 2 is never predicted)
    # confusion [[1,0,0],[0,1,0],[0,2,0]]
    # F1: class0 = 2*1/(1+1) = 1; class1 = 2*1/(3+1) = 1/2; class2 = 0/(0+2) = 0
    # macro F1 = (1 + 1/2 + 0) / 3 = 1/2   (the unpredicted class still counts, with F1 0)
    result = _metrics([0, 1, 2, 2], [0, 1, 1, 1], 3)
    assert result["macro_f1"] == pytest.approx(0.5)
    assert result["accuracy"] == pytest.approx(0.5)


def test_class_absent_from_labels_and_predictions_is_left_out_of_macro_f1():
    # num_labels 4, but class 3 occurs nowhere: the mean is over classes 0..2 only.
    # Same data as the 3-class case: 59/90, not 59/120.
    result = _metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 4)
    assert result["macro_f1"] == pytest.approx(59 / 90)


def test_all_predictions_one_class_gives_mcc_zero():
    # predicted column sums p = [4, 0]: s^2 - p.p = 16 - 16 = 0 -> undefined -> 0
    result = _metrics([0, 1, 0, 1], [0, 0, 0, 0], 2)
    assert result["mcc"] == 0.0
    assert result["accuracy"] == pytest.approx(0.5)
    # F1: class0 = 2*2/(4+2) = 2/3, class1 = 0 -> macro 1/3
    assert result["macro_f1"] == pytest.approx(1 / 3)


def test_all_labels_one_class_gives_mcc_zero():
    assert _metrics([1, 1, 1, 1], [0, 1, 1, 0], 2)["mcc"] == 0.0


def test_empty_matrix():
    matrix = np.zeros((3, 3), dtype=np.int64)
    assert accuracy(matrix) == 0.0
    assert macro_f1(matrix) == 0.0
    assert mcc(matrix) == 0.0


@pytest.mark.parametrize("seed", range(8))
def test_agrees_with_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_labels = int(rng.integers(2, 6))
    size = int(rng.integers(5, 200))
    labels = rng.integers(0, num_labels, size)
    # mostly-correct predictions, so the metrics are not all near chance
    predictions = np.where(rng.random(size) < 0.6, labels, rng.integers(0, num_labels, size))
    result = classification_metrics(labels, predictions, num_labels)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert result["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert result["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions))


def test_agrees_with_sklearn_when_a_class_is_never_predicted():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 4, 120)
    predictions = np.where(labels == 3, 2, labels)  # class 3 never predicted
    predictions[:10] = 0
    result = classification_metrics(labels, predictions, 4)
    assert result["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert result["mcc"] == pytest.approx(matthews_corrcoef(labels, predictions))


@pytest.mark.parametrize("metric", [accuracy, macro_f1, mcc])
def test_a_stack_of_matrices_scores_as_each_matrix_alone(metric):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 9, size=(40, 3, 3))
    stack[0] = 0  # empty: every metric's undefined case
    stack[1] = np.diag([4, 0, 0])  # one class only
    stack[2, :, :] = 0
    stack[2, :, 1] = 5  # one prediction for every label
    each = [metric(matrix) for matrix in stack]
    assert all(isinstance(value, float) for value in each)
    assert metric(stack) == pytest.approx(each)
    assert metric(stack.reshape(4, 10, 3, 3)).shape == (4, 10)
