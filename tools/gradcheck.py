"""Gradient checking: central finite differences and a VJP/JVP inner product, float64.

>>> import numpy as np
>>> from tools.gradcheck import gradcheck
>>> gradcheck(lambda a, b: (a @ b).tanh(), np.ones((2, 3)), np.ones((3, 4)) / 7).ok
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.errors import UnrollError

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3


class GradcheckError(UnrollError, AssertionError):
    """Analytic and numerical derivatives disagree."""


@dataclass
class GradcheckResult:
    ok: bool
    checked: int  # number of derivative entries compared
    max_abs_err: float
    failures: list[str] = field(default_factory=list)
    truncation_gap: float | None = None  # check_bptt(truncate=k): ||g_k - g|| / ||g||

    def __str__(self):
        head = "PASS" if self.ok else "FAIL"
        line = (f"{head}: {self.checked} derivatives, "
                f"max |analytic - numeric| = {self.max_abs_err:.2e}")
        return "\n".join([line] + self.failures[:10])


def check_vjp(fun: Callable[..., np.ndarray], vjp: Callable[..., Sequence[np.ndarray]],
              args: Sequence[np.ndarray], names: Sequence[str] | None = None, *, what: str = "f",
              eps: float = EPS, atol: float = ATOL, rtol: float = RTOL, max_per_input: int = 64,
              seed: int = 0, raise_on_fail: bool = True) -> GradcheckResult:
    """Compare ``vjp(u, *args)`` (cotangents of <u, fun(*args)>) with central differences.

    Checks up to ``max_per_input`` entries of every input one by one, then the whole
    VJP against a JVP along one random direction (<J^T u, v> == <u, J v>).
    """
    rng = np.random.default_rng(seed)
    args = [np.array(a, dtype=np.float64) for a in args]
    names = list(names or [f"input {i}" for i in range(len(args))])
    y = np.asarray(fun(*args))
    u = rng.standard_normal(y.shape)
    grads = [np.asarray(g, dtype=np.float64) if g is not None else np.zeros_like(a)
             for g, a in zip(vjp(u, *args), args)]

    def proj(xs):
        return float(np.sum(u * np.asarray(fun(*xs))))

    failures, worst, checked = [], 0.0, 0
    for i, (a, g) in enumerate(zip(args, grads)):
        if g.shape != a.shape:
            failures.append(f"{what}: gradient for {names[i]} has shape {g.shape}, expected "
                            f"{a.shape}")
            continue
        idxs = list(np.ndindex(a.shape))
        if len(idxs) > max_per_input:
            idxs = [idxs[j] for j in rng.choice(len(idxs), max_per_input, replace=False)]
        for ix in idxs:
            plus = [x.copy() for x in args]
            minus = [x.copy() for x in args]
            plus[i][ix] += eps
            minus[i][ix] -= eps
            num = (proj(plus) - proj(minus)) / (2 * eps)
            err = abs(g[ix] - num)
            worst, checked = max(worst, err), checked + 1
            if not err <= atol + rtol * abs(num):
                failures.append(f"{what}: d/d {names[i]}{list(ix)}: analytic {g[ix]:.8g} vs "
                                f"numeric {num:.8g} (off by {err:.2e})")
    v = [rng.standard_normal(a.shape) for a in args]
    plus = [a + eps * d for a, d in zip(args, v)]
    minus = [a - eps * d for a, d in zip(args, v)]
    jvp = (proj(plus) - proj(minus)) / (2 * eps)
    vjp_v = sum(float(np.sum(g * d)) for g, d in zip(grads, v))
    err = abs(jvp - vjp_v)
    worst, checked = max(worst, err), checked + 1
    if not err <= atol + rtol * abs(jvp):
        failures.append(f"{what}: <vjp, v> = {vjp_v:.8g} but <u, jvp> = {jvp:.8g} "
                        f"(off by {err:.2e}) along a random direction")
    res = GradcheckResult(not failures, checked, worst, failures)
    if raise_on_fail and failures:
        raise GradcheckError(str(res))
    return res


def gradcheck(fn: Callable, *arrays: np.ndarray, **kw) -> GradcheckResult:
    """Check a function of ``engine.Tensor``s: its backward() against finite differences."""
    from engine import Tensor, no_grad

    def fun(*xs):
        with no_grad():
            return fn(*[Tensor(x) for x in xs]).data

    def vjp(u, *xs):
        ts = [Tensor(x, requires_grad=True) for x in xs]
        fn(*ts).backward(u)
        return [t.grad for t in ts]

    kw.setdefault("what", getattr(fn, "__name__", "f"))
    return check_vjp(fun, vjp, arrays, **kw)


def _slice(xs, a, b):
    if isinstance(xs, dict):  # a cell with several inputs
        return {n: np.asarray(v)[:, a:b] for n, v in xs.items()}
    return np.asarray(xs)[:, a:b]


def truncated_loss(model, xs, targets, k: int, initial_state=None, boundary=None,
                   loss: str = "mse", at: str = "all") -> float:
    """The objective whose gradient truncated BPTT (``truncate=k``) computes: the loss of
    the model run window by window (steps [0, k), [k, 2k), ...), each window after the
    first starting from ``boundary[j]``, a state held fixed (detached). With ``boundary``
    from an unperturbed run (see ``boundary_states``) its value is the full loss, and its
    finite differences are the truncated gradient. Means are weighted by window length,
    so the windows add up to the loss over all steps.
    """
    import rnn

    T = (next(iter(xs.values())) if isinstance(xs, dict) else np.asarray(xs)).shape[1]
    starts = list(range(0, T, k))
    total = 0.0
    for j, a in enumerate(starts):
        b = min(a + k, T)
        if at == "last" and b < T:
            continue  # no loss in this window: it cannot change the objective
        state = initial_state if j == 0 else boundary[j]
        tgt = targets if at == "last" else np.asarray(targets)[:, a:b]
        res = rnn.bptt(model, _slice(xs, a, b), tgt, loss=loss, at=at, initial_state=state)
        total += res.loss * ((b - a) / T if at == "all" else 1.0)
    return total


def boundary_states(model, xs, k: int, initial_state=None) -> list:
    """The state entering each window of ``truncated_loss`` (None for the first), from
    one run of the model as it is now."""
    T = (next(iter(xs.values())) if isinstance(xs, dict) else np.asarray(xs)).shape[1]
    return [None] + [model.forward(_slice(xs, 0, a), initial_state=initial_state)[1]
                     for a in range(k, T, k)]


def _flat(grads: dict) -> np.ndarray:
    return np.concatenate([np.ravel(g) for g in grads.values()]) if grads else np.zeros(0)


def check_bptt(model, xs, targets, *, initial_state=None, max_per_input: int = 16,
               raise_on_fail: bool = True, **bptt_kw) -> GradcheckResult:
    """``rnn.bptt`` against finite differences: every parameter and every initial state.

    The model must be float64. Runs the loss for perturbed copies of the weights.
    With ``truncate=k`` (k < T) the gradient is that of a surrogate, the loss with the
    state crossing steps k, 2k, ... held fixed, so the finite differences are taken of
    that (``truncated_loss``), not of the full loss; ``result.truncation_gap`` is then
    ||g_truncated - g_full|| / ||g_full||, what truncation changes.
    """
    import rnn

    if model.dtype != "float64":
        raise ValueError(f"gradcheck needs a float64 model, got {model.dtype}")
    names = list(model.params)
    B = np.asarray(next(iter(xs.values())) if isinstance(xs, dict) else xs).shape[0]
    T = np.asarray(next(iter(xs.values())) if isinstance(xs, dict) else xs).shape[1]
    init = dict(initial_state or {})
    for s, H in model.cell.states.items():
        if s in model.learn_initial:
            continue  # a parameter: checked with the others
        n = len(model.layer_names(s))  # layers x directions, as torch's h0
        shape = (B, H) if n == 1 else (n, B, H)
        init.setdefault(s, np.random.default_rng(1).uniform(-0.5, 0.5, shape))
    snames = list(init)
    saved = dict(model._params)  # the private write path: perturbed copies swapped in
    k = bptt_kw.get("truncate")
    if isinstance(k, tuple):
        raise ValueError("gradcheck of truncate=(k1, k2) is not supported: its gradient is "
                         "no single objective's; use truncate=k")
    if k is not None and k >= T:
        k = None  # k >= T is full BPTT
    if k is not None and (bptt_kw.get("mask") is not None or model.bidirectional
                          or bptt_kw.get("train")):
        raise ValueError("gradcheck with truncate=k checks a plain forward model on an "
                         "unmasked batch (no mask, bidirectional or train=True)")
    boundary = boundary_states(model, xs, k, init) if k is not None else None

    def run(*arrays):
        model._params = dict(zip(names, arrays[:len(names)]))
        state = dict(zip(snames, arrays[len(names):]))
        try:
            return rnn.bptt(model, xs, targets, initial_state=state, **bptt_kw)
        finally:
            model._params = saved

    def fun(*arrays):
        if k is None:
            return np.array(run(*arrays).loss)
        model._params = dict(zip(names, arrays[:len(names)]))
        try:
            return np.array(truncated_loss(
                model, xs, targets, k, dict(zip(snames, arrays[len(names):])), boundary,
                bptt_kw.get("loss", "mse"), bptt_kw.get("at", "all")))
        finally:
            model._params = saved

    def vjp(u, *arrays):
        res = run(*arrays)
        return [u * res.grads[n] for n in names] + [u * res.state_grads[s] for s in snames]

    args = [saved[n] for n in names] + [init[s] for s in snames]
    labels = names + [f"initial {s}" for s in snames]
    res = check_vjp(fun, vjp, args, labels, what="bptt", max_per_input=max_per_input,
                    raise_on_fail=raise_on_fail)
    if k is not None:
        full_kw = {**bptt_kw, "truncate": None}
        g_full = _flat(rnn.bptt(model, xs, targets, initial_state=init, **full_kw).grads)
        g_cut = _flat(rnn.bptt(model, xs, targets, initial_state=init, **bptt_kw).grads)
        norm = np.linalg.norm(g_full)
        res.truncation_gap = float(np.linalg.norm(g_cut - g_full) / norm) if norm else 0.0
    return res
