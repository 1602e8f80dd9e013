"""Finding the layer to explain, and a model that exposes its activations.

Layers are named by path: ``"block4_relu"`` for a layer of the model itself, and
``"xception/block14_sepconv2_act"`` for a layer inside a backbone that was nested as a
layer (a Functional or Sequential model used inside another model). Keras layer names
cannot contain ``/``, so the path is unambiguous.

Why a rebuilt graph: in a nested backbone, ``inner.get_layer(name).output`` belongs to
the inner model's own graph, so ``keras.Model(outer.inputs, [that, outer.output])``
fails with "Graph disconnected" (tensorflow/tensorflow#44462). :func:`tap_model`
re-runs the outer graph with ``keras.models.clone_model(clone_function=identity,
call_function=...)``: the same layer objects (same weights, no copy) are called on a
fresh input, and a nested model is swapped for a version of itself that also returns
the tapped activation, so activations and logits come from one forward pass. The user's
model is not changed (re-calling a layer adds a node, but ``layer.output`` stays the
first call's).
"""

import difflib

import keras

from keras_caltech.errors import UserError
from keras_caltech.models import get_model_entry, list_models


def as_functional(model):
    """Returns ``model`` as a Functional graph with one image input and one output.

    A Sequential model is viewed through a Functional model over the same layers (it
    has inputs only once built or called). Subclassed models have no graph to walk.

    Raises:
        UserError: an unbuilt Sequential, a subclassed model, or not exactly one input
            and one output.
    """
    if isinstance(model, keras.Sequential):
        try:
            inputs, outputs = model.inputs, model.outputs
        except AttributeError:
            raise UserError(
                f"Sequential model {model.name!r} has no inputs yet: it was never built or "
                f"called, so it has no trained weights to explain. Start it with "
                f"keras.Input(shape) or call it on a batch first.") from None
        model = keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                            outputs[0] if len(outputs) == 1 else outputs, name=model.name)
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs"):
        # A subclassed model has no `inputs`: its graph exists only inside `call`.
        raise UserError(
            f"cannot explain {type(model).__name__} {getattr(model, 'name', '')!r}: explainers "
            f"need a Functional or Sequential model whose layers can be walked, not a "
            f"subclassed model.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise UserError(
            f"explainers need a model with one image input and one logits output. Received: "
            f"model {model.name!r} with {len(model.inputs)} inputs and {len(model.outputs)} outputs")
    return model


def _sublayers(layer):
    """The layers of a nested model, or () for a plain layer."""
    return layer.layers if isinstance(layer, keras.Model) else ()


def _output_rank(layer):
    """Rank of the layer's (first) output, or None if it was never called."""
    try:
        output = layer.output
    except (AttributeError, ValueError):
        return None
    output = output[0] if isinstance(output, (list, tuple)) else output
    return len(output.shape)


def layer_paths(model):
    """Returns every layer path of ``model`` in graph order, nested models included.

    Input layers are left out: they are the image itself.
    """
    paths = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        paths.append(layer.name)
        if _sublayers(layer):
            paths.extend(f"{layer.name}/{path}" for path in layer_paths(layer))
    return paths


def spatial_layer_names(model):
    """Returns the paths of every layer with a 4-D output (batch, h, w, channels)."""
    return [path for path in layer_paths(model) if _output_rank(find_layer(model, path)) == 4]


def find_layer(model, name):
    """Returns the layer of ``model`` named ``name``, following paths into nested models.

    Args:
        model: a Keras model.
        name: a layer name, or a path like ``"xception/block14_sepconv2_act"``.

    Raises:
        UserError: no such layer; the message lists close names and spatial layers.
    """
    layer = model
    for part in name.split("/"):
        children = {child.name: child for child in _sublayers(layer)}
        if part not in children:
            close = difflib.get_close_matches(name, layer_paths(model), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"model {model.name!r} has no layer {name!r}.{hint} "
                            f"{_describe_candidates(model)}")
        layer = children[part]
    return layer


def _describe_candidates(model, shown=15):
    """One sentence listing the 4-D layers, deepest last (usual Grad-CAM choices)."""
    candidates = spatial_layer_names(model)
    if not candidates:
        return "It has no layer with a 4-D output."
    listed = ", ".join(candidates[-shown:])
    more = f" ({len(candidates) - shown} earlier ones not shown)" if len(candidates) > shown else ""
    return f"Layers with a 4-D output{more}: {listed}"


