"""Learning-rate schedules (rnn/train/schedules.py): the lr of every epoch against
torch.optim.lr_scheduler, and fit training at it."""

import math

import numpy as np
import pytest

import rnn
from rnn import History


def _data(n=8, T=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, T, 1)), rng.standard_normal((n, T, 1))


def torch_lrs(make, epochs, lr, metrics=None):
    """The lr torch trains each epoch at: read before the epoch, step() after it."""
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(torch.optim.lr_scheduler, opt)
    out = []
    for e in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step(*([metrics[e]] if metrics is not None else []))
    return out


def our_lrs(schedule, epochs, lr, metrics=None):
    """The lr fit trains each epoch at, driven by hand as fit drives it."""
    h = History()
    for e in range(epochs):
        lr = schedule(e, lr, h)
        h.lrs.append(lr)
        h.losses.append(math.nan)
        if metrics is not None:
            h.val_losses.append(metrics[e])
    return h.lrs


def test_step_trains_at_the_documented_rates():
    xs, ys = _data()
    m = rnn.Model(rnn.cells.elman(1, 3), head=1)
    h = rnn.fit(m, xs, ys, epochs=5, batch_size=4, progress=False,
                optimizer=rnn.optim.SGD(lr=0.1), schedule=rnn.schedules.step(2, 0.5))
    assert h.lrs == [0.1, 0.1, 0.05, 0.05, 0.025]


def test_without_a_schedule_lrs_records_the_constant_lr():
    xs, ys = _data()
    h = rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=3, progress=False,
                optimizer=rnn.optim.Adam(lr=3e-3))
    assert h.lrs == [3e-3] * 3


@pytest.mark.parametrize("every, gamma", [(2, 0.5), (1, 0.9), (3, 0.1)])
def test_step_matches_torch_steplr(every, gamma):
    want = torch_lrs(lambda s, o: s.StepLR(o, step_size=every, gamma=gamma), 12, 0.1)
    np.testing.assert_allclose(our_lrs(rnn.schedules.step(every, gamma), 12, 0.1), want,
                               rtol=1e-12)


@pytest.mark.parametrize("epochs, min_lr", [(10, 0.0), (7, 1e-3), (1, 0.0)])
def test_cosine_matches_torch_cosineannealinglr(epochs, min_lr):
    want = torch_lrs(lambda s, o: s.CosineAnnealingLR(o, T_max=epochs, eta_min=min_lr),
                     epochs, 0.05)
    got = our_lrs(rnn.schedules.cosine(epochs, min_lr), epochs, 0.05)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15)


def test_cosine_stays_at_min_lr_after_its_epochs():
    got = our_lrs(rnn.schedules.cosine(4, 1e-3), 7, 0.1)
    assert got[4:] == [1e-3] * 3 and got[0] == 0.1


PLATEAU_METRICS = [1.0, 0.9, 0.9, 0.95, 0.9, 0.8999, 0.91, 0.5, 0.5, 0.5, 0.5, 0.5, 0.49995,
                   0.4, 0.41, 0.42, 0.43, 0.44, 0.45, 0.46, 0.47, 0.1]


@pytest.mark.parametrize("kw", [
    {"patience": 2, "factor": 0.5},
    {"patience": 0, "factor": 0.1},
    {"patience": 1, "factor": 0.5, "cooldown": 2},
    {"patience": 1, "factor": 0.5, "min_lr": 0.02},
    {"patience": 2, "factor": 0.5, "threshold": 0.0},
])
def test_plateau_matches_torch_reducelronplateau(kw):
    torch_kw = {k: v for k, v in kw.items()}
    want = torch_lrs(lambda s, o: s.ReduceLROnPlateau(o, mode="min", **torch_kw),
                     len(PLATEAU_METRICS), 0.1, PLATEAU_METRICS)
    got = our_lrs(rnn.schedules.plateau(**kw), len(PLATEAU_METRICS), 0.1, PLATEAU_METRICS)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert len(set(got)) > 1  # it did cut


