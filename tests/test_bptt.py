"""BPTT through the unrolled program: finite differences, an independent numpy BPTT,
truncation, ragged batches, the two executors, and bad input."""

import numpy as np
import pytest

import rnn
from engine import DTypeError, ShapeError
from rnn import Cell, Model, cells
from tools.gradcheck import check_bptt

R = np.random.default_rng(0)


def data(B, T, I, O=None):
    xs = R.standard_normal((B, T, I))
    return xs, R.standard_normal((B, T, O or I))


CUSTOM = {
    # coupled input and forget gates (CIFG): i = 1 - f
    "cifg_lstm": ("""
z = W @ x + U @ h[t-1] + b
f_, g, o = split(z, 3)
f = sigmoid(f_)
c = f * c[t-1] + (1 - f) * tanh(g)
h = sigmoid(o) * tanh(c)
""", {"h": 3, "c": 3}, {}),
    # minimal gated unit (Zhou et al. 2016)
    "mgu": ("""
f = sigmoid(Wf @ x + Uf @ h[t-1] + bf)
n = tanh(Wn @ x + Un @ (f * h[t-1]) + bn)
h = (1 - f) * h[t-1] + f * n
""", {"h": 3}, {}),
    # two steps back and a delayed input
    "delay2": ("h = tanh(W @ x + V @ x[t-1] + U @ h[t-2] + b) * 0.9 + 0.1 * softplus(h[t-1])",
               {"h": 3}, {}),
    "softmax_attn": ("a = softmax(A @ h[t-1])\nh = tanh(W @ x + U @ (a * h[t-1]))",
                     {"h": 3}, {}),
}


def custom(name, I=2):
    text, states, sizes = CUSTOM[name]
    return Cell.from_equations(text, inputs={"x": I}, states=states, sizes=sizes)


@pytest.mark.parametrize("name", sorted(set(cells.BUILTINS) - {"rnn"}))
@pytest.mark.parametrize("T", [1, 4])
def test_builtin_gradients(name, T):
    m = Model(cells.BUILTINS[name](2, 3), head=2, seed=T)
    xs, ys = data(2, T, 2, 2)
    check_bptt(m, xs, ys)


@pytest.mark.parametrize("name", sorted(CUSTOM))
@pytest.mark.parametrize("T", [1, 5])
def test_custom_cell_gradients(name, T):
    m = Model(custom(name), seed=1)
    xs, _ = data(3, T, 2)
    check_bptt(m, xs, R.standard_normal((3, T, 3)))


def test_stacked_many_to_one_cross_entropy_gradients():
    m = Model(cells.gru(2, 3), layers=2, head=4)
    xs, _ = data(3, 5, 2)
    check_bptt(m, xs, np.array([0, 3, 1]), loss="cross_entropy", at="last")


def test_ragged_and_truncated_gradients():
    m = Model(cells.lstm(2, 3), head=1)
    xs, ys = data(3, 6, 2, 1)
    mask = np.ones((3, 6))
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    check_bptt(m, xs, ys, mask=mask)
    check_bptt(m, xs, ys[:, -1], mask=mask, at="last")


# ---------------------------------------------------------------- independent numpy BPTT
def numpy_elman(p, xs, ys, h0):
    """Plain numpy BPTT for nn.RNN(tanh) with mean squared error over (B, T, H)."""
    B, T, _ = xs.shape
    hs, h = [h0], h0
    for t in range(T):
        h = np.tanh(xs[:, t] @ p["weight_ih_l0"].T + p["bias_ih_l0"]
                    + h @ p["weight_hh_l0"].T + p["bias_hh_l0"])
        hs.append(h)
    H = np.stack(hs[1:], 1)
    loss = np.mean((H - ys) ** 2)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next = np.zeros_like(h0)
    norms = np.zeros(T)
    for t in reversed(range(T)):
        dh = 2 * (H[:, t] - ys[:, t]) / H.size + dh_next
        norms[t] = np.linalg.norm(dh)
        da = dh * (1 - hs[t + 1] ** 2)
        g["weight_ih_l0"] += da.T @ xs[:, t]
        g["weight_hh_l0"] += da.T @ hs[t]
        g["bias_ih_l0"] += da.sum(0)
        g["bias_hh_l0"] += da.sum(0)
        dh_next = da @ p["weight_hh_l0"]
    return loss, g, dh_next, norms


