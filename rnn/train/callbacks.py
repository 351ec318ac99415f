"""Callbacks for ``rnn.fit(..., callbacks=(...))``.

A callback is any callable ``(epoch, history, model) -> bool``: fit calls it after each
epoch (``epoch`` counts from 0; the History holds that epoch's losses) and stops after
that epoch when one returns True. An object may also have

- ``begin(model)``: called when fit starts (to reset what a previous run left);
- ``end(history, model)``: called when fit ends, stopped or not;
- ``state_dict() -> (arrays, numbers)`` and ``load_state_dict(arrays, numbers)``: what a
  checkpoint must hold for a resumed run to go on exactly (as the optimizers have).

A plain function is taken to keep no state of its own; fit with ``checkpoint=`` refuses
a callable object without ``state_dict``, since it could not be resumed exactly.

>>> import numpy as np, rnn
>>> stop = rnn.callbacks.EarlyStopping(patience=2)
>>> h, m = rnn.History(), rnn.Model(rnn.cells.elman(1, 2))
>>> stop.begin(m)
>>> for e, v in enumerate([3.0, 2.0, 2.5, 2.1]):
...     h.val_losses.append(v)
...     print(e, stop(e, h, m))
0 False
1 False
2 False
3 True
>>> stop.best_epoch
1
"""

from __future__ import annotations

import math
import numbers

import numpy as np


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs in a row
    (Keras's ``EarlyStopping``): an epoch improves when its loss is below the best so far
    minus ``min_delta``. With ``restore_best=True`` the model ends with the weights of its
    best epoch, whether the run stopped early or ran all its epochs (through
    ``model.load_params``). ``monitor="loss"`` watches the training loss instead.

    After fit: ``best_epoch`` (from 0), ``best`` (its loss), ``stopped_epoch`` (the epoch
    after which it stopped, or None)."""

    def __init__(self, patience: int = 0, restore_best: bool = True, min_delta: float = 0.0,
                 monitor: str = "val_loss"):
        if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) \
                or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, numbers.Real) \
                or not 0 <= min_delta < math.inf:
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        if monitor not in ("val_loss", "loss"):
            raise ValueError(f"monitor must be 'val_loss' or 'loss', got {monitor!r}")
        self.patience, self.restore_best = int(patience), bool(restore_best)
        self.min_delta, self.monitor = float(min_delta), monitor
        self.begin(None)

    @property
    def needs_validation(self) -> bool:
        return self.monitor == "val_loss"

    def begin(self, model) -> None:
        self.best, self.best_epoch, self.wait, self.stopped_epoch = math.inf, None, 0, None
        self.best_weights: dict[str, np.ndarray] | None = None

    def __call__(self, epoch: int, history, model) -> bool:
        losses = history.val_losses if self.monitor == "val_loss" else history.losses
        if not losses:
            raise ValueError("EarlyStopping watches the validation loss: pass fit "
                             "validation=(xs, ys) or validation_split, or "
                             "EarlyStopping(monitor='loss')")
        current = losses[-1]
        self.wait += 1
        if current < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = float(current), epoch, 0
            if self.restore_best:
                self.best_weights = {k: np.array(v) for k, v in model.params.items()}
            return False
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            return True
        return False

    def end(self, history, model) -> None:
        if self.restore_best and self.best_weights is not None:
            model.load_params(self.best_weights)

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {k: v for k, v in (self.best_weights or {}).items()}
        return arrays, {"best": None if math.isinf(self.best) else self.best,
                        "best_epoch": self.best_epoch, "wait": self.wait,
                        "stopped_epoch": self.stopped_epoch,
                        "has_weights": self.best_weights is not None}

    def load_state_dict(self, arrays: dict, numbers: dict) -> None:
        best = numbers["best"]
        self.best = math.inf if best is None else best
        self.best_epoch, self.wait = numbers["best_epoch"], numbers["wait"]
        self.stopped_epoch = numbers["stopped_epoch"]
        self.best_weights = ({k: np.array(v) for k, v in arrays.items()}
                             if numbers["has_weights"] else None)

    def __repr__(self) -> str:
        return (f"rnn.callbacks.EarlyStopping(patience={self.patience}, "
                f"restore_best={self.restore_best}, min_delta={self.min_delta!r}, "
                f"monitor={self.monitor!r})")
