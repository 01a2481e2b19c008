"""Every Numba kernel of hes_mpi, and the one place for their JIT flags (over 400 lines because the style
keeps every kernel beside those flags: forward and backward passes for any depth, the three candidate
evaluations of H-ES, and the vector updates).

Kernels work on float32 arrays and accumulate losses in float64. Matrix products call BLAS through
``np.dot`` (Numba needs SciPy for that); the element-wise parts are fused loops. Each kernel has a
plain NumPy reference in ``tests/naive.py`` and a test that compares them.

``fastmath`` stays off: element-wise results must be bitwise reproducible, so that every rank (and
the tests) can rebuild an ES update exactly.
"""

from __future__ import annotations

import itertools
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
def _sigmoid_inplace(H, b):
    """H <- sigmoid(H + b) = 1 / (1 + exp(-(H + b))), in place (float32)."""
    rows, hid = H.shape
    E = np.empty(hid, dtype=np.int32)  # 2^n of each element, built in the exponent bits
    Ef = E.view(np.float32)
    for i in range(rows):
        for j in range(hid):
            x0 = -(H[i, j] + b[j])
            m, bits = _exp_parts(min(max(x0, np.float32(-87.0)), np.float32(87.0)))
            H[i, j] = m
            # Beyond 87 the sigmoid is below the smallest normal float32: make it exactly 0 (an infinite
            # exponent), never a denormal, which would slow every later product by orders of magnitude.
            E[j] = bits if x0 <= np.float32(87.0) else np.int32(0x7F800000)
        for j in range(hid):
            H[i, j] = np.float32(1.0) / (np.float32(1.0) + H[i, j] * Ef[j])


@jit
def _tanh_inplace(H, b):
    """H <- tanh(H + b) = sign(x) (1 - 2 / (exp(2 |x|) + 1)), in place (float32, within 1.2e-7 of tanh;
    exactly +-1 beyond |x| = 43.5, and never a denormal: near 0 the result is 0 or at least 2^-24 in
    magnitude)."""
    rows, hid = H.shape
    E = np.empty(hid, dtype=np.int32)
    Ef = E.view(np.float32)
    sign = np.empty(hid, dtype=np.float32)
    for i in range(rows):
        for j in range(hid):
            x = H[i, j] + b[j]
            sign[j] = np.float32(1.0) if x >= np.float32(0.0) else np.float32(-1.0)
            m, bits = _exp_parts(min(np.float32(2.0) * abs(x), np.float32(87.0)))
            H[i, j] = m
            E[j] = bits
        for j in range(hid):
            H[i, j] = sign[j] * (np.float32(1.0) - np.float32(2.0) / (H[i, j] * Ef[j] + np.float32(1.0)))


@jit
def _relu_inplace(H, b):
    """H <- max(H + b, 0), in place (float32)."""
    rows, hid = H.shape
    for i in range(rows):
        for j in range(hid):
            H[i, j] = max(H[i, j] + b[j], np.float32(0.0))


@jit
def _activate(H, b, act):
    """H <- act(H + b) in place; ``act`` indexes :data:`hes_mpi.model.ACTIVATIONS` (sigmoid, relu, tanh)."""
    if act == 0:
        _sigmoid_inplace(H, b)
    elif act == 1:
        _relu_inplace(H, b)
    else:
        _tanh_inplace(H, b)


@jit
def _hidden_stack(X, Ws, bs, Hs, act):
    """The hidden layers of the network (Ws, bs) on the rows of X into Hs[l][:rows]; returns the last."""
    rows = X.shape[0]
    H = Hs[0][:rows]
    np.dot(X, Ws[0], H)
    _activate(H, bs[0], act)
    for l in range(1, len(Ws) - 1):
        Hn = Hs[l][:rows]
        np.dot(H, Ws[l], Hn)
        _activate(Hn, bs[l], act)
        H = Hn
    return H


