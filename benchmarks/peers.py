"""The peers ``unroll bench`` holds unroll against: one BPTT training step each.

A step is what unroll's side does: the forward pass over all T steps, the loss (MSE
over every step's output against fixed random targets, mean over T, B and H), the full
backward pass through time, and a plain SGD update of the weights.

Every peer is optional. ``make(peer, cell, I, H, B, T, dtype, lr)`` returns the step (a
function of no arguments that finishes its work before returning) or raises ``Skip``
with a one-line reason: the library is not installed, or the peer has no form of that
cell. torch and jax are imported here, lazily, never at module import; unroll does not
depend on them.

cells: "lstm" and "gru" (PyTorch's forms), "elman" (tanh), "mgu" (the minimal gated unit:
f = sigmoid(Wf x + Uf h + bf); n = tanh(Wn x + Un (f * h) + bn); h = (1 - f) h + f n).

Threads are left as a user gets them: torch.get_num_threads() at its default, XLA's CPU
defaults for JAX. ``versions()`` says which, for the bench's header.
"""

from __future__ import annotations

import numpy as np

CELLS = ("lstm", "gru", "elman", "mgu")


class Skip(Exception):
    """This peer does not run here; the message is the one-line reason."""


def _torch():
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install torch)") from None
    return torch


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        raise Skip("jax is not installed (pip install jax jaxlib)") from None
    return jax, jnp


def versions() -> dict[str, str]:
    """One line per peer library: its version and its threading, or why it is absent."""
    out = {}
    try:
        torch = _torch()
        out["torch"] = (f"torch {torch.__version__}: {torch.get_num_threads()} threads "
                        f"(torch.get_num_threads(), left at its default)")
    except Skip as e:
        out["torch"] = str(e)
    try:
        jax, _ = _jax()
        devs = ", ".join(sorted({d.platform for d in jax.devices()}))
        out["jax"] = f"jax {jax.__version__} on {devs}: XLA's default threading, jit on"
    except Skip as e:
        out["jax"] = str(e)
    except Exception as e:  # noqa: BLE001 - a broken install is a skip, not a crash
        out["jax"] = f"jax does not start: {type(e).__name__}: {str(e).splitlines()[0]}"
    return out


def _uniform(rng, shape, H, dtype):
    """PyTorch's default RNN init, U(-1/sqrt(H), 1/sqrt(H))."""
    b = 1 / np.sqrt(H)
    return rng.uniform(-b, b, size=shape).astype(dtype)


