"""Bidirectional models (rnn.Model(cell, bidirectional=True)) against PyTorch's
nn.RNN / nn.LSTM / nn.GRU(bidirectional=True), packed sequences included, and the two
executors against each other (the torch comparisons skip without torch)."""

import numpy as np
import pytest

import rnn
from rnn.model import BiRun

CELLS = {"rnn": rnn.cells.elman, "lstm": rnn.cells.lstm, "gru": rnn.cells.gru}
I, H, B, T = 3, 4, 3, 6


def data(seed=1, O=H * 2, lengths=None):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((B, T, I))
    ys = rng.standard_normal((B, T, O))
    mask = None if lengths is None else (np.arange(T) < np.array(lengths)[:, None]) * 1.0
    return xs, ys, mask


def torch_run(torch, kind, model, xs, ys, h0, c0, lengths, head):
    """Outputs (zeros where padded), h_n, loss (mean over valid elements), grads."""
    mod = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
        I, H, num_layers=model.layers, batch_first=True, bidirectional=True)
    lin = torch.nn.Linear(2 * H, head) if head else None
    mod.load_state_dict({k: torch.tensor(v) for k, v in model.params.items()
                         if not k.startswith("head_")})
    if lin is not None:
        lin.load_state_dict({"weight": torch.tensor(model.params["head_weight"]),
                             "bias": torch.tensor(model.params["head_bias"])})
    x = torch.tensor(xs)
    h = torch.tensor(h0, requires_grad=True)
    c = torch.tensor(c0, requires_grad=True)
    state = (h, c) if kind == "lstm" else h
    if lengths is None:
        out, hn = mod(x, state)
        valid = torch.ones(B, T, 1)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                         batch_first=True,
                                                         enforce_sorted=False)
        out, hn = mod(packed, state)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                        total_length=T)
        valid = torch.tensor((np.arange(T) < np.array(lengths)[:, None]) * 1.0)[..., None]
    y = lin(out) if lin is not None else out
    loss = (((y - torch.tensor(ys)) ** 2) * valid).sum() / (valid.sum() * y.shape[-1])
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in mod.named_parameters()}
    if lin is not None:
        grads["head_weight"], grads["head_bias"] = lin.weight.grad.numpy(), lin.bias.grad.numpy()
    hn = hn[0] if kind == "lstm" else hn
    return (y.detach().numpy(), hn.detach().numpy(), loss.item(), grads, h.grad.numpy(),
            c.grad.numpy() if kind == "lstm" else None)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("lengths", [None, [6, 3, 1]])