@jit
def _backprop_delta(H, D, act, gb):
    """D <- D * act'(pre-activation), from the activations H (denormals flushed to 0); gb <- column sums of D."""
    rows, hid = H.shape
    for j in range(hid):
        gb[j] = 0.0
    if act == 0:
        for i in range(rows):
            for j in range(hid):
                h = H[i, j]
                d = D[i, j] * h * (np.float32(1.0) - h)
                d = d if abs(d) >= _TINY else np.float32(0.0)  # no denormals (see _sigmoid_inplace)
                D[i, j] = d
                gb[j] += d
    elif act == 1:
        for i in range(rows):
            for j in range(hid):
                d = D[i, j] if H[i, j] > np.float32(0.0) else np.float32(0.0)
                d = d if abs(d) >= _TINY else np.float32(0.0)
                D[i, j] = d
                gb[j] += d
    else:
        for i in range(rows):
            for j in range(hid):
                h = H[i, j]
                d = D[i, j] * (np.float32(1.0) - h * h)
                d = d if abs(d) >= _TINY else np.float32(0.0)
                D[i, j] = d
                gb[j] += d


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
def forward_loss(X, y, Ws, bs, Hs, Z, act):
    """Cross-entropy summed over the rows of X, and the number classified correctly, for the network with
    weights ``Ws`` and biases ``bs`` (tuples, one entry per layer) and hidden activation ``act``.

    Hs (one rows x width buffer per hidden layer) and Z (rows x classes) are work buffers of at least X's
    row count.
    """
    rows = X.shape[0]
    L = len(Ws)
    H = _hidden_stack(X, Ws, bs, Hs, act)
    Zr = Z[:rows]
    np.dot(H, Ws[L - 1], Zr)
    return _softmax_ce(Zr, bs[L - 1], y, Zr)


@jit
def head_losses(X, y, Ws, bs, Zcat, zb, a, Hs, Z, Zp, losses, act):
    """Forward passes of K candidates that differ from the network (Ws, bs) in the output layer only.

    Candidate k has output layer ``W - a * Zcat[:, k*classes:(k+1)*classes]`` and bias ``b - a * zb[k]``.
    The hidden layers are computed once and shared, and the K perturbed layers are applied in one matrix
    product: logits_k = H @ W + b - a * (H @ Zcat_k + zb[k]). ``losses[k] +=`` the cross-entropy summed
    over the rows of X for k < K, and ``losses[K] +=`` that of the unperturbed network (float32 logits
    and exponentials, float64 sums). Work buffers: Hs (rows x width per hidden layer), Z (rows x
    classes), Zp (rows x K*classes).
    """
    rows = X.shape[0]
    L = len(Ws)
    W2 = Ws[L - 1]
    b2 = bs[L - 1]
    Zr = Z[:rows]
    K = zb.shape[0]
    c = W2.shape[1]
    Zpr = Zp[:rows]  # K*classes columns exactly (a column slice would not be contiguous)
    Hr = _hidden_stack(X, Ws, bs, Hs, act)
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
def lowrank_losses(X, y, Ws, bs, As, Bts, Cs, aw, ab, Ss, P0, T, Us, losses, act):
    """Forward passes of K candidates that differ from the network (Ws, bs) in every layer by a low-rank
    product: candidate k has weights ``Ws[l] - aw[l] * As[l][k] @ Bts[l][k]`` and biases
    ``bs[l] - ab[l] * Cs[l][k]`` (As[l]: K x fan_in x R, Bts[l]: K x R x fan_out, Cs[l]: K x fan_out).

    The first layer's product X @ W is computed once and shared: candidate k adds -aw (X @ A_k) @ Bt_k.
    Deeper layers see a different input per candidate, so the K + 1 inputs (the last block is the
    unperturbed network) are stacked and multiplied by W in one product, each corrected by its own
    low-rank term. ``losses[k] +=`` the cross-entropy summed over the rows of X (float64) for k < K,
    ``losses[K] +=`` that of the unperturbed network. Work buffers: Ss[l] ((K + 1) * rows x fan_out of
    layer l), P0 (rows x fan_out of layer 0), T (rows x R), Us[l] (rows x fan_out of layer l).
    """
    rows = X.shape[0]
    L = len(Ws)
    K = As[0].shape[0]
    S = Ss[0][: (K + 1) * rows]
    P = P0[:rows]
    Tr = T[:rows]
    np.dot(X, Ws[0], P)
    n1 = P.shape[1]
    for k in range(K + 1):
        blk = S[k * rows : (k + 1) * rows]
        if k < K:
            U = Us[0][:rows]
            np.dot(X, As[0][k], Tr)
            np.dot(Tr, Bts[0][k], U)
            sw = aw[0]
            sb = ab[0]
            c = Cs[0][k]
            for i in range(rows):
                for j in range(n1):
                    blk[i, j] = P[i, j] - sw * U[i, j] - sb * c[j]
        else:
            for i in range(rows):
                for j in range(n1):
                    blk[i, j] = P[i, j]
    _activate(S, bs[0], act)
    for l in range(1, L):
        Out = Ss[l][: (K + 1) * rows]
        np.dot(S, Ws[l], Out)
        U = Us[l][:rows]
        n = Out.shape[1]
        sw = aw[l]
        sb = ab[l]
        for k in range(K):
            blk = Out[k * rows : (k + 1) * rows]
            np.dot(S[k * rows : (k + 1) * rows], As[l][k], Tr)
            np.dot(Tr, Bts[l][k], U)
            c = Cs[l][k]
            for i in range(rows):
                for j in range(n):
                    blk[i, j] = blk[i, j] - sw * U[i, j] - sb * c[j]
        if l < L - 1:
            _activate(Out, bs[l], act)
        S = Out
    for k in range(K + 1):
        blk = S[k * rows : (k + 1) * rows]
        loss, _ = _softmax_ce(blk, bs[L - 1], y, blk)
        losses[k] += loss


