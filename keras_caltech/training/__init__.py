"""Training: learning-rate schedules, optimizers and the training loop."""
