"""Numba kernels. They know nothing of graphs: arrays in, arrays out.

Every kernel works on flat contiguous arrays (the wrappers in ops.py reshape), keeps
the dtype of its input, stays finite where the math is finite, and raises nothing under
``np.errstate(all="raise")``, JIT or not.

The scalar functions (``scalar_exp``, ``scalar_log``, ``scalar_tanh``, ...) are our own,
not libm's: plain arithmetic (a range reduction, a polynomial, a rescaling by 2^k), so
that LLVM vectorizes a loop that calls them, which it cannot do across a libm call. A
float32 argument is computed in float32 arithmetic with float32 polynomials, anything
else in float64; each result is within 2 ULP of numpy's over the whole range
(tests/test_kernels.py sweeps them). They are branch-free: every part is computed on a
clamped argument, so that no intermediate overflows or underflows (which matters when
Numba is off and the arithmetic runs on numpy scalars under ``np.errstate(all="raise")``),
and the special cases (inf, NaN, 0, past the overflow threshold) are selected at the end.

Each is written once, as a Python function of a number, and runs two ways. Called with
a number (from Python, or with NUMBA_DISABLE_JIT=1) it computes. In jitted code a call
resolves to an intrinsic that runs the same function on an ``_IR`` value, whose
operators emit the LLVM instructions in place: the arithmetic lands inline in the
caller's loop, where LLVM vectorizes it, and Numba types one call per use instead of
inlining and typing the whole body (which made a cell with hundreds of sigmoids take
minutes to compile).
"""

import math
from functools import partial

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload

jit = partial(numba.njit, cache=True, nogil=True)
F32 = np.float32
INF, NAN = math.inf, math.nan


# ---- the two ways to run a scalar function
class _Emitter:
    """Where an intrinsic's instructions go: the IR builder, the float type and the
    integer type of the same width."""

    def __init__(self, context, builder, fty):
        self.b = builder
        self.f = context.get_value_type(fty)
        self.wide = fty.bitwidth == 64
        self.i = context.get_value_type(types.int64 if self.wide else types.int32)
        self.i32 = context.get_value_type(types.int32)
        self.fabs = builder.module.declare_intrinsic("llvm.fabs", [self.f])

    def val(self, x):
        return x.v if isinstance(x, _IR) else self.f(float(x))  # a number: a constant


class _IR:
    """An LLVM value (a float, or the i1 of a comparison) with Python's float operators,
    each emitting its IEEE instruction: the function computes the same bits either way.
    Division is a bare fdiv (no divisor below can be 0)."""

    __array_ufunc__ = None  # numpy scalars leave the operator to us
    __slots__ = ("e", "v")

    def __init__(self, e, v):
        self.e, self.v = e, v

    def _op(self, name, a, b):
        return _IR(self.e, getattr(self.e.b, name)(self.e.val(a), self.e.val(b)))

    def __add__(self, o): return self._op("fadd", self, o)
    def __radd__(self, o): return self._op("fadd", o, self)
    def __sub__(self, o): return self._op("fsub", self, o)
    def __rsub__(self, o): return self._op("fsub", o, self)
    def __mul__(self, o): return self._op("fmul", self, o)
    def __rmul__(self, o): return self._op("fmul", o, self)
    def __truediv__(self, o): return self._op("fdiv", self, o)
    def __rtruediv__(self, o): return self._op("fdiv", o, self)
    def __neg__(self): return self._op("fsub", -0.0, self)
    def __abs__(self): return _IR(self.e, self.e.b.call(self.e.fabs, [self.v]))

    def _cmp(self, op, o):  # ordered: False when either is NaN, as in Python
        return _IR(self.e, self.e.b.fcmp_ordered(op, self.v, self.e.val(o)))

    def __lt__(self, o): return self._cmp("<", o)
    def __le__(self, o): return self._cmp("<=", o)
    def __gt__(self, o): return self._cmp(">", o)
    def __ge__(self, o): return self._cmp(">=", o)
    def __eq__(self, o): return self._cmp("==", o)


def sel(c, a, b):
    """``a if c else b``, with both computed (so both must be safe to compute); one LLVM
    select, no branch."""
    if isinstance(c, _IR):
        e = c.e
        return _IR(e, e.b.select(c.v, e.val(a), e.val(b)))
    return a if c else b


