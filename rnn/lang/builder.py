"""A Python builder for cells: the same graph as the equations, made by code.

It writes the equations for you, so a built cell goes through the very same parser,
checks and shape inference as a written one.

>>> b = CellBuilder(inputs={"x": 3}, states={"h": 16})
>>> x, h, W, U, bias = b.names("x h W U b")
>>> b.define("h", b.tanh(W @ x + U @ h.prev() + bias))
>>> b.text
'h = tanh(W @ x + U @ h[t-1] + b)'
>>> b.build().params["W"]
(16, 3)

Parentheses are written only where Python's precedence needs them, so a long chain
``acc = acc + term`` stays one flat sum (Python's parser refuses 200 nested brackets).
"""

from __future__ import annotations

import math
import numbers

from .cell import Cell
from .parse import FUNCS

RAW, ADD, MUL, UNARY, POW, ATOM = range(6)  # precedence of what an Expr's text is
PREC = {"+": ADD, "-": ADD, "*": MUL, "/": MUL, "@": MUL}


def _operand(v) -> Expr:
    """An Expr, a finite number, or raw equation text (always bracketed when combined)."""
    if isinstance(v, Expr):
        return v
    if isinstance(v, str):
        return Expr(v, prec=RAW)
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"a cell expression is built from Exprs and numbers, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"a number in a cell must be finite, got {v!r}")
    text = repr(f)
    return Expr(text, prec=UNARY if text.startswith("-") else ATOM)


def _name(n: str) -> str:
    if not isinstance(n, str) or not n.isidentifier() or n == "t":
        raise ValueError(f"a cell variable is named by a Python identifier other than 't', "
                         f"got {n!r}")
    return n


class Expr:
    """An expression over cell names; operators build equation text."""

    def __init__(self, text: str, name: str | None = None, prec: int = ATOM):
        self.text, self.name, self.prec = text, name, prec

    def __str__(self):
        return self.text

    def _bin(self, op, other, rev=False):
        a, b = (_operand(other), self) if rev else (self, _operand(other))
        p = PREC[op]
        left = a.text if a.prec >= p else f"({a.text})"
        right = b.text if b.prec > p else f"({b.text})"  # left to right: a - (b - c)
        return Expr(f"{left} {op} {right}", prec=p)

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._bin("+", o, True)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._bin("-", o, True)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._bin("*", o, True)
    def __truediv__(self, o): return self._bin("/", o)
    def __rtruediv__(self, o): return self._bin("/", o, True)
    def __matmul__(self, o): return self._bin("@", o)

    def __pow__(self, p):
        if isinstance(p, Expr):
            raise TypeError("the exponent of ** must be a number")
        base = self.text if self.prec > POW else f"({self.text})"
        return Expr(f"{base} ** {_operand(p).text}", prec=POW)

    def __neg__(self):
        return Expr(f"-{self.text}" if self.prec >= UNARY else f"-({self.text})", prec=UNARY)

    def prev(self, k: int = 1) -> Expr:
        """This variable k steps ago: ``h.prev()`` is ``h[t-1]``."""
        if self.name is None:
            raise ValueError("only a named variable has a past: use b.names(...) for it")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"prev(k) needs an int k >= 1, got {k!r}")
        return Expr(f"{self.name}[t-{int(k)}]")


class CellBuilder:
    def __init__(self, inputs: dict[str, int], states: dict[str, int] | None = None,
                 sizes: dict[str, int] | None = None):
        self.inputs, self.states, self.sizes = inputs, states or {}, sizes or {}
        self.lines: list[str] = []

    def names(self, spaced: str) -> list[Expr]:
        return [Expr(_name(n), n) for n in spaced.split()]

    def define(self, name: str, expr: Expr) -> Expr:
        self.lines.append(f"{_name(name)} = {_operand(expr).text}")
        return Expr(name, name)

    def split(self, names: str, expr: Expr) -> list[Expr]:
        parts = [_name(n) for n in names.split()]
        if not parts:
            raise ValueError("split() needs the names of its parts, e.g. 'i f g o'")
        self.lines.append(f"{', '.join(parts)} = split({_operand(expr).text}, {len(parts)})")
        return [Expr(n, n) for n in parts]

    def __getattr__(self, fn):
        if fn in FUNCS and fn != "split":
            return lambda *args: Expr(f"{fn}({', '.join(_operand(a).text for a in args)})")
        raise AttributeError(fn)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def build(self, outputs: list[str] | None = None) -> Cell:
        return Cell.from_equations(self.text, inputs=self.inputs, states=self.states,
                                   sizes=self.sizes, outputs=outputs)
