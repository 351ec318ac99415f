"""Keras layouts, checked against the Keras equations written out in numpy."""

import numpy as np
import pytest

import rnn

sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731


def keras_gru(x, kernel, rec, bias, reset_after):
    """tf.keras GRU (gate order z, r, h), from its documented equations."""
    H = rec.shape[0]
    h = np.zeros((x.shape[0], H))
    bi, br = (bias[0], bias[1]) if reset_after else (bias, np.zeros(3 * H))
    for t in range(x.shape[1]):
        xi = x[:, t] @ kernel + bi
        z = sig(xi[:, :H] + h @ rec[:, :H] + br[:H])
        r = sig(xi[:, H:2 * H] + h @ rec[:, H:2 * H] + br[H:2 * H])
        if reset_after:
            hh = np.tanh(xi[:, 2 * H:] + r * (h @ rec[:, 2 * H:] + br[2 * H:]))
        else:
            hh = np.tanh(xi[:, 2 * H:] + (r * h) @ rec[:, 2 * H:])
        h = z * h + (1 - z) * hh
    return h


def keras_lstm(x, kernel, rec, bias):
    H = rec.shape[0]
    h = c = np.zeros((x.shape[0], H))
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ rec + bias
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), \
            sig(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
    return h


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_gru(reset_after):
    rng = np.random.default_rng(0)
    I, H = 3, 4
    kernel, rec = rng.standard_normal((I, 3 * H)), rng.standard_normal((H, 3 * H))
    bias = rng.standard_normal((2, 3 * H) if reset_after else (3 * H,))
    x = rng.standard_normal((2, 5, I))
    m = rnn.interop.from_keras("gru", [kernel, rec, bias], reset_after=reset_after)
    _, state = m.forward(x)
    np.testing.assert_allclose(state["h"], keras_gru(x, kernel, rec, bias, reset_after),
                               atol=1e-12)


def test_keras_lstm():
    rng = np.random.default_rng(1)
    I, H = 2, 3
    w = [rng.standard_normal((I, 4 * H)), rng.standard_normal((H, 4 * H)),
         rng.standard_normal(4 * H)]
    x = rng.standard_normal((3, 4, I))
    _, state = rnn.interop.from_keras("lstm", w).forward(x)
    np.testing.assert_allclose(state["h"], keras_lstm(x, *w), atol=1e-12)


def test_from_torch_rejects_a_wrong_layout():
    sd = {"weight_ih_l0": np.zeros((12, 3)), "weight_hh_l0": np.zeros((12, 5)),
          "bias_ih_l0": np.zeros(12), "bias_hh_l0": np.zeros(12)}
    with pytest.raises(ValueError, match=r"'weight_hh_l0' is \(12, 5\), expected \(12, 4\)"):
        rnn.interop.from_torch("gru", sd)


def test_docstring_examples_run():
    import doctest

    from rnn.io import interop
    from rnn.lang import library

    for mod in (interop, library):
        res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
        assert res.attempted > 0 and res.failed == 0, mod.__name__


def _sd(G, I, H, layers=1, bias=True, proj=0, seed=0):
    """A state_dict in PyTorch's layout (no torch needed)."""
    rng = np.random.default_rng(seed)
    P = proj or H
    sd = {}
    for k in range(layers):
        sd[f"weight_ih_l{k}"] = rng.standard_normal((G * H, I if k == 0 else P))
        sd[f"weight_hh_l{k}"] = rng.standard_normal((G * H, P))
        if bias:
            sd[f"bias_ih_l{k}"] = rng.standard_normal(G * H)
            sd[f"bias_hh_l{k}"] = rng.standard_normal(G * H)
        if proj:
            sd[f"weight_hr_l{k}"] = rng.standard_normal((P, H))
    return sd


def test_from_torch_reads_proj_size_and_bias_from_the_keys():
    sd = _sd(4, 3, 5, layers=2, bias=False, proj=2)
    m = rnn.interop.from_torch("lstm", sd)
    assert m.cell.states == {"c": 5, "h": 2} and m.output_size == 2 and m.layers == 2
    assert not [k for k in m.params if "bias" in k]
    assert list(rnn.interop.to_torch(m)) == list(sd)
    # stacked states: h is (layers, B, P), c (layers, B, H); state_grads the same
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 3, 2))
    init = {"h": rng.standard_normal((2, 4, 2)), "c": rng.standard_normal((2, 4, 5))}
    res = rnn.bptt(m, xs, ys, initial_state=init)
    assert res.state_grads["h"].shape == (2, 4, 2) and res.state_grads["c"].shape == (2, 4, 5)
    with pytest.raises(ValueError, match=r"initial_state\['h'\] must be .*\(2, 4, 2\)"):
        rnn.bptt(m, xs, ys, initial_state={"h": np.zeros((2, 4, 5))})


