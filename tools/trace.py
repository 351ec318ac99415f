"""The BPTT trace: forward values and backward adjoints, step by step, as a table.

It runs the reference interpreter over the unrolled program and shows, for one example
of the batch, each named value at each step, its adjoint dL/d(value), and how each
shared weight's gradient is the sum of its per-step contributions: for one entry of
each weight, the signed number every step adds, in a row that adds up to dL/dW there.
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
    from rnn.losses import check_loss

    check_loss(loss, at)
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
    lines += ["", *_weight_sums(model, per_step, adj, T)]
    return "\n".join(lines)


SHOWN_STEPS = 6  # step columns before the rest of the steps are summed into one


def _entry(total: np.ndarray) -> tuple[int, ...]:
    """The entry of a gradient the table follows: the largest |dL/dW| (the first if all
    are zero)."""
    return np.unravel_index(int(np.argmax(np.abs(total))), total.shape) if total.size else ()


def _weight_sums(model, per_step, adj, T) -> list[str]:
    """For each parameter, one entry of dL/dW and what each step adds to it, signed: the
    numbers in a row add up to the last one (up to the rounding of the print)."""
    cols = [(f"t={t}", [t]) for t in range(min(T, SHOWN_STEPS))]
    if T > SHOWN_STEPS + 1:
        cols.append((f"t={SHOWN_STEPS}..{T - 1}", list(range(SHOWN_STEPS, T))))
    elif T == SHOWN_STEPS + 1:
        cols.append((f"t={SHOWN_STEPS}", [SHOWN_STEPS]))
    if any(None in c for c in per_step.values()):  # used outside the steps (by the loss)
        cols.append(("loss", [None]))
    width = max(11, *(len(c[0]) for c in cols))
    names = [f"{p}[{','.join(map(str, _entry(adj.get(p, np.zeros(1)))))}]" for p in model.params]
    w = max(len(n) for n in names)
    lines = ["shared weights: dL/dW is the sum of what every step contributes. For each "
             "parameter,",
             "the entry W[i,j] with the largest |dL/dW[i,j]|, and what each step adds to it:",
             f"{'dL/dW entry':<{w}} " + " ".join(f"{c[0]:>{width}}" for c in cols)
             + f"   {'= dL/dW entry':>13}"]
    rows = []
    for p, name in zip(model.params, names):
        contrib = per_step[p]
        grad = np.asarray(adj.get(p, np.zeros_like(model.params[p])))
        ix = _entry(grad)
        parts = [sum((float(np.asarray(contrib[t])[ix]) for t in ts if t in contrib), 0.0)
                 for _, ts in cols]
        summed = float(sum((np.asarray(c)[ix] for c in contrib.values()), 0.0))
        total = float(grad[ix])  # reverse mode's dL/dW, in one pass
        check = "ok" if np.isclose(summed, total, rtol=1e-9, atol=1e-14) else "MISMATCH"
        rows.append(parts)
        lines.append(f"{name:<{w}} " + " ".join(f"{v:>+{width}.3e}" for v in parts)
                     + f"   = {total:>+11.4e}  {check}")
    lines.append("(each row adds up: the step columns sum to the last number, dL/dW at that "
                 "entry, as reverse mode")
    lines.append(" computes it in one pass; the mark after it says whether the two agree)")
    if any(len(p) > 1 and p[0] == 0.0 for p in rows):
        lines.append("(a 0 at t=0: that weight multiplies the initial state, zeros here)")
    return lines
