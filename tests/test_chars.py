"""The character-level language model task: the shipped text, its streams, the n-gram
baselines, and a short training run that beats them."""

import math

import numba
import numpy as np
import pytest

from rnn.data import tasks
from tools import chars


def test_the_text_ships_and_splits_at_a_line():
    train, valid = tasks.chars()
    assert len(train) > 300_000 and len(valid) > 30_000
    assert train.startswith("In the beginning God created the heaven and the earth.")
    assert train.endswith("\n") and set(train + valid) <= set(map(chr, range(10, 127)))


def test_streams_continue_row_by_row():
    ids = np.arange(1000)
    xs, ys = tasks.char_streams(ids, batch=4, steps=10)
    assert xs.shape == ys.shape == (96, 10)
    np.testing.assert_array_equal(ys, xs + 1)
    # row r of batch k+1 continues row r of batch k: a stateful fit reads a stream
    for k in range(23):
        np.testing.assert_array_equal(xs[(k + 1) * 4:(k + 2) * 4, 0], xs[k * 4:(k + 1) * 4, -1] + 1)


def test_ngram_baselines_are_probabilities():
    vocab = "ab"
    # unigram counts a:3 b:1 (+1 each): p(a) = 4/6; validation "aa" -> -log2(4/6)
    assert math.isclose(tasks.ngram_bits("aaab", "aa", vocab, 1), -math.log2(4 / 6))
    # bigram: after a: a 2+1, b 1+1 -> p(a|a) = 3/5
    assert math.isclose(tasks.ngram_bits("aaab", "aa", vocab, 2), -math.log2(3 / 5))


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="330,000 characters of plain Python loops")
def test_a_short_run_beats_the_unigram_and_samples_text():
    lines = []
    r = chars.train("gru", hidden=24, epochs=1, batch=64, steps=32, sample=40,
                    say=lines.append)
    assert r["bpc"] < r["unigram"] and r["bigram"] < r["unigram"]
    assert len(r["sample"]) == 40 and lines[0].startswith("chars: ")
    assert any(ln.startswith("epoch 1/1") for ln in lines)
