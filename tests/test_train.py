"""Training: optimizers, clipping, mini-batches, stateful carry, history."""

import numpy as np
import pytest

import rnn
from rnn import Model, cells
from rnn.train.fit import clip_grad_norm


def sine_task(n=32, T=12, seed=0):
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    t = np.arange(T + 1)[None] * 0.4 + phase
    s = np.sin(t)[..., None]
    return s[:, :-1], s[:, 1:]


@pytest.mark.parametrize("opt", [rnn.optim.Adam(lr=0.02), rnn.optim.SGD(lr=0.3, momentum=0.9)])
def test_fit_learns_next_step_of_a_sine(opt):
    xs, ys = sine_task()
    m = Model(cells.gru(1, 8), head=1, seed=0)
    before = rnn.bptt(m, xs, ys).loss
    hist = rnn.fit(m, xs, ys, optimizer=opt, epochs=30, batch_size=8, clip_norm=1.0,
                   progress=False)
    assert len(hist.losses) == 30 and len(hist.grad_norms) == 30 * 4
    assert hist.losses[-1] < 0.2 * before


def test_clip_norm_returns_the_norm_before_clipping():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(g, 1.0) == 5.0
    assert np.isclose(np.sqrt(sum(np.sum(v * v) for v in g.values())), 1.0)


def test_non_finite_gradient_is_an_error():
    with pytest.raises(FloatingPointError, match="non-finite gradients in \\['a'\\]"):
        clip_grad_norm({"a": np.array([np.inf])}, 1.0)


def test_fit_is_reproducible_with_a_seed():
    xs, ys = sine_task(16)
    runs = []
    for _ in range(2):
        m = Model(cells.elman(1, 4), head=1, seed=3)
        runs.append(rnn.fit(m, xs, ys, epochs=3, batch_size=4, seed=7, progress=False).losses)
    assert runs[0] == runs[1]


def test_stateful_carries_state_between_batches():
    xs, ys = sine_task(8)
    m1 = Model(cells.elman(1, 4), head=1, seed=3)
    m2 = Model(cells.elman(1, 4), head=1, seed=3)
    a = rnn.fit(m1, xs, ys, epochs=2, batch_size=4, stateful=True, progress=False)
    b = rnn.fit(m2, xs, ys, epochs=2, batch_size=4, shuffle=False, progress=False)
    assert a.batch_losses[0] == b.batch_losses[0] and a.batch_losses[1] != b.batch_losses[1]


def test_many_to_one_classification_learns():
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((64, 6, 1))
    labels = (xs.sum(axis=(1, 2)) > 0).astype(np.int64)
    m = Model(cells.lstm(1, 8), head=2)
    hist = rnn.fit(m, xs, labels, loss="cross_entropy", at="last", epochs=40, batch_size=16,
                   progress=False)
    ys, _ = m.forward(xs)
    assert hist.losses[-1] < 0.4 and np.mean(ys[:, -1].argmax(-1) == labels) > 0.85


def test_progress_bar_goes_to_stderr(capsys):
    xs, ys = sine_task(4)
    rnn.fit(Model(cells.elman(1, 2), head=1), xs, ys, epochs=2, batch_size=4)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "loss" in err


# ---------------------------------------------------------------- training never poisons
# the weights (issue 8, section 2)
def _data(n=8, T=5, dtype="float64"):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, T, 1)).astype(dtype),
            rng.standard_normal((n, T, 1)).astype(dtype))


