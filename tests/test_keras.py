"""from_keras / to_keras / from_keras_h5 against Keras's equations transcribed in numpy
(SimpleRNN, LSTM, GRU with reset_after True/False, use_bias True/False), and against
real Keras layers and weights files when keras / h5py are installed (skipped otherwise)."""

import importlib.util
import os

import numpy as np
import pytest

import rnn
from rnn import cells

has_h5py = importlib.util.find_spec("h5py") is not None
has_keras = importlib.util.find_spec("keras") is not None and any(
    importlib.util.find_spec(b) is not None for b in ("torch", "jax", "tensorflow"))
needs_h5py = pytest.mark.skipif(not has_h5py, reason="h5py is not installed")
needs_keras = pytest.mark.skipif(not has_keras, reason="keras (and a backend) not installed")

sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
ACT = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0)}
G = {"rnn": 1, "lstm": 4, "gru": 3}


def keras_numpy(kind, x, ws, reset_after=True, use_bias=True, activation="tanh"):
    """All outputs (B, T, H) of a Keras SimpleRNN / LSTM / GRU, written from the
    equations of keras/src/layers/rnn/*.py (gates: LSTM i, f, c, o; GRU z, r, h)."""
    kernel, rec = ws[0], ws[1]
    H = rec.shape[0]
    bias = ws[2] if use_bias else None
    h = c = np.zeros((x.shape[0], H))
    outs = []
    for t in range(x.shape[1]):
        xt = x[:, t] @ kernel
        if kind == "rnn":
            h = ACT[activation](xt + h @ rec + (0 if bias is None else bias))
        elif kind == "lstm":
            z = xt + h @ rec + (0 if bias is None else bias)
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
        else:
            ib = 0 if bias is None else (bias[0] if reset_after else bias)
            rb = 0 if bias is None or not reset_after else bias[1]
            xi = xt + ib
            x_z, x_r, x_h = xi[:, :H], xi[:, H:2 * H], xi[:, 2 * H:]
            if reset_after:
                inner = h @ rec + rb
                z = sig(x_z + inner[:, :H])
                r = sig(x_r + inner[:, H:2 * H])
                hh = np.tanh(x_h + r * inner[:, 2 * H:])
            else:
                z = sig(x_z + h @ rec[:, :H])
                r = sig(x_r + h @ rec[:, H:2 * H])
                hh = np.tanh(x_h + (r * h) @ rec[:, 2 * H:])
            h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, 1)


def keras_weights(kind, I, H, reset_after=True, use_bias=True, seed=0):
    rng = np.random.default_rng(seed)
    g = G[kind]
    ws = [rng.standard_normal((I, g * H)) * 0.6, rng.standard_normal((H, g * H)) * 0.6]
    if use_bias:
        ws.append(rng.standard_normal((2, g * H) if kind == "gru" and reset_after else g * H))
    return ws


CONFIGS = [  # (kind, options)
    ("rnn", {}), ("rnn", {"use_bias": False}), ("rnn", {"activation": "relu"}),
    ("lstm", {}), ("lstm", {"use_bias": False}),
    ("gru", {"reset_after": True}), ("gru", {"reset_after": False}),
    ("gru", {"reset_after": True, "use_bias": False}),
    ("gru", {"reset_after": False, "use_bias": False}),
]


def _ids(c):
    return f"{c[0]}-" + "-".join(f"{k}={v}" for k, v in c[1].items())


@pytest.mark.parametrize("case", CONFIGS, ids=_ids)
def test_from_keras_matches_keras_equations_and_round_trips_exactly(case):
    kind, opts = case
    ws = keras_weights(kind, 3, 4, opts.get("reset_after", True), opts.get("use_bias", True))
    m = rnn.interop.from_keras(kind, ws, **opts)
    xs = np.random.default_rng(1).standard_normal((2, 6, 3))
    np.testing.assert_allclose(m.predict(xs), keras_numpy(kind, xs, ws, **opts),
                               rtol=0, atol=1e-12)
    back = rnn.interop.to_keras(m)
    assert len(back) == len(ws)
    for a, b in zip(back, ws):
        assert a.shape == b.shape and np.array_equal(a, b)
    again = rnn.interop.from_keras(kind, back, **opts)
    assert all(np.array_equal(again.params[k], v) for k, v in m.params.items())


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_keras_single_bias_is_one_parameter(kind):
    """Keras's one bias (LSTM, SimpleRNN, GRU reset_after=False) is one trainable vector,
    not a bias_ih with a zero bias_hh trained beside it (twice the learning rate)."""
    ws = keras_weights(kind, 2, 3, reset_after=False)
    m = rnn.interop.from_keras(kind, ws, reset_after=False)
    assert sorted(k for k in m.params if "bias" in k) == ["bias_ih_l0"]
    nb = rnn.interop.from_keras(kind, ws[:2], reset_after=False, use_bias=False)
    assert not [k for k in nb.params if "bias" in k]