def test_matches_pytorch(kind, layers, lengths):
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    head = 2 if layers == 2 else None
    model = rnn.Model(CELLS[kind](I, H), layers=layers, head=head, bidirectional=True,
                      seed=3)
    xs, ys, mask = data(O=head or 2 * H, lengths=lengths)
    rng = np.random.default_rng(2)
    h0, c0 = rng.standard_normal((2, 2 * layers, B, H))
    out, hn, loss, grads, dh0, dc0 = torch_run(torch, kind, model, xs, ys, h0, c0, lengths,
                                               head)
    init = {"h": h0, "c": c0} if kind == "lstm" else {"h": h0}
    valid = np.ones((B, T, 1)) if mask is None else mask[..., None]
    for executor in ("compiled", "reference"):
        ys_ours, final = model.forward(xs, init, mask, executor=executor)
        np.testing.assert_allclose(ys_ours * valid, out * valid, atol=1e-10)
        np.testing.assert_allclose(final["h"], hn, atol=1e-10)
        res = rnn.bptt(model, xs, ys, initial_state=init, mask=mask, executor=executor)
        assert res.loss == pytest.approx(loss, abs=1e-10)
        assert sorted(res.grads) == sorted(grads)
        for name, g in grads.items():
            np.testing.assert_allclose(res.grads[name], g, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(res.state_grads["h"], dh0, atol=1e-7)
        if kind == "lstm":
            np.testing.assert_allclose(res.state_grads["c"], dc0, atol=1e-7)


def test_reverse_names_shapes_and_state_layout():
    model = rnn.Model(rnn.cells.lstm(I, H), layers=2, bidirectional=True)
    assert model.params["weight_ih_l0_reverse"].shape == (4 * H, I)
    assert model.params["weight_ih_l1_reverse"].shape == (4 * H, 2 * H)
    xs, _, _ = data()
    ys, final = model.forward(xs)
    assert ys.shape == (B, T, 2 * H) and final["h"].shape == (4, B, H)
    assert model.layer_names("h") == ("h_l0", "h_l0_reverse", "h_l1", "h_l1_reverse")
    with pytest.raises(ValueError, match=r"\(layers \* directions, B, H\) = \(4, 3, 4\)"):
        model.forward(xs, {"h": np.zeros((2, B, H))})


def test_padding_never_reaches_the_reverse_pass():
    model = rnn.Model(rnn.cells.gru(I, H), layers=2, head=1, bidirectional=True)
    xs, ys, mask = data(O=1, lengths=[6, 4, 2])
    res = rnn.bptt(model, xs, ys, mask=mask)
    junk = xs.copy()
    junk[mask == 0] = 1e3  # whatever the padding holds
    again = rnn.bptt(model, junk, ys, mask=mask)
    assert again.loss == res.loss
    for k in res.grads:
        np.testing.assert_array_equal(again.grads[k], res.grads[k])
    # each sequence alone at its length gives the same outputs
    out = model.predict(xs, mask=mask)
    for b, n in enumerate([6, 4, 2]):
        np.testing.assert_allclose(out[b, :n], model.predict(xs[b:b + 1, :n])[0], atol=1e-12)


def test_at_last_equals_each_sequence_alone():
    model = rnn.Model(rnn.cells.lstm(I, H), head=1, bidirectional=True)
    xs, _, mask = data(lengths=[6, 4, 2])
    targets = np.random.default_rng(0).standard_normal((B, 1))
    res = rnn.bptt(model, xs, targets, at="last", mask=mask)
    alone = [rnn.bptt(model, xs[b:b + 1, :n], targets[b:b + 1], at="last")
             for b, n in enumerate([6, 4, 2])]
    assert res.loss == pytest.approx(np.mean([r.loss for r in alone]), abs=1e-12)
    np.testing.assert_allclose(res.grads["weight_hh_l0_reverse"],
                               np.mean([r.grads["weight_hh_l0_reverse"] for r in alone], 0),
                               atol=1e-12)


def test_unrolled_program_shows_both_directions_of_every_layer_in_time_order():
    model = rnn.Model(rnn.cells.elman(I, H), layers=2, bidirectional=True)
    un = rnn.unroll(model, steps=3)
    g = un.graph
    assert {f"h_l{k}{d}@{t}" for k in (0, 1) for d in ("", "_reverse") for t in range(3)} \
        <= set(g.nodes)
    assert "x_reverse@0" not in g and {"x@0", "x@2"} <= set(g.nodes)  # both read x@t
    assert g.has_edge("weight_hh_l0_reverse", "h_l0_reverse.3@1")
    assert g.has_edge("h_l0@0", "h_l0.3@1") and g.has_edge("h_l0_reverse@2", "h_l0_reverse.3@1")
    assert g.has_edge("h_l0_reverse@init", "h_l0_reverse.3@2")  # it enters at t = T-1
    assert g.has_edge("h_l0.concat@1", "h_l1.1@1") and g.has_edge("h_l0.concat@1",
                                                                  "h_l1_reverse.1@1")
    assert [v.name for v in un.outputs()] == ["h_l1.concat@0", "h_l1.concat@1",
                                              "h_l1.concat@2"]
    assert g.nodes["h_l1_reverse@0"]["kind"] == "state" and g.nodes["h_l1_reverse@0"][
        "step"] == 0
    with pytest.raises(ValueError, match="masked=True"):
        rnn.unroll(model, steps=3, masked=True)


@pytest.mark.parametrize("head", [None, 1])
def test_the_unrolled_bidirectional_program_computes_what_the_model_computes(head):
    from engine.ir import backward, interpret, verify
    from rnn.losses import add_loss, loss_weights

    model = rnn.Model(rnn.cells.gru(I, H), layers=2, head=head, bidirectional=True, seed=1)
    xs, ys, _ = data(O=head or 2 * H)
    un = rnn.unroll(model, steps=T)
    prog = verify(add_loss(un, "mse", "all"))
    rng = np.random.default_rng(2)
    h0 = rng.standard_normal((4, B, H))
    env = {f"{n}@init": h0[i] for i, n in enumerate(model.layer_names("h"))}
    env.update({f"x@{t}": xs[:, t] for t in range(T)}, **model.params, targets=ys,
               weights=loss_weights("mse", "all", B, T, ys.shape[-1], None, model.dtype))
    vals = interpret(prog, env)
    got = np.stack([vals[v.name] for v in un.outputs()], axis=1)
    want, state = model.forward(xs, initial_state={"h": h0}, executor="reference")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    for i, n in enumerate(model.layer_names("h")):  # h_n: forward at T-1, reverse at 0
        np.testing.assert_allclose(vals[un.values[n][0 if "_reverse" in n else -1].name],
                                   state["h"][i], rtol=0, atol=1e-12)
    res = rnn.bptt(model, xs, ys, initial_state={"h": h0})
    adj = backward(prog, vals, {"loss": np.ones(())})
    assert float(vals["loss"]) == pytest.approx(res.loss, abs=1e-12)
    for p in model.params:
        np.testing.assert_allclose(adj[p], res.grads[p], rtol=0, atol=1e-10, err_msg=p)


def test_the_unrolled_bidirectional_program_truncates_each_direction_as_bptt_does():
    from engine.ir import backward, interpret
    from rnn.losses import add_loss, loss_weights

    model = rnn.Model(rnn.cells.elman(I, H), head=1, bidirectional=True, seed=1)
    xs, ys, _ = data(O=1)
    prog = add_loss(rnn.unroll(model, steps=T, truncate=4), "mse", "all")
    assert {e.out.name for e in prog.eqns if e.op == "stop_gradient"} == {
        "h_l0@3|cut", "h_l0_reverse@2|cut"}  # step 4 of each direction reads step 3
    env = {"h_l0@init": np.zeros((B, H)), "h_l0_reverse@init": np.zeros((B, H)),
           **{f"x@{t}": xs[:, t] for t in range(T)}, **model.params, "targets": ys,
           "weights": loss_weights("mse", "all", B, T, 1, None, model.dtype)}
    vals = interpret(prog, env)
    adj = backward(prog, vals, {"loss": np.ones(())})
    res = rnn.bptt(model, xs, ys, truncate=4)
    assert float(vals["loss"]) == pytest.approx(res.loss, abs=1e-12)
    for p in model.params:
        np.testing.assert_allclose(adj[p], res.grads[p], rtol=0, atol=1e-10, err_msg=p)


def test_truncation_and_learned_initial_state_agree_between_executors():
    model = rnn.Model(rnn.cells.gru(I, H), layers=2, head=1, bidirectional=True,
                      learn_initial=("h",))
    xs, ys, mask = data(O=1, lengths=[6, 5, 3])
    a = rnn.bptt(model, xs, ys, mask=mask, truncate=2)
    b = rnn.bptt(model, xs, ys, mask=mask, truncate=2, executor="reference")
    full = rnn.bptt(model, xs, ys, mask=mask)
    assert a.loss == pytest.approx(b.loss, abs=1e-12)
    assert "init_h_l1_reverse" in a.grads
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], atol=1e-10, err_msg=k)
    assert not np.allclose(a.grads["weight_hh_l0_reverse"], full.grads["weight_hh_l0_reverse"])
    for s in ("h",):
        np.testing.assert_allclose(a.step_norms[s], b.step_norms[s], atol=1e-10)