def _copy(params):
    return {k: v.copy() for k, v in params.items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("make, match", [
    (lambda: rnn.optim.SGD(lr=float("inf")), "lr must be a finite number > 0, got inf"),
    (lambda: rnn.optim.SGD(lr=float("nan")), "lr must be .* got nan"),
    (lambda: rnn.optim.SGD(lr=0.0), "lr must be .* got 0.0"),
    (lambda: rnn.optim.SGD(lr=-1e-3), "lr must be .* got -0.001"),
    (lambda: rnn.optim.SGD(momentum=-0.5), "momentum must be a finite number >= 0, got -0.5"),
    (lambda: rnn.optim.SGD(momentum=float("nan")), "momentum .* got nan"),
    (lambda: rnn.optim.SGD(weight_decay=-1.0), "weight_decay .* got -1.0"),
    (lambda: rnn.optim.SGD(nesterov=True), "nesterov=True needs a momentum > 0"),
    (lambda: rnn.optim.Adam(lr=float("nan")), "lr must be .* got nan"),
    (lambda: rnn.optim.Adam(betas=(1, 1)), r"betas\[0\] must be in \[0, 1\), got 1"),
    (lambda: rnn.optim.Adam(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\), got 1.0"),
    (lambda: rnn.optim.Adam(betas=(-0.1, 0.9)), r"betas\[0\] .* got -0.1"),
    (lambda: rnn.optim.Adam(betas=(0.9, float("nan"))), r"betas\[1\] .* got nan"),
    (lambda: rnn.optim.Adam(betas=(0.9,)), "betas must be a pair"),
    (lambda: rnn.optim.Adam(eps=0.0), "eps must be a finite number > 0, got 0.0"),
    (lambda: rnn.optim.Adam(eps=-1e-8), "eps .* got -1e-08"),
])
def test_nonsense_optimizer_settings_are_refused_up_front(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_an_optimizer_setting_changed_later_is_refused_by_fit():
    xs, ys = _data()
    m = Model(cells.elman(1, 4), head=1, seed=0)
    before = _copy(m.params)
    opt = rnn.optim.SGD(lr=0.1)
    opt.lr = float("nan")
    with pytest.raises(ValueError, match="lr must be .* got nan"):
        rnn.fit(m, xs, ys, optimizer=opt, epochs=1, progress=False)
    assert _same(before, m.params)


@pytest.mark.parametrize("kw, match", [
    ({"clip_norm": 0.0}, "clip_norm must be a number > 0 or None, got 0.0"),
    ({"clip_norm": -1.0}, "clip_norm .* got -1.0"),
    ({"clip_norm": float("nan")}, "clip_norm .* got nan"),
    ({"clip_value": 0}, "clip_value .* got 0"),
    ({"clip_value": float("nan")}, "clip_value .* got nan"),
    ({"epochs": 0}, "epochs must be a positive int, got 0"),
    ({"epochs": 2.5}, "epochs .* got 2.5"),
    ({"epochs": True}, "epochs .* got True"),
    ({"batch_size": -4}, "batch_size must be a positive int, got -4"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite must be 'raise' or 'skip'"),
])
def test_nonsense_fit_settings_are_refused_up_front(kw, match):
    xs, ys = _data()
    m = Model(cells.elman(1, 4), head=1, seed=0)
    before = _copy(m.params)
    with pytest.raises(ValueError, match=match):
        rnn.fit(m, xs, ys, progress=False, **kw)
    assert _same(before, m.params)


def test_numpy_ints_are_counts():
    xs, ys = _data()
    hist = rnn.fit(Model(cells.elman(1, 2), head=1), xs, ys, epochs=np.int64(2),
                   batch_size=np.int32(4), progress=False)
    assert len(hist.losses) == 2 and len(hist.batch_losses) == 4


def test_a_non_finite_update_is_never_written_sgd():
    p = {"a": np.array([1e308, 1.0]), "b": np.array([2.0])}
    g = {"a": np.array([-1.0, 0.5]), "b": np.array([1.0])}
    opt = rnn.optim.SGD(lr=1e308, momentum=0.9)
    before = _copy(p)
    with pytest.raises(FloatingPointError, match="SGD step would make 'a' non-finite"):
        opt.step(p, g)
    assert _same(before, p) and opt.state == {}  # 'b' was fine, but is not half-updated


def test_a_non_finite_state_is_never_written_adam():
    p = {"a": np.array([1.0, 1.0])}
    opt = rnn.optim.Adam(lr=1e-3)
    opt.step(p, {"a": np.array([1.0, 1.0])})
    after1, m1, v1 = _copy(p), _copy(opt.m), _copy(opt.v)
    with pytest.raises(FloatingPointError, match="state for 'a' non-finite"):
        opt.step(p, {"a": np.array([1e200, 1.0])})  # g * g overflows into v
    assert _same(after1, p) and _same(m1, opt.m) and _same(v1, opt.v) and opt.t == 1
    with pytest.raises(FloatingPointError, match="gradient of 'a' is not finite"):
        opt.step(p, {"a": np.array([np.nan, 1.0])})
    assert _same(after1, p) and opt.t == 1
    opt.step(p, {"a": np.array([1.0, 1.0])})  # and it goes on from where it was
    assert opt.t == 2 and np.all(p["a"] < after1["a"])


def _poisoned_last_batch(monkeypatch, what):
    """Make bptt's result (fit runs a Model's batches with run_batch) non-finite on the
    last batch of the run."""
    from rnn.train import fit as fit_mod

    calls = {"n": 0}
    real = fit_mod.run_batch

    def bad_bptt(*a, **kw):
        res = real(*a, **kw)
        calls["n"] += 1
        if calls["n"] == 4:
            if what == "loss":
                res.loss = float("nan")
            else:
                next(iter(res.grads.values()))[...] = np.inf
        return res

    monkeypatch.setattr(fit_mod, "run_batch", bad_bptt)


@pytest.mark.parametrize("what", ["loss", "grad"])
def test_a_non_finite_batch_stops_before_the_update_naming_epoch_and_batch(monkeypatch, what):
    xs, ys = _data()
    m = Model(cells.elman(1, 4), head=1, seed=0)
    ref = Model(cells.elman(1, 4), head=1, seed=0)
    rnn.fit(ref, xs, ys, epochs=1, batch_size=4, shuffle=False, progress=False)
    rnn.fit(ref, xs, ys, epochs=1, batch_size=4, shuffle=False, progress=False)
    _poisoned_last_batch(monkeypatch, what)  # the 4th batch: epoch 2, batch 2 (the last)
    with pytest.raises(FloatingPointError, match="epoch 2, batch 2: .*nothing was updated"):
        rnn.fit(m, xs, ys, epochs=2, batch_size=4, shuffle=False, progress=False,
                optimizer=rnn.optim.Adam(lr=1e-2))
    assert all(np.all(np.isfinite(v)) for v in m.params.values())
    # the weights are exactly those after epoch 2, batch 1: not after batch 2 of a
    # clean run (ref), and not touched by the bad batch
    assert not _same(ref.params, m.params)


def test_skip_leaves_a_non_finite_batch_out(monkeypatch):
    xs, ys = _data()
    _poisoned_last_batch(monkeypatch, "loss")
    m = Model(cells.elman(1, 4), head=1, seed=0)
    hist = rnn.fit(m, xs, ys, epochs=2, batch_size=4, shuffle=False, progress=False,
                   on_nonfinite="skip")
    assert hist.skipped == [(2, 2)] and len(hist.batch_losses) == 4
    assert np.isnan(hist.batch_losses[3]) and np.isfinite(hist.losses[1])
    assert hist.losses[1] == hist.batch_losses[2]  # the epoch mean leaves the batch out
    assert all(np.all(np.isfinite(v)) for v in m.params.values())


def test_an_update_that_overflows_stops_fit_with_the_weights_intact():
    xs, ys = _data(dtype="float32")
    m = Model(cells.elman(1, 4), head=1, seed=0, dtype="float32")
    before = _copy(m.params)
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1: Adam step would make"):
        rnn.fit(m, xs, ys, epochs=1, batch_size=8, progress=False,
                optimizer=rnn.optim.Adam(lr=1e39))  # finite, but inf in float32
    assert _same(before, m.params)
    hist = rnn.fit(m, xs, ys, epochs=2, batch_size=4, progress=False,
                   optimizer=rnn.optim.Adam(lr=1e39), on_nonfinite="skip")
    assert len(hist.skipped) == 4 and _same(before, m.params)


def test_clip_norm_scales_finite_gradients_whose_squares_overflow():
    g = {"a": np.full(4, 4e19, np.float32), "b": np.array([-3e19], np.float32)}
    want = np.sqrt(4 * np.float64(np.float32(4e19)) ** 2 + np.float64(np.float32(3e19)) ** 2)
    norm = clip_grad_norm(g, 1.0)
    assert np.isclose(norm, want, rtol=1e-12)
    assert g["a"].dtype == np.float32 and np.all(np.isfinite(g["a"]))
    got = np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in g.values()))
    assert np.isclose(got, 1.0, rtol=1e-6)
    big = {"a": np.full(3, 1e308), "b": np.array([-1e308])}  # the norm itself passes 1.8e308
    assert clip_grad_norm(big, 2.0) == np.inf
    assert np.allclose(big["a"], 1.0) and np.allclose(big["b"], -1.0)


def test_clip_norm_leaves_small_gradients_alone():
    g = {"a": np.array([1e-30, 0.0], np.float32)}
    assert np.isclose(clip_grad_norm(g, 1.0), 1e-30, rtol=1e-6)
    assert g["a"][0] == np.float32(1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("big", [1e15, 1e17, 1e30, 3e38])
def test_log_softmax_of_huge_tied_logits(dtype, big):
    from engine import Tensor, kernels

    x = np.full((2, 3), big, dtype)
    x[1] = -big
    want = -np.log(3.0)
    out = kernels.log_softmax_rows(x)
    assert out.dtype == dtype and np.allclose(out, want, rtol=1e-6)
    t = Tensor(x).log_softmax()
    assert np.allclose(t.data, want, rtol=1e-6)
    y = np.array([[big, big, 0.0]], dtype)
    assert np.allclose(kernels.log_softmax_rows(y)[0, :2], -np.log(2.0), rtol=1e-6)


def test_cli_train_refuses_a_bad_learning_rate(capsys):
    from tools.cli import main

    for lr in ["nan", "inf", "0", "-1e-3", "abc"]:
        with pytest.raises(SystemExit) as e:
            main(["train", "adding", f"--lr={lr}", "--samples", "8", "--epochs", "1"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1, err
        assert "--lr: must be a finite number > 0" in err and "Traceback" not in err
