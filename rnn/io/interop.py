"""Weights in and out of PyTorch and Keras layouts (numpy arrays only: no torch needed).

Built-in cells use PyTorch's names and layouts, so PyTorch is a 1:1 mapping. Keras
stores kernels transposed (I, G*H), orders GRU gates z, r, h (PyTorch: r, z, n), keeps
one bias where PyTorch has two (LSTM, SimpleRNN, GRU ``reset_after=False``: the cells
are built with ``biases=1``), and a GRU's two biases as one (2, 3H) array when
``reset_after=True``.

States of a model of ``layers`` > 1 are stacked as PyTorch's h0/c0: ``initial_state=
{"h": (layers, B, H)}`` and ``res.state_grads["h"]`` the same shape (one layer: (B, H),
PyTorch's ``h0[0]``). With ``proj_size=P`` the LSTM's h is (.., B, P) and c (.., B, H).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..lang import library as cells
from ..model import MAX_PARAM_ELEMENTS, Model
from ..program.unroll import positive_int

GATES = {"lstm": 4, "gru": 3, "rnn": 1, "elman": 1}
TORCH_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # state_dict order
KERAS_KINDS = {"lstm": "lstm", "gru": "gru", "rnn": "elman", "elman": "elman",
               "simple_rnn": "elman"}
KERAS_LAYER = {"lstm": "LSTM", "gru": "GRU", "elman": "SimpleRNN"}


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


def _form(model: Model, to: str) -> tuple[str, dict]:
    """Which built-in (and variant) the model's cell is, or a ValueError for ``to``."""
    if not isinstance(model, Model):
        raise TypeError(f"{to} takes a rnn.Model, got {type(model).__name__}")
    found = cells.variants().get(model.cell.text)
    if found is None:
        raise ValueError(f"{to} converts models of the built-in cells (rnn.cells.elman, lstm, "
                         f"gru, gru_classic and their variants); this model's cell is not "
                         f"one of them (params {sorted(model.cell.params)})")
    return found


