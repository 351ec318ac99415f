"""numpy's own BLAS GEMM, callable from compiled loops.

Numba's ``np.dot`` goes through scipy's BLAS, which may be another (older, slower) build
than the one numpy links: here scipy's OpenBLAS ran a recurrent step's GEMM at 40
GFLOP/s where numpy's ran at 65. So the loops call numpy's CBLAS ``gemm`` directly.

``gemm_symbol(dtype)`` looks the routine up in the BLAS libraries threadpoolctl finds
(numpy's first), checks it on a small product against numpy, and registers its address
with LLVM under a fixed name (``unroll_sgemm`` / ``unroll_dgemm``). Generated code calls
it by that name through ``SGEMM`` / ``DGEMM``, so Numba's on-disk cache stays valid:
the address is resolved when the cached code is loaded, never baked into it. Where no
routine is found or the check fails, the answer is None and the loops use ``np.dot``.

Integers are passed as 64-bit. An LP64 library reads the low half of each register or
8-byte stack slot, an ILP64 one the whole: either way the values come through on the
64-bit Linux and Windows ABIs, the only ones this path is used on.
"""

import ctypes
import os
import platform
import sys
import warnings

import numba
import numpy as np
from numba import types
from numba.extending import overload

# CBLAS enums
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
# (prefix, suffix) of the CBLAS names builds export: scipy-openblas (numpy's wheels,
# ILP64 and LP64), OpenBLAS / MKL ILP64, and plain CBLAS
_NAMES = (("scipy_cblas_", "64_"), ("cblas_", "64_"), ("cblas_", "_64"), ("scipy_cblas_", ""),
          ("cblas_", ""))


def _signature(f):
    i = types.int64
    return types.void(i, i, i, i, i, i, f, i, i, i, i, f, i, i)


# below this many multiply-adds (m n k) a GEMM runs faster in small_gemm than through
# a BLAS call, whose fixed cost is 1-2 us (a batch of one through a tiny LSTM)
SMALL = 8192
SGEMM = types.ExternalFunction("unroll_sgemm", _signature(types.float32))
DGEMM = types.ExternalFunction("unroll_dgemm", _signature(types.float64))
_found: dict = {}


def gemm_symbol(dtype) -> str | None:
    """"SGEMM" or "DGEMM" once numpy's BLAS routine for ``dtype`` is registered with
    LLVM; None where it is not to be had (the caller uses np.dot)."""
    if numba.config.DISABLE_JIT:  # an ExternalFunction runs in compiled code only
        return None
    dtype = np.dtype(dtype)
    if dtype not in _found:
        _found[dtype] = _register(dtype)
    return _found[dtype]


def _register(dtype):
    if dtype.char not in "fd" or sys.maxsize < 2**32 or not (
            sys.platform.startswith("linux") or sys.platform == "win32") or \
            platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        return None
    t = "s" if dtype.char == "f" else "d"
    ctype = ctypes.c_float if t == "s" else ctypes.c_double
    for info in _blas_libs():
        try:
            lib = ctypes.CDLL(info["filepath"])
        except OSError:
            continue
        for prefix, suffix in _NAMES:
            fn = getattr(lib, f"{prefix}{t}gemm{suffix}", None)
            if fn is None:
                continue
            fn.restype = None
            i, p = ctypes.c_int64, ctypes.c_void_p
            fn.argtypes = [i, i, i, i, i, i, ctype, p, i, p, i, ctype, p, i]
            if _works(fn, dtype):
                import llvmlite.binding as llvm

                llvm.add_symbol(f"unroll_{t}gemm", ctypes.cast(fn, ctypes.c_void_p).value)
                _found_lib[dtype] = info
                return f"{t.upper()}GEMM"
    return None