def ldexp(p, k):
    """p * 2^k for an integer-valued float k, |k| <= 1100, rounded once. Emitted: 2^k is
    built from its bits in two halves; p * 2^(k >> 1) is exact and the second product
    rounds, into the subnormals or to 0 if need be."""
    if not isinstance(p, _IR):
        return type(p)(math.ldexp(float(p), int(k)))  # 0 below; callers keep it finite
    e, b = p.e, p.e.b
    mant, bias = (52, 1023) if e.wide else (23, 127)
    ki = b.fptosi(k.v, e.i32)  # to i32: AVX2 converts packed doubles to i32 only
    k1 = b.ashr(ki, e.i32(1))

    def pow2(kk):
        kk = b.sext(kk, e.i) if e.wide else kk
        return b.bitcast(b.shl(b.add(kk, e.i(bias)), e.i(mant)), e.f)

    return _IR(e, b.fmul(b.fmul(p.v, pow2(k1)), pow2(b.sub(ki, k1))))


def _split(x):
    """x = 2^k m with m in [sqrt(1/2), sqrt(2)), for a positive normal x, as (m, k).
    Emitted: subtracting the bits of sqrt(1/2) from x's leaves k in the exponent field
    (the borrow picks the half of the binade); taking k << mant off x's bits leaves m."""
    if not isinstance(x, _IR):
        m, k = math.frexp(float(x))  # m in [1/2, 1)
        m, k = (2 * m, k - 1) if m < float(type(x)(math.sqrt(0.5))) else (m, k)
        return type(x)(m), type(x)(k)
    e, b = x.e, x.e.b
    mant, off = (52, 0x3FE6A09E667F3BCD) if e.wide else (23, 0x3F3504F3)  # bits of sqrt(1/2)
    ix = b.bitcast(x.v, e.i)
    k = b.ashr(b.sub(ix, e.i(off)), e.i(mant))
    m = b.bitcast(b.sub(ix, b.shl(k, e.i(mant))), e.f)
    k = b.trunc(k, e.i32) if e.wide else k  # packed i64 -> double is not AVX2; i32 is
    return _IR(e, m), _IR(e, b.sitofp(k, e.f))


# ---- exp
# Cody-Waite reduction: x = k ln2 + r, k = round(x / ln2), |r| <= ln2/2, with ln2 split
# into a head whose product with k is exact and a tail; then e^x = 2^k e^r. k is
# rounded to an integer-valued float by adding and subtracting 1.5 * 2^(mantissa bits).
# float64, fdlibm e_exp.c (Sun Microsystems, 1993): 2 + P1 t + ... + P5 t^5, t = r^2, is
# a Remez fit (error < 2^-59) to r (e^r + 1) / (e^r - 1) on |r| <= ln2/2; with
# c = r - t (P1 + ... + P5 t^4), e^r = 1 + r + r c / (2 - c), < 1 ULP.
LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # head: 32 bits
INV_LN2 = 1.44269504088896338700e00
SHIFT = 6755399441055744.0  # 1.5 * 2^52
P1 = 1.66666666666666019037e-01
P2 = -2.77777777770155933842e-03
P3 = 6.61375632143793436117e-05
P4 = -1.65339022054652515390e-06
P5 = 4.13813679705723846039e-08
EXP_MAX = 709.782712893384  # the largest x with a finite e^x
EXP_MIN = -746.0  # below it e^x rounds to 0
EXP_TINY = 2.0**-54  # below it in magnitude e^x rounds to 1 (clamped to 0: r * r is safe)

# float32, Cephes expf.c (S. L. Moshier, Cephes Math Library 2.2): e^r = 1 + r + r^2 Q(r),
# Q of degree 5, peak error ~1 ULP; ln2 split into a 9-bit head and a tail.
LN2_HI32, LN2_LO32 = F32(0.693359375), F32(-2.12194440e-4)
INV_LN2_32 = F32(1.44269504088896341)
SHIFT32 = F32(12582912.0)  # 1.5 * 2^23
EQ0, EQ1, EQ2, EQ3, EQ4, EQ5 = (F32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
    5.0000001201e-1))
EXP_MAX32 = F32(88.72283)  # the largest float32 x with a finite float32 e^x
EXP_MIN32 = F32(-104.0)
EXP_TINY32 = F32(2.0**-30)
ZERO32, HALF32, ONE32, TWO32 = F32(0.0), F32(0.5), F32(1.0), F32(2.0)
INF32, NAN32 = F32(INF), F32(NAN)