def from_torch(kind: str, state_dict: dict, nonlinearity: str = "tanh", *,
               num_layers: int | None = None, head: int | None = None, seed: int = 0) -> Model:
    """A Model holding the weights of an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` state_dict.

    Read from the keys: the number of layers (``num_layers``, if given, must agree),
    ``bias=False`` (no ``bias_*`` keys: a cell without bias terms) and an LSTM's
    ``proj_size`` (``weight_hr_l{k}``, (P, H)). ``nonlinearity="relu"`` for an ``nn.RNN``
    made with it (a state_dict does not say). Every key must be used: a key this model has
    no place for (a stray name) is an error naming it. ``_reverse`` keys make a
    bidirectional Model (``bidirectional=True``). Initial states and ``state_grads``
    are shaped as PyTorch's h0/c0 (module docstring).

    >>> import numpy as np
    >>> sd = {"weight_ih_l0": np.zeros((4, 3)), "weight_hh_l0": np.zeros((4, 4))}
    >>> from_torch("rnn", sd, nonlinearity="relu").cell.text
    'h = relu(weight_ih @ x + weight_hh @ h[t-1])'
    """
    if kind not in GATES:
        raise ValueError(f"kind must be one of {sorted(GATES)}, got {kind!r}")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu' (as nn.RNN), got "
                         f"{nonlinearity!r}")
    if nonlinearity != "tanh" and GATES[kind] != 1:
        raise ValueError(f"nonlinearity={nonlinearity!r} is nn.RNN's option; an nn."
                         f"{kind.upper()} has fixed ones (kind='rnn' for a relu RNN)")
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
    w0 = sd["weight_ih_l0"]
    if w0.ndim != 2 or w0.shape[0] % G or w0.shape[0] == 0:
        raise ValueError(f"'weight_ih_l0' of an nn.{kind.upper()} is ({G}*hidden_size, "
                         f"input_size), got {w0.shape}")
    H, I = w0.shape[0] // G, w0.shape[1]
    biases = 2 if "bias_ih_l0" in sd else 0
    proj = 0
    if kind == "lstm" and "weight_hr_l0" in sd:
        hr = sd["weight_hr_l0"]
        proj = hr.shape[0] if hr.ndim == 2 else 0
        if not 0 < proj < H or hr.shape != (proj, H):
            raise ValueError(f"state_dict key 'weight_hr_l0' is not used (proj_size: it is "
                             f"{hr.shape}, expected (proj_size, {H}) with proj_size smaller "
                             f"than hidden_size={H}, as nn.LSTM); nothing was loaded")
    if kind == "lstm":
        cell = cells.lstm(I, H, proj_size=proj, biases=biases)
    elif kind == "gru":
        cell = cells.gru(I, H, biases=biases)
    else:
        cell = cells.elman(I, H, nonlinearity=nonlinearity, biases=biases)
    bi = "weight_ih_l0_reverse" in sd  # bidirectional=True: the reverse direction's keys
    model = Model(cell, layers=layers, head=head, dtype=str(w0.dtype), seed=seed,
                  bidirectional=bi)
    what = (f"an nn.{'RNN' if G == 1 else kind.upper()} of {layers} layer(s)"
            f"{', bidirectional' if bi else ''}"
            f"{f', proj_size={proj}' if proj else ''}{', bias=False' if not biases else ''}")
    wanted = [n for n in model.params if not n.startswith(("head_", "init_"))]
    for key in sorted(set(sd) - set(wanted)):
        if key.startswith("weight_hr") and kind != "lstm":
            why = "weight_hr is the projection of an nn.LSTM with proj_size"
        else:
            why = f"{what} has {wanted}"
        raise ValueError(f"state_dict key {key!r} is not used ({why}); nothing was loaded")
    new = {}
    for name in wanted:
        if name not in sd:
            raise ValueError(f"state_dict lacks '{name}' ({what} has {wanted}); nothing "
                             f"was loaded")
        if sd[name].shape != model.params[name].shape:
            hint = f" (proj_size={proj}, from weight_hr_l0)" if proj else ""
            raise ValueError(f"'{name}' is {sd[name].shape}, expected "
                             f"{model.params[name].shape}{hint}")
        new[name] = sd[name].astype(model.dtype)
    model.load_params(new, strict=False)
    return model


def to_torch(model: Model) -> dict[str, np.ndarray]:
    """The model's weights under PyTorch's names, in the order of a module's state_dict:
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch(m).items()})``
    with the module made to match (``nonlinearity``, ``bias``, ``proj_size``,
    ``num_layers``). A one-bias cell (Keras's) gets ``bias_hh`` zeros: the same function.
    A head and learned initial states are not part of a PyTorch RNN and are left out.

    >>> from rnn import cells
    >>> list(to_torch(Model(cells.lstm(3, 4, biases=1))))
    ['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0']
    """
    kind, opts = _form(model, "to_torch")
    if kind == "gru_classic":
        raise ValueError("a gru_classic cell (Keras's reset_after=False) has no PyTorch "
                         "module: nn.GRU applies the reset gate after the matmul "
                         "(rnn.cells.gru)")
    out = {}
    for k in range(model.layers):
        for rev in ("", "_reverse") if getattr(model, "bidirectional", False) else ("",):
            for base in TORCH_KEYS:
                name = f"{base}_l{k}{rev}"
                if name in model.params:
                    out[name] = model.params[name].copy()
                elif base == "bias_hh" and opts["biases"] == 1:
                    out[name] = np.zeros_like(model.params[f"bias_ih_l{k}{rev}"])
    return out


def _swap_rz(a: np.ndarray) -> np.ndarray:
    """Swap the first two of three gate blocks on the last axis: PyTorch's r, z, n <->
    Keras's z, r, h (its own inverse)."""
    r, z, n = np.split(a, 3, axis=-1)
    return np.concatenate([z, r, n], axis=-1)


