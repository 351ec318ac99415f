"""The exception hierarchy. Messages name the op, the shapes and the fix; and the
finiteness check every door uses."""

import math

import numpy as np


def all_finite(a) -> bool:
    """No NaN or inf in ``a``. For a big array a finite sum proves it in one pass (a NaN
    or an inf makes any sum NaN or inf), and only a sum that overflows needs the element
    check; a small one is checked element by element (cheaper than the errstate)."""
    a = np.asarray(a)
    if a.size < 4096:
        return bool(np.isfinite(a).all())
    with np.errstate(over="ignore", invalid="ignore"):  # whatever the caller's errstate
        total = a.sum()
    return math.isfinite(total) or bool(np.isfinite(a).all())


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