def test_several_inputs_feed_both_directions_of_every_layer():
    cell = rnn.Cell.from_equations("h = tanh(W @ x + V @ u + U @ h[t-1] + b)",
                                   inputs={"x": 2, "u": 1}, states={"h": 3})
    model = rnn.Model(cell, layers=2, head=1, bidirectional=True)
    rng = np.random.default_rng(0)
    xs = {"x": rng.standard_normal((2, 4, 2)), "u": rng.standard_normal((2, 4, 1))}
    ys = rng.standard_normal((2, 4, 1))
    a = rnn.bptt(model, xs, ys)
    b = rnn.bptt(model, xs, ys, executor="reference")
    assert model.params["V_l1_reverse"].shape == (3, 1)
    for k in a.grads:
        np.testing.assert_allclose(a.grads[k], b.grads[k], atol=1e-10, err_msg=k)
    fd_check(model, xs, ys, "V_l1_reverse")


def fd_check(model, xs, ys, name, eps=1e-6, **kw):
    """Central differences of the loss in a few entries of parameter ``name``."""
    g = rnn.bptt(model, xs, ys, **kw).grads[name]
    base = {k: v.copy() for k, v in model.params.items()}
    for ix in list(np.ndindex(g.shape))[:3]:
        vals = []
        for d in (eps, -eps):
            p = base[name].copy()
            p[ix] += d
            model.load_params({name: p}, strict=False)
            vals.append(rnn.bptt(model, xs, ys, **kw).loss)
        model.load_params(base)
        assert (vals[0] - vals[1]) / (2 * eps) == pytest.approx(g[ix], abs=1e-6)


