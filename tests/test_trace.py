"""The trace's weight table adds up: per-step numbers sum to the printed dL/dW entry."""

import re

import numpy as np
import pytest

import rnn
from tools import trace as trace_mod
from tools.trace import trace

ROW = re.compile(r"^(\w+)\[([\d,]*)\]\s+(.*?)\s+=\s+(\S+)\s+(ok|MISMATCH)$")


def _rows(text):
    rows = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            ix = tuple(int(i) for i in m.group(2).split(",") if i)
            rows[m.group(1)] = (ix, [float(v) for v in m.group(3).split()],
                                float(m.group(4)), m.group(5))
    return rows


@pytest.mark.parametrize("cell,T", [("lstm", 2), ("elman", 3), ("gru", 9)])
def test_every_row_adds_up_to_the_gradient_entry_of_bptt(cell, T):
    m = rnn.Model(rnn.cells.BUILTINS[cell](1, 3), head=1, seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((1, T, 1)), rng.standard_normal((1, T, 1))
    text = trace(m, xs, ys)
    rows = _rows(text)
    assert set(rows) == set(m.params)
    grads = rnn.bptt(m, xs, ys).grads
    for p, (ix, parts, total, mark) in rows.items():
        assert mark == "ok"
        assert len(parts) == min(T, trace_mod.SHOWN_STEPS + 1)  # later steps in one column
        ulp = 0.5e-3 * max(abs(v) for v in parts + [total])  # 4 significant digits printed
        assert abs(sum(parts) - total) <= (len(parts) + 1) * ulp, (p, parts, total)
        assert total == pytest.approx(grads[p][ix], rel=1e-4, abs=1e-12)
        assert abs(grads[p][ix]) == pytest.approx(np.abs(grads[p]).max())  # the largest


def test_the_table_says_which_entry_and_that_rows_add_up():
    m = rnn.Model(rnn.cells.elman(1, 2), head=1)
    text = trace(m, np.ones((1, 8, 1)), np.zeros((1, 8, 1)))
    assert "weight_hh_l0[" in text and "t=6..7" in text
    assert "the step columns sum to the last number" in text


def test_a_wrong_contribution_is_marked(monkeypatch):
    m = rnn.Model(rnn.cells.elman(1, 2), head=1)
    real = trace_mod.ir.backward

    def skewed(prog, vals, seed, on_cotangent=None):  # drop what step 1 adds to weights
        def hook(eqn, i, c):
            if eqn.out.step != 1:
                on_cotangent(eqn, i, c)
        return real(prog, vals, seed, on_cotangent=hook)

    monkeypatch.setattr(trace_mod.ir, "backward", skewed)
    assert "MISMATCH" in trace(m, np.ones((1, 3, 1)), np.zeros((1, 3, 1)))
