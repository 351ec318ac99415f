"""Fusion for the compiled executor: each step's elementwise region becomes one kernel.

A *region* is a set of elementwise equations of one time step (the gate math of an
LSTM: adds, slices, sigmoids, products) whose outside inputs all exist before its
first equation. For each distinct region shape we generate the source of two Numba
kernels: a forward that computes the region's outputs in one pass over (batch,
column), and a backward that recomputes the region's scalars and runs reverse mode on
them, accumulating into the inputs' gradients (parameters summed over the batch).
Every step of an unrolled program has the same region shape, so one kernel serves all
T steps. Generated sources are written to a cache folder and imported from there, so
Numba's on-disk cache (``cache=True``) keeps the machine code between runs.

Nothing here knows about cells: it sees a Program only.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, replace
from pathlib import Path

from engine import kernels as _kernels
from engine.ir import Lit, Program, Var

from . import cache

FUSABLE = {"add", "sub", "mul", "div", "neg", "pow", "exp", "log", "tanh", "sigmoid", "relu",
           "softplus", "copy", "slice"}
FULL = (None, None, None)


# ------------------------------------------------------------------ scheduling pass
def gemms_first(prog: Program) -> Program:
    """Reorder equations (a stable topological order) so that, among those ready, the
    non-fusable ones (GEMMs) run first: a step's matvecs then precede its gate math,
    which leaves the gate math one contiguous, fusable block."""
    producers = {e.out.name: i for i, e in enumerate(prog.eqns)}
    users: list[list[int]] = [[] for _ in prog.eqns]
    waiting = [0] * len(prog.eqns)
    for i, e in enumerate(prog.eqns):
        deps = {producers[a.name] for a in e.inputs if isinstance(a, Var) and a.name in producers}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    fusable = [_fusable(e) is not None for e in prog.eqns]
    ready = [(fusable[i], i) for i in range(len(prog.eqns)) if not waiting[i]]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(prog.eqns[i])
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u]:
                heapq.heappush(ready, (fusable[u], u))
    return replace(prog, eqns=tuple(order))


def _width(shape) -> int | None:
    if len(shape) == 2 and shape[0] == "B" and isinstance(shape[1], int):
        return shape[1]
    return None


def _kind(a) -> tuple | None:
    """How a region reads an outside operand, or None if it cannot."""
    if isinstance(a, Lit):
        return ("lit",)
    s = a.shape
    if len(s) == 2 and s[0] == "B" and isinstance(s[1], int):
        return ("bcol",) if s[1] == 1 else ("full", s[1])
    if len(s) == 1 and isinstance(s[0], int):
        return ("scalar",) if s[0] == 1 else ("row", s[0])
    if len(s) == 0:
        return ("zerod",)
    return None


def _fusable(e) -> int | None:
    """The output width of a fusable equation, else None."""
    if e.op not in FUSABLE or e.out.step is None or e.out.step < 0:
        return None
    w = _width(e.out.shape)
    if w is None or any(_kind(a) is None for a in e.inputs):
        return None
    if e.op == "slice":
        index = e.kwargs["index"]
        if (len(index) != 2 or index[0] != FULL or isinstance(index[1], int) or index[1][2]
                or (index[1][0] or 0) < 0):
            return None
    return w


# ------------------------------------------------------------------ regions
@dataclass
class Region:
    members: list  # equations, in program order
    inputs: list  # outside Vars/Lits read, in first-use order
    outputs: list  # member Vars stored for use outside
    key: str = ""
    ready: int = -1  # the last program position among the outside values it reads


def find_regions(prog: Program, keep=(), watch=()) -> tuple[list, dict[int, Region]]:
    """Group fusable equations into regions. Returns the plan order: a list whose items
    are either an equation index (run alone) or a Region (run at its first member).

    ``keep``: variables the caller reads after the forward pass (always stored).
    ``watch``: variables whose full adjoint the caller wants; a region ends at them, so
    their adjoints are summed by the executor like any other variable's."""
    watch = set(watch)
    defined_at = {v.name: -1 for v in prog.inputs}
    for i, e in enumerate(prog.eqns):
        defined_at[e.out.name] = i
    region_of: dict[str, Region] = {}
    start: dict[int, int] = {}  # id(region) -> position of its first member: where it runs
    regions: dict[int, Region] = {}

    def ready(members) -> int:
        """The last position among the outside values these members read."""
        names = {m.out.name for m in members}
        return max((defined_at[a.name] for m in members for a in m.inputs
                    if isinstance(a, Var) and (a.name not in names or a.name in watch)),
                   default=-1)

    fusable = [_fusable(e) is not None for e in prog.eqns]
    for i, e in enumerate(prog.eqns):
        if not fusable[i]:
            continue
        near = [region_of[a.name] for a in e.inputs if isinstance(a, Var)
                and a.name in region_of and a.name not in watch
                and region_of[a.name].members[0].out.step == e.out.step]
        near = sorted({id(r): r for r in near}.values(), key=lambda r: start[id(r)])
        joined = None
        for t in near:
            # e joins the target with the regions that can run as early as it ...
            merged = [t] + [r for r in near if r is not t and r.ready < start[id(t)]]
            if len(merged) > 1:
                members = sorted((m for r in merged for m in r.members),
                                 key=lambda m: defined_at[m.out.name]) + [e]
                at = min(start[id(r)] for r in merged)  # the merged region runs here
                last = ready(members)
                if last < at:
                    for r in merged[1:]:
                        del regions[id(r)]
                        for m in r.members:
                            region_of[m.out.name] = t
                    t.members, t.ready, start[id(t)] = members, last, at
                    joined = t
                    break
            # ... or alone: then only e's own outside reads are new
            own = max((defined_at[a.name] for a in e.inputs if isinstance(a, Var)
                       and (region_of.get(a.name) is not t or a.name in watch)), default=-1)
            if max(t.ready, own) < start[id(t)]:
                t.members.append(e)
                t.ready = max(t.ready, own)
                joined = t
                break
        if joined is None:
            joined = Region([e], [], [], ready=ready([e]))
            start[id(joined)] = i
            regions[id(joined)] = joined
        region_of[e.out.name] = joined
    items: list = sorted([i for i in range(len(prog.eqns)) if not fusable[i]]
                         + list(regions.values()),
                         key=lambda x: x if isinstance(x, int) else start[id(x)])
    used_outside: set[str] = set(keep) | watch | {v.name for v in prog.outputs}
    for e in prog.eqns:
        r = region_of.get(e.out.name)
        for a in e.inputs:
            if isinstance(a, Var) and a.name in region_of and region_of[a.name] is not r:
                used_outside.add(a.name)
    for r in regions.values():
        names = {m.out.name for m in r.members}
        seen = set()
        for m in r.members:
            for a in m.inputs:
                if isinstance(a, Var) and a.name not in names and a.name not in seen:
                    seen.add(a.name)
                    r.inputs.append(a)
        r.outputs = [m.out for m in r.members if m.out.name in used_outside]
        r.key = _signature(r)
    return items, regions


