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
