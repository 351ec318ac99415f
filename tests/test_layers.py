"""Layers a PyTorch or Keras user reaches for: cells with several inputs, dropout
between stacked layers and recurrent dropout (rnn/model.py), each against a plain numpy
forward pass written here, the other executor and finite differences."""

import numpy as np
import pytest

import rnn
from engine.errors import ShapeError
from rnn.model import dropout_mask, stack_cells

TWO_INPUTS = "h = tanh(W @ x + V @ u + U @ h[t-1] + b)"


def two_input_cell(x=3, u=2, h=4):
    return rnn.Cell.from_equations(TWO_INPUTS, inputs={"x": x, "u": u}, states={"h": h})


def numpy_stack(params, xs, us, layers, drops=(), rdrops=()):
    """The two-input Elman stack by hand: layer k>0 reads the layer below as x (times the
    dropout mask drops[k-1]) and u as it is; rdrops[k] multiplies h[t-1] (B, H)."""
    inp = xs
    for k in range(layers):
        p = {n: params[f"{n}_l{k}"] for n in "WVUb"}
        h = np.zeros((xs.shape[0], p["U"].shape[0]))
        out = []
        for t in range(xs.shape[1]):
            hr = h * rdrops[k] if len(rdrops) else h
            h = np.tanh(inp[:, t] @ p["W"].T + us[:, t] @ p["V"].T + hr @ p["U"].T + p["b"])
            out.append(h)
        inp = np.stack(out, axis=1)
        if k < layers - 1 and len(drops):
            inp = inp * drops[k]
    return inp @ params["head_weight"].T + params["head_bias"]


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((3, 5, 3)), rng.standard_normal((3, 5, 2)),
            rng.standard_normal((3, 5, 1)))


# ---------------------------------------------------------------- several inputs
@pytest.mark.parametrize("layers", [1, 2])
def test_several_inputs_match_numpy_and_both_executors(batch, layers):
    xs, us, ys = batch
    model = rnn.Model(two_input_cell(), layers=layers, head=1)
    want = numpy_stack(dict(model.params), xs, us, layers)
    for executor in ("compiled", "reference"):
        got = model.predict({"x": xs, "u": us}, executor=executor)
        np.testing.assert_allclose(got, want, atol=1e-12)
    a = rnn.bptt(model, {"x": xs, "u": us}, ys)
    b = rnn.bptt(model, {"x": xs, "u": us}, ys, executor="reference")
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], atol=1e-10, err_msg=k)
    if layers == 2:  # u feeds every layer
        assert model.params["V_l1"].shape == (4, 2) and model.params["W_l1"].shape == (4, 4)


def test_several_inputs_packed_time_major_and_fit(batch):
    xs, us, ys = batch
    model = rnn.Model(two_input_cell(), head=1)
    d = {"x": xs, "u": us}
    packed = np.concatenate([xs, us], axis=-1)
    np.testing.assert_array_equal(model.predict(d), model.predict(packed))
    tm = model.predict({"x": xs.swapaxes(0, 1), "u": us.swapaxes(0, 1)}, batch_first=False)
    np.testing.assert_array_equal(tm.swapaxes(0, 1), model.predict(d))
    hist = rnn.fit(model, d, ys, epochs=15, batch_size=3, progress=False,
                   validation=(d, ys), optimizer=rnn.optim.Adam(lr=0.05))
    assert hist.losses[-1] < hist.losses[0] and len(hist.val_losses) == 15


def test_several_inputs_errors_name_the_input(batch):
    xs, us, _ = batch
    model = rnn.Model(two_input_cell())
    with pytest.raises(ValueError, match=r"got no \['u'\]"):
        model.predict({"x": xs})
    with pytest.raises(ValueError, match=r"\['v'\] are not inputs"):
        model.predict({"x": xs, "u": us, "v": us})
    with pytest.raises(ShapeError, match=r"xs\['u'\] has 3 features"):
        model.predict({"x": xs, "u": xs})
    with pytest.raises(ShapeError, match=r"xs\['u'\] has \(B, T\) = \(3, 4\)"):
        model.predict({"x": xs, "u": us[:, :4]})
    with pytest.raises(ShapeError, match="come as a dict"):
        model.predict(xs)


# ---------------------------------------------------------------- dropout
def test_dropout_mask_is_inverted_and_has_mean_one():
    rng = np.random.default_rng(0)
    m = dropout_mask(rng, (400, 50, 40), 0.3, "float64")
    assert set(np.unique(m)) == {0.0, 1 / 0.7}
    assert abs(m.mean() - 1) < 0.005 and abs((m == 0).mean() - 0.3) < 0.005
    assert dropout_mask(rng, (4, 3), 0.5, "float32").dtype == np.float32


def test_recurrent_masks_are_one_per_sequence_and_dropout_masks_fresh_per_step():
    model = rnn.Model(rnn.cells.lstm(2, 5), layers=2, dropout=0.5, recurrent_dropout=0.5)
    cell = model.cell_for(train=True)
    assert list(cell.inputs) == ["x", "rdrop_h_l0", "dropout_l0", "rdrop_h_l1"]
    m = model.masks(cell, 64, 7, np.random.default_rng(0))
    rec, drop = m[..., :5], m[..., 5:10]
    assert (rec == rec[:, :1]).all()  # the same at every step
    assert not (drop == drop[:, :1]).all()
    assert abs(m.mean() - 1) < 0.05


