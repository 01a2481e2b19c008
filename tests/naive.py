"""Plain NumPy references for every kernel in :mod:`hes_mpi.kernels`.

Written independently of the Numba kernels: straightforward vectorised NumPy, computed in float64
unless a function documents otherwise (``sgd_update_f32`` / ``make_candidate_f32`` reproduce the
float32 expressions the project relies on bitwise).
"""

from __future__ import annotations

import numpy as np


def _f64(*arrays):
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def logits(X, W1, b1, W2, b2):
    """(hidden activations, output logits) in float64."""
    X, W1, b1, W2, b2 = _f64(X, W1, b1, W2, b2)
    H = sigmoid(X @ W1 + b1)
    return H, H @ W2 + b2


def log_softmax(Z):
    m = Z.max(axis=1, keepdims=True)
    return Z - m - np.log(np.exp(Z - m).sum(axis=1, keepdims=True))


def per_row_loss(X, y, W1, b1, W2, b2):
    """Cross-entropy of every row, float64."""
    _, Z = logits(X, W1, b1, W2, b2)
    y = np.asarray(y, dtype=np.int64)
    return -log_softmax(Z)[np.arange(len(y)), y]


def forward_loss(X, y, W1, b1, W2, b2):
    """(cross-entropy summed over the rows, number of rows whose argmax equals the label)."""
    _, Z = logits(X, W1, b1, W2, b2)
    y = np.asarray(y, dtype=np.int64)
    loss = float(-log_softmax(Z)[np.arange(len(y)), y].sum())
    correct = int((Z.argmax(axis=1) == y).sum())
    return loss, correct


def forward_backward(X, y, W1, b1, W2, b2):
    """(loss, correct, (gW1, gb1, gW2, gb2)): gradient of the summed cross-entropy, float64."""
    X, W1, b1, W2, b2 = _f64(X, W1, b1, W2, b2)
    y = np.asarray(y, dtype=np.int64)
    H, Z = logits(X, W1, b1, W2, b2)
    P = np.exp(log_softmax(Z))
    onehot = np.zeros_like(P)
    onehot[np.arange(len(y)), y] = 1.0
    dZ = P - onehot
    gW2 = H.T @ dZ
    gb2 = dZ.sum(axis=0)
    dA = (dZ @ W2.T) * H * (1.0 - H)
    gW1 = X.T @ dA
    gb1 = dA.sum(axis=0)
    loss, correct = forward_loss(X, y, W1, b1, W2, b2)
    return loss, correct, (gW1, gb1, gW2, gb2)


def head_losses(X, y, W1, b1, W2, b2, zs, a):
    """Summed cross-entropy of each candidate whose output layer is (W2, b2) - a * zs[k] (flattened as in
    theta), then of the unperturbed network: K + 1 values, float64."""
    c = W2.shape[1]
    out = []
    for z in zs:
        W2k = W2 - a * z[: W2.size].reshape(W2.shape)
        b2k = b2 - a * z[W2.size : W2.size + c]
        out.append(forward_loss(X, y, W1, b1, W2k, b2k)[0])
    out.append(forward_loss(X, y, W1, b1, W2, b2)[0])
    return np.array(out)


def sum_squares(v):
    v = np.asarray(v, dtype=np.float64)
    return float(v @ v)


def weight_mask(n, weight_segments):
    mask = np.zeros(n, dtype=bool)
    for a, b in np.asarray(weight_segments):
        mask[a:b] = True
    return mask


def finish_gradient(g, theta, inv_batch, l2, weight_segments):
    """g * inv_batch + l2 * theta on the weight segments (returns a new float64 array)."""
    g, theta = _f64(g, theta)
    return g * inv_batch + l2 * theta * weight_mask(len(g), weight_segments)


def sgd_update(theta, g, lr):
    """theta - lr * g in float64."""
    theta, g = _f64(theta, g)
    return theta - lr * g


def sgd_update_f32(theta, g, lr):
    """The float32 expression the kernel must match bitwise."""
    return theta - np.float32(lr) * g


def make_candidate(theta, g, z, lr, sigma, weight_segments):
    """(theta - lr * (g + sigma * z), its squared weight norm), float64."""
    theta, g, z = _f64(theta, g, z)
    out = theta - lr * (g + sigma * z)
    w = out[weight_mask(len(out), weight_segments)]
    return out, float(w @ w)


def make_candidate_f32(theta, g, z, lr, sigma, weight_segments):
    """The float32 expression the kernel must match bitwise, and its squared weight norm (float64)."""
    out = theta - np.float32(lr) * (g + np.float32(sigma) * z)
    w = out[weight_mask(len(out), weight_segments)].astype(np.float64)
    return out, float(w @ w)


def component_stats(g):
    """(mean, variance, squared norm) in float64."""
    (g,) = _f64(g)
    return float(g.mean()), float(g.var()), float(g @ g)


def evaluate(X, y, views):
    """Summed cross-entropy and correct count over the whole set, in one shot."""
    W1, b1, W2, b2 = views
    return forward_loss(X, y, W1, b1, W2, b2)


def checksum(theta):
    """The FNV-1a-style hash of the float32 bit patterns, in pure Python integers."""
    h = 1469598103934665603
    p = 1099511628211
    mask = (1 << 64) - 1
    for b in np.ascontiguousarray(theta, dtype=np.float32).view(np.uint32).tolist():
        h = ((h ^ b) * p) & mask
    return h >> 1


