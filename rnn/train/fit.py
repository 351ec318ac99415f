"""Training: mini-batches, an optimizer, gradient clipping, a progress bar, a history."""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import all_finite

from ..bptt import batch_major, bptt, check_model, check_truncate, checked, rows, run_batch
from ..io import files
from ..losses import check_loss
from ..model import Model, check_mask, writable
from ..program.executor import check_executor
from ..program.unroll import positive_int
from .callbacks import EarlyStopping
from .optim import Adam, NonFiniteError
from .schedules import Schedule


@dataclass
class History:
    """What ``rnn.fit`` records: ``losses``, ``val_losses`` and ``lrs`` one per epoch run,
    ``batch_losses`` and ``grad_norms`` (before clipping) one per batch."""

    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    batch_losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)  # before clipping, per batch
    val_losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate of each epoch
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (epoch, batch) left out
    seconds: float = 0.0

    def plot(self):
        """A matplotlib Figure (no pyplot state): the loss curves (training, and
        validation when recorded) per epoch, and the gradient norm of every batch.

        >>> fig = History(losses=[1.0, 0.5], val_losses=[1.1, 0.7],
        ...               grad_norms=[2.0, 1.0, 0.5, 0.4]).plot()
        >>> [ax.get_title() for ax in fig.axes]
        ['loss', 'gradient norm']
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.6), layout="constrained")
        ax, ag = fig.subplots(1, 2)
        for name, ys in (("train", self.losses), ("validation", self.val_losses)):
            if ys:
                ax.plot(np.arange(1, len(ys) + 1), ys, marker="." if len(ys) < 30 else None,
                        label=name)
        ax.set(title="loss", xlabel="epoch")
        ag.plot(np.arange(1, len(self.grad_norms) + 1), self.grad_norms, lw=0.8,
                color="tab:gray")
        ag.set(title="gradient norm", xlabel="batch", ylabel="before clipping")
        for a, ys in ((ax, self.losses + self.val_losses), (ag, self.grad_norms)):
            finite = [y for y in ys if math.isfinite(y)]
            if finite and min(finite) > 0 and max(finite) > 10 * min(finite):
                a.set_yscale("log")
        if self.losses or self.val_losses:
            ax.legend()
        return fig


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
    """The epochs through tqdm (``tqdm.auto``: a bar on a terminal, a widget in a
    notebook). Where stderr is neither (a log file, a pipe), one plain line about every
    10% of the run, in tqdm's format, instead of a bar redrawn with carriage returns."""

    FORMAT = "{l}{n_fmt}/{total_fmt} [{bar:24}] {desc} [{elapsed}<{remaining}]"

    def __init__(self, total: int, enabled: bool, label: str = "epoch", initial: int = 0):
        self.total, self.enabled, self.initial = total, enabled, initial
        self.format = self.FORMAT.replace("{l}", f"{label} ")
        self.bar, self.shown, self.t0 = None, -1, time.perf_counter()
        if not enabled or initial >= total:
            self.enabled = False
            return
        from tqdm.auto import tqdm

        notebook = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)
        if notebook or sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=initial, bar_format=self.format,
                            file=None if notebook else sys.stderr, dynamic_ncols=True,
                            leave=True)

    def update(self, n: int, text: str, last: bool = False) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(n - self.bar.n)
            if n >= self.total:
                self.close()
            return
        tenth = 10 * n // self.total
        if tenth == self.shown and n != self.total and not last:
            return
        from tqdm import tqdm

        self.shown = tenth
        line = tqdm.format_meter(n, self.total, time.perf_counter() - self.t0, prefix=text,
                                 bar_format=self.format, ascii=".#", initial=self.initial)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        checkpoint_every: int | None = None, resume: bool = False,
        validation_split: float = 0.0, schedule=None, callbacks=(),
        batch_first: bool = True) -> History:
    """Train ``model`` in place on (xs, ys); return the History.

    ``stateful=True`` carries each batch's final state into the next (in order, no
    shuffling), as Keras's ``stateful`` RNNs do. ``batch_first=False`` takes time-major
    arrays, as torch: xs (T, N, I), ys (T, N, O) (or (T, N) class indices) for
    ``at="all"``, mask (T, N), and the validation data in the same layout.

    ``validation=(xs, ys)`` (or ``(xs, ys, mask)``) records a validation loss per epoch
    (``History.val_losses``); ``validation_split=0.2`` holds out the last fifth of the
    data for it instead, taken before shuffling, as Keras does.

    ``schedule`` sets the learning rate: any callable ``(epoch, lr, history) -> lr``
    (rnn.schedules: step, cosine, plateau), called before each epoch (from 0) with the
    optimizer's current lr; ``History.lrs`` records the lr of every epoch.
    ``callbacks``: callables ``(epoch, history, model)`` called after each epoch (after
    the validation loss); the run stops after an epoch where one returns True
    (rnn.callbacks.EarlyStopping, and what an object may add there).

    The weights never absorb a NaN: a batch whose loss or gradients are not finite, or
    whose update would make a parameter (or the optimizer's state) non-finite, is
    stopped before anything is written. ``on_nonfinite="raise"`` (the default) then
    raises NonFiniteError (a FloatingPointError) naming the epoch and the batch;
    ``"skip"`` leaves that batch out (``History.skipped`` lists (epoch, batch), from 1)
    and goes on.

    ``checkpoint=path`` saves everything the run needs to go on (weights, optimizer
    state and lr, the shuffling RNG, the position in the epoch, the carried state, the
    history, the state of the schedule and callbacks, whether a callback stopped the
    run) atomically after every ``checkpoint_every`` updates and at the end of each
    epoch. With ``resume=True`` a run whose checkpoint exists goes on from it, and ends
    with the same weights and history, bit for bit, as a run that was never stopped,
    wherever it was killed. A checkpoint of other data or settings is refused, and so
    is a callback object whose state a checkpoint cannot hold (no ``state_dict``).
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
    xs, ys, mask = batch_major(model, xs, ys, mask, at, batch_first, "ys")
    if len(ys) != len(xs):
        raise ValueError(f"xs has {len(xs)} sequences but ys has {len(ys)}")
    if mask is not None:  # checked whole here; each batch takes its rows (bptt.rows)
        check_mask(mask, xs.shape[:2], model.dtype, getattr(model, "full", None))
        mask = np.asarray(mask)  # in its own dtype: the checkpoint's fingerprint hashes it
    xs, ys, mask, val = _validation(model, xs, ys, mask, loss, at, validation,
                                    validation_split, batch_first)
    callbacks = _callbacks(schedule, callbacks, optimizer, val, checkpoint)
    if checkpoint_every is not None:
        checkpoint_every = _count("checkpoint_every", checkpoint_every)
    rng = np.random.default_rng(seed)
    hist = History()
    N = len(xs)
    if checkpoint is not None and not isinstance(model, Model):
        raise TypeError(f"checkpoints are for rnn.Model; got {type(model).__name__}")
    for cb in callbacks:
        if hasattr(cb, "begin"):
            cb.begin(model)
    run = _Run(checkpoint, model, optimizer, rng, hist, schedule, callbacks,
               checkpoint and _fingerprint(
                   model, optimizer, (xs, ys, mask) + (val or ()), loss, at, batch_size,
                   clip_norm, clip_value, truncate, shuffle, seed, stateful, executor,
                   on_nonfinite, validation_split, _describe(schedule),
                   [_describe(cb) for cb in callbacks]))  # not epochs: a resumed run may
    # go further than it was first asked to
    at0 = run.resume() if resume else None  # (epoch, start, order, state, total, count)
    first_epoch = at0[0] if at0 else 0
    if isinstance(model, Model):  # (a composite checks its own)
        truncate = check_truncate(truncate)  # (after the fingerprint: it keeps it as given)
    bar = Progress(epochs, progress, initial=first_epoch)
    t0 = time.perf_counter() - hist.seconds
    for epoch in range(first_epoch, epochs if not run.stopped else first_epoch):
        if at0 and epoch == at0[0] and at0[2] is not None:  # resumed within an epoch
            _, first, order, state, total, count = at0  # (and the lr is restored)
        else:
            order = rng.permutation(N) if shuffle and not stateful else np.arange(N)
            first, state, total, count = 0, None, 0.0, 0
            if schedule is not None:
                optimizer.lr = _scheduled_lr(schedule, epoch, optimizer.lr, hist)
        for start in range(first, N, batch_size):
            idx = order[start:start + batch_size]
            where = f"epoch {epoch + 1}, batch {start // batch_size + 1}"
            init = state if stateful and state is not None and len(idx) == batch_size else None
            res = _bptt_rows(model, xs, ys, mask, idx, loss, at, initial_state=init,
                             truncate=truncate, executor=executor, **_training(model, rng))
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
                bar.close()
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
        hist.lrs.append(getattr(optimizer, "lr", math.nan))
        text = f"loss {hist.losses[-1]:.5g}"
        if hist.skipped:
            text += f" ({len(hist.skipped)} skipped)"
        if val is not None:
            vx, vy, vmask = val
            vres = _bptt_rows(model, vx, vy, vmask, slice(None), loss, at, executor=executor)
            hist.val_losses.append(vres.loss)
            text += f" val {vres.loss:.5g}"
        run.stopped = any([bool(cb(epoch, hist, model)) for cb in callbacks])  # all run
        bar.update(epoch + 1, text + (" (stopped)" if run.stopped else ""), run.stopped)
        hist.seconds = time.perf_counter() - t0
        run.save(epoch + 1, 0, None, None, 0.0, 0)
        if run.stopped:
            break
    bar.close()
    for cb in callbacks:  # e.g. EarlyStopping puts the best weights back
        if hasattr(cb, "end"):
            cb.end(hist, model)
    hist.seconds = time.perf_counter() - t0
    return hist


def _training(model, rng) -> dict:
    """bptt's arguments for a training batch: a model with dropout draws its masks from
    fit's generator (after the shuffle), so a seed (and a checkpoint, which keeps the
    generator's state) gives the same masks; other models draw nothing."""
    if getattr(model, "trains_differently", False):
        return {"train": True, "seed": rng}
    return {}