def numpy_lstm(p, xs, ys, h0, c0):
    """Plain numpy BPTT for nn.LSTM (gates i, f, g, o), mean squared error on h."""
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    B, T, _ = xs.shape
    Hn = h0.shape[1]
    h, c, cache, outs = h0, c0, [], []
    for t in range(T):
        z = xs[:, t] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T \
            + p["bias_hh_l0"]
        i, f, gg, o = sig(z[:, :Hn]), sig(z[:, Hn:2 * Hn]), np.tanh(z[:, 2 * Hn:3 * Hn]), \
            sig(z[:, 3 * Hn:])
        cp, hp = c, h
        c = f * c + i * gg
        h = o * np.tanh(c)
        cache.append((hp, cp, i, f, gg, o, np.tanh(c)))
        outs.append(h)
    Y = np.stack(outs, 1)
    loss = np.mean((Y - ys) ** 2)
    g = {k: np.zeros_like(v) for k, v in p.items()}
    dh_next, dc_next = np.zeros_like(h0), np.zeros_like(c0)
    for t in reversed(range(T)):
        hp, cp, i, f, gg, o, tc = cache[t]
        dh = 2 * (Y[:, t] - ys[:, t]) / Y.size + dh_next
        do = dh * tc
        dc = dh * o * (1 - tc ** 2) + dc_next
        dz = np.concatenate([dc * gg * i * (1 - i), dc * cp * f * (1 - f),
                             dc * i * (1 - gg ** 2), do * o * (1 - o)], 1)
        g["weight_ih_l0"] += dz.T @ xs[:, t]
        g["weight_hh_l0"] += dz.T @ hp
        g["bias_ih_l0"] += dz.sum(0)
        g["bias_hh_l0"] += dz.sum(0)
        dh_next, dc_next = dz @ p["weight_hh_l0"], dc * f
    return loss, g, dh_next, dc_next


@pytest.mark.parametrize("executor", ["reference", "compiled"])
def test_elman_matches_numpy_bptt(executor):
    m = Model(cells.elman(3, 4), seed=2)
    xs, ys = data(5, 7, 3, 4)
    h0 = R.standard_normal((5, 4))
    res = rnn.bptt(m, xs, ys, initial_state={"h": h0}, executor=executor)
    loss, g, dh0, norms = numpy_elman(m.params, xs, ys, h0)
    assert abs(res.loss - loss) < 1e-12
    for k in g:
        np.testing.assert_allclose(res.grads[k], g[k], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.state_grads["h"], dh0, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.step_norms["h"], norms, rtol=1e-10)


def test_lstm_matches_numpy_bptt():
    m = Model(cells.lstm(3, 4), seed=3)
    xs, ys = data(5, 6, 3, 4)
    h0, c0 = R.standard_normal((5, 4)), R.standard_normal((5, 4))
    res = rnn.bptt(m, xs, ys, initial_state={"h": h0, "c": c0})
    loss, g, dh0, dc0 = numpy_lstm(m.params, xs, ys, h0, c0)
    assert abs(res.loss - loss) < 1e-12
    for k in g:
        np.testing.assert_allclose(res.grads[k], g[k], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.state_grads["h"], dh0, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(res.state_grads["c"], dc0, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kw", [{}, {"truncate": 3}, {"at": "last"},
                                {"mask": "ragged"}, {"truncate": (2, 4)}])