@jit
def lowrank_update(W, A, Bt, c):
    """W <- W - c * A @ Bt in place (float32; A: m x R, Bt: R x n), one rank-1 term after the other."""
    m, R = A.shape
    n = Bt.shape[1]
    for i in range(m):
        for r in range(R):
            s = np.float32(c) * A[i, r]
            for j in range(n):
                W[i, j] = W[i, j] - s * Bt[r, j]


@jit
def sum_squares(v):
    """sum of v_i^2 in float64."""
    s = 0.0
    for i in range(v.shape[0]):
        x = np.float64(v[i])
        s += x * x
    return s


@jit
def forward_backward(X, y, Ws, bs, gWs, gbs, Hs, Z, Ds, act):
    """Loss summed over the rows of X and its gradient, summed (not averaged), into the tuples gWs, gbs
    (shaped as Ws, bs).

    Work buffers: Hs, Ds (one rows x width buffer each per hidden layer), Z (rows x classes).
    """
    rows = X.shape[0]
    L = len(Ws)
    Hl = _hidden_stack(X, Ws, bs, Hs, act)
    Zr = Z[:rows]
    np.dot(Hl, Ws[L - 1], Zr)
    loss, correct = _softmax_ce(Zr, bs[L - 1], y, Zr)  # Zr now holds the probabilities
    c = Zr.shape[1]
    for i in range(rows):
        Zr[i, y[i]] -= np.float32(1.0)  # dL/dz = p - onehot(y)
    gb = gbs[L - 1]
    np.dot(Hl.T, Zr, gWs[L - 1])
    for j in range(c):
        gb[j] = 0.0
    for i in range(rows):
        for j in range(c):
            gb[j] += Zr[i, j]
    D = Zr
    for l in range(L - 1, 0, -1):  # the delta of hidden layer l - 1 from that of layer l
        H = Hs[l - 1][:rows]
        Dn = Ds[l - 1][:rows]
        np.dot(D, Ws[l].T, Dn)
        _backprop_delta(H, Dn, act, gbs[l - 1])
        if l > 1:
            np.dot(Hs[l - 2][:rows].T, Dn, gWs[l - 1])
        else:
            np.dot(X.T, Dn, gWs[0])
        D = Dn
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
    """Preallocated work buffers for a network of hidden layer widths ``hidden`` (an int or a tuple), sized
    for ``rows`` examples at a time: ``Hs`` (activations) and ``Ds`` (their backward pass), one per hidden
    layer, and ``Z`` (the output layer)."""

    def __init__(self, hidden, n_out: int, rows: int):
        widths = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        self.rows = max(1, rows)
        self.Hs = tuple(np.empty((self.rows, w), dtype=np.float32) for w in widths)
        self.Ds = tuple(np.empty((self.rows, w), dtype=np.float32) for w in widths)
        self.Z = np.empty((self.rows, n_out), dtype=np.float32)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.Hs + self.Ds) + self.Z.nbytes


