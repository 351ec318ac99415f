"""Built-in cells, written in the same equation language as any user's cell.

They use PyTorch's parameter names and layouts (``weight_ih`` (G*H, I), ``weight_hh``
(G*H, H), ``bias_ih``, ``bias_hh``; gates i,f,g,o for the LSTM and r,z,n for the GRU),
so that a ``state_dict`` maps onto them 1:1.
"""

from __future__ import annotations

from .cell import Cell

ELMAN = "h = tanh(weight_ih @ x + bias_ih + weight_hh @ h[t-1] + bias_hh)"

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


def elman(input_size: int, hidden_size: int) -> Cell:
    """Elman's simple recurrent network (PyTorch ``nn.RNN``, tanh)."""
    return Cell.from_equations(ELMAN, inputs={"x": input_size}, states={"h": hidden_size})


def jordan(input_size: int, hidden_size: int, output_size: int | None = None) -> Cell:
    """Jordan's network: the *output* feeds back (``y[t-1]``), not the hidden layer."""
    return Cell.from_equations(JORDAN, inputs={"x": input_size},
                               sizes={"h": hidden_size, "y": output_size or input_size},
                               outputs=["y"])


def lstm(input_size: int, hidden_size: int) -> Cell:
    """Long short-term memory (PyTorch ``nn.LSTM``)."""
    return Cell.from_equations(LSTM, inputs={"x": input_size},
                               states={"h": hidden_size, "c": hidden_size}, outputs=["h"])


def gru(input_size: int, hidden_size: int) -> Cell:
    """Gated recurrent unit, PyTorch form: the reset gate multiplies W_hn h + b_hn."""
    return Cell.from_equations(GRU, inputs={"x": input_size}, states={"h": hidden_size})


def gru_classic(input_size: int, hidden_size: int) -> Cell:
    """GRU as in Cho et al. 2014 (Keras ``reset_after=False``): reset before the matmul."""
    return Cell.from_equations(GRU_CLASSIC, inputs={"x": input_size},
                               states={"h": hidden_size})


def peephole_lstm(input_size: int, hidden_size: int) -> Cell:
    """LSTM with peephole connections from the cell state to the gates (Gers 2002)."""
    return Cell.from_equations(PEEPHOLE_LSTM, inputs={"x": input_size},
                               states={"h": hidden_size, "c": hidden_size}, outputs=["h"])


BUILTINS = {"elman": elman, "rnn": elman, "jordan": jordan, "lstm": lstm, "gru": gru,
            "gru_classic": gru_classic, "peephole_lstm": peephole_lstm}
