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
