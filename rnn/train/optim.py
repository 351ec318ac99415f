"""Optimizers: they update a dict of parameter arrays in place, never with a non-finite value.

Every step is computed in full first (the new parameters and the new optimizer state),
checked to be finite, and only then written: a step that would put inf or NaN into a
parameter or into the optimizer's state raises :class:`NonFiniteError` and changes
nothing. Settings that make no sense (a learning rate that is not a finite positive
number, betas outside [0, 1), ...) are refused when the optimizer is made.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from engine.errors import UnrollError, all_finite

from ..model import writable


class NonFiniteError(UnrollError, FloatingPointError):
    """A loss, a gradient or an update that is not finite; nothing was written."""


def _real(name: str, value, *, low: float = 0.0, low_ok: bool = False, high: float = math.inf,
          high_ok: bool = False, what: str = "") -> float:
    """``value`` as a float in the given range, or a ValueError naming the setting."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {what or 'a real number'}, got {value!r}")
    v = float(value)
    ok = (v >= low if low_ok else v > low) and (v <= high if high_ok else v < high)
    if math.isnan(v) or not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v


class Optimizer:
    """The base of SGD and Adam: ``step`` = compute everything, check it, then write."""

    _slots: tuple[str, ...] = ()  # attributes holding {param name: array} state
    _numbers: tuple[str, ...] = ()  # attributes holding a number of state

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """The optimizer's state as ({"slot/param": array}, {name: number}), for a
        checkpoint; ``load_state_dict`` puts it back."""
        arrays = {f"{s}/{k}": v for s in self._slots for k, v in getattr(self, s).items()}
        return arrays, {n: getattr(self, n) for n in self._numbers}

    def load_state_dict(self, arrays: dict, numbers: dict) -> None:
        for s in self._slots:
            getattr(self, s).clear()
        for key, v in arrays.items():
            slot, _, name = key.partition("/")
            if slot not in self._slots:
                raise ValueError(f"{type(self).__name__} has no state {slot!r}")
            getattr(self, slot)[name] = np.array(v)
        for n in self._numbers:
            setattr(self, n, numbers[n])

    def check(self) -> None:
        """Refuse settings that make no sense (called on construction and by fit)."""

    def _update(self, params, grads) -> tuple[dict[str, np.ndarray], object]:
        """The new value of every updated parameter and the new optimizer state."""
        raise NotImplementedError

    def _commit(self, state) -> None:
        raise NotImplementedError

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Update ``params`` in place from ``grads``. A non-finite gradient, new parameter
        or new state raises NonFiniteError and leaves parameters and state untouched.
        ``params`` may be a model's read-only ``model.params``: an optimizer is one of the
        few writers it has (rnn.model.writable)."""
        params = writable(params)
        self.check()
        with np.errstate(all="ignore"):  # checked below, whatever the caller's errstate
            new, state = self._update(params, grads)
        # a NaN or inf gradient always shows up in the new parameters or the new state
        arrays = [*new.values(), *(a for _, a in self._state_arrays(state))]
        if not all(all_finite(a) for a in arrays):
            self._diagnose(grads, new, state)
        for k, v in new.items():
            np.copyto(params[k], v, casting="same_kind")
        self._commit(state)

    def _state_arrays(self, state):
        return ()

    def _diagnose(self, grads, new, state) -> None:
        """Raise for the first non-finite array: a gradient, else a new parameter, else
        the new state."""
        for k, g in grads.items():
            if not all_finite(g):
                raise NonFiniteError(f"the gradient of '{k}' is not finite; nothing was "
                                     f"updated")
        for k, v in new.items():
            if not all_finite(v):
                raise NonFiniteError(f"{type(self).__name__} step would make '{k}' non-finite "
                                     f"({self._settings()}); nothing was updated")
        for k, arr in self._state_arrays(state):
            if not all_finite(arr):
                raise NonFiniteError(f"{type(self).__name__} step would make its state for "
                                     f"'{k}' non-finite ({self._settings()}); nothing was "
                                     f"updated")

    def _settings(self) -> str:
        return ""


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum, as torch.optim.SGD."""

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, \
            weight_decay
        self.state: dict[str, np.ndarray] = {}  # momentum buffers
        self.check()

    _slots = ("state",)

    def check(self) -> None:
        _real("lr", self.lr, what="a finite number > 0")
        _real("momentum", self.momentum, low_ok=True, what="a finite number >= 0")
        _real("weight_decay", self.weight_decay, low_ok=True, what="a finite number >= 0")
        if self.nesterov and not self.momentum > 0:
            raise ValueError(f"nesterov=True needs a momentum > 0, got {self.momentum!r}")

    def _settings(self) -> str:
        return f"lr={self.lr!r}"

    def _update(self, params, grads):
        new, bufs = {}, {}
        for k, g in grads.items():
            p = params[k]
            t = p.dtype.type
            if self.weight_decay:
                g = g + t(self.weight_decay) * p
            if self.momentum:
                buf = self.state.get(k)
                buf = g.copy() if buf is None else t(self.momentum) * buf + g
                bufs[k] = buf
                g = g + t(self.momentum) * buf if self.nesterov else buf
            step = np.multiply(g, t(-self.lr))
            step += p
            new[k] = step  # p - lr * g, with one temporary
        return new, bufs

    def _state_arrays(self, state):
        return state.items()

    def _commit(self, state) -> None:
        self.state.update(state)


class Adam(Optimizer):
    """Adam (Kingma & Ba), bias-corrected, as torch.optim.Adam."""

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}
        self.check()

    _slots, _numbers = ("m", "v"), ("t",)

    def check(self) -> None:
        _real("lr", self.lr, what="a finite number > 0")
        try:
            b1, b2 = self.betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), each in [0, 1), got "
                             f"{self.betas!r}") from None
        for i, b in enumerate((b1, b2)):
            _real(f"betas[{i}]", b, low_ok=True, high=1.0, what="in [0, 1)")
        _real("eps", self.eps, what="a finite number > 0")
        _real("weight_decay", self.weight_decay, low_ok=True, what="a finite number >= 0")

    def _settings(self) -> str:
        return f"lr={self.lr!r}, betas={self.betas!r}, eps={self.eps!r}"

    def _update(self, params, grads):
        t = self.t + 1
        b1, b2 = self.betas
        new, ms, vs = {}, {}, {}
        for k, g in grads.items():
            if self.weight_decay:
                g = g + self.weight_decay * params[k]
            m = ms[k] = b1 * self.m.get(k, 0) + (1 - b1) * g
            v = vs[k] = b2 * self.v.get(k, 0) + (1 - b2) * g * g
            mhat, vhat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            new[k] = params[k] - (self.lr * mhat / (np.sqrt(vhat) + self.eps)).astype(
                params[k].dtype)
        return new, (t, ms, vs)

    def _state_arrays(self, state):
        _, ms, vs = state
        return [*ms.items(), *vs.items()]

    def _commit(self, state) -> None:
        self.t, ms, vs = state
        self.m.update(ms)
        self.v.update(vs)
