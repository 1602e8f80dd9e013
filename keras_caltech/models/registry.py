"""One registry of classifier architectures, and the contract every model keeps.

Every model made by :func:`create_model`:

- takes float32 RGB images (batch, size, size, 3) with values 0-255 on an Input named
  ``image``, and normalizes them itself with its first layer (``normalize``), so that
  training, evaluation, explanation and serving cannot disagree on preprocessing;
- is one flat Functional graph (a pretrained backbone is built on our own tensor with
  ``input_tensor=``), so every layer is reachable for Grad-CAM;
- returns logits (batch, num_classes) from a Dense layer named ``logits``, computed in
  float32 (``dtype="float32"``) so that under mixed precision the loss is float32;
- declares the name of its Grad-CAM layer, a 4-D feature map.

A module adds an architecture with::

    @register_model("mycnn", gradcam_layer="block4_relu", default_image_size=224, min_image_size=16)
    def build_mycnn(x, num_classes, *, dropout=0.5):
        ...  # x: normalized images (batch, h, w, 3); returns logits tensor
"""

import dataclasses
import difflib
from typing import Callable

import keras

from keras_caltech.errors import UserError
from keras_caltech.models.layers import ImageNormalization


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """What the rest of the code needs to know about one architecture.

    Attributes:
        name: registry name, also the Keras model's name.
        build: ``build(x, num_classes, **options) -> logits`` on a normalized image tensor.
        gradcam_layer: name of the layer whose 4-D output Grad-CAM explains.
        default_image_size: the input size the architecture was published with.
        min_image_size: the smallest square input its downsampling survives: every
            strided convolution or pooling still receives at least 2x2 pixels (or its
            window, for "valid" padding), and an adaptive pooling layer is never asked
            for more cells than its input has (below that it would repeat pixels).
        pretrained: whether it accepts ``weights`` (a transfer backbone).
        input_normalization: for pretrained backbones, the normalization their weights
            expect, as ``dict(mean=..., std=..., reverse_channels=...)`` in 0-255 units;
            it replaces the dataset normalization. None: use the data config's.
        options: the keyword options ``build`` accepts (checked before building).
        block_pattern: for networks that can be fine-tuned block by block, a regular
            expression whose match at the start of a layer name is the name of the block
            the layer belongs to (``r"conv\\d_block\\d+"`` for ResNets); layers that
            do not match belong to the block before them. None: no block structure.
    """

    name: str
    build: Callable
    gradcam_layer: str
    default_image_size: int
    min_image_size: int
    pretrained: bool = False
    input_normalization: dict | None = None
    options: tuple[str, ...] = ()
    block_pattern: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name, *, gradcam_layer, default_image_size, min_image_size,
                   pretrained=False, input_normalization=None, options=(), block_pattern=None):
    """Decorator that registers ``build(x, num_classes, **options) -> logits`` under ``name``."""

    def decorator(build):
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(
            name=name, build=build, gradcam_layer=gradcam_layer,
            default_image_size=default_image_size, min_image_size=min_image_size,
            pretrained=pretrained, input_normalization=input_normalization,
            options=tuple(options), block_pattern=block_pattern)
        return build

    return decorator


def list_models():
    """Returns the sorted names of every registered architecture."""
    return sorted(_REGISTRY)


def get_model_entry(name):
    """Returns the :class:`ModelEntry` for ``name``; unknown names list the valid ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model {name!r}.{hint} Valid models: {', '.join(list_models())}")
    return _REGISTRY[name]


def check_weights(name, weights):
    """Raises UserError if ``weights`` are given for a model trained from scratch.

    Args:
        name: a registered model name.
        weights: None, "imagenet" or a weights file path.
    """
    if weights is not None and not get_model_entry(name).pretrained:
        pretrained = [model for model in list_models() if _REGISTRY[model].pretrained]
        raise UserError(
            f"model {name!r} is trained from scratch and takes no pretrained weights "
            f"(received weights={weights!r}). Set model.weights=none, or pick a pretrained "
            f"model: {', '.join(pretrained) or '(none registered)'}")


def create_model(name, num_classes, image_size, *, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 weights=None, **options):
    """Builds a registered architecture as a Keras model that outputs logits.

    Args:
        name: a registered model name (see :func:`list_models`).
        num_classes: number of output logits, at least 2.
        image_size: side of the square input in pixels.
        mean: per-channel mean of the training images in 0-1 units (RGB). Ignored by
            pretrained backbones, which normalize the way their weights expect.
        std: per-channel standard deviation in 0-1 units.
        weights: pretrained models only: "imagenet", a weights file path, or None.
        **options: architecture options (e.g. ``dropout``, ``head``), checked against the
            entry.

    Returns:
        A ``keras.Model`` named ``name``: (batch, image_size, image_size, 3) float 0-255
        RGB in, (batch, num_classes) logits out.

    Raises:
        UserError: unknown name or option, input too small, or weights for a model
            trained from scratch.
    """
    entry = get_model_entry(name)
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes. Received: num_classes={num_classes}")
    if image_size < entry.min_image_size:
        raise UserError(
            f"model {name!r} needs an input of at least {entry.min_image_size} px for its depth. "
            f"Received: image_size={image_size}. Raise data.image_size (published size: "
            f"{entry.default_image_size}).")
    unknown = sorted(set(options) - set(entry.options))
    if "head" in unknown:  # model.head is a config field: name the models that have a choice
        with_heads = [model for model in list_models() if "head" in _REGISTRY[model].options]
        raise UserError(f"model {name!r} has no choice of head (received head={options['head']!r}); "
                        f"models with one: {', '.join(with_heads)}. Set model.head=pooled (the "
                        f"default), or pick one of those models")
    if unknown:
        raise UserError(f"model {name!r} has no option(s) {', '.join(unknown)}. "
                        f"Valid options: {', '.join(entry.options) or '(none)'}")
    check_weights(name, weights)

    inputs = keras.Input((image_size, image_size, 3), name="image")
    if entry.input_normalization is not None:
        normalize = ImageNormalization(name="normalize", **entry.input_normalization)
    else:
        normalize = ImageNormalization(
            mean=[255.0 * value for value in mean], std=[255.0 * value for value in std],
            name="normalize")
    x = normalize(inputs)  # (batch, size, size, 3), normalized
    if entry.pretrained:
        logits = entry.build(x, num_classes, weights=weights, **options)
    else:
        logits = entry.build(x, num_classes, **options)
    if logits.dtype != "float32":
        # A bug in the builder, not a user error: the contract test catches it.
        raise RuntimeError(f"model {name!r} returns {logits.dtype} logits under the "
                           f"{keras.mixed_precision.global_policy().name} policy; build its logits layer "
                           "with dtype='float32'")
    return keras.Model(inputs, logits, name=name)
