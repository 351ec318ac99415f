"""Built-in cells, written in the same equation language as any user's cell.

They use PyTorch's parameter names and layouts (``weight_ih`` (G*H, I), ``weight_hh``
(G*H, H), ``bias_ih``, ``bias_hh``; gates i,f,g,o for the LSTM and r,z,n for the GRU),
so that a ``state_dict`` maps onto them 1:1.

``biases`` counts the bias vectors of a cell: 2 is PyTorch's ``bias_ih`` + ``bias_hh``,
1 is Keras's single bias (kept as ``bias_ih``: one vector, one learning rate), 0 is
PyTorch's ``bias=False`` and Keras's ``use_bias=False``. The variants are the same
equations with the missing bias terms left out.
"""

from __future__ import annotations

import numbers

from .cell import Cell, CellError

ELMAN = "h = tanh(weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh)"
ELMAN_RELU = "h = relu(weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh)"

JORDAN = """
h = tanh(weight_ih @ x + bias_ih + weight_hy @ y[t-1] + bias_hh)
y = weight_ho @ h + bias_ho
"""

LSTM = """
z = weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh
i, f, g, o = split(z, 4)
c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
h = sigmoid(o) * tanh(c)
"""

# PyTorch's proj_size: h (of size P) is a projection of the usual output, and weight_hh
# reads it, so weight_hh is (4H, P) and layer k > 0 takes P inputs.
LSTM_PROJ = """
z = weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh
i, f, g, o = split(z, 4)
c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)
h = weight_hr @ (sigmoid(o) * tanh(c))
"""

GRU = """
gi = weight_ih @ x + bias_ih
gh = weight_hh @ h[t-1] + bias_hh
i_r, i_z, i_n = split(gi, 3)
h_r, h_z, h_n = split(gh, 3)
r = sigmoid(i_r + h_r)
z = sigmoid(i_z + h_z)
n = tanh(i_n + r * h_n)
h = (1 - z) * n + z * h[t-1]
"""

GRU_CLASSIC = """
gi = weight_ih @ x + bias_ih
i_r, i_z, i_n = split(gi, 3)
h_r, h_z = split(weight_hh_rz @ h[t-1], 2)
r = sigmoid(i_r + h_r)
z = sigmoid(i_z + h_z)
n = tanh(i_n + weight_hh_n @ (r * h[t-1]))
h = (1 - z) * n + z * h[t-1]
"""

PEEPHOLE_LSTM = """
zz = weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh
zi, zf, zg, zo = split(zz, 4)
i = sigmoid(zi + weight_ci * c[t-1])
f = sigmoid(zf + weight_cf * c[t-1])
c = f * c[t-1] + i * tanh(zg)
o = sigmoid(zo + weight_co * c)
h = o * tanh(c)
"""


def _biases(text: str, biases: int, allowed: tuple[int, ...], cell: str) -> str:
    """``text`` with ``biases`` bias vectors: 1 drops ``+ bias_hh``, 0 both terms."""
    if isinstance(biases, bool) or biases not in allowed:
        raise CellError(f"{cell}: biases must be one of {list(allowed)} (2: bias_ih and "
                        f"bias_hh as PyTorch, 1: one bias as Keras, 0: none), got {biases!r}")
    drop = {2: (), 1: (" + bias_hh",), 0: (" + bias_ih", " + bias_hh")}[biases]
    for term in drop:
        text = text.replace(term, "")
    return text


def elman(input_size: int, hidden_size: int, nonlinearity: str = "tanh",
          biases: int = 2) -> Cell:
    """Elman's simple recurrent network (PyTorch ``nn.RNN``, Keras ``SimpleRNN``).

    >>> elman(3, 4, nonlinearity="relu", biases=1).params
    {'weight_ih': (4, 3), 'bias_ih': (4,), 'weight_hh': (4, 4)}
    """
    texts = {"tanh": ELMAN, "relu": ELMAN_RELU}
    if nonlinearity not in texts:
        raise CellError(f"elman: nonlinearity must be 'tanh' or 'relu' (as nn.RNN), got "
                        f"{nonlinearity!r}")
    return Cell.from_equations(_biases(texts[nonlinearity], biases, (2, 1, 0), "elman"),
                               inputs={"x": input_size}, states={"h": hidden_size})


