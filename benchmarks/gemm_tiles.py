"""GFLOP/s of the loops' GEMM (engine.blas.gemm) on one BLAS thread, in one call and in
the tiles engine.blas.tiles picks: ``python benchmarks/gemm_tiles.py``.

The shapes are a part's per-step products of the bench's workloads and a few beside
them; the table in engine/blas.py came from this. Numbers go in notes, never in tests.
"""

import sys
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from engine import blas

SHAPES = [(16, 128, 512), (16, 512, 128), (32, 512, 2048), (32, 2048, 512), (64, 512, 2048),
          (8, 512, 2048), (16, 1024, 4096)]  # (m, k, n): (m, k) @ (k, n)


@numba.njit(nogil=True)
def _repeat(a, b, c, reps, block):
    for _ in range(reps):
        blas.gemm(a, b, c, False, c.dtype.type(1), block)


def rate(m, k, n, dtype, block) -> float:
    """Best GFLOP/s of 7 timings of c += a @ b."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    c = np.zeros((m, n), dtype)
    reps = max(int(4e8 / (2 * m * k * n)), 3)
    _repeat(a, b, c, 2, block)
    best = np.inf
    for _ in range(7):
        t0 = time.perf_counter()
        _repeat(a, b, c, reps, block)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * m * k * n / best / 1e9


def main() -> int:
    for dtype in (np.float32, np.float64):
        if blas.gemm_symbol(dtype) is None:
            print(f"{np.dtype(dtype).name}: no CBLAS gemm in numpy's BLAS here")
            continue
        limit = blas.block_limit(dtype)
        print(f"{np.dtype(dtype).name}, tile limit {limit:,} multiply-adds "
              f"(0: this BLAS gets no tiles)")
        with threadpool_limits(1, "blas"):
            for m, k, n in SHAPES:
                tile = blas.tiles(m, k, n, limit, np.dtype(dtype).itemsize)
                one, tiled = rate(m, k, n, dtype, 0), rate(m, k, n, dtype, limit)
                print(f"  {m}x{k} @ {k}x{n}: one call {one:6.1f} GFLOP/s, tiles "
                      f"{tile[0]}x{tile[1]}x{tile[2]} {tiled:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
