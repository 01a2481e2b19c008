"""The Numba kernels of the compressed gradient exchanges (``--compress``, :mod:`hes_mpi.algorithms.compress`),
compiled with :data:`hes_mpi.kernels.JIT_FLAGS` (the one place of the JIT flags).

Each kernel is one pass, or a few, over the flat gradient, and each gives exactly what the NumPy code it
replaced gave; ``tests/test_compress_kernels.py`` checks them against that NumPy reference bitwise:

``pack_fp16`` / ``unpack_fp16``
    float32 -> float16 of ``x * scale`` with NumPy's rounding (to nearest, ties to even; subnormal halves,
    overflow to infinity and NaNs as NumPy makes them) by integer arithmetic on the bit patterns, and
    float16 -> float32 (exact). NumPy converts float16 subnormals in software, and a gradient's share of the
    mean is mostly subnormal in float16: its cast took 16 ms per step of the poster's network here, against
    30 us for a copy of the same bytes.
``topk_select``
    The error feedback of top-k (e <- e + x * scale) and the k entries of largest magnitude of e, found by a
    radix selection on the bit patterns of |e| (three counting passes over 11, 11 and 10 bits: linear, no
    sort), written out in increasing index order with their values, and zeroed in e. Among entries whose
    magnitude equals the k-th largest, the lowest indices are taken.
``topk_scatter``
    The sum of every rank's (index, value) pairs in rank order.
``accumulate`` / ``subtract_scaled``
    PowerSGD's error feedback around its matrix products (which stay NumPy's and BLAS's, so that its
    results keep their bits): e <- e + x * scale in one pass instead of two, and e <- e - g * scale
    without the temporary that ``e -= g * scale`` allocates.
"""

from __future__ import annotations

import numpy as np

from .kernels import jit


# ------------------------------------------------------------------------------------------ fp16
@jit
def _half_bits(f):
    """The float16 bit pattern (in a uint32) of the float32 whose bit pattern is ``f``, as NumPy's
    ``npy_floatbits_to_halfbits`` makes it (round to nearest, ties to even), with every case computed and
    one selected, so that LLVM vectorises the loop that calls it."""
    sign = (f >> np.uint32(16)) & np.uint32(0x8000)
    e = f & np.uint32(0x7F800000)
    sig = f & np.uint32(0x007FFFFF)
    # a normal half; the rounding may carry into the exponent, and from the largest into infinity
    rn = sig + (np.uint32(0x1000) if (sig & np.uint32(0x3FFF)) != np.uint32(0x1000) else np.uint32(0))
    normal = ((e - np.uint32(0x38000000)) >> np.uint32(13)) + (rn >> np.uint32(13))
    # a subnormal half or zero: the significand with its leading one, shifted by 1 to 11 more bits (or
    # all of them: at most 31, a larger shift is undefined), with the bits the shift dropped as sticky
    shift = min(max(np.int32(113) - np.int32(e >> np.uint32(23)), np.int32(0)), np.int32(31))
    ss = (np.uint32(0x00800000) + sig) >> np.uint32(shift)
    tie = ((ss & np.uint32(0x3FFF)) == np.uint32(0x1000)) & ((f & np.uint32(0x7FF)) == np.uint32(0))
    sub = (ss + (np.uint32(0) if tie else np.uint32(0x1000))) >> np.uint32(13)
    # infinity, overflow, or a NaN that keeps the top of its payload and stays a NaN
    nan = np.uint32(0x7C00) + (sig >> np.uint32(13))
    nan = np.uint32(0x7C01) if nan == np.uint32(0x7C00) else nan
    big = nan if ((e == np.uint32(0x7F800000)) & (sig != np.uint32(0))) else np.uint32(0x7C00)
    small = sub if e <= np.uint32(0x38000000) else normal
    return sign + (big if e >= np.uint32(0x47800000) else small)


@jit
def pack_fp16(x, scale, out):
    """x <- x * scale (float32, in place), and out (uint16: float16 bit patterns) <- float16(x)."""
    s = np.float32(scale)
    for i in range(x.shape[0]):
        v = np.float32(x[i] * s)
        x[i] = v
        out[i] = np.uint16(_half_bits(v.view(np.uint32)))


_HALF_TO_FLOAT = None


def half_table() -> np.ndarray:
    """The float32 of every float16 bit pattern, by NumPy's own (exact) conversion: 256 KiB, made once."""
    global _HALF_TO_FLOAT
    if _HALF_TO_FLOAT is None:
        _HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    return _HALF_TO_FLOAT


@jit
def _unpack(h, table, out):
    for i in range(h.shape[0]):
        out[i] = table[h[i]]


def unpack_fp16(h: np.ndarray, out: np.ndarray) -> None:
    """out (float32) <- the float32 of every float16 bit pattern in ``h`` (uint16): exact, NumPy's values
    (a table lookup; the table holds NumPy's conversion of all 65536 patterns)."""
    _unpack(h, half_table(), out)


# ------------------------------------------------------------------------------------------ top-k
@jit
def _threshold_digit(hist, need):
    """The digit whose bin holds the ``need``-th largest value (counting from the top bin down), and how
    many values lie in the bins above it."""
    above = 0
    for d in range(hist.shape[0] - 1, -1, -1):
        if above + hist[d] >= need:
            return d, above
        above += hist[d]
    return 0, above


