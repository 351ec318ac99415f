"""The loop compiler: the plan it makes of a cell, and agreement with the reference
interpreter on cells that exercise every op, broadcast, delay and option."""

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnn
from engine import blas
from rnn import Cell, Model, cells
from rnn.program import loop


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


def agree_seq2seq(s2s, xs, ys):
    a, b = rnn.bptt(s2s, xs, ys, executor="reference"), rnn.bptt(s2s, xs, ys)
    assert abs(a.loss - b.loss) < 1e-12
    for k in a.grads:
        np.testing.assert_allclose(b.grads[k], a.grads[k], atol=1e-10, err_msg=k)


def kinds(plan):
    return [type(g).__name__ for g in plan.groups]


def test_lstm_rolls_back_into_one_loop_with_the_input_projection_hoisted():
    plan = loop.Plan(cells.lstm(2, 3), "float64")
    assert kinds(plan) == ["Sweep", "Loop"]  # W_ih @ x over all T; the loop
    (body,) = [g for g in plan.groups if isinstance(g, loop.Loop)]
    # the recurrent GEMM, then + b_ih moved into the loop, in the gates' sum
    assert [n.op for n in body.nodes[:4]] == ["matvec", "add", "add", "add"]
    assert sum(n.op == "matvec" for n in body.nodes) == 1
    src = plan.source()
    assert "def forward(T0, T1, NB, OFF, R0, R1" in src
    assert "def backward(T, T0, T1, NB, K, KEEP_ADJ, CH, OFF, R0, R1" in src
    fwd = src.split("def backward")[0]
    assert fwd.count("for j in range(3)") == 1  # the gate math is one loop over (b, j)
    assert fwd.count("for j in range(12)") == 1  # so is the sum W_ih x + b_ih + W_hh h + b_hh
    assert fwd.count("_sigmoid(") == 3 and fwd.count("_tanh(") == 2
    assert "weight_ih" in src.splitlines()[0]


def test_a_stack_runs_layer_by_layer():
    m = Model(cells.gru(2, 4), layers=2, head=1)
    groups = m.plan().groups
    loops = [k for k, g in enumerate(groups) if isinstance(g, loop.Loop)]
    assert len(loops) == 2  # one per layer
    between = [g.node for g in groups[loops[0]:loops[1]] if isinstance(g, loop.Sweep)]
    assert any(n.op == "matvec" and n.args[0].name == "weight_ih_l1" for n in between)
    after = [g.node for g in groups[loops[1]:] if isinstance(g, loop.Sweep)]
    assert [n.op for n in after] == ["matvec", "add"]  # the head, over all T at once


def test_what_is_generated_does_not_depend_on_T(tmp_path, monkeypatch):
    monkeypatch.setenv("UNROLL_CACHE", str(tmp_path))
    m = Model(cells.elman(2, 3), seed=0)
    rng = np.random.default_rng(0)
    for T in (3, 50, 400):
        rnn.bptt(m, rng.standard_normal((2, T, 2)), rng.standard_normal((2, T, 3)))
    files = list((tmp_path / "kernels").glob("loop_*.py"))
    assert len(files) == 1  # one loop, compiled once, for every T
    if not numba.config.DISABLE_JIT:
        assert len(m.plan().groups[-1].forward.signatures) == 1


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


def test_compiled_forward_keeps_what_is_asked():
    m = Model(cells.lstm(2, 3), seed=0)
    xs = np.random.default_rng(0).standard_normal((2, 4, 2))
    a, sa = m.forward(xs, executor="reference")
    b, sb = m.forward(xs, executor="compiled")
    np.testing.assert_allclose(a, b, atol=1e-12)
    np.testing.assert_allclose(sa["c"], sb["c"], atol=1e-12)


def test_scalar_parameters_in_a_loop():
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




