"""Backpropagation through time: reverse mode over the unrolled program.

>>> import numpy as np, rnn
>>> m = rnn.Model(rnn.cells.elman(2, 3), head=1)
>>> xs, ys = np.ones((4, 5, 2)), np.zeros((4, 5, 1))
>>> res = rnn.bptt(m, xs, ys)
>>> sorted(res.grads) == sorted(m.params), res.step_norms["h"].shape
(True, (5,))
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from engine import ir

from .lang.cell import Cell
from .lang.parse import Ref
from .losses import check_loss, check_targets, loss_program, loss_weights, mse_and_grad
from .model import BiRun, Model, check_mask, counting
from .program.executor import REFERENCE, check_executor


@dataclass
class BPTTResult:
    loss: float
    grads: dict[str, np.ndarray]  # same names and shapes as model.params
    state_grads: dict[str, np.ndarray]  # dL/d(initial state); (B,H), or (L,B,H) if stacked
    step_norms: dict[str, np.ndarray]  # ||dL/d state_t|| per step: (T,), or (L,T) if stacked
    outputs: np.ndarray = field(repr=False)  # (B, T, O)
    final_state: dict[str, np.ndarray] = field(repr=False)
    # keep_adjoints=True: dL/d(every value) with the reference executor, dL/d(every
    # state at every step) with the compiled one
    adjoints: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def _is_count(k) -> bool:
    return isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1


def check_truncate(truncate):
    """``truncate`` as bptt runs it: None, k, or (k1, k2); or a ValueError."""
    if truncate is None:
        return None
    if isinstance(truncate, (tuple, list)):
        if (len(truncate) != 2 or not all(_is_count(k) for k in truncate)
                or truncate[1] < truncate[0]):
            raise ValueError(f"truncate=(k1, k2) needs ints 1 <= k1 <= k2, got {truncate!r}")
        return int(truncate[0]), int(truncate[1])
    if not _is_count(truncate):
        raise ValueError(f"truncate must be a positive int k or a pair (k1, k2), got "
                         f"{truncate!r}")
    return int(truncate)


def check_model(model, what: str = "bptt"):
    """``model`` if it is a Model or runs its own BPTT (Seq2Seq), else a TypeError."""
    if isinstance(model, Cell):
        raise TypeError(f"rnn.{what} takes a model, got a Cell: wrap it in rnn.Model(cell) "
                        f"(e.g. rnn.{what}(rnn.Model(cell, head=1), ...))")
    if not isinstance(model, Model) and not callable(getattr(model, "bptt", None)):
        raise TypeError(f"rnn.{what} takes an rnn.Model (or rnn.Seq2Seq), got "
                        f"{type(model).__name__}")
    return model


def bptt(model: Model, xs, targets, loss: str = "mse", at: str = "all", initial_state=None,
         truncate=None, mask=None, executor: str = "compiled",
         keep_adjoints: bool = False, batch_first: bool = True, train: bool = False,
         seed=None) -> BPTTResult:
    """Loss, parameter gradients, initial-state gradients and per-step state-gradient
    norms of ``model`` on one batch (see SPEC section 4 for every argument).
    ``batch_first=False`` takes time-major arrays, as torch: xs (T, B, I), targets
    (T, B, O) (or (T, B) class indices) for ``at="all"``, mask (T, B); ``res.outputs``
    is then (T, B, O). Nothing else changes: the result is the batch-major one's.

    ``train=True`` runs the model as in training: its dropout and recurrent dropout act,
    with masks drawn from ``seed`` (an int, or a numpy Generator that is advanced; None:
    fresh entropy), so a seed gives the same masks, loss and gradients. A model without
    dropout gives the same result either way."""
    check_model(model)
    check_executor(executor)
    check_loss(loss, at)
    if not isinstance(model, Model):  # a composite (e.g. Seq2Seq) checks and runs its own
        if not batch_first:
            xs, targets, mask = batch_major(model, xs, targets, mask, at, batch_first)
        res = model.bptt(xs, targets, loss=loss, at=at, executor=executor,
                         initial_state=initial_state, truncate=truncate, mask=mask)
    else:
        batch = checked(model, xs, targets, loss, at, mask, batch_first)
        truncate = check_truncate(truncate)
        if not isinstance(train, bool):
            raise TypeError(f"train must be True or False, got {train!r}")
        res = run_batch(model, *batch, loss, at, initial_state, truncate, executor,
                        keep_adjoints, train, seed)
    if not batch_first:
        res.outputs = res.outputs.swapaxes(0, 1)
    return res


def run_batch(model: Model, xs, targets, mask, weights, loss: str, at: str,
              initial_state=None, truncate=None, executor: str = "compiled",
              keep_adjoints: bool = False, train: bool = False, seed=None) -> BPTTResult:
    """bptt of a batch that passed the door: (xs, targets, mask, weights) as ``checked``
    (or ``rows``) gives them, ``loss``, ``at``, ``executor`` and ``truncate`` checked."""
    T = xs.shape[1]
    train = train and model.trains_differently
    rng = None
    if train:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if not model.bidirectional:  # the masks travel with the data, as inputs
            xs = model.with_masks(xs, rng)
    if keep_adjoints and model.bidirectional:
        raise ValueError("keep_adjoints is not supported for bidirectional models (they run "
                         "layer by layer); step_norms are there")
    if isinstance(truncate, tuple) and truncate[0] < T:
        if model.bidirectional:
            raise ValueError("truncate=(k1, k2) runs windows forward in time; a "
                             "bidirectional model reads the whole sequence: use truncate=k")
        return _windows(model, xs, targets, weights, loss, at, initial_state, truncate, mask,
                        executor, train)
    if isinstance(truncate, tuple):
        truncate = None
    k = truncate if truncate is not None and truncate < T else None
    return _run(model, xs, targets, weights, loss, at, initial_state, k, mask, executor,
                keep_adjoints, train=train, rng=rng)


def time_major(a, what: str):
    """A time-major (T, B, ...) array as a batch-major view."""
    if a is None:
        return None
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"with batch_first=False, {what} is time-major (T, B, ...); got "
                         f"shape {a.shape}")
    return a.swapaxes(0, 1)


def batch_major(model, xs, targets, mask, at: str, batch_first: bool = True,
                what: str = "targets"):
    """(xs checked, targets, mask) batch-major, whichever layout they came in."""
    xs = model.check_xs(xs, batch_first=batch_first)
    if batch_first:
        return xs, np.asarray(targets), mask
    return (xs, time_major(targets, what) if at == "all" else np.asarray(targets),
            time_major(mask, "mask"))


def checked(model: Model, xs, targets, loss: str, at: str, mask, batch_first: bool = True,
            what: str = "targets"):
    """The batch as the loss program takes it: (xs, targets, mask, weights), batch-major,
    or a clear error for what does not fit the model (``loss`` and ``at`` are checked
    first, by ``check_loss``)."""
    xs, targets, mask = batch_major(model, xs, targets, mask, at, batch_first, what)
    B, T, _ = xs.shape
    targets = check_targets(loss, at, targets, B, T, model.output_size, model.dtype)
    mask = check_mask(mask, (B, T), model.dtype, model.full)
    return xs, targets, mask, loss_weights(loss, at, B, T, model.output_size, mask, model.dtype)


def rows(model: Model, xs, targets, mask, idx, loss: str, at: str):
    """Rows ``idx`` of data whose xs and mask were checked whole (fit's door) as
    ``checked`` gives a batch: only the targets, and that the mask counts some step,
    are the batch's own to check."""
    xs = xs[idx]
    B, T, _ = xs.shape
    targets = check_targets(loss, at, targets[idx], B, T, model.output_size, model.dtype)
    mask = None if mask is None else counting(np.asarray(mask[idx], model.dtype))
    return xs, targets, mask, loss_weights(loss, at, B, T, model.output_size, mask, model.dtype)


def _run(model, xs, targets, weights, loss, at, initial_state, k, mask, executor,
         keep_adjoints=False, carried=None, train=False, rng=None):
    if model.bidirectional:
        lval, adj, norms, ys, final, kept = _run_bi(model, xs, targets, weights, loss, at,
                                                    initial_state, k, mask, executor, rng)
    else:
        plan = model.plan(mask is not None, train) if executor == "compiled" else None
        run = _run_plan if plan is not None else _run_program
        lval, adj, norms, ys, final, kept = run(model, plan, xs, targets, weights, loss, at,
                                               initial_state, k, mask, executor,
                                               keep_adjoints, carried, train)
    B = xs.shape[0]
    grads = {p: adj[p] if p in adj else np.zeros_like(v) for p, v in model._params.items()}
    per_layer = {n: adj[k] if (k := f"{n}@init") in adj else
                 np.zeros((B, model.cell.states[s]), model.dtype)
                 for s in model.cell.states for n in model.layer_names(s)}
    given = set(initial_state or {})
    for s in model.learn_initial:  # one learned vector, broadcast over the batch
        if s not in given:
            for n in model.layer_names(s):
                grads[f"init_{n}"] = per_layer[n].sum(axis=0)
    return BPTTResult(lval, grads, model.split_layers(per_layer), model.split_layers(norms), ys,
                      model.split_layers(final), kept)


def _run_bi(model, xs, targets, weights, loss, at, initial_state, k, mask, executor, rng):
    """A bidirectional model: layer by layer (rnn.model.BiRun), the loss of all steps."""
    run = BiRun(model, xs, initial_state, mask, executor, rng, k)
    lval, dY = _loss(model, run.Y, targets, weights, loss, at)
    grads, ginit, norms = run.backward(dY)
    return lval, {**grads, **ginit}, norms, run.Y.transpose(1, 0, 2), run.final, {}


def _run_plan(model, plan, xs, targets, weights, loss, at, initial_state, k, mask, executor,
              keep_adjoints, carried, train=False):
    """The compiled loops (rnn/program/loop.py); the loss of all steps at once."""
    T = xs.shape[1]
    carried = {n.removesuffix("@init"): v for n, v in (carried or {}).items()}
    feed, init = model.loop_inputs(plan, xs, initial_state, mask, carried)
    params = model.step_params(plan)
    out = model.full.outputs[0]
    with plan.blas_threads(T, xs.shape[0]):
        vals = plan.forward(feed, params, init)
        plan.release(vals)  # what the backward does not read: memory for the adjoints
        lval, dY = _loss(model, vals[out], targets, weights, loss, at)
        gparams, ginit, norms, kept = plan.backward(vals, {out: dY}, params, init,
                                                    truncate=k, keep_adjoints=keep_adjoints)
    adj = {**gparams, **{f"{n}@init": g for n, g in ginit.items()}}
    states = model.full.states
    norms = {n: norms[n] if n in norms else np.zeros(T) for n in states}
    kept = {f"{n}@{t}": a[t] for n, a in kept.items() if n in states for t in range(T)}
    final = {n: vals[n][-1] for n in states}
    return lval, adj, norms, vals[out].transpose(1, 0, 2), final, kept


def _loss(model, Y, targets, weights, loss, at):
    """The loss of the outputs of every step, Y (T, B, O), and dL/dY."""
    T, _, O = Y.shape
    if loss == "mse" and at == "all":  # in Y's (time-major) order: dL/dY needs no copy
        return mse_and_grad(Y, targets.transpose(1, 0, 2), weights.transpose(1, 0, 2))
    y = Y.transpose(1, 0, 2) if at == "all" else Y[-1]
    if loss == "mse":
        value, gy = mse_and_grad(y, targets, weights)
    else:
        prog = loss_program(loss, at, T, O, model.dtype)
        vals = ir.interpret(prog, {"Y": y, "targets": targets, "weights": weights})
        gy = ir.backward(prog, vals, {"loss": np.ones((), model.dtype)})["Y"]
        value = float(vals["loss"])
    if at == "all":
        return value, np.ascontiguousarray(gy.transpose(1, 0, 2))
    dY = np.zeros_like(Y)
    dY[-1] = gy
    return value, dY


def _run_program(model, plan, xs, targets, weights, loss, at, initial_state, k, mask, executor,
                 keep_adjoints, carried, train=False):
    """The unrolled program, walked by an executor of rnn/program/executor.py."""
    B, T, _ = xs.shape
    ex = REFERENCE
    prog, un = model.program(T, train, loss=loss, at=at, masked=mask is not None, truncate=k)
    env = model.feed(un, xs, initial_state, mask)
    env.update(carried or {})
    env["targets"], env["weights"] = targets, weights
    state_vars = {v.name: (v.node, t) for n, vs in un.values.items()
                  if n in model.full.states for t, v in enumerate(vs)}
    final_vars = {un.values[n][-1].name for n in model.full.states}
    final_vars |= {v.name for v in un.outputs()}
    vals = ex.forward(prog, env, keep=final_vars, watch=state_vars)
    norms = {n: np.zeros(T) for n in model.full.states}
    kept = {}

    def seen(var, g):
        hit = state_vars.get(var.name)
        if hit is not None:
            norms[hit[0]][hit[1]] = np.linalg.norm(g)
        if keep_adjoints:
            kept[var.name] = g

    wrt = set(model._params) | {v.name for v in un.init.values()}
    adj = ex.backward(prog, vals, {"loss": np.ones((), model.dtype)}, seen, wrt)
    final = {n: vals[un.values[n][-1].name] for n in model.full.states}
    ys = np.stack([vals[v.name] for v in un.outputs()], axis=1)
    return float(vals["loss"]), adj, norms, ys, final, kept


def _windows(model, xs, targets, weights, loss, at, initial_state, k12, mask, executor,
             train=False):
    """Williams & Peng BPTT(k1, k2): every k1 steps, backpropagate the last k1 steps'
    losses through the last k2 steps, starting from the (detached) state there."""
    k1, k2 = k12
    B, T, _ = xs.shape
    cell = model.cell_for(train)
    deepest = max((a.delay for nd in cell.nodes for a in nd.args if isinstance(a, Ref)),
                  default=0)
    if deepest > 1:
        raise ValueError(f"truncate=(k1, k2) needs a cell whose delays are all 1; this one "
                         f"reads v[t-{deepest}]: use truncate=k instead")
    if at == "last":  # the same loss, written per step: only step T-1 weighs
        full_t = np.zeros((B, T) + targets.shape[1:], targets.dtype)
        full_t[:, -1] = targets
        full_w = np.zeros((B, T) + weights.shape[1:], weights.dtype)
        full_w[:, -1] = weights
        targets, weights = full_t, full_w
    # one forward pass over the whole sequence: the loss, and the states windows start from
    lval, ys, value, delayed = _whole(model, xs, targets, weights, loss, initial_state, mask,
                                      executor, train)
    parts = model.split_inputs(xs, cell)
    ends = list(range(k1 - 1, T, k1))
    if ends[-1] != T - 1:
        ends.append(T - 1)
    total = None
    adj_sum = {n: [0.0] * T for n in cell.states}
    start_loss = 0
    for e in ends:
        s = max(0, e - k2 + 1)
        w = np.zeros_like(weights)
        w[:, start_loss:e + 1] = weights[:, start_loss:e + 1]
        start_loss = e + 1
        init, carried = initial_state, {}
        if s > 0:  # start from the forward pass's values at s-1, detached
            init = model.split_layers({n: value(n, s - 1) for n in cell.states})
            carried = {f"{n}@init": value(n, s - 1) for n in delayed if n not in cell.states}
            carried.update({f"{x}@init": parts[x][:, s - 1] for x in cell.input_delays})
        sl = slice(s, e + 1)
        res = _run(model, xs[:, sl], targets[:, sl], w[:, sl], loss, "all", init, None,
                   None if mask is None else mask[:, sl], executor, keep_adjoints=True,
                   carried=carried, train=train)
        if total is None:
            total = res
            total.grads = {p: g.copy() for p, g in res.grads.items()}
            total.state_grads = {k: g.copy() for k, g in res.state_grads.items()}
        else:
            for p, g in res.grads.items():
                total.grads[p] += g
            if s == 0:  # only windows that reach back to t = 0 see the initial state
                for k, g in res.state_grads.items():
                    total.state_grads[k] += g
        for n in cell.states:  # the adjoint of a state at step t sums over windows
            for t in range(s, e + 1):
                adj_sum[n][t] = adj_sum[n][t] + res.adjoints.get(f"{n}@{t - s}", 0.0)
    norms = {n: np.array([np.linalg.norm(a) for a in adj_sum[n]]) for n in cell.states}
    final = {n: value(n, T - 1) for n in cell.states}
    total.loss, total.outputs = lval, ys
    total.final_state, total.step_norms = model.split_layers(final), model.split_layers(norms)
    total.adjoints = {}
    return total


def _whole(model, xs, targets, weights, loss, initial_state, mask, executor, train=False):
    """One forward pass over the whole sequence: (loss, outputs (B, T, O), the value of
    a cell variable at a step, the variables read with a delay)."""
    T = xs.shape[1]
    plan = model.plan(mask is not None, train) if executor == "compiled" else None
    if plan is not None:
        feed, init = model.loop_inputs(plan, xs, initial_state, mask)
        vals = plan.forward(feed, model.step_params(plan), init)
        Y = vals[model.full.outputs[0]]
        return (_loss(model, Y, targets, weights, loss, "all")[0], Y.transpose(1, 0, 2),
                lambda n, t: vals[n][t], [s for s in plan.step.states
                                          if s not in model.full.inputs])
    prog, un = model.program(T, train, loss=loss, at="all", masked=mask is not None)
    env = model.feed(un, xs, initial_state, mask)
    env["targets"], env["weights"] = targets, weights
    cell = un.cell
    every = {v.name for n in list(cell.states) + cell.outputs for v in un.values[n]}
    vals = REFERENCE.forward(prog, env, keep=every)
    ys = np.stack([vals[v.name] for v in un.outputs()], axis=1)
    return (float(vals["loss"]), ys, lambda n, t: vals[un.values[n][t].name],
            [n for n in un.init if n in un.values])
