"""model.predict, model.generate (one-to-many, state carried) and batch_first=False on
forward/predict/bptt/fit."""

import numpy as np
import pytest

import rnn
from engine.errors import ShapeError
from rnn.model import sample

EXECUTORS = ["compiled", "reference"]


def onehot(k, n):
    return np.eye(n)[k]


def hand_loop(m, seq, steps, feed, executor):
    """The oracle: forward over the whole growing sequence at every step."""
    outs, drawn = [], []
    for _ in range(steps):
        y = m.forward(seq, executor=executor)[0][:, -1]
        outs.append(y)
        nxt = feed(y)
        drawn.append(nxt[1])
        seq = np.concatenate([seq, nxt[0][:, None]], axis=1)
    return np.stack(outs, 1), np.stack(drawn, 1)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_generate_classes_at_temperature_0_is_the_argmax_hand_loop(executor):
    m = rnn.Model(rnn.cells.lstm(5, 8), layers=2, head=5, seed=1)
    m.load_params({k: 4 * v for k, v in m.params.items()})  # an untrained model's argmax
    x0 = np.array([0, 3, 4])  # would repeat one class
    logits, chars = m.generate(x0, steps=7, temperature=0, kind="classes", executor=executor)
    want, wchars = hand_loop(m, onehot(x0, 5)[:, None], 7,
                             lambda y: (onehot(y.argmax(-1), 5), y.argmax(-1)), executor)
    assert logits.shape == (3, 7, 5) and chars.shape == (3, 7)
    np.testing.assert_allclose(logits, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(chars, wchars)
    assert len(np.unique(chars)) > 1  # the feedback matters: not one class repeated


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("make", [
    lambda: rnn.Model(rnn.cells.jordan(3, 6, output_size=3), seed=2),  # y[t-1] is a state
    lambda: rnn.Model(rnn.cells.gru(3, 6), head=3, seed=2, learn_initial=("h",)),
    lambda: rnn.Model(rnn.Cell.from_equations(  # reads the input a step back
        "h = tanh(W @ x + V @ x[t-1] + U @ h[t-1] + b)", inputs={"x": 3}, states={"h": 5}),
        head=3, seed=2),
    lambda: rnn.Model(rnn.Cell.from_equations(  # reads two steps back: re-run
        "h = tanh(W @ x + U @ h[t-1] + V @ h[t-2] + b)", inputs={"x": 3}, states={"h": 5}),
        head=3, seed=2),
], ids=["jordan", "gru-learned-init", "input-delay", "delay-2"])
def test_generate_values_feeds_the_output_back(make, executor):
    m = make()
    if "init_h_l0" in m.params:
        m.load_params({"init_h_l0": np.linspace(-0.5, 0.5, 6)}, strict=False)
    rng = np.random.default_rng(0)
    primer = rng.standard_normal((2, 4, 3))
    got = m.generate(primer, steps=6, executor=executor)
    want, _ = hand_loop(m, primer, 6, lambda y: (y, y[:, 0]), executor)
    assert got.shape == (2, 6, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    one = m.generate(primer[:, 0], steps=3, executor=executor)  # x0 (B, I)
    np.testing.assert_allclose(one, hand_loop(m, primer[:, :1], 3, lambda y: (y, y[:, 0]),
                                              executor)[0], rtol=1e-10, atol=1e-12)


def test_generate_carries_the_state_and_runs_one_step_at_a_time(monkeypatch):
    m = rnn.Model(rnn.cells.gru(3, 4), head=3)
    plan = m.plan()
    lengths = []
    real = plan.forward

    def spy(feed, *a, **k):
        lengths.append(feed["x"].shape[0])
        return real(feed, *a, **k)

    monkeypatch.setattr(plan, "forward", spy)
    m.generate(np.zeros((2, 5, 3)), steps=4)
    assert lengths == [5, 1, 1, 1]  # the primer once, then one step per output


def test_generate_samples_reproducibly_from_the_tempered_softmax():
    m = rnn.Model(rnn.cells.gru(4, 8), head=4, seed=0)
    a = m.generate(np.array([1, 2]), steps=20, temperature=1.5, seed=7, kind="classes")
    b = m.generate(np.array([1, 2]), steps=20, temperature=1.5, seed=7, kind="classes")
    c = m.generate(np.array([1, 2]), steps=20, temperature=1.5, seed=8, kind="classes")
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # each input is the one-hot of the class drawn from the output before it
    m2 = rnn.Model(rnn.cells.gru(4, 8), head=4, seed=0)
    seq = onehot(np.array([1, 2]), 4)[:, None]
    seq = np.concatenate([seq, onehot(a[1][:, :-1], 4)], axis=1)
    np.testing.assert_allclose(m2.forward(seq)[0], a[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_sample_follows_softmax_of_logits_over_temperature(temperature):
    logits = np.array([2.0, 0.5, -1.0, 1.0])
    n = 200_000
    draws = sample(np.tile(logits, (n, 1)), temperature, np.random.default_rng(0))
    p = np.exp(logits / temperature)
    p /= p.sum()
    freq = np.bincount(draws, minlength=4) / n
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n))  # 5 sigma


def test_sample_at_tiny_temperature_is_the_argmax_and_never_nan():
    logits = np.array([[1.0, 3.0, 2.9], [5.0, -1e300, 4.0]])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample(logits, 1e-300, rng), [1, 0])
    np.testing.assert_array_equal(sample(logits, 0, rng), [1, 0])


@pytest.mark.parametrize("kw, err, match", [
    ({"steps": 0}, ValueError, "steps must be a positive int"),
    ({"temperature": -1.0}, ValueError, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"kind": "tokens"}, ValueError, "kind must be 'values'"),
])
def test_generate_refuses_nonsense(kw, err, match):
    m = rnn.Model(rnn.cells.gru(2, 3), head=2)
    with pytest.raises(err, match=match):
        m.generate(np.zeros((1, 2)), **{"steps": 3, **kw})