def _data(T, B, I, H, dtype, seed=1):
    """Time-major inputs (T, B, I) and targets (T, B, H), as torch and lax.scan take them."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, I)).astype(dtype),
            rng.standard_normal((T, B, H)).astype(dtype))


# ------------------------------------------------------------------ torch
def torch_fused(cell, I, H, B, T, dtype, lr=1e-3):
    """torch.nn.LSTM / GRU / RNN: the whole sequence in one fused C++ module."""
    torch = _torch()
    mods = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}
    if cell not in mods:
        raise Skip(f"torch has no fused module for {cell}")
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    mod = mods[cell](I, H).to(dt)
    x, y = (torch.from_numpy(a) for a in _data(T, B, I, H, dtype))
    opt = torch.optim.SGD(mod.parameters(), lr=lr)
    mse = torch.nn.functional.mse_loss

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = mod(x)
        mse(out, y).backward()
        opt.step()

    return step


def torch_loop(cell, I, H, B, T, dtype, lr=1e-3):
    """What a user writes for a cell PyTorch does not fuse: a Python loop over time, over
    nn.LSTMCell / GRUCell / RNNCell, or over elementary torch ops for the MGU."""
    torch = _torch()
    dt = getattr(torch, dtype)
    torch.manual_seed(0)
    x, y = (torch.from_numpy(a) for a in _data(T, B, I, H, dtype))
    mse = torch.nn.functional.mse_loss
    if cell == "mgu":
        rng = np.random.default_rng(0)
        p = {k: torch.from_numpy(_uniform(rng, s, H, dtype)).requires_grad_()
             for k, s in (("Wf", (I, H)), ("Uf", (H, H)), ("bf", (H,)),
                          ("Wn", (I, H)), ("Un", (H, H)), ("bn", (H,)))}
        params = list(p.values())

        def run():
            h = torch.zeros(B, H, dtype=dt)
            hs = []
            for t in range(T):
                f = torch.sigmoid(x[t] @ p["Wf"] + h @ p["Uf"] + p["bf"])
                n = torch.tanh(x[t] @ p["Wn"] + (f * h) @ p["Un"] + p["bn"])
                h = (1 - f) * h + f * n
                hs.append(h)
            return hs
    else:
        mods = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "elman": torch.nn.RNNCell}
        if cell not in mods:
            raise Skip(f"torch has no cell module for {cell}")
        mod = mods[cell](I, H).to(dt)
        params = list(mod.parameters())

        def run():
            h = torch.zeros(B, H, dtype=dt)
            c = torch.zeros(B, H, dtype=dt)
            hs = []
            for t in range(T):
                if cell == "lstm":
                    h, c = mod(x[t], (h, c))
                else:
                    h = mod(x[t], h)
                hs.append(h)
            return hs

    opt = torch.optim.SGD(params, lr=lr)

    def step():
        opt.zero_grad(set_to_none=True)
        mse(torch.stack(run()), y).backward()
        opt.step()

    return step


# ------------------------------------------------------------------ jax
def _jax_cell(cell, jax, jnp, H):
    """(parameter shapes, cell(p, carry, x) -> (carry, h)); weights as (in, out), so a
    step is x @ W (PyTorch's GRU form: the reset gate multiplies U h + b_hn)."""
    sig = jax.nn.sigmoid
    if cell == "lstm":
        def f(p, carry, xt):
            h, c = carry
            z = xt @ p["W"] + h @ p["U"] + p["b"]
            i, fg, g, o = jnp.split(z, 4, axis=1)
            c = sig(fg) * c + sig(i) * jnp.tanh(g)
            h = sig(o) * jnp.tanh(c)
            return (h, c), h
        return {"W": ("I", 4), "U": ("H", 4), "b": (None, 4)}, f
    if cell == "gru":
        def f(p, carry, xt):
            h, c = carry
            gi = xt @ p["W"] + p["bi"]
            gh = h @ p["U"] + p["bh"]
            ir, iz, in_ = jnp.split(gi, 3, axis=1)
            hr, hz, hn = jnp.split(gh, 3, axis=1)
            r, z = sig(ir + hr), sig(iz + hz)
            n = jnp.tanh(in_ + r * hn)
            h = (1 - z) * n + z * h
            return (h, c), h
        return {"W": ("I", 3), "U": ("H", 3), "bi": (None, 3), "bh": (None, 3)}, f
    if cell == "elman":
        def f(p, carry, xt):
            h, c = carry
            h = jnp.tanh(xt @ p["W"] + h @ p["U"] + p["b"])
            return (h, c), h
        return {"W": ("I", 1), "U": ("H", 1), "b": (None, 1)}, f
    if cell == "mgu":
        def f(p, carry, xt):
            h, c = carry
            fg = sig(xt @ p["Wf"] + h @ p["Uf"] + p["bf"])
            n = jnp.tanh(xt @ p["Wn"] + (fg * h) @ p["Un"] + p["bn"])
            h = (1 - fg) * h + fg * n
            return (h, c), h
        return {"Wf": ("I", 1), "Uf": ("H", 1), "bf": (None, 1),
                "Wn": ("I", 1), "Un": ("H", 1), "bn": (None, 1)}, f
    raise Skip(f"no JAX form of {cell}")


def jax_scan(cell, I, H, B, T, dtype, lr=1e-3):
    """lax.scan over the cell, jax.jit of jax.value_and_grad and the SGD update."""
    jax, jnp = _jax()
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    shapes, f = _jax_cell(cell, jax, jnp, H)
    rng = np.random.default_rng(0)
    rows = {"I": I, "H": H}
    params = {k: jnp.asarray(_uniform(rng, (G * H,) if r is None else (rows[r], G * H), H,
                                      dtype))
              for k, (r, G) in shapes.items()}
    x, y = (jnp.asarray(a) for a in _data(T, B, I, H, dtype))

    def loss(p, x, y):
        h0 = jnp.zeros((B, H), x.dtype)
        _, hs = jax.lax.scan(lambda carry, xt: f(p, carry, xt), (h0, h0), x)
        return jnp.mean((hs - y) ** 2)

    @jax.jit
    def update(p, x, y):
        value, g = jax.value_and_grad(loss)(p, x, y)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), value

    state = {"p": params}

    def step():
        state["p"], value = update(state["p"], x, y)
        jax.block_until_ready((state["p"], value))

    return step


PEERS = {"torch-fused": torch_fused, "torch-loop": torch_loop, "jax-scan": jax_scan}


def make(peer: str, cell: str, I: int, H: int, B: int, T: int, dtype: str, lr: float = 1e-3):
    """The step of ``peer`` on one workload, or ``Skip`` with the reason it cannot run."""
    if cell not in CELLS:
        raise Skip(f"unknown cell {cell!r}")
    return PEERS[peer](cell, I, H, B, T, dtype, lr)
