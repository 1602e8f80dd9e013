"""The model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for
saliency maps").

An explanation that reflects what the model learned must change when the learned
weights are destroyed. Cascading from the logits down, step ``d`` re-draws the weights
of the top ``d`` layers of a copy of the model, builds a fresh explainer on that copy
(no compiled function or cached graph of the trained model is reused) and compares its
heatmaps with the trained model's by Spearman rank correlation. A method that passes
shows correlations falling towards 0 as the randomisation goes deeper.
"""

import dataclasses

import keras
import numpy as np

from keras_caltech.explain.model_layers import find_layer


def _ranks(values):
    """Ranks from 0 with ties given their average rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends - 1) / 2.0  # mean rank of each group of equal values
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman_correlation(first, second):
    """Spearman rank correlation of two maps of equal shape, ties averaged.

    Returns:
        float in [-1, 1]. A constant map has no ranking: two constant maps count as
        1.0 (identical), one constant map against a varying one as 0.0.
    """
    first = np.asarray(first, np.float64).ravel()
    second = np.asarray(second, np.float64).ravel()
    first_constant, second_constant = np.ptp(first) == 0, np.ptp(second) == 0
    if first_constant or second_constant:
        return 1.0 if first_constant and second_constant else 0.0
    return float(np.corrcoef(_ranks(first), _ranks(second))[0, 1])


def weighted_layer_paths(model):
    """Paths of the layers with learned weights, from the output down to the input.

    Frozen layers count (a pretrained backbone's weights were learned too): the paths
    are read from a copy with every layer set trainable, which turns trainable again
    exactly the weights created trainable and leaves statistics such as BatchNorm's
    moving mean out.
    """
    return _trainable_paths(_thawed_copy(model))[::-1]


def _trainable_paths(model):
    paths = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            paths.extend(f"{layer.name}/{path}" for path in _trainable_paths(layer))
        elif layer.trainable_weights:
            paths.append(layer.name)
    return paths


def _thawed_copy(model):
    """A copy of ``model`` with the same weights and every layer trainable."""
    copy = keras.models.clone_model(model)  # same name: registered defaults still apply
    copy.set_weights(model.get_weights())
    _thaw(copy)
    return copy


def _thaw(model):
    """Sets every layer trainable, inside nested models too.

    ``model.trainable = True`` alone does not reach the layers of a nested Functional
    model in Keras 3.15, so each layer is set.
    """
    model.trainable = True
    for layer in model.layers:
        layer.trainable = True
        if isinstance(layer, keras.Model):
            _thaw(layer)


def randomize_layer(layer, rng):
    """Re-draws a layer's trainable weights in place.

    Kernels get Glorot-uniform values (Keras's default initializer) for their fan-in
    and fan-out; vectors (biases, BatchNorm scale and offset) are shuffled, which keeps
    their scale but breaks their link to the channels.
    """
    for variable in layer.trainable_weights:
        values = np.asarray(variable)
        if values.ndim >= 2:
            receptive = int(np.prod(values.shape[:-2]))
            fan_in, fan_out = values.shape[-2] * receptive, values.shape[-1] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            new = rng.uniform(-limit, limit, values.shape)
        else:
            new = rng.permutation(values)
        variable.assign(new.astype(values.dtype))


def randomized_copy(model, depth, seed=0):
    """A copy of ``model`` with the top ``depth`` weighted layers re-drawn.

    Args:
        model: a Functional or Sequential model; it is not changed.
        depth: how many layers of :func:`weighted_layer_paths` to randomize.
        seed: for the new weights.
    """
    copy = _thawed_copy(model)
    rng = np.random.default_rng(seed)
    for path in _trainable_paths(copy)[::-1][:depth]:
        randomize_layer(find_layer(copy, path), rng)
    return copy


@dataclasses.dataclass(frozen=True)
class SanityStep:
    """One depth of the cascade.

    Attributes:
        layer_name: the deepest randomized layer (all layers above it are random too).
        correlations: (batch,) Spearman correlation of trained and randomized heatmaps.
    """

    layer_name: str
    correlations: np.ndarray


def cascading_randomization(model, images, class_indices, make_explainer, max_steps=None, seed=0):
    """Runs the cascading randomisation sanity check.

    Args:
        model: the trained model (not changed).
        images: (batch, h, w, 3) RGB 0-255.
        class_indices: classes to explain, one per image (None: the trained model's
            predictions, kept fixed for every randomized copy).
        make_explainer: ``make_explainer(model) -> explain`` where
            ``explain(images, class_indices)`` returns a result with ``.heatmaps``
            (e.g. ``lambda model: GradCam(model, "block4_relu")``) or the array.
        max_steps: stop after this many layers (default: all weighted layers).
        seed: for the random weights.

    Returns:
        A list of :class:`SanityStep`, from the logits down.
    """
    trained = make_explainer(model)(images, class_indices)
    class_indices = getattr(trained, "class_indices", class_indices)
    trained_maps = getattr(trained, "heatmaps", trained)
    paths = weighted_layer_paths(model)[:max_steps]
    steps = []
    for depth, path in enumerate(paths, start=1):
        copy = randomized_copy(model, depth, seed)
        result = make_explainer(copy)(images, class_indices)
        maps = getattr(result, "heatmaps", result)
        steps.append(SanityStep(path, np.array([spearman_correlation(first, second)
                                                for first, second in zip(trained_maps, maps)])))
    return steps
