"""Classification metrics as pure functions of label ids."""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("accuracy", "macro_f1", "mcc")
# The values each metric can take: an interval of a score, or of a difference of two, is cut to
# what the quantity can reach.
METRIC_RANGES = {"accuracy": (0.0, 1.0), "macro_f1": (0.0, 1.0), "mcc": (-1.0, 1.0)}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_labels: int) -> np.ndarray:
    """Rows are true labels, columns predictions. `predictions` (..., n) against `labels`
    (n,) or (..., n) give one matrix per leading index: (..., K, K)."""
    predictions = np.asarray(predictions)
    codes = np.broadcast_to(np.asarray(labels), predictions.shape) * num_labels + predictions
    batch, cells = int(np.prod(predictions.shape[:-1])), num_labels * num_labels
    offsets = (np.arange(batch) * cells).reshape(*predictions.shape[:-1], 1)
    counts = np.bincount((codes + offsets).ravel(), minlength=batch * cells)
    return counts.reshape(*predictions.shape[:-1], num_labels, num_labels)


# Each metric takes one confusion matrix, or a stack of them (..., K, K), and gives a float,
# or an array with one value per matrix: the report scores thousands of matrices at once.

def accuracy(matrix: np.ndarray) -> float | np.ndarray:
    total = matrix.sum(axis=(-2, -1))
    correct = np.trace(matrix, axis1=-2, axis2=-1)
    return _value(np.divide(correct, total, out=np.zeros(np.shape(total)), where=total > 0))


def macro_f1(matrix: np.ndarray) -> float | np.ndarray:
    """Unweighted mean of per-class F1 over the classes that occur in labels or predictions."""
    true_positive = np.diagonal(matrix, axis1=-2, axis2=-1).astype(float)
    both = matrix.sum(axis=-2) + matrix.sum(axis=-1)  # predicted + actual, per class
    present = both > 0
    f1 = np.divide(2 * true_positive, both, out=np.zeros_like(true_positive), where=present)
    classes = present.sum(axis=-1)
    return _value(np.divide(f1.sum(axis=-1), classes, out=np.zeros(np.shape(classes)), where=classes > 0))


def mcc(matrix: np.ndarray) -> float | np.ndarray:
    """Matthews correlation for any number of classes (Gorodkin's R_K); 0 when undefined."""
    total = matrix.sum(axis=(-2, -1)).astype(float)
    correct = np.trace(matrix, axis1=-2, axis2=-1)
    predicted = matrix.sum(axis=-2).astype(float)
    actual = matrix.sum(axis=-1).astype(float)
    numerator = correct * total - (predicted * actual).sum(axis=-1)
    denominator = (np.sqrt(total**2 - (predicted**2).sum(axis=-1))
                   * np.sqrt(total**2 - (actual**2).sum(axis=-1)))
    return _value(np.divide(numerator, denominator, out=np.zeros(np.shape(total)), where=denominator > 0))


def _value(values: np.ndarray) -> float | np.ndarray:
    return float(values) if np.ndim(values) == 0 else values


def classification_metrics(labels: np.ndarray, predictions: np.ndarray,
                           num_labels: int) -> dict[str, float | np.ndarray]:
    """Every metric of `predictions` (n,), or of each row of a stack (..., n), against `labels`."""
    matrix = confusion_matrix(labels, predictions, num_labels)
    return {"accuracy": accuracy(matrix), "macro_f1": macro_f1(matrix), "mcc": mcc(matrix)}
