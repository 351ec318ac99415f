"""Training: fit, optimizers, learning-rate schedules, callbacks."""
