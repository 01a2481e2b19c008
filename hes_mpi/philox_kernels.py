"""Counter-based standard normals in Numba (``--noise counter``, :mod:`hes_mpi.noise`), compiled with
:data:`hes_mpi.kernels.JIT_FLAGS` (the one place of the JIT flags; fastmath off).

``philox4x32``
    Philox4x32-10 (Salmon, Moraes, Dror and Shaw, SC'11; Random123's ``philox4x32``, its multipliers
    0xD2511F53, 0xCD9E8D57 and Weyl key increments 0x9E3779B9, 0xBB67AE85): a 128-bit counter (four 32-bit
    words) and a 64-bit key (two words) give four 32-bit words, in ten rounds of two 32 x 32 -> 64-bit
    products. Written on uint64 lanes with 32-bit masks, so that LLVM vectorises the loop over blocks.
``fill_normals``
    Elements start .. start + len(out) - 1 of the stream under a key whose element j is normal j mod 4 of
    block j // 4, the block being Philox4x32-10 of the counter (j // 4, c1, c2, c3): any element is computed
    alone, so a perturbation is made chunk by chunk, in any order, on any rank. Tiles of :data:`TILE`
    blocks at a time (words and normals stay in the L1 cache).
``box_muller``
    Words to normals, pair by pair (w_a, w_b) -> (z0, z1), in float32: u = ((w_a >> 8) + 1) 2^-24, in
    (0, 1] (never 0: no log(0)), and the angle 2 pi (w_b >> 8) 2^-24; z0 = sqrt(-2 ln u) cos(angle),
    z1 = sqrt(-2 ln u) sin(angle). ln, cos and sin are Cephes' single-precision ``logf``, ``sinf`` and
    ``cosf`` written in arithmetic only (as :mod:`hes_mpi.kernels` writes ``expf``): no call to the C
    library, so the bits do not depend on its version and LLVM vectorises the loop; the angle is reduced
    to [-pi/4, pi/4] exactly, on the integer (quarter turns of 2^22). Within a few float32 ulps of the
    float64 values (tests/test_philox_kernels.py checks all 2^24 radii and all 2^24 angles). With 24-bit
    uniforms |z| <= sqrt(48 ln 2) = 5.77: the tails beyond (probability 8e-9) are cut.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .kernels import JIT_FLAGS, jit

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
#: Blocks (of four words) per tile of :func:`fill_normals`.
TILE = 1024
#: Elements a stream can give: the block index is the counter's 32-bit word 0.
MAX_ELEMENTS = 4 << 32

# Cephes' logf (on [sqrt(1/2), sqrt(2)) after the exponent is taken out), sinf and cosf (on [-pi/4, pi/4]).
_LOG_P = tuple(np.float32(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                                       1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                                       3.3333331174e-1))
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_SQRTHF = np.float32(0.707106781186547524)
_SIN_P = (np.float32(-1.9515295891e-4), np.float32(8.3321608736e-3), np.float32(-1.6666654611e-1))
_COS_P = (np.float32(2.443315711809948e-5), np.float32(-1.388731625493765e-3), np.float32(4.166664568298827e-2))
_TURN = np.float32(np.float32(2 * np.pi) * np.float32(2.0**-24))  # radians per 2^-24 of a turn (exact scaling)
_U24 = np.float32(2.0**-24)


@intrinsic
def _bits(typingctx, x):
    """The bit pattern of a float32 as int32 (LLVM ``bitcast``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _float(typingctx, b):
    """The float32 of an int32 bit pattern (LLVM ``bitcast``)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@numba.njit(inline="always", **JIT_FLAGS)
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1), all uint64 holding 32 bits."""
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _MASK, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK
    return c0, c1, c2, c3


@jit
def philox4x32(counters, key, out):
    """out[i] (uint32 x 4) <- Philox4x32-10 of ``counters[i]`` (uint32 x 4) under ``key`` (uint32 x 2)."""
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for i in range(counters.shape[0]):
        w = _philox(np.uint64(counters[i, 0]), np.uint64(counters[i, 1]), np.uint64(counters[i, 2]),
                    np.uint64(counters[i, 3]), k0, k1)
        for j in range(4):
            out[i, j] = np.uint32(w[j])


@numba.njit(inline="always", **JIT_FLAGS)
def _log(x):
    """ln x for a float32 x in (0, 1] (Cephes' logf: the exponent taken out, a polynomial of degree 9)."""
    b = _bits(x)
    e = np.float32((b >> np.int32(23)) - np.int32(126))  # x = m 2^e, m in [1/2, 1)
    m = _float(np.int32((b & np.int32(0x007FFFFF)) | np.int32(0x3F000000)))
    low = m < _SQRTHF
    e = e - np.float32(1.0) if low else e
    m = (m + m if low else m) - np.float32(1.0)
    p0, p1, p2, p3, p4, p5, p6, p7, p8 = _LOG_P
    z = m * m
    y = ((((((((p0 * m + p1) * m + p2) * m + p3) * m + p4) * m + p5) * m + p6) * m + p7) * m + p8) * m * z
    y = y + e * _LN2_LO
    y = y - np.float32(0.5) * z
    return (m + y) + e * _LN2_HI


@numba.njit(inline="always", **JIT_FLAGS)
def _cos_sin(t):
    """(cos, sin) of 2 pi t 2^-24 for an integer 0 <= t < 2^24: t - q 2^22 in [-2^21, 2^21) for the nearest
    quarter turn q (exact), Cephes' cosf and sinf on the rest, rotated by q."""
    q = (t + np.int32(1 << 21)) >> np.int32(22)
    x = np.float32(t - (q << np.int32(22))) * _TURN
    z = x * x
    s0, s1, s2 = _SIN_P
    c0, c1, c2 = _COS_P
    s = ((s0 * z + s1) * z + s2) * z * x + x
    c = ((c0 * z + c1) * z + c2) * z * z - np.float32(0.5) * z + np.float32(1.0)
    odd = (q & np.int32(1)) != 0
    cq = s if odd else c
    sq = c if odd else s
    cq = -cq if ((q + np.int32(1)) & np.int32(2)) != 0 else cq  # quarters 1 and 2
    sq = -sq if (q & np.int32(2)) != 0 else sq  # quarters 2 and 3
    return cq, sq


@jit
def box_muller(words, out):
    """out[2p], out[2p + 1] <- the two normals of words[2p], words[2p + 1] (uint32 -> float32) for every pair
    (len(words) even; ``out`` apart from ``words``: in place, LLVM's overlap check keeps the loop scalar,
    13 times slower)."""
    for p in range(words.shape[0] // 2):
        wa = np.int32(words[2 * p] >> np.uint32(8))
        wb = np.int32(words[2 * p + 1] >> np.uint32(8))
        r = np.sqrt(np.float32(-2.0) * _log(np.float32(wa + np.int32(1)) * _U24))
        c, s = _cos_sin(wb)
        out[2 * p] = r * c
        out[2 * p + 1] = r * s


@jit
def _blocks(first, nb, c1, c2, c3, k0, k1, words):
    """words[4 b + j] <- word j of block ``first + b`` for b < nb."""
    for b in range(nb):
        w0, w1, w2, w3 = _philox(np.uint64(first + b), c1, c2, c3, k0, k1)
        words[4 * b] = np.uint32(w0)
        words[4 * b + 1] = np.uint32(w1)
        words[4 * b + 2] = np.uint32(w2)
        words[4 * b + 3] = np.uint32(w3)


@jit
def fill_normals(out, key, counter_hi, start):
    """out[i] <- element ``start + i`` of the stream of ``key`` (two 32-bit words) and ``counter_hi`` (the
    counter's words 1..3): normal j mod 4 of Philox4x32-10 of the counter (j // 4, *counter_hi), float32.
    The caller keeps start + len(out) <= :data:`MAX_ELEMENTS`."""
    n = out.shape[0]
    if n == 0:
        return
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    c1, c2, c3 = np.uint64(counter_hi[0]), np.uint64(counter_hi[1]), np.uint64(counter_hi[2])
    first = start // 4
    last = (start + n + 3) // 4
    words = np.empty(4 * TILE, dtype=np.uint32)
    vals = np.empty(4 * TILE, dtype=np.float32)
    for b0 in range(first, last, TILE):
        nb = min(TILE, last - b0)
        _blocks(b0, nb, c1, c2, c3, k0, k1, words)
        lo = max(4 * b0, start)
        hi = min(4 * (b0 + nb), start + n)
        if lo == 4 * b0 and hi == 4 * (b0 + nb):  # a whole tile: straight into out
            box_muller(words[: 4 * nb], out[lo - start : hi - start])
        else:
            box_muller(words[: 4 * nb], vals[: 4 * nb])
            for j in range(lo, hi):
                out[j - start] = vals[j - 4 * b0]


def warm_up() -> None:
    """Compile (or load from cache) every kernel of this module on tiny inputs."""
    words = np.zeros(4, np.uint32)
    philox4x32(words.reshape(1, 4), words[:2], words.reshape(1, 4).copy())
    box_muller(words, np.empty(4, np.float32))
    fill_normals(np.empty(5, np.float32), words[:2], words[:3], 3)
