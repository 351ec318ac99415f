"""``unroll bench``: one BPTT training step, timed for unroll and for its peers, in one run.

A step is the forward pass over T steps, the MSE over every step's output against fixed
random targets, the full backward pass through time, and an SGD update of the weights.
The peers (torch's fused modules, a torch Python loop over a cell, JAX's ``lax.scan``
under ``jit``) are in ``benchmarks/peers.py``; each is optional and skipped, with its
reason in one line, when its library is not installed. unroll's reference interpreter
runs on the small workloads only (it is slow).

Each contender is warmed up (compiles, caches, allocator), then run until a time cap;
the median is reported, with GFLOP/s of its GEMMs (3 x the forward GEMM FLOPs) and that
as a % of the GEMM peak measured at the start of the same run (numpy, 1024 x 1024).
``--busy`` runs everything a second time beside one process spinning on one core, and
prints each contender's slowdown busy / quiet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Workload(NamedTuple):
    cell: str  # lstm, gru, elman (tanh) or mgu
    input: int
    hidden: int
    batch: int
    steps: int
    reference: bool = False  # also time unroll's reference interpreter (small ones only)


WORKLOADS = {
    "tiny-lstm": Workload("lstm", 1, 32, 1, 50, reference=True),
    "small-lstm": Workload("lstm", 32, 128, 32, 100, reference=True),
    "small-gru": Workload("gru", 32, 128, 32, 100, reference=True),
    "medium-lstm": Workload("lstm", 256, 512, 64, 100),
    "long-elman": Workload("elman", 8, 64, 16, 1000),
    "custom-mgu": Workload("mgu", 16, 128, 16, 100, reference=True),
}
QUICK = ("tiny-lstm", "small-lstm", "custom-mgu")
DTYPES = ("float32", "float64")
OURS, REFERENCE = "unroll", "unroll-reference"
LR = 1e-3
SETTLE = 0.5  # seconds between contenders: torch's OpenMP and XLA's pools spin after work
ROUNDS = 3  # turns each contender is timed in, interleaved (_time_all)

# the minimal gated unit (Zhou et al. 2016), written as a user writes a custom cell
MGU = """
f = sigmoid(Wf @ x + Uf @ h[t-1] + bf)
n = tanh(Wn @ x + Un @ (f * h[t-1]) + bn)
h = (1 - f) * h[t-1] + f * n
"""

# H x (I + H) blocks of GEMM per step: the LSTM's 4 gates, the GRU's 3, Elman's 1, and
# the MGU's four matrices Wf, Uf, Wn, Un (two H x I, two H x H)
GEMM_BLOCKS = {"lstm": 4, "gru": 3, "elman": 1, "mgu": 2}


def gemm_flops(w: Workload) -> float:
    """Matmul FLOPs of one training step: 3 x the forward's (forward, and the two GEMMs
    of the backward: d input and d weight), as peers are counted."""
    return 3 * 2 * w.batch * w.steps * GEMM_BLOCKS[w.cell] * w.hidden * (w.input + w.hidden)


def best_peer(times: dict[str, float]):
    """(ours / best peer, best peer's name): ours is unroll's compiled executor; the best
    peer is the fastest contender that is not unroll. (None, None) with no peer."""
    peers = {k: v for k, v in times.items() if k not in (OURS, REFERENCE)}
    if OURS not in times or not peers:
        return None, None
    name = min(peers, key=peers.get)
    return times[OURS] / peers[name], name


# ------------------------------------------------------------------ contenders
def cell_for(w: Workload):
    import rnn

    if w.cell == "mgu":
        return rnn.Cell.from_equations(MGU, inputs={"x": w.input}, states={"h": w.hidden})
    return rnn.cells.BUILTINS[w.cell](w.input, w.hidden)


def unroll_step(w: Workload, dtype: str, executor: str = "compiled"):
    import rnn

    model = rnn.Model(cell_for(w), dtype=dtype, seed=0)
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((w.batch, w.steps, w.input)).astype(dtype)
    ys = rng.standard_normal((w.batch, w.steps, w.hidden)).astype(dtype)
    opt = rnn.optim.SGD(lr=LR)  # params[k] -= lr * g

    def step():
        res = rnn.bptt(model, xs, ys, loss="mse", at="all", executor=executor)
        opt.step(model.params, res.grads)

    return step


def load_peers():
    """benchmarks/peers.py of this checkout, or None where it is not there (a wheel)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("unroll_bench_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _oneline(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


# ------------------------------------------------------------------ timing
def measure(step, budget: float, warmup: int = 2, min_runs: int = 3,
            max_runs: int = 100) -> list[float]:
    """Seconds of each timed run: ``warmup`` untimed calls (more while under 0.5 s in
    all, at most 20; none for 0), then timed runs until ``budget`` seconds are spent; at least
    ``min_runs`` of them unless that passes the hard cap of 3 x ``budget`` (a slow step
    gets one or two runs), at most ``max_runs``."""
    start = time.perf_counter()
    for k in range(20):
        if k >= warmup and (not warmup or time.perf_counter() - start > min(0.5, budget)):
            break
        step()
    times = []
    begin = time.perf_counter()
    while len(times) < max_runs:
        spent = time.perf_counter() - begin
        if times and (spent >= 3 * budget or (spent >= budget and len(times) >= min_runs)):
            break
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def gemm_peak(dtype: str) -> float:
    """GFLOP/s of numpy's 1024 x 1024 matmul here, now: the fastest of the runs in about
    a second after warm-up (a peak, so the best run, not the median: on a shared machine
    the median falls with what else runs)."""
    a = np.random.default_rng(0).standard_normal((1024, 1024)).astype(dtype)
    b = a.T.copy()
    times = measure(lambda: a @ b, budget=1.0, warmup=2, min_runs=10, max_runs=200)
    return 2 * 1024 ** 3 / min(times) / 1e9


def blas_line() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "numpy BLAS: threads unknown (threadpoolctl not installed)"
    libs = [f"{i.get('internal_api')} {i.get('version') or ''} with {i.get('num_threads')} "
            f"threads" for i in threadpool_info() if i.get("user_api") == "blas"]
    return "numpy BLAS: " + ("; ".join(libs) if libs else "not found by threadpoolctl")


# ------------------------------------------------------------------ busy core
BUSY_CODE = """\
import os
parent = os.getppid()
n = 0
while True:  # spin on one core; leave when the bench is gone, whatever killed it
    n += 1
    if n == 1000000:
        n = 0
        if os.getppid() != parent:
            break
"""


@contextlib.contextmanager
def busy_process():
    """One background process spinning on one core for the length of the block, killed
    and reaped on the way out, also on Ctrl-C or SIGTERM; it also leaves by itself if the
    bench dies without cleaning up (its parent changes)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_CODE], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    old = None
    try:
        try:  # SIGTERM runs the finally below as Ctrl-C does (main thread only)
            old = signal.signal(signal.SIGTERM, _terminate)
        except ValueError:
            old = None
        time.sleep(0.2)  # let it start spinning
        yield proc
    finally:
        proc.kill()
        proc.wait()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


# ------------------------------------------------------------------ the run
HEAD = f"{'workload':12s} {'contender':17s} {'median ms':>10s} {'GFLOP/s':>9s} {'% peak':>7s}  runs"


def _row(name: str, contender: str, turns: list[list[float]], flops: float,
         peak: float) -> dict:
    times = [t for ts in turns for t in ts]
    med = statistics.median(times)
    gf = flops / med / 1e9
    row = {"median_ms": med * 1e3, "gflops": gf, "pct_peak": 100 * gf / peak,
           "runs": len(times), "times_ms": [t * 1e3 for t in times],
           "turn_medians_ms": [statistics.median(ts) * 1e3 for ts in turns]}
    print(f"{name:12s} {contender:17s} {row['median_ms']:10.2f} {gf:9.2f} "
          f"{row['pct_peak']:6.1f}%  {len(times):4d}", flush=True)
    return row


def turn_ratios(rows: dict, best: str) -> list[float]:
    """unroll / ``best`` in each turn both were timed in (their medians there): how far
    the ratio moves within one run, with the load from outside."""
    return [a / b for a, b in zip(rows[OURS]["turn_medians_ms"],
                                  rows[best]["turn_medians_ms"])]


def contenders(name: str, w: Workload, dtype: str, peers, said: set, skipped: dict):
    """[(contender, step)] for one workload; peers that cannot run go to ``skipped`` with
    their reason, printed once per peer and reason."""
    out = [(OURS, unroll_step(w, dtype))]
    if w.reference:
        out.append((REFERENCE, unroll_step(w, dtype, "reference")))
    for peer in (peers.PEERS if peers else ()):
        try:
            out.append((peer, peers.make(peer, w.cell, w.input, w.hidden, w.batch, w.steps,
                                         dtype, LR)))
        except peers.Skip as e:
            skipped[peer] = str(e)
        except Exception as e:  # noqa: BLE001 - a peer that breaks is reported, not fatal
            skipped[peer] = f"failed: {_oneline(e)}"
        if peer in skipped and (peer, skipped[peer]) not in said:
            said.add((peer, skipped[peer]))
            print(f"{name:12s} {peer:17s} skipped: {skipped[peer]}", flush=True)
    return out


def _time_all(name, w, steps, peak, budget, warmup, skipped) -> dict:
    """Time each contender for ``budget`` seconds in all, in ROUNDS turns: contender
    after contender, then again, so that a spell of load from outside this process
    (another user, another virtual machine on the host) falls on all of them, not on
    whoever was being timed then. Each turn warms its contender up again first, unless
    one run takes longer than a turn; one whose runs took 3 x ``budget`` (the hard cap,
    a step of seconds beside a busy process) has had its turns."""
    turns: dict = {c: [] for c, _ in steps}  # each turn's run times, per contender
    per_turn = budget / ROUNDS
    for turn in range(ROUNDS):
        for contender, step in steps:
            t = [x for ts in turns[contender] for x in ts]
            if contender in skipped or sum(t) >= 3 * budget:  # a slow one: enough runs
                continue
            # the previous contender's thread pools stop spinning first (a toy budget:
            time.sleep(min(SETTLE, per_turn))  # no settling worth its wait)
            again = 1 if max(t, default=0) < per_turn else 0  # warm-up after a turn off
            try:
                turns[contender].append(measure(step, per_turn, warmup=again if turn else warmup,
                                                min_runs=1, max_runs=-(-100 // ROUNDS)))
            except Exception as e:  # noqa: BLE001
                if contender in (OURS, REFERENCE):
                    raise
                skipped[contender] = f"failed: {_oneline(e)}"
                print(f"{name:12s} {contender:17s} skipped: {skipped[contender]}", flush=True)
    return {c: _row(name, c, ts, gemm_flops(w), peak) for c, ts in turns.items()
            if c not in skipped}


def run(names, dtype: str = "float32", busy: bool = False, json_path=None,
        budget: float = 2.0, workloads=None, peers="load") -> dict:
    """Time every workload in ``names``; print the tables; return (and write to
    ``json_path``) every number. ``workloads`` maps names to Workloads (default the six
    above); ``peers`` is the peers module, None for no peers, "load" for ours."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    if json_path and not Path(json_path).resolve().parent.is_dir():
        raise ValueError(f"--json {json_path}: its folder does not exist")
    workloads = workloads or WORKLOADS
    peers = load_peers() if peers == "load" else peers
    peak = gemm_peak(dtype)
    res = {"dtype": dtype, "gemm_peak_gflops": peak, "budget_s": budget,
           "command": " ".join(sys.argv), "libraries": {}, "workloads": {}}
    print(f"unroll bench: one BPTT training step (forward over T, MSE on every step, full "
          f"backward, SGD update), {dtype}")
    print(f"GEMM peak: numpy {dtype} 1024x1024 matmul, {peak:.1f} GFLOP/s in this run "
          f"(best run of about 1 s; % peak below is of it)")
    res["libraries"]["numpy"] = blas_line()
    print(res["libraries"]["numpy"])
    if peers is None:
        print("peers: none (benchmarks/peers.py is not in this installation)")
    else:
        for lib, line in peers.versions().items():
            res["libraries"][lib] = line
            print(line)
    print(f"median after warm-up, each contender timed for about {budget:g} s in "
          f"{ROUNDS} turns taken in rotation (at least {ROUNDS} runs, at most "
          f"{3 * budget:g} s); GFLOP/s: "
          f"the GEMMs only (3 x forward); ratio: unroll / fastest peer (> 1: unroll is "
          f"slower)\n", flush=True)
    print(HEAD)
    said: set = set()
    kept = {}
    for name in names:
        w = workloads[name]
        skipped: dict[str, str] = {}
        steps = contenders(name, w, dtype, peers, said, skipped)
        rows = _time_all(name, w, steps, peak, budget, 2, skipped)
        ratio, best = best_peer({k: r["median_ms"] for k, r in rows.items()})
        by_turn = turn_ratios(rows, best) if best else []
        if ratio is None:
            print(f"{name:12s} unroll / best peer: n/a (no peer ran)", flush=True)
        else:
            print(f"{name:12s} unroll / best peer: {ratio:.2f} (turn by turn "
                  f"{', '.join(f'{r:.2f}' for r in by_turn)}; best peer {best}, "
                  f"{rows[best]['median_ms']:.2f} ms; unroll at "
                  f"{rows[OURS]['pct_peak']:.1f}% of peak)", flush=True)
        res["workloads"][name] = {
            **w._asdict(), "gemm_flops": gemm_flops(w), "contenders": rows,
            "skipped": skipped, "best_peer": best, "unroll_over_best_peer": ratio,
            "unroll_over_best_peer_by_turn": by_turn}
        if busy:  # the busy pass reruns the same, warm steps
            kept[name] = steps
    if busy:
        with busy_process() as proc:
            print(f"\nagain, beside one busy process spinning on one core (pid {proc.pid}):")
            print(HEAD)
            for name in names:
                skipped = res["workloads"][name]["skipped"]
                steps = [(c, s) for c, s in kept[name] if c not in skipped]
                res["workloads"][name]["busy"] = _time_all(
                    name, workloads[name], steps, peak, budget, 1, skipped)
        res["busy_pid"] = proc.pid
        print(slowdown_table(res, names))
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=1) + "\n")
        print(f"\nall numbers: {json_path}")
    return res