def test_refusals():
    model = rnn.Model(rnn.cells.elman(I, H), bidirectional=True)
    xs, ys, _ = data()
    with pytest.raises(ValueError, match="1s then 0s"):
        rnn.bptt(model, xs, ys, mask=np.array([[1, 0, 1, 1, 1, 1]] * B, float))
    with pytest.raises(ValueError, match="truncate=k"):
        rnn.bptt(model, xs, ys, truncate=(2, 3))
    with pytest.raises(ValueError, match="whole sequence"):
        rnn.Model(rnn.cells.elman(I, I), bidirectional=True, head=I).generate(xs[:, 0], 3)
    assert isinstance(BiRun(model, xs, None, None, "compiled").Y, np.ndarray)


def test_gradcheck_keep_adjoints_and_to_keras_of_a_bidirectional_model():
    from tools.gradcheck import check_bptt

    m = rnn.Model(rnn.cells.gru(2, 3), layers=2, bidirectional=True, head=1, seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 4, 1))
    assert check_bptt(m, xs, ys).ok  # random (layers x directions, B, H) initial states
    with pytest.raises(ValueError, match="keep_adjoints is not supported"):
        rnn.bptt(m, xs, ys, keep_adjoints=True)
    with pytest.raises(ValueError, match="Bidirectional"):
        rnn.interop.to_keras(m)


def test_dropout_alone_trains_on_the_plain_plan(monkeypatch):
    """Without recurrent dropout a layer's training cell is the plain one (dropout acts
    between layers, in BiRun): one plan per layer serves both, and training computes
    what a training cell of its own (an identical copy) computes."""
    import rnn.model as M

    built = []
    real = M.Plan
    monkeypatch.setattr(M, "Plan", lambda cell, *a: built.append(cell) or real(cell, *a))
    model = rnn.Model(rnn.cells.lstm(I, H), layers=2, bidirectional=True, dropout=0.5)
    xs, ys, _ = data()
    plain = rnn.bptt(model, xs, ys)
    trained = rnn.bptt(model, xs, ys, train=True, seed=1)
    assert [id(c) for c in built] == [id(c) for c in model.stages]  # one plan per layer
    assert all(model.plan(False, True, k) is model.plan(False, False, k) for k in (0, 1))
    assert trained.loss != plain.loss  # the dropout acts
    copy = rnn.Model(rnn.cells.lstm(I, H), layers=2, bidirectional=True, dropout=0.5)
    own = [M.bi_layer_cell(copy.cell, k, 2 * H) for k in (0, 1)]
    copy.cell_for = lambda train=False, stage=0: own[stage] if train else copy.stages[stage]
    again = rnn.bptt(copy, xs, ys, train=True, seed=1)
    assert [id(c) for c in built[2:]] == [id(c) for c in own]
    assert again.loss == trained.loss
    for k in trained.grads:
        np.testing.assert_array_equal(again.grads[k], trained.grads[k], err_msg=k)
