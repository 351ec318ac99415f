"""engine/kernels.py's own elementwise math (no libm): accuracy against numpy in ULP over
dense sweeps of the whole range, special values, dtypes, no floating-point exceptions
(with NUMBA_DISABLE_JIT=1 the functions run as plain Python: float32 on numpy scalars,
float64 on Python floats and, checked here too, on numpy scalars), and that a loop over
them vectorizes."""

import re

import numba
import numpy as np
import pytest

from engine import kernels as k

JIT = not numba.config.DISABLE_JIT
N = 1 << 15 if JIT else 1 << 10  # points per part of a sweep (plain Python: ~5 us a point)
DTYPES = [np.float64, np.float32]
LD = np.longdouble
WIDE = np.finfo(LD).nmant > np.finfo(np.float64).nmant  # x87 80-bit or quad

# the largest error over sweeps of millions of points (see _sweep), float64 / float32
MAX_ULP = {"exp": (1, 1), "log": (1, 1), "log1p": (1, 1), "tanh": (2, 1),
           "sigmoid": (2, 2), "softplus": (2, 2)}


@numba.njit  # not cached: Numba's cache would not see a change in engine/kernels.py
def _log1p_kernel(x):  # the one scalar function without an array kernel in engine
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = k.scalar_log1p(x[i])
    return out


KERNELS = {"exp": k.exp, "log": k.log, "log1p": _log1p_kernel, "tanh": k.tanh,
           "sigmoid": k.sigmoid, "softplus": k.softplus}


def _reference(name, x):
    """numpy's float64 result (or, for sigmoid and softplus, which numpy lacks, one in
    long double), rounded to x's dtype."""
    with np.errstate(all="ignore"):
        d, a = x.astype(np.float64), np.abs(x.astype(LD))
        if name == "sigmoid":
            e = np.exp(-a)
            y = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        elif name == "softplus":
            y = np.maximum(x.astype(LD), 0) + np.log1p(np.exp(-a))
        else:
            y = getattr(np, name)(d)
        return y.astype(x.dtype)


def _ulp(got, want):
    """|got - want| in units of the spacing of floats at want, in want's dtype; 0 where
    both are the same inf or both NaN, inf where one is NaN or inf and the other not."""
    with np.errstate(all="ignore"):
        d = np.abs(got.astype(LD) - want.astype(LD)) / np.spacing(np.abs(want)).astype(LD)
    d = np.where((got == want) | (np.isnan(got) & np.isnan(want)), 0, d)
    return np.where(np.isnan(d), np.inf, d).astype(np.float64)


SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, 0.625, -0.625, 1e-10, -1e-10, 1e-300, -1e-300,
           5e-324, -5e-324, 1e-40, 1e-45, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan,
           709.782712893384, 709.7827128933841, -708.4, -745.1332191019411, -745.14,
           88.72283, 88.72284, -87.33, -103.97208, -103.9721, 2.2250738585072014e-308,
           1.1754943508222875e-38, 1.7976931348623157e308, 3.4028234663852886e38]
EDGES = [1.0, 0.7071, 1.4142, 0.625, 9.01, 10.0, 19.06, 20.0, 88.72283, 87.33, 103.97,
         709.78, 708.4, 745.13, 1.1754943508222875e-38, 2.2250738585072014e-308]  # and -


