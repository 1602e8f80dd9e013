"""Classification metrics computed from logits, in NumPy, so they can be checked by hand."""

import numpy as np


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of integer ``labels`` (n,) under ``logits`` (n, classes)."""
    shifted = logits - logits.max(axis=1, keepdims=True)  # stable log-sum-exp
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def top_k_accuracy(logits, labels, k):
    """Share of rows whose label is among the k largest logits."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(predictions, labels, num_classes):
    """Counts (true class, predicted class): rows are true classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def most_confused_pairs(matrix, class_names, top=10):
    """The off-diagonal cells with the most mistakes, largest first.

    Returns:
        list of dicts {"true", "predicted", "count", "rate"} where rate is the share of
        the true class's images given the predicted label.
    """
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:top]
    pairs = []
    for flat_index in order:
        true_index, predicted_index = np.unravel_index(flat_index, matrix.shape)
        count = int(off_diagonal[true_index, predicted_index])
        if count == 0:
            break
        pairs.append({"true": class_names[true_index], "predicted": class_names[predicted_index],
                      "count": count, "rate": round(count / int(matrix[true_index].sum()), 4)})
    return pairs


def classification_metrics(logits, labels, class_names):
    """Everything ``metrics.json`` reports about one set of predictions.

    Args:
        logits: float array (n, num_classes).
        labels: int array (n,) of true class indices.
        class_names: names in label order.

    Returns:
        dict with top1, top5, loss, num_examples, per_class_accuracy (name -> accuracy,
        None for a class absent from the labels), mean_per_class_accuracy (the
        literature's Caltech metric, over classes present), most_confused, and
        confusion_matrix (list of rows, true x predicted counts).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = logits.argmax(axis=1)
    matrix = confusion_matrix(predictions, labels, len(class_names))
    support = matrix.sum(axis=1)
    per_class = {name: (round(float(matrix[index, index] / support[index]), 6) if support[index] else None)
                 for index, name in enumerate(class_names)}
    present = [value for value in per_class.values() if value is not None]
    return {
        "top1": round(top_k_accuracy(logits, labels, 1), 6),
        "top5": round(top_k_accuracy(logits, labels, 5), 6),
        "loss": round(softmax_cross_entropy(logits, labels), 6),
        "num_examples": int(len(labels)),
        "mean_per_class_accuracy": round(float(np.mean(present)), 6),
        "per_class_accuracy": per_class,
        "most_confused": most_confused_pairs(matrix, class_names),
        "confusion_matrix": matrix.tolist(),
    }