def _signature(r: Region) -> str:
    pos = {a.name: k for k, a in enumerate(r.inputs)}
    idx = {m.out.name: k for k, m in enumerate(r.members)}
    rows = []
    for m in r.members:
        args = []
        for a in m.inputs:
            if isinstance(a, Lit):
                args.append(("l", a.value))
            elif a.name in idx:
                args.append(("m", idx[a.name]))
            else:
                args.append(("i", pos[a.name]))
        rows.append((m.op, m.params, tuple(args), _width(m.out.shape)))
    kinds = tuple(_kind(a) for a in r.inputs)
    outs = tuple(idx[o.name] for o in r.outputs)
    dtype = r.members[0].out.dtype
    return repr((tuple(rows), kinds, outs, dtype))


# ------------------------------------------------------------------ code generation
FORWARD = {
    "add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}", "div": "{0} / {1}",
    "neg": "-{0}", "copy": "{0}", "exp": "_exp({0})", "log": "_log({0})",
    "tanh": "_tanh({0})", "sigmoid": "_sigmoid({0})", "relu": "({0} if {0} > ZERO else ZERO)",
    "softplus": "(max({0}, ZERO) + math.log1p(math.exp(-abs({0}))))", "pow": "{0} ** _F({p})",
}
BACKWARD = {  # (cotangent for arg 0, for arg 1) given g, the output y and the args
    "add": ("{g}", "{g}"), "sub": ("{g}", "-{g}"), "mul": ("{g} * {1}", "{g} * {0}"),
    "div": ("{g} / {1}", "-{g} * {y} / {1}"), "neg": ("-{g}",), "copy": ("{g}",),
    "exp": ("{g} * {y}",), "log": ("{g} / {0}",), "tanh": ("{g} * (ONE - {y} * {y})",),
    "sigmoid": ("{g} * {y} * (ONE - {y})",), "relu": ("({g} if {0} > ZERO else ZERO)",),
    "softplus": ("{g} * _sigmoid({0})",), "pow": ("{g} * _F({p}) * {0} ** _F({p} - 1.0)",),
}
SAVED = {"exp", "tanh", "sigmoid"}  # the forward stores these; the backward reads them back
PRELUDE = '''"""Generated by unroll (rnn/fuse.py) for one region shape. Do not edit."""
# engine/kernels.py {kernels_hash} (Numba's cache does not see a change there)
import math

import numba
from numpy import {dtype} as _F

from engine.kernels import scalar_exp as _exp
from engine.kernels import scalar_log as _log
from engine.kernels import scalar_sigmoid as _sigmoid
from engine.kernels import scalar_tanh as _tanh

ONE = _F(1.0)
ZERO = _F(0.0)
SAVED_WIDTHS = {saved}


'''