def _blas_libs() -> list[dict]:
    """The BLAS libraries loaded in this process as threadpoolctl describes them (path,
    version, architecture), numpy's first."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401 - so that scipy's is listed too
    except ImportError:
        pass
    from threadpoolctl import threadpool_info

    libs = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return sorted(libs, key=lambda i: "numpy" not in i["filepath"])


def _works(fn, dtype) -> bool:
    """The routine computes c = a @ b.T and c += a @ b as numpy does, on odd shapes."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5)).astype(dtype), rng.standard_normal((4, 5)).astype(dtype)
    c = np.full((3, 4), np.nan, dtype)
    fn(ROW_MAJOR, NO_TRANS, TRANS, 3, 4, 5, 1.0, a.ctypes.data, 5, b.ctypes.data, 5, 0.0,
       c.ctypes.data, 4)
    d, e = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal((3, 5)).astype(dtype)
    f = np.ascontiguousarray(b.T)  # (5, 4)
    want = d + e @ f
    fn(ROW_MAJOR, NO_TRANS, NO_TRANS, 3, 4, 5, 1.0, e.ctypes.data, 5, f.ctypes.data, 4, 1.0,
       d.ctypes.data, 4)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    return bool(np.allclose(c, a @ b.T, atol=tol) and np.allclose(d, want, atol=tol))


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def small_gemm(a, b, c, trans_b, beta):
    """c = a @ (b.T if trans_b else b) + beta * c, for the tiny products where a BLAS
    call costs more than the arithmetic; beta is 0 or 1. Sums may be reassociated (so
    that they vectorize), as a BLAS's are."""
    m, k = a.shape
    n = c.shape[1]
    zero = c.dtype.type(0)
    if trans_b:  # rows of a and b are contiguous: dot products
        for i in range(m):
            for j in range(n):
                s = zero
                for q in range(k):
                    s += a[i, q] * b[j, q]
                c[i, j] = s if beta == 0 else s + c[i, j]
        return
    for i in range(m):  # c[i] += a[i, q] * b[q], four rows of b at a time
        if beta == 0:
            c[i, :] = zero
        q = 0
        while q + 4 <= k:
            v0, v1, v2, v3 = a[i, q], a[i, q + 1], a[i, q + 2], a[i, q + 3]
            for j in range(n):
                c[i, j] += (v0 * b[q, j] + v1 * b[q + 1, j]) + (v2 * b[q + 2, j] + v3 * b[q + 3, j])
            q += 4
        for r in range(q, k):
            for j in range(n):
                c[i, j] += a[i, r] * b[r, j]


# OpenBLAS (0.3.17 on) runs a GEMM of at most 100^3 multiply-adds on these cores in its
# "small matrix" kernels: no packing of the operands, which a recurrent step's product
# otherwise pays at every call. GFLOP/s on one thread here (AMD EPYC, AVX-512), in one
# call / in the tiles of ``tiles`` (rows x columns x inner), measured in one run
# (``python benchmarks/gemm_tiles.py``):
#                                         float32                 float64
#   16x128 @ 128x512 (small-lstm, forward)  66 / 114 (16x256x128)   39 / 56 (16x256x128)
#   16x512 @ 512x128 (small-lstm, backward) 76 / 115 (16x64x512)    36 / 55 (16x128x256)
#   32x512 @ 512x2048 (medium-lstm, fwd)    62 / 95  (16x64x512)    45 / 48 (32x64x256)
#   32x2048 @ 2048x512 (medium-lstm, bwd)   80 / 111 (16x64x512)    41 / 46 (32x64x256)
#   64x512 @ 512x2048                       81 / 101 (16x64x512)    46 / 46 (16x128x256)
#   8x512 @ 512x2048                        35 / 103 (8x128x512)    33 / 52 (8x256x256)
#   16x1024 @ 1024x4096                     44 / 47  (16x64x512)    27 / 24 (16x128x256)
# Tiles of fewer than 64 columns, and widths that are no power of two, ran slower
# (64x512 @ 512x2048 in tiles 64x16: 29 against 81; 16x512 @ 512x2048: 104 in tiles
# 16x64, 55 16x112, 33 16x48); so did float64 pieces of 512 (4 KB), by the shape.
# (Medium-lstm's parts are 32 rows of a batch of 64; small-lstm's 16 of 32.)
_SMALL_KERNELS = ("skylakex", "cooperlake", "sapphirerapids")
_SMALL_LIMIT = 1_000_000  # OpenBLAS's: M N K <= 100.0 * 100.0 * 100.0
_found_lib: dict = {}  # dtype -> threadpoolctl's description of the library registered


def block_limit(dtype) -> int:
    """The most multiply-adds a BLAS call of the loops' GEMMs should have, for
    ``gemm``'s ``block``: OpenBLAS's small-matrix limit where its build has those kernels
    for this CPU, else 0 (no tiles). ``UNROLL_GEMM_BLOCK`` (a count, as 1000000 or 1e6;
    0 for none) sets it."""
    fixed = os.environ.get("UNROLL_GEMM_BLOCK", "").strip()
    if fixed:
        try:
            return max(int(float(fixed)), 0)
        except (ValueError, OverflowError):
            warnings.warn(f"UNROLL_GEMM_BLOCK={fixed!r} is not a count; ignored",
                          RuntimeWarning, stacklevel=2)
    if gemm_symbol(dtype) is None:
        return 0
    info = _found_lib.get(np.dtype(dtype), {})
    if info.get("internal_api") != "openblas":
        return 0
    try:  # threadpoolctl gives None where a library does not say
        version = tuple(int(p) for p in str(info.get("version") or "").split(".")[:3])
    except ValueError:
        version = ()
    arch = str(info.get("architecture") or "").lower()
    return _SMALL_LIMIT if version >= (0, 3, 17) and arch in _SMALL_KERNELS else 0


