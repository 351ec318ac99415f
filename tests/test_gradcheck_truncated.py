"""gradcheck of truncated BPTT: finite differences of the surrogate it is the gradient of."""

import numpy as np
import pytest

import rnn
from tools.cli import main
from tools.gradcheck import boundary_states, check_bptt, check_vjp, truncated_loss


def _data(T=5, B=2, O=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, 1)), rng.standard_normal((B, T, O))


@pytest.mark.parametrize("layers,at", [(1, "all"), (2, "all"), (1, "last")])
def test_truncated_gradient_passes_against_its_own_objective(layers, at):
    m = rnn.Model(rnn.cells.lstm(1, 3), layers=layers, head=2, seed=0)
    xs, ys = _data()
    targets = ys if at == "all" else ys[:, -1]
    res = check_bptt(m, xs, targets, truncate=2, at=at, max_per_input=6)
    assert res.ok and res.truncation_gap > 1e-3  # and truncation did change the gradient


def test_the_surrogate_has_the_full_loss_as_value_but_not_its_gradient():
    m = rnn.Model(rnn.cells.elman(1, 3), head=2, seed=0)
    xs, ys = _data(T=6)
    full = rnn.bptt(m, xs, ys)
    cut = rnn.bptt(m, xs, ys, truncate=2)
    assert truncated_loss(m, xs, ys, 2, None, boundary_states(m, xs, 2)) == pytest.approx(
        full.loss, rel=1e-12)
    names = list(m.params)
    saved = dict(m._params)

    def fun(*arrays, surrogate):
        m._params = dict(zip(names, arrays))
        try:
            if surrogate:
                return np.array(truncated_loss(m, xs, ys, 2, None, boundary))
            return np.array(rnn.bptt(m, xs, ys).loss)
        finally:
            m._params = saved

    boundary = boundary_states(m, xs, 2)
    args = [saved[n] for n in names]
    grads = [cut.grads[n] for n in names]

    def vjp(u, *a):
        return [u * g for g in grads]

    assert check_vjp(lambda *a: fun(*a, surrogate=True), vjp, args, names,
                     raise_on_fail=False).ok
    # the old check (the full loss) says the truncated gradient is wrong: it is, for that loss
    assert not check_vjp(lambda *a: fun(*a, surrogate=False), vjp, args, names,
                         raise_on_fail=False).ok


def test_gap_is_the_relative_distance_to_the_full_gradient():
    m = rnn.Model(rnn.cells.gru(1, 3), head=2, seed=0)
    xs, ys = _data(T=6)
    init = {"h": np.random.default_rng(1).uniform(-0.5, 0.5, (2, 3))}
    res = check_bptt(m, xs, ys, truncate=3, initial_state=init, max_per_input=4)
    flat = lambda g: np.concatenate([np.ravel(v) for v in g.values()])  # noqa: E731
    g = flat(rnn.bptt(m, xs, ys, initial_state=init).grads)
    gk = flat(rnn.bptt(m, xs, ys, initial_state=init, truncate=3).grads)
    assert res.truncation_gap == pytest.approx(np.linalg.norm(gk - g) / np.linalg.norm(g))
    assert check_bptt(m, xs, ys, max_per_input=2).truncation_gap is None
    assert check_bptt(m, xs, ys, truncate=6, max_per_input=2).truncation_gap is None  # k >= T


def test_cli_gradcheck_with_truncate_passes_and_says_what_truncation_changes(capsys):
    assert main(["gradcheck", "lstm", "--steps", "4", "--truncate", "2",
                 "--hidden-size", "3"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "held fixed" in out
    assert "||g_truncated - g_full|| / ||g_full|| = " in out and "%" in out
