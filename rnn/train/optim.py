"""Optimizers: they update a dict of parameter arrays in place."""

from __future__ import annotations

import numpy as np


class SGD:
    """Stochastic gradient descent with (optionally Nesterov) momentum, as torch.optim.SGD."""

    def __init__(self, lr: float = 1e-2, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, \
            weight_decay
        self.state: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        for k, g in grads.items():
            if self.weight_decay:
                g = g + self.weight_decay * params[k]
            if self.momentum:
                buf = self.state.get(k)
                buf = g.copy() if buf is None else self.momentum * buf + g
                self.state[k] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            params[k] -= params[k].dtype.type(self.lr) * g


class Adam:
    """Adam (Kingma & Ba), bias-corrected, as torch.optim.Adam."""

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for k, g in grads.items():
            if self.weight_decay:
                g = g + self.weight_decay * params[k]
            m = self.m[k] = b1 * self.m.get(k, 0) + (1 - b1) * g
            v = self.v[k] = b2 * self.v.get(k, 0) + (1 - b2) * g * g
            mhat, vhat = m / (1 - b1 ** self.t), v / (1 - b2 ** self.t)
            params[k] -= (self.lr * mhat / (np.sqrt(vhat) + self.eps)).astype(params[k].dtype)
