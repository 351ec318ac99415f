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


# ---- scalar functions, shared with the kernels that rnn/fuse.py generates
@jit(inline="always")
def scalar_sigmoid(v):
    """1 / (1 + e^-v), stable: exp only sees -|v|; a select, not a branch."""
    e = math.exp(-abs(v))
    r = 1.0 / (1.0 + e)
    return r if v >= 0 else e * r


@jit(inline="always")
def scalar_tanh(v):
    """tanh through expm1 (accurate near 0, about 1.4x faster than libm's tanh here)."""
    t = math.expm1(-2.0 * abs(v))
    r = -t / (2.0 + t)
    return r if v >= 0 else -r


@jit(inline="always")
def scalar_exp(v):
    return math.exp(v) if v <= 709.78 else math.inf  # past it: inf (math.exp would raise)


@jit(inline="always")
def scalar_log(v):
    return math.log(v) if v > 0 else (-math.inf if v == 0 else math.nan)


@jit
def tanh(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_tanh(x[i])
    return out


@jit
def tanh_grad(g, y):
    out = np.empty_like(y)
    for i in range(y.size):
        out[i] = g[i] * (1 - y[i] * y[i])
    return out


@jit
def sigmoid(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_sigmoid(x[i])
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
        out[i] = g[i] * scalar_sigmoid(x[i])
    return out


@jit
def exp(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_exp(x[i])
    return out


@jit
def log(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_log(x[i])
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
        ls = math.log(s)  # (x - m) - log s: m + log s would round away log s at 1e15
        for j in range(x.shape[1]):
            out[r, j] = (x[r, j] - m) - ls
    return out