def jordan(input_size: int, hidden_size: int, output_size: int | None = None) -> Cell:
    """Jordan's network: the *output* feeds back (``y[t-1]``), not the hidden layer."""
    return Cell.from_equations(JORDAN, inputs={"x": input_size},
                               sizes={"h": hidden_size, "y": output_size or input_size},
                               outputs=["y"])


def lstm(input_size: int, hidden_size: int, proj_size: int = 0, biases: int = 2) -> Cell:
    """Long short-term memory (PyTorch ``nn.LSTM``; Keras ``LSTM`` with ``biases=1``).

    With ``proj_size=P`` (0 < P < H, as PyTorch), h is ``weight_hr`` (P, H) times the
    usual output: h is (B, P) and c is (B, H).

    >>> lstm(3, 4, proj_size=2).states
    {'c': 4, 'h': 2}
    """
    if isinstance(proj_size, bool) or not isinstance(proj_size, numbers.Integral) \
            or proj_size < 0:
        raise CellError(f"lstm: proj_size must be an int >= 0 (0: no projection), got "
                        f"{proj_size!r}")
    if proj_size == 0:
        return Cell.from_equations(_biases(LSTM, biases, (2, 1, 0), "lstm"),
                                   inputs={"x": input_size},
                                   states={"h": hidden_size, "c": hidden_size}, outputs=["h"])
    if proj_size >= hidden_size:
        raise CellError(f"lstm: proj_size must be smaller than hidden_size (as nn.LSTM), got "
                        f"proj_size={proj_size}, hidden_size={hidden_size}")
    # c first: a Model initializes with 1/sqrt(the first declared size), PyTorch's H
    return Cell.from_equations(_biases(LSTM_PROJ, biases, (2, 1, 0), "lstm"),
                               inputs={"x": input_size},
                               states={"c": hidden_size, "h": int(proj_size)}, outputs=["h"])


def gru(input_size: int, hidden_size: int, biases: int = 2) -> Cell:
    """Gated recurrent unit, PyTorch form (Keras ``reset_after=True``): the reset gate
    multiplies W_hn h + b_hn. ``biases`` is 2 or 0 (PyTorch's ``bias=False``)."""
    return Cell.from_equations(_biases(GRU, biases, (2, 0), "gru"), inputs={"x": input_size},
                               states={"h": hidden_size})


def gru_classic(input_size: int, hidden_size: int, biases: int = 1) -> Cell:
    """GRU as in Cho et al. 2014 (Keras ``reset_after=False``): reset before the matmul.
    It has one bias, ``bias_ih`` (``biases=1``), or none (``biases=0``)."""
    return Cell.from_equations(_biases(GRU_CLASSIC, biases, (1, 0), "gru_classic"),
                               inputs={"x": input_size}, states={"h": hidden_size})


def peephole_lstm(input_size: int, hidden_size: int) -> Cell:
    """LSTM with peephole connections from the cell state to the gates (Gers 2002)."""
    return Cell.from_equations(PEEPHOLE_LSTM, inputs={"x": input_size},
                               states={"h": hidden_size, "c": hidden_size}, outputs=["h"])


BUILTINS = {"elman": elman, "rnn": elman, "jordan": jordan, "lstm": lstm, "gru": gru,
            "gru_classic": gru_classic, "peephole_lstm": peephole_lstm}


def variants() -> dict[str, tuple[str, dict]]:
    """{equations: (builder, options)} for every variant of elman, lstm, gru and
    gru_classic: how rnn.interop tells which built-in a model's cell is (sizes aside)."""
    out = {}
    for b in (2, 1, 0):
        out[_biases(ELMAN, b, (b,), "")] = ("elman", {"nonlinearity": "tanh", "biases": b})
        out[_biases(ELMAN_RELU, b, (b,), "")] = ("elman", {"nonlinearity": "relu", "biases": b})
        out[_biases(LSTM, b, (b,), "")] = ("lstm", {"proj": False, "biases": b})
        out[_biases(LSTM_PROJ, b, (b,), "")] = ("lstm", {"proj": True, "biases": b})
    for b in (2, 0):
        out[_biases(GRU, b, (b,), "")] = ("gru", {"biases": b})
    for b in (1, 0):
        out[_biases(GRU_CLASSIC, b, (b,), "")] = ("gru_classic", {"biases": b})
    return out
