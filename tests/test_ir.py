"""The program IR: builder, verifier, printer, interpreter, reverse mode, passes."""

import numpy as np
import pytest

from engine import Builder, Eqn, IRError, ShapeError, Tensor, Var, interpret, run_passes, verify
from engine.ir import backward, common_subexpressions, dead_code


def small_program():
    b = Builder("float64")
    x = b.input("x", ("B", 3))
    W = b.input("W", (4, 3))
    bias = b.input("b", (4,))
    a = b.call("add", b.call("matvec", W, x, name="Wx"), bias, name="a")
    h = b.call("tanh", a, name="h")
    loss = b.call("mean", b.call("pow", h, p=2.0, name="sq"), name="loss")
    b.call("exp", x, name="unused")
    return b.program([loss])


def test_printer_one_equation_a_line_with_shapes():
    text = str(small_program())
    assert "h:f64[B,4] = tanh a" in text
    assert "Wx:f64[B,4] = matvec W x" in text
    assert text.splitlines()[0] == "in  x:f64[B,3], W:f64[4,3], b:f64[4]"


def test_verify_catches_ssa_and_shape_breaks():
    p = small_program()
    dup = p.eqns[0]
    with pytest.raises(IRError, match="defined twice"):
        verify(type(p)(p.inputs, p.eqns + (dup,), p.outputs))
    bad = Eqn(Var("z", ("B", 9), "float64"), "tanh", (p.eqns[1].out,))
    with pytest.raises(IRError, match=r"declared z:f64\[B,9\] but tanh gives float64\[B,4\]"):
        verify(type(p)(p.inputs, p.eqns + (bad,), p.outputs))
    use = Eqn(Var("q", ("B", 4), "float64"), "tanh", (Var("nope", ("B", 4), "float64"),))
    with pytest.raises(IRError, match="'nope' is used before it is defined"):
        verify(type(p)(p.inputs, (use,) + p.eqns, p.outputs))


def test_builder_shape_errors_are_clear():
    b = Builder("float64")
    x, W = b.input("x", ("B", 5)), b.input("W", (4, 3))
    with pytest.raises(ShapeError, match=r"matrix \[4,3\] takes vectors of 3 features"):
        b.call("matvec", W, x)


def test_interpret_and_backward_match_the_eager_tensor():
    p = verify(small_program())
    rng = np.random.default_rng(0)
    env = {"x": rng.standard_normal((5, 3)), "W": rng.standard_normal((4, 3)),
           "b": rng.standard_normal(4)}
    vals = interpret(p, env)
    adj = backward(p, vals, {"loss": np.array(1.0)})
    ts = {k: Tensor(v, requires_grad=True) for k, v in env.items()}
    loss = ((ts["x"] @ ts["W"].T + ts["b"]).tanh() ** 2).mean()
    loss.backward()
    assert np.isclose(vals["loss"], loss.data)
    for k in env:
        np.testing.assert_allclose(adj[k], ts[k].grad, rtol=1e-12)


def test_graph_view_is_acyclic_and_ordered():
    import networkx as nx

    g = small_program().graph()
    assert nx.is_directed_acyclic_graph(g)
    assert g.edges["W", "Wx"]["arg"] == 0 and g.edges["x", "Wx"]["arg"] == 1


def test_passes_verify_and_print(capsys):
    p = run_passes(small_program(), [dead_code, common_subexpressions], print_after_all=True)
    assert "unused" not in {e.out.name for e in p.eqns}
    out = capsys.readouterr().out
    assert "# after dead_code" in out and "# after common_subexpressions" in out


def test_a_broken_pass_is_caught():
    def drop_first(p):
        return type(p)(p.inputs, p.eqns[1:], p.outputs)

    with pytest.raises(IRError):
        run_passes(small_program(), [drop_first])