_KERNELS_HASH = hashlib.sha1(Path(_kernels.__file__).read_bytes()).hexdigest()[:12]


class _Body:
    """The scalar program of one loop: loads, then one local per (member, column).

    A column is (True, k) for ``j + k`` or (False, k) for the fixed column k (what a
    width-1 value broadcast along the row reads)."""

    def __init__(self, r: Region):
        self.r = r
        self.pos = {a.name: k for k, a in enumerate(r.inputs)}
        self.member = {m.out.name: m for m in r.members}
        self.lines: list[str] = []
        self.nodes: list[tuple] = []  # (local, op, arg locals, p)
        self.loads: dict[tuple, str] = {}  # (input k, column) -> local
        self.memo: dict[tuple, str] = {}

    @staticmethod
    def col(c) -> str:
        rel, k = c
        if not rel:
            return str(k)
        return "j" if k == 0 else f"j + {k}"

    @staticmethod
    def index(kind: str, c) -> str:
        return {"full": f"[b, {_Body.col(c)}]", "row": f"[{_Body.col(c)}]", "bcol": "[b, 0]",
                "scalar": "[0]", "zerod": "[()]"}[kind]

    def load(self, k, c):
        kind = _kind(self.r.inputs[k])[0]
        if kind in ("bcol", "scalar", "zerod"):
            c = (False, 0)
        key = (k, c)
        if key not in self.loads:
            name = f"v{len(self.loads)}_in{k}"
            self.lines.append(f"{name} = a{k}{self.index(kind, c)}")
            self.loads[key] = name
        return self.loads[key]

    def value(self, a, c):
        """The local holding operand ``a`` at column ``c``."""
        if isinstance(a, Lit):
            return f"_F({float(a.value)!r})"
        if a.name in self.pos:
            return self.load(self.pos[a.name], c)
        m = self.member[a.name]
        if _width(m.out.shape) == 1:
            c = (False, 0)
        key = (a.name, c)
        if key in self.memo:
            return self.memo[key]
        if m.op == "slice":
            start = m.kwargs["index"][1][0] or 0
            local = self.value(m.inputs[0], (c[0], c[1] + start))
        else:
            args = [self.value(x, c) for x in m.inputs]
            local = f"t{len(self.nodes)}"
            p = dict(m.params).get("p")
            self.lines.append(f"{local} = " + FORWARD[m.op].format(*args, p=repr(p)))
            self.nodes.append((local, m.op, args, p, len(self.lines) - 1))
        self.memo[key] = local
        return local


