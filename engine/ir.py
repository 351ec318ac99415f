"""The program IR: SSA equations over named variables, as plain frozen data.

A ``Program`` is a tuple of ``Eqn``s, each applying one primitive to ``Var``s and
literals and defining exactly one new ``Var``. It prints as text (one equation a line,
with shapes), verifies itself, runs in a ten-line interpreter, and runs backward
(reverse mode, shared variables' cotangents summed). networkx is only a *view*.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import networkx as nx
import numpy as np

from .errors import IRError, UnrollError
from .ops import OPS, fmt_shape, result_dtype, shape_of, unbroadcast

_SHORT = {"float64": "f64", "float32": "f32", "int64": "i64", "int32": "i32"}


@dataclass(frozen=True)
class Var:
    """A value in a program. ``node``/``step`` map an unrolled value back to its cell node."""

    name: str
    shape: tuple
    dtype: str
    node: str | None = None
    step: int | None = None

    def __str__(self):
        return f"{self.name}:{_SHORT.get(self.dtype, self.dtype)}{fmt_shape(self.shape)}"


@dataclass(frozen=True)
class Lit:
    """A scalar constant; it takes the dtype of the program."""

    value: float

    def __str__(self):
        return repr(self.value)


@dataclass(frozen=True)
class Eqn:
    out: Var
    op: str
    inputs: tuple  # of Var | Lit, in argument order
    params: tuple = ()  # (name, value) pairs

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def __str__(self):
        args = " ".join(a.name if isinstance(a, Var) else str(a) for a in self.inputs)
        ps = "".join(f" {k}={_fmt_index(v) if k == 'index' else v}" for k, v in self.params)
        return f"{self.out} = {self.op}{ps} {args}"


def _fmt_index(index) -> str:
    def one(ix):
        if isinstance(ix, int):
            return str(ix)
        start, stop, step = ("" if v is None else str(v) for v in ix)
        return f"{start}:{stop}" + (f":{step}" if step else "")

    return "[" + ",".join(one(ix) for ix in index) + "]"


@dataclass(frozen=True)
class Program:
    inputs: tuple  # of Var
    eqns: tuple  # of Eqn
    outputs: tuple  # of Var
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __str__(self):
        head = "in  " + ", ".join(str(v) for v in self.inputs)
        body = "\n".join(str(e) for e in self.eqns)
        tail = "out " + ", ".join(v.name for v in self.outputs)
        return f"{head}\n{body}\n{tail}"

    def graph(self) -> nx.DiGraph:
        """A networkx view: one node per variable, an edge per use, eqn data on the node."""
        g = nx.DiGraph()
        for v in self.inputs:
            g.add_node(v.name, var=v, eqn=None)
        for e in self.eqns:
            g.add_node(e.out.name, var=e.out, eqn=e)
            for i, a in enumerate(e.inputs):
                if isinstance(a, Var):
                    g.add_edge(a.name, e.out.name, arg=i)
        return g


# ------------------------------------------------------------------ verification
@lru_cache(maxsize=4096)
def infer(op: str, shapes: tuple, dtypes: tuple, params: tuple) -> tuple[tuple, str]:
    """(shape, dtype) of an equation's output; memoized: an unrolled program repeats
    the same few equations T times."""
    shape = shape_of(op, shapes, dict(params))
    return shape, str(result_dtype(op, dtypes, OPS[op].index_inputs))


def verify(prog: Program) -> Program:
    """Check SSA, def-before-use, and every equation's shape and dtype; return prog."""
    defined: dict[str, Var] = {}
    for v in prog.inputs:
        if v.name in defined:
            raise IRError(f"input '{v.name}' is declared twice")
        defined[v.name] = v
    for n, e in enumerate(prog.eqns):
        if e.op not in OPS:
            raise IRError(f"equation {n} ('{e.out.name}'): unknown op '{e.op}'")
        for a in e.inputs:
            if isinstance(a, Var) and defined.get(a.name) != a:
                what = "is used before it is defined" if a.name not in defined else \
                    f"is {a} here but was defined as {defined[a.name]}"
                raise IRError(f"equation {n} ('{e.out.name} = {e.op}'): '{a.name}' {what}")
        if e.out.name in defined:
            raise IRError(f"equation {n}: '{e.out.name}' is defined twice (SSA)")
        shapes = tuple(a.shape if isinstance(a, Var) else () for a in e.inputs)
        dtypes = tuple(a.dtype if isinstance(a, Var) else e.out.dtype for a in e.inputs)
        try:
            try:
                shape, dtype = infer(e.op, shapes, dtypes, e.params)
            except TypeError:  # an unhashable parameter (a list): no memo
                shape, dtype = infer.__wrapped__(e.op, shapes, dtypes, e.params)
        except UnrollError as err:
            raise type(err)(f"at '{e.out.name}': {err}") from None
        if shape != tuple(e.out.shape) or dtype != e.out.dtype:
            raise IRError(f"equation {n}: '{e.out.name}' is declared {e.out} but {e.op} gives "
                          f"{dtype}{fmt_shape(shape)}")
        defined[e.out.name] = e.out
    for v in prog.outputs:
        if defined.get(v.name) != v:
            raise IRError(f"output '{v.name}' is not defined by the program")
    return prog


