"""Executors: two ways to run the same unrolled program, which must agree to 1e-10.

``reference`` is the ten-line interpreter of engine.ir, node by node (traces, pictures,
teaching, the oracle). ``compiled`` does not walk the program at all: the loop compiler
(rnn/program/loop.py) rolls it back into compiled time loops over the cell's step, so
models run it through ``Model.plan``; this table only names the executors.
"""

from __future__ import annotations

from engine import ir


class Reference:
    name = "reference"

    def forward(self, prog, env, keep=(), watch=()):
        return ir.interpret(prog, env)

    def backward(self, prog, values, seeds, on_adjoint=None, wrt=None):
        return ir.backward(prog, values, seeds, on_adjoint)


REFERENCE = Reference()
NAMES = ("compiled", "reference")


def check_executor(name) -> str:
    if name not in NAMES:
        raise ValueError(f"executor must be one of {list(NAMES)}, got {name!r}")
    return name
