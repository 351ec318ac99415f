"""fit's callbacks (EarlyStopping, plain callables), validation and validation_split,
checkpoints that resume exactly with all of them in play, History.plot, the progress."""

import io

import numpy as np
import pytest

import rnn
import rnn.train.fit as F


def _data(n=16, T=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, T, 1)), rng.standard_normal((n, T, 1))


def _copy(params):
    return {k: np.array(v) for k, v in params.items()}


class Recorder:
    """A callback that keeps the weights after every epoch (a plain callable object
    with a state_dict, so checkpoints take it too)."""

    def __init__(self):
        self.weights = []

    def __call__(self, epoch, history, model):
        self.weights.append(_copy(model.params))

    def state_dict(self):
        return {}, {}

    def load_state_dict(self, arrays, numbers):
        pass


def _overfit(callbacks, epochs=40, **kw):
    """Noise targets: the validation loss falls and then rises."""
    xs, ys = _data(16)
    vx, vy = _data(16, seed=1)
    m = rnn.Model(rnn.cells.gru(1, 12), head=1, seed=0)
    h = rnn.fit(m, xs, ys, epochs=epochs, batch_size=4, progress=False,
                optimizer=rnn.optim.Adam(lr=0.03), validation=(vx, vy),
                callbacks=callbacks, **kw)
    return m, h


def test_early_stopping_restores_exactly_the_best_epochs_weights():
    rec, stop = Recorder(), rnn.callbacks.EarlyStopping(patience=3)
    m, h = _overfit((rec, stop))
    best = int(np.argmin(h.val_losses))
    assert len(h.losses) < 40, "it never stopped"
    assert stop.best_epoch == best and stop.stopped_epoch == len(h.losses) - 1
    assert len(h.losses) == best + 3 + 1  # three epochs without improvement, then stop
    assert len(h.val_losses) == len(h.lrs) == len(h.losses) == len(rec.weights)
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], rec.weights[best][k])
    assert any(not np.array_equal(m.params[k], rec.weights[-1][k]) for k in m.params)


def test_early_stopping_without_restore_keeps_the_last_weights():
    rec, stop = Recorder(), rnn.callbacks.EarlyStopping(patience=3, restore_best=False)
    m, h = _overfit((rec, stop))
    assert len(h.losses) < 40
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], rec.weights[-1][k])


def test_early_stopping_restores_the_best_even_when_epochs_run_out():
    rec, stop = Recorder(), rnn.callbacks.EarlyStopping(patience=100)
    m, h = _overfit((rec, stop), epochs=12)
    best = int(np.argmin(h.val_losses))
    assert len(h.losses) == 12 and best < 11
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], rec.weights[best][k])


def test_a_callable_that_returns_true_stops_after_that_epoch():
    xs, ys = _data(8)
    calls = []

    def stop_at_2(epoch, history, model):
        calls.append((epoch, len(history.losses)))
        return epoch == 2

    h = rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=10, progress=False,
                callbacks=[stop_at_2, lambda e, h, m: None])
    assert len(h.losses) == 3 and calls == [(0, 1), (1, 2), (2, 3)]


def test_early_stopping_needs_validation_up_front():
    xs, ys = _data(8)
    m = rnn.Model(rnn.cells.elman(1, 3), head=1)
    before = _copy(m.params)
    with pytest.raises(ValueError, match="watches the validation loss"):
        rnn.fit(m, xs, ys, epochs=2, progress=False,
                callbacks=[rnn.callbacks.EarlyStopping(2)])
    assert all(np.array_equal(before[k], m.params[k]) for k in before)
    h = rnn.fit(m, xs, ys, epochs=2, progress=False,  # or it watches the training loss
                callbacks=[rnn.callbacks.EarlyStopping(2, monitor="loss")])
    assert len(h.losses) == 2


def test_callbacks_must_be_callable():
    xs, ys = _data(8)
    with pytest.raises(TypeError, match="a callback is a callable"):
        rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=1, progress=False,
                callbacks=[3])


