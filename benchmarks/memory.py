"""Memory and time of the first BPTT at long T: ``python benchmarks/memory.py [T] [B]``.

An LSTM(8 -> 32), float64, batch B (4), T steps (10,000), in this fresh process: the
time of the first ``rnn.bptt`` (the kernels come from the on-disk cache after the first
run ever) and the process's peak resident memory after imports, after the data, and
after the BPTT (Linux's VmHWM, what the issue's "< 300 MB at T = 10,000" is about).
"""

import sys
import time


def peak_mb() -> float:
    with open("/proc/self/status") as f:  # VmHWM: this process's peak resident memory
        return int(f.read().split("VmHWM:")[1].split()[0]) / 1024


def main(T: int = 10_000, B: int = 4) -> None:
    import numpy as np

    import rnn

    print(f"after imports: peak {peak_mb():.0f} MB")
    model = rnn.Model(rnn.cells.lstm(8, 32), dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((B, T, 8)), rng.standard_normal((B, T, 32))
    print(f"after the data (xs, targets: {(xs.nbytes + ys.nbytes) / 2**20:.0f} MB): peak "
          f"{peak_mb():.0f} MB")
    t = time.perf_counter()
    rnn.bptt(model, xs, ys)
    print(f"first rnn.bptt, T={T:,}, B={B}: {time.perf_counter() - t:.2f} s, process peak "
          f"{peak_mb():.0f} MB")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
