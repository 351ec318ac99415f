"""Bad input to the Python API fails fast, with one error naming what was expected and
what came (one test per case of the issue)."""

import re
import warnings

import numpy as np
import pytest

import rnn
import rnn.model
import rnn.program.unroll
from engine import Tensor
from rnn import Model, cells


def _data(B=2, T=5, I=2, O=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, I)), rng.standard_normal((B, T, O))


# 1 ------------------------------------------------------------------ unrolled size
def test_unroll_beyond_the_node_bound_is_refused_before_building(monkeypatch):
    monkeypatch.setattr(rnn.program.unroll, "MAX_NODES", 10_000)
    with pytest.raises(ValueError, match=r"1,000 steps .* program of 19,007 nodes, "
                                         r"more than the 10,000"):
        rnn.unroll(cells.lstm(2, 3), steps=1000)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"1,000,000,000 steps .* more than the 4,194,304"):
        rnn.unroll(cells.lstm(2, 3), steps=10**9)
    m = Model(cells.lstm(2, 3), head=1)
    xs, ys = np.zeros((1, 10**6, 2)), np.zeros((1, 10**6, 1))
    with pytest.raises(ValueError, match="executor='compiled'"):
        rnn.bptt(m, xs, ys, executor="reference")


def test_compiled_bptt_of_100_000_steps_never_unrolls(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the compiled executor unrolled the program")

    monkeypatch.setattr(rnn.model, "unroll", refuse)
    m = Model(cells.lstm(1, 4), head=1)
    xs, ys = _data(1, 100_000, 1, 1)
    res = rnn.bptt(m, xs, ys)
    assert np.isfinite(res.loss) and res.step_norms["h"].shape == (100_000,)


# 2 ------------------------------------------------------------------ parameter size
def test_huge_parameters_are_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(rnn.model, "MAX_PARAM_ELEMENTS", 1000)
    with pytest.raises(ValueError, match=r"parameter 'weight_ih_l0' is \(8, 200\) = 1,600 "
                                         r"elements .* bound of 1,000 elements"):
        Model(cells.elman(200, 8))
    monkeypatch.undo()
    terms = " + ".join(f"W{i} @ x" for i in range(9))
    cell = rnn.Cell.from_equations(f"h = tanh({terms}) * h[t-1]", inputs={"x": 8},
                                   states={"h": 10**7})  # nine 10^7 x 8 weights: 5.4 GiB
    with pytest.raises(ValueError, match=r"parameter 'W0_l0' is \(10000000, 8\) = 80,000,000 "
                                         r"elements and the model's 9 parameters total "
                                         r"720,000,000 \(5.4 GiB of float64\): more than the "
                                         r"bound of 268,435,456"):
        Model(cell)


# 3 ------------------------------------------------------------------ executors
def test_an_unknown_executor_lists_the_executors():
    m = Model(cells.elman(2, 3), head=1)
    xs, ys = _data()
    match = r"executor must be one of \['compiled', 'reference'\], got 'gpu'"
    with pytest.raises(ValueError, match=match):
        rnn.bptt(m, xs, ys, executor="gpu")
    with pytest.raises(ValueError, match=match):
        rnn.fit(m, xs, ys, executor="gpu", epochs=1, progress=False)
    with pytest.raises(ValueError, match=match):
        m.forward(xs, executor="gpu")
    s2s = rnn.Seq2Seq(cells.gru(2, 3), cells.gru(1, 3), head=1, out_steps=2)
    with pytest.raises(ValueError, match=match):
        rnn.bptt(s2s, xs, ys[:, :2], executor="gpu")


# 4 ------------------------------------------------------------------ dtypes
@pytest.mark.parametrize("dtype, got", [("float16", "'float16'"),
                                        ("longdouble", r"'longdouble' \(float"),
                                        (np.float16, "'float16'"), ("int64", "'int64'"),
                                        ("nope", "'nope'")])
def test_only_float32_and_float64_models(dtype, got):
    with pytest.raises(TypeError, match=f"dtype must be 'float32' or 'float64', got {got}"):
        Model(cells.elman(2, 3), dtype=dtype)
    with pytest.raises(TypeError, match="dtype must be 'float32' or 'float64'"):
        rnn.Seq2Seq(cells.gru(2, 3), cells.gru(1, 3), head=1, out_steps=2, dtype=dtype)
    assert Model(cells.elman(2, 3), dtype=np.float32).dtype == "float32"


# 5 ------------------------------------------------------------------ losses
def test_an_unknown_loss_lists_the_losses():
    m = Model(cells.elman(2, 3), head=1)
    xs, ys = _data()
    match = r"loss must be one of \['mse', 'cross_entropy'\], got 'nope'"
    with pytest.raises(ValueError, match=match):
        rnn.bptt(m, xs, ys, loss="nope")
    before = {k: v.copy() for k, v in m.params.items()}
    with pytest.raises(ValueError, match=match):
        rnn.fit(m, xs, ys, loss="nope", epochs=1, progress=False)
    assert all(np.array_equal(before[k], m.params[k]) for k in before)


# 6 ------------------------------------------------------------------ a Cell for a Model
def test_a_cell_where_a_model_goes_says_to_wrap_it():
    cell = cells.lstm(2, 3)
    xs, ys = _data()
    with pytest.raises(TypeError, match=r"rnn.bptt takes a model, got a Cell: wrap it in "
                                        r"rnn.Model\(cell\)"):
        rnn.bptt(cell, xs, ys)
    with pytest.raises(TypeError, match=r"rnn.fit takes a model, got a Cell: wrap it in "
                                        r"rnn.Model\(cell\)"):
        rnn.fit(cell, xs, ys, epochs=1, progress=False)
    with pytest.raises(TypeError, match="takes an rnn.Model .*, got str"):
        rnn.bptt("lstm", xs, ys)


# 7 ------------------------------------------------------------------ fit's mask
@pytest.mark.parametrize("shape", [(1, 5), (3, 5), (2, 4), (2,)])
def test_a_fit_mask_of_the_wrong_shape_names_both_shapes(shape):
    m = Model(cells.elman(2, 3), head=1)
    xs, ys = _data()
    with pytest.raises(ValueError, match=re.escape(f"mask must be (B, T) = (2, 5), got "
                                                   f"{shape}")):
        rnn.fit(m, xs, ys, mask=np.ones(shape), epochs=1, batch_size=1, progress=False)


# 8 ------------------------------------------------------------------ a cell's own mask
def test_a_cell_variable_named_mask_and_mask_given_is_declared_twice():
    cell = rnn.Cell.from_equations("h = tanh(W @ mask + U @ h[t-1] + b)", inputs={"mask": 2},
                                   states={"h": 3})
    m = Model(cell, head=1)
    xs, ys = _data()
    match = "already has a variable named 'mask': it would be declared twice"
    for executor in ("compiled", "reference"):
        with pytest.raises(ValueError, match=match):
            rnn.bptt(m, xs, ys, mask=np.ones((2, 5)), executor=executor)
        with pytest.raises(ValueError, match=match):
            m.forward(xs, mask=np.ones((2, 5)), executor=executor)
    with pytest.raises(ValueError, match=match):
        rnn.fit(m, xs, ys, mask=np.ones((2, 5)), epochs=1, progress=False)
    with pytest.raises(ValueError, match=match):
        rnn.unroll(cell, steps=3, masked=True)
    assert np.isfinite(rnn.bptt(m, xs, ys).loss)  # without mask= the name is the cell's


# 9 ------------------------------------------------------------------ numpy integers
def test_numpy_integers_are_sizes_and_steps_everywhere():
    i = np.int64
    assert rnn.unroll(cells.elman(i(2), i(3)), steps=i(4)).steps == 4
    m = Model(cells.lstm(2, 3), layers=i(2), head=i(1), seed=i(0))
    assert m.layers == 2 and m.head == 1 and type(m.layers) is int
    xs, ys = _data()
    for truncate in (i(2), (i(2), i(3)), np.int32(2)):
        assert np.isfinite(rnn.bptt(m, xs, ys, truncate=truncate).loss)
    hist = rnn.fit(m, xs, ys, epochs=np.uint8(2), batch_size=i(1), checkpoint_every=i(1),
                   progress=False)
    assert len(hist.losses) == 2
    s2s = rnn.Seq2Seq(cells.gru(2, 3), cells.gru(1, 3), head=i(1), out_steps=i(2))
    assert s2s.out_steps == 2
    t = Tensor(np.ones((3, 2)), requires_grad=True)
    y = (t * i(2) + np.float32(1)) ** i(2)
    assert y.dtype == np.float64 and y.sum(axis=i(0)).shape == (2,)
    assert t.split(i(3), axis=i(0))[0].shape == (1, 2) and t.reshape(i(6)).shape == (6,)
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(ValueError, match="layers must be a positive int"):
            Model(cells.elman(2, 3), layers=bad)
        with pytest.raises(ValueError, match="steps must be a positive int"):
            rnn.unroll(cells.elman(2, 3), steps=bad)


# 10 ----------------------------------------------------------------- read-only params
def test_model_params_are_read_only_and_load_params_writes():
    m = Model(cells.lstm(2, 3), head=1)
    with pytest.raises(TypeError, match=r"read-only: set 'bias_ih_l0' with "
                                        r"model.load_params\(\{'bias_ih_l0': array\}"):
        m.params["bias_ih_l0"] = np.zeros(12)
    with pytest.raises(TypeError, match="read-only.*cannot be deleted"):
        del m.params["bias_ih_l0"]
    with pytest.raises(TypeError, match="read-only.*load_params"):
        m.params.update({"bias_ih_l0": np.zeros(12)})
    with pytest.raises(TypeError, match="read-only.*load_params"):
        m.params = {}
    with pytest.raises(ValueError, match="read-only"):  # numpy's own message
        m.params["bias_ih_l0"][0] = 1.0
    assert not m.params["weight_hh_l0"].flags.writeable
    m.load_params({"bias_ih_l0": np.arange(12.0)}, strict=False)
    np.testing.assert_array_equal(m.params["bias_ih_l0"], np.arange(12.0))


def test_training_writes_through_the_private_path_and_the_view_follows():
    m = Model(cells.elman(2, 3), head=1)
    view = m.params["weight_hh_l0"]
    before = view.copy()
    xs, ys = _data()
    rnn.fit(m, xs, ys, epochs=2, optimizer=rnn.optim.SGD(lr=0.1), progress=False)
    assert not np.array_equal(view, before)  # a view of the weights, not a copy
    opt, res = rnn.optim.Adam(lr=0.1), rnn.bptt(m, xs, ys)
    now = m.params["bias_ih_l0"].copy()
    opt.step(m.params, res.grads)  # optimizers take model.params, as torch's do
    assert not np.array_equal(m.params["bias_ih_l0"], now)
    s2s = rnn.Seq2Seq(cells.gru(2, 3), cells.gru(1, 3), head=1, out_steps=2)
    with pytest.raises(TypeError, match="read-only"):
        s2s.params["encoder.bias_ih_l0"] = np.zeros(9)
    rnn.fit(s2s, xs, ys[:, :2], epochs=1, progress=False)
    np.testing.assert_array_equal(s2s.params["encoder.bias_ih_l0"],
                                  s2s.encoder.params["bias_ih_l0"])
    s2s.load_params({"decoder.bias_ih_l0": np.ones(9)}, strict=False)
    np.testing.assert_array_equal(s2s.decoder.params["bias_ih_l0"], np.ones(9))


# 11 ----------------------------------------------------------------- from_torch's keys
def _torch_sd(layers, G=4, I=2, H=3, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}
    for k in range(layers):
        sd[f"weight_ih_l{k}"] = rng.standard_normal((G * H, I if k == 0 else H))
        sd[f"weight_hh_l{k}"] = rng.standard_normal((G * H, H))
        sd[f"bias_ih_l{k}"] = rng.standard_normal(G * H)
        sd[f"bias_hh_l{k}"] = rng.standard_normal(G * H)
    return sd


def test_from_torch_reads_the_layers_and_refuses_keys_it_does_not_use():
    sd = _torch_sd(2)
    m = rnn.interop.from_torch("lstm", sd)
    assert m.layers == 2
    for k, v in sd.items():
        np.testing.assert_array_equal(m.params[k], v)
    with pytest.raises(ValueError, match=r"num_layers=1 but the state_dict holds 2 layer"):
        rnn.interop.from_torch("lstm", sd, num_layers=1)
    rev = {**sd, "weight_ih_l0_reverse": sd["weight_ih_l0"]}  # a bidirectional one, cut
    with pytest.raises(ValueError, match=r"lacks '\w+_l0_reverse' \(an nn.LSTM of 2 "
                                         r"layer\(s\), bidirectional"):
        rnn.interop.from_torch("lstm", rev)
    with pytest.raises(ValueError, match=r"'weight_hr_l0' is not used \(proj_size"):
        rnn.interop.from_torch("lstm", {**sd, "weight_hr_l0": np.zeros((3, 3))})
    with pytest.raises(ValueError, match=r"key 'extra' is not used"):
        rnn.interop.from_torch("lstm", {**sd, "extra": np.zeros(1)})


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32"])
def test_all_finite_finds_every_nan_and_inf_and_never_warns(dtype):
    """engine.errors.all_finite on small and big, contiguous and strided arrays: every NaN
    and inf found wherever it is; finite values whose squares overflow (1e30 in float32)
    are finite; no floating-point warning under errstate(all="raise")."""
    from engine.errors import all_finite

    rng = np.random.default_rng(0)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in [(), (0,), (5,), (7, 3), (300, 40)]:
            a = np.asarray(rng.standard_normal(shape) * 10).astype(dtype)
            assert all_finite(a) and all_finite(a.T)
            assert a.ndim == 0 or all_finite(a[..., ::2])
            if a.dtype.kind != "f" or a.size == 0:
                continue
            big = np.full(shape, np.finfo(dtype).max / 4, dtype)
            assert all_finite(big)
            for bad in (np.nan, np.inf, -np.inf):
                for at in {0, a.size // 2, a.size - 1}:
                    b = a.copy().reshape(-1)
                    b[at] = bad
                    b = b.reshape(shape)
                    assert not all_finite(b) and (b.ndim == 0 or not all_finite(b.T[..., ::1]))
                    c = big.copy().reshape(-1)
                    c[at] = bad
                    assert not all_finite(c)
