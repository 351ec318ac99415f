"""Losses appended to an unrolled program: a weighted sum of per-element losses.

The weights (a program input) make one program serve the plain mean, ragged batches
(masked steps weigh 0) and truncation windows: mse is sum(w * (y - target)^2) with
w = 1 / (number of counted elements).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from engine.errors import DTypeError, all_finite
from engine.ir import Builder, Program

from .program.unroll import Unrolled

LOSSES = ("mse", "cross_entropy")


def add_loss(un: Unrolled, loss: str, at: str) -> Program:
    """The unrolled program with the loss appended (its output is the scalar ``loss``)."""
    check_loss(loss, at)
    prog = un.program
    b = Builder.extend(prog, prog.outputs[0].dtype)
    ys = un.outputs()
    if at == "all":
        y = b.call("stack", *ys, axis=1, name="Y")
        lead = ("B", un.steps)
    else:
        y, lead = ys[-1], ("B",)
    return _append(b, y, lead, ys[0].shape[-1], loss)


@lru_cache(maxsize=64)
def loss_program(loss: str, at: str, steps: int, O: int, dtype: str) -> Program:
    """The loss alone, of the outputs ``Y`` of every step (B, T, O), or of the last (B, O)."""
    check_loss(loss, at)
    b = Builder(dtype)
    lead = ("B", steps) if at == "all" else ("B",)
    return _append(b, b.input("Y", lead + (O,)), lead, O, loss)


def mse_and_grad(y: np.ndarray, targets: np.ndarray, weights: np.ndarray):
    """The mse of ``_append``, sum(w * (y - target)^2), and its gradient 2 w (y - target),
    in y's memory order (targets and weights may be views in another), in three passes
    over y when all weights are equal (no mask): what the loss program computes, without
    its temporaries (the compiled path's loss; tests hold the two together)."""
    d = np.subtract(y, targets, out=np.empty_like(y))
    if weights.size and (not any(weights.strides)  # one weight for every element
                         or weights.min() == weights.max()):
        c = weights.flat[0]
        value = float(c * np.vdot(d, d))
        d *= 2 * c
        return value, d
    wd = d * weights
    value = float(np.vdot(wd, d))
    wd *= 2
    return value, wd


def check_loss(loss, at="all") -> None:
    """A loss and an ``at`` this module knows, or a ValueError naming those it does."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
    if at not in ("all", "last"):
        raise ValueError(f"at must be 'all' (many-to-many) or 'last' (many-to-one), got {at!r}")


def _append(b: Builder, y, lead: tuple, O: int, loss: str) -> Program:
    if loss == "mse":
        target = b.input("targets", lead + (O,))
        w = b.input("weights", lead + (1,))
        err = b.call("pow", b.call("sub", y, target, name="err"), p=2.0, name="sq")
    else:
        target = b.input("targets", lead, dtype="int64")
        w = b.input("weights", lead)
        logp = b.call("log_softmax", y, axis=-1, name="logp")
        err = b.call("neg", b.call("pick", logp, target, name="picked"), name="nll")
    b.call("sum", b.call("mul", err, w, name="weighted"), name="loss")
    return b.program([b.eqns[-1].out])


def loss_weights(loss: str, at: str, B: int, T: int, O: int, mask, dtype) -> np.ndarray:
    """1/count for every counted element; masked steps count 0. Without a mask (and at
    "last", which counts every sequence): one number, read-only, broadcast to the shape
    (so mse_and_grad sees at once that it is one), the same array for the same shape."""
    per = O if loss == "mse" else 1
    if mask is None or at == "last":
        return _even_weights(loss == "mse", (B, T) if at == "all" else (B,), per,
                             np.dtype(dtype))
    m = mask.astype(dtype)
    return _weights_of(m / (m.sum() * per), loss == "mse")


@lru_cache(maxsize=64)
def _even_weights(mse: bool, lead: tuple, per: int, dtype: np.dtype) -> np.ndarray:
    t = dtype.type  # the same sums, in the same dtype, as with a mask
    return _weights_of(np.broadcast_to(t(1) / (t(math.prod(lead)) * per), lead), mse)


def _weights_of(w: np.ndarray, mse: bool) -> np.ndarray:
    return w[..., None] if mse else w  # mse: one weight per step, over the features


def check_targets(loss: str, at: str, targets, B: int, T: int, O: int, dtype) -> np.ndarray:
    """``targets`` for a ``loss`` and ``at`` that passed ``check_loss``, or a clear error."""
    targets = np.asarray(targets)
    lead = (B, T) if at == "all" else (B,)
    if loss == "mse":
        want = lead + (O,)
        if targets.shape != want:
            raise ValueError(f"targets for loss='mse', at='{at}' must be {want}, got "
                             f"{targets.shape}")
        if targets.dtype != dtype:
            raise DTypeError(f"targets are {targets.dtype} but the model is {dtype}; pass "
                            f"targets.astype(np.{dtype})")
        if not all_finite(targets):
            raise ValueError("targets hold NaN or inf values")
        return targets
    if targets.shape != lead:
        raise ValueError(f"targets for loss='cross_entropy', at='{at}' are class indices of "
                         f"shape {lead}, got {targets.shape}")
    if targets.dtype.kind not in "iu":
        raise DTypeError(f"cross-entropy targets are integer class indices, got {targets.dtype}")
    if targets.size and (targets.min() < 0 or targets.max() >= O):
        raise ValueError(f"class indices must lie in [0, {O}), got {targets.min()}.."
                         f"{targets.max()}")
    return targets.astype(np.int64)