def _exp64(x):
    xc = sel(x > EXP_MIN, x, EXP_MIN)  # NaN and -inf too
    xc = sel(xc < EXP_MAX, xc, EXP_MAX)
    xc = sel(abs(xc) > EXP_TINY, xc, 0.0)
    k = (xc * INV_LN2 + SHIFT) - SHIFT
    hi = xc - k * LN2_HI  # exact
    lo = k * LN2_LO
    r = hi - lo
    t = r * r
    c = r - t * (P1 + t * (P2 + t * (P3 + t * (P4 + t * P5))))
    y = ldexp(1.0 - ((lo - r * c / (2.0 - c)) - hi), k)
    y = sel(x <= EXP_MAX, y, INF)
    return sel(x == x, y, x)


def _exp32(x):
    xc = sel(x > EXP_MIN32, x, EXP_MIN32)
    xc = sel(xc < EXP_MAX32, xc, EXP_MAX32)
    xc = sel(abs(xc) > EXP_TINY32, xc, ZERO32)
    k = (xc * INV_LN2_32 + SHIFT32) - SHIFT32
    r = (xc - k * LN2_HI32) - k * LN2_LO32
    q = (((((EQ0 * r + EQ1) * r + EQ2) * r + EQ3) * r + EQ4) * r + EQ5) * (r * r)
    y = ldexp((q + r) + ONE32, k)
    y = sel(x <= EXP_MAX32, y, INF32)
    return sel(x == x, y, x)


# ---- log
# x = 2^k m, m in [sqrt(1/2), sqrt(2)), f = m - 1 (exact): log x = k ln2 + log(1 + f).
# float64, fdlibm e_log.c: s = f / (2 + f), log(1 + f) = 2s + s R(s^2), R a Remez fit of
# degree 7 (error < 2^-58.45), put together as below: < 1 ULP.
LG1 = 6.666666666666735130e-01
LG2 = 3.999999999940941908e-01
LG3 = 2.857142874366239149e-01
LG4 = 2.222219843214978396e-01
LG5 = 1.818357216161805012e-01
LG6 = 1.531383769920937332e-01
LG7 = 1.479819860511658591e-01
DBL_MAX = 1.7976931348623157e308
DBL_MIN = 2.2250738585072014e-308  # the smallest normal: below, scale by 2^54 first
TWO54 = 2.0**54

# float32, Cephes logf.c: log(1 + f) = f - f^2/2 + f^3 P(f), P of degree 8, ~1 ULP.
LP0, LP1, LP2, LP3, LP4, LP5, LP6, LP7, LP8 = (F32(c) for c in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
FLT_MAX = F32(3.4028234663852886e38)
FLT_MIN = F32(1.1754943508222875e-38)
TWO24 = F32(2.0**24)


def _log_core64(x, k0):
    """log(2^k0 x) for a positive, normal, finite x."""
    m, k = _split(x)
    k = k + k0
    f = m - 1.0
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    R = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7))) + w * (LG2 + w * (LG4 + w * LG6))
    return k * LN2_HI - ((hfsq - (s * (hfsq + R) + k * LN2_LO)) - f)


def _log_core32(x, k0):
    m, k = _split(x)
    k = k + k0
    f = m - ONE32
    z = f * f
    p = ((((((((LP0 * f + LP1) * f + LP2) * f + LP3) * f + LP4) * f + LP5) * f + LP6) * f
          + LP7) * f + LP8) * f * z
    return (f + ((p + k * LN2_LO32) - HALF32 * z)) + k * LN2_HI32


def _log64(x):
    xc = sel(x > 0.0, x, 1.0)  # NaN, 0, negatives, inf -> 1, selected at the end
    xc = sel(xc <= DBL_MAX, xc, 1.0)
    sub = xc < DBL_MIN  # subnormal: scaled exactly
    y = _log_core64(xc * sel(sub, TWO54, 1.0), sel(sub, -54.0, 0.0))
    y = sel(x > 0.0, y, sel(x == 0.0, -INF, NAN))
    return sel(x <= DBL_MAX, y, x)  # inf, NaN


def _log32(x):
    xc = sel(x > ZERO32, x, ONE32)
    xc = sel(xc <= FLT_MAX, xc, ONE32)
    sub = xc < FLT_MIN
    y = _log_core32(xc * sel(sub, TWO24, ONE32), sel(sub, F32(-24.0), ZERO32))
    y = sel(x > ZERO32, y, sel(x == ZERO32, -INF32, NAN32))
    return sel(x <= FLT_MAX, y, x)


# ---- log1p: log(w) for w = 1 + v rounded, plus the rounding error e = (1 + v) - w,
# which the exact two-sum (Knuth) gives: log(w + e) = log(w) + e / w to first order,
# and |e / w| < 2^-53, so the second-order term is far below an ULP. Past 2^60 (float32
# 2^30) e / w is dropped: negligible there, and it would underflow.
LOG1P_BIG, LOG1P_BIG32 = 2.0**60, F32(2.0**30)


