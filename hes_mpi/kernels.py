"""Every Numba kernel of hes_mpi, and the one place for their JIT flags.

Kernels work on float32 arrays and accumulate losses in float64. Matrix products call BLAS through
``np.dot`` (Numba needs SciPy for that); the element-wise parts are fused loops. Each kernel has a
plain NumPy reference in ``tests/naive.py`` and a test that compares them.

``fastmath`` stays off: element-wise results must be bitwise reproducible, so that every rank (and
the tests) can rebuild an ES update exactly.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: JIT options for every kernel. ``cache=True`` writes compiled code next to the module (or under
#: ``NUMBA_CACHE_DIR``); :func:`warm_up` runs on one rank before the others to avoid cache races.
JIT_FLAGS = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy"}

jit = numba.njit(**JIT_FLAGS)

#: Rows per block when a kernel walks a large set (evaluation): bounds the work buffers.
EVAL_BLOCK = 2048


# exp(x) in float32 as a range reduction and a polynomial (Cephes' expf: within 1 ulp of the float32
# exponential on [-87, 88]), written with arithmetic only so that LLVM vectorises the loop; a call to
# the C library's expf per element kept the sigmoid at several times the cost of the matrix product.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_TINY = np.float32(np.finfo(np.float32).tiny)  # the smallest normal float32
_EXP_P = (np.float32(1.9875691500e-4), np.float32(1.3981999507e-3), np.float32(8.3334519073e-3),
          np.float32(4.1665795894e-2), np.float32(1.6666665459e-1), np.float32(5.0000001201e-1))


@numba.njit(inline="always", **JIT_FLAGS)
def _exp_parts(x):
    """exp(x) = m * 2^n for a float32 x already clamped to [-87, 88]: returns (m, the float32 bit pattern
    of 2^n as int32). Inlined into the loops below, where arithmetic only lets LLVM vectorise them."""
    p0, p1, p2, p3, p4, p5 = _EXP_P
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - n * _LN2_HI - n * _LN2_LO
    p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    return p * r * r + r + np.float32(1.0), (np.int32(n) + np.int32(127)) << np.int32(23)


@jit
def _exp_inplace(A, E):
    """A <- exp(A) elementwise for a flat float32 array (|A| <= 87 after clamping), vectorised; E is an
    int32 work array of A's size."""
    Ef = E.view(np.float32)
    for i in range(A.shape[0]):
        A[i], E[i] = _exp_parts(min(max(A[i], np.float32(-87.0)), np.float32(88.0)))
    for i in range(A.shape[0]):
        A[i] = A[i] * Ef[i]


@jit
def _hidden(X, W1, b1, H):
    """H = sigmoid(X @ W1 + b1) = 1 / (1 + exp(-(X @ W1 + b1))), in place in H (float32)."""
    np.dot(X, W1, H)
    rows, hid = H.shape
    E = np.empty(hid, dtype=np.int32)  # 2^n of each element, built in the exponent bits
    Ef = E.view(np.float32)
    for i in range(rows):
        for j in range(hid):
            x0 = -(H[i, j] + b1[j])
            m, bits = _exp_parts(min(max(x0, np.float32(-87.0)), np.float32(87.0)))
            H[i, j] = m
            # Beyond 87 the sigmoid is below the smallest normal float32: make it exactly 0 (an infinite
            # exponent), never a denormal, which would slow every later product by orders of magnitude.
            E[j] = bits if x0 <= np.float32(87.0) else np.int32(0x7F800000)
        for j in range(hid):
            H[i, j] = np.float32(1.0) / (np.float32(1.0) + H[i, j] * Ef[j])


@jit
def _softmax_ce(Z, b2, y, P):
    """Z + b2 -> softmax into P; returns (sum of cross-entropy, number correct)."""
    rows, c = Z.shape
    loss = 0.0
    correct = 0
    for i in range(rows):
        m = Z[i, 0] + b2[0]
        arg = 0
        for j in range(c):
            v = Z[i, j] + b2[j]
            P[i, j] = v
            if v > m:
                m = v
                arg = j
        zy = np.float64(P[i, y[i]])  # target logit, read before P (which may alias Z) is overwritten
        s = 0.0
        for j in range(c):
            e = math.exp(np.float64(P[i, j]) - m)
            s += e
        for j in range(c):
            pj = np.float32(math.exp(np.float64(P[i, j]) - m) / s)
            P[i, j] = pj if pj >= _TINY else np.float32(0.0)  # no denormals (see _hidden)
        loss += math.log(s) - (zy - m)
        if arg == y[i]:
            correct += 1
    return loss, correct


@jit
def forward_loss(X, y, W1, b1, W2, b2, H, Z):
    """Cross-entropy summed over the rows of X, and the number classified correctly.

    H (rows x hidden) and Z, P (rows x classes) are work buffers of at least X's row count.
    """
    rows = X.shape[0]
    Hr = H[:rows]
    Zr = Z[:rows]
    _hidden(X, W1, b1, Hr)
    np.dot(Hr, W2, Zr)
    return _softmax_ce(Zr, b2, y, Zr)