def from_keras(kind: str, weights, reset_after: bool = True, use_bias: bool = True,
               activation: str = "tanh", seed: int = 0) -> Model:
    """A Model from a Keras ``LSTM`` / ``GRU`` / ``SimpleRNN`` layer's ``get_weights()``:
    [kernel (I, G*H), recurrent_kernel (H, G*H), bias] (no bias with ``use_bias=False``).

    ``reset_after`` and ``use_bias`` are the layer's; ``activation`` is a SimpleRNN's
    ('tanh' or 'relu'). Keras's single bias stays one parameter (``bias_ih``, cells built
    with ``biases=1``): training it matches Keras. The dtype is the kernel's.

    >>> import numpy as np
    >>> w = [np.ones((3, 8)), np.ones((2, 8)), np.zeros(8)]
    >>> sorted(from_keras("lstm", w).params)
    ['bias_ih_l0', 'weight_hh_l0', 'weight_ih_l0']
    """
    if kind not in KERAS_KINDS:
        raise ValueError(f"kind must be one of {sorted(KERAS_KINDS)}, got {kind!r}")
    kind = KERAS_KINDS[kind]
    layer = KERAS_LAYER[kind]
    if activation not in ("tanh", "relu") or (activation != "tanh" and kind != "elman"):
        raise ValueError(f"activation is a SimpleRNN's 'tanh' or 'relu' (LSTM and GRU: "
                         f"the default activations only), got {activation!r} for {layer}")
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list, as layer.get_weights() returns, got "
                        f"{type(weights).__name__}")
    ws = [_np(w) for w in weights]
    names = ["kernel", "recurrent_kernel"] + (["bias"] if use_bias else [])
    if len(ws) != len(names):
        raise ValueError(f"a Keras {layer} with use_bias={use_bias} has {len(names)} weights "
                         f"{names}, got {len(ws)} arrays of shapes {[w.shape for w in ws]}")
    G = GATES[kind]
    kernel, rec = ws[0], ws[1]
    if rec.ndim != 2 or rec.shape[0] == 0:
        raise ValueError(f"{layer} recurrent_kernel must be (units, {G}*units), got {rec.shape}")
    H = rec.shape[0]
    I = kernel.shape[0] if kernel.ndim == 2 else 0
    gru_two = kind == "gru" and reset_after
    want = {"kernel": (I, G * H), "recurrent_kernel": (H, G * H),
            "bias": (2, G * H) if gru_two else (G * H,)}
    for n, w in zip(names, ws):
        if w.shape != want[n] or I == 0:
            raise ValueError(f"a Keras {layer} with units={H} has {n} {want[n]}"
                             f"{' (reset_after=True)' if n == 'bias' and gru_two else ''}, "
                             f"got {w.shape}")
        if w.dtype != kernel.dtype:
            raise ValueError(f"Keras weights mix dtypes: kernel is {kernel.dtype}, {n} is "
                             f"{w.dtype} (no silent casts: give them one dtype)")
    bias = ws[2] if use_bias else None
    if kind == "lstm":
        cell = cells.lstm(I, H, biases=1 if use_bias else 0)
        p = {"weight_ih": kernel.T, "weight_hh": rec.T, "bias_ih": bias}
    elif kind == "elman":
        cell = cells.elman(I, H, nonlinearity=activation, biases=1 if use_bias else 0)
        p = {"weight_ih": kernel.T, "weight_hh": rec.T, "bias_ih": bias}
    elif reset_after:
        cell = cells.gru(I, H, biases=2 if use_bias else 0)
        p = {"weight_ih": _swap_rz(kernel).T, "weight_hh": _swap_rz(rec).T,
             "bias_ih": None if bias is None else _swap_rz(bias[0]),
             "bias_hh": None if bias is None else _swap_rz(bias[1])}
    else:
        cell = cells.gru_classic(I, H, biases=1 if use_bias else 0)
        r = _swap_rz(rec).T
        p = {"weight_ih": _swap_rz(kernel).T, "weight_hh_rz": r[:2 * H],
             "weight_hh_n": r[2 * H:], "bias_ih": None if bias is None else _swap_rz(bias)}
    m = Model(cell, dtype=str(kernel.dtype), seed=seed)
    m.load_params({f"{k}_l0": np.ascontiguousarray(v) for k, v in p.items() if v is not None},
                  strict=True)
    return m