def test_plateau_watches_validation_loss_else_training_loss():
    s = rnn.schedules.plateau(patience=0, factor=0.5)
    h = History(losses=[1.0, 2.0], val_losses=[1.0, 0.5])  # val improves: no cut
    assert s(2, 0.1, h) == 0.1
    h = History(losses=[1.0, 2.0])  # no validation: the training loss got worse
    assert s(2, 0.1, h) == 0.05


def test_the_schedule_sets_the_lr_the_optimizer_trains_at():
    """fit with a schedule = one-epoch fits at each scheduled lr (plain SGD, no state)."""
    xs, ys = _data(12)
    m = rnn.Model(rnn.cells.gru(1, 4), head=1, seed=1)
    h = rnn.fit(m, xs, ys, epochs=4, batch_size=4, shuffle=False, progress=False,
                optimizer=rnn.optim.SGD(lr=0.2), schedule=rnn.schedules.cosine(4))
    ref = rnn.Model(rnn.cells.gru(1, 4), head=1, seed=1)
    for lr in h.lrs:
        rnn.fit(ref, xs, ys, epochs=1, batch_size=4, shuffle=False, progress=False,
                optimizer=rnn.optim.SGD(lr=lr))
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], ref.params[k])
    assert len(set(h.lrs)) == 4


def test_a_callable_schedule_gets_epoch_current_lr_and_history():
    xs, ys = _data()
    seen = []

    def halve_when_worse(epoch, lr, history):
        seen.append((epoch, lr, list(history.losses)))
        worse = len(history.losses) > 1 and history.losses[-1] > history.losses[-2]
        return lr / 2 if worse else lr * 1.1

    opt = rnn.optim.Adam(lr=0.01)
    h = rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=3, progress=False,
                optimizer=opt, schedule=halve_when_worse)
    assert [s[0] for s in seen] == [0, 1, 2]
    assert seen[0][1] == 0.01 and seen[0][2] == [] and seen[2][2] == h.losses[:2]
    assert [s[1] for s in seen[1:]] == h.lrs[:2]  # each call gets the lr in force
    assert opt.lr == h.lrs[-1]


@pytest.mark.parametrize("schedule, match", [
    (rnn.schedules.cosine(2), r"gave lr=0.0 for epoch 2"),
    (lambda e, lr, h: float("nan"), "gave lr=nan"),
    (lambda e, lr, h: "0.1", "a learning rate is a finite number > 0"),
])
def test_a_schedule_giving_a_bad_lr_is_an_error_naming_the_epoch(schedule, match):
    xs, ys = _data()
    with pytest.raises(ValueError, match=match):
        rnn.fit(rnn.Model(rnn.cells.elman(1, 3), head=1), xs, ys, epochs=3, progress=False,
                schedule=schedule)


@pytest.mark.parametrize("make, match", [
    (lambda: rnn.schedules.step(0, 0.5), "every must be a positive int"),
    (lambda: rnn.schedules.step(2, 1.5), r"gamma must be a number in \(0, 1\]"),
    (lambda: rnn.schedules.cosine(0), "epochs must be a positive int"),
    (lambda: rnn.schedules.cosine(5, -1.0), "min_lr must be a finite number >= 0"),
    (lambda: rnn.schedules.plateau(-1, 0.5), "patience must be an int >= 0"),
    (lambda: rnn.schedules.plateau(2, 1.0), r"factor must be a number in \(0, 1\)"),
])
def test_nonsense_schedule_settings_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_schedule_must_be_callable_and_needs_an_lr():
    xs, ys = _data()
    m = rnn.Model(rnn.cells.elman(1, 3), head=1)
    with pytest.raises(TypeError, match="schedule is a callable"):
        rnn.fit(m, xs, ys, epochs=1, progress=False, schedule=0.1)

    class NoLr:
        def step(self, params, grads):
            pass

    with pytest.raises(TypeError, match="NoLr has none"):
        rnn.fit(m, xs, ys, epochs=1, progress=False, optimizer=NoLr(),
                schedule=rnn.schedules.step(1, 0.5))
