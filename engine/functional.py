"""Composites: built from primitives only, so they need no VJP of their own.

Each takes ``call(op_name, *operands, **params)``: the eager Tensor and the program
builder both provide one, so a composite is written once for both.
"""

from .errors import ShapeError


def split(call, x, n: int, axis: int = -1):
    """n equal parts of x along ``axis`` (slices, so the gradient is exact)."""
    size = x.shape[axis]
    if size % n:
        raise ShapeError(f"split: dim {axis} of {list(x.shape)} has size {size}, which does not "
                         f"divide into {n} equal parts")
    part = size // n
    ax = axis % len(x.shape)
    full = (None, None, None)
    return [call("slice", x, index=(full,) * ax + ((i * part, (i + 1) * part, None),))
            for i in range(n)]


def mse(call, pred, target):
    """Mean squared error over every element."""
    return call("mean", call("pow", call("sub", pred, target), p=2.0))


def cross_entropy(call, logits, target):
    """Mean negative log-likelihood of integer classes ``target`` under ``logits``."""
    return call("neg", call("mean", call("pick", call("log_softmax", logits, axis=-1), target)))