@pytest.mark.parametrize("case", [("rnn", {}), ("lstm", {}), ("gru", {"reset_after": False}),
                                  ("gru", {"reset_after": True})], ids=_ids)
def test_one_sgd_step_matches_sgd_on_keras_parameters(case):
    """After a step of SGD on rnn.bptt's gradients, the model is Keras's weights after a
    step of SGD on the gradient of Keras's own equations (central differences here)."""
    kind, opts = case
    ws = keras_weights(kind, 2, 3, **opts, seed=4)
    rng = np.random.default_rng(5)
    xs, ys = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 3))
    m = rnn.interop.from_keras(kind, ws, **opts)
    res = rnn.bptt(m, xs, ys)
    lr = 0.1
    m.load_params({k: v - lr * res.grads[k] for k, v in m.params.items()})

    def loss(w):
        return ((keras_numpy(kind, xs, w, **opts) - ys) ** 2).mean()

    want, eps = [], 1e-6
    for j, w in enumerate(ws):
        g = np.zeros_like(w)
        for idx in np.ndindex(w.shape):
            up = [a.copy() for a in ws]
            dn = [a.copy() for a in ws]
            up[j][idx] += eps
            dn[j][idx] -= eps
            g[idx] = (loss(up) - loss(dn)) / (2 * eps)
        want.append(w - lr * g)
    for a, b in zip(rnn.interop.to_keras(m), want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)


def test_torch_form_models_go_to_keras_with_summed_biases():
    m = rnn.Model(cells.lstm(3, 4), seed=1)  # bias_ih and bias_hh, as PyTorch
    ws = rnn.interop.to_keras(m)
    np.testing.assert_array_equal(ws[2], m.params["bias_ih_l0"] + m.params["bias_hh_l0"])
    xs = np.random.default_rng(2).standard_normal((2, 5, 3))
    np.testing.assert_allclose(keras_numpy("lstm", xs, ws), m.predict(xs), rtol=0, atol=1e-12)


def test_stacked_models_with_a_head_give_a_sequentials_weights():
    m = rnn.Model(cells.gru_classic(3, 4), layers=2, head=2, seed=3)
    ws = rnn.interop.to_keras(m)
    assert [w.shape for w in ws] == [(3, 12), (4, 12), (12,), (4, 12), (4, 12), (12,),
                                     (4, 2), (2,)]
    xs = np.random.default_rng(4).standard_normal((2, 5, 3))
    h = keras_numpy("gru", keras_numpy("gru", xs, ws[:3], reset_after=False), ws[3:6],
                    reset_after=False)
    np.testing.assert_allclose(h @ ws[6] + ws[7], m.predict(xs), rtol=0, atol=1e-12)


def test_what_keras_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="no projection"):
        rnn.interop.to_keras(rnn.Model(cells.lstm(3, 4, proj_size=2)))
    with pytest.raises(ValueError, match="built-in cells"):
        rnn.interop.to_keras(rnn.Model(cells.peephole_lstm(3, 4)))
    with pytest.raises(ValueError, match="gru_classic cell .* has no PyTorch module"):
        rnn.interop.to_torch(rnn.Model(cells.gru_classic(3, 4)))
    ws = keras_weights("gru", 3, 4, reset_after=True)
    with pytest.raises(ValueError, match=r"has bias \(12,\), got \(2, 12\)"):
        rnn.interop.from_keras("gru", ws, reset_after=False)
    with pytest.raises(ValueError, match=r"use_bias=False has 2 weights"):
        rnn.interop.from_keras("gru", ws, use_bias=False)
    with pytest.raises(ValueError, match="activation"):
        rnn.interop.from_keras("lstm", keras_weights("lstm", 3, 4), activation="relu")


