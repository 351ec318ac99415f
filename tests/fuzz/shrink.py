"""Make a failing case small while it fails the same way (delta debugging).

    python tests/fuzz/shrink.py tests/fuzz_corpus/cell-....json   # prints the smaller case

A cell case loses lines, then runs of tokens, then its sizes; a file case loses runs of
bytes. "The same way" is the Fault's place and the kind of what it says (its first
words), as the runner groups faults.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]


def _key(fault) -> str:
    return fault.where + ":" + re.sub(r"\d+", "N", fault.what.split(":")[0])[:60]


def cell_fault(case: dict) -> str | None:
    from fuzz import targets

    try:
        targets.check_cell(case)
    except targets.Fault as f:
        return _key(f)
    return None


def _ddmin(items: list, fails) -> list:
    """The shortest sublist found (removing runs, halving their length) that still fails."""
    n = 2
    while len(items) >= 2:
        chunk = max(1, len(items) // n)
        for i in range(0, len(items), chunk):
            trial = items[:i] + items[i + chunk:]
            if trial and fails(trial):
                items, n = trial, max(n - 1, 2)
                break
        else:
            if chunk == 1:
                break
            n = min(len(items), n * 2)
    return items


def shrink_cell(case: dict) -> dict:
    from strategies import _tokens

    want = cell_fault(case)
    if want is None:
        return case

    def with_text(text):
        return {**case, "text": text}

    lines = _ddmin(case["text"].split("\n"),
                   lambda ls: cell_fault(with_text("\n".join(ls))) == want)
    toks = _ddmin(_tokens("\n".join(lines)),
                  lambda ts: cell_fault(with_text("".join(ts))) == want)
    case = with_text("".join(toks))
    for part in ("sizes", "states"):
        for k in list(case[part]):
            trial = {**case, part: {n: v for n, v in case[part].items() if n != k}}
            if cell_fault(trial) == want:
                case = trial
    return case


def main(argv=None) -> int:
    os.environ.setdefault("NUMBA_DISABLE_JIT", "1")
    for name in argv or sys.argv[1:]:
        case = json.loads(Path(name).read_text())
        small = shrink_cell({k: case[k] for k in ("text", "inputs", "states", "sizes",
                                                  "variant") if k in case})
        print(json.dumps(small), "->", cell_fault(small))
    return 0


if __name__ == "__main__":
    sys.exit(main())
