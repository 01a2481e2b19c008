"""Hybrid-ES: full gradient steps every r-th iteration, seeded-perturbation selection in between.

ES step at iteration i (rank n of p): for k in 0..K-1 draw z ~ N(0, I) from the key
(seed, i, n, k), form the candidate theta - lr * (g + sigma * z) around the last full gradient g,
and cost it with a forward pass on this rank's rows. One MINLOC Allreduce over
(cost, n*K + k) picks the global winner (lowest index on ties); every rank regenerates the winner's
z from its key and applies the same update. Only 12 bytes per rank cross the network.

sigma^2 scale: with ``--sigma-scale relative`` (default) the noise variance is
``sigma2 * var(g)``, where var(g) is the empirical per-component variance of the last full
gradient (the poster's "optimal sigma^2"); ``absolute`` uses ``sigma2`` as is.

``--assisted``: a gradient refresh on every iteration, followed by an ES selection around it.

``--noise``: where z comes from (a Philox stream per key, or a slice of a shared table); see
:mod:`hes_mpi.noise`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels, noise
from .bgd import BGD, KIND_ASSISTED, KIND_ES, KIND_GRAD, StepInfo


class HybridES(BGD):
    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        super().__init__(cfg, model, comm, max_rows, global_batch)
        self.noise = noise.Perturbations(cfg.noise, cfg.seed, model.param_count)
        self.cand = np.empty(model.param_count, dtype=np.float32)
        self.cand_views = model.views(self.cand)
        self.grad_var = 0.0

    def work_bytes(self, kind: int, rows: int) -> int:
        """ES step: the batch, the last gradient (read), one noise vector and one candidate vector,
        and the forward pass only (rows x hidden + rows x classes): no backward pass is kept.
        Assisted steps touch both sets."""
        m = self.model
        z = self.noise.buffer_bytes
        es = self._batch_bytes(rows) + self.g.nbytes + z + self.cand.nbytes
        es += rows * (m.hidden + m.n_out) * 4
        if kind == KIND_ES:
            return es
        grad = super().work_bytes(KIND_GRAD, rows)
        return grad if kind == KIND_GRAD else grad + z + self.cand.nbytes

    def sigma(self) -> float:
        s2 = self.cfg.sigma2 * (self.grad_var if self.cfg.sigma_scale == "relative" else 1.0)
        return math.sqrt(s2)

    def step(self, i: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> StepInfo:
        cfg = self.cfg
        info = StepInfo()
        if cfg.is_grad_step(i) or not self.has_grad:
            self.gradient(i, theta, X, y, info)
            self.grad_var = info.grad_var
            if not cfg.is_es_step(i):
                info.kind = KIND_GRAD
                kernels.sgd_update(theta, self.g, cfg.lr)
                return info
            info.kind = KIND_ASSISTED
        else:
            info.kind = KIND_ES
        self.es_select(i, theta, X, y, info)
        return info

    def candidate_costs(self, i: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
        """Cost (mean cross-entropy on this rank's rows + L2) of each of this rank's K candidates."""
        cfg = self.cfg
        n = X.shape[0]
        costs = np.full(cfg.K, np.inf)
        if n == 0:
            return costs
        rank = self.comm.rank
        for k in range(cfg.K):
            z = self.noise.get(i, rank, k)
            sq = kernels.make_candidate(theta, self.g, z, cfg.lr, sigma, self.cand, self.segments)
            loss, _ = kernels.forward_loss(X, y, *self.cand_views, self.ws.H, self.ws.Z)
            costs[k] = loss / n + 0.5 * cfg.l2 * sq
        return costs

    def es_select(self, i: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, info: StepInfo) -> None:
        cfg = self.cfg
        self.comm.set_phase("es", i)
        sigma = self.sigma()
        costs = self.candidate_costs(i, theta, X, y, sigma)
        k_best = int(np.argmin(costs))
        value, index = self.comm.minloc(float(costs[k_best]), self.comm.rank * cfg.K + k_best)
        win_rank, win_k = divmod(index, cfg.K)
        z = self.noise.get(i, win_rank, win_k)
        kernels.make_candidate(theta, self.g, z, cfg.lr, sigma, self.cand, self.segments)
        theta[:] = self.cand
        info.sigma = sigma
        info.es_cost = value
        info.es_rank = win_rank
        info.es_k = win_k
        if info.n_local == 0:
            info.n_local = X.shape[0]


__all__ = ["KIND_ASSISTED", "KIND_ES", "KIND_GRAD", "HybridES"]