# ------------------------------------------------------------------ building
class Builder:
    """Emit equations with shapes inferred by each op's rule.

    >>> b = Builder("float64")
    >>> x = b.input("x", ("B", 3))
    >>> y = b.call("tanh", x)
    >>> print(b.program([y]).eqns[0])
    %0:f64[B,3] = tanh x
    """

    def __init__(self, dtype: str):
        self.dtype = str(np.dtype(dtype))
        self.inputs: list[Var] = []
        self.eqns: list[Eqn] = []
        self._n = 0

    @classmethod
    def extend(cls, prog: Program, dtype: str) -> Builder:
        """A builder that continues an existing program."""
        b = cls(dtype)
        b.inputs, b.eqns = list(prog.inputs), list(prog.eqns)
        return b

    def input(self, name, shape, dtype=None, node=None, step=None) -> Var:
        v = Var(name, tuple(shape), str(np.dtype(dtype or self.dtype)), node, step)
        self.inputs.append(v)
        return v

    def call(self, op: str, *args, name=None, node=None, step=None, **params) -> Var:
        args = tuple(a if isinstance(a, Var) else Lit(float(a)) for a in args)
        shapes = tuple(a.shape if isinstance(a, Var) else () for a in args)
        dtypes = tuple(a.dtype if isinstance(a, Var) else self.dtype for a in args)
        try:
            shape, dtype = infer(op, shapes, dtypes, tuple(params.items()))
        except TypeError:  # an unhashable parameter (a list): no memo
            shape, dtype = infer.__wrapped__(op, shapes, dtypes, tuple(params.items()))
        if name is None:
            name, self._n = f"%{self._n}", self._n + 1
        out = Var(name, shape, dtype, node, step)
        self.eqns.append(Eqn(out, op, args, tuple(params.items())))
        return out

    def program(self, outputs: Iterable[Var], **meta) -> Program:
        return Program(tuple(self.inputs), tuple(self.eqns), tuple(outputs), meta)


# ------------------------------------------------------------------ running
def _lit(a, dtype):
    return np.asarray(a.value, dtype=dtype)


def interpret(prog: Program, env: dict[str, np.ndarray], keep: bool = True) -> dict:
    """Run the program equation by equation; return every value (or just the outputs)."""
    env = dict(env)
    missing = [v.name for v in prog.inputs if v.name not in env]
    if missing:
        raise IRError(f"interpret: no value given for input(s) {', '.join(missing[:5])}")
    for e in prog.eqns:
        args = [env[a.name] if isinstance(a, Var) else _lit(a, e.out.dtype) for a in e.inputs]
        env[e.out.name] = OPS[e.op].forward(*args, **e.kwargs)
    return env if keep else {v.name: env[v.name] for v in prog.outputs}


def backward(prog: Program, values: dict, seeds: dict[str, np.ndarray],
             on_adjoint: Callable[[Var, np.ndarray], None] | None = None,
             on_cotangent: Callable[[Eqn, int, np.ndarray], None] | None = None) -> dict:
    """Reverse mode over a program: cotangents of every variable reached from ``seeds``.

    ``values`` holds every variable (``interpret(..., keep=True)``). Variables used
    many times (shared parameters) get the sum of their uses' cotangents.
    ``on_adjoint(var, adj)`` sees each variable's final cotangent once;
    ``on_cotangent(eqn, i, c)`` sees each single contribution to input i of eqn.
    """
    adj: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in seeds.items()}
    for e in reversed(prog.eqns):
        g = adj.get(e.out.name)
        if g is None:
            continue
        if on_adjoint is not None:
            on_adjoint(e.out, g)
        args = [values[a.name] if isinstance(a, Var) else _lit(a, e.out.dtype) for a in e.inputs]
        cots = OPS[e.op].vjp(g, values[e.out.name], *args, **e.kwargs)
        for i, (a, x, c) in enumerate(zip(e.inputs, args, cots)):
            if c is None or not isinstance(a, Var):
                continue
            c = unbroadcast(np.asarray(c), x.shape)
            if on_cotangent is not None:
                on_cotangent(e, i, c)
            prev = adj.get(a.name)
            adj[a.name] = c if prev is None else prev + c
    if on_adjoint is not None:
        for v in prog.inputs:
            if v.name in adj:
                on_adjoint(v, adj[v.name])
    return adj


# ------------------------------------------------------------------ passes
Pass = Callable[[Program], Program]


def run_passes(prog: Program, passes: Iterable[Pass], print_after_all: bool = False,
               out: Callable[[str], None] = print) -> Program:
    """Run ``Program -> Program`` passes in order, verifying after each one."""
    verify(prog)
    if print_after_all:
        out(f"# unrolled\n{prog}")
    for p in passes:
        prog = verify(p(prog))
        if print_after_all:
            out(f"# after {getattr(p, '__name__', p)}\n{prog}")
    return prog


def dead_code(prog: Program) -> Program:
    """Drop equations whose value no output needs (walks backward once, no recursion)."""
    live = {v.name for v in prog.outputs}
    kept = []
    for e in reversed(prog.eqns):
        if e.out.name in live:
            kept.append(e)
            live.update(a.name for a in e.inputs if isinstance(a, Var))
    return replace(prog, eqns=tuple(reversed(kept)))


def common_subexpressions(prog: Program) -> Program:
    """Merge equations that apply the same op to the same operands."""
    seen: dict[tuple, Var] = {}
    rename: dict[str, Var] = {}
    keep = {v.name for v in prog.outputs}
    eqns = []
    for e in prog.eqns:
        ins = tuple(rename.get(a.name, a) if isinstance(a, Var) else a for a in e.inputs)
        key = (e.op, tuple(a.name if isinstance(a, Var) else a for a in ins), repr(e.params))
        if key in seen and e.out.name not in keep:
            rename[e.out.name] = seen[key]
            continue
        seen[key] = e.out
        eqns.append(replace(e, inputs=ins))
    return replace(prog, eqns=tuple(eqns))