def test_generate_needs_output_size_equal_to_input_size():
    m = rnn.Model(rnn.cells.gru(2, 3), head=1)
    with pytest.raises(ShapeError, match="output size must equal the input size; this "
                                         "model maps 2 features to 1"):
        m.generate(np.zeros((1, 2)), steps=3)


def test_generate_refuses_class_indices_out_of_range():
    m = rnn.Model(rnn.cells.gru(3, 3), head=3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        m.generate(np.array([0, 3]), steps=2, kind="classes")


# ---------------------------------------------------------------- batch_first=False
def _data(B=3, T=6, I=2, O=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, T, I)), rng.standard_normal((B, T, O))


@pytest.mark.parametrize("executor", EXECUTORS)
def test_forward_and_predict_time_major_are_the_transpose(executor):
    m = rnn.Model(rnn.cells.lstm(2, 4), layers=2, head=2)
    xs, _ = _data()
    mask = np.ones((3, 6))
    mask[0, 4:] = 0
    ys, st = m.forward(xs, mask=mask, executor=executor)
    yt, stt = m.forward(xs.transpose(1, 0, 2), mask=mask.T, executor=executor,
                        batch_first=False)
    assert yt.shape == (6, 3, 2)
    np.testing.assert_array_equal(yt, ys.transpose(1, 0, 2))
    for k in st:
        np.testing.assert_array_equal(stt[k], st[k])
    np.testing.assert_array_equal(m.predict(xs.transpose(1, 0, 2), batch_first=False),
                                  m.forward(xs)[0].transpose(1, 0, 2))
    np.testing.assert_array_equal(m.predict(xs, mask=mask, executor=executor), ys)


@pytest.mark.parametrize("loss, at", [("mse", "all"), ("mse", "last"),
                                      ("cross_entropy", "all"), ("cross_entropy", "last")])
def test_bptt_time_major_is_the_transpose(loss, at):
    m = rnn.Model(rnn.cells.gru(2, 4), head=3)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((3, 5, 2))
    shape = (3, 5) if at == "all" else (3,)
    ys = (rng.integers(0, 3, shape) if loss == "cross_entropy"
          else rng.standard_normal(shape + (3,)))
    mask = np.ones((3, 5))
    mask[1, 3:] = 0
    a = rnn.bptt(m, xs, ys, loss=loss, at=at, mask=mask, truncate=2)
    tys = ys.swapaxes(0, 1) if at == "all" else ys
    b = rnn.bptt(m, xs.swapaxes(0, 1), tys, loss=loss, at=at, mask=mask.T, truncate=2,
                 batch_first=False)
    assert a.loss == b.loss
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k])
    np.testing.assert_array_equal(b.outputs, a.outputs.swapaxes(0, 1))


def test_fit_time_major_trains_exactly_as_batch_major():
    xs, ys = _data(B=12, T=5)
    vx, vy = _data(B=4, T=5, seed=1)
    runs = []
    for bf in (True, False):
        m = rnn.Model(rnn.cells.gru(2, 4), head=2, seed=3)
        t = (lambda a: a) if bf else (lambda a: a.swapaxes(0, 1))
        h = rnn.fit(m, t(xs), t(ys), epochs=3, batch_size=4, progress=False,
                    validation=(t(vx), t(vy)), batch_first=bf)
        runs.append((h.losses, h.val_losses, {k: v.copy() for k, v in m.params.items()}))
    assert runs[0][:2] == runs[1][:2]
    for k in runs[0][2]:
        np.testing.assert_array_equal(runs[0][2][k], runs[1][2][k])


def test_time_major_errors_speak_of_time_major():
    m = rnn.Model(rnn.cells.gru(2, 4), head=2)
    with pytest.raises(ShapeError, match=r"\(time, batch, features\) = \(T, B, 2\)"):
        m.forward(np.zeros((5, 2)), batch_first=False)
    with pytest.raises(ShapeError, match=r"expected \(time, batch, features\).* got \(5, 3, 4\)"):
        m.predict(np.zeros((5, 3, 4)), batch_first=False)
