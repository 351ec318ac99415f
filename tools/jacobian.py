"""Why gradients vanish or explode: the Jacobian of one step, dS_t / dS_(t-1).

Backpropagation through time multiplies the gradient reaching step t by the transposed
Jacobian of every step after it, so ||dL/dS_t|| shrinks (or grows) with the product of
those Jacobians, and their largest singular values bound it. ``step_jacobians`` gives the
Jacobian of every step of one sequence, exactly: the model's one-step program run by the
reference interpreter, its reverse mode seeded with the identity, a copy of the step per
row (the batch holds the rows). S is every state of the stack, concatenated (an LSTM's h
and c).
"""

from __future__ import annotations

import numpy as np

from engine import ir


def state_names(model) -> list[str]:
    """The states of ``model``'s whole stack, in the order of the Jacobian's blocks."""
    return [s for s in model.full.states if s not in model.full.inputs]


def step_jacobians(model, xs, example: int = 0, initial_state=None) -> np.ndarray:
    """(T, n, n): the Jacobian of the state after step t with respect to the state before
    it, for sequence ``example`` of ``xs`` (B, T, I); n is the total state size."""
    if getattr(model, "bidirectional", False):
        raise ValueError("step Jacobians are for one-way models: a bidirectional layer's "
                         "reverse direction steps from t+1 to t")
    xs = model.check_xs(xs)
    cell = model.full
    deep = [a.delay for nd in cell.nodes for a in nd.args
            if getattr(a, "delay", 0) > 1]
    if deep:
        raise ValueError(f"a state read {max(deep)} steps back has no one-step Jacobian: "
                         f"step_jacobians takes cells whose delays are all 1")
    states = state_names(model)
    widths = {s: cell.states[s] for s in states}
    n = sum(widths.values())
    prog, un = model.program(1)
    S = {k: v[example] for k, v in
         model.initial_values(xs.shape[0], initial_state, widths).items()}
    eye = np.eye(n, dtype=model.dtype)
    seeds, off = {}, 0
    for s in states:
        seeds[un.values[s][0].name] = eye[:, off:off + widths[s]]
        off += widths[s]
    x_prev = {x: np.zeros(w, model.dtype) for x, w in cell.inputs.items()}
    parts = model.split_inputs(xs, cell)  # each input's (B, T, w)
    out = np.empty((xs.shape[1], n, n), model.dtype)
    for t in range(xs.shape[1]):
        env = model.feed(un, np.repeat(xs[example:example + 1, t:t + 1], n, axis=0))
        for s in states:
            env[un.init[s].name] = np.repeat(S[s][None], n, axis=0)
        for x in cell.inputs:  # a delayed input reads the previous step's
            if x in un.init:
                env[un.init[x].name] = np.repeat(x_prev[x][None], n, axis=0)
        vals = ir.interpret(prog, env)
        adj = ir.backward(prog, vals, seeds)
        out[t] = np.concatenate([adj.get(un.init[s].name, np.zeros((n, widths[s])))
                                 for s in states], axis=1)  # row r: d S_t[r] / d S_(t-1)
        S = {s: vals[un.values[s][0].name][0] for s in states}
        x_prev = {x: v[example, t].copy() for x, v in parts.items()}
    return out


def spectral_norms(model, xs, example: int = 0, initial_state=None) -> np.ndarray:
    """(T,): the largest singular value of each step's Jacobian."""
    J = step_jacobians(model, xs, example, initial_state)
    return np.linalg.svd(J, compute_uv=False)[:, 0]