# ------------------------------------------------------------------ weights files (h5py)
def _write_keras3(path, layers):
    """The layout Keras 3's save_weights writes: layers/<key>/cell/vars/<i>, and the
    layer's name in layers/<key>/vars's attribute 'name'."""
    import h5py

    with h5py.File(path, "w") as f:
        for key, name, ws in layers:
            f.create_group(f"layers/{key}/vars").attrs["name"] = name
            g = f.create_group(f"layers/{key}/cell/vars")
            for i, w in enumerate(ws):
                g.create_dataset(str(i), data=w)


@needs_h5py
def test_from_keras_h5_reads_the_keras3_layout(tmp_path):
    lstm = keras_weights("lstm", 3, 4, seed=1)
    gru = keras_weights("gru", 4, 2, reset_after=False, seed=2)
    p = tmp_path / "m.weights.h5"
    _write_keras3(p, [("lstm", "encoder", lstm), ("gru", "gru", gru)])
    with pytest.raises(ValueError, match="holds 2 recurrent layers"):
        rnn.interop.from_keras_h5(p)
    xs = np.random.default_rng(3).standard_normal((2, 5, 3))
    for name in ("encoder", "lstm", "layers/lstm"):
        m = rnn.interop.from_keras_h5(p, layer_name=name)
        np.testing.assert_allclose(m.predict(xs), keras_numpy("lstm", xs, lstm), atol=1e-12)
    m = rnn.interop.from_keras_h5(p, layer_name="gru")  # reset_after read from the bias
    xs4 = xs @ np.ones((3, 4))
    np.testing.assert_allclose(m.predict(xs4), keras_numpy("gru", xs4, gru, reset_after=False),
                               atol=1e-12)
    with pytest.raises(ValueError, match="reset_after=True but the GRU's bias"):
        rnn.interop.from_keras_h5(p, layer_name="gru", reset_after=True)
    with pytest.raises(ValueError, match="layer_name='dense' is not one"):
        rnn.interop.from_keras_h5(p, layer_name="dense")


@needs_h5py
def test_from_keras_h5_reads_the_legacy_layout(tmp_path):
    """tf.keras 2's HDF5: root attribute layer_names, each layer's weight_names."""
    import h5py

    ws = keras_weights("rnn", 3, 4, seed=5)
    p = tmp_path / "old.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"simple_rnn", b"dense"]
        names = [b"simple_rnn/simple_rnn_cell/kernel:0",
                 b"simple_rnn/simple_rnn_cell/recurrent_kernel:0",
                 b"simple_rnn/simple_rnn_cell/bias:0"]
        g = f.create_group("simple_rnn")
        g.attrs["weight_names"] = names
        for n, w in zip(names, ws):
            g.create_dataset(n.decode(), data=w)
        d = f.create_group("dense")
        d.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        d.create_dataset("dense/kernel:0", data=np.ones((4, 1)))
        d.create_dataset("dense/bias:0", data=np.ones(1))
    m = rnn.interop.from_keras_h5(p, activation="relu")
    xs = np.random.default_rng(6).standard_normal((2, 5, 3))
    np.testing.assert_allclose(m.predict(xs), keras_numpy("rnn", xs, ws, activation="relu"),
                               atol=1e-12)


@needs_h5py
def test_from_keras_h5_refuses_files_that_are_not_weights(tmp_path):
    import h5py

    bad = tmp_path / "text.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        rnn.interop.from_keras_h5(bad)
    with pytest.raises(FileNotFoundError):
        rnn.interop.from_keras_h5(tmp_path / "absent.weights.h5")
    with pytest.raises(FileNotFoundError):
        rnn.interop.from_keras_h5(tmp_path)
    empty = tmp_path / "empty.weights.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(ValueError, match="holds no recurrent layer"):
        rnn.interop.from_keras_h5(empty)
    strings = tmp_path / "strings.weights.h5"
    with h5py.File(strings, "w") as f:
        f.create_group("layers/lstm/vars").attrs["name"] = "lstm"
        g = f.create_group("layers/lstm/cell/vars")
        g.create_dataset("0", data=np.array([b"cos", b"system"], dtype=object),
                         dtype=h5py.string_dtype())
        g.create_dataset("1", data=np.zeros((1, 4)))
    with pytest.raises(ValueError, match="a Keras weight is float32 or float64"):
        rnn.interop.from_keras_h5(strings)


