"""Datasets: the built-in synthetic one, scanning real folders, splits and the tf.data pipeline."""
