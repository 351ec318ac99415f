"""The equation language, the cyclic cell graph, shape inference and its errors."""

import networkx as nx
import pytest

import rnn
from engine import AlgebraicLoopError, CellError
from rnn import Cell, cells

ELMAN = "h = tanh(W @ x + U @ h[t-1] + b)"


def make(text, inputs=None, **kw):
    return Cell.from_equations(text, inputs=inputs or {"x": 3}, **kw)


def test_elman_shapes_are_inferred():
    c = make(ELMAN, states={"h": 16})
    assert c.params == {"W": (16, 3), "U": (16, 16), "b": (16,)}
    assert c.states == {"h": 16} and c.outputs == ["h"]


def test_graph_is_cyclic_with_delay_edges():
    g = make(ELMAN, states={"h": 16}).graph
    assert isinstance(g, nx.MultiDiGraph) and not nx.is_directed_acyclic_graph(g)
    delayed = [(u, v, d["delay"]) for u, v, d in g.edges(data=True) if d["delay"]]
    assert delayed == [("h", "h.2", 1)]
    no_delay = nx.DiGraph([(u, v) for u, v, d in g.edges(data=True) if d["delay"] == 0])
    assert nx.is_directed_acyclic_graph(no_delay)
    assert g.nodes["W"]["kind"] == "param" and g.nodes["h"]["kind"] == "state"


def test_lstm_split_infers_gate_sizes():
    c = cells.lstm(3, 5)
    assert c.params["weight_ih"] == (20, 3) and c.shapes["i"] == (5,)
    assert set(c.states) == {"h", "c"}


def test_print_shows_equations_with_shapes():
    text = str(cells.lstm(3, 5))
    assert "i[5], f[5], g[5], o[5] = split(z, 4)" in text
    assert "z[20] = weight_ih @ x" in text and "weight_hh[20,5]" in text


def test_long_delays_and_delayed_inputs():
    c = make("h = tanh(W @ x + V @ x[t-1] + U @ h[t-2])", states={"h": 4})
    assert c.input_delays == {"x": 1}
    assert {d for *_, d in c.graph.edges(data="delay")} == {0, 1, 2}


def test_sizes_name_what_inference_cannot():
    with pytest.raises(CellError, match="cannot infer the shape of parameter 'W'"):
        make("a = relu(W @ x)\nh = tanh(U @ a + V @ h[t-1])", states={"h": 4})
    c = make("a = relu(W @ x)\nh = tanh(U @ a + V @ h[t-1])", states={"h": 4}, sizes={"a": 8})
    assert c.params["W"] == (8, 3) and c.params["U"] == (4, 8)


def test_builder_makes_the_same_cell():
    b = rnn.CellBuilder(inputs={"x": 3}, states={"h": 16})
    x, h, W, U, bias = b.names("x h W U b")
    b.define("h", b.tanh(W @ x + U @ h.prev() + bias))
    built, written = b.build(), make(ELMAN, states={"h": 16})
    assert built.params == written.params
    strip = lambda g: sorted((u, v, d["delay"]) for u, v, d in g.edges(data=True))  # noqa: E731
    assert strip(built.graph) == strip(written.graph)


def test_concat_and_scalars():
    c = make("hx = concat(x, h[t-1])\nh = tanh(W @ hx) * sigmoid(sum(a * h[t-1]))",
             states={"h": 4})
    assert c.shapes["hx"] == (7,) and c.params["W"] == (4, 7) and c.params["a"] == (4,)


# ------------------------------------------------------------------ one test per error
def test_error_algebraic_loop_spells_the_cycle():
    with pytest.raises(AlgebraicLoopError, match=r"h -> a -> h.*\[t-1\]") as e:
        make("h = tanh(W @ x + a)\na = V @ h")
    assert e.value.line == 1


def test_error_undefined_name():
    with pytest.raises(CellError, match=r"line 1, column \d+: undefined name 'q'"):
        make("h = tanh(W @ x + U @ q[t-1])")


def test_error_defined_twice():
    with pytest.raises(CellError, match="line 2.*'h' is defined twice"):
        make("h = W @ x\nh = V @ x")


@pytest.mark.parametrize("text,what", [
    ("h = x.T", "attribute access"),
    ("h = foo(x)", "unknown function 'foo'"),
    ("h = (lambda: x)()", "unknown function"),
    ("import os", "import"),
    ("h = x if x else x", "conditional"),
])
def test_error_unsupported_syntax(text, what):
    with pytest.raises(CellError, match=f"line 1.*{what}"):
        make(text)


@pytest.mark.parametrize("delay,what", [("t-1.5", "integer"), ("t+1", "k >= 1"),
                                        ("t-0", "k >= 1"), ("2", "v\\[t-k\\]")])
def test_error_bad_delay(delay, what):
    with pytest.raises(CellError, match=f"bad delay.*{what}"):
        make(f"h = tanh(W @ x + U @ h[{delay}])")


def test_error_shape_conflict_shows_both_shapes():
    conflict = r"shape conflict in 'h': mul of h\[t-1\] \[4\] and x \[3\]"
    with pytest.raises(CellError, match=conflict):
        make("h = tanh(U @ h[t-1] + h[t-1] * x)", states={"h": 4})
    declared = r"'h' is declared with size 4 but its equation gives \[3\]"
    with pytest.raises(CellError, match=declared):
        make("h = tanh(U @ h[t-1]) + x", states={"h": 4})


def test_error_declared_state_never_defined():
    with pytest.raises(CellError, match="state 'c' is declared but no equation defines it"):
        make(ELMAN, states={"h": 4, "c": 4})


def test_error_matrix_on_the_left_of_at_only():
    with pytest.raises(CellError, match="left of @ must be a parameter"):
        make("h = x @ x")
    with pytest.raises(CellError, match=r"left to right: write \(W @ x\) \* y"):
        make("h = W @ x * U @ x")


def test_error_text_must_be_equations():
    with pytest.raises(CellError, match="not an equation"):
        make("h = = x")


@pytest.mark.parametrize("name", sorted(cells.BUILTINS))
def test_builtins_parse(name):
    c = cells.BUILTINS[name](3, 4)
    assert c.params and c.states


def test_functions_of_number_literals_are_folded():
    c = make("h = tanh(W @ x + U @ h[t-1]) * sigmoid(0.0) + log(1.0)", states={"h": 2})
    consts = [a for nd in c.nodes for a in nd.args if isinstance(a, float)]
    assert 0.5 in consts and 0.0 in consts
    with pytest.raises(CellError, match=r"log\(-1.0\) has no finite value"):
        make("h = tanh(W @ x) + log(-1.0)")
    with pytest.raises(CellError, match="takes vectors, not number literals"):
        make("h = concat(W @ x, 1.0)")


def test_minus_matrix_times_vector_reads_as_in_math():
    c = make("h = tanh(-W @ x + U @ h[t-1])", states={"h": 2})
    assert c.params["W"] == (2, 3)
    assert [nd.op for nd in c.nodes][:2] == ["matvec", "neg"]
