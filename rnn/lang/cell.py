"""A recurrent cell: equations -> a cyclic graph with delay edges, checked and shaped.

>>> cell = Cell.from_equations("h = tanh(W @ x + U @ h[t-1] + b)", inputs={"x": 3},
...                            states={"h": 16})
>>> cell.params
{'W': (16, 3), 'U': (16, 16), 'b': (16,)}
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import replace

import networkx as nx

from engine.errors import AlgebraicLoopError, CellError

from .parse import Node, Ref, parse_equations


# ---------------------------------------------------------------- dimension solver
class _Dims:
    """Union-find over dimension variables, plus constraints a = n*b and s = a + b + ...

    Constraints are solved by propagation with a work list: a constraint is looked at
    again only when one of its dimensions gains a value, so a cell of thousands of
    splits and concats is solved in linear time.
    """

    def __init__(self):
        self.parent: list[int] = []
        self.val: list[int | None] = []
        self.cons: list[tuple] = []  # ("mul", a, n, b): a = n * b; ("sum", s, parts)
        self.watch: list[list[int]] = []  # per root: the constraints that mention it
        self.todo: list[int] = []

    def new(self, value: int | None = None) -> int:
        self.parent.append(len(self.parent))
        self.val.append(value)
        self.watch.append([])
        return len(self.parent) - 1

    def find(self, d: int) -> int:
        while self.parent[d] != d:
            self.parent[d] = self.parent[self.parent[d]]
            d = self.parent[d]
        return d

    def get(self, d: int) -> int | None:
        return self.val[self.find(d)]

    def _set(self, d: int, value: int) -> None:
        r = self.find(d)
        self.val[r] = value
        self.todo.extend(self.watch[r])

    def unify(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        va, vb = self.val[ra], self.val[rb]
        if va is not None and vb is not None and va != vb:
            return False
        if len(self.watch[ra]) < len(self.watch[rb]):
            ra, rb, va, vb = rb, ra, vb, va
        self.parent[rb] = ra
        if va is None and vb is not None:
            self.val[ra] = vb
            self.todo.extend(self.watch[ra])  # these constraints now see a value
        elif vb is None and va is not None:
            self.todo.extend(self.watch[rb])
        self.watch[ra] += self.watch[rb]
        self.watch[rb] = []
        return self.solve()

    def bind(self, d: int, value: int) -> bool:
        return self.unify(d, self.new(value))

    def add_mul(self, a: int, n: int, b: int) -> bool:
        return self._add(("mul", a, n, b), (a, b))

    def add_sum(self, s: int, parts: list[int]) -> bool:
        return self._add(("sum", s, parts), (s, *parts))

    def _add(self, con, dims) -> bool:
        i = len(self.cons)
        self.cons.append(con)
        for d in set(self.find(d) for d in dims):
            self.watch[d].append(i)
        self.todo.append(i)
        return self.solve()

    def solve(self) -> bool:
        while self.todo:
            con = self.cons[self.todo.pop()]
            if con[0] == "mul":
                _, a, n, b = con
                va, vb = self.get(a), self.get(b)
                if va is not None and vb is None:
                    if va % n:
                        return False
                    self._set(b, va // n)
                elif vb is not None and va is None:
                    self._set(a, vb * n)
                elif va is not None and va != n * vb:
                    return False
            else:
                _, s, parts = con
                vs, vp = self.get(s), [self.get(p) for p in parts]
                unknown = {self.find(p) for p, v in zip(parts, vp) if v is None}
                if not unknown:
                    if vs is None:
                        self._set(s, sum(vp))
                    elif vs != sum(vp):
                        return False
                elif vs is not None and len(unknown) == 1:
                    u = unknown.pop()
                    k = sum(1 for p in parts if self.find(p) == u)  # concat(a, a): 2a
                    rest = vs - sum(v for v in vp if v is not None)
                    if rest < k or rest % k:
                        return False
                    self._set(u, rest // k)
        return True

    def fmt(self, shape) -> str:
        if shape is None:
            return "[?]"
        return "[" + ",".join(str(self.get(d) or "?") for d in shape) + "]"


def _fmt(shape: tuple) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


ELEMENTWISE = {"add", "sub", "mul", "div"}
SAME_SHAPE = {"tanh", "sigmoid", "relu", "exp", "log", "softplus", "softmax", "layernorm",
              "neg", "pow", "copy"}


class Cell:
    """A recurrent cell: nodes over inputs, parameters and variables at time t.

    ``graph`` is the cyclic networkx.MultiDiGraph (edge attribute ``delay``);
    ``params`` maps each free name to its inferred shape; ``states`` are the variables
    read with a delay, with their sizes; ``shapes`` holds every node's per-example shape.
    """

    def __init__(self, nodes, inputs, states, outputs, params, shapes, sources, text,
                 input_delays, declared):
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.inputs: dict[str, int] = dict(inputs)
        self.states: dict[str, int] = dict(states)
        self.outputs: list[str] = list(outputs)
        self.params: dict[str, tuple] = dict(params)
        self.shapes: dict[str, tuple] = dict(shapes)
        self.sources: dict[str, str] = dict(sources)  # equation target -> its source text
        self.text: str = text
        self.input_delays: dict[str, int] = dict(input_delays)  # input -> max delay read
        self.declared: dict[str, int] = dict(declared)  # sizes the author gave (states, sizes)
        self._graph = None

    # ---------------------------------------------------------------- building
    @classmethod
    def from_equations(cls, text: str, inputs: dict[str, int], states: dict[str, int] | None = None,
                       outputs: list[str] | str | None = None, sizes: dict[str, int] | None = None,
                       ) -> Cell:
        """Parse, check and shape a cell written as equations (see SPEC section 3).

        Anything wrong in the text or the sizes is a CellError (a ValueError) naming line
        and column where there is one; a TypeError only for an argument of the wrong type.
        A cell this accepts runs."""
        if not isinstance(text, str):
            raise TypeError(f"equations must be a string, got {type(text).__name__}")
        if not isinstance(inputs, dict) or not inputs:
            raise TypeError("inputs must be a dict of input names to sizes, e.g. {'x': 3}")
        nodes, sources = parse_equations(text)
        if not nodes:
            raise CellError("no equations given")
        if isinstance(outputs, str):
            outputs = [outputs]
        return cls.from_nodes(nodes, inputs, states or {}, outputs, sizes or {}, {}, sources,
                              text)

    @classmethod
    def from_nodes(cls, nodes, inputs, states, outputs, sizes, param_shapes, sources, text):
        """Check and shape a list of cell nodes (what the parser and stacking produce)."""
        sized = []
        for what in (inputs, states, sizes or {}):
            if not isinstance(what, dict):
                raise TypeError(f"sizes are given as a dict of names to ints, got {what!r}")
            for name, n in what.items():
                if not isinstance(name, str):
                    raise TypeError(f"a name must be a string, got {name!r}")
                if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                    raise CellError(f"the size of '{name}' must be a positive int, got {n!r}")
            sized.append({k: int(n) for k, n in what.items()})
        inputs, states, sizes = sized
        defined: dict[str, Node] = {}
        for nd in nodes:
            if nd.out in inputs:
                raise CellError(f"'{nd.out}' is an input and cannot also be defined by an "
                                f"equation", nd.line, nd.col)
            if nd.out in defined:  # h.1 of a second 'h = ...' clashes before h does
                first = defined[nd.out]
                raise CellError(f"variable '{nd.target or nd.out}' is defined twice (first on "
                                f"line {first.line})", nd.line, nd.col)
            defined[nd.out] = nd
        input_delays: dict[str, int] = {}
        read_delayed: dict[str, Node] = {}
        for nd in nodes:
            for a in nd.args:
                if not isinstance(a, Ref) or a.delay == 0:
                    continue
                if a.name in inputs:
                    input_delays[a.name] = max(input_delays.get(a.name, 0), a.delay)
                elif a.name in defined:
                    read_delayed.setdefault(a.name, nd)
                else:
                    raise CellError(f"undefined name '{a.name}' in {a}: only variables defined "
                                    f"by an equation (or inputs) have a past", nd.line, nd.col)
        for s in states:
            if s not in defined:
                raise CellError(f"state '{s}' is declared but no equation defines it")
        outputs = list(outputs or [nodes[-1].target])
        for o in outputs:
            if o not in defined:
                raise CellError(f"output '{o}' is not defined by any equation")

        order = cls._order(nodes, defined)
        params = [a.name for nd in nodes for a in nd.args
                  if isinstance(a, Ref) and a.delay == 0 and a.name not in defined
                  and a.name not in inputs]
        params = list(dict.fromkeys(params))
        dynamic = cls._dynamic(order, inputs)
        shapes = cls._infer(order, inputs, states, sizes or {}, params, param_shapes or {},
                            read_delayed, dynamic)
        for v, reader in read_delayed.items():
            if v not in dynamic:  # the reference interpreter would mix batched and not
                nd = defined[v]
                raise CellError(f"state '{v}' (read as {v}[t-k] on line {reader.line}) depends "
                                f"on no input and no state (only parameters and numbers): it "
                                f"would be the same for every sequence; a state must be "
                                f"computed from an input or a state", nd.line, nd.col)
        for o in outputs:
            nd = defined[o]
            if len(shapes[o]) != 1:
                raise CellError(f"output '{o}' is a single number (sum, mean and number "
                                f"literals give one), not a vector; an output must be a "
                                f"vector", nd.line, nd.col)
            if o not in dynamic:
                raise CellError(f"output '{o}' depends on no input and no state (only "
                                f"parameters and numbers): it would be the same for every "
                                f"sequence and step", nd.line, nd.col)
        # keep text order for display and unrolling order among independent nodes
        state_sizes = {s: shapes[s][0] if shapes[s] else 1 for s in defined if s in read_delayed}
        param_set = set(params)  # a set: 'k not in params' over a list was quadratic
        return cls(order, inputs, state_sizes, outputs, {p: shapes[p] for p in params},
                   {k: v for k, v in shapes.items() if k not in param_set}, sources, text,
                   input_delays, {**states, **(sizes or {})})

    @staticmethod
    def _order(nodes, defined) -> list[Node]:
        """Nodes in dependency order over delay-0 edges; an algebraic loop is an error."""
        g = nx.DiGraph()
        index = {nd.out: i for i, nd in enumerate(nodes)}
        g.add_nodes_from(index)
        for nd in nodes:
            for a in nd.args:
                if isinstance(a, Ref) and a.delay == 0 and a.name in defined:
                    g.add_edge(a.name, nd.out)
        try:
            order = list(nx.lexicographical_topological_sort(g, key=index.__getitem__))
        except nx.NetworkXUnfeasible:
            cycle = [u for u, _ in nx.find_cycle(g)]
            names = [defined[u].target for u in cycle]
            names = [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]]
            if len(names) > 1 and names[0] == names[-1]:
                names.pop()
            first = defined[cycle[0]]
            shown = " -> ".join(names + [names[0]])
            raise AlgebraicLoopError(
                f"algebraic loop {shown}: these values depend on each other at the same time "
                f"step; read a state from the past with [t-1], e.g. {names[0]}[t-1]",
                first.line, first.col) from None
        return [defined[n] for n in order]

    @staticmethod
    def _dynamic(order, inputs) -> set[str]:
        """The nodes that depend on an input or a state (the rest: parameters and numbers
        alone, the same for every sequence)."""
        dyn: set[str] = set()
        for nd in order:
            if any(isinstance(a, Ref) and (a.delay or a.name in inputs or a.name in dyn)
                   for a in nd.args):
                dyn.add(nd.out)
        return dyn

    @staticmethod
    def _infer(order, inputs, states, sizes, params, param_shapes, read_delayed, dynamic):
        D = _Dims()
        shape: dict[str, tuple | None] = {}
        for name, n in inputs.items():
            shape[name] = (D.new(n),)
        for p in params:
            shape[p] = tuple(D.new(d) for d in param_shapes[p]) if p in param_shapes else None
        for v in read_delayed:
            shape[v] = (D.new(),)  # a state: a vector whose size its definition tells
        for v, n in {**states, **sizes}.items():
            if v in shape and shape[v] is not None and len(shape[v]) == 1:
                D.bind(shape[v][0], n)

        def conflict(nd, what):
            return CellError(f"shape conflict in '{nd.target}': {what}", nd.line, nd.col)

        def vector(nd, a):
            """The shape of operand a, making an unknown parameter a vector."""
            if shape.get(a.name) is None:
                shape[a.name] = (D.new(),)
            return shape[a.name]

        def named(a):  # an internal node (h.3) is shown by where it is, not by name
            return "this value" if "." in a.name else f"'{a}'"

        def operand(nd, a, what, scalar_ok=True, static_ok=True):
            """vector(nd, a), an error unless a fits: no matrix (they only appear on the
            left of @), a number only where scalar_ok, parameters alone where static_ok."""
            s = vector(nd, a)
            if len(s) > 1:
                raise conflict(nd, f"{what} of {named(a)} {D.fmt(s)}: a matrix only appears "
                                   f"on the left of @")
            if not s and not scalar_ok:
                raise conflict(nd, f"{what} of {named(a)}, a single number (sum, mean and "
                                   f"number literals give one): {what} takes a vector")
            if not static_ok and a.delay == 0 and a.name not in inputs and \
                    a.name not in dynamic:
                raise CellError(f"{what} of {named(a)}, which depends on no input and no state "
                                f"(only parameters and numbers): {what} takes a value "
                                f"computed from an input or a state; a parameter is used "
                                f"as a whole, on the left of @ or elementwise "
                                f"(+ - * / ** and tanh, sigmoid, ...)", nd.line, nd.col)
            return s

        for nd in order:
            args = [None if isinstance(a, float) else a for a in nd.args]
            op = nd.op
            if op == "matvec":
                A, v = nd.args
                if A.name not in params:
                    made = next((m.op for m in order if m.out == A.name), None)
                    hint = ("; @ binds like * and /, left to right: write (W @ x) * y"
                            if made in ("mul", "div") else "")
                    raise CellError(f"the left of @ must be a parameter matrix, got '{A.name}'"
                                    f" (a {'variable' if A.name not in inputs else 'input'})"
                                    f"{hint}", nd.line, nd.col)
                if shape[A.name] is None:
                    shape[A.name] = (D.new(), D.new())
                sA, sv = shape[A.name], vector(nd, v)
                if len(sA) != 2 or len(sv) != 1:
                    raise conflict(nd, f"{A.name} @ {v}: needs a matrix and a vector, got "
                                       f"{D.fmt(sA)} @ {D.fmt(sv)}")
                operand(nd, v, "the right of @", static_ok=False)
                if not D.unify(sA[1], sv[0]):
                    raise conflict(nd, f"{A.name} @ {v}: {A.name} is {D.fmt(sA)} but {v} is "
                                       f"{D.fmt(sv)}; the columns of {A.name} must match")
                out = (sA[0],)
            elif op in ELEMENTWISE:
                a, b = args
                sa = () if a is None else shape.get(a.name)
                sb = () if b is None else shape.get(b.name)
                if sa is None and sb is None:
                    sa = vector(nd, a)
                    sb = shape[b.name] = sa
                elif sa is None:
                    sa = shape[a.name] = sb
                elif sb is None:
                    sb = shape[b.name] = sa
                if len(sa) > 1 or len(sb) > 1:
                    raise conflict(nd, f"{op} of {D.fmt(sa)} and {D.fmt(sb)}: matrices only "
                                       f"appear on the left of @")
                if sa and sb and not D.unify(sa[0], sb[0]):
                    raise conflict(nd, f"{op} of {nd.args[0]} {D.fmt(sa)} and {nd.args[1]} "
                                       f"{D.fmt(sb)}")
                out = sa or sb
            elif op in SAME_SHAPE:
                out = () if args[0] is None else operand(nd, args[0], op)
            elif op in ("sum", "mean"):
                operand(nd, args[0], op, scalar_ok=False, static_ok=False)
                out = ()
            elif op == "split":
                src = operand(nd, args[0], op, scalar_ok=False, static_ok=False)
                n = dict(nd.params)["n"]
                out = (D.new(),)
                if not D.add_mul(src[0], n, out[0]):
                    raise conflict(nd, f"split of {nd.args[0]} {D.fmt(src)} into {n} equal parts")
            elif op == "concat":
                parts = [operand(nd, a, op, scalar_ok=False, static_ok=False)[0] for a in args]
                out = (D.new(),)
                if not D.add_sum(out[0], parts):
                    raise conflict(nd, "concat sizes do not add up")
            else:  # pragma: no cover - the parser only emits the ops above
                raise CellError(f"unknown cell op {op}", nd.line, nd.col)
            prev = shape.get(nd.out)
            if prev is not None:
                if len(prev) != len(out) or (out and not D.unify(prev[0], out[0])):
                    declared = {**states, **sizes}.get(nd.out)
                    has = f"is declared with size {declared}" if declared else \
                        f"is read as {D.fmt(prev)}"
                    raise conflict(nd, f"'{nd.out}' {has} but its equation gives {D.fmt(out)}")
            shape[nd.out] = out
        for v, n in {**states, **sizes}.items():
            if v not in shape:
                raise CellError(f"sizes names '{v}', which is not a variable of the cell")
            if shape[v] is None or len(shape[v]) != 1 or not D.bind(shape[v][0], n):
                raise CellError(f"shape conflict: '{v}' is given size {n} but its equations "
                                f"give {D.fmt(shape[v])}")
        result = {}
        for name, s in shape.items():
            if s is None:
                continue
            dims = tuple(D.get(d) for d in s)
            if any(d is None for d in dims):
                kind = "parameter" if name in params else "variable"
                raise CellError(f"cannot infer the shape of {kind} '{name}': it is "
                                f"{D.fmt(s)}; give the size of a variable it feeds, e.g. "
                                f"sizes={{'<name>': n}}")
            result[name] = dims
        return result

    # ---------------------------------------------------------------- views
    @property
    def graph(self) -> nx.MultiDiGraph:
        """The folded cell as a cyclic graph: nodes for inputs, parameters and every op;
        edges carry ``delay`` (0 within a step, k for ``v[t-k]``) and ``arg`` (position)."""
        if self._graph is None:
            g = nx.MultiDiGraph()
            for x, n in self.inputs.items():
                g.add_node(x, kind="input", shape=(n,), op=None)
            for p, s in self.params.items():
                g.add_node(p, kind="param", shape=s, op=None)
            for nd in self.nodes:
                kind = "state" if nd.out in self.states else \
                    "var" if nd.out == nd.target else "op"
                consts = tuple((i, a) for i, a in enumerate(nd.args) if isinstance(a, float))
                g.add_node(nd.out, kind=kind, shape=self.shapes[nd.out], op=nd.op,
                           target=nd.target, output=nd.out in self.outputs,
                           consts=consts + tuple(nd.params))
            for nd in self.nodes:
                for i, a in enumerate(nd.args):
                    if isinstance(a, Ref):
                        g.add_edge(a.name, nd.out, delay=a.delay, arg=i)
            self._graph = g
        return self._graph

    def __str__(self):
        ins = ", ".join(f"{k}{_fmt((n,))}" for k, n in self.inputs.items())
        st = ", ".join(f"{k}{_fmt((n,))}" for k, n in self.states.items())
        ps = ", ".join(f"{k}{_fmt(s)}" for k, s in self.params.items())
        lines = [f"cell  inputs: {ins}  states: {st}  outputs: {', '.join(self.outputs)}",
                 f"      params: {ps}"]
        shown = set()
        parts: dict[tuple, list[str]] = {}  # a split's source -> the names it defines
        for m in self.nodes:
            if m.op == "split":
                parts.setdefault((m.args, self.sources.get(m.target)), []).append(m.out)
        for nd in sorted(self.nodes, key=lambda n: (n.line, n.col)):
            src = self.sources.get(nd.target)
            if src is None:  # built without text (stacking): show the node itself
                lines.append(f"  {nd.out}{_fmt(self.shapes[nd.out])} = {str(nd).split(' = ')[1]}")
                continue
            if src in shown or nd.out != nd.target:
                continue
            key = src
            shown.add(key)
            if nd.op == "split":
                names = parts[(nd.args, src)]
                lhs = ", ".join(f"{m}{_fmt(self.shapes[m])}" for m in names)
            else:
                lhs = f"{nd.target}{_fmt(self.shapes[nd.target])}"
            rhs = src.split("=", 1)[1].strip() if src else str(nd)
            lines.append(f"  {lhs} = {rhs}")
        return "\n".join(lines)

    __repr__ = __str__

    def renamed(self, rename: Callable[[str], str]) -> list[Node]:
        """This cell's nodes with every name passed through ``rename`` (for stacking)."""
        def ref(a):
            return replace(a, name=rename(a.name)) if isinstance(a, Ref) else a
        return [replace(nd, out=rename(nd.out), target=rename(nd.target),
                        args=tuple(ref(a) for a in nd.args)) for nd in self.nodes]
