"""unroll's autodiff core: primitive ops, the eager Tensor, and the program IR."""

from . import functional, ir, kernels, ops
from .errors import (
    AlgebraicLoopError,
    CellError,
    DTypeError,
    GradientError,
    IRError,
    ShapeError,
    UnrollError,
)
from .ir import Builder, Eqn, Lit, Program, Var, interpret, run_passes, verify
from .ops import OPS, defop
from .tensor import Tensor, concat, cross_entropy, mse, no_grad, stack

__all__ = [
    "OPS", "AlgebraicLoopError", "Builder", "CellError", "DTypeError", "Eqn", "GradientError",
    "IRError", "Lit", "Program", "ShapeError", "Tensor", "UnrollError", "Var", "concat",
    "cross_entropy", "defop", "functional", "interpret", "ir", "kernels", "mse", "no_grad",
    "ops", "run_passes", "stack", "verify",
]
