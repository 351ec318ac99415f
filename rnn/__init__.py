"""Cells as equations, the unrolling compiler, BPTT and training.

>>> import rnn
>>> cell = rnn.Cell.from_equations("h = tanh(W @ x + U @ h[t-1] + b)", inputs={"x": 3},
...                                states={"h": 16})
>>> rnn.unroll(cell, steps=5).graph.number_of_nodes() > 5 * 5
True
"""

from . import cells, interop, optim, tasks
from .bptt import BPTTResult, bptt
from .builder import CellBuilder
from .cell import Cell
from .model import Model
from .seq2seq import Seq2Seq
from .train import History, fit
from .unroll import Unrolled, unroll

__all__ = ["BPTTResult", "Cell", "CellBuilder", "History", "Model", "Seq2Seq", "Unrolled",
           "bptt", "cells", "fit", "interop", "optim", "tasks", "unroll"]
