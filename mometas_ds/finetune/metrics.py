"""GLUE metrics with scikit-learn / scipy, in percent (GLUE's and SQuAD's convention).

Each GLUE task's metrics also hold the task's GLUE score under its main-metric name (``TASK_MAIN_METRIC``):
MRPC/QQP average F1 and accuracy, STS-B averages Pearson and Spearman, MNLI averages matched and mismatched.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _pct(value: float) -> float:
    value = float(value)
    return 100.0 * value if math.isfinite(value) else 0.0  # a constant prediction has an undefined correlation


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    return _pct(accuracy_score(list(labels), list(predictions)))


def binary_f1(predictions: Sequence, labels: Sequence, positive=1) -> float:
    return _pct(f1_score(list(labels), list(predictions), pos_label=positive, average="binary", zero_division=0))


def macro_f1(predictions: Sequence, labels: Sequence) -> float:
    return _pct(f1_score(list(labels), list(predictions), average="macro", zero_division=0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    return _pct(matthews_corrcoef(list(labels), list(predictions)))


def pearson_spearman(predictions: Sequence[float], labels: Sequence[float]) -> Dict[str, float]:
    p, y = np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        return {"pearson": 0.0, "spearman": 0.0}  # scipy warns and returns nan for a constant input
    return {"pearson": _pct(pearsonr(p, y)[0]), "spearman": _pct(spearmanr(p, y)[0])}


def classification_metrics(task: str, predictions: Sequence, labels: Sequence) -> Dict[str, float]:
    """Metrics of a GLUE task (or a user's 'classification'/'regression' task) on one dev split.

    ``predictions`` and ``labels`` are label strings (classification) or floats (regression)."""
    if task == "cola":
        return {"mcc": matthews(predictions, labels), "accuracy": accuracy(predictions, labels)}
    if task in ("mrpc", "qqp"):
        f1, acc = binary_f1(predictions, labels, positive="1"), accuracy(predictions, labels)
        return {"f1": f1, "accuracy": acc, "f1_acc": (f1 + acc) / 2}
    if task in ("stsb", "regression"):
        m = pearson_spearman(predictions, labels)
        m["pearson_spearman"] = (m["pearson"] + m["spearman"]) / 2
        return m
    if task == "classification":
        return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}
    return {"accuracy": accuracy(predictions, labels)}  # sst2, qnli, rte, wnli, each MNLI split


def majority_baseline(train_labels: Sequence, dev_labels: Sequence) -> float:
    """Accuracy (percent) of always predicting the most frequent training label."""
    majority = Counter(train_labels).most_common(1)[0][0]
    return accuracy([majority] * len(dev_labels), dev_labels)
