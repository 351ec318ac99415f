"""Training: mini-batches, an optimizer, gradient clipping, a progress bar, a history."""

from __future__ import annotations

import hashlib
import math
import numbers
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import all_finite

from ..bptt import bptt, check_model
from ..io import files
from ..losses import check_loss
from ..model import Model, check_mask, writable
from ..program.executor import check_executor
from ..program.unroll import positive_int
from .optim import Adam, NonFiniteError


@dataclass
class History:
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    batch_losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping, per batch
    val_losses: list[float] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (epoch, batch) left out
    seconds: float = 0.0


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """The L2 norm of all gradients together, computed so that it never overflows on
    finite values: each array is scaled by the largest |g| and summed in float64.
    inf or NaN when some gradient is not finite."""
    amax = 0.0
    for g in grads.values():
        if g.size:
            a = float(np.max(np.abs(g)))
            if not math.isfinite(a):
                return math.inf if not math.isnan(a) else math.nan
            amax = max(amax, a)
    if amax == 0.0:
        return 0.0
    with np.errstate(under="ignore"):
        ss = sum(float(np.sum(np.square(np.asarray(g, np.float64) / amax)))
                 for g in grads.values())
    return amax * math.sqrt(ss)  # inf only past float64's range (1.8e308)


def _non_finite(grads: dict[str, np.ndarray]) -> list[str]:
    return [k for k, g in grads.items() if not all_finite(g)]


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float | None) -> float:
    """Scale grads in place so their global norm is at most max_norm; return the norm
    before clipping. Finite gradients whose sum of squares overflows (float32 values of
    4e19) are scaled correctly. A non-finite gradient is an error (NonFiniteError, a
    FloatingPointError): the step would ruin the weights."""
    bad = _non_finite(grads)
    if bad:
        raise NonFiniteError(f"non-finite gradients in {bad}; lower the learning rate or "
                             f"clip by value")
    norm = global_norm(grads)
    _scale_to(grads, max_norm, norm)
    return norm


def _scale_to(grads: dict[str, np.ndarray], max_norm: float | None, norm: float) -> None:
    """Scale finite grads of global norm ``norm`` in place to norm max_norm if above it."""
    if max_norm is None or not norm > max_norm:
        return
    if math.isfinite(norm):
        scale = max_norm / norm
    else:  # finite float64 gradients whose norm passes 1.8e308: scale in two steps
        amax = max(float(np.max(np.abs(g))) for g in grads.values() if g.size)
        with np.errstate(under="ignore"):
            ss = sum(float(np.sum(np.square(g / amax))) for g in grads.values())
        scale = (max_norm / amax) / math.sqrt(ss)
    for g in grads.values():  # in float64, so that a tiny scale stays exact
        np.copyto(g, np.asarray(g, np.float64) * scale, casting="same_kind")


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


_count = positive_int


