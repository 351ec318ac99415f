"""Executors: two ways to run the same unrolled program, which must agree to 1e-10.

``reference`` is the ten-line interpreter of engine.ir, node by node (traces, teaching,
the oracle). ``compiled`` lowers the program once into a flat plan over array slots
(no name lookups, kernels and literals bound once) and runs that.
"""

from __future__ import annotations

import numpy as np

from engine import ir
from engine.ops import OPS, unbroadcast


class Reference:
    name = "reference"

    def forward(self, prog, env):
        return ir.interpret(prog, env)

    def backward(self, prog, values, seeds, on_adjoint=None):
        return ir.backward(prog, values, seeds, on_adjoint)


class Compiled:
    """A plan per program: (forward fn, vjp fn, input slots, output slot, params)."""

    name = "compiled"

    def __init__(self):
        self._plans: dict[int, tuple] = {}

    def plan(self, prog):
        key = id(prog)
        hit = self._plans.get(key)
        if hit is not None and hit[0] is prog:
            return hit[1]
        slots = {v.name: i for i, v in enumerate(prog.inputs)}
        steps = []
        for e in prog.eqns:
            o = OPS[e.op]
            ins = tuple(slots[a.name] if isinstance(a, ir.Var) else -1 for a in e.inputs)
            lits = tuple(None if isinstance(a, ir.Var) else np.asarray(a.value, e.out.dtype)
                         for a in e.inputs)
            slots[e.out.name] = len(slots)
            steps.append((o.forward, o.vjp, ins, lits, slots[e.out.name], e.kwargs))
        plan = (slots, steps)
        if len(self._plans) > 32:
            self._plans.clear()
        self._plans[key] = (prog, plan)
        return plan

    def forward(self, prog, env):
        slots, steps = self.plan(prog)
        vals = [None] * len(slots)
        for v in prog.inputs:
            vals[slots[v.name]] = env[v.name]
        for fwd, _, ins, lits, out, kw in steps:
            vals[out] = fwd(*[vals[i] if i >= 0 else lit for i, lit in zip(ins, lits)], **kw)
        return _View(slots, vals)

    def backward(self, prog, values, seeds, on_adjoint=None):
        slots, steps = self.plan(prog)
        vals = values.vals
        adj = [None] * len(slots)
        for k, g in seeds.items():
            adj[slots[k]] = np.asarray(g)
        eqns = prog.eqns
        for n in range(len(steps) - 1, -1, -1):
            _, vjp, ins, lits, out, kw = steps[n]
            g = adj[out]
            if g is None:
                continue
            if on_adjoint is not None:
                on_adjoint(eqns[n].out, g)
            args = [vals[i] if i >= 0 else lit for i, lit in zip(ins, lits)]
            for i, x, c in zip(ins, args, vjp(g, vals[out], *args, **kw)):
                if c is None or i < 0:
                    continue
                if c.shape != x.shape:
                    c = unbroadcast(c, x.shape)
                adj[i] = c if adj[i] is None else adj[i] + c
        out = {}
        for v in prog.inputs:
            a = adj[slots[v.name]]
            if a is not None:
                out[v.name] = a
                if on_adjoint is not None:
                    on_adjoint(v, a)
        return out


class _View(dict):
    """Values by name, backed by the slot list (only names asked for are looked up)."""

    def __init__(self, slots, vals):
        super().__init__()
        self.slots, self.vals = slots, vals

    def __getitem__(self, name):
        return self.vals[self.slots[name]]

    def __contains__(self, name):
        return name in self.slots


EXECUTORS = {"reference": Reference(), "compiled": Compiled()}