def _bptt_rows(model, xs, ys, mask, idx, loss: str, at: str, **kw):
    """bptt of rows ``idx`` of the data checked at fit's door."""
    if not isinstance(model, Model):  # a composite (Seq2Seq) checks its own batches
        return bptt(model, xs[idx], ys[idx], loss, at,
                    mask=None if mask is None else mask[idx], **kw)
    return run_batch(model, *rows(model, xs, ys, mask, idx, loss, at), loss, at, **kw)


def _validation(model, xs, ys, mask, loss, at, validation, split, batch_first):
    """(xs, ys, mask) to train on and (vx, vy, vmask) to validate on, or None."""
    if isinstance(split, bool) or not isinstance(split, numbers.Real) or \
            not 0 <= split < 1:
        raise ValueError(f"validation_split must be a number in [0, 1), got {split!r}")
    if split and validation is not None:
        raise ValueError("pass validation=(xs, ys) or validation_split, not both")
    if split:
        N = len(xs)
        cut = int(math.floor(N * (1.0 - split)))  # Keras: the last part, before shuffling
        if cut < 1 or cut >= N:
            raise ValueError(f"validation_split={split} of {N} sequences leaves "
                             f"{N - cut} for validation and {cut} for training; both "
                             f"need at least one")
        val = (xs[cut:], ys[cut:], None if mask is None else mask[cut:])
        return xs[:cut], ys[:cut], None if mask is None else mask[:cut], val
    if validation is None:
        return xs, ys, mask, None
    if not isinstance(validation, (tuple, list)) or len(validation) not in (2, 3):
        raise ValueError("validation must be (xs, ys) or (xs, ys, mask)")
    vx, vy, vmask = (*validation, None)[:3]
    if isinstance(model, Model):
        vx, vy, vmask, _ = checked(model, vx, vy, loss, at, vmask, batch_first, "ys")
        return xs, ys, mask, (vx, vy, vmask)
    vx, vy, vmask = batch_major(model, vx, vy, vmask, at, batch_first, "ys")
    if len(vy) != len(vx):
        raise ValueError(f"validation xs has {len(vx)} sequences but ys has {len(vy)}")
    return xs, ys, mask, (vx, vy, vmask)


