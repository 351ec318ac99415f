"""Executors: two ways to run the same unrolled program, which must agree to 1e-10.

``reference`` is the ten-line interpreter of engine.ir, node by node (traces, teaching,
the oracle). ``compiled`` lowers the program once into a flat plan over array slots, with
each time step's elementwise region fused into one generated Numba kernel
(``rnn/fuse.py``), and the GEMMs scheduled ahead of the gate math they feed.
"""

from __future__ import annotations

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
        watched = frozenset(watch)
        steps = []
        for item in items:
            if isinstance(item, int) and _weight_matvec(ordered.eqns[item], slots, prog):
                e = ordered.eqns[item]
                A, x = e.inputs
                slots[e.out.name] = len(slots)
                steps.append(("matvec", OPS["matvec"].forward, (slots[A.name], slots[x.name]),
                              slots[e.out.name], e.out,
                              x.name if x.name in slots and slots[x.name] < len(prog.inputs)
                              else None))
            elif isinstance(item, int):
                e = ordered.eqns[item]
                o = OPS[e.op]
                ins = tuple(slots[a.name] if isinstance(a, ir.Var) else -1 for a in e.inputs)
                lits = tuple(None if isinstance(a, ir.Var) else np.asarray(a.value, e.out.dtype)
                             for a in e.inputs)
                slots[e.out.name] = len(slots)
                steps.append(("op", o.forward, o.vjp, ins, lits, slots[e.out.name], e.kwargs,
                              e.out))
            elif item.outputs:
                fwd, bwd, saved = fuse.kernels(item)
                ins = tuple(slots[a.name] for a in item.inputs)
                outs = []
                for v in item.outputs:
                    slots[v.name] = len(slots)
                    outs.append(slots[v.name])
                keep_at = []  # slots for the saved activations, under names no var has
                for k in range(len(saved)):
                    slots[f"{item.outputs[0].name}#saved{k}"] = len(slots)
                    keep_at.append(len(slots) - 1)
                widths = tuple(v.shape[1] for v in item.outputs)
                steps.append(("fused", fwd, bwd, ins, tuple(outs), widths, tuple(keep_at),
                              tuple(saved), np.dtype(item.outputs[0].dtype),
                              tuple(item.outputs), watched))
        plan = (slots, steps)
        if len(self._plans) > 32:
            self._plans.clear()
        self._plans[key] = (prog, plan)
        return plan

    def forward(self, prog, env, keep=(), watch=()):
        plan = self.plan(prog, keep, watch)
        slots, steps = plan
        vals = [None] * len(slots)
        for v in prog.inputs:
            vals[slots[v.name]] = env[v.name]
        for st in steps:
            if st[0] == "op":
                _, fwd, _, ins, lits, out, kw, _ = st
                vals[out] = fwd(*[vals[i] if i >= 0 else lit for i, lit in zip(ins, lits)],
                                **kw)
            elif st[0] == "matvec":
                _, fwd, (ia, ix), out, _, _ = st
                vals[out] = fwd(vals[ia], vals[ix])
            else:
                _, fwd, _, ins, outs, widths, keep_at, saved, dtype, _, _ = st
                args = [np.asarray(vals[i]) for i in ins]  # a kernel needs arrays, not scalars
                B = next(a.shape[0] for a in args if a.ndim == 2)
                res = [np.empty((B, w), dtype) for w in widths]
                kept = [np.empty((B, w), dtype) for w in saved]
                fwd(*args, *res, *kept)
                for i, r in zip(outs + keep_at, res + kept):
                    vals[i] = r
        return _View(slots, vals, plan)

    def backward(self, prog, values, seeds, on_adjoint=None, wrt=None):
        """Adjoints of the program inputs. ``wrt``: the inputs whose adjoints are wanted
        (None: all); data inputs outside it get none computed."""
        slots, steps = values.plan
        vals = values.vals
        adj = [None] * len(slots)
        deferred: dict[int, list] = {}  # weight slot -> (cotangent, vectors) of each use
        for k, g in seeds.items():
            adj[slots[k]] = np.asarray(g)
        for n in range(len(steps) - 1, -1, -1):
            st = steps[n]
            if st[0] == "matvec":
                _, _, (ia, ix), out, var, x_input = st
                g = adj[out]
                if g is None:
                    continue
                if on_adjoint is not None:
                    on_adjoint(var, g)
                deferred.setdefault(ia, []).append((g, vals[ix]))
                if x_input is None or wrt is None or x_input in wrt:
                    c = g @ vals[ia]
                    adj[ix] = c if adj[ix] is None else adj[ix] + c
                continue
            if st[0] == "op":
                _, _, vjp, ins, lits, out, kw, var = st
                g = adj[out]
                if g is None:
                    continue
                if on_adjoint is not None:
                    on_adjoint(var, g)
                args = [vals[i] if i >= 0 else lit for i, lit in zip(ins, lits)]
                cots = vjp(g, vals[out], *args, **kw)
                pairs = [(i, x, c) for i, x, c in zip(ins, args, cots)]
            else:
                _, _, bwd, ins, outs, widths, keep_at, _, dtype, out_vars, watch = st
                gs = [adj[i] for i in outs]
                if all(g is None for g in gs):
                    continue
                if on_adjoint is not None:
                    for v, g in zip(out_vars, gs):
                        if g is not None and v.name in watch:
                            on_adjoint(v, g)
                args = [np.asarray(vals[i]) for i in ins]
                B = next(a.shape[0] for a in args if a.ndim == 2)
                gs = [np.zeros((B, w), dtype) if g is None else np.ascontiguousarray(g)
                      for g, w in zip(gs, widths)]
                grads = [np.zeros(a.shape, dtype) for a in args]
                bwd(*args, *[vals[i] for i in keep_at], *gs, *grads)
                pairs = list(zip(ins, args, grads))
            for i, x, c in pairs:
                if c is None or i < 0:
                    continue
                if c.shape != x.shape:
                    c = unbroadcast(c, x.shape)
                adj[i] = c if adj[i] is None else adj[i] + c
        for ia, uses in deferred.items():  # one GEMM per weight for all its uses: sum_t g_t^T x_t
            G = np.concatenate([g.reshape(-1, g.shape[-1]) for g, _ in uses])
            X = np.concatenate([x.reshape(-1, x.shape[-1]) for _, x in uses])
            gA = G.T @ X
            adj[ia] = gA if adj[ia] is None else adj[ia] + gA
        out = {}
        for v in prog.inputs:
            a = adj[slots[v.name]]
            if a is not None:
                out[v.name] = a
                if on_adjoint is not None:
                    on_adjoint(v, a)
        return out


def _weight_matvec(e, slots, prog) -> bool:
    """A matvec whose matrix is a program input (a weight): its cotangent is deferred."""
    if e.op != "matvec" or not isinstance(e.inputs[0], ir.Var):
        return False
    A = e.inputs[0].name
    return A in slots and slots[A] < len(prog.inputs)


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
