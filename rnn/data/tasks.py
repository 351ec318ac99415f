"""Sequence tasks, generated in code or shipped in the package (nothing is downloaded)."""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np


def airline() -> tuple[list[str], np.ndarray]:
    """Monthly international airline passengers, thousands, 1949-01 .. 1960-12 (Box &
    Jenkins series G; ships inside the package)."""
    text = resources.files(__package__).joinpath("airline-passengers.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))[1:]
    return [r[0] for r in rows], np.array([float(r[1]) for r in rows])


def adding(n: int, steps: int, seed: int = 0, dtype: str = "float64"):
    """The adding problem (Hochreiter & Schmidhuber 1997): each step carries a random
    value and a marker; the target is the sum of the two marked values, one marked in
    each half. Predicting 1 (the mean) gives MSE 1/6 ~ 0.167: a model below that has
    carried information across up to ``steps`` steps. Returns xs (n, T, 2), ys (n, 1).
    """
    rng = np.random.default_rng(seed)
    vals = rng.uniform(0, 1, (n, steps))
    marks = np.zeros((n, steps))
    half = steps // 2
    a = rng.integers(0, max(half, 1), n)
    b = rng.integers(half, steps, n)
    marks[np.arange(n), a] = 1
    marks[np.arange(n), b] = 1
    xs = np.stack([vals, marks], -1).astype(dtype)
    ys = (vals[np.arange(n), a] + vals[np.arange(n), b])[:, None].astype(dtype)
    return xs, ys


def copy_memory(n: int, lag: int, length: int = 5, symbols: int = 6, seed: int = 0,
                dtype: str = "float64"):
    """Copy memory: read ``length`` symbols, wait ``lag`` blank steps, then a go marker,
    then write the symbols back. Classes: 0 blank, 1 go, 2.. symbols. xs one-hot
    (n, T, symbols + 2) and integer targets (n, T), T = 2 * length + lag."""
    rng = np.random.default_rng(seed)
    T = 2 * length + lag
    seq = rng.integers(2, symbols + 2, (n, length))
    inp = np.zeros((n, T), np.int64)
    inp[:, :length] = seq
    inp[:, length + lag - 1] = 1
    tgt = np.zeros((n, T), np.int64)
    tgt[:, -length:] = seq
    xs = np.eye(symbols + 2, dtype=dtype)[inp]
    return xs, tgt


def sine(n: int, steps: int, seed: int = 0, dtype: str = "float64"):
    """Next-value prediction on sine waves of random phase and frequency."""
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    freq = rng.uniform(0.15, 0.35, (n, 1))
    s = np.sin(np.arange(steps + 1)[None] * freq + phase)[..., None].astype(dtype)
    return s[:, :-1], s[:, 1:]


CHARS_FILE = "kjv-genesis-exodus.txt.gz"
CHARS_SOURCE = (
    "Genesis and Exodus of the King James Version (1611), 366 kB of text: public domain "
    "(in the United Kingdom the Crown's letters patent still govern printing it). Taken "
    "from Debian's package bible-kjv-text 4.38 (bible.data, read with its `bible` program),"
    " verse numbers dropped, a blank line between chapters; see rnn/data/SOURCES.md.")


def chars(validation: float = 0.1) -> tuple[str, str]:
    """The text of the character-level language model (``unroll train chars``): the
    training part and the last ``validation`` fraction, cut at a line break (see
    CHARS_SOURCE; ships inside the package)."""
    import gzip

    raw = resources.files(__package__).joinpath(CHARS_FILE).read_bytes()
    text = gzip.decompress(raw).decode("ascii")
    cut = text.rfind("\n", 0, int(len(text) * (1 - validation))) + 1
    return text[:cut], text[cut:]


def char_streams(ids: np.ndarray, batch: int, steps: int):
    """A stream of class ids cut for truncated BPTT over a stateful stream: ``batch``
    parallel streams (contiguous slices of the text), each in windows of ``steps``;
    returns (xs, ys) of shape (windows * batch, steps), ordered so that batch k of a
    ``fit(..., batch_size=batch, shuffle=False, stateful=True)`` holds window k of every
    stream (each row continues the same row of the batch before). ys is xs one ahead."""
    per = (len(ids) - 1) // batch // steps * steps
    if per == 0:
        raise ValueError(f"a text of {len(ids)} characters is too short for {batch} streams "
                         f"of windows of {steps}")
    x = ids[:batch * per].reshape(batch, per // steps, steps)
    y = ids[1:batch * per + 1].reshape(batch, per // steps, steps)
    return (x.transpose(1, 0, 2).reshape(-1, steps), y.transpose(1, 0, 2).reshape(-1, steps))


def ngram_bits(train: str, valid: str, vocab: str, n: int) -> float:
    """Validation bits per character of a unigram (n=1) or bigram (n=2) model counted
    on ``train`` with add-one smoothing over ``vocab``, the baselines of the chars task."""
    idx = {c: i for i, c in enumerate(vocab)}
    t = np.array([idx[c] for c in train])
    v = np.array([idx[c] for c in valid])
    V = len(vocab)
    if n == 1:
        p = (np.bincount(t, minlength=V) + 1) / (len(t) + V)
        return float(-np.log2(p[v]).mean())
    counts = np.ones((V, V))
    np.add.at(counts, (t[:-1], t[1:]), 1)
    p = counts / counts.sum(axis=1, keepdims=True)
    return float(-np.log2(p[v[:-1], v[1:]]).mean())
