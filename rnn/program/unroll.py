"""The unrolling compiler: a cyclic cell becomes an acyclic program over T steps.

Every delay-k edge ``v[t-k] -> n`` becomes an edge from ``v@(t-k)`` into ``n@t`` (or
from the initial value ``v@init`` when t-k < 0). Parameters are program inputs that
appear once and feed every step, so reverse mode sums their per-step cotangents: that
sum *is* backpropagation through time. The loop below runs over steps and nodes; it
never recurses, so T = 10,000 is just a longer program.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace
from functools import partial

import networkx as nx
import numpy as np

from engine.errors import DTypeError
from engine.ir import Builder, Eqn, Program, Var, run_passes

from ..lang.cell import Cell
from ..lang.parse import Ref

FULL = (None, None, None)

# The unrolled program is the node-by-node teaching form: about 400 bytes of IR per node,
# and the reference interpreter keeps a value per node. Past a few million nodes it is
# the wrong tool (the compiled loops run any T); refuse before allocating.
MAX_NODES = 1 << 22  # 4,194,304 nodes of the unrolled program
MASK = "mask"  # the name of the ragged-batch mask input (rnn/program/loop.py uses it too)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1: any integer (numpy's too), never a bool or a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_dtype_name(dtype) -> str:
    """'float32' or 'float64' (what every kernel is written for), or a DTypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in (np.float32, np.float64):
        name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", str(dtype))
        got = repr(name) if dt is None or str(dt) == name else f"{name!r} ({dt})"
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {got}")
    return str(dt)


def check_mask_name(cell, what: str = "mask=") -> None:
    """A cell variable named ``mask`` would be declared twice next to the ragged-batch
    mask, which is an input of that name in the unrolled program and the loops."""
    names = set(cell.inputs) | set(cell.states) | set(cell.params) | {nd.out for nd in
                                                                      cell.nodes}
    if MASK in names:
        raise ValueError(f"{what} adds an input named '{MASK}' to the unrolled program, and "
                         f"this cell already has a variable named '{MASK}': it would be "
                         f"declared twice; rename the cell's '{MASK}' (e.g. 'm'), or leave "
                         f"{what} out")


def program_size(cell, steps: int, masked: bool = False) -> int:
    """The number of nodes (inputs and equations) of ``cell`` unrolled over ``steps``."""
    per_step = len(cell.nodes) + len(cell.inputs)
    if masked:  # the mask, and a blend (3 more nodes) per state and output
        per_step += 1 + 3 * len(set(cell.states) | set(cell.outputs))
    return steps * per_step + len(cell.params) + len(cell.states) + len(cell.inputs)


def check_program_size(cell, steps: int, masked: bool = False) -> None:
    n = program_size(cell, steps, masked)
    if n > MAX_NODES:
        raise ValueError(f"unrolling {steps:,} steps of a cell of {len(cell.nodes)} nodes "
                         f"makes a program of {n:,} nodes, more than the {MAX_NODES:,} the "
                         f"unrolled (node-by-node) form allows "
                         f"(rnn.program.unroll.MAX_NODES): use fewer steps, or "
                         f"executor='compiled' (rnn.bptt, Model.forward) with a cell the loop "
                         f"compiler handles: its cost does not grow with an unrolled program")


def lower(cell: Cell, node) -> tuple[str, dict]:
    """The primitive op (and its params) that runs one cell node on a batch."""
    op, params = node.op, dict(node.params)
    if op == "split":
        q = cell.shapes[node.out][0]
        i = params["i"]
        return "slice", {"index": (FULL, (i * q, (i + 1) * q, None))}
    if op in ("sum", "mean"):
        return op, {"axis": -1, "keepdims": True}
    if op in ("softmax", "concat", "layernorm"):
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
    # None: the cell's. A bidirectional model's program is more than one cell: its layers
    # both ways and its head (rnn.model.unroll_both_ways) give their own
    kinds: dict[str, str] | None = None  # each cell node -> its kind (state, var, ...)
    output: str | None = None  # the variable outputs() gives

    def __post_init__(self):
        if self.kinds is None:
            self.kinds = dict(self.cell.graph.nodes(data="kind"))
        if self.output is None:
            self.output = self.cell.outputs[0]

    @property
    def graph(self) -> nx.DiGraph:
        """The acyclic graph: node ``h@3`` per variable and step; ``cell_node``, ``step``
        and ``kind`` map each back to the folded cell."""
        g = self.program.graph()
        for _, data in g.nodes(data=True):
            v = data["var"]
            data["cell_node"], data["step"] = v.node, v.step
            data["kind"] = ("init" if v.step == -1 else self.kinds.get(v.node, "loss")
                            if v.node is not None else "loss")
        return g

    def outputs(self, name: str | None = None) -> list[Var]:
        return self.values[name or self.output]


def unroll(cell, steps: int, *, dtype: str = "float64", masked: bool = False,
           truncate: int | None = None, print_after_all: bool = False) -> Unrolled:
    """Unroll a cell (or a Model: its whole stack; a bidirectional one's layers both ways,
    in time order, see ``Model.unrolled``) over ``steps`` time steps.

    The program is verified, then run through the passes (truncation cuts, when asked
    for), verified again after each; ``print_after_all`` prints it after each pass.

    >>> from rnn import cells
    >>> u = unroll(cells.elman(2, 3), steps=4)
    >>> u.graph.has_edge("h@0", "h.2@1")
    True
    """
    if hasattr(cell, "unrolled") and not isinstance(cell, Cell):  # a Model unrolls itself
        return cell.unrolled(steps, dtype=dtype, masked=masked, truncate=truncate,
                             print_after_all=print_after_all)
    if not isinstance(cell, Cell):
        raise TypeError(f"unroll takes a Cell (e.g. rnn.cells.lstm(1, 16)) or a Model, got "
                        f"{type(cell).__name__}")
    steps = positive_int("steps", steps)
    if truncate is not None:
        truncate = positive_int("truncate", truncate)
    dtype = check_dtype_name(dtype)
    if masked:
        check_mask_name(cell, "masked=True")
    check_program_size(cell, steps, masked)
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
        masks = [b.input(f"{MASK}@{t}", ("B", 1), node=MASK, step=t) for t in range(steps)]
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
