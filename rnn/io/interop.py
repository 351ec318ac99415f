"""Weights in and out of PyTorch and Keras layouts (numpy arrays only: no torch needed).

Built-in cells use PyTorch's names and layouts, so PyTorch is a 1:1 mapping. Keras
stores kernels transposed (I, G*H), orders GRU gates z, r, h (PyTorch: r, z, n), and
keeps a GRU's two biases as one (2, 3H) array when ``reset_after=True``.
"""

from __future__ import annotations

import numpy as np

from ..lang import library as cells
from ..model import Model
from ..program.unroll import positive_int

GATES = {"lstm": 4, "gru": 3, "rnn": 1, "elman": 1}


def _np(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor, without importing torch
        v = v.detach().cpu().numpy()
    return np.array(v)


def _torch_layers(sd: dict) -> int:
    """How many layers a state_dict holds: weight_ih_l0, weight_ih_l1, ... (no gaps)."""
    k = 0
    while f"weight_ih_l{k}" in sd:
        k += 1
    return k


def from_torch(kind: str, state_dict: dict, num_layers: int | None = None,
               head: int | None = None, seed: int = 0) -> Model:
    """A Model holding the weights of an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` state_dict.

    The number of layers is read from the keys (``num_layers``, if given, must agree).
    Every key must be used: a key this model has no place for (``_reverse`` weights of a
    bidirectional module, ``weight_hr`` of proj_size, a stray name) is an error naming it.
    """
    if kind not in GATES:
        raise ValueError(f"kind must be one of {sorted(GATES)}, got {kind!r}")
    if not hasattr(state_dict, "items"):
        raise TypeError(f"state_dict must be a mapping of names to arrays, got "
                        f"{type(state_dict).__name__}")
    sd = {k: _np(v) for k, v in state_dict.items()}
    if "weight_ih_l0" not in sd:
        raise ValueError(f"state_dict has no 'weight_ih_l0'; got keys {sorted(sd)[:6]}")
    layers = _torch_layers(sd)
    if num_layers is not None and positive_int("num_layers", num_layers) != layers:
        raise ValueError(f"num_layers={num_layers!r} but the state_dict holds {layers} "
                         f"layer(s) (weight_ih_l0 .. weight_ih_l{layers - 1})")
    G = GATES[kind]
    gh, I = sd["weight_ih_l0"].shape
    H = gh // G
    cell = cells.BUILTINS[kind](I, H)
    model = Model(cell, layers=layers, head=head, dtype=str(sd["weight_ih_l0"].dtype),
                  seed=seed)
    wanted = [n for n in model.params if not n.startswith(("head_", "init_"))]
    for key in sorted(set(sd) - set(wanted)):
        if key.endswith("_reverse"):
            why = "a bidirectional module's reverse direction is not supported"
        elif key.startswith("weight_hr"):
            why = "proj_size (weight_hr) is not supported"
        else:
            why = f"a {kind} of {layers} layer(s) has {wanted}"
        raise ValueError(f"state_dict key {key!r} is not used ({why}); nothing was loaded")
    new = {}
    for name in wanted:
        if name not in sd:
            raise ValueError(f"state_dict lacks '{name}' (layers={layers}; bias=False "
                             f"layers are not supported)")
        if sd[name].shape != model.params[name].shape:
            raise ValueError(f"'{name}' is {sd[name].shape}, expected "
                             f"{model.params[name].shape}")
        new[name] = sd[name].astype(model.dtype)
    model.load_params(new, strict=False)
    return model


def to_torch(model: Model) -> dict[str, np.ndarray]:
    """The model's weights under PyTorch's names: ``torch_module.load_state_dict(
    {k: torch.from_numpy(v) for k, v in to_torch(m).items()})``."""
    return {k: v.copy() for k, v in model.params.items()
            if not k.startswith(("head_", "init_"))}


def from_keras(kind: str, weights, reset_after: bool = True, seed: int = 0) -> Model:
    """A Model from Keras ``layer.get_weights()``: [kernel, recurrent_kernel, bias]."""
    kernel, rec, bias = (_np(w) for w in weights)
    I, GH = kernel.shape
    H = rec.shape[0]
    dt = str(kernel.dtype)
    if kind == "lstm":  # Keras gates i, f, c, o == PyTorch i, f, g, o
        m = Model(cells.lstm(I, H), dtype=dt, seed=seed)
        p = {"weight_ih_l0": kernel.T, "weight_hh_l0": rec.T, "bias_ih_l0": bias,
             "bias_hh_l0": np.zeros_like(bias)}
    elif kind in ("rnn", "elman", "simple_rnn"):
        m = Model(cells.elman(I, H), dtype=dt, seed=seed)
        p = {"weight_ih_l0": kernel.T, "weight_hh_l0": rec.T, "bias_ih_l0": bias,
             "bias_hh_l0": np.zeros_like(bias)}
    elif kind == "gru":
        def zrh_to_rzn(a):  # reorder gate blocks along the last axis
            z, r, h = np.split(a, 3, axis=-1)
            return np.concatenate([r, z, h], axis=-1)

        b = bias.reshape(2, GH) if reset_after else bias.reshape(1, GH)
        if reset_after:
            m = Model(cells.gru(I, H), dtype=dt, seed=seed)
            p = {"weight_ih_l0": zrh_to_rzn(kernel).T, "weight_hh_l0": zrh_to_rzn(rec).T,
                 "bias_ih_l0": zrh_to_rzn(b[0]), "bias_hh_l0": zrh_to_rzn(b[1])}
        else:
            m = Model(cells.gru_classic(I, H), dtype=dt, seed=seed)
            r = zrh_to_rzn(rec).T
            p = {"weight_ih_l0": zrh_to_rzn(kernel).T, "weight_hh_rz_l0": r[:2 * H],
                 "weight_hh_n_l0": r[2 * H:], "bias_ih_l0": zrh_to_rzn(b[0])}
    else:
        raise ValueError(f"kind must be 'lstm', 'gru' or 'rnn', got {kind!r}")
    for k, v in p.items():
        if v.shape != m.params[k].shape:
            raise ValueError(f"Keras weights give {k} of shape {v.shape}, expected "
                             f"{m.params[k].shape}")
    m.load_params({k: np.ascontiguousarray(v, dtype=m.dtype) for k, v in p.items()},
                  strict=False)
    return m
