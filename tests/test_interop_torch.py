"""from_torch / to_torch against real nn.RNN (relu), nn.LSTM (proj_size, bias=False) and
nn.GRU modules: outputs, loss, every gradient and the round trip (skipped without torch)."""

import numpy as np
import pytest

import rnn
from rnn import cells

torch = pytest.importorskip("torch")
from test_torch import torch_run  # noqa: E402 - after the skip: it imports torch too

F64 = torch.float64
MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
CASES = [  # (kind, module options)
    ("rnn", {"nonlinearity": "relu"}),
    ("rnn", {"nonlinearity": "relu", "num_layers": 2}),
    ("rnn", {"bias": False, "num_layers": 2}),
    ("rnn", {"nonlinearity": "relu", "bias": False}),
    ("lstm", {"proj_size": 1}),
    ("lstm", {"proj_size": 2, "num_layers": 2}),
    ("lstm", {"bias": False}),
    ("lstm", {"bias": False, "proj_size": 3, "num_layers": 2}),
    ("gru", {"num_layers": 2}),
    ("gru", {"bias": False, "num_layers": 2}),
]


def module(kind, opts, I=3, H=5, seed=0):
    torch.manual_seed(seed)
    return MODULES[kind](I, H, batch_first=True, dtype=F64, **opts)



def _ids(case):
    return f"{case[0]}-" + "-".join(f"{k}={v}" for k, v in case[1].items())


@pytest.mark.parametrize("at", ["all", "last"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_from_torch_matches_the_module(case, at):
    kind, opts = case
    mod = module(kind, opts)
    L, H, P = opts.get("num_layers", 1), mod.hidden_size, mod.proj_size or mod.hidden_size
    model = rnn.interop.from_torch(kind, mod.state_dict(),
                                   nonlinearity=opts.get("nonlinearity", "tanh"))
    assert model.layers == L and model.output_size == P
    B, T = 2, 6
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((B, T, 3))
    ys = rng.standard_normal((B, T, P) if at == "all" else (B, P))
    h0, c0 = rng.standard_normal((L, B, P)), rng.standard_normal((L, B, H))
    out, loss, grads, dh0, dc0 = torch_run(kind, mod, xs, ys, h0, c0, at)
    # states as torch's h0/c0: (layers, B, .) stacked, (B, .) for one layer
    one = (lambda a: a[0]) if L == 1 else (lambda a: a)
    init = {"h": one(h0), **({"c": one(c0)} if kind == "lstm" else {})}
    res = rnn.bptt(model, xs, ys, at=at, initial_state=init)
    np.testing.assert_allclose(res.outputs, out, rtol=0, atol=1e-7)
    assert abs(res.loss - loss) < 1e-7
    assert set(res.grads) == set(grads)
    for k in grads:
        np.testing.assert_allclose(res.grads[k], grads[k], rtol=0, atol=1e-7, err_msg=k)
    assert grads[f"weight_ih_l{L - 1}"].any()  # the comparison is not of zeros
    np.testing.assert_allclose(res.state_grads["h"], one(dh0), rtol=0, atol=1e-7)
    if kind == "lstm":
        assert res.state_grads["c"].shape == one(c0).shape
        np.testing.assert_allclose(res.state_grads["c"], one(dc0), rtol=0, atol=1e-7)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_to_torch_loads_strictly_and_round_trips(case):
    kind, opts = case
    mod = module(kind, opts)
    sd = mod.state_dict()
    model = rnn.interop.from_torch(kind, sd, nonlinearity=opts.get("nonlinearity", "tanh"))
    back = rnn.interop.to_torch(model)
    assert list(back) == list(sd)  # torch's own key order
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy())
    fresh = module(kind, opts, seed=7)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)
    xs = np.random.default_rng(2).standard_normal((2, 4, 3))
    np.testing.assert_array_equal(fresh(torch.tensor(xs))[0].detach().numpy(),
                                  mod(torch.tensor(xs))[0].detach().numpy())
    np.testing.assert_allclose(model.predict(xs), mod(torch.tensor(xs))[0].detach().numpy(),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind, cell, opts", [
    ("lstm", cells.lstm(3, 4, biases=1), {}),
    ("rnn", cells.elman(3, 4, nonlinearity="relu", biases=1), {"nonlinearity": "relu"}),
])
def test_a_one_bias_model_goes_to_torch_with_zero_bias_hh(kind, cell, opts):
    model = rnn.Model(cell, layers=2, seed=3)
    sd = rnn.interop.to_torch(model)
    assert not sd["bias_hh_l1"].any() and sd["bias_ih_l1"].any()
    mod = MODULES[kind](3, 4, num_layers=2, batch_first=True, dtype=F64, **opts)
    mod.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    xs = np.random.default_rng(4).standard_normal((3, 5, 3))
    np.testing.assert_allclose(model.predict(xs), mod(torch.tensor(xs))[0].detach().numpy(),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_bidirectional_modules_load_and_round_trip(kind, layers):
    """_reverse keys make a bidirectional Model: outputs, loss and every gradient as
    torch's, and to_torch loads back with strict=True."""
    torch.manual_seed(layers)
    mod = MODULES[kind](3, 4, num_layers=layers, batch_first=True, bidirectional=True,
                        dtype=F64)
    model = rnn.interop.from_torch(kind, mod.state_dict())
    assert model.bidirectional and model.layers == layers
    rng = np.random.default_rng(6)
    xs, ys = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 8))
    x = torch.tensor(xs)
    out, _ = mod(x)
    loss = ((out - torch.tensor(ys)) ** 2).mean()
    loss.backward()
    res = rnn.bptt(model, xs, ys)
    np.testing.assert_allclose(res.outputs, out.detach().numpy(), atol=1e-10)
    assert abs(res.loss - loss.item()) < 1e-10
    for k, v in mod.named_parameters():
        np.testing.assert_allclose(res.grads[k], v.grad.numpy(), atol=1e-7, err_msg=k)
    back = MODULES[kind](3, 4, num_layers=layers, batch_first=True, bidirectional=True,
                         dtype=F64)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in
                          rnn.interop.to_torch(model).items()}, strict=True)
    np.testing.assert_allclose(back(x)[0].detach().numpy(), out.detach().numpy(), atol=1e-12)


def test_float32_modules_give_float32_models():
    mod = torch.nn.LSTM(3, 4, proj_size=2, dtype=torch.float32)
    model = rnn.interop.from_torch("lstm", mod.state_dict())
    assert model.dtype == "float32" and model.params["weight_hr_l0"].shape == (2, 4)
    xs = np.random.default_rng(5).standard_normal((2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(xs), mod(torch.tensor(xs).transpose(0, 1))[0]
                               .transpose(0, 1).detach().numpy(), atol=1e-5)
