"""Coverage-guided fuzzing of the equation parser with atheris (libFuzzer), optional:

    pip install atheris        # a wheel exists for CPython 3.11 on Linux x86-64
    python tests/fuzz/atheris_parser.py -runs=100000 -seed=1 [corpus_dir]

The bytes become equation text (UTF-8 with surrogates let through) plus sizes; the only
exception allowed out of Cell.from_equations is CellError, and an accepted cell must
build a Model and run one forward step with the reference executor. libFuzzer prints
its own statistics and stops at the first crash, writing it as crash-<hash>.
tests/fuzz/run.py (make fuzz) needs only hypothesis; this finds what coverage guidance
finds on top.
"""

import os
import sys
from pathlib import Path

import atheris
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[2])]
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

with atheris.instrument_imports(include=["rnn.lang"]):  # before anything imports rnn
    from rnn.lang.cell import Cell

from engine.errors import CellError  # noqa: E402
from rnn import Model  # noqa: E402

SEEDS = [b"h = tanh(W @ x + U @ h[t-1] + b)",
         b"z = W @ x + U @ h[t-1] + b\ni, f, g, o = split(z, 4)\n"
         b"c = sigmoid(f) * c[t-1] + sigmoid(i) * tanh(g)\nh = sigmoid(o) * tanh(c)"]


def one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    nx, nh = fdp.ConsumeIntInRange(1, 4), fdp.ConsumeIntInRange(1, 4)
    text = fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "surrogateescape")
    try:
        cell = Cell.from_equations(text, inputs={"x": nx}, states={"h": nh} if "h" in text
                                   else {})
    except CellError:
        return
    if len(cell.inputs) == 1 and sum(int(np.prod(s)) for s in cell.params.values()) < 10 ** 5:
        m = Model(cell, dtype="float64")
        with np.errstate(all="ignore"):
            m.forward(np.zeros((1, 2, nx)), executor="reference")


def main() -> None:
    args = sys.argv
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus folder: seed one
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "unroll-atheris-corpus"
        folder.mkdir(exist_ok=True)
        for i, s in enumerate(SEEDS):
            (folder / f"seed{i}").write_bytes(b"\x02\x03" + s)
        args = [*args, str(folder)]
    atheris.Setup(args, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