def test_delays_delayed_inputs_and_reductions_inside_the_loop():
    cell = Cell.from_equations(
        "a = tanh(W @ x + U @ h[t-2] + V @ x[t-1] + b)\n"
        "m = softmax(P @ a)\n"
        "s = sum(m * a) + mean(h[t-1])\n"
        "lo, hi = split(a, 2)\n"
        "h = concat(lo * s, relu(Q @ h[t-1]))",
        inputs={"x": 2}, states={"h": 4}, sizes={"a": 4, "m": 4, "lo": 2, "hi": 2})
    m = Model(cell, layers=2, head=1, seed=4)
    rng = np.random.default_rng(5)
    xs, ys = rng.standard_normal((3, 7, 2)), rng.standard_normal((3, 7, 1))
    agree(m, xs, ys)
    agree(m, xs, ys, truncate=3)
    agree(m, xs, ys[:, -1], at="last")
    mask = np.ones((3, 7))
    mask[2, 4:] = 0
    agree(m, xs, ys, mask=mask)


def test_initial_states_given_and_learned_and_adjoints_kept():
    m = Model(cells.lstm(2, 3), layers=2, head=1, seed=1, learn_initial=("c",))
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((2, 5, 2)), rng.standard_normal((2, 5, 1))
    m.load_params({"init_c_l1": rng.standard_normal(3)}, strict=False)
    h0 = rng.standard_normal((2, 2, 3))
    agree(m, xs, ys, initial_state={"h": h0})
    a = rnn.bptt(m, xs, ys, executor="reference", keep_adjoints=True)
    b = rnn.bptt(m, xs, ys, keep_adjoints=True)
    for t in range(5):
        np.testing.assert_allclose(b.adjoints[f"c_l0@{t}"], a.adjoints[f"c_l0@{t}"], atol=1e-12)


def test_bptt_k1_k2_and_seq2seq_agree():
    rng = np.random.default_rng(3)
    m = Model(cells.gru(2, 3), head=1, seed=2)
    xs, ys = rng.standard_normal((2, 9, 2)), rng.standard_normal((2, 9, 1))
    agree(m, xs, ys, truncate=(2, 4))
    s2s = rnn.Seq2Seq(cells.lstm(3, 4), cells.gru(1, 4), head=3, out_steps=3)
    xs, ys = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 3, 3))
    agree_seq2seq(s2s, xs, ys)


def test_a_cell_of_600_equations_runs_without_recursion():
    """580 equations of input features (sweeps over all T) feed 20 recurrent ones (the
    loop): grouping, ordering and code generation never recurse."""
    lines = ["u0 = tanh(W @ x)"] + [f"u{k} = u{k - 1} * 0.99 + 0.01 * sigmoid(u{k - 1})"
                                    for k in range(1, 580)]
    lines += ["a0 = tanh(u579 + U @ h[t-1])"]
    lines += [f"a{k} = a{k - 1} * 0.9 + 0.1 * h[t-1]" for k in range(1, 19)]
    lines.append("h = a18 * 0.5")
    cell = Cell.from_equations("\n".join(lines), inputs={"x": 2}, states={"h": 3})
    m = Model(cell, head=1, seed=0)
    groups = m.plan().groups
    assert sum(len(g.nodes) if isinstance(g, loop.Loop) else 1 for g in groups) > 580
    rng = np.random.default_rng(0)
    agree(m, rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 1)))


@pytest.fixture
def windows(monkeypatch):
    """Every loop's feeders a few steps at a time (as at T = 10,000, on small arrays);
    yields the largest number of windows a call used."""
    seen = [0]
    real = loop.Plan._windows

    def spy(self, T, B):
        w = real(self, T, B)
        seen[0] = max([seen[0]] + [len(v) for v in w.values()])
        return w

    monkeypatch.setattr(loop, "WINDOW_MIN", 0)
    monkeypatch.setattr(loop, "WINDOW", 1)
    monkeypatch.setattr(loop, "WGRAD_ROWS", 5)  # chunks, so windows, of 2-3 steps
    monkeypatch.setattr(loop.Plan, "_windows", spy)
    return seen


@pytest.fixture
def rows(monkeypatch):
    """Every loop run in parts of the batch, on threads of their own (as small-lstm's on
    two free cores), whatever the sizes and the load; yields the largest number of parts
    a loop ran in."""
    seen = [0]
    real = loop._Threads.cuts

    def spy(self, B):
        c = real(self, B)
        seen[0] = max(seen[0], len(c))
        return c

    monkeypatch.setattr(loop._Threads, "SERIAL", 0)
    monkeypatch.setattr(loop._Threads, "SPLIT_MIN", 0)
    monkeypatch.setattr(loop._threads, "cores", lambda: 3)
    monkeypatch.setattr(loop._Threads, "cuts", spy)
    return seen


