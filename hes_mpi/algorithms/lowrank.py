"""``--perturb lowrank:R``: every layer of an H-ES candidate perturbed by a rank-R product.

Candidate k's layer l is ``W - aw_l A Bt`` and ``b - ab_l c``, where A (fan_in x R), Bt (R x fan_out)
and c (fan_out) are read, in that order and layer by layer, from the candidate's noise vector (the
draw of its key (seed, i, n, k), :mod:`hes_mpi.noise`), and aw_l = lr sigma_l / sqrt(R), ab_l = lr
sigma_l, so that every component of A Bt / sqrt(R) has unit variance as a dense normal draw does. A
candidate costs R (fan_in + fan_out) + fan_out numbers per layer instead of fan_in x fan_out.

:class:`LowRankCandidates` holds the factors of the K candidates and the work buffers of their forward
passes (:func:`hes_mpi.kernels.lowrank_losses`: the first layer's product shared, deeper layers as one
product over the K + 1 stacked inputs), costs them with their L2 terms, and rebuilds any candidate's
perturbation into a parameter vector (every rank computes the same float32 numbers from the same key).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels


class LowRankCandidates:
    """The K candidates of one rank's ES step for a network ``model``, in chunks of ``chunk`` rows."""

    def __init__(self, model, K: int, R: int, chunk: int):
        self.model, self.K, self.R, self.chunk = model, K, R, chunk
        dims = model.layer_dims
        self.noise_length = sum(R * (a + b) + b for a, b in dims)
        self.As = tuple(np.empty((K, a, R), np.float32) for a, _ in dims)
        self.Bts = tuple(np.empty((K, R, b), np.float32) for _, b in dims)
        self.Cs = tuple(np.empty((K, b), np.float32) for _, b in dims)
        self.Ss = tuple(np.empty(((K + 1) * chunk, b), np.float32) for _, b in dims)
        self.Us = tuple(np.empty((chunk, b), np.float32) for _, b in dims)
        self.P0 = np.empty((chunk, model.dims[1]), np.float32)
        self.T = np.empty((chunk, R), np.float32)

    def set(self, k: int, z: np.ndarray) -> None:
        """Candidate slot k's factors (A, Bt, c of every layer) from its noise vector z."""
        R, off = self.R, 0
        for l, (a, b) in enumerate(self.model.layer_dims):
            self.As[l][k] = z[off : off + a * R].reshape(a, R)
            off += a * R
            self.Bts[l][k] = z[off : off + R * b].reshape(R, b)
            off += R * b
            self.Cs[l][k] = z[off : off + b]
            off += b

    def scales(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(aw, ab) float32 for a step of ``step[l]`` (= lr sigma_l) per layer: step / sqrt(R) on the weights'
        product, step on the biases."""
        return (step / math.sqrt(self.R)).astype(np.float32), step.astype(np.float32)

    def costs(self, base: np.ndarray, batch, step: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
        """(mean cross-entropy + L2 of the K candidates set around ``base``, that of ``base``) on ``batch``."""
        m, K = self.model, self.K
        aw, ab = self.scales(step)
        Ws, bs = m.layer_views(base)
        losses = np.zeros(K + 1)
        for X, y in batch.chunks(self.chunk):
            kernels.lowrank_losses(X, y, Ws, bs, self.As, self.Bts, self.Cs, aw, ab, self.Ss, self.P0, self.T,
                                   self.Us, losses, m.activation_code)
        # L2: ||W - aw A Bt||^2 = ||W||^2 - 2 aw <W, A Bt> + aw^2 ||A Bt||^2 per layer, the last two from
        # W Bt^T and the R x R Gram matrices of the factors (float64).
        sq = sum(kernels.sum_squares(W.reshape(-1)) for W in Ws)
        dsq = np.zeros(K)
        for l, W in enumerate(Ws):
            A, Bt = self.As[l], self.Bts[l]
            WB = (W @ Bt.reshape(-1, W.shape[1]).T).reshape(W.shape[0], K, self.R)
            inner = np.einsum("kmr,mkr->k", A, WB, dtype=np.float64)
            gram = (np.einsum("kmr,kms->krs", A, A, dtype=np.float64)
                    * np.einsum("krn,ksn->krs", Bt, Bt, dtype=np.float64))
            a = float(aw[l])
            dsq += -2.0 * a * inner + a * a * gram.sum(axis=(1, 2))
        n = max(batch.n, 1)
        return losses[:K] / n + 0.5 * l2 * (sq + dsq), losses[K] / n + 0.5 * l2 * sq

    def apply(self, target: np.ndarray, z: np.ndarray, step: np.ndarray) -> None:
        """target (laid out as theta) <- target - the perturbation of noise vector z, layer l scaled by
        step[l] (through slot 0 of the factors)."""
        self.set(0, z)
        views = self.model.views(target)
        for l in range(self.model.n_layers):
            c = float(step[l])
            kernels.lowrank_update(views[2 * l], self.As[l][0], self.Bts[l][0], c / math.sqrt(self.R))
            kernels.sgd_update(views[2 * l + 1], self.Cs[l][0], c)

    def work_bytes(self, rows: int) -> int:
        """Bytes the candidates' evaluation writes for a chunk of ``rows`` (at most ``chunk``) rows: the K + 1
        candidates' activations of every layer, the shared first-layer product, the low-rank terms, and
        the factors of the K candidates."""
        r = min(rows, self.chunk)
        out = self.P0[:r].nbytes + self.T[:r].nbytes
        out += sum(a[: (self.K + 1) * r].nbytes for a in self.Ss) + sum(a[:r].nbytes for a in self.Us)
        return out + sum(a.nbytes for a in self.As + self.Bts + self.Cs)
