"""Every registered op: finite differences, VJP/JVP inner product, float64.

CASES must name every op in the registry, so a new op cannot land untested.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from strategies import arrays, broadcastable_pair

from engine import OPS, DTypeError, ShapeError, Tensor, no_grad
from tools.gradcheck import GradcheckError, check_vjp, gradcheck

R = np.random.default_rng(0)
pos = lambda *s: R.uniform(0.5, 2.0, s)  # noqa: E731
anyv = lambda *s: R.uniform(-2.0, 2.0, s)  # noqa: E731

# op name -> (float inputs, integer inputs, params)
CASES = {
    "add": ([anyv(3, 4), anyv(4)], [], {}),
    "sub": ([anyv(2, 1, 3), anyv(4, 1)], [], {}),
    "mul": ([anyv(3, 4), anyv(3, 1)], [], {}),
    "div": ([anyv(3, 4), pos(4)], [], {}),
    "neg": ([anyv(3)], [], {}),
    "pow": ([pos(2, 3)], [], {"p": 2.5}),
    "exp": ([anyv(2, 3)], [], {}),
    "log": ([pos(2, 3)], [], {}),
    "tanh": ([anyv(2, 3)], [], {}),
    "sigmoid": ([anyv(2, 3)], [], {}),
    "relu": ([anyv(2, 3) + 0.05], [], {}),
    "softplus": ([anyv(2, 3)], [], {}),
    "stop_gradient": ([anyv(3)], [], {}),
    "copy": ([anyv(3)], [], {}),
    "matmul": ([anyv(2, 3, 4), anyv(4, 5)], [], {}),
    "matvec": ([anyv(5, 3), anyv(2, 4, 3)], [], {}),
    "sum": ([anyv(2, 3, 4)], [], {"axis": (0, 2), "keepdims": False}),
    "mean": ([anyv(2, 3, 4)], [], {"axis": 1, "keepdims": True}),
    "reshape": ([anyv(2, 6)], [], {"shape": (3, -1)}),
    "transpose": ([anyv(2, 3, 4)], [], {"axes": (2, 0, 1)}),
    "slice": ([anyv(4, 6)], [], {"index": ((1, None, 2), (0, 5, None))}),
    "concat": ([anyv(2, 3), anyv(2, 1), anyv(2, 2)], [], {"axis": 1}),
    "stack": ([anyv(2, 3), anyv(2, 3)], [], {"axis": 1}),
    "log_softmax": ([anyv(3, 5)], [], {"axis": -1}),
    "softmax": ([anyv(5, 3)], [], {"axis": 0}),
    "layernorm": ([anyv(3, 5)], [], {"axis": -1}),
    "pick": ([anyv(3, 4)], [np.array([0, 3, 1])], {}),
}


def test_every_op_has_a_case():
    assert set(CASES) == set(OPS), f"ops without a gradient test: {set(OPS) - set(CASES)}"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_gradients(name):
    floats, ints, params = CASES[name]
    fn = lambda *xs: Tensor.apply(name, *xs, *[Tensor(i) for i in ints], **params)  # noqa: E731
    if name == "stop_gradient":
        with pytest.raises(GradcheckError):  # its VJP is zero on purpose: the check must see it
            gradcheck(fn, *floats, what=name)
        return
    gradcheck(fn, *floats, what=name)


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_keeps_float32(name):
    floats, ints, params = CASES[name]
    ts = [Tensor(f.astype(np.float32), requires_grad=True) for f in floats]
    out = Tensor.apply(name, *ts, *[Tensor(i) for i in ints], **params)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, np.float32))
    assert all(t.grad.dtype == np.float32 for t in ts if t.grad is not None)


@settings(max_examples=25, deadline=None)
@given(broadcastable_pair())
def test_broadcast_gradients_reduce_to_input_shapes(pair):
    a, b = arrays(pair[0], 1), arrays(pair[1], 2) + 3.0  # b away from 0 for div
    for op in ("add", "sub", "mul", "div"):
        gradcheck(lambda x, y, op=op: Tensor.apply(op, x, y), a, b, what=op, max_per_input=8)


def test_gradcheck_reports_a_wrong_vjp():
    bad = lambda u, x: [2 * u * np.cos(x)]  # noqa: E731  (the true vjp is u * cos x)
    with pytest.raises(GradcheckError, match=r"d/d x\[0\]"):
        check_vjp(np.sin, bad, [np.array([0.3, 0.7])], names=["x"], what="sin")


@pytest.mark.parametrize("op", ["tanh", "sigmoid", "softplus", "exp", "relu"])
def test_stable_at_extremes(op):
    x = Tensor(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]), requires_grad=True)
    with np.errstate(all="raise"):
        y = getattr(x, op)() if op != "exp" else x.exp()
        y.sum().backward()
    if op != "exp":
        assert np.all(np.isfinite(y.data)) and np.all(np.isfinite(x.grad))
    assert y.data[0] >= 0 or op == "tanh"


def test_softplus_and_log_softmax_never_overflow():
    x = Tensor(np.array([[1e4, -1e4, 0.0], [800.0, 799.0, -800.0]]))
    assert np.all(np.isfinite(x.softplus().data))
    ls = x.log_softmax().data
    assert np.all(np.isfinite(ls[:, :2])) and ls[0, 0] == 0.0
    np.testing.assert_allclose(np.exp(ls[1]).sum(), 1.0)


def test_sigmoid_values():
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(Tensor(x).sigmoid().data, 1 / (1 + np.exp(-x)), rtol=1e-14)


def test_mixing_dtypes_is_an_error():
    a, b = Tensor(np.ones(3, np.float32)), Tensor(np.ones(3, np.float64))
    with pytest.raises(DTypeError, match="float32, float64"):
        a + b


def test_scalar_literals_take_the_tensor_dtype():
    a = Tensor(np.ones(3, np.float32))
    assert (a * 2.0 + 1).dtype == np.float32 and (1 - a).dtype == np.float32


def test_shape_error_names_the_dimension():
    a, b = Tensor(np.ones((5, 3))), Tensor(np.ones((4, 2)))
    with pytest.raises(ShapeError, match=r"matmul: \[5,3\] @ \[4,2\].*\(3\).*\(4\)"):
        a @ b
    with pytest.raises(ShapeError, match=r"add: cannot broadcast \[5,3\] and \[4,2\]"):
        a + b


def test_fan_out_accumulates():
    x = Tensor(np.array([1.5, -2.0]), requires_grad=True)
    (x * x + x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data + 3)


def test_long_chain_does_not_recurse():
    x = Tensor(np.array(0.5), requires_grad=True)
    y = x
    for _ in range(20000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0


def test_no_grad_records_nothing():
    x = Tensor(np.ones(2), requires_grad=True)
    with no_grad():
        y = x.tanh()
    assert not y.requires_grad


def test_split_is_exact():
    x = Tensor(np.arange(8.0).reshape(2, 4), requires_grad=True)
    a, b = x.split(2)
    (a * 2 + b * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [[2, 2, 3, 3]] * 2)
    with pytest.raises(ShapeError, match="divide into 3"):
        x.split(3)
