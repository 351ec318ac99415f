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
    assert f"import {symbol} as _GEMM" in src and "np.dot" not in src


def test_no_routine_for_other_dtypes():
    assert blas.gemm_symbol("int64") is None