# ------------------------------------------------------------------ real Keras
@pytest.fixture(scope="module")
def keras():
    if not has_keras:
        pytest.skip("keras (and a backend) not installed")
    if "KERAS_BACKEND" not in os.environ:  # Keras's default, tensorflow, may be absent
        for b in ("torch", "jax", "tensorflow"):
            if importlib.util.find_spec(b) is not None:
                os.environ["KERAS_BACKEND"] = b
                break
    return pytest.importorskip("keras")


# Keras 3 computes float64 matmuls in float32 (dtypes.result_type maps 64-bit to 32-bit,
# as JAX without x64), so real layers agree to float32's precision only; the exact
# checks are against keras_numpy above, which the first test ties to real layers.
KERAS_ATOL = 1e-5


def knp(t):
    import keras

    return keras.ops.convert_to_numpy(t)


def keras_layer(keras, kind, units, return_sequences=True, **opts):
    cls = {"rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
    return cls[kind](units, return_sequences=return_sequences, dtype="float64", **opts)


@needs_keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras + numpy 2 on copy=
@pytest.mark.parametrize("case", CONFIGS, ids=_ids)
def test_real_keras_layers_both_ways(keras, case):
    kind, opts = case
    xs = np.random.default_rng(7).standard_normal((2, 6, 3))
    layer = keras_layer(keras, kind, 4, **opts)
    layer.build((None, 6, 3))
    got = rnn.interop.from_keras(kind, layer.get_weights(), **opts)
    np.testing.assert_allclose(got.predict(xs), knp(layer(xs)), rtol=0, atol=KERAS_ATOL)
    np.testing.assert_allclose(got.predict(xs), keras_numpy(kind, xs, layer.get_weights(),
                                                            **opts), rtol=0, atol=1e-12)
    other = rnn.interop.from_keras(kind, keras_weights(kind, 3, 4, opts.get("reset_after", True),
                                                       opts.get("use_bias", True), seed=8),
                                   **opts)
    layer.set_weights(rnn.interop.to_keras(other))
    np.testing.assert_allclose(knp(layer(xs)), other.predict(xs), rtol=0, atol=KERAS_ATOL)


@needs_keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras + numpy 2 on copy=
def test_real_keras_sequential_takes_a_stacked_model(keras):
    m = rnn.Model(cells.lstm(3, 4), layers=2, head=2, seed=9)
    seq = keras.Sequential([keras.Input((5, 3), dtype="float64"),
                            keras_layer(keras, "lstm", 4),
                            keras_layer(keras, "lstm", 4, return_sequences=True),
                            keras.layers.Dense(2, dtype="float64")])
    seq.set_weights(rnn.interop.to_keras(m))
    xs = np.random.default_rng(10).standard_normal((2, 5, 3))
    np.testing.assert_allclose(knp(seq(xs)), m.predict(xs), rtol=0, atol=KERAS_ATOL)


@needs_keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras + numpy 2 on copy=
@needs_h5py
def test_real_keras_weights_file(keras, tmp_path):
    seq = keras.Sequential([keras.Input((5, 3), dtype="float64"),
                            keras_layer(keras, "gru", 4, name="enc", reset_after=False),
                            keras_layer(keras, "lstm", 2, name="dec", return_sequences=False),
                            keras.layers.Dense(1, dtype="float64")])
    p = tmp_path / "model.weights.h5"
    seq.save_weights(p)
    xs = np.random.default_rng(11).standard_normal((2, 5, 3))
    enc = rnn.interop.from_keras_h5(p, layer_name="enc")
    dec = rnn.interop.from_keras_h5(p, layer_name="dec")
    h = enc.predict(xs)
    np.testing.assert_allclose(h, knp(seq.layers[0](xs)), rtol=0, atol=KERAS_ATOL)
    np.testing.assert_allclose(dec.predict(h)[:, -1], knp(seq.layers[1](h)), rtol=0,
                               atol=KERAS_ATOL)