def test_executors_agree(kw):
    m = Model(cells.peephole_lstm(2, 3), layers=2, head=1, seed=4)
    xs, ys = data(3, 7, 2, 1)
    kw = dict(kw)
    if kw.get("mask") == "ragged":
        kw["mask"] = (np.arange(7)[None] < np.array([[7], [3], [5]])).astype(float)
    if kw.get("at") == "last":
        ys = ys[:, -1]
    a = rnn.bptt(m, xs, ys, executor="reference", **kw)
    b = rnn.bptt(m, xs, ys, executor="compiled", **kw)
    assert abs(a.loss - b.loss) < 1e-10
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], atol=1e-10)
    for s in a.step_norms:
        np.testing.assert_allclose(a.step_norms[s], b.step_norms[s], atol=1e-10)


# ---------------------------------------------------------------- truncation
def test_truncate_k_cuts_gradients_every_k_steps():
    m = Model(cells.elman(2, 3), head=1)
    xs, ys = data(2, 8, 2, 1)
    full, cut = rnn.bptt(m, xs, ys), rnn.bptt(m, xs, ys, truncate=3)
    assert cut.loss == full.loss  # values flow on
    assert not np.allclose(cut.grads["weight_hh_l0"], full.grads["weight_hh_l0"])
    np.testing.assert_array_equal(rnn.bptt(m, xs, ys, truncate=8).grads["weight_hh_l0"],
                                  full.grads["weight_hh_l0"])
    # truncate=k is exactly a sum of independent windows [0,3), [3,6), [6,8) started from
    # the carried (detached) state
    total = {k: 0 for k in m.params}
    state = None
    for s in (0, 3, 6):
        e = min(s + 3, 8)
        w = rnn.bptt(m, xs[:, s:e], ys[:, s:e], initial_state=state)
        for k in total:
            total[k] = total[k] + w.grads[k] * (e - s) / 8  # each window's mean weighs by length
        state = w.final_state
    for k in total:
        np.testing.assert_allclose(cut.grads[k], total[k], rtol=1e-10, atol=1e-14)


def test_williams_peng_equal_windows_equals_truncate_k():
    m = Model(cells.gru(2, 3), head=1)
    xs, ys = data(2, 9, 2, 1)
    a, b = rnn.bptt(m, xs, ys, truncate=3), rnn.bptt(m, xs, ys, truncate=(3, 3))
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a.step_norms["h"], b.step_norms["h"], rtol=1e-10)