def default_layer_name(model):
    """Returns the layer to explain when none is asked for.

    The registered model's declared ``gradcam_layer`` if ``model.name`` is registered
    and has that layer; otherwise the last top-level layer with a 4-D output (for a
    nested backbone, the backbone itself: its output is its last feature map).

    Raises:
        UserError: the model has no 4-D layer at all.
    """
    if model.name in list_models():
        declared = get_model_entry(model.name).gradcam_layer
        if declared in layer_paths(model):
            return declared
    for layer in reversed(model.layers):
        if not isinstance(layer, keras.layers.InputLayer) and _output_rank(layer) == 4:
            return layer.name
    raise UserError(f"model {model.name!r} has no layer with a 4-D output (batch, h, w, "
                    f"channels) to explain: it has no convolutional feature map.")


def resolve_spatial_layer(model, name=None):
    """Returns the path of a 4-D layer: ``name`` checked, or the default layer.

    Raises:
        UserError: the layer does not exist or its output is not 4-D; the message lists
            the candidate 4-D layers.
    """
    as_functional(model)  # fails first for models that cannot be explained at all
    if name is None:
        name = default_layer_name(model)
    rank = _output_rank(find_layer(model, name))
    if rank != 4:
        raise UserError(
            f"layer {name!r} of model {model.name!r} is not spatial: its output has rank "
            f"{rank}, explainers need a 4-D feature map (batch, h, w, channels). "
            f"{_describe_candidates(model)}")
    return name


def image_shape(model):
    """Returns the model's input shape without the batch axis, e.g. (224, 224, 3)."""
    return tuple(as_functional(model).inputs[0].shape[1:])


def is_image_batch(images, expected_shape):
    """Whether ``images`` is 4-D and fits ``expected_shape`` (None entries fit any size)."""
    return images.ndim == 4 and all(
        want in (None, got) for want, got in zip(expected_shape, images.shape[1:]))


def tap_model(model, layer_names):
    """Returns a model from images to ``[*activations, logits]`` in one forward pass.

    Args:
        model: a Functional or Sequential model, possibly with nested models.
        layer_names: layer paths (see :func:`find_layer`) whose outputs to return.

    Returns:
        A ``keras.Model`` taking the model's images (batch axis free) and returning a
        list: one activation tensor per name, in order, then the model's output. With
        no names, the output tensor alone.

    Raises:
        UserError: see :func:`as_functional` and :func:`find_layer`.
    """
    for name in layer_names:
        find_layer(model, name)
    image, outputs, taps = _rebuild_with_taps(model, list(layer_names))
    if not taps:  # Keras returns a one-element output list as the bare tensor anyway
        return keras.Model(image, outputs[0], name=f"{model.name}_taps")
    return keras.Model(image, [*taps, outputs[0]], name=f"{model.name}_taps")


def _rebuild_with_taps(model, paths):
    """Re-runs ``model`` on a fresh input; returns (input, outputs, tapped tensors)."""
    functional = as_functional(model)
    direct = {path for path in paths if "/" not in path}
    nested = {}  # top-level model name -> paths inside it
    for path in paths:
        if "/" in path:
            top, rest = path.split("/", 1)
            nested.setdefault(top, []).append(rest)
    found = {}  # path -> tensor of the rebuilt graph

    def call_function(layer, *args, **kwargs):
        if layer.name in nested:
            inner_paths = nested[layer.name]
            inner_image, inner_outputs, inner_taps = _rebuild_with_taps(layer, inner_paths)
            tapped = keras.Model(inner_image, [*inner_outputs, *inner_taps])
            results = tapped(*args, **kwargs)
            for path, tensor in zip(inner_paths, results[len(inner_outputs):]):
                found.setdefault(f"{layer.name}/{path}", tensor)
            results = results[:len(inner_outputs)]
            outputs = results[0] if len(results) == 1 else results
        else:
            outputs = layer(*args, **kwargs)
        if layer.name in direct:
            found.setdefault(layer.name, outputs)  # a shared layer: its first call
        return outputs

    # The batch axis is left free: a Sequential built by calling it on a batch of 2
    # would otherwise only accept batches of 2.
    image = keras.Input(shape=functional.inputs[0].shape[1:], dtype=functional.inputs[0].dtype,
                        name="image")
    structure = [image] if isinstance(functional.input, (list, tuple)) else image
    clone = keras.models.clone_model(functional, input_tensors=structure,
                                     clone_function=lambda layer: layer,
                                     call_function=call_function)
    return image, list(clone.outputs), [found[path] for path in paths]
