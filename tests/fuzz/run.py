"""Fuzz the equation parser and the model-file loader: ``make fuzz``.

    python tests/fuzz/run.py --cells 60000 --files 40000 --seed 0

Cases are drawn by hypothesis from tests/strategies.py (random cells, their text
mutated, any text; model files mutated in their metadata, header and bytes, and random
bytes) under a fixed seed, so a run is repeatable. Every case runs; the promises checked
are those of tests/fuzz/targets.py. The run prints how many cases ran and their outcomes,
and every fault with its smallest case; ``--save DIR`` writes those cases as corpus
files (tests/fuzz_corpus/ holds the ones found so far, replayed by tests/test_fuzz.py).
Exit status 1 when a fault was found.

The compiled executor runs with Numba's JIT off by default (``NUMBA_DISABLE_JIT=1``, set
before anything imports numba): the generated loops run as Python, with the same code
and the same arithmetic, in milliseconds instead of a second or more of compiling per
new cell. ``--jit`` keeps the JIT (a few hundred cases take minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # tests/ and the repository


class Timeout(BaseException):
    """A case ran past --timeout (BaseException: no `except Exception` swallows it)."""


def _alarm(signum, frame):
    raise Timeout()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1000, help="parser cases")
    ap.add_argument("--files", type=int, default=1000, help="model-file cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jit", action="store_true", help="keep Numba's JIT on")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds a case may take")
    ap.add_argument("--save", type=Path, help="write each fault's smallest case here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--strict", action="store_true",
                    help="count the known faults (targets.KNOWN) as faults")
    args = ap.parse_args(argv)
    if not args.jit:
        os.environ["NUMBA_DISABLE_JIT"] = "1"
    elif "numba" not in sys.modules:
        os.environ.pop("NUMBA_DISABLE_JIT", None)

    import strategies
    from hypothesis import HealthCheck, Phase, given, seed, settings

    from fuzz import targets

    signal.signal(signal.SIGALRM, _alarm)
    faults: dict[str, tuple[int, object, str]] = {}  # signature -> (size, case, detail)
    counts: dict[str, Counter] = {"cells": Counter(), "files": Counter()}

    def run_case(target: str, fn, case, size: int):
        signal.setitimer(signal.ITIMER_REAL, args.timeout)
        try:
            outcome = fn()
        except targets.Fault as f:
            known = None if args.strict else f.known()
            if known:
                counts[target][f"known: {known}"] += 1
                return
            outcome = "FAULT"
            sig = f"{target}: {f.where}: {_signature(f.what)}"
            if sig not in faults:  # said at once: a run cut short still tells
                print(f"FAULT {sig}\n    {f.what[:300]}", file=sys.stderr, flush=True)
            if sig not in faults or size < faults[sig][0]:
                faults[sig] = (size, case, f.what)
        except Timeout:
            outcome = "FAULT"
            sig = f"{target}: ran past {args.timeout:g} s"
            if sig not in faults or size < faults[sig][0]:
                faults[sig] = (size, case, "timeout")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        counts[target][outcome] += 1

    quiet = settings(database=None, deadline=None, derandomize=False,
                     suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    t0 = time.time()
    folder = Path(tempfile.mkdtemp(prefix="unroll-fuzz-"))
    if args.cells:
        cases = strategies.cell_cases().flatmap(
            lambda c: strategies.st.sampled_from(["all", "all", "last", "mask", "truncate"])
            .map(lambda v: {**c, "variant": v}))

        @seed(args.seed)
        @settings(quiet, max_examples=args.cells)
        @given(cases)
        def cells(case):
            run_case("cells", lambda: targets.check_cell(case, folder=folder), case,
                     len(case["text"]))

        cells()
        _progress("cells", counts["cells"], t0, args.quiet)
    t1 = time.time()
    if args.files:
        bases = targets.base_files(folder)
        path = folder / "case.unroll"
        targets.check_file(bases[0], path)  # the first load imports what it needs

        @seed(args.seed)
        @settings(quiet, max_examples=args.files)
        @given(strategies.file_cases(targets.base_cell_texts()))
        def files(case):
            try:
                data = targets.build_file(case, bases)
            except Exception as e:  # noqa: BLE001 - the harness's own fault: say it, go on
                counts["files"]["harness error"] += 1
                print(f"harness error {type(e).__name__}: {e} on {case!r:.300}", file=sys.stderr)
                return
            run_case("files", lambda: targets.check_file(data, path), data, len(data))

        files()
        _progress("files", counts["files"], t1, args.quiet)
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    total = sum(sum(c.values()) for c in counts.values())
    print(f"\n{total} cases in {time.time() - t0:.0f} s (seed {args.seed}, "
          f"JIT {'on' if args.jit else 'off'}):")
    for target, c in counts.items():
        if c:
            print(f"  {target}: {sum(c.values())} cases: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    print(f"{len(faults)} distinct faults" + (":" if faults else ""))
    for sig, (_, case, what) in sorted(faults.items()):
        shown = case if isinstance(case, dict) else f"{len(case)} bytes"
        print(f"- {sig}\n    {what[:400]}\n    smallest case: {str(shown)[:600]!s}")
    if args.save and faults:
        args.save.mkdir(parents=True, exist_ok=True)
        for i, (sig, (_, case, what)) in enumerate(sorted(faults.items())):
            stem = f"seed{args.seed}-{i:02d}"
            if isinstance(case, dict):
                (args.save / f"cell-{stem}.json").write_text(json.dumps(
                    {**case, "found": sig, "what": what[:300]}, indent=1) + "\n")
            else:
                (args.save / f"file-{stem}.unroll").write_bytes(case)
                (args.save / f"file-{stem}.txt").write_text(f"{sig}\n{what[:300]}\n")
        print(f"cases written to {args.save}")
    return 1 if faults else 0


def _signature(what: str) -> str:
    """A fault's kind without its numbers and names: one entry per bug, not per case."""
    import re

    head = re.sub(r"^(grads|state_grads)\[.*?\]", r"\1", what.split(";")[0])
    return re.sub(r"\d+(\.\d*)?(e[-+]?\d+)?", "N", head)[:100]


def _progress(target, c: Counter, t0: float, quiet: bool) -> None:
    if not quiet:
        print(f"{target}: {sum(c.values())} cases in {time.time() - t0:.0f} s: "
              + ", ".join(f"{k} {v}" for k, v in sorted(c.items())), flush=True)


if __name__ == "__main__":
    sys.exit(main())
