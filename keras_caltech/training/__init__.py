"""Training: optimizers and schedules, callbacks, the run folder and the fit loop."""
