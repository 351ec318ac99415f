"""The loop compiler: the unrolled program rolled back into compiled time loops.

Unrolling turns the cyclic cell (A -> A) into T copies of one step (A -> B). Every copy
is the same computation, so for speed we compile the step once instead of walking the
T copies. The step's nodes are split by the cycles of the cell graph (its strongly
connected components, delay edges included), in topological order:

- a node on no cycle is a **sweep**: it runs once over all T steps as one array op
  (``W @ x`` of every step is one GEMM over (T*B, I); a head, a bias add, ...);
- the nodes of one cycle are a **loop**: one generated Numba function runs them for
  t = 0..T-1, and another runs their reverse mode for t = T-1..0. Per-step GEMMs go
  to BLAS from inside the loop; elementwise math is written out as scalar loops over
  (batch, feature) that call the vectorizable functions of engine/kernels.py.

A stacked model is then loop, GEMM sweep, loop, ...: layer by layer, as cuDNN does.
The weights' gradients of a loop's GEMMs are summed over all steps in one GEMM after
the backward loop. What is generated depends on the cell, never on T: compile time and
plan memory do not grow with T, only the activations do. ``Plan.source()`` prints the
generated loops (``unroll compile CELL --show``).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections import ChainMap
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import networkx as nx
import numpy as np

from engine import blas
from engine import kernels as _kernels
from engine.ops import LAYERNORM_EPS, OPS, py_index, unbroadcast

from ..lang.parse import Ref
from . import cache
from .unroll import lower

# the scalar rule of each elementwise op, forward and backward (``{0}``, ``{1}`` are the
# operands at (b, j), ``{y}`` the result, ``{g}`` its adjoint, ``{p}`` the exponent)
FORWARD = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "neg": "-{0}", "copy": "{0}", "exp": "_exp({0})", "log": "_log({0})",
    "tanh": "_tanh({0})", "sigmoid": "_sigmoid({0})", "relu": "({0} if {0} > ZERO else ZERO)",
    "softplus": "_softplus({0})", "pow": "{0} ** _F({p})",
}
BACKWARD = {  # (cotangent for arg 0, for arg 1) given g, the output y and the args
    "add": ("{g}", "{g}"), "sub": ("{g}", "-{g}"), "mul": ("{g} * {1}", "{g} * {0}"),
    "div": ("{g} / {1}", "-{g} * {y} / {1}"), "neg": ("-{g}",), "copy": ("{g}",),
    "exp": ("{g} * {y}",), "log": ("{g} / {0}",), "tanh": ("{g} * (ONE - {y} * {y})",),
    "sigmoid": ("{g} * {y} * (ONE - {y})",), "relu": ("({g} if {0} > ZERO else ZERO)",),
    "softplus": ("{g} * _sigmoid({0})",), "pow": ("{g} * _F({p}) * {0} ** _F({p} - 1.0)",),
}
ELEMENTWISE = set(FORWARD)
MAX_RUN = 24  # nodes fused into one loop: Numba's compile time grows fast with loop size
LOOP_OPS = ELEMENTWISE | {"matvec", "slice", "sum", "mean", "softmax", "concat", "layernorm"}
# what generated code calls in engine/: Numba's cache does not see a change there
_KERNELS_HASH = hashlib.sha1(b"".join(Path(m.__file__).read_bytes()
                                      for m in (_kernels, blas))).hexdigest()[:12]


class Unsupported(Exception):
    """The step has something the loop compiler does not generate (the caller falls back
    to the program executor)."""


# ------------------------------------------------------------------ the step
@dataclass(frozen=True)
class Arg:
    kind: str  # "node", "input" (data: xs, mask), "param" or "lit"
    name: str = ""
    delay: int = 0
    value: float = 0.0


@dataclass
class Node:
    out: str
    op: str  # a primitive of engine/ops.py
    kw: dict
    args: tuple
    width: int  # features per example (1 for a scalar)


@dataclass
class Step:
    """One time step of a cell as primitives; delayed reads are explicit."""

    nodes: list
    widths: dict  # every node, input and mask -> width
    params: dict  # name -> shape
    inputs: tuple  # data inputs (and "mask")
    states: tuple  # what is read with a delay: needs an initial value
    outputs: tuple
    blend: frozenset  # the values truncation cuts (states; outputs too when masked)


def _width(shape) -> int:
    return int(shape[0]) if shape else 1


def step_of(cell, masked: bool) -> Step:
    """The step of ``cell``; ``masked`` adds the blend ``v = v[t-1] + m * (new - v[t-1])``
    of every state and output, as the unroller does."""
    blend = set(cell.states) | (set(cell.outputs) if masked else set())
    widths = {x: n for x, n in cell.inputs.items()}

    def arg(a):
        if not isinstance(a, Ref):
            return Arg("lit", value=float(a))
        if a.name in cell.params:
            return Arg("param", a.name)
        return Arg("input" if a.name in cell.inputs else "node", a.name, a.delay)

    nodes = []
    for nd in cell.nodes:
        op, kw = lower(cell, nd)
        w = _width(cell.shapes[nd.out])
        args = tuple(arg(a) for a in nd.args)
        if masked and nd.out in blend:
            new, diff, gate = (f"{nd.out}.{s}" for s in ("new", "diff", "gate"))
            prev = Arg("node", nd.out, 1)
            nodes += [Node(new, op, kw, args, w),
                      Node(diff, "sub", {}, (Arg("node", new), prev), w),
                      Node(gate, "mul", {}, (Arg("input", "mask"), Arg("node", diff)), w),
                      Node(nd.out, "add", {}, (prev, Arg("node", gate)), w)]
        else:
            nodes.append(Node(nd.out, op, kw, args, w))
    for n in nodes:
        widths[n.out] = n.width
    inputs = tuple(cell.inputs) + (("mask",) if masked else ())
    widths["mask"] = 1
    states = sorted({a.name for n in nodes for a in n.args if a.delay > 0})
    return Step(nodes, widths, dict(cell.params), inputs, tuple(states), tuple(cell.outputs),
                frozenset(blend))


# ------------------------------------------------------------------ grouping
@dataclass
class Sweep:
    node: Node


@dataclass
class Loop:
    nodes: list
    stored: set = field(default_factory=set)  # kept for all T; the rest is per-step scratch
    exported: set = field(default_factory=set)  # read outside the loop: may get a cotangent
    forward: object = None
    backward: object = None
    fwd_args: list = field(default_factory=list)  # (role, name) of each array argument
    bwd_args: list = field(default_factory=list)
    src: str = ""
    flops: int = 0  # of the GEMMs of one step, per example
    width: int = 0  # numbers computed in one step, per example
    own: list = field(default_factory=list)  # (role, name, width) of a part's own arrays
    shared: list = field(default_factory=list)  # (role, name, width) of those parts share
    rings: dict = field(default_factory=dict)  # value -> (steps, width) of its cotangent ring


def groups_of(step: Step) -> list:
    """Sweeps and loops in an order that runs (the condensation of the cell graph)."""
    g = nx.DiGraph()
    pos = {n.out: i for i, n in enumerate(step.nodes)}
    for n in step.nodes:
        g.add_node(n.out)
        for a in n.args:
            if a.kind == "node":
                g.add_edge(a.name, n.out)
    comps = list(nx.strongly_connected_components(g))
    dag = nx.condensation(g, comps)
    order = nx.lexicographical_topological_sort(
        dag, key=lambda c: min(pos[m] for m in dag.nodes[c]["members"]))
    by_name = {n.out: n for n in step.nodes}
    out = []
    for c in order:
        members = sorted(dag.nodes[c]["members"], key=pos.get)
        cyclic = len(members) > 1 or g.has_edge(members[0], members[0])
        if cyclic:
            out.append(Loop([by_name[m] for m in members]))
        else:
            out.append(Sweep(by_name[members[0]]))
    return _absorb(step, out, pos)


ABSORB_MAX = 8  # sweeps a loop takes in (a GRU's bias add and three gate slices)


def _absorb(step: Step, groups: list, pos: dict) -> list:
    """Moves into a loop the elementwise sweeps only it reads, at no delay (an LSTM's
    bias add ``W @ x + b``, a GRU's gate slices): there they are fused with the loop's
    own math, not passes over all T of their own, forward and backward. Matrix products
    stay sweeps (one GEMM over all T), as does anything the loop may not compute, and a
    loop takes at most ABSORB_MAX of them (the nearest): a long chain of input features
    stays out, so that the loop's code, and its compile time, stay small."""
    readers: dict[str, set] = {}
    for k, grp in enumerate(groups):
        for n in (grp.nodes if isinstance(grp, Loop) else [grp.node]):
            for a in n.args:
                if a.kind == "node":
                    readers.setdefault(a.name, set()).add((k, a.delay))
    keep = set(step.outputs) | set(step.states)
    moved, taken = set(), {}
    for j in range(len(groups) - 1, -1, -1):
        if not isinstance(groups[j], Sweep):
            continue
        n = groups[j].node
        into = {k for k, _ in readers.get(n.out, ())}
        if (len(into) != 1 or n.out in keep or n.op in ("matvec", "softmax", "layernorm")
                or n.op not in LOOP_OPS or any(d for _, d in readers[n.out])
                or any(a.delay or (a.kind == "param" and len(step.params[a.name]) > 1)
                       or (a.kind not in ("node", "input") and n.op in ("sum", "mean", "concat"))
                       for a in n.args)):
            continue
        k = into.pop()
        if not isinstance(groups[k], Loop) or taken.get(k, 0) >= ABSORB_MAX:
            continue
        taken[k] = taken.get(k, 0) + 1
        groups[k].nodes.insert(0, n)
        moved.add(j)
        for a in n.args:  # its operands are now read by the loop
            if a.kind == "node":
                readers[a.name] = {(k if r == j else r, d) for r, d in readers[a.name]}
    for grp in groups:
        if isinstance(grp, Loop):
            _place(grp, {groups[j].node.out for j in moved}, pos)
    return [g for j, g in enumerate(groups) if j not in moved]


def _place(grp: Loop, moved: set, pos: dict) -> None:
    """Orders a loop's nodes so that each moved-in node fuses into a pass of the loop's
    own: right after the last node of its width before its first reader (a GRU's
    + b_ih beside its + b_hh), else just before that reader (an LSTM's + b_ih after the
    recurrent GEMM, in the gates' sum), never after a moved-in node reading it."""
    own = sorted((n for n in grp.nodes if n.out not in moved), key=lambda n: pos[n.out])
    at = {n.out: float(k) for k, n in enumerate(own)}
    for n in sorted((n for n in grp.nodes if n.out in moved), key=lambda n: -pos[n.out]):
        readers = [r for r in grp.nodes if r.out in at and any(a.name == n.out for a in r.args)]
        first = min(at[r.out] for r in readers)  # (ties: the cell's order, below)
        same = [k for k, m in enumerate(own) if k < first and m.width == n.width]
        at[n.out] = max(same) + 0.5 if same else first - 0.5
    grp.nodes.sort(key=lambda n: (at[n.out], pos[n.out]))


_NEEDS = {op: ({int(i) for t in ts for i in re.findall(r"\{(\d)\}", t)},
               any("{y}" in t for t in ts)) for op, ts in BACKWARD.items()}
_NEEDS.update({"matvec": ({1}, False), "softmax": (set(), True), "layernorm": ({0}, True),
               "slice": (set(), False),
               "sum": (set(), False), "mean": (set(), False), "concat": (set(), False)})


def _plan_storage(step: Step, groups: list) -> None:
    """Which loop values are kept for every step: those read later (delays, other
    groups, the caller) and those a backward rule reads."""
    for grp in groups:
        if not isinstance(grp, Loop):
            continue
        names = {n.out for n in grp.nodes}
        for n in grp.nodes:
            if n.op not in LOOP_OPS:
                raise Unsupported(f"{n.op} inside a recurrence")
            if n.op == "matvec" and n.args[0].kind != "param":
                raise Unsupported("a matrix that is not a parameter")
            if n.op in ("sum", "mean", "softmax", "concat", "layernorm") and any(
                    a.kind not in ("node", "input") for a in n.args):
                raise Unsupported(f"{n.op} of a parameter or a number inside a recurrence")
            if any(a.kind == "param" and len(step.params[a.name]) > 1 for a in n.args
                   if n.op != "matvec"):
                raise Unsupported("a matrix parameter in elementwise math")
            idx, y = _NEEDS[n.op]
            if y:
                grp.stored.add(n.out)
            for i in idx:
                a = n.args[i]
                if a.kind == "node" and a.name in names:
                    grp.stored.add(a.name)
        for other in groups:
            for n in (other.nodes if isinstance(other, Loop) else [other.node]):
                for a in n.args:
                    if a.kind == "node" and a.name in names and other is not grp:
                        grp.exported.add(a.name)
                    if a.kind == "node" and a.name in names and a.delay:
                        grp.stored.add(a.name)
        grp.exported |= names & set(step.outputs)
        grp.stored |= grp.exported | (names & set(step.states))


# ------------------------------------------------------------------ code generation
PRELUDE = '''"""Generated by unroll (rnn/program/loop.py): one cell's time loop. Do not edit."""
# engine/kernels.py and blas.py {kernels_hash} (Numba's cache does not see a change there)
import math

import numba
import numpy as np
from numpy import {dtype} as _F

from engine.kernels import scalar_exp as _exp
from engine.kernels import scalar_log as _log
from engine.kernels import scalar_sigmoid as _sigmoid
from engine.kernels import scalar_softplus as _softplus
from engine.kernels import scalar_tanh as _tanh

ONE = _F(1.0)
ZERO = _F(0.0)
'''
# c = a @ (b.T if trans_b else b) + beta * c, and c += a.T @ b over rows of a chunk:
# engine/blas.py's, through numpy's BLAS, else through np.dot
GEMM_BLAS = """
from engine.blas import gemm as _mm
from engine.blas import gemm_tn as _mtm
"""
GEMM_NUMPY = """
from engine.blas import dot_gemm as _mm
from engine.blas import dot_gemm_tn as _mtm
"""
JIT = '@numba.njit(cache=True, nogil=True, error_model="numpy")'


class _Emit:
    """Writes the forward and backward loop of one Loop group."""

    EPS = LAYERNORM_EPS

    def __init__(self, step: Step, grp: Loop):
        self.step, self.grp = step, grp
        self.names = {n.out for n in grp.nodes}
        self.idx = {n.out: i for i, n in enumerate(grp.nodes)}
        self.ext: dict[str, int] = {}  # outside values read, in first-use order
        self.params: dict[str, int] = {}
        self.delayed: set[tuple[str, int]] = set()
        for n in grp.nodes:
            for a in n.args:
                if a.kind == "param":
                    self.params.setdefault(a.name, len(self.params))
                elif a.kind in ("node", "input") and a.name not in self.names:
                    self.ext.setdefault(a.name, len(self.ext))
                if a.kind in ("node", "input") and a.delay:
                    self.delayed.add((a.name, a.delay))
        # outside values a backward rule reads (the rest the backward never sees)
        self.bwd_ext = {n.args[i].name for n in grp.nodes for i in _NEEDS[n.op][0]
                        if n.args[i].kind in ("node", "input")
                        and n.args[i].name not in self.names}
        self.lits: dict[float, str] = {}  # number literal -> its module constant
        self.windowed: set[str] = set()  # outside values given a window of steps (Plan)
        self.live: set[str] = {n.out for n in grp.nodes}  # what reaches an output (Plan)
        self.ring = {}  # in-group value read with delays -> ring length (max delay + 1)
        for name, d in sorted(self.delayed):  # (a set: sorted, the same source in every
            if name in self.names:  # process, so that Numba's cache is hit)
                self.ring[name] = max(self.ring.get(name, 1), d + 1)
        # runs of elementwise nodes of one width become one loop over (b, j): their
        # values and adjoints pass in scalars; arrays only where read outside the run
        self.segments: list[list[Node]] = []
        for n in grp.nodes:
            fusable = n.op in ELEMENTWISE or n.op == "slice"
            last = self.segments[-1] if self.segments else None
            if (fusable and last and self._fused(last) and last[0].width == n.width
                    and len(last) < MAX_RUN):
                last.append(n)
            else:
                self.segments.append([n])
        self.run = {n.out: k for k, seg in enumerate(self.segments) for n in seg}
        outside = set()  # read (at delay 0) by a node of another segment
        for n in grp.nodes:
            for a in n.args:
                if a.kind == "node" and a.name in self.names and not a.delay and \
                        self.run[a.name] != self.run[n.out]:
                    outside.add(a.name)
        self.array = {n.out for n in grp.nodes if n.out in outside or n.out in grp.stored
                      or not self._fused([n])}
        self.garray = {n.out for n in grp.nodes if n.out in outside or n.out in grp.exported
                       or n.out in self.ring or not self._fused([n])}

    @staticmethod
    def _fused(seg) -> bool:
        return seg[0].op in ELEMENTWISE or seg[0].op == "slice"

    def inrun(self, a: Arg, n: Node) -> bool:
        """``a`` is a value of n's own run, held in a scalar."""
        return (a.kind == "node" and not a.delay and a.name in self.names
                and self.run[a.name] == self.run[n.out])

    # -------------------------------------------------------------- names
    def arr(self, name) -> str:
        """The (T, B, w) array of a stored value or an outside one."""
        return f"V{self.idx[name]}" if name in self.names else f"E{self.ext[name]}"

    def local(self, a: Arg) -> str:
        """The (B, w) array local holding a value at step t (or t - delay)."""
        if a.name in self.names and not a.delay:
            return f"v{self.idx[a.name]}"
        tag = self.tag(a.name)
        return f"r{tag}" if not a.delay else f"r{tag}_{a.delay}"

    def dst(self, a: Arg) -> str | None:
        """The (B, w) array a cotangent of ``a`` at step t accumulates into."""
        if a.kind == "node" and a.name in self.names and not a.delay:
            return f"g{self.idx[a.name]}"
        if a.kind != "node":
            return None  # data and literals need none; parameters are handled apart
        tag = self.tag(a.name)
        return f"c{tag}" if not a.delay else f"c{tag}_{a.delay}"

    def literal(self, value: float) -> str:
        """A module constant (Numba freezes globals; a call per use costs compile time)."""
        return self.lits.setdefault(value, f"L{len(self.lits)}")

    def p(self, name) -> str:
        return f"P{self.params[name]}"

    def at(self, a: Arg, width: int) -> str:
        """Scalar expression of operand ``a`` at (b, j) in a loop over ``width``."""
        if a.kind == "lit":
            return self.literal(a.value)
        if a.kind == "param":
            shape = self.step.params[a.name]
            ix = "[()]" if not shape else ("[0]" if shape[0] == 1 else "[j]")
            return self.p(a.name) + ix
        w = self.step.widths[a.name]
        return self.local(a) + ("[b, 0]" if w == 1 and width != 1 else "[b, j]")

    # -------------------------------------------------------------- forward
    def forward(self) -> str:
        grp = self.grp
        # rows R0..R1-1 of the batch (NB rows): rows never meet in a step, so the plan
        # may run parts of the batch on threads of their own (Plan.parts)
        # BLOCK: the most multiply-adds of one BLAS call (Plan.block_for)
        lines = [f"{JIT}",
                 f"def forward(T0, T1, NB, OFF, R0, R1, BLOCK, {', '.join(self.fwd_sig())}):"]
        body = ["B = R1 - R0"]
        for n in grp.nodes:
            if n.out in self.array and n.out not in grp.stored:
                body.append(f"S{self.idx[n.out]} = np.empty((B, {n.width}), _F)")
        body.append("for t in range(T0, T1):")
        loop = self.reads(rows="[R0:R1]")
        for seg in self.segments:
            for n in seg:
                i = self.idx[n.out]
                if n.out in self.array:
                    loop.append(f"v{i} = V{i}[t][R0:R1]" if n.out in grp.stored
                                else f"v{i} = S{i}")
            loop += self.fwd_run(seg) if self._fused(seg) else self.fwd_node(seg[0])
        body += _indent(loop)
        return "\n".join(lines + _indent(body)) + "\n"

    def fwd_run(self, seg: list[Node]) -> list[str]:
        """One loop over (b, j) computing a run of elementwise nodes in scalars."""
        w = seg[0].width
        out = ["for b in range(B):", f"    for j in range({w}):"]
        for n in seg:
            i = self.idx[n.out]
            if n.op == "slice":
                a = n.args[0]
                start = n.kw["index"][1][0] or 0
                expr = f"{self.local(a)}[b, j + {start}]"
            else:
                args = [f"x{self.idx[a.name]}" if self.inrun(a, n) else self.at(a, w)
                        for a in n.args]
                expr = FORWARD[n.op].format(*args, p=repr(n.kw.get("p")))
            out.append(f"        x{i} = {expr}")
            if n.out in self.array:
                out.append(f"        v{i}[b, j] = x{i}")
        return out

    def tag(self, name) -> str:
        """How generated names refer to a value: its index in the loop, or e + its index
        among the outside values."""
        return f"{self.idx[name]}" if name in self.names else f"e{self.ext[name]}"

    def value_roles(self, backward: bool = False) -> list[tuple]:
        """(argument name, (role, value name)) of the arrays a loop reads: the backward
        reads only the outside values a backward rule needs (so the caller may free the
        others, as an LSTM's input projection, before the backward pass)."""
        roles = [(f"V{self.idx[n.out]}", ("val", n.out)) for n in self.grp.nodes
                 if n.out in self.grp.stored]
        roles += [(f"E{k}", ("ext", name)) for name, k in self.ext.items()
                  if not backward or name in self.bwd_ext]
        roles += [(f"I_{self.tag(name)}", ("init", name))
                  for name in sorted({nm for nm, _ in self.delayed})]
        # the forward reads a matrix transposed, (in, out): a @ W^T as a plain GEMM, which
        # OpenBLAS runs 1.1-2.6x faster on a step's few rows (engine.blas has the numbers)
        return roles + [(f"P{k}", ("param" if backward or len(self.step.params[name]) < 2
                                   else "paramT", name)) for name, k in self.params.items()]

    def reads(self, backward: bool = False, rows: str = "") -> list[str]:
        """The per-step locals of outside values read now, and of delayed values (``rows``
        of them: "[R0:R1]" or all)."""
        out = [f"re{k} = E{k}[{self.now(name)}]{rows}" for name, k in self.ext.items()
               if self.read_now(name) and (not backward or name in self.bwd_ext)]
        for name, d in sorted(self.delayed):
            if backward and name in self.ext and name not in self.bwd_ext:
                continue
            out.append(f"{self.local(Arg('node', name, d))} = {self.arr(name)}[t - {d}]{rows} "
                       f"if t >= {d} else I_{self.tag(name)}{rows}")
        return out

    def now(self, name) -> str:
        """The index of step t in an outside value's array: a value the plan computes a
        window of steps at a time holds steps OFF.. only."""
        return "t - OFF" if name in self.windowed else "t"

    def read_now(self, name) -> bool:
        return any(a.name == name and not a.delay for n in self.grp.nodes for a in n.args)

    def fwd_sig(self) -> list[str]:
        roles = self.value_roles()
        self.grp.fwd_args = [r for _, r in roles]
        return [a for a, _ in roles]

    def fwd_node(self, n: Node) -> list[str]:
        i, w = self.idx[n.out], n.width
        o = f"v{i}"
        if n.op == "matvec":
            W, x = n.args
            xs = self.local(x)
            return [f"_mm({xs}, {self.p(W.name)}, {o}, False, ZERO, BLOCK)"]  # P: W^T
        src = self.local(n.args[0])
        if n.op in ("sum", "mean"):
            wi = self.step.widths[n.args[0].name]
            div = f" / _F({wi})" if n.op == "mean" else ""
            return ["for b in range(B):", "    s = ZERO", f"    for j in range({wi}):",
                    f"        s += {src}[b, j]", f"    {o}[b, 0] = s{div}"]
        if n.op == "softmax":
            return ["for b in range(B):", f"    m = {src}[b, 0]",
                    f"    for j in range({w}):", f"        m = max(m, {src}[b, j])",
                    "    s = ZERO", f"    for j in range({w}):",
                    f"        e = _exp({src}[b, j] - m)", f"        {o}[b, j] = e",
                    "        s += e", f"    for j in range({w}):", f"        {o}[b, j] /= s"]
        if n.op == "concat":
            out, off = [], 0
            for a in n.args:
                wa = self.step.widths[a.name]
                out += ["for b in range(B):", f"    for j in range({wa}):",
                        f"        {o}[b, j + {off}] = {self.local(a)}[b, j]"]
                off += wa
            return out
        if n.op == "layernorm":
            return ["for b in range(B):", *self.moments(src, w),
                    f"    for j in range({w}):", f"        {o}[b, j] = ({src}[b, j] - m) * inv"]
        raise Unsupported(n.op)

    def moments(self, src: str, w: int) -> list[str]:
        """Inside a loop over b: the mean ``m`` of row b of ``src`` and ``inv``, one over
        its standard deviation (biased variance + eps, as torch's LayerNorm)."""
        eps = self.literal(float(self.EPS))
        return ["    m = ZERO", f"    for j in range({w}):", f"        m += {src}[b, j]",
                f"    m = m / _F({w})", "    v = ZERO", f"    for j in range({w}):",
                f"        d = {src}[b, j] - m", "        v += d * d",
                f"    inv = ONE / np.sqrt(v / _F({w}) + {eps})"]

    # -------------------------------------------------------------- backward
    def bwd_sig(self) -> list[str]:
        grp = self.grp
        roles = self.value_roles(backward=True)
        roles += [(f"SEED{self.idx[n.out]}", ("seed", n.out)) for n in grp.nodes
                  if n.out in grp.exported]
        roles += [(f"EG{k}", ("adj", name)) for name, k in self.ext.items()
                  if self._ext_kind(name) == "node"]
        roles += [(f"GI_{self.tag(name)}", ("ginit", name))
                  for name in sorted({nm for nm, _ in self.delayed})
                  if self._ext_kind(name) == "node"]
        roles += [(f"GP{k}", ("gparam", name)) for name, k in self.params.items()]
        roles += [(f"GMV{self.idx[n.out]}", ("gmv", n.out)) for n in grp.nodes
                  if n.op == "matvec"]
        roles += [(f"XR{self.idx[n.out]}", ("xr", n.out)) for n in grp.nodes
                  if n.op == "matvec"]
        roles += [(f"NORM{self.idx[n.out]}", ("norm", n.out)) for n in grp.nodes
                  if n.out in self.step.states]
        # the cotangents sent to earlier steps: they outlive a call over a window
        roles += [(f"C{self.idx[name]}", ("ring", name)) for name in self.ring]
        roles += [(f"KEEP{self.idx[n.out]}", ("keep", n.out)) for n in grp.nodes
                  if n.out in self.step.states]
        grp.bwd_args = [r for _, r in roles]
        return [a for a, _ in roles]

    def _ext_kind(self, name) -> str:
        return "input" if name in self.step.inputs else "node"

    def backward(self) -> str:
        step, grp = self.step, self.grp
        sig = ["T", "T0", "T1", "NB", "K", "KEEP_ADJ", "CH", "OFF", "R0", "R1",
               "BLOCK"] + self.bwd_sig()
        lines = [JIT, f"def backward({', '.join(sig)}):"]
        # rows R0..R1-1 of the batch, as the forward; what rows share (the parameters'
        # cotangents GP, the squared norms NORM) and what a part carries from step to
        # step (the rings C, GMV, XR) are the caller's, one per part
        body = ["B = R1 - R0"]
        for n in grp.nodes:
            i = self.idx[n.out]
            if n.op != "matvec" and n.out in self.garray:
                body.append(f"g{i} = np.empty((B, {n.width}), _F)")
            if n.out in step.states and n.op in ELEMENTWISE | {"slice"}:
                body.append(f"N{i} = np.zeros({n.width})")  # its norm's partial sums
        for name in self.ring:
            body.append(f"J{self.idx[name]} = np.empty((B, {step.widths[name]}), _F)")
        for name, k in self.ext.items():
            if self._ext_kind(name) == "node" and any(
                    d for nm, d in self.delayed if nm == name):
                body.append(f"Je{k} = np.empty((B, {step.widths[name]}), _F)")
        body.append("for t in range(T1 - 1, T0 - 1, -1):")
        loop = ["kt = t if KEEP_ADJ else 0"] + self.reads(True, "[R0:R1]")  # KEEP: (1, B, w)
        # where the cotangents of outside values read now and of delayed values go
        loop += [f"ce{k} = EG{k}[{self.now(name)}][R0:R1]" for name, k in self.ext.items()
                 if self.read_now(name) and self._ext_kind(name) == "node"]
        for name, d in sorted(self.delayed):
            tag = self.tag(name)
            if name in self.names or self._ext_kind(name) == "node":
                into = (f"C{tag}[(t - {d}) % {self.ring[name]}]" if name in self.names
                        else f"EG{self.ext[name]}[t - {d}][R0:R1]")
                loop += [f"if t < {d}:", f"    c{tag}_{d} = GI_{tag}[R0:R1]",
                         f"elif K > 0 and (t - {d}) // K != t // K:",
                         f"    c{tag}_{d} = J{tag}", "else:", f"    c{tag}_{d} = {into}"]
        # the values backward rules read are all stored (see _plan_storage)
        for n in grp.nodes:
            i = self.idx[n.out]
            if n.out in grp.stored:
                loop.append(f"v{i} = V{i}[t][R0:R1]")
        for n in grp.nodes:
            i = self.idx[n.out]
            if n.op == "matvec":
                loop.append(f"g{i} = GMV{i}[t % CH]")
            if n.out not in self.garray:
                continue
            parts = []
            if n.out in grp.exported:
                parts.append(f"SEED{i}[t, R0 + b, j]")
            if n.out in self.ring:
                parts.append(f"C{i}[t % {self.ring[n.out]}, b, j]")
            loop += ["for b in range(B):", f"    for j in range({n.width}):",
                     f"        g{i}[b, j] = " + (" + ".join(parts) if parts else "ZERO")]
            if n.out in self.ring:
                loop.append(f"C{i}[t % {self.ring[n.out]}] = ZERO")
        for seg in reversed(self.segments):
            if self._fused(seg):
                loop += self.bwd_run(seg)
                continue
            n = seg[0]
            i = self.idx[n.out]
            if n.out in step.states:
                loop += ["s = 0.0", "for b in range(B):", f"    for j in range({n.width}):",
                         f"        s += g{i}[b, j] * g{i}[b, j]",
                         f"NORM{i}[t] = s", "if KEEP_ADJ:",
                         *_indent(_loop2(n.width, [f"KEEP{i}[t, R0 + b, j] = g{i}[b, j]"]))]
            if n.out in self.live:
                loop += self.bwd_node(n)
        for n in grp.nodes:
            if n.op == "matvec" and n.out in self.live:
                loop += self.weight_grad(n)
        body += _indent(loop)
        return "\n".join(lines + _indent(body)) + "\n"

    def weight_grad(self, n: Node) -> list[str]:
        """The weight's cotangent, sum over t of g_t^T x_(t-d): the g of CH steps are
        kept (a ring, GMV) with the rows of x they meet (XR: x at t - d, or the initial
        value before t = d) and go into one GEMM when the chunk is complete, as all T of
        them did once, without holding all T."""
        i, (W, x) = self.idx[n.out], n.args
        G, X, P, d = f"GMV{i}", f"XR{i}", f"GP{self.params[W.name]}", x.delay
        # copied element by element: Numba compiles an array assignment's shape-error
        # message with it, 3-5 s of string code on a new cell's first call
        w = self.step.widths[x.name]
        now = _loop2(w, [f"{X}[t % CH, b, j] = {self.arr(x.name)}[t - {d}, R0 + b, j]"])
        fill = now if not d else [
            f"if t >= {d}:", *_indent(now), "else:",
            *_indent(_loop2(w, [f"{X}[t % CH, b, j] = I_{self.tag(x.name)}[R0 + b, j]"]))]
        return fill + [f"if t % CH == 0:  # steps t .. t + n - 1 are done: {P} += their g^T x",
                       f"    _mtm({G}, 0, {X}, 0, min(CH, T - t) * B, {P})"]

    def bwd_run(self, seg: list[Node]) -> list[str]:
        """Reverse mode of a run in one loop over (b, j): adjoints in scalars ``a{i}``."""
        w = seg[0].width
        states = [n for n in seg if n.out in self.step.states]
        # a norm sums over (b, j); summed per j first, the loop stays a vector loop
        out = [f"N{self.idx[n.out]}[:] = 0.0" for n in states]
        out += ["for b in range(B):", f"    for j in range({w}):"]
        for n in seg:
            i = self.idx[n.out]
            out.append(f"        a{i} = g{i}[b, j]" if n.out in self.garray
                       else f"        a{i} = ZERO")
        for n in reversed(seg):
            i = self.idx[n.out]
            if n in states:
                out += [f"        N{i}[j] += a{i} * a{i}", f"        KEEP{i}[kt, R0 + b, j] = a{i}"]
            if n.out not in self.live:  # its adjoint is 0: 0 * an infinite slope is no NaN
                continue
            if n.op == "slice":
                a = n.args[0]
                start = n.kw["index"][1][0] or 0
                lines = self.add_into(a, f"a{i}", f"j + {start}", self.step.widths[a.name])
                out += _indent(lines, 2)
                continue
            args = [self.at(a, w) for a in n.args]
            for k, a in enumerate(n.args):
                if a.kind == "lit" or (a.kind != "param" and self.dst(a) is None):
                    continue
                expr = BACKWARD[n.op][k].format(*args, g=f"a{i}", y=f"v{i}[b, j]",
                                                     p=repr(n.kw.get("p")))
                if self.inrun(a, n):
                    out.append(f"        a{self.idx[a.name]} += {expr}")
                else:
                    out += _indent(self.add_into(a, expr, "j", w), 2)
        for n in states:  # (a loop: Numba's sum() is compiled anew for each new cell)
            i = self.idx[n.out]
            out += ["s = 0.0", f"for j in range({w}):", f"    s += N{i}[j]", f"NORM{i}[t] = s"]
        return out

    def add_into(self, a: Arg, expr: str, col: str, w_out: int) -> list[str]:
        """Accumulate ``expr`` (at b, j) into the cotangent of operand ``a``."""
        if a.kind == "param":
            shape = self.step.params[a.name]
            ix = "[()]" if not shape else ("[0]" if shape[0] == 1 else f"[{col}]")
            return [f"GP{self.params[a.name]}{ix} += {expr}"]
        d = self.dst(a)
        if d is None:
            return []
        wa = self.step.widths[a.name]
        c = "0" if wa == 1 and w_out != 1 else col
        return [f"{d}[b, {c}] += {expr}"]

    def bwd_node(self, n: Node) -> list[str]:
        i, w = self.idx[n.out], n.width
        g = f"g{i}"
        if n.op == "matvec":
            W, x = n.args
            if self.dst(x) is None:
                return []
            return [f"_mm({g}, {self.p(W.name)}, {self.dst(x)}, False, ONE, BLOCK)"]
        a = n.args[0]
        if n.op in ("sum", "mean"):
            wi = self.step.widths[a.name]
            div = f" / _F({wi})" if n.op == "mean" else ""
            return _loop2(wi, self.add_into(a, f"{g}[b, 0]{div}", "j", wi))
        if n.op == "softmax":
            add = self.add_into(a, f"v{i}[b, j] * ({g}[b, j] - s)", "j", w)
            if not add:
                return []
            return ["for b in range(B):", "    s = ZERO", f"    for j in range({w}):",
                    f"        s += {g}[b, j] * v{i}[b, j]", f"    for j in range({w}):",
                    *_indent(add, 2)]
        if n.op == "concat":
            out, off = [], 0
            for a in n.args:
                wa = self.step.widths[a.name]
                out += _loop2(wa, self.add_into(a, f"{g}[b, j + {off}]", "j", wa))
                off += wa
            return out
        if n.op == "layernorm":  # (g - mean(g) - y mean(g y)) / sigma
            add = self.add_into(a, f"({g}[b, j] - gm - v{i}[b, j] * gy) * inv", "j", w)
            if not add:
                return []
            return ["for b in range(B):", *self.moments(self.local(a), w),
                    "    gm = ZERO", "    gy = ZERO", f"    for j in range({w}):",
                    f"        gm += {g}[b, j]", f"        gy += {g}[b, j] * v{i}[b, j]",
                    f"    gm = gm / _F({w})", f"    gy = gy / _F({w})",
                    f"    for j in range({w}):", *_indent(add, 2)]
        raise Unsupported(n.op)


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    """``lines`` indented ``depth`` levels (of four spaces) deeper."""
    return ["    " * depth + ln for ln in lines]


def _loop2(width: int, body: list[str]) -> list[str]:
    """``body`` in a loop over (b, j < width); nothing when the body is empty."""
    if not body:
        return []
    return ["for b in range(B):", f"    for j in range({width}):",
            *_indent(body, 2)]


# ------------------------------------------------------------------ the plan
class Plan:
    """A cell's step compiled into sweeps and loops, for one dtype; runs any T and B.

    >>> import numpy as np, rnn
    >>> from rnn.program.loop import Plan
    >>> plan = Plan(rnn.cells.elman(2, 3), "float64")
    >>> [type(g).__name__ for g in plan.groups]
    ['Sweep', 'Sweep', 'Loop']
    """

    def __init__(self, cell, dtype: str, masked: bool = False):
        self.cell, self.dtype = cell, np.dtype(dtype)
        self.step = step = step_of(cell, masked)
        self.groups = groups_of(step)
        _plan_storage(step, self.groups)
        self.inplace = _donors(step, self.groups)
        self.max_weight = max((int(np.prod(step.params[n.args[0].name])) for n in step.nodes
                               if n.op == "matvec"), default=0)
        self.needed = _needed(step, self.groups)
        emit = {k: _Emit(step, g) for k, g in enumerate(self.groups) if isinstance(g, Loop)}
        self.live = live = _live(step)
        for em in emit.values():
            self.needed |= em.bwd_ext
            em.live = live
        self.feeders = _feeders(step, self.groups, self.needed)
        self._layouts: dict = {}
        symbol = blas.gemm_symbol(self.dtype)
        self.block = blas.block_limit(self.dtype) if symbol else 0  # the GEMMs' tiles
        head = PRELUDE.format(dtype=self.dtype.name, kernels_hash=_KERNELS_HASH) + (
            GEMM_BLAS if symbol else GEMM_NUMPY)
        for k, em in emit.items():
            grp = em.grp
            em.windowed = {n.out for n in self.feeders.get(k, ())} & set(em.ext)
            grp.rings = {name: (R, step.widths[name]) for name, R in em.ring.items()}
            fwd, bwd = em.forward(), em.backward()
            consts = "".join(f"{c} = _F({v!r})\n" for v, c in em.lits.items())
            grp.src = head + consts + "\n\n" + fwd + "\n\n" + bwd
            mod = cache.load(grp.src, "loop")
            grp.flops = sum(2 * math.prod(step.params[n.args[0].name]) for n in grp.nodes
                            if n.op == "matvec")
            grp.width = sum(n.width for n in grp.nodes)
            vec = {n.out: n.args[1].name for n in grp.nodes if n.op == "matvec"}
            grp.own = [(role, name, step.widths.get(vec[name] if role == "xr" else name))
                       for role, name in grp.bwd_args
                       if role in ("gparam", "norm", "gmv", "xr", "ring")]
            grp.shared = [(role, name, step.widths.get(name)) for role, name in grp.bwd_args
                          if role in ("seed", "adj", "ginit", "keep")]
            grp.forward, grp.backward = mod.forward, mod.backward
        loops = [g for g in self.groups if isinstance(g, Loop)]  # (biggest GEMM, width)
        self._loop_sizes = (max((g.flops for g in loops), default=0),
                            sum(g.width for g in loops))

    def summary(self) -> str:
        """The plan, a line per group: sweeps over all T, and each loop's nodes."""
        return self.source(code=False)

    def source(self, code: bool = True) -> str:
        """The plan as text: each sweep as one line, each loop as its generated code."""
        out = []
        for grp in self.groups:
            if isinstance(grp, Sweep):
                n = grp.node
                args = ", ".join(_fmt_arg(a) for a in n.args)
                out.append(f"sweep  {n.out}[T,B,{n.width}] = {n.op}({args})  over all T")
                continue
            steps = "; ".join(f"{n.out} = {n.op}({', '.join(_fmt_arg(a) for a in n.args)})"
                              for n in grp.nodes)
            out.append(f"loop   t = 0..T-1: {steps}")
            if code:
                out.append(grp.src.split("ZERO = _F(0.0)\n", 1)[1].strip() + "\n")
        return "\n".join(out)

    # -------------------------------------------------------------- running
    def forward(self, xs: dict, params: dict, init: dict) -> dict:
        """Values (T, B, w) of every sweep node and every stored loop node.

        ``xs``: each input (and "mask") as (T, B, w); ``init``: the (B, w) initial value
        of each state (and delayed input)."""
        T, B = next(iter(xs.values())).shape[:2]
        with self.blas_threads(T, B):
            return self._forward(xs, params, init)

    def _forward(self, xs, params, init):
        T, B = next(iter(xs.values())).shape[:2]
        vals = dict(xs)
        windows, deferred, _ = self.layout(T, B)
        params, init = self._checked(params), self._checked(init)
        for k, grp in enumerate(self.groups):
            if isinstance(grp, Sweep):
                if grp.node.out not in deferred:
                    self._sweep(grp.node, vals, params, init, T, B)
                continue
            for n in grp.nodes:
                if n.out in grp.stored:
                    vals[n.out] = np.empty((T, B, n.width), self.dtype)
            made = {}  # what _args makes for this loop (transposed weights): once per call
            for T0, T1 in windows.get(k, [(0, T)]):
                cur = vals
                if T1 - T0 < T:  # its feeders over steps T0..T1-1 only
                    win = self._window(self.feeders[k], vals, T0, T1)
                    for n in self.feeders[k]:
                        self._sweep(n, win, params, init, T1 - T0, B)
                    cur = ChainMap({n.out: win[n.out] for n in self.feeders[k]}, vals)
                args = self._args(grp.fwd_args, cur, params, init, made)
                with (ctx := _threads.gemm(grp.flops * B)):
                    _threads.run([partial(grp.forward, T0, T1, B, T0, R0, R1,
                                          self.block_for(ctx), *args)
                                  for R0, R1 in _threads.cuts(B)])
        for name in deferred:  # never held for all T: a zero stands in
            vals[name] = np.broadcast_to(np.zeros((), self.dtype),
                                         (T, B, self.step.widths[name]))
        return vals

    def _sweep(self, n, vals, params, init, T, B):
        """Sweep node ``n`` over T steps of ``vals``, into ``vals[n.out]``."""
        args = [self._operand(a, vals, params, init, T, B) for a in n.args]
        op, kw = OPS[n.op], n.kw
        if n.out in self.inplace:  # write over an operand nobody reads again
            y = INPLACE[n.op](*args, out=args[0])
        elif n.op == "matvec":  # x @ W^T
            with _threads.gemm(_flops(n, T * B, params)):
                y = _threads.matmul(args[1], args[0].T)
        else:
            y = op.forward(*args, **kw)
        if y.shape != (T * B, n.width):  # a value of parameters alone
            y = np.broadcast_to(y, (T * B, n.width))
        # C order: a loop reading a strided view (a slice's) does not vectorize
        vals[n.out] = np.ascontiguousarray(y).reshape(T, B, n.width)

    # ---- windows: a loop's feeders over a window of steps at a time
    def layout(self, T: int, B: int) -> tuple:
        """(windows, deferred, CH) of a run over (T, B): _windows, what they defer, the
        steps of a weight-gradient chunk; kept for the last few shapes."""
        key = (T, B)
        out = self._layouts.get(key)
        if out is None:
            if len(self._layouts) >= 8:
                self._layouts.clear()
            windows = self._windows(T, B)
            out = self._layouts[key] = (windows, self.deferred(windows), _chunk(T, B))
        return out

    def _windows(self, T: int, B: int) -> dict:
        """{loop index: [(T0, T1), ...]} for the loops whose feeders would hold more
        than WINDOW_MIN bytes over all T: windows of about WINDOW bytes of them, whole
        chunks of the weight-gradient ring each (_chunk). Others: one window, all T."""
        out = {}
        for k, feed in self.feeders.items():
            per_step = B * self.dtype.itemsize * sum(n.width for n in feed)
            if T * per_step <= WINDOW_MIN:
                continue
            CH = _chunk(T, B)
            W = max(CH, WINDOW // per_step // CH * CH)
            if W < T:
                out[k] = [(t, min(t + W, T)) for t in range(0, T, W)]
        return out

    def deferred(self, windows: dict) -> set:
        """The sweeps computed a window at a time, inside their loop's turn."""
        return {n.out for k in windows for n in self.feeders[k]}

    @staticmethod
    def _window(feed, vals, T0, T1) -> dict:
        """Views of steps T0..T1-1 of what ``feed`` reads from outside itself."""
        mine = {n.out for n in feed}
        return {a.name: vals[a.name][T0:T1] for n in feed for a in n.args
                if a.kind in ("node", "input") and a.name not in mine}

    def _operand(self, a: Arg, vals, params, init, T, B):
        """An operand of a sweep over all T, as (T*B, w) (or a parameter / literal)."""
        if a.kind == "param":
            return params[a.name]
        if a.kind == "lit":
            return np.asarray(a.value, self.dtype)
        v = vals[a.name]
        if a.delay:
            v = _shift(v, init[a.name], a.delay)
        return v.reshape(T * B, -1)

    def _checked(self, arrays: dict) -> dict:
        """``arrays`` (parameters, initial values) as the loops take them: C-ordered, in
        the plan's dtype (gradcheck may hand in a scalar or a view)."""
        dt = self.dtype
        if all(type(a) is np.ndarray and a.dtype == dt and a.flags.c_contiguous
               for a in arrays.values()):
            return arrays
        return {k: np.require(a, dt, "C") for k, a in arrays.items()}

    def _args(self, roles, vals, params, init, extra):
        """The arrays a loop takes, by role: values, initial values and parameters
        (``_checked``), the rest from ``extra`` ((role, name) -> array)."""
        src = {"val": vals, "ext": vals, "init": init, "param": params}
        out = []
        for role, name in roles:
            d = src.get(role)
            if d is not None:
                out.append(d[name])
            elif role == "paramT" and (role, name) not in extra:  # once per call: a loop's
                # forward over windows reuses it; a fresh copy: a (n, 1) view's strides
                a = extra[(role, name)] = np.array(params[name].T, order="C")  # are odd
                out.append(a)
            else:
                out.append(extra[(role, name)])
        return out

    def backward(self, vals: dict, seeds: dict, params: dict, init: dict, truncate=None,
                 keep_adjoints: bool = False):
        """Reverse mode over all steps. ``seeds``: (T, B, w) cotangents of node values.

        Returns (param grads, initial-value grads, {state: (T,) norms of its adjoint},
        {state: (T, B, w) adjoint} when ``keep_adjoints``)."""
        T, B = next(v for v in vals.values() if v.ndim == 3).shape[:2]
        with self.blas_threads(T, B):
            return self._backward(vals, seeds, params, init, truncate, keep_adjoints)

    def release(self, vals: dict) -> None:
        """Free, in place, the values of ``vals`` the backward pass does not read (an
        LSTM's input projection over all T, ...): each becomes a read-only view of one
        zero with its shape, which is all a backward rule asks of it."""
        for k, v in vals.items():
            if k not in self.needed and v.nbytes >= 1 << 16:  # small ones: not worth it
                vals[k] = np.broadcast_to(np.zeros((), v.dtype), v.shape)

    def blas_threads(self, T: int, B: int):
        """BLAS on one thread while this plan runs over (T, B), bar big GEMMs (_Threads);
        the loops in parts of the batch where that pays (``parts``); nested uses set it
        once."""
        mnk = T * B * self.max_weight
        return _threads.single(mnk, self.parts(T, B) if mnk >= _threads.SERIAL else 1)

    def block_for(self, threads) -> int:
        """The loops' tile limit (engine.blas.tiles) under ``threads`` (_Threads.gemm):
        none where BLAS's threads share a big GEMM (a tile runs on one thread)."""
        return 0 if threads is not _NOTHING else self.block

    def parts(self, T: int, B: int) -> int:
        """How many parts of the batch the loops run in, each on a core of its own with
        BLAS on one thread, start to end with no synchronisation (a batch's rows never
        meet inside a step). Where a step's GEMM is small BLAS's own threads mostly wait
        for each other, and collapse when another process holds a core (small-lstm: 17-39
        ms from run to run on 2 threads); in parts, a busy core slows its own part only.
        Where the loops' GEMMs run in tiles (engine.blas.tiles) a part's products run
        at 95-114 GFLOP/s on one thread, and parts win at any size (medium-lstm, a
        training step: medians of 319-335 ms in two parts, 368-397 without tiles on
        BLAS's threads, 125-150 GFLOP/s for the two together); without tiles,
        a big step's GEMM runs better on BLAS's threads (SPLIT_MAX; medium-lstm: a
        forward 105 ms on 2 threads, 121 in two parts). A small batch or little work:
        one part, BLAS's threads (and no tiles, ``block_for``)."""
        flops, width = self._loop_sizes
        if B < 2 or not width or (flops * B >= _threads.SPLIT_MAX and not self.block) or \
                T * B * width < _threads.SPLIT_MIN:
            return 1
        return _threads.cores()

    def _backward(self, vals, seeds, params, init, truncate, keep_adjoints):
        T, B = next(v for v in vals.values() if v.ndim == 3).shape[:2]
        K = truncate or 0
        params, init = self._checked(params), self._checked(init)
        # the seeds are read where they are, copied only before something adds into one
        adj = {k: np.asarray(v, self.dtype) for k, v in seeds.items()}
        self._borrowed = {id(_base(v)) for v in adj.values()}
        gparams = {p: np.zeros(np.shape(v), self.dtype) for p, v in params.items()}
        ginit = {s: np.zeros((B, self.step.widths[s]), self.dtype) for s in self.step.states
                 if s not in self.step.inputs}
        norms, kept = {}, {}
        step = self.step
        windows, deferred, CH = self.layout(T, B)

        def adj_of(name):
            if name not in adj:
                adj[name] = np.zeros((T, B, step.widths[name]), self.dtype)
            return self._own(adj, name)

        for k in range(len(self.groups) - 1, -1, -1):
            grp = self.groups[k]
            if isinstance(grp, Sweep):
                n = grp.node
                if n.out in deferred:  # done window by window in its loop's turn
                    continue
                g = adj.get(n.out)
                if n.out in step.states:
                    gg = g if g is not None else np.zeros((T, B, n.width), self.dtype)
                    norms[n.out] = np.sqrt(np.einsum("tbj,tbj->t", gg, gg))
                    if keep_adjoints:
                        kept[n.out] = gg.copy()  # adjoints are passed on and added to
                if g is None or n.out not in self.live:  # (a zero adjoint: nothing to send)
                    continue
                self._sweep_backward(n, g, vals, params, init, gparams, ginit, adj, K, T, B)
                continue
            extra = {}
            for role, name, w in grp.shared:
                if role == "seed":  # what later groups and the loss sent back to this node
                    extra[(role, name)] = adj[name] if name in adj else np.zeros(
                        (T, B, w), self.dtype)
                elif role == "adj":
                    extra[(role, name)] = None if name in deferred else adj_of(name)
                elif role == "ginit":
                    extra[(role, name)] = ginit[name]
                elif role == "keep":
                    extra[(role, name)] = kept[name] = (
                        np.zeros((T, B, w), self.dtype) if keep_adjoints
                        else np.empty((1, B, w), self.dtype))
            cuts = _threads.cuts(B)
            one = gparams if len(cuts) == 1 else None  # one part adds into them itself
            own = [self._part_arrays(grp, params, T, R1 - R0, CH, one) for R0, R1 in cuts]
            for T0, T1 in reversed(windows.get(k, [(0, T)])):
                feed = self.feeders[k] if T1 - T0 < T else ()
                wadj = {n.out: np.zeros((T1 - T0, B, n.width), self.dtype) for n in feed
                        if ("adj", n.out) in extra}
                extra.update({("adj", name): a for name, a in wadj.items()})
                with (ctx := _threads.gemm(grp.flops * B)):
                    _threads.run([partial(grp.backward, T, T0, T1, B, K, keep_adjoints, CH,
                                          T0, R0, R1, self.block_for(ctx),
                                          *self._args(grp.bwd_args, vals, params, init,
                                                      {**extra, **mine}))
                                  for (R0, R1), mine in zip(cuts, own)])
                if feed:
                    self._feeders_backward(feed, wadj, vals, params, init, gparams, ginit,
                                           adj_of, T0, T1, B)
            for role, name, _ in grp.own:  # what the parts hold for the rows they ran
                if role == "gparam" and one is None:
                    gparams[name] += sum(mine[(role, name)] for mine in own)
                elif role == "norm":
                    sq = own[0][(role, name)]
                    for mine in own[1:]:
                        sq += mine[(role, name)]
                    norms[name] = np.sqrt(sq, out=sq)
        if not keep_adjoints:
            kept = {}
        return gparams, ginit, norms, kept

    def _part_arrays(self, grp: Loop, params: dict, T: int, B: int, CH: int,
                     gparams: dict | None) -> dict:
        """What one part of the batch (B rows) of a loop's backward keeps for itself: its
        parameters' cotangents and squared step norms (summed over the parts after), its
        rings (the cotangents sent to later-visited steps, the GMV and XR of a weight's
        cotangent, _Emit.weight_grad). The only part adds into ``gparams`` itself."""
        out = {}
        for role, name, w in grp.own:
            if role == "gparam":
                out[(role, name)] = (gparams[name] if gparams is not None
                                     else np.zeros(np.shape(params[name]), self.dtype))
            elif role == "norm":
                out[(role, name)] = np.zeros(T)
            elif role in ("gmv", "xr"):  # a GEMM's g, and the x it met (its vector's)
                out[(role, name)] = np.empty((CH, B, w), self.dtype)
            elif role == "ring":
                out[(role, name)] = np.zeros((grp.rings[name][0], B, w), self.dtype)
        return out

    def _feeders_backward(self, feed, wadj, vals, params, init, gparams, ginit, adj_of,
                          T0, T1, B):
        """The feeders' reverse mode over steps T0..T1-1: ``wadj`` holds their adjoints
        there; what they send outside goes into steps T0..T1-1 of the full adjoints."""
        win = self._window(feed, vals, T0, T1)
        mine = {n.out for n in feed}
        zero = np.zeros((), self.dtype)  # feeders' values: no backward rule reads them
        win.update({n.out: np.broadcast_to(zero, (T1 - T0, B, n.width)) for n in feed})
        for n in feed:
            for a in n.args:
                if a.kind == "node" and a.name not in mine:
                    wadj[a.name] = adj_of(a.name)[T0:T1]
        for n in reversed(feed):
            if n.out in wadj and n.out in self.live:
                self._sweep_backward(n, wadj[n.out], win, params, init, gparams, ginit,
                                     wadj, 0, T1 - T0, B)

    def _own(self, adj, name):
        """adj[name], copied first if it is (a view of) a seed the caller gave."""
        a = adj[name]
        if id(_base(a)) in self._borrowed or not a.flags.writeable:
            a = adj[name] = np.array(a)
        return a

    def _sweep_backward(self, n, g, vals, params, init, gparams, ginit, adj, K, T, B):
        a = n.args[0]
        if (n.op == "slice" and a.kind == "node" and not a.delay  # (a GRU's gates)
                and not any(isinstance(ix, int) for ix in n.kw["index"])):
            if a.name not in adj:  # into its place in the source's adjoint, not into zeros
                adj[a.name] = np.zeros((T, B, self.step.widths[a.name]), self.dtype)
            view = self._own(adj, a.name).reshape(T * B, -1)[py_index(n.kw["index"])]
            view += g.reshape(T * B, n.width)
            return
        args = [self._operand(a, vals, params, init, T, B) for a in n.args]
        g2 = g.reshape(T * B, n.width)
        if n.op == "matvec":  # no cotangent for data
            W, x = n.args
            with _threads.gemm(_flops(n, T * B, params)):
                gparams[W.name] += _weight_grad(g, vals[x.name], init.get(x.name), x.delay)
                cts = [None, None if x.kind != "node" else _threads.matmul(g2, params[W.name])]
        else:
            y = vals[n.out].reshape(T * B, n.width)
            if len(args) == 1 and np.ndim(args[0]) < 2:  # softplus(b): of a parameter, its
                args = [np.ascontiguousarray(np.broadcast_to(args[0], g2.shape))]  # rows
            cts = OPS[n.op].vjp(g2, y, *args, **n.kw)
        handed = set()  # arrays given to an adjoint as they are (not copied)
        for a, arr, c in zip(n.args, args, cts):
            if c is None or a.kind in ("lit", "input"):
                continue
            if a.kind == "param":
                gparams[a.name] += unbroadcast(c, np.shape(params[a.name]))
                continue
            c = unbroadcast(c, arr.shape).reshape(T, B, -1)
            d = a.delay
            if d and a.name in ginit:
                ginit[a.name] += c[:d].sum(axis=0)
            if d >= T:
                continue
            c = c[d:] if d else c
            if d and K and a.name in self.step.blend:  # truncation: cut reads across a boundary
                t = np.arange(d, T)
                c = c * ((t - d) // K == t // K)[:, None, None]
            base = _base(c)
            if (not d and a.name not in adj and id(base) not in handed and c.flags.writeable
                    and c.flags.c_contiguous and c.dtype == self.dtype):
                adj[a.name] = c  # n's adjoint is used up: pass it on without a copy
                handed.add(id(base))
                continue
            if a.name not in adj:
                adj[a.name] = np.zeros((T, B, self.step.widths[a.name]), self.dtype)
            self._own(adj, a.name)[:T - d] += c


class _Threads:
    """Threads while a plan runs. Where the loops run in parts of the batch (``parts``,
    Plan.parts), those are ours (``run``) and BLAS stays on one thread. Otherwise every
    GEMM runs on one thread unless it is big (``BIG`` FLOPs in one call): then it gets
    the cores no other process is running on.
    Threads that wait for each other on small GEMMs only spin, and when another process
    holds one of their cores they collapse (10-40x slower here, as torch's do). That
    covers the per-step GEMMs inside the loops and the hoisted ones (numpy's BLAS, and
    scipy's where a loop falls back to np.dot). The settings are restored after each
    call.

    Where no GEMM of a call reaches ``SERIAL`` multiply-adds (m n k), BLAS libraries run
    it on one thread anyway (OpenBLAS's threshold): the settings are left alone, which
    saves a tiny model a tenth of its time."""

    BIG = 2e6  # small-lstm's 4.2 MFLOP per step: 0.81x time on 2 threads, the MGU's 1.6: 0.97x
    SERIAL = 65536 * 4
    SPLIT_MAX = 2 ** 24  # without tiles, medium-lstm's 134 MFLOP: 2 threads 105 ms, parts 121
    # handing calls to the threads (``run``) costs about 50 us here: below these a part's
    # saving (half of ~1 ns an element, of a GEMM at ~60 GFLOP/s) is not worth it
    SPLIT_MIN = 200_000  # elements a loop computes in a call
    PART_MNK = 4_000_000  # multiply-adds of a sweep's GEMM
    FRESH = 0.05  # seconds a reading of the free cores is used for

    def __init__(self):
        self.libs = None
        self.depth = 0  # nested ``single`` calls: only the outermost sets and restores
        self.seen = (-math.inf, 1)  # (when, free cores)
        # UNROLL_BLAS_THREADS=n: big GEMMs on n threads, never by the load (a GEMM's
        # sums, so its last bits, depend on how many threads share it)
        fixed = os.environ.get("UNROLL_BLAS_THREADS", "").strip()
        self.fixed = max(int(fixed), 1) if fixed.isdigit() else None
        self.old = []
        self.pool = None  # threads for parts of a batch (rows), started at first need
        self.split = 1  # parts of the batch the loops run in, inside ``single``

    def _find(self):
        import scipy.linalg.cython_blas  # noqa: F401 - load the BLAS the loops call first
        from threadpoolctl import ThreadpoolController

        self.libs = [lib for lib in ThreadpoolController().lib_controllers
                     if lib.user_api == "blas"]
        self.full = [lib.get_num_threads() for lib in self.libs]

    @staticmethod
    def free_cores() -> int:
        """Cores no other process is running on now. On Linux: the runnable count of
        /proc/loadavg less our own running threads (OpenBLAS's spin after a call);
        elsewhere from the load average. (Linux's load average counts more than runnable
        processes: here it sat at 1.0 on an idle machine.)"""
        n = os.cpu_count() or 1
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
            for tid in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{tid}/stat") as f:
                    running -= f.read().rsplit(")", 1)[1].split()[0] == "R"
            return max(n - running, 1)
        except (OSError, ValueError, IndexError):
            pass
        try:
            return max(n - round(os.getloadavg()[0]), 1)
        except OSError:  # no load average on this system
            return n

    def _set(self, counts):
        for lib, n in zip(self.libs, counts):
            lib.set_num_threads(n)

    def single(self, mnk: float = math.inf, parts: int = 1):
        """One thread for every BLAS call inside (``mnk``: the biggest GEMM's m n k);
        the loops run in ``parts`` parts of the batch (``cuts``)."""
        return _Single(self, parts) if mnk >= self.SERIAL else _NOTHING

    def gemm(self, flops: float):
        """Inside ``single``: the free cores for one big GEMM, unless the loops run in
        parts of the batch: those threads are ours, and BLAS's would only spin beside
        them (OpenBLAS's wait after a call), so every GEMM stays on one thread."""
        if flops < self.BIG or self.depth == 0 or self.split > 1:
            return _NOTHING
        free = self.cores()
        return _NOTHING if free < 2 else _Full(self, free)

    def cores(self) -> int:
        """The cores to use: UNROLL_BLAS_THREADS when set (the same threads whatever the
        load: the same bits), else the free ones."""
        if self.fixed is not None:
            return self.fixed
        now = time.monotonic()
        if now - self.seen[0] > self.FRESH:  # a reading costs ~0.1 ms: reuse it a while
            self.seen = (now, self.free_cores())
        return self.seen[1]

    def cuts(self, B: int) -> list[tuple[int, int]]:
        """The rows (R0, R1) of each part of a batch of B the loops run in."""
        n = min(self.split, B) if self.depth else 1
        return [(B * k // n, B * (k + 1) // n) for k in range(n)]

    def _gemm_cuts(self, a, b) -> list[tuple[int, int]]:
        """Parts of the rows of ``a`` for a product with ``b`` (one if it is small)."""
        n = a.shape[0]
        return self.cuts(n) if n * a.shape[1] * b.shape[-1] >= self.PART_MNK else [(0, n)]

    def matmul(self, a, b):
        """a @ b, a part of a's rows on each thread where the loops run in parts (a
        sweep's GEMM over all T: BLAS stays on one thread then, see ``gemm``)."""
        cuts = self._gemm_cuts(a, b)
        if len(cuts) == 1:  # (numpy's matmul runs an inner size of 1 in a plain loop, at
            return np.dot(a, b) if a.shape[1] == 1 else a @ b  # a fifth of dot's speed)
        out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))
        self.run([partial(np.matmul, a[r0:r1], b, out=out[r0:r1]) for r0, r1 in cuts])
        return out

    def tmatmul(self, a, b):
        """a.T @ b, summed over parts of the rows of a and b, as ``matmul``."""
        cuts = self._gemm_cuts(a, b)
        if len(cuts) == 1:
            return a.T @ b
        out = [None] * len(cuts)

        def part(k, r0, r1):
            out[k] = a[r0:r1].T @ b[r0:r1]
        self.run([partial(part, k, r0, r1) for k, (r0, r1) in enumerate(cuts)])
        return sum(out)

    def run(self, calls: list) -> None:
        """Each call on a thread of its own (the first on this one); returns when all are
        done, raising the first error."""
        if len(calls) == 1:
            calls[0]()
            return
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) - 1), "unroll-rows")
        futures = [self.pool.submit(c) for c in calls[1:]]
        try:
            calls[0]()
        finally:
            for f in futures:
                f.result()