@jit
def head_losses(X, y, W1, b1, W2, b2, Zcat, zb, a, H, Z, Zp, losses):
    """Forward passes of K candidates that differ from (W1, b1, W2, b2) in the output layer only.

    Candidate k has output layer ``W2 - a * Zcat[:, k*classes:(k+1)*classes]`` and bias ``b2 - a * zb[k]``.
    The hidden layer is computed once and shared, and the K perturbed layers are applied in one matrix
    product: logits_k = H @ W2 + b2 - a * (H @ Zcat_k + zb[k]). ``losses[k] +=`` the cross-entropy summed
    over the rows of X for k < K, and ``losses[K] +=`` that of the unperturbed network (float32 logits
    and exponentials, float64 sums). Work buffers: H (rows x hidden), Z (rows x classes), Zp (rows x
    K*classes).
    """
    rows = X.shape[0]
    Hr = H[:rows]
    Zr = Z[:rows]
    K = zb.shape[0]
    c = W2.shape[1]
    Zpr = Zp[:rows]  # K*classes columns exactly (a column slice would not be contiguous)
    _hidden(X, W1, b1, Hr)
    np.dot(Hr, W2, Zr)
    np.dot(Hr, Zcat, Zpr)
    s = np.float32(a)
    target = np.empty((rows, K + 1), dtype=np.float32)  # target logit minus that max
    for i in range(rows):
        t = y[i]
        for k in range(K + 1):
            m = -np.inf
            for j in range(c):
                if k < K:
                    v = Zr[i, j] + b2[j] - s * (Zpr[i, k * c + j] + zb[k, j])
                    Zpr[i, k * c + j] = v
                else:
                    v = Zr[i, j] + b2[j]
                    Zr[i, j] = v
                m = max(m, v)
            target[i, k] = (Zpr[i, k * c + t] if k < K else Zr[i, t]) - m
            for j in range(c):
                if k < K:
                    Zpr[i, k * c + j] -= m
                else:
                    Zr[i, j] -= m
    flat_p = Zpr.reshape(-1)
    flat_z = Zr.reshape(-1)
    _exp_inplace(flat_p, np.empty(flat_p.shape[0], dtype=np.int32))
    _exp_inplace(flat_z, np.empty(flat_z.shape[0], dtype=np.int32))
    for i in range(rows):
        for k in range(K + 1):
            e = 0.0
            for j in range(c):
                e += np.float64(Zpr[i, k * c + j] if k < K else Zr[i, j])
            losses[k] += math.log(e) - np.float64(target[i, k])


def head_perturbations(zs, hidden: int, n_out: int, Zcat=None):
    """Split K output-layer perturbations ``zs`` (K x (hidden*n_out + n_out), laid out as W2|b2 in theta)
    into ``Zcat`` (hidden x K*n_out: the K weight perturbations side by side, one matrix product for
    all of them) and ``zb`` (K x n_out, a view of the bias parts)."""
    K = zs.shape[0]
    if Zcat is None:
        Zcat = np.empty((hidden, K * n_out), dtype=np.float32)
    Zcat.reshape(hidden, K, n_out)[:] = zs[:, : hidden * n_out].reshape(K, hidden, n_out).transpose(1, 0, 2)
    return Zcat, zs[:, hidden * n_out :]


@jit
def sum_squares(v):
    """sum of v_i^2 in float64."""
    s = 0.0
    for i in range(v.shape[0]):
        x = np.float64(v[i])
        s += x * x
    return s


@jit
def forward_backward(X, y, W1, b1, W2, b2, gW1, gb1, gW2, gb2, H, Z, D):
    """Loss summed over the rows of X and its gradient, summed (not averaged), into gW1..gb2.

    Work buffers: H, D (rows x hidden), Z (rows x classes).
    """
    rows = X.shape[0]
    Hr = H[:rows]
    Zr = Z[:rows]
    Dr = D[:rows]
    _hidden(X, W1, b1, Hr)
    np.dot(Hr, W2, Zr)
    loss, correct = _softmax_ce(Zr, b2, y, Zr)  # Zr now holds the probabilities
    c = Zr.shape[1]
    for i in range(rows):
        Zr[i, y[i]] -= np.float32(1.0)  # dL/dz2 = p - onehot(y)
    np.dot(Hr.T, Zr, gW2)
    for j in range(c):
        gb2[j] = 0.0
    for i in range(rows):
        for j in range(c):
            gb2[j] += Zr[i, j]
    np.dot(Zr, W2.T, Dr)
    hid = Hr.shape[1]
    for j in range(hid):
        gb1[j] = 0.0
    for i in range(rows):
        for j in range(hid):
            h = Hr[i, j]
            d = Dr[i, j] * h * (np.float32(1.0) - h)
            d = d if abs(d) >= _TINY else np.float32(0.0)  # no denormals (see _hidden)
            Dr[i, j] = d
            gb1[j] += d
    np.dot(X.T, Dr, gW1)
    return loss, correct


