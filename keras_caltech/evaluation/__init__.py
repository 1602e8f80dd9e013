"""Evaluation: metrics from logits, test-time augmentation, evaluating runs and ensembles,
the figures and report.html, and the ``evaluate`` / ``ensemble`` commands."""
