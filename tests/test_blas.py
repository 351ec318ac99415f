"""engine/blas.py: numpy's BLAS GEMM called from compiled loops, and the tiny GEMM."""

import numba
import numpy as np
import pytest

from engine import blas
from rnn import cells
from rnn.program.loop import Plan

SHAPES = [(1, 1, 1), (1, 32, 128), (3, 5, 4), (2, 7, 9), (4, 13, 6)]  # (m, k, n)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_small_gemm_matches_numpy(dtype, m, k, n):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k)).astype(dtype)  # as a weight: (out, in)
    g = rng.standard_normal((m, n)).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-13
    c = np.full((m, n), np.nan, dtype)  # beta = 0 never reads what was there
    blas.small_gemm(a, w, c, True, 0)
    np.testing.assert_allclose(c, a @ w.T, rtol=tol, atol=tol)
    d0 = rng.standard_normal((m, k)).astype(dtype)
    d = d0.copy()
    blas.small_gemm(g, w, d, False, 1)  # d += g @ w: the backward's accumulate
    np.testing.assert_allclose(d, d0 + g @ w, rtol=tol, atol=tol)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the BLAS routine runs in compiled code")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpys_gemm_is_found_and_used_by_the_loops(dtype):
    symbol = blas.gemm_symbol(dtype)
    if symbol is None:
        pytest.skip("no CBLAS gemm in numpy's BLAS here: the loops use np.dot")
    src = Plan(cells.lstm(2, 3), dtype).source()
    assert "import gemm as _mm" in src and "dot_gemm" not in src
    fwd, bwd = src.split("def backward")
    assert "R1, BLOCK," in fwd and "R1, BLOCK," in bwd  # the tiles' limit, an argument
    assert fwd.count(", BLOCK)") == 1 and bwd.count(", BLOCK)") == 1  # the GEMMs take it


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the BLAS routine runs in compiled code")
def test_tiles_only_where_openblas_has_small_kernels(monkeypatch):
    """OpenBLAS 0.3.17 on, on the cores it has small-matrix kernels for: its limit; any
    other library, version or core: no tiles. UNROLL_GEMM_BLOCK sets it."""
    if blas.gemm_symbol("float32") is None:
        pytest.skip("no CBLAS gemm in numpy's BLAS here")
    monkeypatch.delenv("UNROLL_GEMM_BLOCK", raising=False)
    cases = [({"internal_api": "openblas", "version": "0.3.31.188.0",
               "architecture": "SkylakeX"}, 1_000_000),
             ({"internal_api": "openblas", "version": "0.3.30", "architecture": "Cooperlake"},
              1_000_000),
             ({"internal_api": "openblas", "version": "0.3.16", "architecture": "SkylakeX"}, 0),
             ({"internal_api": "openblas", "version": "0.3.30", "architecture": "Haswell"}, 0),
             ({"internal_api": "openblas", "version": "0.3.dev", "architecture": "SkylakeX"}, 0),
             ({"internal_api": "mkl", "version": "2024.1", "architecture": None}, 0),
             ({"internal_api": "openblas", "version": None, "architecture": "SkylakeX"}, 0),
             ({"internal_api": "blis", "version": None, "architecture": None}, 0)]
    for info, want in cases:
        monkeypatch.setitem(blas._found_lib, np.dtype("float32"), info)
        assert blas.block_limit("float32") == want, info
    monkeypatch.setitem(blas._found_lib, np.dtype("float32"), cases[0][0])
    monkeypatch.setenv("UNROLL_GEMM_BLOCK", "0")
    assert blas.block_limit("float32") == 0
    monkeypatch.setenv("UNROLL_GEMM_BLOCK", "250000")
    assert blas.block_limit("float32") == 250_000
    monkeypatch.setenv("UNROLL_GEMM_BLOCK", "1e6")
    assert blas.block_limit("float32") == 1_000_000
    monkeypatch.setenv("UNROLL_GEMM_BLOCK", "lots")
    with pytest.warns(RuntimeWarning, match="UNROLL_GEMM_BLOCK='lots' is not a count"):
        assert blas.block_limit("float32") == 1_000_000  # as the library says


