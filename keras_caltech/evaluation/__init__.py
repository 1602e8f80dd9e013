"""Evaluation: metrics from logits, and evaluating a model on a split."""