def test_loops_run_in_parts_of_the_batch_agree(rows):
    """Parts of the batch (3 over batches of 2..5 rows, one part of a single row) on
    threads of their own give the interpreter's numbers: stacks, heads, masks,
    truncation, many-to-one, given initial states, several inputs, Seq2Seq."""
    rng = np.random.default_rng(3)
    for name, B in (("lstm", 5), ("gru", 2), ("elman", 4)):
        m = Model(cells.BUILTINS[name](3, 4), layers=2, head=2, seed=1)
        xs, ys = rng.standard_normal((B, 7, 3)), rng.standard_normal((B, 7, 2))
        mask = np.ones((B, 7))
        mask[1, 4:] = 0
        agree(m, xs, ys)
        agree(m, xs, ys, truncate=(2, 5))
        agree(m, xs, ys[:, -1], at="last")
        agree(m, xs, ys, mask=mask, truncate=3,
              initial_state={"h": rng.standard_normal((2, B, 4))})
    test_delays_delayed_inputs_and_reductions_inside_the_loop()  # softmax, sum, concat
    assert rows[0] == 3
    s2s = rnn.Seq2Seq(cells.lstm(3, 4), cells.gru(1, 4), head=3, out_steps=4)
    xs, ys = rng.standard_normal((4, 6, 3)), rng.standard_normal((4, 4, 3))
    agree_seq2seq(s2s, xs, ys)


def test_parts_of_the_batch_a_window_at_a_time(rows, windows):
    rng = np.random.default_rng(5)
    m = Model(cells.lstm(3, 4), layers=2, head=2, seed=1, learn_initial=("h",))
    xs, ys = rng.standard_normal((3, 11, 3)), rng.standard_normal((3, 11, 2))
    agree(m, xs, ys, truncate=3)
    assert rows[0] == 3 and windows[0] >= 4


def test_feeders_a_window_at_a_time_agree(windows):
    """An LSTM's input projection (and any sweeps that only feed a loop) computed and
    differentiated a window of steps at a time gives the same numbers as all T at once:
    stacks, heads, masks, truncation, many-to-one, learned and given initial states."""
    rng = np.random.default_rng(7)
    for name in ("lstm", "gru", "elman"):
        m = Model(cells.BUILTINS[name](3, 4), layers=2, head=2, seed=1,
                  learn_initial=("h",))
        assert any(m.plan().feeders.values())
        xs, ys = rng.standard_normal((3, 11, 3)), rng.standard_normal((3, 11, 2))
        mask = np.ones((3, 11))
        mask[1, 6:] = 0
        agree(m, xs, ys)
        agree(m, xs, ys, truncate=3)
        agree(m, xs, ys, truncate=(2, 5))
        agree(m, xs, ys[:, -1], at="last")
        agree(m, xs, ys, mask=mask, initial_state={"h": rng.standard_normal((2, 3, 4))})
    assert windows[0] >= 4
    a = rnn.bptt(m, xs, ys, executor="reference", keep_adjoints=True)
    b = rnn.bptt(m, xs, ys, keep_adjoints=True)
    for t in range(11):
        np.testing.assert_allclose(b.adjoints[f"h_l1@{t}"], a.adjoints[f"h_l1@{t}"],
                                   atol=1e-12)


def test_seq2seq_a_window_at_a_time(windows):
    rng = np.random.default_rng(4)
    s2s = rnn.Seq2Seq(cells.lstm(3, 4), cells.gru(1, 4), head=3, out_steps=9)
    xs, ys = rng.standard_normal((2, 11, 3)), rng.standard_normal((2, 9, 3))
    agree_seq2seq(s2s, xs, ys)
    assert windows[0] >= 3


@settings(max_examples=8, deadline=None, derandomize=True)
@given(cell_text())
def test_random_cells_agree_in_parts_of_the_batch(text):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop._Threads, "SERIAL", 0)
        mp.setattr(loop._Threads, "SPLIT_MIN", 0)
        mp.setattr(loop._threads, "cores", lambda: 2)
        test_random_cells_agree_with_the_interpreter.hypothesis.inner_test(text)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(cell_text())