def _log1p64(v):
    vc = sel(v > -1.0, v, 0.0)
    vc = sel(vc <= DBL_MAX, vc, 0.0)
    w = 1.0 + vc  # normal: >= 2^-53
    b = w - 1.0
    e = (1.0 - (w - b)) + (vc - b)
    e = sel(w < LOG1P_BIG, e, 0.0)
    y = _log_core64(w, 0.0) + e / w
    y = sel(v > -1.0, y, sel(v == -1.0, -INF, NAN))
    return sel(v <= DBL_MAX, y, v)


def _log1p32(v):
    vc = sel(v > -ONE32, v, ZERO32)
    vc = sel(vc <= FLT_MAX, vc, ZERO32)
    w = ONE32 + vc
    b = w - ONE32
    e = (ONE32 - (w - b)) + (vc - b)
    e = sel(w < LOG1P_BIG32, e, ZERO32)
    y = _log_core32(w, ZERO32) + e / w
    y = sel(v > -ONE32, y, sel(v == -ONE32, -INF32, NAN32))
    return sel(v <= FLT_MAX, y, v)


# ---- tanh, odd: on a = |x|, the sign set at the end. For a < 0.625, a + a z P(z),
# z = a^2 (relative accuracy down to the subnormals, where it is a); above,
# 1 - 2 / (e^2a + 1), with a clamped where tanh is 1 to the last bit (a > 19.1; float32
# a > 9.01) so that e^2a stays finite.
# float64, Cephes tanh.c: P/Q of degree 2/3 in z, peak error 2.5e-16.
TP0, TP1, TP2 = -9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3
TQ0, TQ1, TQ2 = 1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3
# float32, Cephes tanhf.c: P of degree 4 in z.
TF0, TF1, TF2, TF3, TF4 = (F32(c) for c in (
    -5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
    -3.33332819422e-1))
TANH_SMALL, TANH_SMALL32 = 0.625, F32(0.625)
TANH_TINY, TANH_TINY32 = 2.0**-30, F32(2.0**-30)  # below, z = 0 (tanh a = a; no underflow)
TANH_BIG, TANH_BIG32 = 20.0, F32(10.0)


def _tanh64(x):
    a = abs(x)
    s = sel(a < TANH_SMALL, a, TANH_SMALL)
    t = sel(s > TANH_TINY, s, 0.0)
    z = t * t
    small = s + s * z * ((TP2 + z * (TP1 + z * TP0)) / (TQ2 + z * (TQ1 + z * (TQ0 + z))))
    big = 1.0 - 2.0 / (_exp64(2.0 * sel(a < TANH_BIG, a, TANH_BIG)) + 1.0)
    y = sel(a < TANH_SMALL, small, big)
    y = sel(x > 0.0, y, -y)
    return sel(x == x, y, x)


def _tanh32(x):
    a = abs(x)
    s = sel(a < TANH_SMALL32, a, TANH_SMALL32)
    t = sel(s > TANH_TINY32, s, ZERO32)
    z = t * t
    small = (((((TF0 * z + TF1) * z + TF2) * z + TF3) * z + TF4) * z) * s + s
    big = ONE32 - TWO32 / (_exp32(TWO32 * sel(a < TANH_BIG32, a, TANH_BIG32)) + ONE32)
    y = sel(a < TANH_SMALL32, small, big)
    y = sel(x > ZERO32, y, -y)
    return sel(x == x, y, x)


# ---- sigmoid and softplus, through e = e^-|x| in [0, 1], which never overflows
def _sigmoid64(x):
    e = _exp64(-abs(x))
    return sel(x >= 0.0, 1.0, e) / (1.0 + e)  # 1 / (1 + e) or e / (1 + e)


def _sigmoid32(x):
    e = _exp32(-abs(x))
    return sel(x >= ZERO32, ONE32, e) / (ONE32 + e)


# max(x, 0) + log1p(e): log1p as above, with w = 1 + e in [1, 2] (no special cases)
# and its rounding error by Fast2Sum (1 >= e)
def _softplus64(x):
    e = _exp64(-abs(x))
    w = 1.0 + e
    return sel(x > 0.0, x, 0.0) + (_log_core64(w, 0.0) + (e - (w - 1.0)) / w)


def _softplus32(x):
    e = _exp32(-abs(x))
    w = ONE32 + e
    return sel(x > ZERO32, x, ZERO32) + (_log_core32(w, ZERO32) + (e - (w - ONE32)) / w)