# ---------------------------------------------------------------- validation
def test_validation_split_is_the_last_part_before_shuffling():
    xs, ys = _data(20)
    mask = np.ones((20, 6))
    mask[::3, 4:] = 0
    runs = []
    for kw in ({"validation_split": 0.25},
               {"validation": (xs[15:], ys[15:], mask[15:]), "cut": 15}):
        cut = kw.pop("cut", 20)
        m = rnn.Model(rnn.cells.gru(1, 4), head=1, seed=0)
        h = rnn.fit(m, xs[:cut], ys[:cut], mask=mask[:cut], epochs=3, batch_size=4,
                    progress=False, **kw)
        runs.append((h.losses, h.val_losses, h.batch_losses))
    assert runs[0] == runs[1] and len(runs[0][1]) == 3
    assert len(runs[0][2]) == 3 * 4  # 15 sequences of training: 4 batches an epoch


@pytest.mark.parametrize("kw, match", [
    ({"validation_split": 1.0}, r"validation_split must be a number in \[0, 1\)"),
    ({"validation_split": -0.1}, "validation_split must be"),
    ({"validation_split": 0.99}, "leaves 16 for validation and 0 for training"),
    ({"validation_split": 0.2, "validation": "both"}, "not both"),
    ({"validation": ([1.0],)}, r"validation must be \(xs, ys\) or \(xs, ys, mask\)"),
    ({"validation": "bad-ys"}, "targets for loss='mse'"),
])
def test_bad_validation_is_refused_up_front(kw, match):
    xs, ys = _data(16)
    if kw.get("validation") == "both":
        kw["validation"] = (xs, ys)
    if kw.get("validation") == "bad-ys":
        kw["validation"] = (xs, ys[:, :, 0])
    m = rnn.Model(rnn.cells.elman(1, 3), head=1)
    before = _copy(m.params)
    try:
        with pytest.raises(ValueError, match=match):
            rnn.fit(m, xs, ys, epochs=1, progress=False, **kw)
    finally:
        assert all(np.array_equal(before[k], m.params[k]) for k in before)


# ---------------------------------------------------------------- checkpoints
class Cut(Exception):
    pass


def _run(path, cut_at=None, epochs=8, resume=True, **model):
    """A run with a schedule, validation_split, EarlyStopping and a checkpoint after every
    update; with ``cut_at``, killed at that call into bptt (training or validation).
    ``model``: more arguments of the GRU model (layers, dropout, ...)."""
    xs, ys = _data(20, seed=2)
    m = rnn.Model(rnn.cells.gru(1, 10), head=1, seed=4, **model)
    stop = rnn.callbacks.EarlyStopping(patience=3)
    calls = {"n": 0}
    real = F.run_batch  # fit's bptt of a Model's batch (training or validation)

    def bptt(*a, **k):
        calls["n"] += 1
        if calls["n"] == cut_at:
            raise Cut
        return real(*a, **k)

    F.run_batch = bptt
    try:
        h = rnn.fit(m, xs, ys, epochs=epochs, batch_size=4, progress=False,
                    optimizer=rnn.optim.Adam(lr=0.05), validation_split=0.2,
                    schedule=rnn.schedules.plateau(0, 0.5), callbacks=[stop],
                    checkpoint=path, checkpoint_every=1, resume=resume)
    finally:
        F.run_batch = real
    return m, h, stop, calls["n"]


def _same_run(a, b):
    (ma, ha, sa, _), (mb, hb, sb, _) = a, b
    assert (ha.losses, ha.val_losses, ha.lrs, ha.batch_losses, ha.grad_norms) == \
        (hb.losses, hb.val_losses, hb.lrs, hb.batch_losses, hb.grad_norms)
    assert (sa.best_epoch, sa.stopped_epoch) == (sb.best_epoch, sb.stopped_epoch)
    for k in ma.params:
        np.testing.assert_array_equal(ma.params[k], mb.params[k])


