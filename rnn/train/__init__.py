"""Training: fit, optimizers."""
