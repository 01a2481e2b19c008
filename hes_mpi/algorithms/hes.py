"""Hybrid-ES: full gradient steps every r-th iteration, seeded-perturbation selection in between.

ES step at iteration i (rank n of p), the poster's plain algorithm (``train --plain``): for k in
0..K-1 draw z ~ N(0, I) from the key (seed, i, n, k), form the candidate theta - lr * (g + sigma * z)
around the last full gradient g, and cost it with a forward pass on this rank's rows. One MINLOC
Allreduce over (cost, n*K + k) picks the global winner (lowest index on ties); every rank regenerates
the winner's z from its key and applies the same update. Only 12 bytes per rank cross the network.

Methods on top of it, each a ``train`` option (docs/results.md's ablation table measures each one):

``--perturb output``
    Perturb the output layer (W2, b2) only. The base step theta - lr * g is applied in place first, so
    the hidden layer is the same for every candidate: it is computed once per chunk of rows and shared,
    and each candidate costs one small (rows x hidden) @ (hidden x classes) product. The rows are read
    from the shard in chunks of :data:`CHUNK_ROWS`, so an ES step never holds the whole batch.
``--perturb lowrank:R``
    Perturb every layer: candidate k's weight matrix of layer l is W - lr sigma_l A Bt / sqrt(R), with A
    (fan_in x R) and Bt (R x fan_out) standard normal, so each component has unit variance as with
    ``all``; its bias is b - lr sigma_l c. A, Bt and c come from the key (seed, i, n, k) like any
    perturbation (R (fan_in + fan_out) + fan_out numbers per layer instead of fan_in x fan_out). The base
    step is applied in place first, as with ``output``; the first layer's product X W is computed once
    per chunk and shared, deeper layers multiply the K + 1 stacked inputs by W in one product and add each
    candidate's low-rank term (:mod:`.lowrank`). sigma_l is set per layer: with
    ``--sigma-scale relative``, sigma_l^2 = sigma2 * var(g_l), the variance of layer l's gradient components.
``--baseline``
    Costs are measured against the unperturbed candidate (theta - lr * g) on the same rows, so that
    ranks with an easier or harder shard of the batch compare fairly in the MINLOC.
``--antithetic``
    Candidates come in pairs +z, -z (K/2 draws).
``--recombine weighted``
    Every rank gathers all p*K costs (8 bytes each) and applies the weighted mean of the best half of
    the perturbations (log-rank weights, as in CMA-ES), instead of the single best.
``--carry``
    After an ES step the chosen perturbation stays in the direction: g <- g + sigma * z, so the next ES
    step before a gradient refresh starts from it.
``--adapt-sigma``
    sigma is multiplied by exp(0.05) after an ES step whose winner beat the unperturbed candidate and
    by exp(-0.2) otherwise (a success rule aiming at 80% successes); needs ``--baseline``.
``--es-rows F``
    Candidates are costed on ceil(F * n) of this rank's n rows of the batch, drawn uniformly from the key
    (seed, i, n) (``Batch.sample``), which cuts the ES step's forward work by 1 - F.
``--es-step F``
    ES steps move along the stored gradient by F x lr instead of lr (candidates theta - lr (F g + sigma z)):
    a damped step on a gradient up to r - 1 iterations old (assisted steps, on a fresh gradient, keep lr).
    0 (the default) means 1 for r <= 2 and 0.7 for r >= 3, the best measured on MNIST.
``--fallback``
    With ``--baseline``: when no candidate of any rank beats the unperturbed one (the agreed best value
    is >= 0), no perturbation is applied, so the step is a plain reuse of the gradient (``es_k`` -1).
``--dist rademacher``
    Perturbation components are +-1 (the signs of the normal draws) instead of normal.

sigma^2 scale: with ``--sigma-scale relative`` (default) the noise variance is
``sigma2 * var(g_S)``, where var(g_S) is the empirical per-component variance of the perturbed
components S of the last full gradient (the poster's "optimal sigma^2"; per layer with ``lowrank``);
``absolute`` uses ``sigma2``.

``--assisted``: a gradient refresh on every iteration, followed by an ES selection around it.

``--noise``: where z comes from (a slice of a shared table, a NumPy Philox stream per key, or Philox4x32-10
computed per element from the key, table-free); see :mod:`hes_mpi.noise`.
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels, noise
from ..config import perturb_rank
from ..schema import StepKind
from .base import GradientStep, StepInfo, UsesGradientStep
from .lowrank import LowRankCandidates

#: Rows per chunk when ``--perturb output`` evaluates candidates (bounds the ES step's working set).
CHUNK_ROWS = 192
_ADAPT_UP, _ADAPT_DOWN = math.exp(0.05), math.exp(-0.2)
_SIGMA_MULT_RANGE = (1e-3, 1e3)


class HybridES(UsesGradientStep):
    """Hybrid-ES (an :class:`~hes_mpi.algorithms.base.Algorithm`): a :class:`GradientStep` every r-th
    iteration, the ES selection around the stored gradient in between."""

    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        self.cfg = cfg
        self.model = model
        self.grad = GradientStep(cfg, model, comm, max_rows, global_batch)
        self.g = self.grad.g  # the stored gradient (the same buffer: ES steps read it, --carry moves it)
        self.ws = self.grad.ws
        self.segments = self.grad.segments
        o = model.offsets
        self.R = perturb_rank(cfg.perturb)
        self.mode = "lowrank" if self.R else cfg.perturb
        self.head_only = self.mode == "output"
        self.base_in_place = self.mode != "all"  # the base step theta - lr g is applied before the candidates
        self.seg = slice(o[-3], o[-1]) if self.head_only else slice(0, o[-1])
        chunk = min(CHUNK_ROWS, max_rows)
        K = cfg.K
        n = self.seg.stop - self.seg.start
        self.cand = None
        if self.mode == "lowrank":
            self.lowrank = LowRankCandidates(model, K, self.R, chunk)
            n = self.lowrank.noise_length
            self.zs = np.empty((K, n), dtype=np.float32)
            self.zsum = np.empty(0, dtype=np.float32)
        elif self.head_only:
            self.zs = np.empty((K, n), dtype=np.float32)
            self.Hs = tuple(np.empty((chunk, w), dtype=np.float32) for w in model.hidden)
            self.Z = np.empty((chunk, model.n_out), dtype=np.float32)
            self.Zp = np.empty((chunk, K * model.n_out), dtype=np.float32)
            self.Zcat = np.empty((model.hidden[-1], K * model.n_out), dtype=np.float32)
            self.zsum = np.empty(n, dtype=np.float32)
        else:
            self.zs = np.empty((1, n), dtype=np.float32)
            self.cand = np.empty(model.param_count, dtype=np.float32)
            self.cand_layers = model.layer_views(self.cand)
            self.zsum = np.empty(n, dtype=np.float32)
        self.chunk = chunk
        self.noise = noise.Perturbations(cfg.noise, cfg.seed, n)
        self.grad_var = 0.0
        self.grad_vars = np.zeros(model.n_layers)  # per layer (lowrank)
        self.sigma_mult = 1.0
        self._allcosts = np.empty(comm.size * cfg.K, dtype=np.float64)

    # ------------------------------------------------------------------ state and accounting
    def state(self) -> dict:
        """The stored gradient, whether there is one, the gradient variance sigma is scaled by, and the
        --adapt-sigma multiplier."""
        out = {**self.grad.state(), "grad_var": float(self.grad_var), "sigma_mult": float(self.sigma_mult)}
        if self.mode == "lowrank":
            out["grad_vars"] = self.grad_vars
        return out

    def load_state(self, state: dict) -> None:
        self.grad.load_state(state)
        self.grad_var = float(state.get("grad_var", 0.0))
        if "grad_vars" in state:
            self.grad_vars[:] = state["grad_vars"]
        self.sigma_mult = float(state.get("sigma_mult", 1.0))

    def work_bytes(self, kind: int, rows: int) -> int:
        """Bytes of the buffers an ES step writes: with ``--perturb output`` one chunk of rows, its hidden
        layers and logits, and the K perturbations of the output layer (twice: as drawn and side by side
        for the product) plus the applied one; with ``lowrank`` one chunk of rows, the K + 1 candidates'
        activations of every layer for it, the shared first-layer product, the low-rank terms, and the K
        noise vectors (as drawn and split into their factors); else the rows, their forward pass, one noise
        vector and one candidate parameter vector. The parameters and the stored last gradient (state kept
        between steps) are not counted; no backward pass is kept. Assisted steps add the gradient step's
        buffers."""
        m = self.model
        es_rows = math.ceil(self.cfg.es_rows * rows)
        # The perturbation buffer, unless whole-vector candidates read normal draws straight from the table.
        zbytes = 0 if self._reads_table_in_place else self.zs.nbytes
        r = min(es_rows, self.chunk)
        if self.mode == "lowrank":
            es = self.grad.batch_bytes(r) + zbytes + self.lowrank.work_bytes(r)
        elif self.head_only:
            es = self.grad.batch_bytes(r) + sum(H[:r].nbytes for H in self.Hs) + self.Z[:r].nbytes
            es += self.Zp[:r].nbytes + zbytes + self.Zcat.nbytes + self.zsum.nbytes
        else:
            es = (self.grad.batch_bytes(es_rows) + zbytes + self.cand.nbytes
                  + es_rows * (sum(m.hidden) + m.n_out) * 4)
        if self.cfg.recombine == "weighted":
            es += self._allcosts.nbytes + (self.zsum.nbytes if self.mode == "all" else 0)
        if kind == StepKind.ES:
            return es
        grad = self.grad.work_bytes(rows)
        return grad if kind == StepKind.GRAD else grad + es

    def sigma(self) -> float:
        """sigma of the perturbed components (with ``lowrank``: of the output layer)."""
        s2 = self.cfg.sigma2 * (self.grad_var if self.cfg.sigma_scale == "relative" else 1.0)
        return math.sqrt(s2) * self.sigma_mult

    def sigmas(self) -> np.ndarray:
        """sigma of each layer (``lowrank``), float64."""
        v = self.grad_vars if self.cfg.sigma_scale == "relative" else np.ones(self.model.n_layers)
        return np.sqrt(self.cfg.sigma2 * v) * self.sigma_mult

    # ------------------------------------------------------------------ perturbations
    @property
    def _reads_table_in_place(self) -> bool:
        cfg = self.cfg
        return not self.head_only and cfg.noise == "table" and cfg.dist == "normal" and not cfg.antithetic

    def perturbation(self, i: int, rank: int, k: int, out: np.ndarray, view_ok: bool = False) -> np.ndarray:
        """z of candidate k of ``rank`` at iteration i (float32, exact), written into ``out``; with
        ``view_ok`` a normal draw from the shared table is returned in place (read-only), not copied."""
        cfg = self.cfg
        kk, neg = (k // 2, k % 2 == 1) if cfg.antithetic else (k, False)
        z = self.noise.get(i, rank, kk, out)  # the counter source writes into out
        if view_ok and cfg.dist == "normal" and not neg and self.noise.source == "table":
            return z
        if cfg.dist == "rademacher":
            np.copysign(np.float32(1.0), z, out=out)
            if neg:
                np.negative(out, out=out)
        elif neg:
            np.negative(z, out=out)
        elif z is not out:
            out[:] = z
        return out

    # ------------------------------------------------------------------ the step
    def step(self, i: int, theta: np.ndarray, batch) -> StepInfo:
        cfg = self.cfg
        info = StepInfo()
        if cfg.is_grad_step(i) or not self.grad.has_grad:
            X, y = batch.full()
            self.grad.compute(i, theta, X, y, info)
            if self.mode == "lowrank":
                for l in range(self.model.n_layers):
                    self.grad_vars[l] = kernels.component_stats(self.g[self.model.layer_slice(l)])[1]
                self.grad_var = float(self.grad_vars[-1])
            elif self.head_only:
                self.grad_var = kernels.component_stats(self.g[self.seg])[1]
            else:
                self.grad_var = info.grad_var
            if not cfg.is_es_step(i):
                info.kind = StepKind.GRAD
                kernels.sgd_update(theta, self.g, cfg.lr)
                return info
            info.kind = StepKind.ASSISTED
        else:
            info.kind = StepKind.ES
        self.es_select(i, theta, batch, info)
        return info

    def _step_scale(self, i: int) -> float:
        """--es-step on an ES step around an older gradient; 1 on an assisted step (a fresh gradient)."""
        return 1.0 if self.cfg.is_grad_step(i) else self.cfg.effective_es_step

    def _l2(self, sq: float) -> float:
        return 0.5 * self.cfg.l2 * sq

    def output_layer_costs(self, i: int, base: np.ndarray, batch, sigma: float) -> tuple[np.ndarray, float]:
        """Costs of the K output-layer candidates around ``base`` (= theta - lr * g), and of ``base``."""
        cfg = self.cfg
        rank = self.comm.rank
        for k in range(cfg.K):
            self.perturbation(i, rank, k, self.zs[k])
        a = cfg.lr * sigma
        m = self.model
        Ws, bs = m.layer_views(base)
        W2 = Ws[-1]
        Zcat, zb = kernels.head_perturbations(self.zs, m.hidden[-1], m.n_out, self.Zcat)
        losses = np.zeros(cfg.K + 1)
        act = m.activation_code
        for X, y in batch.chunks(self.chunk):
            kernels.head_losses(X, y, Ws, bs, Zcat, zb, a, self.Hs, self.Z, self.Zp, losses, act)
        # L2 of each candidate: ||W1||^2 ... (the hidden layers) is shared; the output layer's is
        # ||W2 - a z_W2||^2 = ||W2||^2 - 2a <W2, z> + a^2 ||z||^2.
        zw = self.zs[:, : W2.size]
        w2 = W2.reshape(-1)
        # The hidden layers' ||W||^2 is the same for every candidate of every rank: it only shifts the costs,
        # and with --baseline it cancels exactly, so it is left out then (a pass over the weights saved).
        sq1 = 0.0 if self.cfg.baseline else sum(kernels.sum_squares(W.reshape(-1)) for W in Ws[:-1])
        sq2 = kernels.sum_squares(w2)
        sq = sq1 + sq2 - 2.0 * a * (zw @ w2).astype(np.float64) + a * a * np.einsum("kj,kj->k", zw, zw, dtype=np.float64)
        n = max(batch.n, 1)
        costs = losses[: cfg.K] / n + self._l2(sq)
        base_cost = losses[cfg.K] / n + self._l2(sq1 + sq2)
        return costs, base_cost

    def lowrank_costs(self, i: int, base: np.ndarray, batch, sigmas: np.ndarray) -> tuple[np.ndarray, float]:
        """Costs of the K low-rank candidates around ``base`` (= theta - lr * g), and of ``base``."""
        rank = self.comm.rank
        for k in range(self.cfg.K):
            self.lowrank.set(k, self.perturbation(i, rank, k, self.zs[k]))
        return self.lowrank.costs(base, batch, self.cfg.lr * sigmas, self.cfg.l2)

    def _full_costs(self, i: int, theta: np.ndarray, batch, sigma: float, with_base: bool) -> tuple[np.ndarray, float]:
        """Costs of the K whole-vector candidates theta - lr * (g + sigma * z_k), and of theta - lr * g."""
        cfg = self.cfg
        X, y = batch.full()
        n = X.shape[0]
        costs = np.full(cfg.K, np.inf)
        if n == 0:
            return costs, math.inf
        rank = self.comm.rank
        F = self._step_scale(i)
        lr = cfg.lr * F  # candidates theta - lr F (g + sigma / F z) = theta - lr (F g + sigma z)
        act = self.model.activation_code
        for k in range(cfg.K):
            z = self.perturbation(i, rank, k, self.zs[0], view_ok=True)
            sq = kernels.make_candidate(theta, self.g, z, lr, sigma / F, self.cand, self.segments)
            loss, _ = kernels.forward_loss(X, y, *self.cand_layers, self.ws.Hs, self.ws.Z, act)
            costs[k] = loss / n + self._l2(sq)
        base_cost = math.nan
        if with_base:
            sq = kernels.make_candidate(theta, self.g, self.g, lr, 0.0, self.cand, self.segments)  # theta - lr F g
            loss, _ = kernels.forward_loss(X, y, *self.cand_layers, self.ws.Hs, self.ws.Z, act)
            base_cost = loss / n + self._l2(sq)
        return costs, base_cost

    def candidate_costs(self, i: int, theta: np.ndarray, batch, sigma: float) -> tuple[np.ndarray, float]:
        """(costs of this rank's K candidates around ``theta``, cost of the unperturbed one), as the ES step
        at iteration i would compute them; ``theta`` is not changed. (The unperturbed cost is NaN with
        whole-vector perturbations and no ``--baseline``: it is not computed then.)"""
        batch = batch.sample(self.cfg.es_rows, (self.cfg.seed, i, self.comm.rank), self.cfg.es_rows_sample)
        if self.base_in_place:
            base = theta.copy()
            kernels.sgd_update(base, self.g, self.cfg.lr * self._step_scale(i))
            return self._costs_around(i, base, batch, sigma)
        return self._full_costs(i, theta, batch, sigma, self.cfg.baseline or self.cfg.adapt_sigma)

    def _costs_around(self, i: int, base: np.ndarray, batch, sigma: float) -> tuple[np.ndarray, float]:
        """``output`` and ``lowrank``: the K candidates' costs around the base step, and the base's (``lowrank``
        scales each layer by its own sigma, :meth:`sigmas`; ``sigma`` is the output layer's)."""
        if batch.n == 0:
            return np.full(self.cfg.K, np.inf), math.inf
        if self.mode == "lowrank":
            return self.lowrank_costs(i, base, batch, self.sigmas())
        return self.output_layer_costs(i, base, batch, sigma)

    def _select(self, values: np.ndarray) -> tuple[float, list[tuple[int, float]]]:
        """The agreed winner(s): (value of the best, [(global index, weight), ...])."""
        cfg, comm = self.cfg, self.comm
        if cfg.recombine == "best":
            k = int(np.argmin(values))
            value, index = comm.minloc(float(values[k]), comm.rank * cfg.K + k)
            return value, [(index, 1.0)]
        allc = comm.Allgather(np.ascontiguousarray(values, dtype=np.float64), self._allcosts)
        order = np.argsort(allc, kind="stable")
        mu = max(1, allc.size // 2)
        w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
        w /= w.sum()
        return float(allc[order[0]]), [(int(order[j]), float(w[j])) for j in range(mu)]

    def es_select(self, i: int, theta: np.ndarray, batch, info: StepInfo) -> None:
        cfg = self.cfg
        self.comm.set_phase("es", i)
        sigma = self.sigma()
        rows = batch.sample(cfg.es_rows, (cfg.seed, i, self.comm.rank), cfg.es_rows_sample)
        if self.base_in_place:
            kernels.sgd_update(theta, self.g, cfg.lr * self._step_scale(i))  # the base step, shared by all
            costs, base_cost = self._costs_around(i, theta, rows, sigma)
        else:
            costs, base_cost = self._full_costs(i, theta, rows, sigma, cfg.baseline or cfg.adapt_sigma)
        values = costs - base_cost if cfg.baseline else costs
        values = np.where(np.isnan(values), np.inf, values)  # a rank with no rows (inf - inf) never wins
        value, winners = self._select(values)
        if cfg.fallback and value >= 0.0:  # the same value on every rank: all keep the unperturbed candidate
            if not self.base_in_place:
                F = self._step_scale(i)
                kernels.make_candidate(theta, self.g, self.g, cfg.lr * F, 0.0, theta, self.segments)
            info.sigma, info.es_cost, info.es_rank, info.es_k = sigma, value, -1, -1
            if cfg.adapt_sigma:
                lo, hi = _SIGMA_MULT_RANGE
                self.sigma_mult = min(hi, max(lo, self.sigma_mult * _ADAPT_DOWN))
            if info.n_local == 0:
                info.n_local = batch.n
            return
        if self.mode == "lowrank":
            sigmas = self.sigmas()
            for index, w in winners:  # the same order everywhere
                z = self.perturbation(i, *divmod(index, cfg.K), self.zs[0])
                self.lowrank.apply(theta, z, w * cfg.lr * sigmas)
                if cfg.carry:
                    self.lowrank.apply(self.g, z, -w * sigmas)  # g <- g + sigma z
            self._after_selection(value, winners, sigma, batch, info)
            return
        # The applied perturbation: the winner's z, or the weighted mean of the winners' (same order everywhere).
        if len(winners) == 1:
            index, _ = winners[0]
            z = self.perturbation(i, *divmod(index, cfg.K), self.zsum, view_ok=not self.head_only)
        else:
            z = self.zsum
            z[:] = 0.0
            tmp = self.zs[0]
            for index, w in winners:
                self.perturbation(i, *divmod(index, cfg.K), tmp)
                z += np.float32(w) * tmp
        if self.head_only:
            kernels.sgd_update(theta[self.seg], z, cfg.lr * sigma)
        else:
            F = self._step_scale(i)  # theta - lr F (g + sigma / F z) = theta - lr (F g + sigma z)
            kernels.make_candidate(theta, self.g, z, cfg.lr * F, sigma / F, theta, self.segments)
        if cfg.carry:
            kernels.sgd_update(self.g[self.seg], z, -sigma)  # g <- g + sigma * z
        self._after_selection(value, winners, sigma, batch, info)

    def _after_selection(self, value: float, winners, sigma: float, batch, info: StepInfo) -> None:
        """--adapt-sigma's update and the step's record."""
        cfg = self.cfg
        if cfg.adapt_sigma:
            up = value < 0.0
            lo, hi = _SIGMA_MULT_RANGE
            self.sigma_mult = min(hi, max(lo, self.sigma_mult * (_ADAPT_UP if up else _ADAPT_DOWN)))
        win_rank, win_k = divmod(winners[0][0], cfg.K)
        info.sigma = sigma
        info.es_cost = value
        info.es_rank = win_rank
        info.es_k = win_k
        if info.n_local == 0:
            info.n_local = batch.n


__all__ = ["HybridES"]
