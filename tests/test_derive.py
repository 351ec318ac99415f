"""``unroll derive``: the printed backward equations, evaluated line by line with numpy
for every example and step, give the engine's gradients (float64, 1e-10)."""

import re

import numpy as np
import pytest

import rnn
from rnn import Cell, Model, cells
from tools.derive import derive

CELLS = {
    "mix": ("a = softmax(A @ h[t-1]) * s\n"
            "m = mean(a) + sum(relu(h[t-1]) ** 2.0) / 7\n"
            "lo, hi = split(B @ x, 2)\n"
            "h = tanh(W @ x + U @ (a * h[t-1]) + concat(lo / (1 + exp(hi * hi)), hi) * m)"
            " - 0.5 * softplus(h[t-2]) + log(1 + sigmoid(sum(k * x[t-1])))",
            {"h": 4}, {"a": 4, "lo": 2, "hi": 2}),
    "layernorm_lstm": ("z = layernorm(W @ x + U @ h[t-1]) * gz + bz\n"
                       "i, f, g, o = split(z, 4)\n"
                       "c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)\n"
                       "h = sigmoid(o) * tanh(layernorm(c) * gc + bc)", {"h": 3, "c": 3}, {}),
}


def _numpy_env():
    def place(g, lo, w):
        out = np.zeros(w)
        out[lo:lo + len(g)] = g
        return out

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    return {"np": np, "outer": np.outer, "concat": lambda *a: np.concatenate(a),
            "place": place, "sigmoid": sigmoid, "tanh": np.tanh, "exp": np.exp,
            "log": np.log, "softplus": lambda v: np.logaddexp(0, v), "softmax": softmax,
            "relu": lambda v: np.maximum(v, 0),
            "sum": lambda v: np.atleast_1d(np.sum(v)), "sqrt": np.sqrt, "var": np.var,
            "layernorm": lambda v: (v - v.mean()) / np.sqrt(v.var() + 1e-5),
            "mean": lambda v: np.atleast_1d(np.mean(v))}


def _py(expr):
    """The printed notation as Python: v[t-k] -> v__k, dv[t] -> carry_v."""
    expr = re.sub(r"\bd(\w+)\[t\]", r"carry_\1", expr)
    return re.sub(r"\b(\w+)\[t-(\d+)\]", r"\1__\2", expr)


def evaluate(cell, params, xs, dys, d):
    """Gradients from the printed lines: forward lines for every step, then the
    backward lines from t = T-1 down, per example; (param grads, initial-state grads)."""
    B, T, _ = xs.shape
    base = _numpy_env()
    grads = {p: np.zeros(np.shape(v)) for p, v in params.items()}
    ginit = {s: np.zeros((B, cell.shapes[s][0])) for s in d.states if s in cell.shapes}
    fwd = [compile(_py(ln), "<forward>", "exec") for ln in d.forward]
    delays = {int(k) for ln in d.forward + d.backward for k in re.findall(r"\[t-(\d+)\]", ln)}
    for b in range(B):
        envs, hist = [], {}
        for t in range(T):
            env = dict(base, **params, x=xs[b, t])
            for v in set(d.states) | {"x"}:
                for k in delays:
                    past = hist.get((v, t - k))
                    env[f"{v}__{k}"] = past if past is not None else np.zeros(
                        cell.shapes[v][0] if v != "x" else xs.shape[2])
            for code in fwd:
                exec(code, env)
            for v in set(d.states) | {"x"}:
                hist[(v, t)] = env[v]
            envs.append(env)
        out = cell.outputs[0]
        carried = [s for s in d.states if s in cell.shapes] + [out]
        carry = {(s, t): np.zeros(cell.shapes[s][0]) for s in carried for t in range(T)}
        for t in range(T):
            carry[(out, t)] = carry[(out, t)] + dys[b, t]
        for t in range(T - 1, -1, -1):
            env = envs[t]
            for s in carried:
                env[f"carry_{s}"] = carry[(s, t)]
            for p in params:
                env[f"d{p}"] = np.zeros(np.shape(params[p]))
            for ln in d.backward:
                target, op, expr = re.match(r"(\S+) (\+?=) (.*)", ln).groups()
                val = eval(_py(expr), env)
                sent = re.match(r"d(\w+)\[t-(\d+)\]$", target)
                if sent:
                    s, k = sent.group(1), int(sent.group(2))
                    if t - k >= 0:
                        carry[(s, t - k)] = carry[(s, t - k)] + val
                    elif s in ginit:  # before t = 0: the initial value
                        ginit[s][b] += val
                elif op == "+=":
                    env[target] = env[target] + val
                else:
                    env[target] = val
            for p in params:
                grads[p] += env[f"d{p}"]
    return grads, ginit


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "gru_classic", "peephole_lstm",
                                  "jordan", "mix", "layernorm_lstm"])
def test_the_printed_equations_give_the_engines_gradients(name):
    if name in CELLS:
        text, states, sizes = CELLS[name]
        cell = Cell.from_equations(text, inputs={"x": 2}, states=states, sizes=sizes)
    else:
        cell = cells.BUILTINS[name](2, 3)
    model = Model(cell, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    B, T = 2, 5
    xs = rng.standard_normal((B, T, 2))
    ys = rng.standard_normal((B, T, cell.shapes[cell.outputs[0]][0]))
    res = rnn.bptt(model, xs, ys, loss="mse")
    dys = 2 * (res.outputs - ys) / ys.size  # dL/dh of the mean squared error
    params = {p: model.params[f"{p}_l0"] for p in cell.params}
    d = derive(cell)
    grads, ginit = evaluate(cell, params, xs, dys, d)
    for p in cell.params:
        np.testing.assert_allclose(grads[p], res.grads[f"{p}_l0"], atol=1e-10, err_msg=p)
    assert set(res.state_grads) <= set(ginit)
    for s in res.state_grads:
        np.testing.assert_allclose(ginit[s], res.state_grads[s], atol=1e-10, err_msg=s)


def test_lstm_cell_state_path_is_the_forget_gate():
    """The line students look for: the cell state's gradient goes back through the
    forget gate elementwise; the hidden state's through a matrix."""
    d = derive(cells.lstm(2, 3))
    assert "dc[t-1] += dc * sigmoid(f)" in d.through_time
    assert any(ln.startswith("dh[t-1] += weight_hh.T @ ") for ln in d.through_time)
    text = d.text()
    assert "elementwise, no matrix" in text and "a matrix product" in text


def test_elman_reads_like_the_textbook():
    d = derive(cells.elman(2, 3))
    assert d.backward[0] == "dh_5 = dh[t] * (1 - h * h)"
    assert "dh[t-1] += weight_hh.T @ dh_5" in d.backward
    assert "dweight_hh += outer(dh_5, h[t-1])" in d.backward
