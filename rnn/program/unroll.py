"""The unrolling compiler: a cyclic cell becomes an acyclic program over T steps.

Every delay-k edge ``v[t-k] -> n`` becomes an edge from ``v@(t-k)`` into ``n@t`` (or
from the initial value ``v@init`` when t-k < 0). Parameters are program inputs that
appear once and feed every step, so reverse mode sums their per-step cotangents: that
sum *is* backpropagation through time. The loop below runs over steps and nodes; it
never recurses, so T = 10,000 is just a longer program.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import networkx as nx

from engine.ir import Builder, Eqn, Program, Var, run_passes

from ..lang.cell import Cell
from ..lang.parse import Ref

FULL = (None, None, None)


def lower(cell: Cell, node) -> tuple[str, dict]:
    """The primitive op (and its params) that runs one cell node on a batch."""
    op, params = node.op, dict(node.params)
    if op == "split":
        q = cell.shapes[node.out][0]
        i = params["i"]
        return "slice", {"index": (FULL, (i * q, (i + 1) * q, None))}
    if op in ("sum", "mean"):
        return op, {"axis": -1, "keepdims": True}
    if op in ("softmax", "concat"):
        return op, {"axis": -1}
    return op, params


def batched(shape: tuple) -> tuple:
    """A per-example shape with the batch dimension: () becomes (B, 1) so it broadcasts."""
    return ("B",) + (tuple(shape) if shape else (1,))


@dataclass
class Unrolled:
    """An unrolled cell: the program and where each cell value lives in it."""

    cell: Cell
    steps: int
    program: Program
    xs: dict[str, list[Var]]  # input -> its var at each step
    params: dict[str, Var]
    init: dict[str, Var]  # states (and delayed inputs, masked outputs) -> initial value
    values: dict[str, list[Var]]  # each cell variable -> its var at each step
    masks: list[Var] | None = None

    @property
    def graph(self) -> nx.DiGraph:
        """The acyclic graph: node ``h@3`` per variable and step; ``cell_node``, ``step``
        and ``kind`` map each back to the folded cell."""
        g = self.program.graph()
        kinds = dict(self.cell.graph.nodes(data="kind"))
        for _, data in g.nodes(data=True):
            v = data["var"]
            data["cell_node"], data["step"] = v.node, v.step
            data["kind"] = ("init" if v.step == -1 else kinds.get(v.node, "loss")
                            if v.node is not None else "loss")
        return g

    def outputs(self, name: str | None = None) -> list[Var]:
        return self.values[name or self.cell.outputs[0]]


def unroll(cell, steps: int, *, dtype: str = "float64", masked: bool = False,
           truncate: int | None = None, print_after_all: bool = False) -> Unrolled:
    """Unroll a cell (or a Model's whole stack) over ``steps`` time steps.

    The program is verified, then run through the passes (truncation cuts, when asked
    for), verified again after each; ``print_after_all`` prints it after each pass.

    >>> from rnn import cells
    >>> u = unroll(cells.elman(2, 3), steps=4)
    >>> u.graph.has_edge("h@0", "h.2@1")
    True
    """
    cell = getattr(cell, "full", cell)  # a Model unrolls its stacked cell
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    b = Builder(dtype)
    params = {p: b.input(p, s, node=p) for p, s in cell.params.items()}
    xs = {x: [b.input(f"{x}@{t}", ("B", n), node=x, step=t) for t in range(steps)]
          for x, n in cell.inputs.items()}
    init = {s: b.input(f"{s}@init", ("B", n), node=s, step=-1) for s, n in cell.states.items()}
    init.update({x: b.input(f"{x}@init", ("B", cell.inputs[x]), node=x, step=-1)
                 for x in cell.input_delays})
    blend = set(cell.states)
    masks = None
    if masked:
        masks = [b.input(f"mask@{t}", ("B", 1), node="mask", step=t) for t in range(steps)]
        blend |= set(cell.outputs)
        for o in cell.outputs:
            if o not in init:
                init[o] = b.input(f"{o}@init", batched(cell.shapes[o]), node=o, step=-1)
    values: dict[str, list[Var]] = {nd.out: [] for nd in cell.nodes}

    def read(a, t):
        if not isinstance(a, Ref):
            return a
        if a.name in params:
            return params[a.name]
        s = t - a.delay
        if a.name in xs:
            return xs[a.name][s] if s >= 0 else init[a.name]
        return values[a.name][s] if s >= 0 else init[a.name]

    for t in range(steps):
        for nd in cell.nodes:
            op, kw = lower(cell, nd)
            args = [read(a, t) for a in nd.args]
            name = f"{nd.out}@{t}"
            if masked and nd.out in blend:
                new = b.call(op, *args, name=f"{nd.out}.new@{t}", node=nd.out, step=t, **kw)
                prev = read(Ref(nd.out, 1), t)
                # masked steps carry the old value exactly: prev + m * (new - prev)
                diff = b.call("sub", new, prev, name=f"{nd.out}.diff@{t}", node=nd.out, step=t)
                gate = b.call("mul", masks[t], diff, name=f"{nd.out}.gate@{t}", node=nd.out,
                              step=t)
                v = b.call("add", prev, gate, name=name, node=nd.out, step=t)
            else:
                v = b.call(op, *args, name=name, node=nd.out, step=t, **kw)
            values[nd.out].append(v)
    outs = [values[o][t] for t in range(steps) for o in cell.outputs]
    prog = b.program(outs)
    passes = []
    if truncate is not None and truncate < steps:
        passes.append(partial(cut_state_edges, k=truncate, states=blend))
        passes[-1].__name__ = f"cut_state_edges(k={truncate})"
    prog = run_passes(prog, passes, print_after_all=print_after_all)
    return Unrolled(cell, steps, prog, xs, params, init, values, masks)


def cut_state_edges(prog: Program, k: int, states: set[str]) -> Program:
    """Truncated BPTT as a pass: every read of a state across a k-step boundary goes
    through ``stop_gradient``; values flow on, gradients stop (cut edges)."""
    eqns: list[Eqn] = []
    cuts: dict[str, Var] = {}
    for e in prog.eqns:
        t = e.out.step
        new_inputs = []
        for a in e.inputs:
            crosses = (isinstance(a, Var) and a.node in states and a.step is not None
                       and t is not None and 0 <= a.step < t and a.step // k != t // k)
            if crosses:
                if a.name not in cuts:
                    cuts[a.name] = replace(a, name=f"{a.name}|cut")
                    eqns.append(Eqn(cuts[a.name], "stop_gradient", (a,)))
                a = cuts[a.name]
            new_inputs.append(a)
        eqns.append(replace(e, inputs=tuple(new_inputs)))
    return replace(prog, eqns=tuple(eqns))