def _stateless(f) -> bool:
    return isinstance(f, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                          functools.partial))


def _describe(f) -> str:
    """How a schedule or callback enters the fingerprint: stable across processes."""
    if f is None:
        return "None"
    if isinstance(f, (Schedule, EarlyStopping)):
        return repr(f)
    f = getattr(f, "func", f)  # functools.partial
    return f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', type(f).__qualname__)}"


def _callbacks(schedule, callbacks, optimizer, val, checkpoint) -> tuple:
    """The callbacks as a tuple, checked against the run before it starts."""
    if callbacks is None:
        callbacks = ()
    if callable(callbacks) or not isinstance(callbacks, (tuple, list)):
        callbacks = (callbacks,)
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise TypeError(f"a callback is a callable (epoch, history, model) -> bool, got "
                            f"{cb!r}")
        if getattr(cb, "needs_validation", False) and val is None:
            raise ValueError(f"{cb!r} watches the validation loss: pass validation=(xs, ys) "
                             f"or validation_split")
    if schedule is not None:
        if not callable(schedule):
            raise TypeError(f"schedule is a callable (epoch, lr, history) -> lr, such as "
                            f"rnn.schedules.step(10, 0.5); got {schedule!r}")
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"a schedule sets the optimizer's lr; {type(optimizer).__name__} "
                            f"has none")
    if checkpoint is not None:
        for f in (schedule, *callbacks):
            if f is not None and not _stateless(f) and not hasattr(f, "state_dict"):
                raise ValueError(f"checkpoint={str(checkpoint)!r} cannot hold the state of "
                                 f"{f!r}: give it state_dict() and load_state_dict(arrays, "
                                 f"numbers) (see rnn.callbacks), or pass a function")
    return callbacks


