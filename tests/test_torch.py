"""Built-in cells against PyTorch's nn.RNN / nn.LSTM / nn.GRU (skipped without torch)."""

import numpy as np
import pytest

import rnn

torch = pytest.importorskip("torch")
torch.set_default_dtype(torch.float64)

MODULES = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def torch_run(kind, mod, xs, ys, h0, c0, at):
    x = torch.tensor(xs, requires_grad=False)
    h = torch.tensor(h0, requires_grad=True)
    c = torch.tensor(c0, requires_grad=True) if kind == "lstm" else None
    out, _ = mod(x, (h, c) if kind == "lstm" else h)
    y = torch.tensor(ys)
    loss = ((out - y) ** 2).mean() if at == "all" else ((out[:, -1] - y) ** 2).mean()
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in mod.named_parameters()}
    return out.detach().numpy(), loss.item(), grads, h.grad.numpy(), \
        None if c is None else c.grad.numpy()


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("at", ["all", "last"])
def test_matches_pytorch(kind, layers, at):
    torch.manual_seed(0)
    I, H, B, T = 3, 4, 2, 5
    mod = MODULES[kind](I, H, num_layers=layers, batch_first=True)
    model = rnn.interop.from_torch(kind, mod.state_dict(), num_layers=layers)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((B, T, I))
    ys = rng.standard_normal((B, T, H) if at == "all" else (B, H))
    h0, c0 = rng.standard_normal((layers, B, H)), rng.standard_normal((layers, B, H))
    out, loss, grads, dh0, dc0 = torch_run(kind, mod, xs, ys, h0, c0, at)
    init = {"h": h0[0] if layers == 1 else h0}
    if kind == "lstm":
        init["c"] = c0[0] if layers == 1 else c0
    res = rnn.bptt(model, xs, ys, at=at, initial_state=init)
    np.testing.assert_allclose(res.outputs, out, atol=1e-7)
    assert abs(res.loss - loss) < 1e-7
    assert set(res.grads) == set(grads)
    for k in grads:
        np.testing.assert_allclose(res.grads[k], grads[k], atol=1e-7, err_msg=k)
    np.testing.assert_allclose(res.state_grads["h"], dh0[0] if layers == 1 else dh0, atol=1e-7)
    if kind == "lstm":
        np.testing.assert_allclose(res.state_grads["c"], dc0[0] if layers == 1 else dc0,
                                   atol=1e-7)
    back = rnn.interop.to_torch(model)
    assert all(np.array_equal(back[k], v.numpy()) for k, v in mod.state_dict().items())


def test_truncation_equals_detaching_every_k_steps():
    torch.manual_seed(0)
    I, H, B, T, k = 2, 3, 2, 7, 3
    mod = torch.nn.LSTM(I, H, batch_first=True)
    model = rnn.interop.from_torch("lstm", mod.state_dict())
    rng = np.random.default_rng(2)
    xs, ys = rng.standard_normal((B, T, I)), rng.standard_normal((B, T, H))
    h = c = torch.zeros(1, B, H)
    outs = []
    for s in range(0, T, k):
        o, (h, c) = mod(torch.tensor(xs[:, s:s + k]), (h, c))
        outs.append(o)
        h, c = h.detach(), c.detach()
    loss = ((torch.cat(outs, 1) - torch.tensor(ys)) ** 2).mean()
    loss.backward()
    res = rnn.bptt(model, xs, ys, truncate=k)
    assert abs(res.loss - loss.item()) < 1e-10
    for name, p in mod.named_parameters():
        np.testing.assert_allclose(res.grads[name], p.grad.numpy(), atol=1e-10)


def test_composite_tensor_expressions_match_pytorch():
    from engine import Tensor, cross_entropy

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    labels = np.array([0, 2, 1, 2])
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    z = (ta @ tb).tanh() * (ta @ tb).sigmoid() + (ta @ tb).softplus() / 3.0
    loss = cross_entropy(z - z.mean(axis=0, keepdims=True), labels) + (z ** 2).mean()
    loss.backward()
    pa, pb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    zz = torch.tanh(pa @ pb) * torch.sigmoid(pa @ pb) + torch.nn.functional.softplus(pa @ pb) / 3
    pl = torch.nn.functional.cross_entropy(zz - zz.mean(0, keepdim=True),
                                           torch.tensor(labels)) + (zz ** 2).mean()
    pl.backward()
    assert abs(loss.item() - pl.item()) < 1e-12
    np.testing.assert_allclose(ta.grad, pa.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(tb.grad, pb.grad.numpy(), atol=1e-12)


LN_LSTM = """
z = layernorm(W @ x + U @ h[t-1]) * gz + bz
i, f, g, o = split(z, 4)
c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
h = sigmoid(o) * tanh(layernorm(c) * gc + bc)
"""


@pytest.mark.parametrize("executor", ["compiled", "reference"])
def test_layernorm_lstm_matches_torch_layer_norm(executor):
    """A LayerNorm-LSTM written in the language against the same step written with
    torch.nn.functional.layer_norm (eps 1e-5, biased variance): loss and every gradient."""
    I, H, B, T = 3, 4, 2, 6
    cell = rnn.Cell.from_equations(LN_LSTM, inputs={"x": I}, states={"h": H, "c": H})
    model = rnn.Model(cell, dtype="float64", seed=2)
    rng = np.random.default_rng(3)
    xs, ys = rng.standard_normal((B, T, I)), rng.standard_normal((B, T, H))
    res = rnn.bptt(model, xs, ys, executor=executor)
    P = {k[:-3]: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    F = torch.nn.functional
    h, c, outs = torch.zeros(B, H), torch.zeros(B, H), []
    for t in range(T):
        z = F.layer_norm(torch.tensor(xs[:, t]) @ P["W"].T + h @ P["U"].T, (4 * H,))
        i, f, g, o = (z * P["gz"] + P["bz"]).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,)) * P["gc"] + P["bc"])
        outs.append(h)
    loss = ((torch.stack(outs, 1) - torch.tensor(ys)) ** 2).mean()
    loss.backward()
    assert abs(res.loss - loss.item()) < 1e-12
    for k, v in P.items():
        np.testing.assert_allclose(res.grads[f"{k}_l0"], v.grad.numpy(), atol=1e-10, err_msg=k)