@jit
def topk_select(x, scale, e, k, idx, val, cand):
    """Error feedback and selection of top-k (``TopK.reduce``'s first half), in passes linear in n:

    e <- e + x * scale; the k entries of largest |e| into ``idx`` (int32, increasing) and ``val``
    (float32, their values of e), and e <- 0 there. Among entries whose |e| equals the k-th largest, the
    lowest indices are taken. ``cand`` is an int32 work array of at least e's size plus one. ``x`` is left
    as it was. Returns k.

    The k-th largest |e| is found on the bit patterns of |e| (for non-negative floats, and NaNs above
    infinity, their order as unsigned integers), most significant digit first: 11, 11 and 10 bits; each
    digit is one counting pass, the first over all entries (four histograms, so that equal digits in a row
    do not wait on each other), the later ones over the entries whose higher digits match. The passes that
    pick entries write every index and advance by 0 or 1, without branches (which entries pass is as good as
    random, and a mispredicted branch per entry cost more than the pass); the entries equal to the threshold
    that are taken are found apart, and merged in."""
    n = e.shape[0]
    s = np.float32(scale)
    eb = e.view(np.uint32)
    mask = np.uint32(0x7FFFFFFF)
    for i in range(n):
        e[i] = np.float32(e[i] + np.float32(x[i] * s))
    h4 = np.zeros((4, 2048), dtype=np.int64)
    n4 = n - n % 4
    for i in range(0, n4, 4):
        h4[0, (eb[i] & mask) >> np.uint32(21)] += 1
        h4[1, (eb[i + 1] & mask) >> np.uint32(21)] += 1
        h4[2, (eb[i + 2] & mask) >> np.uint32(21)] += 1
        h4[3, (eb[i + 3] & mask) >> np.uint32(21)] += 1
    for i in range(n4, n):
        h4[0, (eb[i] & mask) >> np.uint32(21)] += 1
    h1 = h4[0] + h4[1] + h4[2] + h4[3]
    d1, above = _threshold_digit(h1, k)
    need = k - above
    # entries whose first digit is d1: their indices, then the count of their second digit
    m = 0
    for i in range(n):
        cand[m] = i
        m += ((eb[i] & mask) >> np.uint32(21)) == np.uint32(d1)
    h2 = np.zeros(2048, dtype=np.int64)
    for j in range(m):
        h2[((eb[cand[j]] & mask) >> np.uint32(10)) & np.uint32(0x7FF)] += 1
    d2, above2 = _threshold_digit(h2, need)
    need -= above2
    h3 = np.zeros(1024, dtype=np.int64)
    prefix = (np.uint32(d1) << np.uint32(11)) | np.uint32(d2)
    for j in range(m):
        b = eb[cand[j]] & mask
        h3[b & np.uint32(0x3FF)] += (b >> np.uint32(10)) == prefix
    d3, above3 = _threshold_digit(h3, need)
    ties = need - above3  # how many of the entries equal to the threshold are taken, lowest index first
    t = (prefix << np.uint32(10)) | np.uint32(d3)
    above = 0  # the entries above the threshold, in increasing order
    for i in range(n):
        cand[above] = i
        above += (eb[i] & mask) > t
    # the first `ties` entries equal to it, merged in
    j = above - 1
    out = above + ties
    pos = out - 1
    if ties > 0:
        first = np.empty(ties, dtype=np.int32)
        f = 0
        for i in range(n):
            if (eb[i] & mask) == t:
                first[f] = i
                f += 1
                if f == ties:
                    break
        f = ties - 1
        while f >= 0:  # merge from the top, in place in cand
            if j >= 0 and cand[j] > first[f]:
                cand[pos] = cand[j]
                j -= 1
            else:
                cand[pos] = first[f]
                f -= 1
            pos -= 1
    for j in range(out):
        i = cand[j]
        idx[j] = i
        val[j] = e[i]
        e[i] = np.float32(0.0)
    return out


@jit
def topk_scatter(recv_idx, recv_val, ranks, k, g):
    """g <- the sum of every rank's k (index, value) pairs, in rank order (the same sum on every rank);
    ``recv_idx`` and ``recv_val`` are the int32 and float32 views of the gathered buffer, rank r's pairs
    at [2 k r, 2 k r + k) (indices) and [2 k r + k, 2 k (r + 1)) (values)."""
    g[:] = np.float32(0.0)
    for r in range(ranks):
        base = 2 * k * r
        for j in range(k):
            g[recv_idx[base + j]] += recv_val[base + k + j]


# ------------------------------------------------------------------------------------------ PowerSGD
@jit
def accumulate(x, scale, e):
    """e <- e + float32(x * scale), element by element (NumPy's ``x *= scale; e += x`` without writing x)."""
    s = np.float32(scale)
    for i in range(e.shape[0]):
        e[i] = np.float32(e[i] + np.float32(x[i] * s))


@jit
def subtract_scaled(e, g, scale):
    """e <- e - float32(g * scale) (NumPy's ``e -= g * scale``, without its temporary)."""
    s = np.float32(scale)
    for i in range(e.shape[0]):
        e[i] = np.float32(e[i] - np.float32(g[i] * s))