def test_a_run_with_schedule_validation_and_early_stopping_resumes_bit_identical(tmp_path):
    whole = _run(tmp_path / "whole.ckpt")
    h, stop, calls = whole[1], whole[2], whole[3]
    assert calls == len(h.batch_losses) + len(h.val_losses), "the cuts miss fit's calls"
    assert stop.stopped_epoch is not None and len(h.losses) < 8, "early stopping never fired"
    assert len(set(h.lrs)) > 1, "the plateau schedule never cut the lr"
    for cut in range(1, calls + 1):  # killed at every call into bptt
        path = tmp_path / f"cut{cut}.ckpt"
        with pytest.raises(Cut):
            _run(path, cut_at=cut)
        _same_run(_run(path), whole)
    # a stopped run stays stopped, even when asked for more epochs
    _same_run(_run(tmp_path / "whole.ckpt", epochs=20), whole)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_run_with_dropout_and_recurrent_dropout_resumes_bit_identical(tmp_path,
                                                                        bidirectional):
    drop = dict(layers=2, dropout=0.3, recurrent_dropout=0.2, bidirectional=bidirectional)
    whole = _run(tmp_path / "whole.ckpt", epochs=3, **drop)
    assert whole[0].trains_differently
    plain = _run(tmp_path / "plain.ckpt", epochs=3, layers=2, bidirectional=bidirectional)
    assert plain[1].batch_losses != whole[1].batch_losses  # the masks act
    for cut in (2, whole[3] // 2 + 1, whole[3]):  # killed early, midway, at the last call
        path = tmp_path / f"cut{cut}.ckpt"
        with pytest.raises(Cut):
            _run(path, cut_at=cut, epochs=3, **drop)
        _same_run(_run(path, epochs=3, **drop), whole)


def test_a_checkpoint_refuses_another_schedule_and_stateful_objects_it_cannot_hold(tmp_path):
    xs, ys = _data(8)
    path = tmp_path / "run.ckpt"
    rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=1, progress=False,
            schedule=rnn.schedules.step(2, 0.5), checkpoint=path)
    with pytest.raises(ValueError, match="another run"):
        rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=2, progress=False,
                schedule=rnn.schedules.step(3, 0.5), checkpoint=path, resume=True)

    class Counter:
        def __call__(self, epoch, history, model):
            return False

    with pytest.raises(ValueError, match="cannot hold the state of .*Counter"):
        rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=1, progress=False,
                callbacks=[Counter()], checkpoint=tmp_path / "other.ckpt")


# ---------------------------------------------------------------- plot, progress
def test_plot_is_a_figure_of_the_loss_curves_and_grad_norms():
    from matplotlib.figure import Figure

    xs, ys = _data(8)
    h = rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=4, batch_size=4,
                validation_split=0.25, progress=False)
    fig = h.plot()
    assert isinstance(fig, Figure) and fig.canvas.manager is None  # no pyplot state
    loss_ax, norm_ax = fig.axes
    lines = {ln.get_label(): ln.get_ydata() for ln in loss_ax.get_lines()}
    np.testing.assert_array_equal(lines["train"], h.losses)
    np.testing.assert_array_equal(lines["validation"], h.val_losses)
    np.testing.assert_array_equal(norm_ax.get_lines()[0].get_ydata(), h.grad_norms)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_progress_off_a_terminal_is_a_few_plain_lines(capsys):
    xs, ys = _data(8)
    rnn.fit(rnn.Model(rnn.cells.elman(1, 2), head=1), xs, ys, epochs=25, batch_size=8,
            validation_split=0.25)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and 2 <= len(lines) <= 11, err
    assert lines[-1].startswith("epoch 25/25 [") and "loss" in lines[-1] and "val" in lines[-1]


def test_progress_on_a_terminal_is_a_tqdm_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    err = Tty()
    monkeypatch.setattr("sys.stderr", err)
    xs, ys = _data(8)
    rnn.fit(rnn.Model(rnn.cells.elman(1, 2), head=1), xs, ys, epochs=3, batch_size=8)
    out = err.getvalue()
    assert "\r" in out and "epoch 3/3" in out and "loss" in out
    monkeypatch.undo()


def test_progress_false_prints_nothing(capsys):
    xs, ys = _data(8)
    rnn.fit(rnn.Model(rnn.cells.elman(1, 2), head=1), xs, ys, epochs=3, progress=False)
    assert capsys.readouterr().err == ""