@jit
def finish_gradient(g, theta, inv_batch, l2, weight_segments):
    """g <- g * inv_batch + l2 * theta on the weight segments (in place, float32)."""
    s = np.float32(inv_batch)
    lam = np.float32(l2)
    for i in range(g.shape[0]):
        g[i] = g[i] * s
    for k in range(weight_segments.shape[0]):
        for i in range(weight_segments[k, 0], weight_segments[k, 1]):
            g[i] = g[i] + lam * theta[i]


@jit
def sgd_update(theta, g, lr):
    """theta <- theta - lr * g (in place, float32)."""
    a = np.float32(lr)
    for i in range(theta.shape[0]):
        theta[i] = theta[i] - a * g[i]


@jit
def make_candidate(theta, g, z, lr, sigma, out, weight_segments):
    """out <- theta - lr * (g + sigma * z) in float32; returns ||W||^2 of ``out`` in float64."""
    a = np.float32(lr)
    s = np.float32(sigma)
    for i in range(theta.shape[0]):
        out[i] = theta[i] - a * (g[i] + s * z[i])
    sq = 0.0
    for k in range(weight_segments.shape[0]):
        for i in range(weight_segments[k, 0], weight_segments[k, 1]):
            v = np.float64(out[i])
            sq += v * v
    return sq


@jit
def component_stats(g):
    """(mean, variance, squared norm) of the components of g, in float64."""
    n = g.shape[0]
    s = 0.0
    s2 = 0.0
    for i in range(n):
        v = np.float64(g[i])
        s += v
        s2 += v * v
    mean = s / n
    var = s2 / n - mean * mean
    var = max(var, 0.0)
    return mean, var, s2


@jit
def checksum(theta):
    """A 63-bit FNV-1a style hash of theta's float32 bit patterns (cheap consistency check)."""
    bits = theta.view(np.uint32)
    h = np.uint64(1469598103934665603)
    p = np.uint64(1099511628211)
    for i in range(bits.shape[0]):
        h = (h ^ np.uint64(bits[i])) * p
    return np.int64(h >> np.uint64(1))


class Workspace:
    """Preallocated work buffers for a network, sized for ``rows`` examples at a time."""

    def __init__(self, hidden: int, n_out: int, rows: int):
        self.rows = max(1, rows)
        self.H = np.empty((self.rows, hidden), dtype=np.float32)
        self.D = np.empty((self.rows, hidden), dtype=np.float32)
        self.Z = np.empty((self.rows, n_out), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return self.H.nbytes + self.D.nbytes + self.Z.nbytes


def evaluate(X, y, views, ws: Workspace) -> tuple[float, int]:
    """Summed cross-entropy and correct count over a whole set, walked in blocks of ``ws.rows``."""
    W1, b1, W2, b2 = views
    loss = 0.0
    correct = 0
    for s in range(0, X.shape[0], ws.rows):
        l, c = forward_loss(X[s : s + ws.rows], y[s : s + ws.rows], W1, b1, W2, b2, ws.H, ws.Z)
        loss += l
        correct += c
    return loss, correct


def warm_up() -> None:
    """Compile (or load from cache) every kernel on tiny inputs."""
    rng = np.random.default_rng(0)
    X = rng.random((3, 4), dtype=np.float32)
    y = np.array([0, 1, 2], dtype=np.int32)
    W1 = rng.random((4, 5), dtype=np.float32)
    b1 = np.zeros(5, np.float32)
    W2 = rng.random((5, 3), dtype=np.float32)
    b2 = np.zeros(3, np.float32)
    ws = Workspace(5, 3, 3)
    forward_loss(X, y, W1, b1, W2, b2, ws.H, ws.Z)
    g = [np.zeros_like(a) for a in (W1, b1, W2, b2)]
    forward_backward(X, y, W1, b1, W2, b2, *g, ws.H, ws.Z, ws.D)
    t = np.zeros(8, np.float32)
    seg = np.array([[0, 4]], dtype=np.int64)
    finish_gradient(t.copy(), t, 0.5, 0.1, seg)
    sgd_update(t.copy(), t, 0.1)
    make_candidate(t, t, t, 0.1, 0.2, t.copy(), seg)
    Zcat = rng.random((5, 2 * 3), dtype=np.float32)
    head_losses(X, y, W1, b1, W2, b2, Zcat, Zcat[:2, :3], 0.1, ws.H, ws.Z, np.zeros((3, 6), np.float32),
                np.zeros(3))
    component_stats(t)
    sum_squares(t)
    checksum(t)