def test_recurrent_dropout_masks_recurrent_weight_inputs_only():
    # an LSTM's c[t-1] and a GRU's z * h[t-1] pass unmasked; W @ h[t-1] and
    # W @ (r * h[t-1]) (Cho's GRU) read the masked state, as Keras does
    for make, masked in [(rnn.cells.lstm, {"h_l0.rdrop1"}),
                         (rnn.cells.gru, {"h_l0.rdrop1"}),
                         (rnn.cells.gru_classic, {"h_l0.rdrop1"})]:
        full = stack_cells(make(2, 3), 1, None, recurrent_dropout=True)
        refs = [(nd, a) for nd in full.nodes for a in nd.args if hasattr(a, "name")]
        readers = [nd for nd, a in refs if a.name == "h_l0.rdrop1"]
        raw = [nd for nd, a in refs
               if a.name in ("h_l0", "c_l0") and a.delay and nd.out not in masked]
        assert {nd.op for nd in readers} <= {"matvec", "mul"} and readers
        if make is rnn.cells.lstm:
            assert [nd.args[1].name for nd in raw] == ["c_l0"]
        else:  # z * h[t-1]
            assert [(nd.op, nd.args[0].name) for nd in raw] == [("mul", "z_l0")]
        if make is rnn.cells.gru_classic:
            assert len(readers) == 2
    with pytest.raises(ValueError, match="no such read"):
        rnn.Model(rnn.Cell.from_equations("h = tanh(W @ x) + 0.5 * h[t-1]", inputs={"x": 2},
                                          states={"h": 3}), recurrent_dropout=0.2)


@pytest.mark.parametrize("executor", ["compiled", "reference"])
def test_dropout_matches_numpy_with_the_same_masks(batch, executor):
    xs, us, ys = batch
    model = rnn.Model(two_input_cell(), layers=3, head=1, dropout=0.4, recurrent_dropout=0.3)
    d = {"x": xs, "u": us}
    res = rnn.bptt(model, d, ys, train=True, seed=7, executor=executor)
    cell = model.cell_for(train=True)
    m = model.masks(cell, 3, 5, np.random.default_rng(7))
    sl = dict(zip(list(cell.inputs)[2:], np.split(m, np.cumsum([4] * 4), axis=-1)))
    drops = [sl["dropout_l0"], sl["dropout_l1"]]
    rdrops = [sl[f"rdrop_h_l{k}"][:, 0] for k in range(3)]
    out = numpy_stack(dict(model.params), xs, us, 3, drops, rdrops)
    np.testing.assert_allclose(res.outputs, out, atol=1e-12)
    assert res.loss == pytest.approx(np.mean((out - ys) ** 2), abs=1e-12)


def test_dropout_is_reproducible_and_leaves_forward_alone(batch):
    xs, _, ys = batch
    plain = rnn.Model(rnn.cells.gru(3, 4), layers=2, head=1, seed=5)
    model = rnn.Model(rnn.cells.gru(3, 4), layers=2, head=1, seed=5, dropout=0.5,
                      recurrent_dropout=0.5)
    np.testing.assert_array_equal(model.predict(xs), plain.predict(xs))
    a, b = rnn.bptt(model, xs, ys), rnn.bptt(plain, xs, ys)
    assert a.loss == b.loss  # train=False: no dropout
    t1 = rnn.bptt(model, xs, ys, train=True, seed=1)
    t2 = rnn.bptt(model, xs, ys, train=True, seed=1)
    t3 = rnn.bptt(model, xs, ys, train=True, seed=2)
    assert t1.loss == t2.loss != t3.loss and t1.loss != a.loss
    for k in t1.grads:
        np.testing.assert_array_equal(t1.grads[k], t2.grads[k])
    assert rnn.bptt(plain, xs, ys, train=True, seed=1).loss == b.loss  # nothing to drop
    np.testing.assert_array_equal(model.predict(xs), plain.predict(xs))


@pytest.mark.parametrize("truncate", [None, 2, (2, 3)])
def test_dropout_gradients_agree_between_executors_and_with_finite_differences(batch,
                                                                               truncate):
    xs, _, ys = batch
    model = rnn.Model(rnn.cells.lstm(3, 4), layers=2, head=1, dropout=0.3,
                      recurrent_dropout=0.3, learn_initial=("c",))
    kw = dict(train=True, seed=3, truncate=truncate)
    a = rnn.bptt(model, xs, ys, **kw)
    b = rnn.bptt(model, xs, ys, executor="reference", **kw)
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], atol=1e-10, err_msg=k)
    if truncate is None:
        g = a.grads["weight_hh_l1"]
        base = {k: v.copy() for k, v in model.params.items()}
        for ix in [(0, 0), (5, 2), (13, 3)]:
            vals = []
            for e in (1e-6, -1e-6):
                p = base["weight_hh_l1"].copy()
                p[ix] += e
                model.load_params({"weight_hh_l1": p}, strict=False)
                vals.append(rnn.bptt(model, xs, ys, **kw).loss)
            model.load_params({"weight_hh_l1": base["weight_hh_l1"]}, strict=False)
            assert (vals[0] - vals[1]) / 2e-6 == pytest.approx(g[ix], abs=1e-7)