def test_from_torch_relu_rnn_is_a_relu_cell():
    sd = _sd(1, 2, 3, layers=2)
    m = rnn.interop.from_torch("rnn", sd, nonlinearity="relu")
    xs = np.random.default_rng(2).standard_normal((2, 4, 2))
    h = np.zeros((2, 3))
    h1 = np.zeros((2, 3))
    for t in range(4):
        h = np.maximum(0, xs[:, t] @ sd["weight_ih_l0"].T + sd["bias_ih_l0"]
                       + h @ sd["weight_hh_l0"].T + sd["bias_hh_l0"])
        h1 = np.maximum(0, h @ sd["weight_ih_l1"].T + sd["bias_ih_l1"]
                        + h1 @ sd["weight_hh_l1"].T + sd["bias_hh_l1"])
    np.testing.assert_allclose(m.predict(xs)[:, -1], h1, atol=1e-12)
    assert (m.predict(xs) == 0).any()  # relu, not tanh


def test_from_torch_errors_name_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"nonlinearity='relu' is nn.RNN's option"):
        rnn.interop.from_torch("lstm", _sd(4, 2, 3), nonlinearity="relu")
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu'"):
        rnn.interop.from_torch("rnn", _sd(1, 2, 3), nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"'weight_hr_l0' is not used \(weight_hr is the "
                                         r"projection of an nn.LSTM"):
        rnn.interop.from_torch("gru", {**_sd(3, 2, 3), "weight_hr_l0": np.zeros((2, 3))})
    sd = _sd(4, 2, 5, layers=2, proj=2)
    del sd["weight_hr_l1"]
    with pytest.raises(ValueError, match=r"lacks 'weight_hr_l1' \(an nn.LSTM of 2 layer\(s\), "
                                         r"proj_size=2 has"):
        rnn.interop.from_torch("lstm", sd)
    sd = _sd(4, 2, 5, proj=2)
    sd["weight_hh_l0"] = np.zeros((20, 5))
    with pytest.raises(ValueError, match=r"'weight_hh_l0' is \(20, 5\), expected \(20, 2\) "
                                         r"\(proj_size=2"):
        rnn.interop.from_torch("lstm", sd)
    sd = _sd(1, 2, 3, layers=2)
    del sd["bias_hh_l1"]
    with pytest.raises(ValueError, match=r"lacks 'bias_hh_l1'"):
        rnn.interop.from_torch("rnn", sd)


def test_builtin_variants_check_their_options():
    from rnn import cells

    assert "bias" not in cells.gru_classic(2, 3, biases=0).text
    assert cells.lstm(2, 3).text == cells.LSTM  # the default is unchanged
    with pytest.raises(ValueError, match=r"gru: biases must be one of \[2, 0\]"):
        cells.gru(2, 3, biases=1)
    with pytest.raises(ValueError, match=r"proj_size must be smaller than hidden_size"):
        cells.lstm(2, 3, proj_size=3)
    with pytest.raises(ValueError, match=r"nonlinearity must be 'tanh' or 'relu'"):
        cells.elman(2, 3, nonlinearity="sigmoid")
    m = rnn.Model(cells.lstm(2, 6, proj_size=2), seed=0)
    bound = np.abs(np.concatenate([v.ravel() for v in m.params.values()])).max()
    assert 1 / np.sqrt(2) * 0.9 > bound and bound <= 1 / np.sqrt(6)  # torch's 1/sqrt(H)


def test_keras_round_trip_without_keras():
    rng = np.random.default_rng(3)
    w = [rng.standard_normal((2, 9)), rng.standard_normal((3, 9))]
    m = rnn.interop.from_keras("gru", w, reset_after=False, use_bias=False)
    assert [np.array_equal(a, b) for a, b in zip(rnn.interop.to_keras(m), w)] == [True, True]
    with pytest.raises(ValueError, match=r"use_bias=True has 3 weights"):
        rnn.interop.from_keras("gru", w)
    with pytest.raises(ValueError, match="mix dtypes"):
        rnn.interop.from_keras("lstm", [np.zeros((2, 12)), np.zeros((3, 12), np.float32),
                                        np.zeros(12)])
