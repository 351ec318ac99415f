"""Training: mini-batches, an optimizer, gradient clipping, a progress bar, a history."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..bptt import bptt
from ..model import Model
from .optim import Adam


@dataclass
class History:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    batch_losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping, per batch
    val_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float | None) -> float:
    """Scale grads in place so their global norm is at most max_norm; return the norm
    before clipping. A non-finite norm is an error (the step would ruin the weights)."""
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads.values())))
    if not np.isfinite(norm):
        bad = [k for k, g in grads.items() if not np.all(np.isfinite(g))]
        raise FloatingPointError(f"gradient norm is {norm}: non-finite gradients in {bad}; "
                                 f"lower the learning rate or clip by value")
    if max_norm is not None and norm > max_norm:
        scale = max_norm / (norm + 1e-12)
        for g in grads.values():
            g *= g.dtype.type(scale)
    return norm


def clip_grad_value(grads: dict[str, np.ndarray], value: float | None) -> None:
    if value is not None:
        for g in grads.values():
            np.clip(g, -value, value, out=g)


class Progress:
    """One line on stderr, redrawn in place on a terminal, every ~10% otherwise."""

    def __init__(self, total: int, enabled: bool, label: str = "epoch"):
        self.total, self.enabled, self.label = total, enabled, label
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.shown = -1

    def update(self, n: int, text: str) -> None:
        if not self.enabled:
            return
        tenth = 10 * n // self.total
        if not self.tty and tenth == self.shown and n != self.total:
            return
        self.shown = tenth
        width = 24
        done = width * n // self.total
        bar = "#" * done + "." * (width - done)
        line = (f"{self.label} {n:>{len(str(self.total))}}/{self.total} [{bar}] {text} "
                f"{time.perf_counter() - self.t0:.1f}s")
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and n == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def fit(model: Model, xs, ys, loss: str = "mse", optimizer=None, epochs: int = 100,
        batch_size: int = 16, clip_norm: float | None = None, clip_value: float | None = None,
        truncate=None, at: str = "all", mask=None, shuffle: bool = True, seed: int = 0,
        stateful: bool = False, progress: bool = True, validation=None,
        executor: str = "compiled") -> History:
    """Train ``model`` in place on (xs, ys); return the History.

    ``stateful=True`` carries each batch's final state into the next (in order, no
    shuffling), as Keras's ``stateful`` RNNs do. ``validation=(xs, ys)`` records a
    validation loss per epoch.
    """
    xs = model.check_xs(xs)
    ys = np.asarray(ys)
    if len(ys) != len(xs):
        raise ValueError(f"xs has {len(xs)} sequences but ys has {len(ys)}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    optimizer = optimizer or Adam(lr=1e-2)
    rng = np.random.default_rng(seed)
    hist = History()
    bar = Progress(epochs, progress)
    t0 = time.perf_counter()
    N = len(xs)
    for epoch in range(epochs):
        order = rng.permutation(N) if shuffle and not stateful else np.arange(N)
        state, total, count = None, 0.0, 0
        for start in range(0, N, batch_size):
            idx = order[start:start + batch_size]
            init = state if stateful and state is not None and len(idx) == batch_size else None
            res = bptt(model, xs[idx], ys[idx], loss=loss, at=at, initial_state=init,
                       truncate=truncate, mask=None if mask is None else np.asarray(mask)[idx],
                       executor=executor)
            if not np.isfinite(res.loss):
                raise FloatingPointError(f"loss is {res.loss} at epoch {epoch + 1}, batch "
                                         f"{start // batch_size + 1}; lower the learning rate "
                                         f"or set clip_norm")
            hist.grad_norms.append(clip_grad_norm(res.grads, clip_norm))
            clip_grad_value(res.grads, clip_value)
            optimizer.step(model.params, res.grads)
            state = res.final_state if stateful else None
            hist.batch_losses.append(res.loss)
            total, count = total + res.loss * len(idx), count + len(idx)
        hist.losses.append(total / count)
        text = f"loss {hist.losses[-1]:.5g}"
        if validation is not None:
            vx, vy = validation
            vres = bptt(model, vx, vy, loss=loss, at=at, executor=executor)
            hist.val_losses.append(vres.loss)
            text += f" val {vres.loss:.5g}"
        bar.update(epoch + 1, text)
    hist.seconds = time.perf_counter() - t0
    return hist
