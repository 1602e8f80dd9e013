"""Model registry: importing this package registers every architecture."""

# Importing a module registers its models.
from keras_caltech.models import cnn, compact, mycnn, pretrained, resnet, vgg, xception  # noqa: F401
from keras_caltech.models.registry import (ModelEntry, create_model, get_model_entry,
                                           list_models, register_model)

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]