def _scheduled_lr(schedule, epoch: int, lr: float, hist: History) -> float:
    new = schedule(epoch, lr, hist)
    if isinstance(new, bool) or not isinstance(new, numbers.Real) or \
            not 0 < float(new) < math.inf:
        raise ValueError(f"schedule {_describe(schedule)} gave lr={new!r} for epoch {epoch} "
                         f"(from 0); a learning rate is a finite number > 0 (a cosine "
                         f"schedule reaches min_lr after its epochs)")
    return float(new)


def _fingerprint(model, optimizer, arrays, *settings) -> str:
    """What makes a run this run: the model, the optimizer's settings, the data
    (training and validation) and fit's settings. A checkpoint of another run is not
    resumed."""
    h = hashlib.sha256()
    options = tuple(getattr(model, k, 0) for k in ("bidirectional", "dropout",
                                                   "recurrent_dropout"))
    h.update(repr((model.cell.text, model.cell.inputs, model.cell.states, model.layers,
                   model.head, model.dtype, type(optimizer).__name__,
                   getattr(optimizer, "_settings", lambda: "")(), settings)
                  + ((options,) if any(options) else ())).encode())
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(b"None")
    return h.hexdigest()


class _Run:
    """fit's checkpoint: where a run is, written to and read from rnn/io/files.py."""

    def __init__(self, path, model, optimizer, rng, hist, schedule, callbacks, fingerprint):
        self.path, self.model, self.opt, self.rng, self.hist = path, model, optimizer, rng, hist
        self.fingerprint, self.updates, self.stopped = fingerprint, 0, False
        # what has a state to keep: "sched" and "cb0", "cb1", ... in the file
        self.keep = {name: f for name, f in [("sched", schedule)] + [
            (f"cb{i}", cb) for i, cb in enumerate(callbacks)] if hasattr(f, "state_dict")}

    def save(self, epoch, start, order, state, total, count) -> None:
        if self.path is None:
            return
        arrays, numbers = self.opt.state_dict()
        tensors = {**{f"param/{k}": v for k, v in self.model.params.items()},
                   **{f"opt/{k}": v for k, v in arrays.items()},
                   **{f"state/{k}": v for k, v in (state or {}).items()}}
        kept = {}
        for name, f in self.keep.items():
            arrays, kept[name] = f.state_dict()
            tensors.update({f"{name}/{k}": v for k, v in arrays.items()})
        if order is not None:
            tensors["order"] = np.asarray(order, np.int64)
        h = self.hist
        files.save_checkpoint(self.path, tensors, {
            "run": self.fingerprint, "epoch": epoch, "start": start, "total": total,
            "count": count, "updates": self.updates, "opt": numbers,
            "lr": getattr(self.opt, "lr", None), "kept": kept, "stopped": self.stopped,
            "rng": self.rng.bit_generator.state,
            "history": {"losses": h.losses, "batch_losses": h.batch_losses,
                        "grad_norms": h.grad_norms, "val_losses": h.val_losses,
                        "lrs": h.lrs, "skipped": h.skipped, "seconds": h.seconds}})

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
        if info.get("lr") is not None:
            self.opt.lr = info["lr"]
        for name, f in self.keep.items():
            f.load_state_dict(part.get(name, {}), info["kept"][name])
        self.rng.bit_generator.state = info["rng"]
        for k, v in info["history"].items():
            setattr(self.hist, k, [tuple(x) for x in v] if k == "skipped" else v)
        self.updates, self.stopped = info["updates"], info.get("stopped", False)
        state = part.get("state") or None
        return (info["epoch"], info["start"], tensors.get("order"), state, info["total"],
                info["count"])
