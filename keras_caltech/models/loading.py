"""Loading saved ``.keras`` models in Keras safe mode, with errors a user can act on.

Safe mode refuses to deserialize Python bytecode (a ``Lambda(lambda ...)`` layer), which
would otherwise run arbitrary code from the file on load. Our models never need it: their
custom layers are registered Keras-serializable classes (see ``layers.py``), known to
the loader because this module lives in ``keras_caltech.models``, whose ``__init__``
imports every model module before this one runs.

Models load uncompiled (``compile=False``): evaluation, explanation and serving only
run them, and a checkpoint's optimizer may be one of ``keras_caltech.training``'s
registered optimizers or schedules, which a process that never imported the training
package could not rebuild.

:func:`model_image_size` reads the input size of a loaded model, for the callers that
feed it through the data pipeline (evaluation and explanation).
"""

import pathlib
import zipfile

import keras

import keras_caltech.models  # noqa: F401  (registers our custom layers; see module docstring)
from keras_caltech.errors import UserError

# Substrings of Keras' safe-mode refusal, which is a plain ValueError; checked loosely so a
# reworded message in a later Keras still maps to the clear error below.
_SAFE_MODE_PHRASES = ("safe_mode", "arbitrary code")


def load_model_safely(path):
    """Loads a ``.keras`` model file with ``safe_mode=True``.

    Args:
        path: a ``.keras`` file written by ``model.save``.

    Returns:
        The ``keras.Model``, with our registered custom layers restored, uncompiled
        (no optimizer, loss or metrics).

    Raises:
        UserError: the path is missing, is a directory, cannot be read, is not a
            ``.keras`` zip file, carries Python code (a Lambda layer) that safe mode
            refuses, or otherwise fails to deserialize.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise UserError(f"model file not found: {path}. Pass the path of a .keras file.")
    if path.is_dir():
        inside = sorted(child.name for child in path.glob("*.keras"))
        hint = (f" It contains: {', '.join(inside)}; pass one of them." if inside
                else " Pass the .keras file itself, not its folder.")
        raise UserError(f"expected a .keras model file, received a directory: {path}.{hint}")
    try:
        with open(path, "rb") as file:
            file.read(4)
    except PermissionError as error:
        raise UserError(f"cannot read model file {path}: permission denied. Make it readable "
                        f"(e.g. chmod u+r {path}) or copy it somewhere you can read.") from error
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        size = path.stat().st_size
        raise UserError(
            f"{path} is not a .keras model file (a zip archive named *.keras, written by "
            f"model.save). Received: a {size}-byte file named {path.name!r}. Pass a file saved "
            "with model.save('name.keras'); SavedModel folders and .h5 files are not loaded here.")

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as error:
        message = str(error)
        if any(phrase in message for phrase in _SAFE_MODE_PHRASES):
            raise UserError(
                f"refused to load {path}: it contains Python code (e.g. a Lambda layer "
                "wrapping a lambda), and safe mode forbids deserializing arbitrary code, "
                "which would run on load. Rebuild the model from registered layers only "
                "(see keras_caltech.models). Only for a file you made yourself and trust: "
                "keras.saving.load_model(path, safe_mode=False).") from error
        raise _load_error(path, error) from error
    except (TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        raise _load_error(path, error) from error


def _load_error(path, error):
    """Returns the UserError for a ``.keras`` file that Keras could not deserialize."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(
        f"could not load model {path}: {first_line}. The file may be damaged, or saved by "
        "code with custom layers that keras_caltech does not register; re-export it from "
        "a keras_caltech training run.")


def model_image_size(model, needed_by="the data pipeline"):
    """Side of the square images ``model`` takes: the size the data pipeline resizes to.

    Args:
        model: a Keras model, e.g. from :func:`load_model_safely`.
        needed_by: what needs the size, named in the error (e.g. "explain.py").

    Returns:
        int ``size`` of the model's one input, shaped (batch, size, size, channels).

    Raises:
        UserError: the model has no single image input of a fixed square size (a
            flexible or non-square input, several inputs, or a model never built).
    """
    try:
        shape = model.input_shape  # (batch, height, width, channels); a list for several inputs
    except AttributeError:  # a Sequential never built or called, a subclassed model
        shape = None
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] is not None and shape[1] == shape[2]:
        return int(shape[1])
    if shape is None:
        received = "has no defined input shape"
    elif isinstance(shape, tuple):
        received = f"takes images of shape {tuple(shape[1:])}"
    else:
        received = f"takes {len(shape)} inputs"
    raise UserError(f"model {model.name!r} {received}; {needed_by} needs a fixed square input, "
                    f"as train.py builds")
