"""The eager Tensor: numpy data, a tape of primitive applications, reverse mode."""

from __future__ import annotations

import contextlib
import numbers
from typing import Any

import numpy as np

from . import functional as F
from .errors import GradientError
from .ops import OPS, result_dtype, shape_of, unbroadcast

_grad_enabled = [True]


@contextlib.contextmanager
def no_grad():
    """Inside this block no op is recorded on the tape."""
    _grad_enabled.append(False)
    try:
        yield
    finally:
        _grad_enabled.pop()


def _axis(axis):
    """An axis (or axes, or None) with numpy integers as plain ints, as the ops' shape
    rules take them."""
    if axis is None or isinstance(axis, bool):
        return axis
    if isinstance(axis, numbers.Integral):
        return int(axis)
    if isinstance(axis, (tuple, list)):
        return tuple(int(a) if isinstance(a, numbers.Integral) and not isinstance(a, bool)
                     else a for a in axis)
    return axis


class Tensor:
    """An array that records the ops applied to it so ``backward()`` can run them back.

    >>> W = Tensor(np.ones((3, 4)), requires_grad=True)
    >>> (Tensor(np.ones((5, 3))) @ W).tanh().sum().backward()
    >>> W.grad.shape
    (3, 4)
    """

    __array_priority__ = 100  # numpy defers to our operators

    def __init__(self, data: Any, requires_grad: bool = False):
        self.data = data.data if isinstance(data, Tensor) else np.asarray(data)
        if requires_grad and self.data.dtype.kind != "f":
            raise GradientError(f"only floating-point tensors can require grad, got "
                                f"{self.data.dtype}")
        self.requires_grad = requires_grad
        self.grad: np.ndarray | None = None
        self._op: str | None = None
        self._parents: tuple[Tensor, ...] = ()
        self._params: dict[str, Any] = {}

    # -------------------------------------------------------------- properties
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)

    def __repr__(self):
        g = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{g})"

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    # -------------------------------------------------------------- applying ops
    def _lift(self, other) -> Tensor:
        if isinstance(other, Tensor):
            return other
        if isinstance(other, numbers.Real):  # numpy scalars too (np.int64(2), np.float32)
            return Tensor(np.asarray(other, dtype=self.dtype))  # a literal takes our dtype
        return Tensor(other)

    @staticmethod
    def apply(op: str, *args: Tensor, **params) -> Tensor:
        o = OPS[op]
        datas = [a.data for a in args]
        shape_of(op, [d.shape for d in datas], params)  # clear errors before numpy's
        result_dtype(op, [d.dtype for d in datas], o.index_inputs)
        out = Tensor(o.forward(*datas, **params))
        if _grad_enabled[-1] and any(a.requires_grad for a in args):
            out.requires_grad = True
            out._op, out._parents, out._params = op, args, params
        return out

    def _call(self, op, *args, **params):
        return Tensor.apply(op, *[self._lift(a) for a in args], **params)

    def __add__(self, o): return self._call("add", self, o)
    def __radd__(self, o): return self._call("add", o, self)
    def __sub__(self, o): return self._call("sub", self, o)
    def __rsub__(self, o): return self._call("sub", o, self)
    def __mul__(self, o): return self._call("mul", self, o)
    def __rmul__(self, o): return self._call("mul", o, self)
    def __truediv__(self, o): return self._call("div", self, o)
    def __rtruediv__(self, o): return self._call("div", o, self)
    def __matmul__(self, o): return self._call("matmul", self, o)
    def __rmatmul__(self, o): return self._call("matmul", o, self)
    def __neg__(self): return self._call("neg", self)

    def __pow__(self, p):
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(f"Tensor ** p takes a real scalar exponent, got {type(p).__name__}")
        return self._call("pow", self, p=float(p))

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        norm = []
        for ix in index:
            if isinstance(ix, slice):
                norm.append((ix.start, ix.stop, ix.step))
            elif isinstance(ix, (int, np.integer)):
                norm.append(int(ix))
            else:
                raise TypeError(f"Tensor indexing takes ints and slices, got {type(ix).__name__}")
        return self._call("slice", self, index=tuple(norm))

    def exp(self): return self._call("exp", self)
    def log(self): return self._call("log", self)
    def tanh(self): return self._call("tanh", self)
    def sigmoid(self): return self._call("sigmoid", self)
    def relu(self): return self._call("relu", self)
    def softplus(self): return self._call("softplus", self)
    def log_softmax(self, axis=-1): return self._call("log_softmax", self, axis=_axis(axis))
    def softmax(self, axis=-1): return self._call("softmax", self, axis=_axis(axis))
    def detach(self): return Tensor(self.data)

    def sum(self, axis=None, keepdims=False):
        return self._call("sum", self, axis=_axis(axis), keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return self._call("mean", self, axis=_axis(axis), keepdims=keepdims)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self._call("reshape", self, shape=_axis(tuple(shape)))

    def transpose(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return self._call("transpose", self, axes=_axis(tuple(axes)) if axes else None)

    T = property(lambda self: self.transpose())

    def split(self, n: int, axis: int = -1) -> list[Tensor]:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"split: n must be a positive int, got {n!r}")
        return F.split(self._call, self, int(n), _axis(axis))

    # -------------------------------------------------------------- reverse mode
    def backward(self, grad: np.ndarray | None = None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        Iterative topological order: a chain of any length never recurses.
        """
        if not self.requires_grad:
            raise GradientError("backward() on a tensor that does not require grad: no input "
                                "had requires_grad=True (or it was computed under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise GradientError(f"backward() without a gradient needs a scalar, got shape "
                                    f"{self.shape}; pass grad= of that shape")
            grad = np.ones_like(self.data)
        order, seen, stack = [], set(), [(self, False)]
        while stack:
            t, expanded = stack.pop()
            if expanded:
                order.append(t)
                continue
            if id(t) in seen:
                continue
            seen.add(id(t))
            stack.append((t, True))
            stack.extend((p, False) for p in t._parents if p.requires_grad and id(p) not in seen)
        grads = {id(self): np.asarray(grad, dtype=self.dtype)}
        for t in reversed(order):
            g = grads.pop(id(t), None)
            if g is None:
                continue
            if t._op is None:
                t.grad = g.copy() if t.grad is None else t.grad + g
                continue
            cots = OPS[t._op].vjp(g, t.data, *[p.data for p in t._parents], **t._params)
            for p, c in zip(t._parents, cots):
                if c is None or not p.requires_grad:
                    continue
                c = unbroadcast(np.asarray(c), p.shape)
                grads[id(p)] = grads[id(p)] + c if id(p) in grads else c


def stack(tensors, axis=0) -> Tensor:
    return Tensor.apply("stack", *tensors, axis=axis)


def concat(tensors, axis=0) -> Tensor:
    return Tensor.apply("concat", *tensors, axis=axis)


def mse(pred: Tensor, target) -> Tensor:
    return F.mse(pred._call, pred, target)


def cross_entropy(logits: Tensor, target) -> Tensor:
    return F.cross_entropy(logits._call, logits, target)
