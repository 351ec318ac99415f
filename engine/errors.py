"""The exception hierarchy. Messages name the op, the shapes and the fix; and the
finiteness check every door uses."""

import math

import numpy as np


def all_finite(a) -> bool:
    """No NaN or inf in ``a``. For float32 and float64, a finite a . a proves it in one
    BLAS pass (a NaN or an inf makes it NaN or inf, and BLAS raises no floating-point
    warnings): about 1 us for a small array, where isfinite().all() took 2-3; only
    values whose squares overflow (beyond ~1e19 in float32), and strided arrays, need
    the element check."""
    a = np.asarray(a)
    if a.dtype.char in "fd" and (a.flags.c_contiguous or a.flags.f_contiguous):
        flat = a.ravel(order="K")  # a view: vdot would copy a strided array
        if math.isfinite(np.vdot(flat, flat)):
            return True
    return bool(np.isfinite(a).all())


class UnrollError(Exception):
    """Base of every error unroll raises on purpose."""


class ShapeError(UnrollError, ValueError):
    """Operands whose shapes do not fit an op."""


class DTypeError(UnrollError, TypeError):
    """Mixed or unsupported dtypes (unroll never casts silently)."""


class IRError(UnrollError, ValueError):
    """A program that breaks SSA, ordering or shape invariants."""


class GradientError(UnrollError, ValueError):
    """Backward asked of something that cannot give it."""


class CellError(UnrollError, ValueError):
    """A cell's equations are wrong; the message names line and column."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None):
        self.line, self.col = line, col
        where = f"line {line}, column {col}: " if line is not None else ""
        super().__init__(where + message)


class AlgebraicLoopError(CellError):
    """A cycle in the cell with no delay on it."""
