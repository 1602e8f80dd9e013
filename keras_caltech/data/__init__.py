"""Datasets: fetching the Caltech archives and reading folder-per-class image trees."""
