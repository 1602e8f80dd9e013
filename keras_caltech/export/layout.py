"""TF Serving's folder layout: ``BASE_DIR/NAME/VERSION/saved_model.pb``.

TF Serving serves every model folder's highest integer version and ignores any other
name, which is why an export is written under a dotted temporary name and renamed.
Only the standard library here: ``predict`` resolves folders without loading Keras.
"""

import pathlib
import re

from keras_caltech.errors import UserError

SAVED_MODEL_FILE = "saved_model.pb"


def list_versions(model_dir):
    """The integer version folders under ``model_dir``, ascending; [] if it does not exist."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(child.name) for child in model_dir.iterdir()
                  if child.is_dir() and re.fullmatch(r"[0-9]+", child.name))


def next_version(model_dir):
    """The version number an export to ``model_dir`` gets by default: one past the highest."""
    versions = list_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def resolve_version_dir(path):
    """A SavedModel folder from ``NAME/VERSION`` or ``NAME`` (then its highest version).

    Raises:
        UserError: the folder is missing or holds neither a SavedModel nor versions of one.
    """
    path = pathlib.Path(path)
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    if not path.is_dir():
        raise UserError(f"SavedModel folder not found: {path}. Pass saved_models/NAME or "
                        "saved_models/NAME/VERSION as written by `python -m keras_caltech export`")
    versions = [version for version in list_versions(path) if (path / str(version) / SAVED_MODEL_FILE).is_file()]
    if not versions:
        raise UserError(f"{path} holds no SavedModel: expected {SAVED_MODEL_FILE} in it, or integer "
                        f"version folders such as {path / '1' / SAVED_MODEL_FILE}")
    return path / str(versions[-1])