class _Single:
    def __init__(self, th, parts: int = 1):
        self.th, self.parts = th, parts

    def __enter__(self):
        th = self.th
        if th.depth == 0:
            if th.libs is None:
                th._find()
            th.old = [lib.get_num_threads() for lib in th.libs]
            th._set([1] * len(th.libs))
            th.split = self.parts
        th.depth += 1

    def __exit__(self, *exc):
        th = self.th
        th.depth -= 1
        if th.depth == 0:
            th._set(th.old)


class _Full(_Single):
    def __init__(self, th, cores):
        super().__init__(th)
        self.cores = cores

    def __enter__(self):
        self.th._set([min(n, self.cores) for n in self.th.full])

    def __exit__(self, *exc):
        self.th._set([1] * len(self.th.libs))


_NOTHING = nullcontext()
_threads = _Threads()


INPLACE = {"add": np.add, "sub": np.subtract, "div": np.divide}
WGRAD_ROWS = 1024  # rows (steps x batch) of a loop's weight-gradient GEMMs
# a loop's feeders (an LSTM's input projection, ...) that would hold more than WINDOW_MIN
# bytes over all T are computed, and their reverse mode run, WINDOW bytes at a time
WINDOW_MIN, WINDOW = 16 << 20, 4 << 20


def _live(step: Step) -> set:
    """The values an output depends on, at any delay: the rest gets no adjoint, as in the
    reference interpreter's reverse mode, which never reaches it."""
    reads = {n.out: [a.name for a in n.args if a.kind == "node"] for n in step.nodes}
    live, todo = set(step.outputs), list(step.outputs)
    while todo:
        for a in reads.get(todo.pop(), ()):
            if a not in live:
                live.add(a)
                todo.append(a)
    return live