def test_random_cells_agree_a_window_at_a_time(text):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "WINDOW_MIN", 0)
        mp.setattr(loop, "WINDOW", 1)
        mp.setattr(loop, "WGRAD_ROWS", 3)
        test_random_cells_agree_with_the_interpreter.hypothesis.inner_test(text)


def test_feeders_are_what_only_the_loop_reads(monkeypatch):
    """W @ x of an LSTM feeds its loop alone (+ b is in the loop); a sweep the backward
    reads (tanh's value) or another group reads is no feeder."""
    plan = Model(cells.lstm(2, 3), seed=0).plan()
    (k, feed), = plan.feeders.items()
    assert [n.op for n in feed] == ["matvec"]
    monkeypatch.setattr(loop, "ABSORB_MAX", 0)  # + b and tanh stay sweeps
    plan = Model(cells.lstm(2, 3), seed=0).plan()
    (k, feed), = plan.feeders.items()
    assert [n.op for n in feed] == ["matvec", "add"]
    cell = Cell.from_equations("u = tanh(W @ x)\nh = tanh(u + U @ h[t-1]) + u",
                               inputs={"x": 2}, states={"h": 3})
    plan = Model(cell, seed=0).plan()
    assert any(isinstance(g, loop.Sweep) and g.node.op == "tanh" for g in plan.groups)
    assert all("u" not in {n.out for n in f} for f in plan.feeders.values())


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="10,000 steps of plain Python loops")
def test_long_sequences_keep_only_activations(tmp_path):
    """T = 10,000 in a fresh process: no unrolled program is built for the compiled path,
    so memory is the activations (a few MB here), not a plan per step."""
    code = ("import numpy as np, rnn\n"
            "m = rnn.Model(rnn.cells.lstm(8, 32), seed=0)\n"
            "xs = np.ones((4, 10000, 8)); ys = np.zeros((4, 10000, 32))\n"
            "rnn.bptt(m, xs, ys)\n"
            "assert not m._programs  # the unrolled program was never built\n"
            "status = open('/proc/self/status').read()  # VmHWM: this process's peak\n"
            "print(int(status.split('VmHWM:')[1].split()[0]) // 1024)")
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 600  # MB; the old executor peaked at 700-1000 MB, this 270


def _blas_threads_seen(model, xs):
    """BLAS thread counts inside the plan's hoisted GEMMs, and before/after the call."""
    from threadpoolctl import threadpool_info

    def counts():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    model.forward(xs)  # loads every BLAS the loops use
    before, seen = counts(), []
    real = loop._Threads.matmul  # a sweep's x @ W^T

    def spy(self, a, b):
        seen.append(counts())
        return real(self, a, b)

    loop._Threads.matmul = spy
    try:
        model.forward(xs)
    finally:
        loop._Threads.matmul = real
    return before, seen, counts()


def test_blas_threads_are_one_inside_and_restored_after():
    # T B |W_hh| = 8 * 4 * 192 * 64: past the size where BLAS would thread on its own
    before, seen, after = _blas_threads_seen(Model(cells.gru(2, 64), seed=0),
                                             np.ones((4, 8, 2)))
    assert seen and all(n == 1 for counts in seen for n in counts)
    assert after == before


def test_blas_threads_left_alone_for_tiny_products():
    before, seen, after = _blas_threads_seen(Model(cells.gru(2, 3), seed=0),
                                             np.ones((2, 4, 2)))
    assert seen and all(counts == before for counts in seen)
    assert after == before


