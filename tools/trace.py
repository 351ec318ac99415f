"""The BPTT trace: forward values and backward adjoints, step by step, as a table.

It runs the reference interpreter over the unrolled program and shows, for one example
of the batch, each named value at each step, its adjoint dL/d(value), and how each
shared weight's gradient is the sum of its per-step contributions.
"""

from __future__ import annotations

import numpy as np

from engine import ir


def _vec(a: np.ndarray, width: int = 4) -> str:
    a = np.ravel(a)
    body = " ".join(f"{v:+.3f}" for v in a[:width])
    return f"[{body}{' ...' if a.size > width else ''}]"


def trace(model, xs, targets, loss: str = "mse", at: str = "all", example: int = 0,
          show_temps: bool = False) -> str:
    """A readable table of one BPTT pass of ``model`` on (xs, targets)."""
    from rnn.bptt import checked

    xs, targets, _, weights = checked(model, xs, targets, loss, at, None)
    B, T, _ = xs.shape
    res_prog, un = model.program(T, loss=loss, at=at)
    env = model.feed(un, xs)
    env["targets"], env["weights"] = targets, weights
    vals = ir.interpret(res_prog, env)
    per_step: dict[str, dict[int, np.ndarray]] = {p: {} for p in model.params}

    def contribution(eqn, i, c):
        a = eqn.inputs[i]
        if a.name in per_step:
            step = eqn.out.step
            per_step[a.name][step] = per_step[a.name].get(step, 0) + c

    adj = ir.backward(res_prog, vals, {"loss": np.ones((), model.dtype)},
                      on_cotangent=contribution)
    cell = model.full
    named = [nd.out for nd in cell.nodes if show_temps or nd.out == nd.target]
    short = (lambda n: n.replace("_l0", "")) if model.layers == 1 else (lambda n: n)
    lines = [f"BPTT trace: {T} steps, batch example {example} of {B}, loss = "
             f"{float(vals['loss']):.6g}", "",
             "forward (values) and backward (adjoints dL/d value), step by step:",
             f"{'step':>4}  {'node':<10} {'op':<8} {'value':<36} {'adjoint dL/d value':<36}"]
    for t in range(T):
        x_name = next(iter(cell.inputs))
        lines.append(f"{t:>4}  {x_name:<10} {'input':<8} {_vec(xs[example, t]):<36}")
        for n in named:
            v = un.values[n][t]
            op = next(nd.op for nd in cell.nodes if nd.out == n)
            a = adj.get(v.name)
            shown = _vec(a[example]) if a is not None else "(no gradient reaches it)"
            lines.append(f"{'':>4}  {short(n):<10} {op:<8} {_vec(vals[v.name][example]):<36} "
                         f"{shown}")
    lines += ["", "shared weights: each gradient is the sum of its per-step contributions",
              f"{'param':<14} " + " ".join(f"{'t=' + str(t):>9}" for t in range(min(T, 8)))
              + ("  ..." if T > 8 else "") + f" {'= sum':>10} {'dL/dW':>10}"]
    for p in model.params:
        contrib = per_step[p]
        norms = [np.linalg.norm(contrib[t]) if t in contrib else 0.0 for t in range(T)]
        total = sum((contrib[t] for t in contrib), np.zeros_like(model.params[p]))
        check = "ok" if np.allclose(total, adj.get(p, 0)) else "MISMATCH"
        lines.append(f"{p:<14} " + " ".join(f"{n:9.2e}" for n in norms[:8])
                     + ("  ..." if T > 8 else "")
                     + f" {np.linalg.norm(total):10.3e} {np.linalg.norm(adj.get(p, 0)):10.3e}"
                     f"  {check}")
    lines.append("(columns t=k: ||contribution of step k||; the sum over steps equals dL/dW)")
    return "\n".join(lines)
