"""Executors: two ways to run the same unrolled program, which must agree to 1e-10.

``reference`` is the ten-line interpreter of engine.ir, node by node (traces, teaching,
the oracle). ``compiled`` lowers the program once into a flat plan over array slots, with
each time step's elementwise region fused into one generated Numba kernel
(``rnn/fuse.py``), and the GEMMs scheduled ahead of the gate math they feed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine import ir
from engine.ops import OPS, unbroadcast

from . import fuse


class Reference:
    name = "reference"

    def forward(self, prog, env, keep=(), watch=()):
        return ir.interpret(prog, env)

    def backward(self, prog, values, seeds, on_adjoint=None, wrt=None):
        return ir.backward(prog, values, seeds, on_adjoint)


MATVEC = OPS["matvec"]


class OpStep(NamedTuple):  # one primitive
    op: object  # the engine Op
    ins: tuple  # input slots; -1 where a literal stands
    lits: tuple  # the literals, as arrays of the output's dtype
    out: int
    kw: dict
    var: ir.Var


class MatvecStep(NamedTuple):  # W @ x with W a program input: W's cotangent is deferred
    w: int
    x: int
    out: int
    var: ir.Var
    x_input: str | None  # x's name when x is a program input (data needs no cotangent)


class FusedStep(NamedTuple):  # one region: a generated forward and backward kernel
    forward: object
    backward: object
    ins: tuple
    outs: tuple
    widths: tuple  # of the outputs
    saved: tuple  # slots of the activations the forward keeps for the backward
    saved_widths: tuple
    dtype: np.dtype
    out_vars: tuple


class Compiled:
    """Runs a plan made once per program: each time step's elementwise region is one
    generated Numba kernel (rnn/fuse.py), everything else a primitive on array slots.

    ``keep`` names the variables the caller reads after the forward pass and ``watch``
    those whose adjoints ``on_adjoint`` must see (e.g. every state, for step norms).
    """

    name = "compiled"

    def __init__(self):
        self._plans: dict[tuple, tuple] = {}

    def plan(self, prog, keep=(), watch=()):
        key = (id(prog), frozenset(keep), frozenset(watch))
        hit = self._plans.get(key)
        if hit is not None and hit[0] is prog:
            return hit[1]
        ordered = fuse.gemms_first(prog)
        items, _ = fuse.find_regions(ordered, keep, watch)
        slots = {v.name: i for i, v in enumerate(prog.inputs)}

        def slot(name):
            slots[name] = len(slots)
            return slots[name]

        steps = []
        for item in items:
            if isinstance(item, fuse.Region):
                if not item.outputs:
                    continue
                fwd, bwd, saved = fuse.kernels(item)
                ins = tuple(slots[a.name] for a in item.inputs)
                outs = tuple(slot(v.name) for v in item.outputs)
                kept = tuple(slot(f"{item.outputs[0].name}#saved{k}") for k in range(len(saved)))
                steps.append(FusedStep(fwd, bwd, ins, outs,
                                       tuple(v.shape[1] for v in item.outputs), kept,
                                       tuple(saved), np.dtype(item.outputs[0].dtype),
                                       tuple(item.outputs)))
                continue
            e = ordered.eqns[item]
            if e.op == "matvec" and all(isinstance(a, ir.Var) for a in e.inputs):
                A, x = (slots[a.name] for a in e.inputs)
                if A < len(prog.inputs):  # a weight
                    data = e.inputs[1].name if x < len(prog.inputs) else None
                    steps.append(MatvecStep(A, x, slot(e.out.name), e.out, data))
                    continue
            ins = tuple(slots[a.name] if isinstance(a, ir.Var) else -1 for a in e.inputs)
            lits = tuple(None if isinstance(a, ir.Var) else np.asarray(a.value, e.out.dtype)
                         for a in e.inputs)
            steps.append(OpStep(OPS[e.op], ins, lits, slot(e.out.name), e.kwargs, e.out))
        plan = (slots, steps, frozenset(watch))
        if len(self._plans) > 32:
            self._plans.clear()
        self._plans[key] = (prog, plan)
        return plan

    def forward(self, prog, env, keep=(), watch=()):
        plan = self.plan(prog, keep, watch)
        slots, steps, _ = plan
        vals = [None] * len(slots)
        for v in prog.inputs:
            vals[slots[v.name]] = env[v.name]
        for st in steps:
            if type(st) is OpStep:
                args = [vals[i] if i >= 0 else lit for i, lit in zip(st.ins, st.lits)]
                vals[st.out] = st.op.forward(*args, **st.kw)
            elif type(st) is MatvecStep:
                vals[st.out] = MATVEC.forward(vals[st.w], vals[st.x])
            else:
                args = [np.asarray(vals[i]) for i in st.ins]  # a kernel needs arrays
                B = next(a.shape[0] for a in args if a.ndim == 2)
                res = [np.empty((B, w), st.dtype) for w in st.widths]
                kept = [np.empty((B, w), st.dtype) for w in st.saved_widths]
                st.forward(*args, *res, *kept)
                for i, r in zip(st.outs + st.saved, res + kept):
                    vals[i] = r
        return _View(slots, vals, plan)

    def backward(self, prog, values, seeds, on_adjoint=None, wrt=None):
        """Adjoints of the program inputs. ``wrt``: the inputs whose adjoints are wanted
        (None: all); data inputs outside it get none computed."""
        slots, steps, watch = values.plan
        vals = values.vals
        adj = [None] * len(slots)
        deferred: dict[int, list] = {}  # weight slot -> (cotangent, vectors) of each use
        for k, g in seeds.items():
            adj[slots[k]] = np.asarray(g)
        for st in reversed(steps):
            if type(st) is FusedStep:
                gs = [adj[i] for i in st.outs]
                if all(g is None for g in gs):
                    continue
                if on_adjoint is not None:
                    for v, g in zip(st.out_vars, gs):
                        if g is not None and v.name in watch:
                            on_adjoint(v, g)
                args = [np.asarray(vals[i]) for i in st.ins]
                B = next(a.shape[0] for a in args if a.ndim == 2)
                gs = [np.zeros((B, w), st.dtype) if g is None else np.ascontiguousarray(g)
                      for g, w in zip(gs, st.widths)]
                grads = [np.zeros(a.shape, st.dtype) for a in args]
                st.backward(*args, *[vals[i] for i in st.saved], *gs, *grads)
                pairs = zip(st.ins, args, grads)
            else:
                g = adj[st.out]
                if g is None:
                    continue
                if on_adjoint is not None:
                    on_adjoint(st.var, g)
                if type(st) is MatvecStep:
                    deferred.setdefault(st.w, []).append((g, vals[st.x]))
                    if st.x_input is not None and wrt is not None and st.x_input not in wrt:
                        continue
                    pairs = [(st.x, vals[st.x], g @ vals[st.w])]  # x's half of the VJP
                else:
                    args = [vals[i] if i >= 0 else lit for i, lit in zip(st.ins, st.lits)]
                    pairs = zip(st.ins, args, st.op.vjp(g, vals[st.out], *args, **st.kw))
            for i, x, c in pairs:
                if c is None or i < 0:
                    continue
                if c.shape != x.shape:
                    c = unbroadcast(c, x.shape)
                adj[i] = c if adj[i] is None else adj[i] + c
        for w, uses in deferred.items():  # one GEMM per weight for all its uses: sum g_t^T x_t
            G = np.concatenate([g.reshape(-1, g.shape[-1]) for g, _ in uses])
            X = np.concatenate([x.reshape(-1, x.shape[-1]) for _, x in uses])
            adj[w] = G.T @ X if adj[w] is None else adj[w] + G.T @ X
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

    def __init__(self, slots, vals, plan):
        super().__init__()
        self.slots, self.vals, self.plan = slots, vals, plan

    def __getitem__(self, name):
        return self.vals[self.slots[name]]

    def __contains__(self, name):
        return name in self.slots


EXECUTORS = {"reference": Reference(), "compiled": Compiled()}