def slowdown_table(res: dict, names) -> str:
    """Busy / quiet median per workload and contender, a matrix; also stored in res."""
    cols = []
    for name in names:
        for c in res["workloads"][name].get("busy", {}):
            if c not in cols:
                cols.append(c)
    lines = ["\nslowdown with one core busy (busy median / quiet median):",
             f"{'workload':12s} " + " ".join(f"{c:>17s}" for c in cols)]
    for name in names:
        wl = res["workloads"][name]
        wl["slowdown"] = {c: b["median_ms"] / wl["contenders"][c]["median_ms"]
                          for c, b in wl.get("busy", {}).items()}
        lines.append(f"{name:12s} " + " ".join(
            f"{wl['slowdown'][c]:17.2f}" if c in wl["slowdown"] else f"{'-':>17s}"
            for c in cols))
    return "\n".join(lines)


def select(quick: bool = False, only: str = "") -> list[str]:
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in WORKLOADS]
        if unknown:
            raise ValueError(f"unknown workload(s) {', '.join(unknown)}; known: "
                             f"{', '.join(WORKLOADS)}")
        return wanted
    return [w for w in WORKLOADS if not quick or w in QUICK]


def main(quick: bool = False, only: str = "", dtype: str = "float32", busy: bool = False,
         json_path: str | None = None) -> int:
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    run(select(quick, only), dtype=dtype, busy=busy, json_path=json_path)
    return 0
