"""A Python builder for cells: the same graph as the equations, made by code.

It writes the equations for you, so a built cell goes through the very same parser,
checks and shape inference as a written one.

>>> b = CellBuilder(inputs={"x": 3}, states={"h": 16})
>>> x, h, W, U, bias = b.names("x h W U b")
>>> b.define("h", b.tanh(W @ x + U @ h.prev() + bias))
>>> b.build().params["W"]
(16, 3)
"""

from __future__ import annotations

from .cell import Cell
from .parse import FUNCS


class Expr:
    """An expression over cell names; operators build equation text."""

    def __init__(self, text: str, name: str | None = None):
        self.text, self.name = text, name

    def __str__(self):
        return self.text

    def _bin(self, op, other, rev=False):
        a, b = (other, self) if rev else (self, other)
        return Expr(f"({a} {op} {b})")

    def __add__(self, o): return self._bin("+", o)
    def __radd__(self, o): return self._bin("+", o, True)
    def __sub__(self, o): return self._bin("-", o)
    def __rsub__(self, o): return self._bin("-", o, True)
    def __mul__(self, o): return self._bin("*", o)
    def __rmul__(self, o): return self._bin("*", o, True)
    def __truediv__(self, o): return self._bin("/", o)
    def __rtruediv__(self, o): return self._bin("/", o, True)
    def __matmul__(self, o): return self._bin("@", o)
    def __pow__(self, p): return Expr(f"({self} ** {float(p)!r})")
    def __neg__(self): return Expr(f"(-{self})")

    def prev(self, k: int = 1) -> Expr:
        """This variable k steps ago: ``h.prev()`` is ``h[t-1]``."""
        if self.name is None:
            raise ValueError("only a named variable has a past: use b.names(...) for it")
        return Expr(f"{self.name}[t-{int(k)}]")


class CellBuilder:
    def __init__(self, inputs: dict[str, int], states: dict[str, int] | None = None,
                 sizes: dict[str, int] | None = None):
        self.inputs, self.states, self.sizes = inputs, states or {}, sizes or {}
        self.lines: list[str] = []

    def names(self, spaced: str) -> list[Expr]:
        return [Expr(n, n) for n in spaced.split()]

    def define(self, name: str, expr: Expr) -> Expr:
        self.lines.append(f"{name} = {expr}")
        return Expr(name, name)

    def split(self, names: str, expr: Expr) -> list[Expr]:
        parts = names.split()
        self.lines.append(f"{', '.join(parts)} = split({expr}, {len(parts)})")
        return [Expr(n, n) for n in parts]

    def __getattr__(self, fn):
        if fn in FUNCS and fn != "split":
            return lambda *args: Expr(f"{fn}({', '.join(str(a) for a in args)})")
        raise AttributeError(fn)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def build(self, outputs: list[str] | None = None) -> Cell:
        return Cell.from_equations(self.text, inputs=self.inputs, states=self.states,
                                   sizes=self.sizes, outputs=outputs)