def test_no_routine_for_other_dtypes():
    assert blas.gemm_symbol("int64") is None


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the BLAS routine runs in compiled code")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m,k,n", SHAPES + [(16, 128, 512), (33, 40, 70)])
def test_the_loops_gemms_match_numpy(dtype, m, k, n):
    """blas.gemm (tiny products in small_gemm, the rest through numpy's BLAS) and
    gemm_tn, the weight's cotangent over rows of a chunk; the np.dot versions too."""
    if blas.gemm_symbol(dtype) is None:
        pytest.skip("no CBLAS gemm in numpy's BLAS here")
    rng = np.random.default_rng(m + k + n)
    a, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((n, k)).astype(dtype)
    g = rng.standard_normal((m, n)).astype(dtype)
    tol = 1e-4 if dtype == "float32" else 1e-12
    for mm, tn in ((blas.gemm, blas.gemm_tn), (blas.dot_gemm, blas.dot_gemm_tn)):
        c = np.full((m, n), np.nan, dtype)
        mm(a, w, c, True, np.zeros((), dtype)[()])
        np.testing.assert_allclose(c, a @ w.T, rtol=tol, atol=tol)
        d0 = rng.standard_normal((m, k)).astype(dtype)
        d = d0.copy()
        mm(g, w, d, False, np.ones((), dtype)[()])
        np.testing.assert_allclose(d, d0 + g @ w, rtol=tol, atol=tol)
        ring = rng.standard_normal((3, m, n)).astype(dtype)  # rows 1..: a chunk's g, x
        xs = rng.standard_normal((3, m, k)).astype(dtype)
        e0 = rng.standard_normal((n, k)).astype(dtype)
        e = e0.copy()
        tn(ring, m, xs, m, 2 * m, e)
        want = e0 + ring[1:].reshape(-1, n).T @ xs[1:].reshape(-1, k)
        np.testing.assert_allclose(e, want, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="row-major"):
        blas.gemm(a[:, ::2], w[:, ::2], np.empty((m, n), dtype), True, np.zeros((), dtype)[()])


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the BLAS routine runs in compiled code")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block", [0, 300_000, 1_000_000])
@pytest.mark.parametrize("m,k,n", [(16, 128, 512), (33, 600, 200), (40, 1100, 130), (5, 64, 70)])
def test_gemm_in_tiles_matches_numpy(dtype, block, m, k, n):
    """gemm in tiles of at most ``block`` multiply-adds (rows, columns and inner pieces,
    with ragged last tiles) into views of bigger arrays, overwriting (beta 0) and adding
    (beta 1): numpy's product."""
    if blas.gemm_symbol(dtype) is None:
        pytest.skip("no CBLAS gemm in numpy's BLAS here")
    rng = np.random.default_rng(m + k + n + block)
    a = rng.standard_normal((m + 3, k + 2)).astype(dtype)[1:m + 1, 2:]  # strided rows
    b = rng.standard_normal((k, n + 5)).astype(dtype)[:, 5:]
    tol = 2e-4 if dtype == "float32" else 1e-11
    for beta in (0, 1):
        big = np.full((m, n + 7), np.nan if beta == 0 else 0.5, dtype)
        before = big.copy()
        c = big[:, 3:n + 3]
        want = a @ b + (0 if beta == 0 else c)
        blas.gemm(a, b, c, False, np.asarray(beta, dtype)[()], block)
        np.testing.assert_allclose(c, want, rtol=tol, atol=tol)
        for edge in (np.s_[:, :3], np.s_[:, n + 3:]):  # nothing outside c written (NaN: equal)
            np.testing.assert_array_equal(big[edge], before[edge])


@pytest.mark.parametrize("itemsize", [4, 8])
def test_tiles_stay_under_the_limit(itemsize):
    """A tile holds at most ``block`` multiply-adds, its inner pieces even and at most
    2 KB of a row, its columns a power of two from 64; one call where no tile fits or
    none is needed."""
    for m in (1, 4, 8, 16, 32, 64, 100):
        for k in (32, 128, 300, 512, 2048):
            for n in (64, 384, 512, 2048):
                for block in (0, 100_000, 1_000_000):
                    rows, w, kc = blas.tiles(m, k, n, block, itemsize)
                    if (rows, w, kc) == (m, n, k):
                        assert block == 0 or m * k * n <= block or \
                            64 * min(m, 8) * min(k, 2048 // itemsize) > block
                        continue
                    assert rows * w * kc <= block and kc * itemsize <= 2048
                    assert w >= 64 and w & (w - 1) == 0 and rows <= m and kc <= k
                    pieces = -(-k // kc)
                    assert k - (pieces - 1) * kc >= kc - pieces  # even pieces
