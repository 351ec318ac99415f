"""Weights in and out: PyTorch and Keras interop."""
