"""The exception hierarchy. Messages name the op, the shapes and the fix."""


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