def _sweep(dtype, n=N, seed=0):
    """Random bit patterns (every finite value, uniform in the exponent), linear sweeps
    of the ranges where the functions bend, magnitudes from the subnormals up, runs of
    consecutive floats at each threshold and branch point, and the special values."""
    rng = np.random.default_rng(seed)
    it = np.int64 if dtype == np.float64 else np.int32
    bits = rng.integers(np.iinfo(it).min, np.iinfo(it).max, n, dtype=it).view(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    mags = np.geomspace(tiny, 1.0, n)
    lo = -760 if dtype == np.float64 else -110
    parts = [bits[np.isfinite(bits)], np.linspace(lo, -lo, n), np.linspace(-25, 25, n),
             np.linspace(-1, 1, n), mags, -mags]
    for c in EDGES:
        for s in (1, -1):
            b = np.asarray(s * c, dtype).view(it)
            parts.append((b + np.arange(-n // 32, n // 32, dtype=it)).view(dtype))
    with np.errstate(all="ignore"):
        parts.append(np.asarray(SPECIAL).astype(dtype))
        return np.concatenate([np.asarray(p).astype(dtype) for p in parts])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(MAX_ULP))
def test_max_ulp_against_numpy(name, dtype):
    if name in ("sigmoid", "softplus") and dtype == np.float64 and not WIDE:
        pytest.skip("no long double wider than float64 for a float64 reference")
    x = _sweep(dtype)
    with np.errstate(all="raise"):
        got = KERNELS[name](x)
    assert got.dtype == dtype
    want = _reference(name, x)
    u = _ulp(got, want)
    i = int(np.argmax(u))
    bound = MAX_ULP[name][DTYPES.index(dtype)]
    assert u[i] <= bound, f"{u[i]} ULP at x={x[i]!r}: got {got[i]!r}, want {want[i]!r}"


def test_the_ulp_measure_counts_ulp():
    want = np.array([1.0, 1e-300, 5e-324, 3.0, np.inf, np.nan, 0.0])
    got = np.nextafter(np.nextafter(np.nextafter(want, np.inf), np.inf), np.inf)
    got[4:] = [np.inf, np.nan, 0.0]
    np.testing.assert_array_equal(_ulp(got, want), [3, 3, 3, 3, 0, 0, 0])
    assert _ulp(np.array([np.nan, 1.0]), np.array([1.0, np.inf])).tolist() == [np.inf] * 2
    y = np.float32([1.0])
    assert _ulp(y + np.spacing(y) * 4, y)[0] == 4


INF, NAN = np.inf, np.nan
EXPECT = {  # exact values
    "exp": [(-INF, 0.0), (INF, INF), (0.0, 1.0), (-0.0, 1.0), (1e4, INF), (-1e4, 0.0),
            (1e-300, 1.0)],
    "log": [(0.0, -INF), (-0.0, -INF), (-1.0, NAN), (-1e-30, NAN), (-INF, NAN), (INF, INF),
            (1.0, 0.0)],
    "log1p": [(-1.0, -INF), (-2.0, NAN), (-INF, NAN), (INF, INF), (0.0, 0.0), (1e-300, 1e-300)],
    "tanh": [(INF, 1.0), (-INF, -1.0), (1e4, 1.0), (-1e4, -1.0), (0.0, 0.0), (1e-10, 1e-10),
             (-1e-10, -1e-10), (5e-324, 5e-324)],
    "sigmoid": [(-INF, 0.0), (INF, 1.0), (0.0, 0.5), (1e4, 1.0), (-1e4, 0.0)],
    "softplus": [(-INF, 0.0), (INF, INF), (1e4, 1e4), (-1e4, 0.0), (1e30, 1e30),
                 (-1e30, 0.0)],
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(EXPECT))
def test_special_values(name, dtype):
    cases = EXPECT[name] + [(NAN, NAN)]
    with np.errstate(all="ignore"):
        x = np.array([c[0] for c in cases]).astype(dtype)
        want = np.array([c[1] for c in cases]).astype(dtype)
    with np.errstate(all="raise"):
        got = KERNELS[name](x)
    np.testing.assert_array_equal(got, want)
    if name == "tanh":  # odd: tanh(-0) = -0
        assert np.signbit(KERNELS[name](np.array([-0.0], dtype))[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_scalar_functions_keep_the_dtype(dtype):
    v = dtype(0.3)
    for name in MAX_ULP:
        y = getattr(k, "scalar_" + name)(v)
        assert type(y) is dtype, name
        assert y == KERNELS[name](np.array([v]))[0]


def test_no_floating_point_exception_anywhere():
    """Every kernel that uses them, on every sweep point, under np.errstate(all="raise"):
    the point of the clamps when NUMBA_DISABLE_JIT=1 runs them on numpy scalars."""
    for dtype in DTYPES:
        x = _sweep(dtype, n=N // 4, seed=1)
        rows = np.clip(x[np.isfinite(x)], -1e30, 1e30)  # x - max(x) stays finite
        with np.errstate(all="raise"):
            for f in KERNELS.values():
                f(x)
            k.softplus_grad(np.ones_like(x), x)
            k.log_softmax_rows(rows[: rows.size // 4 * 4].reshape(-1, 4))
    if not JIT:  # the float64 path runs on Python floats there; its clamps hold on numpy's
        x = _sweep(np.float64, seed=2)
        with np.errstate(all="raise"):
            for f in (k._exp64, k._log64, k._log1p64, k._tanh64, k._sigmoid64, k._softplus64):
                for v in x:
                    f(v)


@pytest.mark.skipif(not JIT, reason="vectorization is LLVM's")
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_loop_over_them_vectorizes(dtype):
    @numba.njit  # the default ("python") error model, as a user would write it
    def f(x, out):
        for i in range(x.size):
            out[i] = k.scalar_tanh(x[i]) + k.scalar_log(x[i])

    x = np.ones(8, dtype)
    f(x, x.copy())
    llvm = next(iter(f.inspect_llvm().values()))
    assert re.search(r"<\d+ x %s>" % ("double" if dtype == np.float64 else "float"), llvm)
    assert not re.search(r"call \S+ @(llvm\.)?(exp|log|tanh|expm1|log1p)", llvm)
    if dtype == np.float32:  # float32 in, float32 arithmetic throughout
        assert not re.search(r"fpext|x double>", llvm)
