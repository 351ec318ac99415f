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
