"""The compiled executor's fusion: regions, generated kernels, agreement with the
reference interpreter on cells that exercise every way a region reads its inputs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn
from rnn import Cell, Model, cells
from rnn.program import fuse


def agree(model, xs, ys, atol=1e-10, **kw):
    a = rnn.bptt(model, xs, ys, executor="reference", **kw)
    b = rnn.bptt(model, xs, ys, executor="compiled", **kw)
    assert abs(a.loss - b.loss) <= atol * max(1, abs(a.loss))
    for k in a.grads:
        np.testing.assert_allclose(b.grads[k], a.grads[k], atol=atol, rtol=atol, err_msg=k)
    for s in a.state_grads:
        np.testing.assert_allclose(b.state_grads[s], a.state_grads[s], atol=atol, rtol=atol)
        np.testing.assert_allclose(b.step_norms[s], a.step_norms[s], atol=atol, rtol=atol)
    np.testing.assert_allclose(b.outputs, a.outputs, atol=atol, rtol=atol)


def test_lstm_gate_math_is_one_kernel_per_step():
    prog = fuse.gemms_first(rnn.unroll(cells.lstm(2, 3), steps=6).program)
    items, regions = fuse.find_regions(prog, keep={"c@5"})  # the final c, as bptt asks
    assert len(regions) == 6  # one per step
    sizes = {len(r.members) for r in regions.values()}
    assert sizes == {16}  # every add, split, sigmoid, tanh and product of the step
    left = {prog.eqns[i].op for i in items if isinstance(i, int)}
    assert left == {"matvec"}
    assert len({r.key for r in regions.values()}) == 1  # one kernel serves every step


def test_watched_states_end_a_region():
    prog = rnn.unroll(cells.lstm(2, 3), steps=2).program
    watch = {f"c@{t}" for t in range(2)}
    _, regions = fuse.find_regions(fuse.gemms_first(prog), watch=watch)
    assert len(regions) == 4  # two per step: the gate math up to c, then h
    for r in regions.values():
        made = {m.out.name for m in r.members}
        read = {a.name for m in r.members for a in m.inputs if hasattr(a, "name")}
        assert not (made & read & watch)  # a watched c is never read inside its region
        assert made & watch <= {o.name for o in r.outputs}  # ... and always stored


BROADCASTS = """
a, b = split(V @ h[t-1], 2)
s = 1 - sigmoid(sum(q * h[t-1]))
h = tanh(W @ x + U @ h[t-1]) * a + b * s + exp(-relu(h[t-1])) / 4 + log(softplus(h[t-1]) + 1)
"""


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-10), ("float32", 2e-5)])
def test_columns_broadcasts_and_every_fusable_op(dtype, atol):
    cell = Cell.from_equations(BROADCASTS + "y = h ** 2.0 - h", inputs={"x": 2},
                               states={"h": 3})
    m = Model(cell, head=1, dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((3, 5, 2)).astype(dtype)
    ys = rng.standard_normal((3, 5, 1)).astype(dtype)
    agree(m, xs, ys, atol=atol)
    mask = np.ones((3, 5))
    mask[1, 3:] = 0
    agree(m, xs, ys, atol=atol, mask=mask, truncate=2)


@pytest.mark.parametrize("name", ["lstm", "gru", "peephole_lstm", "jordan"])
def test_float32_builtins_agree(name):
    m = Model(cells.BUILTINS[name](3, 8), layers=2, head=2, dtype="float32", seed=2)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((4, 7, 3)).astype("float32")
    agree(m, xs, rng.standard_normal((4, 7, 2)).astype("float32"), atol=2e-5)


def test_kernels_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE", str(tmp_path))
    prog = rnn.unroll(cells.gru(2, 3), steps=1).program
    _, regions = fuse.find_regions(fuse.gemms_first(prog))
    (r,) = regions.values()
    fuse._loaded.pop(r.key, None)
    first = fuse.kernels(r)
    files = list((tmp_path / "kernels").glob("region_*.py"))
    assert len(files) == 1 and "def backward" in files[0].read_text()
    assert first[2] == (3, 3, 3)  # r, z and n are saved for the backward
    fuse._loaded.pop(r.key)
    assert fuse.kernels(r)[2] == (3, 3, 3)  # imported again from the same file
    assert list((tmp_path / "kernels").glob("region_*.py")) == files


def test_compiled_forward_keeps_what_is_asked():
    m = Model(cells.lstm(2, 3), seed=0)
    xs = np.random.default_rng(0).standard_normal((2, 4, 2))
    a, sa = m.forward(xs, executor="reference")
    b, sb = m.forward(xs, executor="compiled")
    np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(sa["c"], sb["c"], atol=1e-12)


def test_scalar_parameters_in_a_region():
    from tools.gradcheck import check_bptt

    cell = Cell.from_equations("s = alpha * sum(h[t-1])\nh = tanh(W @ x + U @ h[t-1]) + s",
                               inputs={"x": 2}, states={"h": 3})
    assert cell.params["alpha"] == ()
    m = Model(cell, head=1, seed=3)
    rng = np.random.default_rng(2)
    xs, ys = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 4, 1))
    agree(m, xs, ys)
    check_bptt(m, xs, ys)


@st.composite
def cell_text(draw, depth=3):
    """A random cell: the generated kernels must agree with the interpreter on it."""
    n = iter(range(100))

    def expr(d):
        kinds = ["leaf"] * 2 + (["unary", "binary", "binary"] if d > 0 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "leaf":
            return draw(st.sampled_from([f"(W{next(n)} @ x)", f"(U{next(n)} @ h[t-1])", "h[t-1]",
                                         f"b{next(n)}", "p", "q", "0.5", "2.0"]))
        if kind == "unary":
            f = draw(st.sampled_from(["tanh", "sigmoid", "relu", "softplus", "-", "exp(-softplus"]))
            inner = expr(d - 1)
            return {"-": f"(-{inner})", "exp(-softplus": f"exp(-softplus({inner}))"}.get(
                f, f"{f}({inner})")
        a, b = expr(d - 1), expr(d - 1)
        op = draw(st.sampled_from(["+", "-", "*", "/", "**"]))
        if op == "/":
            return f"({a} / (1.5 + sigmoid({b})))"
        if op == "**":
            return f"(sigmoid({a}) ** 2.0)"
        return f"({a} {op} {b})"

    body = expr(depth)
    return f"p, q = split(V @ h[t-1], 2)\nh = tanh({body} + W @ x)"


@settings(max_examples=12, deadline=None, derandomize=True)
@given(cell_text())
def test_random_cells_agree_with_the_interpreter(text):
    cell = Cell.from_equations(text, inputs={"x": 2}, states={"h": 3}, sizes={"p": 3})
    m = Model(cell, head=1, seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 4, 1))
    agree(m, xs, ys)
    mask = np.ones((3, 4))
    mask[0, 2:] = 0
    agree(m, xs, ys, mask=mask, truncate=2)