def evaluate(X, y, layer_views, act: int, ws: Workspace) -> tuple[float, int]:
    """Summed cross-entropy and correct count over a whole set, walked in blocks of ``ws.rows``;
    ``layer_views`` is ``(Ws, bs)`` (:meth:`hes_mpi.model.MLP.layer_views`)."""
    Ws, bs = layer_views
    loss = 0.0
    correct = 0
    for s in range(0, X.shape[0], ws.rows):
        l, c = forward_loss(X[s : s + ws.rows], y[s : s + ws.rows], Ws, bs, ws.Hs, ws.Z, act)
        loss += l
        correct += c
    return loss, correct


def warm_up(n_hidden: int = 1) -> None:
    """Compile (or load from cache) every kernel on tiny inputs, for networks of ``n_hidden`` hidden layers
    (the tuple kernels are compiled once per depth)."""
    rng = np.random.default_rng(0)
    X = rng.random((3, 4), dtype=np.float32)
    y = np.array([0, 1, 2], dtype=np.int32)
    dims = (4, *([5] * n_hidden), 3)
    Ws = tuple(rng.random((a, b), dtype=np.float32) for a, b in itertools.pairwise(dims))
    bs = tuple(np.zeros(b, np.float32) for b in dims[1:])
    ws = Workspace(dims[1:-1], 3, 3)
    gWs = tuple(np.zeros_like(a) for a in Ws)
    gbs = tuple(np.zeros_like(a) for a in bs)
    for act in range(3):
        forward_loss(X, y, Ws, bs, ws.Hs, ws.Z, act)
        forward_backward(X, y, Ws, bs, gWs, gbs, ws.Hs, ws.Z, ws.Ds, act)
    t = np.zeros(8, np.float32)
    seg = np.array([[0, 4]], dtype=np.int64)
    finish_gradient(t.copy(), t, 0.5, 0.1, seg)
    sgd_update(t.copy(), t, 0.1)
    make_candidate(t, t, t, 0.1, 0.2, t.copy(), seg)
    Zcat = rng.random((5, 2 * 3), dtype=np.float32)
    for act in range(3):
        head_losses(X, y, Ws, bs, Zcat, Zcat[:2, :3], 0.1, ws.Hs, ws.Z, np.zeros((3, 6), np.float32),
                    np.zeros(3), act)
    K, R = 2, 1
    As = tuple(np.zeros((K, a, R), np.float32) for a in dims[:-1])
    Bts = tuple(np.zeros((K, R, b), np.float32) for b in dims[1:])
    Cs = tuple(np.zeros((K, b), np.float32) for b in dims[1:])
    a = np.zeros(len(Ws), np.float32)
    Ss = tuple(np.empty(((K + 1) * 3, b), np.float32) for b in dims[1:])
    Us = tuple(np.empty((3, b), np.float32) for b in dims[1:])
    for act in range(3):
        lowrank_losses(X, y, Ws, bs, As, Bts, Cs, a, a, Ss, np.empty((3, dims[1]), np.float32),
                       np.empty((3, R), np.float32), Us, np.zeros(K + 1), act)
    lowrank_update(Ws[0].copy(), As[0][0], Bts[0][0], 0.1)
    component_stats(t)
    sum_squares(t)
    checksum(t)
