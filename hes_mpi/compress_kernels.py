"""The Numba kernels of the compressed gradient exchanges (``--compress``, :mod:`hes_mpi.algorithms.compress`),
compiled with :data:`hes_mpi.kernels.JIT_FLAGS` (the one place of the JIT flags).

Each kernel is one pass, or a few, over the flat gradient, and each gives exactly what the NumPy code it
replaced gave; ``tests/test_compress_kernels.py`` checks them against that NumPy reference bitwise:

``pack_fp16`` / ``unpack_fp16``
    float32 -> float16 of ``x * scale`` and float16 -> float32 by the CPU's own conversion (LLVM's
    ``fptrunc``/``fpext`` to and from half: x86's F16C instructions), which round as NumPy does (to nearest,
    ties to even; subnormal halves, overflow to infinity). NumPy converts float16 in software, slowest on
    subnormals, and a gradient's share of the mean is mostly subnormal in float16: its cast took 16 ms per
    step of the poster's network here, the kernel 0.02 ms. The one difference, a signalling NaN half that
    comes back quiet, cannot arise: the scaling quiets a NaN before the cast, and the cast makes quiet NaNs.
    (Both assume the default floating-point environment, no flush-to-zero, as NumPy's own arithmetic does.)
``add_halves``
    The float16 sum of the fp16 exchange's Allreduce, as an MPI user operation on the bit patterns (MPICH's
    own float16 sum converts in software: 14 ms per Allreduce of the poster's network here).
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
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .kernels import jit


# ------------------------------------------------------------------------------------------ fp16
@intrinsic
def _half_bits(typingctx, x):
    """The float16 bit pattern of a float32: LLVM's ``fptrunc`` to half (the CPU's conversion instruction,
    x86's vcvtps2ph: IEEE round to nearest even, subnormal halves and overflow to infinity included)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _half_value(typingctx, b):
    """The float32 of a float16 bit pattern: LLVM's ``fpext`` (exact; a signalling NaN comes out quiet)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@jit
def pack_fp16(x, scale, out):
    """x <- x * scale (float32, in place), and out (uint16: float16 bit patterns) <- float16(x)."""
    s = np.float32(scale)
    for i in range(x.shape[0]):
        v = np.float32(x[i] * s)
        x[i] = v
        out[i] = _half_bits(v)


@jit
def unpack_fp16(h, out):
    """out (float32) <- the float32 of every float16 bit pattern in ``h`` (uint16): exact, NumPy's values
    (but for signalling NaNs, which come out quiet: the pack never makes one)."""
    for i in range(h.shape[0]):
        out[i] = _half_value(h[i])


@jit
def add_halves(a, b):
    """b <- float16(float32(a) + float32(b)) element by element, on float16 bit patterns (uint16): the sum of
    the MPI operation ``half_sum`` (:mod:`hes_mpi.comm`), as MPICH's own float16 sum rounds it."""
    for i in range(b.shape[0]):
        b[i] = _half_bits(np.float32(_half_value(a[i]) + _half_value(b[i])))


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


# ------------------------------------------------------------------------------------------ warm-up
def warm_up() -> None:
    """Compile (or load from cache) every kernel of this module on tiny inputs of the types the exchanges pass
    (:mod:`hes_mpi.algorithms.compress` and ``comm``'s ``half_sum``), so that no compression's first
    training step pays for it: compiling them took 3 s here, ``topk_select`` 2 s of it."""
    g = np.ones(8, np.float32)
    scale = np.float32(0.5)
    bits = np.empty(8, np.float16).view(np.uint16)
    pack_fp16(g, scale, bits)
    unpack_fp16(bits, g)
    add_halves(bits.copy(), bits)  # as half_sum passes them: writable uint16 arrays over MPI's buffers
    k = 2
    send = np.empty(2 * k, np.int32)
    topk_select(g, scale, np.zeros(8, np.float32), k, send[:k], send[k:].view(np.float32), np.empty(9, np.int32))
    recv = np.zeros(2 * 2 * k, np.int32)
    topk_scatter(recv, recv.view(np.float32), 2, k, g)
    e = np.zeros(8, np.float32)
    accumulate(g, scale, e)
    subtract_scaled(e, g, scale)