# ---- the public scalar functions: a float32 in gives a float32 out, computed in
# float32; any other real number is computed in float64. Called from Python (or with
# the JIT off) the function dispatches: the float64 path runs on Python floats (the same
# IEEE arithmetic, bit for bit, as numpy's float64 and as the emitted code; twice as
# fast as numpy scalars, and it never raises: tests/test_kernels.py checks that its
# clamps hold on numpy scalars too), the float32 path on numpy float32 scalars. In
# jitted code (the kernels below, the generated loops of rnn/program/loop.py) a call
# resolves through the overload to an intrinsic that emits the function inline.
def _emitting(f32, f64):
    @intrinsic
    def emit(typingctx, x):
        if x == types.float32 or x == types.float64:
            def codegen(context, builder, sig, args):
                f = f32 if sig.args[0] == types.float32 else f64
                return f(_IR(_Emitter(context, builder, sig.args[0]), args[0])).v

            return x(x), codegen

    return emit


def _by_width(public, f32, f64):
    emit = _emitting(f32, f64)

    def typer(v):
        if v == types.float32 or v == types.float64:
            return lambda v: emit(v)
        if isinstance(v, (types.Float, types.Integer)):
            return lambda v: emit(np.float64(v))

    overload(public, inline="always")(typer)


def scalar_exp(v):
    """e^v: 0 below the underflow threshold, inf past overflow; never raises."""
    return F32(_exp32(v)) if isinstance(v, F32) else np.float64(_exp64(float(v)))


def scalar_log(v):
    """log v: -inf at 0, NaN below."""
    return F32(_log32(v)) if isinstance(v, F32) else np.float64(_log64(float(v)))


def scalar_log1p(v):
    """log(1 + v), accurate for small v: -inf at -1, NaN below."""
    return F32(_log1p32(v)) if isinstance(v, F32) else np.float64(_log1p64(float(v)))


def scalar_tanh(v):
    """tanh v, relatively accurate near 0 (tanh(1e-10) = 1e-10); +-1 at +-inf."""
    return F32(_tanh32(v)) if isinstance(v, F32) else np.float64(_tanh64(float(v)))


def scalar_sigmoid(v):
    """1 / (1 + e^-v), relatively accurate for v << 0 (where it is e^v)."""
    return F32(_sigmoid32(v)) if isinstance(v, F32) else np.float64(_sigmoid64(float(v)))


def scalar_softplus(v):
    """log(1 + e^v) = max(v, 0) + log1p(e^-|v|): never overflows."""
    return F32(_softplus32(v)) if isinstance(v, F32) else np.float64(_softplus64(float(v)))


_by_width(scalar_exp, _exp32, _exp64)
_by_width(scalar_log, _log32, _log64)
_by_width(scalar_log1p, _log1p32, _log1p64)
_by_width(scalar_tanh, _tanh32, _tanh64)
_by_width(scalar_sigmoid, _sigmoid32, _sigmoid64)
_by_width(scalar_softplus, _softplus32, _softplus64)


# ---- array kernels
@jit
def tanh(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_tanh(x[i])
    return out


@jit
def tanh_grad(g, y):
    out = np.empty_like(y)
    for i in range(y.size):
        out[i] = g[i] * (1 - y[i] * y[i])
    return out


@jit
def sigmoid(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_sigmoid(x[i])
    return out


@jit
def sigmoid_grad(g, y):
    out = np.empty_like(y)
    for i in range(y.size):
        out[i] = g[i] * y[i] * (1 - y[i])
    return out


@jit
def relu(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = x[i] if x[i] > 0 else 0
    return out


@jit
def relu_grad(g, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = g[i] if x[i] > 0 else 0
    return out


@jit
def softplus(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_softplus(x[i])
    return out


@jit
def softplus_grad(g, x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = g[i] * scalar_sigmoid(x[i])
    return out


@jit
def exp(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_exp(x[i])
    return out


@jit
def log(x):
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = scalar_log(x[i])
    return out


@jit
def log_softmax_rows(x):
    """Row-wise log-softmax of a 2-D array, by log-sum-exp around the row max."""
    out = np.empty_like(x)
    for r in range(x.shape[0]):
        m = x[r, 0]
        for j in range(1, x.shape[1]):
            m = max(m, x[r, j])
        s = 0.0
        for j in range(x.shape[1]):
            s += scalar_exp(x[r, j] - m)
        ls = scalar_log(s)  # (x - m) - log s: m + log s would round away log s at 1e15
        for j in range(x.shape[1]):
            out[r, j] = (x[r, j] - m) - ls
    return out
