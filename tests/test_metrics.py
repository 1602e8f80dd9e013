import math

import numpy as np

from keras_caltech.evaluation.metrics import classification_metrics


def test_metrics_agree_with_a_hand_computation():
    # 3 classes, 4 examples. Rows: logits; true labels below.
    logits = np.array([[3.0, 1.0, 0.0],   # true 0, predicted 0
                       [0.0, 2.0, 1.0],   # true 1, predicted 1
                       [2.0, 0.0, 1.0],   # true 2, predicted 0 (2nd choice 2)
                       [0.0, 1.0, 0.5]])  # true 0, predicted 1 (3rd choice 0)
    labels = np.array([0, 1, 2, 0])
    metrics = classification_metrics(logits, labels, ["a", "b", "c"])
    assert metrics["top1"] == 0.5
    assert metrics["top5"] == 1.0  # k is capped at the class count
    assert metrics["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert math.isclose(metrics["mean_per_class_accuracy"], 0.5, abs_tol=1e-6)
    expected_loss = np.mean([-(row[label] - np.log(np.exp(row).sum())) for row, label in zip(logits, labels)])
    assert math.isclose(metrics["loss"], expected_loss, abs_tol=1e-5)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert metrics["most_confused"][0] == {"true": "a", "predicted": "b", "count": 1, "rate": 0.5}
    assert metrics["num_examples"] == 4


def test_a_class_absent_from_the_test_split_is_reported_as_none_not_zero():
    logits = np.eye(3)[[0, 1]]
    metrics = classification_metrics(logits, np.array([0, 1]), ["a", "b", "c"])
    assert metrics["per_class_accuracy"]["c"] is None
    assert metrics["mean_per_class_accuracy"] == 1.0


def test_top5_counts_a_label_among_the_five_largest_logits():
    logits = np.arange(10, dtype=float)[None, :].repeat(2, axis=0)  # ranks: 9 best, 0 worst
    metrics = classification_metrics(logits, np.array([5, 4]), [str(i) for i in range(10)])
    assert metrics["top5"] == 0.5 and metrics["top1"] == 0.0
