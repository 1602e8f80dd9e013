"""Evaluating a model on a split of a run: logits through the same pipeline as training."""

import numpy as np

from keras_caltech.evaluation.metrics import classification_metrics


def predict_logits(model, dataset):
    """Runs ``model`` over a batched (images, labels) dataset.

    Returns:
        (logits float32 (n, classes), labels int64 (n,)) in dataset order.
    """
    logits, labels = [], []
    for images, batch_labels in dataset:
        logits.append(np.asarray(model(images, training=False)))
        labels.append(batch_labels.numpy())
    return np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def evaluate_model(model, dataset, class_names):
    """Returns :func:`classification_metrics` of ``model`` on ``dataset``."""
    logits, labels = predict_logits(model, dataset)
    return classification_metrics(logits, labels, class_names)