def to_keras(model: Model) -> list[np.ndarray]:
    """The model's weights as Keras's ``get_weights()`` lists them, so
    ``layer.set_weights(to_keras(m))`` gives m's outputs; ``from_keras(kind,
    to_keras(m), ...)`` gives m back exactly for a model from_keras made.

    The Keras layer to make: ``SimpleRNN`` (``activation`` as the elman's
    nonlinearity), ``LSTM``, ``GRU`` (``reset_after=False`` for gru_classic),
    ``use_bias=False`` for a cell without biases. PyTorch's two biases become Keras's one
    (their sum) where Keras has one. A model of ``layers`` > 1 and a head give the
    list of a ``keras.Sequential`` of that many layers (``return_sequences=True`` but
    the last) and a ``Dense``: ``seq.set_weights(to_keras(m))``. An LSTM with proj_size
    has no Keras layer.

    >>> from rnn import cells
    >>> [w.shape for w in to_keras(Model(cells.gru(3, 2)))]
    [(3, 6), (2, 6), (2, 6)]
    """
    if getattr(model, "bidirectional", False):
        raise ValueError("to_keras: a bidirectional model is a keras.layers.Bidirectional "
                         "wrapper, which to_keras does not write; to_torch does")
    kind, opts = _form(model, "to_keras")
    if opts.get("proj"):
        raise ValueError("to_keras: Keras's LSTM has no projection (proj_size, weight_hr)")
    out = []
    for k in range(model.layers):
        P = {n[:-len(f"_l{k}")]: v for n, v in model.params.items() if n.endswith(f"_l{k}")
             and not n.startswith("init_")}
        b = opts["biases"]
        if kind in ("lstm", "elman"):
            ws = [P["weight_ih"].T, P["weight_hh"].T]
            if b:
                ws.append(P["bias_ih"] + P["bias_hh"] if b == 2 else P["bias_ih"])
        elif kind == "gru":
            ws = [_swap_rz(P["weight_ih"].T), _swap_rz(P["weight_hh"].T)]
            if b:
                ws.append(np.stack([_swap_rz(P["bias_ih"]), _swap_rz(P["bias_hh"])]))
        else:
            rec = np.concatenate([P["weight_hh_rz"], P["weight_hh_n"]])
            ws = [_swap_rz(P["weight_ih"].T), _swap_rz(rec.T)]
            if b:
                ws.append(_swap_rz(P["bias_ih"]))
        out += ws
    if model.head is not None:
        out += [model.params["head_weight"].T, model.params["head_bias"]]
    return [np.ascontiguousarray(w) for w in out]


# ------------------------------------------------------------------ Keras weights files
def _keras3_layers(f) -> dict[str, list]:
    """{layer: [datasets]} of the recurrent layers of a Keras 3 ``.weights.h5``:
    ``layers/<lstm>/cell/vars/{0,1,2}``, the layer's own name in ``layers/<lstm>/vars``'s
    ``name`` attribute."""
    paths: list[str] = []
    f.visit(lambda p: paths.append(p) if p.endswith("/cell/vars") else None)
    found = {}
    for p in paths:
        vars_ = f[p]
        layer = p[:-len("/cell/vars")]
        own = f.get(f"{layer}/vars")
        name = own.attrs.get("name", layer) if own is not None else layer
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        keys = sorted(vars_, key=lambda s: int(s) if s.isdigit() else -1)
        found[f"{name} ({layer})" if name != layer else layer] = [vars_[s] for s in keys]
    return found


def _keras2_layers(f) -> dict[str, list]:
    """{layer: [datasets]} from the legacy (Keras 2, tf.keras) HDF5 layout: the root (or
    ``model_weights``) lists ``layer_names``; each layer's ``weight_names`` its arrays."""
    root = f["model_weights"] if "model_weights" in f else f
    found = {}
    for name in root.attrs.get("layer_names", []):
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        g = root.get(name)
        if g is None:
            continue
        wn = [w.decode("utf-8", "replace") if isinstance(w, bytes) else str(w)
              for w in g.attrs.get("weight_names", [])]
        base = [w.rsplit("/", 1)[-1].split(":")[0] for w in wn]
        if base[:2] == ["kernel", "recurrent_kernel"] and len(base) in (2, 3):
            found[name] = [g[w] for w in wn]
    return found


