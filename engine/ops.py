"""Primitive ops. One op, one block: name, shape rule, forward kernel, VJP.

The registry ``OPS`` is a plain dict. Shapes may hold the symbolic batch dimension
"B" (a string): shape rules treat any string as a dimension of unknown size that only
equals itself. A VJP gets the output cotangent ``g``, the output ``y`` and the inputs,
and returns one cotangent per input (``None`` for an input without a gradient); the
caller reduces each back to its input's shape (see ``unbroadcast``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import kernels as k
from .errors import DTypeError, ShapeError

Shape = tuple  # of int | str


@dataclass(frozen=True)
class Op:
    name: str
    nin: int | None  # None: variadic
    shape: Callable[..., Shape]
    forward: Callable[..., np.ndarray]
    vjp: Callable[..., tuple]
    index_inputs: tuple[int, ...] = ()  # inputs that are integer indices, never differentiated
    doc: str = ""


OPS: dict[str, Op] = {}


def defop(name, nin, shape, forward, vjp, index_inputs=(), doc=""):
    OPS[name] = Op(name, nin, shape, forward, vjp, tuple(index_inputs), doc)
    return OPS[name]


# ----------------------------------------------------------------- shape helpers
def fmt_shape(shape: Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def broadcast(op: str, *shapes: Shape) -> Shape:
    n = max(len(s) for s in shapes)
    out = []
    for i in range(n):
        dims = [s[len(s) - n + i] for s in shapes if len(s) - n + i >= 0]
        real = [d for d in dims if d != 1]
        if any(d != real[0] for d in real):
            shown = " and ".join(fmt_shape(s) for s in shapes)
            raise ShapeError(
                f"{op}: cannot broadcast {shown}: dimension {i - n} is "
                f"{' vs '.join(str(d) for d in dims)}; sizes must match or be 1"
            )
        out.append(real[0] if real else 1)
    return tuple(out)


def _axis(op: str, axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{op}: axis {axis} is out of range for an operand with {ndim} dims")
    return axis % ndim


def _axes(op, axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(_axis(op, a, ndim) for a in axis))


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum ``g`` down to ``shape``: the adjoint of numpy broadcasting."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    keep = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if keep:
        g = g.sum(axis=keep, keepdims=True)
    return g


def result_dtype(op: str, dtypes, index_inputs=()) -> np.dtype:
    """The one float dtype every (non-index) operand shares; anything else is an error."""
    floats = [np.dtype(d) for i, d in enumerate(dtypes) if i not in index_inputs]
    for d in floats:
        if d.kind != "f":
            raise DTypeError(f"{op}: expected floating-point operands, got {d}")
    if any(d != floats[0] for d in floats):
        raise DTypeError(
            f"{op}: operands have dtypes {', '.join(str(d) for d in floats)}; unroll never "
            f"casts silently: convert them to one dtype (e.g. x.astype(np.float64))"
        )
    for i in index_inputs:
        if np.dtype(dtypes[i]).kind not in "iu":
            raise DTypeError(f"{op}: input {i} holds indices and must be integer, got {dtypes[i]}")
    return floats[0]


def _same(op):
    return lambda x, **_: tuple(x)


def _flat(kernel):
    """Run a flat-array kernel on an array of any shape."""

    def run(*arrays):
        shape = arrays[0].shape
        flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
        return kernel(*flat).reshape(shape)

    return run


# ------------------------------------------------------------------ elementwise
defop("add", 2, lambda a, b: broadcast("add", a, b), np.add, lambda g, y, a, b: (g, g))
defop("sub", 2, lambda a, b: broadcast("sub", a, b), np.subtract, lambda g, y, a, b: (g, -g))
defop("mul", 2, lambda a, b: broadcast("mul", a, b), np.multiply,
      lambda g, y, a, b: (g * b, g * a))
defop("div", 2, lambda a, b: broadcast("div", a, b), np.divide,
      lambda g, y, a, b: (g / b, -g * y / b))
defop("neg", 1, _same("neg"), np.negative, lambda g, y, x: (-g,))
defop("pow", 1, _same("pow"),
      lambda x, p: np.power(x, x.dtype.type(p)),
      lambda g, y, x, p: (g * x.dtype.type(p) * np.power(x, x.dtype.type(p - 1)),),
      doc="x ** p for a scalar exponent p")
defop("exp", 1, _same("exp"), _flat(k.exp), lambda g, y, x: (g * y,))
defop("log", 1, _same("log"), _flat(k.log), lambda g, y, x: (g / x,))
defop("tanh", 1, _same("tanh"), _flat(k.tanh), lambda g, y, x: (_flat(k.tanh_grad)(g, y),))
defop("sigmoid", 1, _same("sigmoid"), _flat(k.sigmoid),
      lambda g, y, x: (_flat(k.sigmoid_grad)(g, y),))
defop("relu", 1, _same("relu"), _flat(k.relu), lambda g, y, x: (_flat(k.relu_grad)(g, x),))
defop("softplus", 1, _same("softplus"), _flat(k.softplus),
      lambda g, y, x: (_flat(k.softplus_grad)(g, x),))
defop("copy", 1, _same("copy"), lambda x: x, lambda g, y, x: (g,), doc="identity: v = w")
defop("stop_gradient", 1, _same("stop_gradient"), lambda x: x, lambda g, y, x: (None,),
      doc="identity forward, no gradient: where truncated BPTT cuts")


# ------------------------------------------------------------------ linear algebra
def _matmul_shape(a, b):
    if len(a) == 0 or len(b) == 0:
        raise ShapeError(f"matmul: operands must have at least 1 dim, got {fmt_shape(a)} and "
                         f"{fmt_shape(b)}")
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise ShapeError(
            f"matmul: {fmt_shape(a)} @ {fmt_shape(b)}: the last dim of the left operand "
            f"({a2[-1]}) must equal the {'only' if len(b) == 1 else 'second-to-last'} dim of "
            f"the right operand ({b2[-2]})"
        )
    batch = broadcast("matmul", a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _matmul_vjp(g, y, a, b):
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = g
    if a.ndim == 1:
        g2 = np.expand_dims(g2, -2)
    if b.ndim == 1:
        g2 = np.expand_dims(g2, -1)
    ga = g2 @ np.swapaxes(b2, -1, -2)
    gb = np.swapaxes(a2, -1, -2) @ g2
    ga = unbroadcast(ga, a2.shape)
    gb = unbroadcast(gb, b2.shape)
    return ga.reshape(a.shape), gb.reshape(b.shape)


defop("matmul", 2, _matmul_shape, np.matmul, _matmul_vjp, doc="numpy matmul; goes to BLAS")


def _matvec_shape(A, x):
    if len(A) != 2 or len(x) < 1:
        raise ShapeError(f"matvec: expected a matrix [m,n] and vectors [...,n], got "
                         f"{fmt_shape(A)} and {fmt_shape(x)}")
    if A[1] != x[-1]:
        raise ShapeError(f"matvec: matrix {fmt_shape(A)} takes vectors of {A[1]} features but "
                         f"the vector operand is {fmt_shape(x)} ({x[-1]} features)")
    return tuple(x[:-1]) + (A[0],)


def _matvec_vjp(g, y, A, x):
    g2 = g.reshape(-1, A.shape[0])
    return g2.T @ x.reshape(-1, A.shape[1]), g @ A


defop("matvec", 2, _matvec_shape, lambda A, x: x @ A.T, _matvec_vjp,
      doc="A @ v for every vector v along the leading dims of x: x @ A.T (BLAS)")


# ------------------------------------------------------------------ reductions
def _reduce_shape(op):
    def rule(x, axis=None, keepdims=False):
        axes = _axes(op, axis, len(x))
        if keepdims:
            return tuple(1 if i in axes else d for i, d in enumerate(x))
        return tuple(d for i, d in enumerate(x) if i not in axes)

    return rule


def _expand(g, x, axis, keepdims):
    if not keepdims:
        g = np.expand_dims(g, _axes("sum", axis, x.ndim))
    return np.broadcast_to(g, x.shape)


def _count(x, axis):
    return int(np.prod([x.shape[a] for a in _axes("mean", axis, x.ndim)]))


defop("sum", 1, _reduce_shape("sum"),
      lambda x, axis=None, keepdims=False: np.sum(x, axis=axis, keepdims=keepdims),
      lambda g, y, x, axis=None, keepdims=False: (np.array(_expand(g, x, axis, keepdims)),))
defop("mean", 1, _reduce_shape("mean"),
      lambda x, axis=None, keepdims=False: np.mean(x, axis=axis, keepdims=keepdims),
      lambda g, y, x, axis=None, keepdims=False:
      (_expand(g, x, axis, keepdims) / x.dtype.type(_count(x, axis)),))


# ------------------------------------------------------------------ shape ops
def _reshape_shape(x, shape):
    shape = tuple(shape)
    if all(isinstance(d, int) for d in x) and all(isinstance(d, int) for d in shape):
        size = int(np.prod(x))
        if shape.count(-1) == 1:
            rest = int(np.prod([d for d in shape if d != -1]))
            if rest == 0 or size % rest:
                raise ShapeError(f"reshape: cannot reshape {fmt_shape(x)} into {fmt_shape(shape)}")
            shape = tuple(size // rest if d == -1 else d for d in shape)
        if int(np.prod(shape)) != size:
            raise ShapeError(f"reshape: cannot reshape {fmt_shape(x)} ({size} elements) into "
                             f"{fmt_shape(shape)} ({int(np.prod(shape))} elements)")
    return shape


defop("reshape", 1, _reshape_shape, lambda x, shape: np.reshape(x, shape),
      lambda g, y, x, shape: (g.reshape(x.shape),))


def _transpose_shape(x, axes=None):
    axes = tuple(reversed(range(len(x)))) if axes is None else tuple(axes)
    if sorted(a % max(len(x), 1) for a in axes) != list(range(len(x))):
        raise ShapeError(f"transpose: axes {axes} are not a permutation of the {len(x)} dims "
                         f"of {fmt_shape(x)}")
    return tuple(x[a] for a in axes)


def _transpose_vjp(g, y, x, axes=None):
    axes = tuple(reversed(range(x.ndim))) if axes is None else tuple(a % x.ndim for a in axes)
    return (np.transpose(g, np.argsort(axes)),)


defop("transpose", 1, _transpose_shape, lambda x, axes=None: np.transpose(x, axes),
      _transpose_vjp)


def _slice_shape(x, index):
    """index: a tuple of ints and (start, stop, step) triples, one per leading dim."""
    if len(index) > len(x):
        raise ShapeError(f"slice: {len(index)} indices for an operand of shape {fmt_shape(x)}")
    out = []
    for d, ix in zip(x, index):
        if isinstance(ix, int):
            if isinstance(d, int) and not -d <= ix < d:
                raise ShapeError(f"slice: index {ix} is out of range for a dim of size {d}")
            continue
        if isinstance(d, str):
            if slice(*ix) != slice(None):
                raise ShapeError(f"slice: cannot slice the symbolic dim {d} with {slice(*ix)}")
            out.append(d)
        else:
            out.append(len(range(*slice(*ix).indices(d))))
    return tuple(out) + tuple(x[len(index):])


def py_index(index):
    return tuple(ix if isinstance(ix, int) else slice(*ix) for ix in index)


def _slice_vjp(g, y, x, index):
    gx = np.zeros_like(x)
    gx[py_index(index)] = g
    return (gx,)


defop("slice", 1, _slice_shape, lambda x, index: x[py_index(index)], _slice_vjp,
      doc="basic indexing; index is a tuple of ints and (start, stop, step) triples")


def _concat_shape(*xs, axis=0):
    if not xs:
        raise ShapeError("concat: needs at least one operand")
    nd = len(xs[0])
    ax = _axis("concat", axis, nd)
    for i, s in enumerate(xs):
        if len(s) != nd or any(a != b for j, (a, b) in enumerate(zip(s, xs[0])) if j != ax):
            raise ShapeError(f"concat: operand {i} is {fmt_shape(s)} but operand 0 is "
                             f"{fmt_shape(xs[0])}; all dims but axis {axis} must match")
    sizes = [s[ax] for s in xs]
    total = sum(sizes) if all(isinstance(d, int) for d in sizes) else "+".join(map(str, sizes))
    return xs[0][:ax] + (total,) + xs[0][ax + 1:]


def _concat_vjp(g, y, *xs, axis=0):
    cuts = np.cumsum([x.shape[axis] for x in xs])[:-1]
    return tuple(np.split(g, cuts, axis=axis))


defop("concat", None, _concat_shape, lambda *xs, axis=0: np.concatenate(xs, axis=axis),
      _concat_vjp)


def _stack_shape(*xs, axis=0):
    if not xs or any(s != xs[0] for s in xs):
        raise ShapeError("stack: operands must all have one shape, got "
                         + ", ".join(fmt_shape(s) for s in xs))
    ax = _axis("stack", axis, len(xs[0]) + 1)
    return xs[0][:ax] + (len(xs),) + xs[0][ax:]


defop("stack", None, _stack_shape, lambda *xs, axis=0: np.stack(xs, axis=axis),
      lambda g, y, *xs, axis=0: tuple(np.moveaxis(g, axis, 0)))


# ------------------------------------------------------------------ softmax family
def _rows(f):
    """Apply a row kernel along ``axis`` of an array of any shape."""

    def run(x, axis=-1):
        xm = np.moveaxis(x, axis, -1)
        out = f(np.ascontiguousarray(xm).reshape(-1, xm.shape[-1]))
        return np.moveaxis(out.reshape(xm.shape), -1, axis)

    return run


_log_softmax = _rows(k.log_softmax_rows)
defop("log_softmax", 1, lambda x, axis=-1: (_axis("log_softmax", axis, len(x)), tuple(x))[1],
      _log_softmax,
      lambda g, y, x, axis=-1: (g - np.exp(y) * g.sum(axis=axis, keepdims=True),),
      doc="stable: x - logsumexp(x)")
defop("softmax", 1, lambda x, axis=-1: (_axis("softmax", axis, len(x)), tuple(x))[1],
      lambda x, axis=-1: np.exp(_log_softmax(x, axis)),
      lambda g, y, x, axis=-1: (y * (g - (g * y).sum(axis=axis, keepdims=True)),))


LAYERNORM_EPS = 1e-5  # as torch.nn.LayerNorm's default


def _layernorm(x, axis=-1, eps=LAYERNORM_EPS):
    xc = x - x.mean(axis=axis, keepdims=True)
    return xc / np.sqrt((xc * xc).mean(axis=axis, keepdims=True) + x.dtype.type(eps))


def _layernorm_vjp(g, y, x, axis=-1, eps=LAYERNORM_EPS):
    """dx = (g - mean(g) - y mean(g y)) / sqrt(var(x) + eps), the 1/sigma from x."""
    xc = x - x.mean(axis=axis, keepdims=True)
    inv = 1 / np.sqrt((xc * xc).mean(axis=axis, keepdims=True) + x.dtype.type(eps))
    return ((g - g.mean(axis=axis, keepdims=True)
             - y * (g * y).mean(axis=axis, keepdims=True)) * inv,)


defop("layernorm", 1, lambda x, axis=-1, eps=LAYERNORM_EPS: (
          _axis("layernorm", axis, len(x)), tuple(x))[1], _layernorm, _layernorm_vjp,
      doc="(x - mean) / sqrt(var + eps) along axis (biased variance, as torch's LayerNorm;"
          " no gain or bias: those are ordinary parameters)")


def _pick_shape(x, idx):
    if tuple(x[:-1]) != tuple(idx):
        raise ShapeError(f"pick: indices {fmt_shape(idx)} must have the leading shape of the "
                         f"scores {fmt_shape(x)}, i.e. {fmt_shape(x[:-1])}")
    return tuple(idx)


def _pick_vjp(g, y, x, idx):
    gx = np.zeros_like(x)
    np.put_along_axis(gx, idx[..., None], g[..., None], axis=-1)
    return gx, None


defop("pick", 2, _pick_shape,
      lambda x, idx: np.take_along_axis(x, idx[..., None], axis=-1)[..., 0], _pick_vjp,
      index_inputs=(1,), doc="x[..., idx]: the score of each integer class (cross-entropy)")


def shape_of(op: str, shapes, params: dict[str, Any]) -> Shape:
    o = OPS[op]
    if o.nin is not None and len(shapes) != o.nin:
        raise ShapeError(f"{op}: expected {o.nin} operands, got {len(shapes)}")
    return tuple(o.shape(*shapes, **params))
