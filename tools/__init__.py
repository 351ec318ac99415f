"""Tools on top of the engine and the cells: gradient checking, rendering, trace, CLI."""

from .gradcheck import GradcheckError, check_bptt, check_vjp, gradcheck

__all__ = ["GradcheckError", "check_bptt", "check_vjp", "gradcheck"]