def test_fit_with_dropout_is_reproducible_for_a_seed(batch):
    xs, _, ys = batch

    def run(seed):
        m = rnn.Model(rnn.cells.lstm(3, 4), layers=2, head=1, dropout=0.5,
                      recurrent_dropout=0.2)
        rnn.fit(m, xs, ys, epochs=3, batch_size=2, seed=seed, progress=False)
        return m.params["weight_hh_l1"].copy()

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


def test_dropout_arguments_are_checked():
    with pytest.raises(ValueError, match=r"dropout is a probability in \[0, 1\)"):
        rnn.Model(rnn.cells.elman(2, 3), layers=2, dropout=1.0)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        rnn.Model(rnn.cells.elman(2, 3), recurrent_dropout=-0.1)
    with pytest.warns(UserWarning, match="layers=1"):
        rnn.Model(rnn.cells.elman(2, 3), dropout=0.5)
    with pytest.raises(TypeError, match="train"):
        rnn.bptt(rnn.Model(rnn.cells.elman(2, 3)), np.ones((1, 2, 2)), np.ones((1, 2, 3)),
                 train="yes")


# ---------------------------------------------------------------- state shapes
def test_initial_state_in_torch_layout_for_one_layer(batch):
    xs, _, ys = batch
    model = rnn.Model(rnn.cells.gru(3, 4), head=1)
    h0 = np.random.default_rng(1).standard_normal((1, 3, 4))
    a = rnn.bptt(model, xs, ys, initial_state={"h": h0})
    b = rnn.bptt(model, xs, ys, initial_state={"h": h0[0]})
    assert a.loss == b.loss
    with pytest.raises(ShapeError, match=r"must be \(3, 4\) \(or \(1, 3, 4\)"):
        model.predict(xs, {"h": np.zeros((2, 3, 4))})


# ---------------------------------------------------------------- zoneout
def test_zoneout_example_cell():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "examples" / "zoneout.cell").read_text()
    H = 16
    cell = rnn.Cell.from_equations(text, inputs={"x": 4, "d": H, "e": H},
                                   states={"h": H, "c": H})
    model = rnn.Model(cell, head=1)
    lstm = rnn.Model(rnn.cells.lstm(4, H), head=1)
    lstm.load_params(model.params)
    rng = np.random.default_rng(0)
    B, T = 3, 6
    xs, ys = rng.standard_normal((B, T, 4)), rng.standard_normal((B, T, 1))
    zeros, ones = np.zeros((B, T, H)), np.ones((B, T, H))
    # masks of 0: the LSTM itself; masks of 1: the initial state forever
    np.testing.assert_allclose(model.predict({"x": xs, "d": zeros, "e": zeros}),
                               lstm.predict(xs), atol=1e-12)
    frozen = model.predict({"x": xs, "d": ones, "e": ones})
    np.testing.assert_allclose(frozen, np.broadcast_to(model.params["head_bias"], frozen.shape))
    zone = {"x": xs, "d": (rng.random((B, T, H)) < 0.3) * 1.0,
            "e": (rng.random((B, T, H)) < 0.3) * 1.0}
    a = rnn.bptt(model, zone, ys)
    b = rnn.bptt(model, zone, ys, executor="reference")
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], atol=1e-10, err_msg=k)


def test_model_files_keep_bidirectional_dropout_and_several_inputs(tmp_path):
    rng = np.random.default_rng(3)
    two = rnn.Cell.from_equations("h = tanh(W @ x + V @ u + U @ h[t-1])",
                                  inputs={"x": 2, "u": 1}, states={"h": 3})
    xs2 = rng.standard_normal((2, 5, 2))
    for cell, kw, xs in [
            (rnn.cells.gru(2, 3), {"bidirectional": True, "layers": 2, "head": 1}, xs2),
            (rnn.cells.gru(2, 3), {"dropout": 0.5, "layers": 2}, xs2),
            (rnn.cells.lstm(2, 3), {"recurrent_dropout": 0.1}, xs2),
            (two, {"layers": 2, "head": 2},
             {"x": xs2, "u": rng.standard_normal((2, 5, 1))})]:
        m = rnn.Model(cell, seed=4, **kw)
        back = rnn.Model.load(m.save(tmp_path / "m.unroll"))
        for k in ("bidirectional", "dropout", "recurrent_dropout", "layers", "head"):
            assert getattr(back, k) == getattr(m, k), k
        np.testing.assert_array_equal(back.predict(xs), m.predict(xs))
    assert "bidirectional=True" in repr(rnn.Model(rnn.cells.gru(2, 3), bidirectional=True))
