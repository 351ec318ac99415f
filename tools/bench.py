"""``unroll bench``: one BPTT training step (forward over T, full backward, SGD update),
timed for unroll and for its peers on the same workloads, in one run.

The peers (PyTorch, JAX, hand-written numpy) live in ``shared/bench/peers.py`` beside
the repository; set UNROLL_PEERS to its path if it is elsewhere. Peers whose library is
not installed are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from pathlib import Path

import numpy as np

WORKLOADS = {  # name: (cell, input, hidden, batch, T) -- the same as peers.py
    "tiny-lstm": ("lstm", 1, 32, 1, 50),
    "small-lstm": ("lstm", 32, 128, 32, 100),
    "small-gru": ("gru", 32, 128, 32, 100),
    "medium-lstm": ("lstm", 256, 512, 64, 100),
    "long-elman": ("rnn", 8, 64, 16, 1000),
}
QUICK = ("tiny-lstm", "small-lstm", "small-gru")


def find_peers():
    here = Path(__file__).resolve().parent.parent
    for cand in (os.environ.get("UNROLL_PEERS"), here.parent / "shared/bench/peers.py",
                 Path.cwd().parent / "shared/bench/peers.py"):
        if cand and Path(cand).is_file():
            spec = importlib.util.spec_from_file_location("unroll_peers", cand)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def unroll_step(cell, I, H, B, T, dtype, executor="compiled"):
    import rnn

    model = rnn.Model(rnn.cells.BUILTINS[cell](I, H), dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((B, T, I)).astype(dtype)
    ys = rng.standard_normal((B, T, H)).astype(dtype)
    opt = rnn.optim.SGD(lr=1e-3)

    def step():
        res = rnn.bptt(model, xs, ys, executor=executor)
        opt.step(model.params, res.grads)

    return step


def timeit(fn, reps=5, budget=20.0):
    times = []
    end = time.perf_counter() + budget
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if time.perf_counter() > end:
            break
    return statistics.median(times)


def flops(cell, I, H, B, T):
    return 3 * 2 * B * {"lstm": 4, "gru": 3, "rnn": 1}[cell] * H * (I + H) * T


def gemm_peak(dtype) -> float:
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(dtype)
    a @ a
    s = timeit(lambda: a @ a, reps=5)
    return 2 * 1024 ** 3 / s / 1e9


def main(quick: bool = False, only: str = "", dtype: str = "float32") -> None:
    peers = find_peers()
    names = [w for w in WORKLOADS if (not quick or w in QUICK)]
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = set(wanted) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown workload(s) {sorted(unknown)}; known: {list(WORKLOADS)}")
        names = wanted
    print(f"one BPTT training step, {dtype}, median ms (GFLOP/s of the GEMMs); "
          f"numpy GEMM peak here: {gemm_peak(dtype):.1f} GFLOP/s")
    if peers is None:
        print("(shared/bench/peers.py not found: set UNROLL_PEERS to compare with peers)")
    for w in names:
        cell, I, H, B, T = WORKLOADS[w]
        rows = [("unroll", unroll_step(cell, I, H, B, T, dtype))]
        if w != "long-elman" or not quick:
            rows.append(("unroll-reference", unroll_step(cell, I, H, B, T, dtype, "reference")))
        for pname, mk in (peers.PEERS.items() if peers else []):
            try:
                step = mk(cell, I, H, B, T, dtype)
            except ImportError:
                continue
            if step is not None:
                rows.append((pname, step))
        for _, step in rows:  # warm-up, all before any timing: kernels compile, programs
            step()            # are built and cached, and malloc settles on big blocks
            step()
        times = {name: timeit(step) for name, step in rows}
        base = times["unroll"]
        for name, s in times.items():
            ratio = "" if name == "unroll" else f"  unroll is {base / s:5.2f}x its time"
            print(f"{w:12s} {name:17s} {s * 1e3:9.2f} ms  "
                  f"{flops(cell, I, H, B, T) / s / 1e9:7.2f} GFLOP/s{ratio}", flush=True)