def test_williams_peng_one_and_full_history_is_full_bptt():
    m = Model(cells.lstm(2, 3), head=1)
    xs, ys = data(2, 6, 2, 1)
    a, b = rnn.bptt(m, xs, ys), rnn.bptt(m, xs, ys, truncate=(1, 6))
    assert abs(a.loss - b.loss) < 1e-12
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(a.state_grads["c"], b.state_grads["c"], rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------- ragged batches
def test_masked_steps_carry_the_state_and_add_no_loss():
    m = Model(cells.lstm(2, 3), head=1)
    xs, ys = data(3, 6, 2, 1)
    lens = [6, 2, 4]
    mask = (np.arange(6)[None] < np.array(lens)[:, None]).astype(float)
    res = rnn.bptt(m, xs, ys[:, -1], at="last", mask=mask)
    grads, losses = {k: 0 for k in m.params}, []
    for b, n in enumerate(lens):
        one = rnn.bptt(m, xs[b:b + 1, :n], ys[b:b + 1, -1], at="last")
        losses.append(one.loss)
        for k in grads:
            grads[k] = grads[k] + one.grads[k] / 3
        np.testing.assert_allclose(res.final_state["h"][b], one.final_state["h"][0])
    assert abs(res.loss - np.mean(losses)) < 1e-12
    for k in grads:
        np.testing.assert_allclose(res.grads[k], grads[k], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------- bad input
@pytest.fixture
def model():
    return Model(cells.lstm(2, 3), head=1)


def test_bad_xs_shape(model):
    with pytest.raises(ShapeError, match=r"\(B, T, 2\), got shape \(4, 2\)"):
        rnn.bptt(model, np.zeros((4, 2)), np.zeros((4, 1)))


def test_bad_feature_size(model):
    with pytest.raises(ShapeError, match="5 features per step but the model takes 2"):
        model.forward(np.zeros((1, 3, 5)))


def test_zero_steps(model):
    with pytest.raises(ShapeError, match="T = 0"):
        model.forward(np.zeros((1, 0, 2)))


def test_bad_state_shape(model):
    with pytest.raises(ShapeError, match=r"initial_state\['h'\] must be \(1, 3\)"):
        model.forward(np.zeros((1, 3, 2)), initial_state={"h": np.zeros((3,))})


def test_dtype_mismatch_is_not_cast(model):
    with pytest.raises(DTypeError, match="xs is float32 but the model is float64"):
        model.forward(np.zeros((1, 3, 2), np.float32))


def test_nan_input(model):
    xs = np.zeros((1, 3, 2))
    xs[0, 1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.forward(xs)
    with pytest.raises(ValueError, match=r"initial_state\['c'\] holds NaN"):
        model.forward(np.zeros((1, 3, 2)), initial_state={"c": np.full((1, 3), np.nan)})


def test_bad_targets(model):
    with pytest.raises(ValueError, match=r"must be \(1, 3, 1\)"):
        rnn.bptt(model, np.zeros((1, 3, 2)), np.zeros((1, 3)))


def test_float32_model_stays_float32():
    m = Model(cells.gru(2, 3), head=1, dtype="float32")
    xs, ys = (a.astype(np.float32) for a in data(2, 4, 2, 1))
    res = rnn.bptt(m, xs, ys)
    assert all(g.dtype == np.float32 for g in res.grads.values())
    assert res.outputs.dtype == np.float32


def test_unroll_graph_maps_back_and_shares_parameters():
    import networkx as nx

    u = rnn.unroll(cells.lstm(2, 3), steps=5)
    g = u.graph
    assert nx.is_directed_acyclic_graph(g)
    assert g.nodes["h@3"]["cell_node"] == "h" and g.nodes["h@3"]["step"] == 3
    users = {g.nodes[v]["step"] for v in g.successors("weight_hh")}
    assert users == {0, 1, 2, 3, 4}  # one parameter node feeds every step
    assert g.has_edge("c@init", "c.2@0") and g.has_edge("c@1", "c.2@2")


def test_unroll_ten_thousand_steps_does_not_recurse():
    m = Model(cells.elman(1, 2), head=1)
    xs = R.standard_normal((1, 10000, 1))
    res = rnn.bptt(m, xs, np.zeros((1, 10000, 1)))
    assert np.isfinite(res.loss) and res.step_norms["h"].shape == (10000,)


def test_learned_initial_states():
    m = Model(cells.lstm(2, 3), layers=2, head=1, learn_initial=("h", "c"), seed=5)
    assert m.params["init_c_l1"].shape == (3,) and not m.params["init_h_l0"].any()
    m.load_params({"init_h_l0": np.array([0.3, -0.2, 0.1]),
                   "init_c_l1": np.array([-0.4, 0.5, 0.2])}, strict=False)
    xs, ys = data(3, 4, 2, 1)
    check_bptt(m, xs, ys)  # the init_* vectors are parameters like the others
    res = rnn.bptt(m, xs, ys)
    np.testing.assert_allclose(res.grads["init_c_l1"], res.state_grads["c"][1].sum(0))
    given = rnn.bptt(m, xs, ys, initial_state={"h": np.zeros((2, 3, 3))})
    assert not given.grads["init_h_l0"].any() and given.grads["init_c_l0"].any()
    assert "init_h_l0" not in rnn.interop.to_torch(m)
    with pytest.raises(ValueError, match="learn_initial names \\['q'\\]"):
        Model(cells.gru(2, 3), learn_initial=("q",))
