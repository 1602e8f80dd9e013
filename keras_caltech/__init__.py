"""keras_caltech: train, evaluate, explain and serve CNN image classifiers on Caltech-style data."""

__version__ = "0.1.0"