def _chunk(T: int, B: int) -> int:
    """Steps per weight-gradient GEMM of a loop's backward (its GMV ring)."""
    return max(1, min(T, -(-WGRAD_ROWS // B)))


def _feeders(step: Step, groups: list, needed: set) -> dict:
    """{loop index: [sweep nodes, in order]}: for each loop, the sweeps only it reads,
    directly or through each other, at no delay, that the backward pass does not read
    and that read nothing with a delay (an LSTM's ``W @ x + b``). Step by step they are
    the loop's business: they can run a window of steps at a time."""
    readers: dict[str, set] = {}
    delayed = set()
    for k, grp in enumerate(groups):
        for n in (grp.nodes if isinstance(grp, Loop) else [grp.node]):
            for a in n.args:
                if a.kind == "node":
                    readers.setdefault(a.name, set()).add(k)
                    if a.delay:
                        delayed.add(a.name)
    keep = needed | set(step.outputs) | set(step.states) | delayed
    out = {}
    for k, grp in enumerate(groups):
        if not isinstance(grp, Loop):
            continue
        mine = {k}
        for j in range(k - 1, -1, -1):
            g = groups[j]
            if (isinstance(g, Sweep) and g.node.out not in keep and g.node.out in readers
                    and readers[g.node.out] <= mine
                    and not any(a.delay for a in g.node.args)):
                mine.add(j)
        if len(mine) > 1:
            out[k] = [groups[j].node for j in sorted(mine - {k})]
    return out


def _needed(step: Step, groups: list) -> set:
    """The values the backward pass reads, the loops' outside ones apart (_Emit.bwd_ext):
    what a loop stores, what a sweep's backward rule reads (every operand of an op with
    no entry in _NEEDS), each GEMM's vector (for the weight's cotangent), the outputs
    and the states (their last values are the final state)."""
    out = set(step.outputs) | set(step.states)
    for grp in groups:
        nodes = [grp.node] if isinstance(grp, Sweep) else grp.nodes
        if isinstance(grp, Loop):
            out |= grp.stored
        for n in nodes:
            idx, y = _NEEDS.get(n.op, (range(len(n.args)), True))
            if isinstance(grp, Sweep) and y:
                out.add(n.out)
            reads = set(idx) | ({1} if n.op == "matvec" else set())
            if isinstance(grp, Loop) and n.op != "matvec":
                continue  # inside a loop: stored (above) or outside (bwd_ext)
            out |= {n.args[i].name for i in reads if n.args[i].kind in ("node", "input")}
    return out


def _donors(step: Step, groups: list) -> set:
    """Sweeps that may compute into their first operand's array: it is another sweep's
    value, read by this node alone, and no backward rule reads either value (as
    ``W @ x + b``: the sum overwrites the product)."""
    uses: dict[str, int] = {}
    for n in step.nodes:
        for a in n.args:
            if a.kind == "node":
                uses[a.name] = uses.get(a.name, 0) + 1 + (a.delay > 0)
    sweeps = {g.node.out: g.node for g in groups if isinstance(g, Sweep)}
    out = set()
    for n in sweeps.values():
        a = n.args[0]
        p = sweeps.get(a.name) if a.kind == "node" and not a.delay else None
        if (n.op in INPLACE and p is not None and p.op in _NEEDS and not _NEEDS[p.op][1]
                and 0 not in _NEEDS[n.op][0] and uses[p.out] == 1 and p.width == n.width
                and p.out not in step.states and p.out not in step.outputs):
            out.add(n.out)
    return out


def _flops(n: Node, rows: int, params) -> float:
    """FLOPs of a sweep's GEMM over ``rows`` vectors (0 for anything else)."""
    return 2.0 * rows * np.size(params[n.args[0].name]) if n.op == "matvec" else 0.0


def _base(a):
    """The array that owns ``a``'s memory."""
    while a.base is not None and isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _shift(v, init, d):
    """Value at t - d for every t: the initial value before t = d."""
    T = v.shape[0]
    head = np.broadcast_to(init, (min(d, T),) + v.shape[1:])
    return np.concatenate([head, v[:T - d]]) if d < T else np.array(head)


def _weight_grad(G, X, init, d):
    """sum_t G_t^T X_{t-d}: one GEMM over all steps (the initial value before t = d)."""
    T, B, m = G.shape
    n = X.shape[-1]
    if not d:
        return _threads.tmatmul(G.reshape(T * B, m), X.reshape(T * B, n))
    out = (G[0] if d == 1 else G[:d].sum(axis=0)).T @ init  # init: (B, n)
    if d < T:
        out += _threads.tmatmul(G[d:].reshape(-1, m), X[:T - d].reshape(-1, n))
    return out


def _fmt_arg(a: Arg) -> str:
    if a.kind == "lit":
        return repr(a.value)
    return a.name + (f"[t-{a.delay}]" if a.delay else "")