def _read(ds, where: str) -> np.ndarray:
    """A float dataset's values, checked before reading (no pickle, no huge reads)."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{where} is not an array (an HDF5 {type(ds).__name__})")
    if ds.dtype.kind != "f" or ds.dtype.itemsize not in (4, 8):
        raise ValueError(f"{where} is {ds.dtype}; a Keras weight is float32 or float64")
    if ds.ndim not in (1, 2) or ds.size > MAX_PARAM_ELEMENTS:
        raise ValueError(f"{where} has shape {ds.shape}; a recurrent layer's weights are "
                         f"1-d or 2-d and at most {MAX_PARAM_ELEMENTS:,} elements")
    return np.asarray(ds[()])


def from_keras_h5(path, layer_name: str | None = None, reset_after: bool | None = None,
                  activation: str = "tanh", seed: int = 0) -> Model:
    """A Model from one recurrent layer of a Keras weights file (``model.save_weights(
    "m.weights.h5")``, Keras 3; the legacy Keras 2 ``.h5`` layout too). Needs h5py.

    ``layer_name`` picks the layer (its Keras name, or its path in the file) when the
    file holds more than one. The kind (LSTM, GRU, SimpleRNN) and ``use_bias`` are read
    from the arrays, ``reset_after`` from a GRU's bias ((2, 3H): True); a GRU without
    bias needs it given (None: Keras's default, True). ``activation`` as in
    ``from_keras``. The file is read as numbers only: nothing in it runs.
    """
    try:
        import h5py
    except ImportError:
        raise ImportError("from_keras_h5 reads HDF5 files with h5py: pip install h5py; or "
                          "pass layer.get_weights() to from_keras") from None
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"no Keras weights file at {str(path)!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{str(path)!r} is not an HDF5 file ({e})") from None
    with f:
        layers = _keras3_layers(f) or _keras2_layers(f)
        if not layers:
            raise ValueError(f"{str(path)!r} holds no recurrent layer (LSTM, GRU, SimpleRNN "
                             f"weights: kernel, recurrent_kernel[, bias])")
        if layer_name is None:
            if len(layers) > 1:
                raise ValueError(f"{str(path)!r} holds {len(layers)} recurrent layers "
                                 f"{sorted(layers)}: pick one with layer_name=")
            (key,) = layers
        else:
            keys = [k for k in layers if layer_name in (k, k.split(" (")[0])
                    or k.endswith(f"({layer_name})") or k.endswith(f"/{layer_name})")]
            if len(keys) != 1:
                raise ValueError(f"layer_name={layer_name!r} is not one of the file's "
                                 f"recurrent layers {sorted(layers)}")
            (key,) = keys
        ws = [_read(ds, f"{key}: {ds.name}") for ds in layers[key]]
    if len(ws) not in (2, 3) or ws[1].ndim != 2 or ws[1].shape[0] == 0:
        raise ValueError(f"{key}: expected kernel, recurrent_kernel[, bias], got shapes "
                         f"{[w.shape for w in ws]}")
    H, GH = ws[1].shape
    kind = {1: "rnn", 3: "gru", 4: "lstm"}.get(GH // H if GH % H == 0 else 0)
    if kind is None:
        raise ValueError(f"{key}: recurrent_kernel {ws[1].shape} is not (H, G*H) for a "
                         f"SimpleRNN (G=1), GRU (3) or LSTM (4)")
    if kind == "gru" and len(ws) == 3:
        two = ws[2].ndim == 2
        if reset_after is not None and reset_after != two:
            raise ValueError(f"{key}: reset_after={reset_after} but the GRU's bias is "
                             f"{ws[2].shape} (reset_after={two})")
        reset_after = two
    return from_keras(kind, ws, reset_after=True if reset_after is None else reset_after,
                      use_bias=len(ws) == 3, activation=activation, seed=seed)