@numba.njit(cache=True, nogil=True)
def tiles(m, k, n, block, itemsize):
    """(rows, columns, inner) of the tiles ``gemm`` computes an (m, k) @ (k, n) product
    in, each of at most ``block`` multiply-adds: the inner size in even pieces of at most
    2 KB of a's rows (512 in float32, 256 in float64), columns a power of two, at least
    64, as wide as fits all rows, else 16 rows, else 8. (m, n, k), one call, where the
    product fits or no tile does."""
    most = 2048 // itemsize
    pieces = (k + most - 1) // most
    kc = (k + pieces - 1) // pieces
    rows = m
    while rows > 8 and 64 * rows * kc > block:
        rows = 16 if rows > 16 else 8
    if block <= 0 or m * k * n <= block or 64 * rows * kc > block:
        return m, n, k
    w = 64
    while 2 * w * rows * kc <= block and w < n:
        w *= 2
    return rows, w, kc


# ---- the GEMMs the generated loops call (rnn/program/loop.py), compiled and cached here
# once, not again in every cell's module
def _xgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """CBLAS gemm of alpha's precision; compiled code only (where SGEMM / DGEMM are)."""
    raise NotImplementedError("_xgemm runs in compiled code")


@overload(_xgemm)
def _ol_xgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    routine = SGEMM if alpha == types.float32 else DGEMM

    def impl(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        routine(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    return impl


@numba.njit(cache=True, nogil=True)
def gemm(a, b, c, trans_b, beta, block=0):
    """c = a @ (b.T if trans_b else b) + beta * c (beta 0 or 1) for row-major 2-d arrays:
    a tiny product in small_gemm, others by numpy's BLAS (``gemm_symbol`` registered it),
    in tiles of at most ``block`` multiply-adds each where that pays (0: one call;
    ``tiles``)."""
    if a.strides[1] != a.itemsize or b.strides[1] != b.itemsize or \
            c.strides[1] != c.itemsize:
        raise ValueError("unroll: a GEMM operand is not row-major")
    m, k, n = a.shape[0], a.shape[1], c.shape[1]
    if m * k * n <= SMALL:
        small_gemm(a, b, c, trans_b, beta)
        return
    mr, w, kc = tiles(m, k, n, block, a.itemsize) if not trans_b else (m, n, k)
    lda, ldb, ldc = a.strides[0] // a.itemsize, b.strides[0] // b.itemsize, \
        c.strides[0] // c.itemsize
    tb = TRANS if trans_b else NO_TRANS
    one, size = c.dtype.type(1), a.itemsize
    for q in range(0, k, kc):  # a[:, q:q+kc] @ b[q:q+kc], added to the pieces before
        bq = beta if q == 0 else one
        for i in range(0, m, mr):  # rows i .. i + mr - 1 of a and c
            for j in range(0, n, w):  # columns j .. j + w - 1 of b and c
                _xgemm(ROW_MAJOR, NO_TRANS, tb, min(mr, m - i), min(w, n - j),
                       min(kc, k - q), one, a.ctypes.data + (i * lda + q) * size, lda,
                       b.ctypes.data + (q * ldb + j) * size, ldb, bq,  # (trans_b: q = j = 0)
                       c.ctypes.data + (i * ldc + j) * size, ldc)


@numba.njit(cache=True, nogil=True)
def gemm_tn(a, a0, b, b0, rows, c):
    """c += a[a0:a0+rows].T @ b[b0:b0+rows], rows of C-ordered a, b of any rank (rows of
    their last axis), c row-major: a weight's cotangent from a chunk of steps."""
    m, k = a.shape[-1], b.shape[-1]
    if a.strides[-1] != a.itemsize or b.strides[-1] != b.itemsize or \
            c.strides[-1] != c.itemsize or \
            a.strides[0] * a.shape[0] != a.size * a.itemsize or \
            b.strides[0] * b.shape[0] != b.size * b.itemsize:
        raise ValueError("unroll: a GEMM operand is not in C order")
    one = c.dtype.type(1)
    _xgemm(ROW_MAJOR, TRANS, NO_TRANS, m, k, rows, one, a.ctypes.data + a0 * m * a.itemsize,
           m, b.ctypes.data + b0 * k * b.itemsize, k, one, c.ctypes.data,
           c.strides[0] // c.itemsize)


# where no BLAS routine is to be had (and with the JIT off): the same through np.dot
@numba.njit(cache=True, nogil=True)
def dot_gemm(a, b, c, trans_b, beta, block=0):
    p = np.dot(a, b.T) if trans_b else np.dot(a, b)
    if beta == 0:
        c[:] = p
    else:
        c += p


@numba.njit(cache=True, nogil=True)
def dot_gemm_tn(a, a0, b, b0, rows, c):
    c += np.dot(a.reshape(-1, a.shape[-1])[a0:a0 + rows].T,
                b.reshape(-1, b.shape[-1])[b0:b0 + rows])