def _clip(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number > 0 or None, got {value!r}")
    if not float(value) > 0:  # also NaN
        raise ValueError(f"{name} must be a number > 0 or None, got {value!r}")
    return float(value)


def fit(model: Model, xs, ys, loss: str = "mse", optimizer=None, epochs: int = 100,
        batch_size: int = 16, clip_norm: float | None = None, clip_value: float | None = None,
        truncate=None, at: str = "all", mask=None, shuffle: bool = True, seed: int = 0,
        stateful: bool = False, progress: bool = True, validation=None,
        executor: str = "compiled", on_nonfinite: str = "raise", checkpoint=None,
        checkpoint_every: int | None = None, resume: bool = False) -> History:
    """Train ``model`` in place on (xs, ys); return the History.

    ``stateful=True`` carries each batch's final state into the next (in order, no
    shuffling), as Keras's ``stateful`` RNNs do. ``validation=(xs, ys)`` records a
    validation loss per epoch.

    The weights never absorb a NaN: a batch whose loss or gradients are not finite, or
    whose update would make a parameter (or the optimizer's state) non-finite, is
    stopped before anything is written. ``on_nonfinite="raise"`` (the default) then
    raises NonFiniteError (a FloatingPointError) naming the epoch and the batch;
    ``"skip"`` leaves that batch out (``History.skipped`` lists (epoch, batch), from 1)
    and goes on.

    ``checkpoint=path`` saves everything the run needs to go on (weights, optimizer
    state, the shuffling RNG, the position in the epoch, the carried state, the
    history) atomically after every ``checkpoint_every`` updates and at the end of each
    epoch. With ``resume=True`` a run whose checkpoint exists goes on from it, and ends
    with the same weights and history, bit for bit, as a run that was never stopped,
    wherever it was killed. A checkpoint of other data or settings is refused.
    """
    check_model(model, "fit")
    epochs = _count("epochs", epochs)
    batch_size = _count("batch_size", batch_size)
    clip_norm, clip_value = _clip("clip_norm", clip_norm), _clip("clip_value", clip_value)
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    check_executor(executor)
    check_loss(loss, at)
    optimizer = optimizer or Adam(lr=1e-2)
    if hasattr(optimizer, "check"):
        optimizer.check()
    xs = model.check_xs(xs)
    ys = np.asarray(ys)
    if len(ys) != len(xs):
        raise ValueError(f"xs has {len(xs)} sequences but ys has {len(ys)}")
    if mask is not None:  # checked whole here; each batch gets its rows
        check_mask(mask, xs.shape[:2], model.dtype, getattr(model, "full", None))
    if checkpoint_every is not None:
        checkpoint_every = _count("checkpoint_every", checkpoint_every)
    rng = np.random.default_rng(seed)
    hist = History()
    N = len(xs)
    if checkpoint is not None and not isinstance(model, Model):
        raise TypeError(f"checkpoints are for rnn.Model; got {type(model).__name__}")
    run = _Run(checkpoint, model, optimizer, rng, hist, checkpoint and _fingerprint(
        model, optimizer, xs, ys, mask, loss, at, batch_size, clip_norm, clip_value,
        truncate, shuffle, seed, stateful, executor, on_nonfinite))  # not epochs: a
    # resumed run may go further than it was first asked to
    at0 = run.resume() if resume else None  # (epoch, start, order, state, total, count)
    bar = Progress(epochs, progress)
    t0 = time.perf_counter() - hist.seconds
    for epoch in range(at0[0] if at0 else 0, epochs):
        if at0 and epoch == at0[0] and at0[2] is not None:  # resumed within an epoch
            _, first, order, state, total, count = at0
        else:
            order = rng.permutation(N) if shuffle and not stateful else np.arange(N)
            first, state, total, count = 0, None, 0.0, 0
        for start in range(first, N, batch_size):
            idx = order[start:start + batch_size]
            where = f"epoch {epoch + 1}, batch {start // batch_size + 1}"
            init = state if stateful and state is not None and len(idx) == batch_size else None
            res = bptt(model, xs[idx], ys[idx], loss=loss, at=at, initial_state=init,
                       truncate=truncate, mask=None if mask is None else np.asarray(mask)[idx],
                       executor=executor)
            hist.batch_losses.append(res.loss)
            norm = global_norm(res.grads)  # NaN or inf when a gradient is not finite
            hist.grad_norms.append(norm)
            try:
                if not math.isfinite(res.loss):
                    raise NonFiniteError(f"the loss is {res.loss}; nothing was updated")
                bad = [] if math.isfinite(norm) else _non_finite(res.grads)
                if bad:
                    raise NonFiniteError(f"non-finite gradients in {bad}; nothing was "
                                         f"updated")
                _scale_to(res.grads, clip_norm, norm)
                clip_grad_value(res.grads, clip_value)
                optimizer.step(writable(model.params), res.grads)
            except NonFiniteError as e:
                if on_nonfinite == "skip":
                    hist.skipped.append((epoch + 1, start // batch_size + 1))
                    state = None  # a carried state from this batch may be non-finite too
                    continue
                raise NonFiniteError(f"{where}: {e} (the parameters are those after the "
                                     f"previous batch); lower the learning rate, set "
                                     f"clip_norm, or pass on_nonfinite='skip'") from None
            state = res.final_state if stateful else None
            total, count = total + res.loss * len(idx), count + len(idx)
            run.updates += 1
            if checkpoint_every and run.updates % checkpoint_every == 0 and \
                    start + batch_size < N:  # (the end of an epoch is saved below)
                hist.seconds = time.perf_counter() - t0
                run.save(epoch, start + batch_size, order, state, total, count)
        hist.losses.append(total / count if count else math.nan)
        text = f"loss {hist.losses[-1]:.5g}"
        if hist.skipped:
            text += f" ({len(hist.skipped)} skipped)"
        if validation is not None:
            vx, vy = validation
            vres = bptt(model, vx, vy, loss=loss, at=at, executor=executor)
            hist.val_losses.append(vres.loss)
            text += f" val {vres.loss:.5g}"
        bar.update(epoch + 1, text)
        hist.seconds = time.perf_counter() - t0
        run.save(epoch + 1, 0, None, None, 0.0, 0)
    hist.seconds = time.perf_counter() - t0
    return hist


def _fingerprint(model, optimizer, xs, ys, mask, *settings) -> str:
    """What makes a run this run: the model, the optimizer's settings, the data and
    fit's settings. A checkpoint of another run is not resumed."""
    h = hashlib.sha256()
    h.update(repr((model.cell.text, model.cell.inputs, model.cell.states, model.layers,
                   model.head, model.dtype, type(optimizer).__name__,
                   getattr(optimizer, "_settings", lambda: "")(), settings)).encode())
    for a in (xs, ys, mask):
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


class _Run:
    """fit's checkpoint: where a run is, written to and read from rnn/io/files.py."""

    def __init__(self, path, model, optimizer, rng, hist, fingerprint):
        self.path, self.model, self.opt, self.rng, self.hist = path, model, optimizer, rng, hist
        self.fingerprint, self.updates = fingerprint, 0

    def save(self, epoch, start, order, state, total, count) -> None:
        if self.path is None:
            return
        arrays, numbers = self.opt.state_dict()
        tensors = {**{f"param/{k}": v for k, v in self.model.params.items()},
                   **{f"opt/{k}": v for k, v in arrays.items()},
                   **{f"state/{k}": v for k, v in (state or {}).items()}}
        if order is not None:
            tensors["order"] = np.asarray(order, np.int64)
        h = self.hist
        files.save_checkpoint(self.path, tensors, {
            "run": self.fingerprint, "epoch": epoch, "start": start, "total": total,
            "count": count, "updates": self.updates, "opt": numbers,
            "rng": self.rng.bit_generator.state,
            "history": {"losses": h.losses, "batch_losses": h.batch_losses,
                        "grad_norms": h.grad_norms, "val_losses": h.val_losses,
                        "skipped": h.skipped, "seconds": h.seconds}})

    def resume(self):
        """Restore from the checkpoint if there is one; the position to go on from."""
        if self.path is None:
            raise ValueError("resume=True needs checkpoint=path")
        if not Path(self.path).exists():
            return None  # nothing saved yet: start from the beginning
        tensors, info = files.load_checkpoint(self.path)
        if info.get("run") != self.fingerprint:
            raise ValueError(f"checkpoint {self.path} belongs to another run (other data, "
                             f"model or settings); pass another path or resume=False")
        part = {}
        for key, v in tensors.items():
            kind, _, name = key.partition("/")
            part.setdefault(kind, {})[name] = v
        self.model.load_params(part.get("param", {}))
        self.opt.load_state_dict(part.get("opt", {}), info["opt"])
        self.rng.bit_generator.state = info["rng"]
        for k, v in info["history"].items():
            setattr(self.hist, k, [tuple(x) for x in v] if k == "skipped" else v)
        self.updates = info["updates"]
        state = part.get("state") or None
        return (info["epoch"], info["start"], tensors.get("order"), state, info["total"],
                info["count"])