def test_a_fixed_blas_thread_count_ignores_the_load(monkeypatch):
    monkeypatch.setenv("UNROLL_BLAS_THREADS", "1")
    th = loop._Threads()
    th.depth = 1  # inside ``single``
    monkeypatch.setattr(loop._Threads, "free_cores", staticmethod(lambda: 2))
    assert th.gemm(1e12) is loop._NOTHING  # big, and cores free: still one thread
    monkeypatch.setenv("UNROLL_BLAS_THREADS", "2")
    th = loop._Threads()
    th.depth = 1
    monkeypatch.setattr(loop._Threads, "free_cores", staticmethod(lambda: 1))
    got = th.gemm(1e12)
    assert isinstance(got, loop._Full) and got.cores == 2  # busy machine: still two
    assert th.gemm(1.0) is loop._NOTHING  # small: one
    th.split = 2  # the loops run in parts of the batch: those threads are ours
    assert th.gemm(1e12) is loop._NOTHING and th.cuts(5) == [(0, 2), (2, 5)]


def test_the_loops_run_in_parts_where_cores_are_free(monkeypatch):
    plan = Model(cells.lstm(32, 128), dtype="float32").plan()
    monkeypatch.setattr(loop._threads, "cores", lambda: 2)
    assert plan.parts(100, 32) == 2  # small-lstm
    assert plan.parts(100, 1) == 1 and plan.parts(2, 2) == 1  # one row; little work
    monkeypatch.setattr(loop._threads, "cores", lambda: 1)
    assert plan.parts(100, 32) == 1  # a busy machine
    monkeypatch.setattr(loop._threads, "cores", lambda: 2)
    big = Model(cells.lstm(256, 512), dtype="float32").plan()
    monkeypatch.setattr(big, "block", 1_000_000)
    assert big.parts(100, 64) == 2  # medium-lstm, its GEMMs in tiles: in parts as well
    monkeypatch.setattr(big, "block", 0)
    assert big.parts(100, 64) == 1  # without tiles: BLAS's threads on its big steps


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the BLAS routine runs in compiled code")
@pytest.mark.parametrize("parts", [1, 2])
def test_the_loops_gemms_in_tiles_agree_with_the_reference(monkeypatch, parts):
    """With a small tile limit, the forward step's GEMM runs in tiles of 64 (or 128)
    columns by an inner 80 and the backward's of 64 by 160, two inner pieces (320 =
    160 + 160) and ragged columns (80 = 64 + 16), in one part of the batch and in two:
    the reference's loss, gradients and outputs to 1e-10."""
    if blas.gemm_symbol("float64") is None:
        pytest.skip("no CBLAS gemm in numpy's BLAS here")
    monkeypatch.setenv("UNROLL_GEMM_BLOCK", "200000")
    monkeypatch.setattr(loop._threads, "cores", lambda: parts)
    m = Model(cells.lstm(8, 80), head=3, seed=4)
    assert m.plan().block == 200_000 and m.plan().block_for(loop._NOTHING) == 200_000
    rows = 24 // parts
    assert blas.tiles(rows, 80, 320, 200_000, 8)[1:] == ((64, 80) if parts == 1 else (128, 80))
    assert blas.tiles(rows, 320, 80, 200_000, 8)[1:] == (64, 160)
    rng = np.random.default_rng(5)
    xs, ys = rng.standard_normal((24, 40, 8)), rng.standard_normal((24, 40, 3))
    assert m.plan().parts(40, 24) == parts
    agree(m, xs, ys)


@pytest.mark.parametrize("dtype,atol", [("float64", 1e-10), ("float32", 2e-5)])
def test_layernorm_inside_and_outside_the_loop(dtype, atol):
    """layernorm in the recurrence (a LayerNorm-LSTM) and over an input sweep."""
    cell = Cell.from_equations(
        "u = layernorm(V @ x)\n"
        "z = layernorm(W @ x + U @ h[t-1]) * gz + bz\n"
        "i, f, g, o = split(z, 4)\n"
        "c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)\n"
        "h = sigmoid(o) * tanh(layernorm(c) * gc + bc) + u",
        inputs={"x": 3}, states={"h": 4, "c": 4})
    m = Model(cell, layers=2, head=2, seed=1, dtype=dtype)
    assert "layernorm" in m.plan().source()
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((3, 6, 3)).astype(dtype)
    ys = rng.standard_normal((3, 6, 2)).astype(dtype)
    agree(m, xs, ys, atol=atol)
    mask = np.ones((3, 6), dtype)
    mask[0, 3:] = 0
    agree(m, xs, ys, atol=atol, mask=mask, truncate=2)