# ---------------------------------------------------------------------------- networks of any depth
def activate(a, act):
    """The hidden activation (``act``: 'sigmoid', 'relu', 'tanh' or its index), float64."""
    name = act if isinstance(act, str) else ("sigmoid", "relu", "tanh")[act]
    if name == "sigmoid":
        return sigmoid(a)
    if name == "relu":
        return np.maximum(a, 0.0)
    return np.tanh(a)


def activation_slope(h, act):
    """d act / d pre-activation, from the activation h."""
    name = act if isinstance(act, str) else ("sigmoid", "relu", "tanh")[act]
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "relu":
        return (h > 0).astype(np.float64)
    return 1.0 - h * h


def deep_logits(X, Ws, bs, act):
    """(the hidden activations, one array per hidden layer; the output logits), float64."""
    A = np.asarray(X, dtype=np.float64)
    Hs = []
    for W, b in zip(Ws[:-1], bs[:-1]):
        A = activate(A @ np.asarray(W, np.float64) + np.asarray(b, np.float64), act)
        Hs.append(A)
    return Hs, A @ np.asarray(Ws[-1], np.float64) + np.asarray(bs[-1], np.float64)


def deep_forward_loss(X, y, Ws, bs, act):
    """(summed cross-entropy, correct count) of the network (Ws, bs)."""
    _, Z = deep_logits(X, Ws, bs, act)
    y = np.asarray(y, dtype=np.int64)
    return float(-log_softmax(Z)[np.arange(len(y)), y].sum()), int((Z.argmax(axis=1) == y).sum())


def deep_forward_backward(X, y, Ws, bs, act):
    """(loss, correct, gWs, gbs): the gradient of the summed cross-entropy, float64, by the chain rule."""
    X64 = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    Hs, Z = deep_logits(X, Ws, bs, act)
    P = np.exp(log_softmax(Z))
    P[np.arange(len(y)), y] -= 1.0
    D = P
    inputs = [X64, *Hs]
    gWs, gbs = [None] * len(Ws), [None] * len(Ws)
    for l in range(len(Ws) - 1, -1, -1):
        gWs[l] = inputs[l].T @ D
        gbs[l] = D.sum(axis=0)
        if l:
            D = (D @ np.asarray(Ws[l], np.float64).T) * activation_slope(Hs[l - 1], act)
    loss, correct = deep_forward_loss(X, y, Ws, bs, act)
    return loss, correct, gWs, gbs


def lowrank_losses(X, y, Ws, bs, As, Bts, Cs, aw, ab, act):
    """K + 1 summed cross-entropies: candidate k's network has weights W_l - aw_l A_l[k] @ Bt_l[k] and
    biases b_l - ab_l C_l[k], built densely in float64; the last value is the unperturbed network's."""
    K = As[0].shape[0]
    out = []
    for k in range(K):
        Wk = [np.asarray(W, np.float64) - float(aw[l]) * (As[l][k].astype(np.float64) @ Bts[l][k].astype(np.float64))
              for l, W in enumerate(Ws)]
        bk = [np.asarray(b, np.float64) - float(ab[l]) * Cs[l][k] for l, b in enumerate(bs)]
        out.append(deep_forward_loss(X, y, Wk, bk, act)[0])
    out.append(deep_forward_loss(X, y, Ws, bs, act)[0])
    return np.array(out)


# ---------------------------------------------------------------------------- counter-based noise
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # Random123's Philox4x32 multipliers
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # and its Weyl key increments
_M32 = np.uint64(0xFFFFFFFF)


def philox4x32(counters, key, rounds=10):
    """Philox4x32-R (Salmon et al., SC'11; Random123's philox.h) of each row of ``counters`` (N x 4, words
    c0..c3) under ``key`` (two 32-bit words): N x 4 uint32, computed in uint64 arithmetic with masks."""
    x = [np.asarray(counters, dtype=np.uint64)[:, i].copy() for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + np.uint64(_PHILOX_W[0])) & _M32, (k1 + np.uint64(_PHILOX_W[1])) & _M32
        p0 = np.uint64(_PHILOX_M[0]) * x[0]  # < 2**64: exact
        p1 = np.uint64(_PHILOX_M[1]) * x[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _M32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _M32
        x = [hi1 ^ x[1] ^ k0, lo1, hi0 ^ x[3] ^ k1, lo0]
    return np.stack(x, axis=1).astype(np.uint32)


def counter_words(key, counter_hi, start, n):
    """The uint32 words start..start+n-1 of the stream whose block b is Philox4x32-10 of the counter
    (b, *counter_hi) under ``key``: word j is word j mod 4 of block j // 4."""
    first, last = start // 4, (start + n + 3) // 4
    blocks = np.arange(first, last, dtype=np.uint64)
    ctr = np.column_stack([blocks] + [np.full(blocks.size, c, np.uint64) for c in counter_hi])
    words = philox4x32(ctr, key).reshape(-1)
    return words[start - 4 * first : start - 4 * first + n]


def box_muller(words):
    """Standard normals in float64 from pairs of uint32 words (w_a, w_b) (even length): with the top 24 bits
    of each, u = (w_a >> 8 + 1) / 2**24 in (0, 1] and the angle t = 2 pi (w_b >> 8) / 2**24,
    z = sqrt(-2 ln u) (cos t, sin t)."""
    w = np.asarray(words, dtype=np.uint64).reshape(-1, 2) >> np.uint64(8)
    u = (w[:, 0].astype(np.float64) + 1.0) / 2.0**24
    t = 2.0 * np.pi * w[:, 1].astype(np.float64) / 2.0**24
    r = np.sqrt(-2.0 * np.log(u))
    return np.column_stack([r * np.cos(t), r * np.sin(t)]).reshape(-1)
