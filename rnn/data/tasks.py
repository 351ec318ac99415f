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