def test_a_matrix_of_one_row_or_column_in_the_loop():
    """V (1, 3) and U (3, 1): the forward's transposed copies keep row-major strides (a
    (3, 1) view's odd strides failed the GEMM's check; an LSTM with proj_size=1 met it)."""
    cell = Cell.from_equations("a = V @ h[t-1]\nh = tanh(W @ x + U @ a)",
                               inputs={"x": 2}, states={"h": 3}, sizes={"a": 1})
    m = Model(cell, head=1, seed=0)
    rng = np.random.default_rng(0)
    agree(m, rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 4, 1)))


COMPILES = """
import json, sys
import numpy as np
from numba.core import event
import rnn
from rnn import cells

seen = []


class Listen(event.Listener):
    def on_start(self, e):
        pass

    def on_end(self, e):
        f = e.data["dispatcher"].py_func
        seen.append(f"{f.__module__}.{f.__qualname__}")


model = rnn.Model(cells.lstm(3, 5), dtype=sys.argv[1], seed=0)
xs = np.ones((2, 4, 3), sys.argv[1])
with event.install_listener("numba:compile", Listen()):
    rnn.bptt(model, xs, np.zeros((2, 4, 5), sys.argv[1]), keep_adjoints=True)
print(json.dumps(seen))
"""


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="nothing is compiled")
def test_a_new_cell_compiles_its_loops_and_no_string_code(tmp_path):
    """A new cell's first call compiles its two loops and a few small helpers, never the
    error-message code Numba emits with an array assignment (3-5 s of unicode functions:
    a new LSTM's first call took 7.6 s with it, 3.3 s without). A fresh process and an
    empty cache, so that nothing was compiled before."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "UNROLL_CACHE": str(tmp_path), "NUMBA_CACHE_DIR": str(tmp_path / "nb")}
    for dtype in ("float32", "float64"):
        out = subprocess.run([sys.executable, "-c", COMPILES, dtype], env=env, text=True,
                             capture_output=True, timeout=600)
        assert out.returncode == 0, out.stderr
        seen = json.loads(out.stdout.splitlines()[-1])
        assert any(s.endswith(".backward") for s in seen)  # it did compile the loops
        strings = [s for s in seen if "unicode" in s or "shape_context" in s
                   or ".ol_str_" in s or ".ol_repr_" in s]
        assert not strings, strings


def test_a_state_no_run_computes_keeps_its_adjoints_in_parts(rows):
    """h = softmax(...): a state made by an op outside the fused runs, its adjoint
    kept step by step (keep_adjoints) and its norms, in parts of the batch."""
    cell = Cell.from_equations("h = softmax(W @ x + U @ h[t-1] + b)", inputs={"x": 3},
                               states={"h": 4})
    m = Model(cell, seed=1)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((5, 6, 3)), rng.standard_normal((5, 6, 4))
    agree(m, xs, ys)
    a = rnn.bptt(m, xs, ys, executor="reference", keep_adjoints=True)
    b = rnn.bptt(m, xs, ys, keep_adjoints=True)
    assert rows[0] == 3
    for t in range(6):
        np.testing.assert_allclose(b.adjoints[f"h_l0@{t}"], a.adjoints[f"h_l0@{t}"],
                                   atol=1e-12)


SOURCES = """
import hashlib
from rnn import cells
from rnn.program.loop import Plan
src = "".join(Plan(mk(3, 4), "float64").source() for _, mk in sorted(cells.BUILTINS.items()))
print(hashlib.sha256(src.encode()).hexdigest())
"""


def test_the_generated_source_is_the_same_in_every_process(tmp_path):
    """The loops' source names the module in Numba's on-disk cache: it must not depend on
    the order of a set (strings hash differently from process to process), or a new
    process compiles a cell again (an LSTM's two rings came in either order)."""
    import os
    import subprocess
    import sys

    seen = set()
    for seed in range(8):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "UNROLL_CACHE": str(tmp_path)}
        out = subprocess.run([sys.executable, "-c", SOURCES], env=env, text=True,
                             capture_output=True, timeout=300)
        assert out.returncode == 0, out.stderr
        seen.add(out.stdout.split()[-1])
    assert len(seen) == 1
