"""The one-step Jacobians behind vanishing and exploding gradients (tools/jacobian.py)."""

import numpy as np
import pytest

import rnn
from rnn import cells
from tools.jacobian import spectral_norms, state_names, step_jacobians


def test_elman_jacobian_is_the_textbook_one():
    """h_t = tanh(W x_t + U h_(t-1) + b): dh_t/dh_(t-1) = diag(1 - h_t^2) U."""
    m = rnn.Model(cells.elman(2, 4), dtype="float64", seed=0)
    xs = np.random.default_rng(0).standard_normal((2, 6, 2))
    J = step_jacobians(m, xs, example=1)
    ys, _ = m.forward(xs)
    U = m.params["weight_hh_l0"]
    for t in range(6):
        np.testing.assert_allclose(J[t], (1 - ys[1, t] ** 2)[:, None] * U, atol=1e-12)


@pytest.mark.parametrize("name,layers", [("lstm", 1), ("gru", 1), ("lstm", 2)])
def test_jacobians_match_finite_differences(name, layers):
    m = rnn.Model(cells.BUILTINS[name](2, 3), layers=layers, dtype="float64", seed=1)
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((1, 4, 2))
    J = step_jacobians(m, xs)
    states = [s for s in m.cell.states]
    H = 3
    shape = (H,) if layers == 1 else (layers, H)

    def run(t, S):  # one step from the state S (a flat vector), the state after it
        init, off = {}, 0
        for s in states:
            size = int(np.prod(shape))
            v = S[off:off + size].reshape(shape)
            init[s] = v[None] if layers == 1 else v[:, None]
            off += size
        _, final = m.forward(xs[:, t:t + 1], initial_state=init)
        return np.concatenate([np.asarray(final[s]).reshape(-1) for s in states])

    S = np.zeros(len(states) * layers * H)  # state-major: c of every layer, then h ...
    block = {f"{s}_l{k}": states.index(s) * layers + k for s in states for k in range(layers)}
    idx = np.concatenate([np.arange(block[n] * H, block[n] * H + H) for n in state_names(m)])
    for t in range(4):
        fd = np.empty((len(S), len(S)))
        for j in range(len(S)):
            e = np.zeros(len(S))
            e[j] = 1e-6
            fd[:, j] = (run(t, S + e) - run(t, S - e)) / 2e-6
        np.testing.assert_allclose(J[t], fd[np.ix_(idx, idx)], atol=1e-8)
        S = run(t, S)


def test_spectral_norms_show_the_lstm_cell_path():
    """With the forget gate open, the LSTM's step keeps a singular value near 1 (the cell
    state's elementwise path); an Elman net with small weights contracts every step."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1, 20, 2)) * 0.1
    elman = rnn.Model(cells.elman(2, 8), dtype="float64", seed=0)
    lstm = rnn.Model(cells.lstm(2, 8), dtype="float64", seed=0)
    b = lstm.params["bias_ih_l0"].copy()
    b[8:16] = 5.0  # forget gate ~ 0.99
    lstm.load_params({"bias_ih_l0": b}, strict=False)
    assert spectral_norms(elman, xs).max() < 0.9
    assert spectral_norms(lstm, xs).min() > 0.95


def test_deeper_delays_are_refused():
    cell = rnn.Cell.from_equations("h = tanh(W @ x + U @ h[t-2])", inputs={"x": 2},
                                   states={"h": 3})
    with pytest.raises(ValueError, match="delays are all 1"):
        step_jacobians(rnn.Model(cell), np.zeros((1, 3, 2)))


def test_several_inputs_with_a_delayed_one_and_bidirectional_refused():
    cell = rnn.Cell.from_equations("h = tanh(W @ x + A @ u[t-1] + U @ h[t-1])",
                                   inputs={"x": 2, "u": 1}, states={"h": 3})
    m = rnn.Model(cell, dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    xs = {"x": rng.standard_normal((1, 4, 2)), "u": rng.standard_normal((1, 4, 1))}
    J = step_jacobians(m, xs)
    ys, _ = m.forward(xs)
    U = m.params["U_l0"]
    for t in range(4):  # dh_t/dh_(t-1) = diag(1 - h_t^2) U whatever u[t-1] was
        np.testing.assert_allclose(J[t], (1 - ys[0, t] ** 2)[:, None] * U, atol=1e-12)
    with pytest.raises(ValueError, match="one-way models"):
        step_jacobians(rnn.Model(cells.gru(2, 3), bidirectional=True), np.zeros((1, 3, 2)))