def _source(r: Region) -> str:
    nin, nout = len(r.inputs), len(r.outputs)
    groups: dict[int, list[int]] = {}
    for k, o in enumerate(r.outputs):
        groups.setdefault(_width(o.shape), []).append(k)
    bodies = {w: _Body(r) for w in groups}
    results = {w: [bodies[w].value(r.outputs[k], (True, 0)) for k in ks]
               for w, ks in groups.items()}
    saved, widths = {}, []  # (width, local) -> index of its saved array
    for w, body in bodies.items():
        for local, op, *_ in body.nodes:
            if op in SAVED:
                saved[(w, local)] = len(widths)
                widths.append(w)
    ins = [f"a{k}" for k in range(nin)]
    outs = [f"o{k}" for k in range(nout)]
    keep = [f"s{k}" for k in range(len(widths))]
    jit = '@numba.njit(cache=True, error_model="numpy")'
    fwd = [f"{jit}\ndef forward({', '.join(ins + outs + keep)}):"]
    grads = [f"go{k}" for k in range(nout)] + [f"ga{k}" for k in range(nin)]
    bwd = [f"{jit}\ndef backward({', '.join(ins + keep + grads)}):"]
    for w, ks in groups.items():
        body, res = bodies[w], results[w]
        inner = [f"        for j in range({w}):"] + [f"            {ln}" for ln in body.lines]
        inner += [f"            o{k}[b, j] = {x}" for k, x in zip(ks, res)]
        inner += [f"            s{saved[(w, local)]}[b, j] = {local}"
                  for local, op, *_ in body.nodes if op in SAVED]
        fwd += [f"    for b in range(o{ks[0]}.shape[0]):"] + inner
        # backward: recompute the cheap scalars, read the saved ones, sweep in reverse
        lines = list(body.lines)
        for local, op, _, _, at in body.nodes:
            if op in SAVED:
                lines[at] = f"{local} = s{saved[(w, local)]}[b, j]"
        bwd += [f"    for b in range(go{ks[0]}.shape[0]):", f"        for j in range({w}):"]
        bwd += [f"            {ln}" for ln in lines]
        adj = {local: f"d_{local}" for local, *_ in body.nodes}
        adj.update({name: f"d_{name}" for name in body.loads.values()})
        bwd += [f"            {a} = ZERO" for a in adj.values()]
        bwd += [f"            {adj[x]} += go{k}[b, j]" for k, x in zip(ks, res) if x in adj]
        for local, op, args, p, _ in reversed(body.nodes):
            for i, expr in enumerate(BACKWARD[op]):
                if args[i] in adj:  # else a literal
                    c = expr.format(*args, g=adj[local], y=local, p=repr(p))
                    bwd.append(f"            {adj[args[i]]} += {c}")
        for (k, c), name in body.loads.items():
            kind = _kind(r.inputs[k])[0]
            bwd.append(f"            ga{k}{_Body.index(kind, c)} += {adj[name]}")
    head = PRELUDE.format(dtype=r.members[0].out.dtype, saved=tuple(widths),
                          kernels_hash=_KERNELS_HASH)
    return "\n\n\n".join([head, "\n".join(fwd), "\n".join(bwd)]) + "\n"


# ------------------------------------------------------------------ the kernel cache
_loaded: dict[str, object] = {}


def kernels(r: Region):
    """(forward, backward, widths of the saved arrays) for the region's shape,
    generated and compiled once."""
    mod = _loaded.get(r.key)
    if mod is None:
        mod = _loaded[r.key] = cache.load(_source(r), "region")
    return mod.forward, mod.backward, mod.SAVED_WIDTHS
