"""A character-level language model in the spirit of min-char-rnn: ``unroll train chars``.

The text ships in the package (rnn.data.tasks.chars: Genesis and Exodus of the King
James Version). A cell reads one character at a time (one-hot) and its head predicts the
next (cross-entropy); training is truncated BPTT over a stateful stream: ``batch``
parallel streams, windows of ``steps`` characters, the state carried from window to
window (``fit(stateful=True)``). After each epoch it prints a sample drawn with
``model.generate`` and the validation bits per character, measured over the whole
validation text as streams with their state carried too; the baselines are a unigram and
a bigram model counted on the training text and scored the same way.
"""

from __future__ import annotations

import math
import time

import numpy as np

import rnn
from rnn.data import tasks


def vocabulary() -> str:
    """The symbols of the text, sorted: class k is ``vocabulary()[k]``."""
    text, valid = tasks.chars()
    return "".join(sorted(set(text + valid)))


def bits_per_char(model, ids: np.ndarray, V: int, batch: int = 16, steps: int = 256) -> float:
    """Validation bits per character of ``model`` over ``ids``: ``batch`` streams read
    ``steps`` at a time, the state carried; every character after a stream's first is
    scored."""
    per = (len(ids) - 1) // batch
    x = ids[:batch * per].reshape(batch, per)
    y = ids[1:batch * per + 1].reshape(batch, per)
    eye = np.eye(V, dtype=model.dtype)
    state, total = None, 0.0
    for t0 in range(0, per, steps):
        logits, state = model.forward(eye[x[:, t0:t0 + steps]], initial_state=state)
        z = logits - logits.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        total -= np.take_along_axis(logp, y[:, t0:t0 + steps, None], -1).sum()
    return float(total / (batch * per) / math.log(2))


def train(cell: str = "lstm", hidden: int = 128, epochs: int = 12, batch: int = 32,
          steps: int = 64, lr: float = 1e-2, seed: int = 0, sample: int = 160,
          temperature: float = 0.6, say=print, cell_obj=None, layers: int = 1,
          save=None) -> dict:
    """Train a character model (``cell``: a built-in's name, or ``cell_obj`` a Cell of
    one input of the vocabulary's size); returns {"cell", "bpc", "unigram", "bigram",
    "seconds", "sample", "history", "model"}. ``say`` gets one line per epoch (and the
    samples); ``save``: write the trained model there."""
    text, valid = tasks.chars()
    vocab = vocabulary()
    V = len(vocab)
    idx = {c: i for i, c in enumerate(vocab)}
    ids = np.array([idx[c] for c in text], np.int64)
    vids = np.array([idx[c] for c in valid], np.int64)
    uni, bi = (tasks.ngram_bits(text, valid, vocab, n) for n in (1, 2))
    say(f"chars: {len(text):,} training and {len(valid):,} validation characters, {V} "
        f"symbols; baselines (validation bits/char): unigram {uni:.3f}, bigram {bi:.3f}")
    xi, yi = tasks.char_streams(ids, batch, steps)
    xs = np.eye(V, dtype=np.float32)[xi]
    c = cell_obj if cell_obj is not None else rnn.cells.BUILTINS[cell](V, hidden)
    model = rnn.Model(c, layers=layers, head=V, dtype="float32", seed=seed)
    opt = rnn.optim.Adam(lr=lr)
    t0, text_out, hist = time.perf_counter(), "", []
    for epoch in range(1, epochs + 1):
        h = rnn.fit(model, xs, yi, loss="cross_entropy", optimizer=opt, epochs=1,
                    batch_size=batch, shuffle=False, stateful=True, clip_norm=1.0,
                    progress=False, seed=seed)
        bpc = bits_per_char(model, vids, V)
        hist.append((h.losses[-1] / math.log(2), bpc))
        _, drawn = model.generate(np.array([idx["\n"]]), steps=sample, kind="classes",
                                  temperature=temperature, seed=epoch)
        text_out = "".join(vocab[i] for i in drawn[0])
        say(f"epoch {epoch}/{epochs}: train {hist[-1][0]:.3f}, validation {bpc:.3f} "
            f"bits/char ({time.perf_counter() - t0:.0f} s)")
        say("  | " + text_out.replace("\n", "\n  | "))
    took = time.perf_counter() - t0
    if save:
        say(f"model written to {model.save(save)}")
    return {"cell": cell, "bpc": hist[-1][1], "unigram": uni, "bigram": bi,
            "seconds": took, "sample": text_out, "history": hist, "model": model}
