"""Cells as equations, the unrolling compiler, BPTT and training.

>>> import rnn
>>> cell = rnn.Cell.from_equations("h = tanh(W @ x + U @ h[t-1] + b)", inputs={"x": 3},
...                                states={"h": 16})
>>> rnn.unroll(cell, steps=5).graph.number_of_nodes() > 5 * 5
True
"""

from engine.errors import CellError

from .bptt import BPTTResult, bptt
from .data import tasks
from .io import interop
from .io.files import ModelFileError
from .lang import library as cells
from .lang.builder import CellBuilder
from .lang.cell import Cell
from .model import Model
from .program.unroll import Unrolled, unroll
from .seq2seq import Seq2Seq
from .train import callbacks, optim, schedules
from .train.fit import History, fit

__all__ = ["BPTTResult", "Cell", "CellBuilder", "CellError", "History", "Model",
           "ModelFileError", "Seq2Seq", "Unrolled", "bptt", "callbacks", "cells", "fit",
           "interop", "optim", "schedules", "tasks", "unroll"]
