"""Weights in and out: model files (files.py), PyTorch and Keras interop."""
