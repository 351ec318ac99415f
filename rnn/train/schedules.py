"""Learning-rate schedules for ``rnn.fit(..., schedule=...)``.

A schedule is any callable ``(epoch, lr, history) -> lr``: fit calls it before each
epoch (``epoch`` counts from 0) with the optimizer's current lr and the History so far,
and trains that epoch at the lr it returns, as Keras's ``LearningRateScheduler`` does.
The built-ins keep no state of their own: what they need (the first epoch's lr, the
losses) is in the History, so a run resumed from a checkpoint goes on exactly.

>>> import rnn
>>> s = rnn.schedules.step(2, 0.5)
>>> lrs, h = [0.1], rnn.History()
>>> for e in range(1, 5):
...     lrs.append(s(e, lrs[-1], h))
>>> lrs
[0.1, 0.1, 0.05, 0.05, 0.025]
"""

from __future__ import annotations

import math
import numbers

from ..program.unroll import positive_int
from .optim import _real

_number = _real  # a setting's value checked, or an error naming it


_count = positive_int


class Schedule:
    """The base of the built-ins: a callable ``(epoch, lr, history) -> lr`` that prints
    as it was made and has no state for a checkpoint to hold."""

    def __call__(self, epoch: int, lr: float, history) -> float:
        raise NotImplementedError

    def state_dict(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state_dict(self, arrays: dict, numbers: dict) -> None:
        pass

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"rnn.schedules.{type(self).__name__}({args})"


class step(Schedule):
    """Multiply the lr by ``gamma`` every ``every`` epochs (torch's ``StepLR``):
    ``step(2, 0.5)`` from 0.1 trains at 0.1, 0.1, 0.05, 0.05, 0.025, ..."""

    def __init__(self, every: int, gamma: float = 0.1):
        self.every = _count("every", every)
        self.gamma = _number("gamma", gamma, high=1.0, high_ok=True,
                             what="a number in (0, 1]")

    def __call__(self, epoch, lr, history):
        return lr * self.gamma if epoch > 0 and epoch % self.every == 0 else lr


class cosine(Schedule):
    """Cosine annealing from the first epoch's lr down to ``min_lr`` over ``epochs``
    epochs (torch's ``CosineAnnealingLR`` with ``T_max=epochs``); after that it stays at
    ``min_lr``. The lr of epoch e is
    ``min_lr + (lr0 - min_lr) * (1 + cos(pi * e / epochs)) / 2``."""

    def __init__(self, epochs: int, min_lr: float = 0.0):
        self.epochs = _count("epochs", epochs)
        self.min_lr = _number("min_lr", min_lr, low_ok=True, what="a finite number >= 0")

    def __call__(self, epoch, lr, history):
        lr0 = history.lrs[0] if history.lrs else lr  # the lr the run started at
        e = min(epoch, self.epochs)
        return self.min_lr + (lr0 - self.min_lr) * (1 + math.cos(math.pi * e / self.epochs)) / 2


class plateau(Schedule):
    """Multiply the lr by ``factor`` when the validation loss (the training loss if fit
    has no validation) has not improved for more than ``patience`` epochs, as torch's
    ``ReduceLROnPlateau(mode="min")`` does: an epoch improves when its loss is below
    ``best * (1 - threshold)``; after a cut, ``cooldown`` epochs count as neither; the lr
    never goes below ``min_lr``. The counters are recomputed from the History each
    epoch, so a resumed run decides as an uninterrupted one."""

    def __init__(self, patience: int = 10, factor: float = 0.1, min_lr: float = 0.0,
                 threshold: float = 1e-4, cooldown: int = 0):
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, numbers.Integral) \
                or cooldown < 0:
            raise ValueError(f"cooldown must be an int >= 0, got {cooldown!r}")
        self.patience, self.cooldown = int(patience), int(cooldown)
        self.factor = _number("factor", factor, high=1.0, what="a number in (0, 1)")
        self.min_lr = _number("min_lr", min_lr, low_ok=True, what="a finite number >= 0")
        self.threshold = _number("threshold", threshold, low_ok=True, high=1.0,
                                 what="a number in [0, 1)")

    def cut_now(self, metrics) -> bool:
        """Whether the last of ``metrics`` (one per epoch) triggers a cut."""
        best, bad, cool, cut = math.inf, 0, 0, False
        for m in metrics:
            if m < best * (1 - self.threshold):
                best, bad = m, 0
            else:
                bad += 1
            if cool > 0:
                cool, bad = cool - 1, 0
            cut = bad > self.patience
            if cut:
                cool, bad = self.cooldown, 0
        return cut

    def __call__(self, epoch, lr, history):
        metrics = history.val_losses or history.losses
        if not self.cut_now(metrics):
            return lr
        new = max(lr * self.factor, self.min_lr)
        return new if lr - new > 1e-8 else lr  # torch's eps: changes below it are ignored
