"""Transfer learning on registered models: freeze, unfreeze by block, copy weights.

The usual two phases for a pretrained backbone (see Keras's transfer-learning guide):

1. ``freeze_backbone(model)``, compile, train the new head with a high learning rate;
2. ``unfreeze_top_blocks(model, num_blocks)``, compile again (Keras reads ``trainable``
   when compiling), fine-tune with a low learning rate.

Frozen BatchNorm layers run in inference mode in Keras 3: they use and keep their
moving statistics, which a small dataset's batches would otherwise overwrite. That is
why BatchNorm layers stay frozen when their block is unfrozen.

``load_weights_from`` starts a model from another trained model of the same
architecture, e.g. one trained on another dataset (progressive pretraining, seed
report 004: Tiny ImageNet -> CIFAR-100 -> Caltech).

These functions only set flags and copy weights; training loops live in
``keras_caltech.training``.
"""

import re

import keras

from keras_caltech.errors import UserError
from keras_caltech.models.registry import get_model_entry, list_models


def is_head_layer(layer):
    """Whether ``layer`` is part of the classifier head: ``logits`` or a ``head_*`` layer."""
    return layer.name == "logits" or layer.name.startswith("head_")


def _require_logits(model):
    """Raises UserError unless ``model`` has the contract's ``logits`` layer."""
    if not any(layer.name == "logits" for layer in model.layers):
        raise UserError(f"expected a model made by create_model, with a Dense layer named "
                        f"'logits'. Received: a model named {model.name!r} without one.")


def freeze_backbone(model):
    """Freezes every layer except the classifier head (phase 1 of transfer learning).

    The head is ``logits`` plus any ``head_*`` layers; in models whose dense head has
    other names (``mycnn``'s ``fc1``), only ``logits`` stays trainable. Compile the
    model after calling this.

    Args:
        model: a model made by ``create_model``; changed in place.

    Raises:
        UserError: the model has no ``logits`` layer.
    """
    _require_logits(model)
    model.trainable = True
    for layer in model.layers:
        layer.trainable = is_head_layer(layer)


def _block_pattern(model):
    """Returns the compiled block pattern of ``model``'s registry entry, or raises UserError."""
    with_blocks = [name for name in list_models() if get_model_entry(name).block_pattern]
    if model.name not in list_models() or not get_model_entry(model.name).block_pattern:
        raise UserError(f"model {model.name!r} has no block structure to unfreeze. Models with "
                        f"blocks: {', '.join(with_blocks)}")
    return re.compile(get_model_entry(model.name).block_pattern)


def backbone_blocks(model):
    """Groups the backbone's layers into its blocks, bottom to top.

    A layer belongs to the block its name starts with (the registry entry's
    ``block_pattern``, e.g. ``conv4_block2`` or ``block13``); a layer whose name
    matches no block belongs to the block before it in graph order. That places the
    shortcut layers that ``keras.applications.Xception`` leaves unnamed (``conv2d_3``)
    in their own block. Layers before the first block (``image``, ``normalize``) and
    the head belong to none.

    Args:
        model: a model made by ``create_model`` whose entry declares ``block_pattern``.

    Returns:
        A dict from block name to its list of layers, ordered from input to output.

    Raises:
        UserError: the model's architecture has no declared blocks.
    """
    pattern = _block_pattern(model)
    blocks = {}
    current = None
    for layer in model.layers:  # Keras keeps these in topological order
        if is_head_layer(layer):
            continue
        match = pattern.match(layer.name)
        if match:
            current = match.group(0)
        if current is not None:
            blocks.setdefault(current, []).append(layer)
    return blocks


def unfreeze_top_blocks(model, num_blocks):
    """Makes the head and the top ``num_blocks`` backbone blocks trainable (phase 2).

    Everything else is frozen, whatever it was before; BatchNorm layers stay frozen
    even in unfrozen blocks. Compile the model after calling this.

    Args:
        model: a model made by ``create_model`` whose entry declares ``block_pattern``
            (the pretrained backbones, ResNets, Xceptions); changed in place.
        num_blocks: how many blocks, counted from the top, to train; 0 is
            :func:`freeze_backbone`.

    Returns:
        The names of the unfrozen blocks, bottom to top (e.g. ``["block13", "block14"]``).

    Raises:
        UserError: the model has no blocks, or ``num_blocks`` is out of range.
    """
    blocks = backbone_blocks(model)
    if not 0 <= num_blocks <= len(blocks):
        raise UserError(f"model {model.name!r} has {len(blocks)} blocks "
                        f"({next(iter(blocks))} ... {list(blocks)[-1]}). "
                        f"Received: num_blocks={num_blocks}; valid: 0 to {len(blocks)}")
    freeze_backbone(model)
    unfrozen = list(blocks)[len(blocks) - num_blocks:]
    for block in unfrozen:
        for layer in blocks[block]:
            layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    return unfrozen


def _signature(layer):
    """What must agree for two layers to exchange weights: class and weight shapes."""
    return type(layer).__name__, tuple(tuple(weight.shape) for weight in layer.weights)


def load_weights_from(model, source):
    """Copies every layer's weights from ``source`` into ``model``, matching layers by name.

    The ``logits`` layer is copied only if its shape matches (same number of classes);
    otherwise it keeps its fresh initialization. Keras leaves a few layers unnamed
    (Xception's shortcut convolutions); their automatic names (``conv2d_3``) depend on
    what the process built before, so layers left unmatched by name are paired in
    graph order when their classes and weight shapes agree one to one.

    Args:
        model: the model to initialize, changed in place.
        source: a trained model of the same architecture, e.g. from
            ``keras.saving.load_model``; its number of classes may differ.

    Returns:
        The names of the layers of ``model`` that kept their own weights: ``["logits"]``
        when the class counts differ, else ``[]``.

    Raises:
        UserError: the architectures differ (a layer has no counterpart, or shapes
            differ); no weight is changed then.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    pairs, kept, unmatched = [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = source_layers.pop(layer.name, None)
        if other is not None and _signature(other) == _signature(layer):
            pairs.append((layer, other))
        elif layer.name == "logits":
            kept.append(layer.name)
        elif other is not None:
            raise UserError(
                f"cannot load weights from model {source.name!r} into {model.name!r}: layer "
                f"{layer.name!r} has weights {_signature(other)[1]} in the source but "
                f"{_signature(layer)[1]} here. Only the number of classes may differ.")
        else:
            unmatched.append(layer)
    leftovers = [layer for layer in source.layers if layer.name in source_layers]
    if [_signature(layer) for layer in unmatched] != [_signature(layer) for layer in leftovers]:
        names = [layer.name for layer in unmatched] or ["(none)"]
        extra = [layer.name for layer in leftovers] or ["(none)"]
        raise UserError(
            f"cannot load weights from model {source.name!r} into {model.name!r}: they are "
            f"different architectures. Layers without a counterpart here: "
            f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}; in the source: "
            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}. "
            f"Initialize from a run of the same model.")
    for layer, other in pairs + list(zip(unmatched, leftovers)):
        layer.set_weights(other.get_weights())
    return kept
