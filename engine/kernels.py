"""Numba kernels. They know nothing of graphs: arrays in, arrays out.

Every kernel works on flat contiguous arrays (the wrappers in ops.py reshape), keeps
the dtype of its input, and is written with `math` scalar functions so that it stays
finite and raises nothing under ``np.errstate(all="raise")``, JIT or not.
"""

import math
from functools import partial

import numba
import numpy as np

jit = partial(numba.njit, cache=True, nogil=True)


@jit
def tanh(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = math.tanh(x[i])
    return out


@jit
def tanh_grad(g, y):
    out = np.empty_like(y)
    for i in range(y.size):
        out[i] = g[i] * (1 - y[i] * y[i])
    return out


@jit(inline="always")
def _sigmoid(v):
    """1 / (1 + e^-v) without overflow: exp only ever sees a non-positive argument."""
    if v >= 0:
        return 1 / (1 + math.exp(-v))
    e = math.exp(v)
    return e / (1 + e)


@jit
def sigmoid(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = _sigmoid(x[i])
    return out


@jit
def sigmoid_grad(g, y):
    out = np.empty_like(y)
    for i in range(y.size):
        out[i] = g[i] * y[i] * (1 - y[i])
    return out


@jit
def relu(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else 0
    return out


@jit
def relu_grad(g, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = g[i] if x[i] > 0 else 0
    return out


@jit
def softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): never overflows
    out = np.empty_like(x)
    for i in range(x.size):
        v = x[i]
        out[i] = max(v, 0) + math.log1p(math.exp(-abs(v)))
    return out


@jit
def softplus_grad(g, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = g[i] * _sigmoid(x[i])
    return out


@jit
def exp(x):
    out = np.empty_like(x)
    for i in range(x.size):  # past ~709.78 the float64 result is inf (math.exp would raise)
        out[i] = math.exp(x[i]) if x[i] <= 709.78 else math.inf
    return out


@jit
def log(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = math.log(x[i]) if x[i] > 0 else (-math.inf if x[i] == 0 else math.nan)
    return out


@jit
def log_softmax_rows(x):
    """Row-wise log-softmax of a 2-D array, by log-sum-exp around the row max."""
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        m = x[r, 0]
        for j in range(1, x.shape[1]):
            m = max(m, x[r, j])
        s = 0.0
        for j in range(x.shape[1]):
            s += math.exp(x[r, j] - m)
        lse = m + math.log(s)
        for j in range(x.shape[1]):
            out[r, j] = x[r, j] - lse
    return out
