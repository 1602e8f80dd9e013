"""Model registry: importing this package registers every architecture."""

from keras_caltech.models import mycnn  # noqa: F401  (registers models)
from keras_caltech.models.registry import (ModelEntry, create_model, get_model_entry,
                                           list_models, register_model)

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]
