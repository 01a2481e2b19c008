"""Step benchmarks (``hes-mpi bench steps|forward``): what an ES step costs against a gradient step, and
the K-candidate forward passes against the bare matrix products.

Every figure is a ratio of two medians measured in the same process, in interleaved repetitions after
a warm-up (:func:`hes_mpi.bench.harness.interleave`), because the machines these run on are shared and noisy:

``forward``: ``forward_vs_blas``
    One rank's K-candidate evaluation of an ES step (the forward passes of the default ``train --algo
    hes``, or of ``--plain``), against the bare matrix products of the same shapes timed alone (the BLAS
    bound); 1.0 means the element-wise work (sigmoid, softmax, perturbations) costs nothing.
``steps``: ``es_over_grad_step``, ``noise_share``, ``mem_es_over_grad`` and the step table
    Gradient and ES steps of H-ES (r = 2) alternating on the same batches, through the instrumented
    communicator: median step times, their ratio, the share of the ES step spent producing
    perturbations, bytes sent per rank per step, and the step memory of each kind: the bytes of the
    buffers the step writes plus the transient peak tracemalloc sees while it runs; and the FLOP floor of
    each step: its matrix products alone on the same rows (:func:`grad_products`, :func:`es_products`),
    timed interleaved, with the FLOPs they make (:func:`grad_flops`, :func:`es_flops`).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .. import kernels
from ..config import method_label
from ..schema import OPS, PHASES, StepKind
from ..telemetry import traced_peak
from .harness import BenchSetup, interleave, slowest
from .harness import median as _median


# ------------------------------------------------------------------------------------------ steps
def steps(comm, cfg, reps: int = 40, warmup: int = 4) -> dict:
    """Gradient and ES steps of H-ES (``cfg``, r forced to 2) alternating on the first batches."""
    from ..algorithms import HybridES

    cfg = dataclasses.replace(cfg, algo="hes", r=2, assisted=False)
    s = BenchSetup(comm, cfg)
    algo = HybridES(cfg, s.model, comm, s.max_rows, cfg.batch)
    theta = s.model.init_params(cfg.seed)
    batches = list(s.batches(0))
    noise_t = [0.0]
    real = algo.perturbation

    def timed_perturbation(*a, **kw):
        t = time.perf_counter()
        out = real(*a, **kw)
        noise_t[0] += time.perf_counter() - t
        return out

    algo.perturbation = timed_perturbation
    noise_es = []

    def grad_step(rnd):
        algo.step(2 * rnd, theta, batches[rnd % len(batches)])

    def es_step(rnd):
        noise_t[0] = 0.0
        algo.step(2 * rnd + 1, theta, batches[rnd % len(batches)])
        noise_es.append(noise_t[0])

    comm.drain()
    # an ES step follows its gradient step: no alternation of the order
    times = interleave({"grad": grad_step, "es": es_step}, reps, warmup, alternate=False, barrier=comm.Barrier,
                       clock=comm.wtime)
    t_grad, t_es = times["grad"], times["es"]
    share = np.array(noise_es[warmup:]) / t_es
    rec = comm.drain()
    algo.perturbation = real
    sent = {}
    for phase in ("grad", "es"):
        sel = (rec["phase"] == PHASES.index(phase)) & (rec["op"] != OPS.index("barrier"))
        n_steps = len(t_grad if phase == "grad" else t_es) + warmup
        sent[phase] = float(rec["bytes_sent"][sel].sum()) / max(n_steps, 1)
    # Step memory: the buffers each kind writes, plus what it allocates while it runs (tracemalloc).
    raw = comm.raw()
    algo.comm = raw
    peak_grad, _ = traced_peak(algo.step, 0, theta.copy(), batches[0])
    peak_es, _ = traced_peak(algo.step, 1, theta.copy(), batches[0])
    algo.comm = comm
    rows = batches[0].n
    mem_grad = algo.work_bytes(StepKind.GRAD, rows) + peak_grad
    mem_es = algo.work_bytes(StepKind.ES, rows) + peak_es
    # The FLOP floor of each step: its matrix products alone, on the same rows and buffers of the same shapes.
    X, _ = batches[0].full()
    es_rows = batches[0].head(cfg.es_rows).n
    grad_floor, es_floor = grad_products(s.model, theta, X), es_products(algo, theta, X[:es_rows])
    floor = interleave({"grad": lambda rnd: grad_floor(), "es": lambda rnd: es_floor()}, reps, warmup)
    med = slowest(comm, [_median(t_grad), _median(t_es), _median(share),
                         float(np.median(np.array(t_es) / np.array(t_grad))), _median(floor["grad"]),
                         _median(floor["es"])])
    return {
        "bench": "steps",
        "ranks": comm.size,
        "threads_per_rank": s.threads,
        "data": cfg.data,
        "layers": s.model.layers,
        "batch": cfg.batch,
        "K": cfg.K,
        "es_method": method_label(cfg.to_dict()),
        "reps": reps,
        "median_grad_step_s": float(med[0]),
        "median_es_step_s": float(med[1]),
        "es_over_grad_step": float(med[1] / med[0]),
        "es_over_grad_step_paired": float(med[3]),
        "grad_step_flops": grad_flops(s.model, rows),
        "es_step_flops": es_flops(s.model, cfg, es_rows),
        "grad_floor_s": float(med[4]),
        "es_floor_s": float(med[5]),
        "grad_step_over_floor": float(med[0] / med[4]),
        "es_step_over_floor": float(med[1] / med[5]),
        "es_over_grad_floor": float(med[5] / med[4]),
        "noise_share": float(med[2]),
        "grad_step_bytes_sent_per_rank": sent["grad"],
        "es_step_bytes_sent_per_rank": sent["es"],
        "grad_step_memory_bytes": int(mem_grad),
        "es_step_memory_bytes": int(mem_es),
        "mem_es_over_grad": float(mem_es / mem_grad),
    }


# ------------------------------------------------------------------------------------------ forward
def es_products(algo, theta: np.ndarray, X: np.ndarray):
    """A function that makes the matrix products of ``algo``'s K-candidate evaluation on the rows X, and
    nothing else (the BLAS floor of the ES step), with buffers of the same shapes."""
    from ..algorithms.hes import CHUNK_ROWS

    m, K = algo.model, algo.cfg.K
    Ws, _ = m.layer_views(theta)
    n = X.shape[0]
    rng = np.random.default_rng(0)
    chunk = min(CHUNK_ROWS, n)
    if algo.mode == "lowrank":
        R, lr = algo.R, algo.lowrank
        A = [rng.standard_normal((K, a, R), dtype=np.float32) for a, _ in m.layer_dims]
        Bt = [rng.standard_normal((K, R, b), dtype=np.float32) for _, b in m.layer_dims]

        def blas():
            for a in range(0, n, chunk):
                r = min(a + chunk, n) - a
                Xc = X[a : a + r]
                np.dot(Xc, Ws[0], lr.P0[:r])
                for k in range(K):
                    np.dot(Xc, A[0][k], lr.T[:r])
                    np.dot(lr.T[:r], Bt[0][k], lr.Us[0][:r])
                for l in range(1, m.n_layers):
                    S = lr.Ss[l - 1][: (K + 1) * r]
                    np.dot(S, Ws[l], lr.Ss[l][: (K + 1) * r])
                    for k in range(K):
                        np.dot(S[k * r : (k + 1) * r], A[l][k], lr.T[:r])
                        np.dot(lr.T[:r], Bt[l][k], lr.Us[l][:r])
        return blas
    if algo.head_only:
        Hs = [np.empty((chunk, w), np.float32) for w in m.hidden]
        Z = np.empty((chunk, m.n_out), np.float32)
        Zp = np.empty((chunk, K * m.n_out), np.float32)
        Zcat = rng.standard_normal((m.hidden[-1], K * m.n_out), dtype=np.float32)

        def blas():
            for a in range(0, n, chunk):
                r = min(a + chunk, n) - a
                H = X[a : a + r]
                for l in range(m.n_layers - 1):
                    np.dot(H, Ws[l], Hs[l][:r])
                    H = Hs[l][:r]
                np.dot(H, Ws[-1], Z[:r])
                np.dot(H, Zcat, Zp[:r])
        return blas
    Hs = [np.empty((n, w), np.float32) for w in m.hidden]
    Z = np.empty((n, m.n_out), np.float32)
    passes = K + (1 if algo.cfg.baseline or algo.cfg.adapt_sigma else 0)

    def blas():
        for _ in range(passes):
            H = X
            for l in range(m.n_layers - 1):
                np.dot(H, Ws[l], Hs[l])
                H = Hs[l]
            np.dot(H, Ws[-1], Z)
    return blas


def grad_products(m, theta: np.ndarray, X: np.ndarray):
    """A function that makes the matrix products of a gradient step on the rows X, and nothing else."""
    Ws, _ = m.layer_views(theta)
    n = X.shape[0]
    Hs = [np.empty((n, w), np.float32) for w in m.hidden]
    Ds = [np.empty((n, w), np.float32) for w in m.hidden]
    Z = np.empty((n, m.n_out), np.float32)
    gWs = [np.empty_like(W) for W in Ws]

    def blas():
        H = X
        for l in range(m.n_layers - 1):
            np.dot(H, Ws[l], Hs[l])
            H = Hs[l]
        np.dot(H, Ws[-1], Z)
        D = Z
        for l in range(m.n_layers - 1, 0, -1):
            np.dot(Hs[l - 1].T, D, gWs[l])
            np.dot(D, Ws[l].T, Ds[l - 1])
            D = Ds[l - 1]
        np.dot(X.T, D, gWs[0])
    return blas


def forward(comm, cfg, reps: int = 30, warmup: int = 3) -> dict:
    """One rank's K-candidate evaluation against the bare matrix products of the same shapes."""
    from ..algorithms import HybridES

    cfg = dataclasses.replace(cfg, algo="hes", r=2, assisted=False)
    s = BenchSetup(comm, cfg)
    algo = HybridES(cfg, s.model, comm.raw(), s.max_rows, cfg.batch)
    m = s.model
    theta = s.model.init_params(cfg.seed)
    batch = next(iter(s.batches(0)))
    algo.step(0, theta, batch)  # a gradient: candidates are built around it
    sigma = algo.sigma()
    ev = batch.sample(cfg.es_rows, (cfg.seed, 1, comm.rank), cfg.es_rows_sample)  # the rows ES step 1 costs
    X, _ = ev.full()
    n, K = X.shape[0], cfg.K
    if algo.base_in_place:
        base = theta.copy()  # the ES step applies the base step once, then evaluates around it
        kernels.sgd_update(base, algo.g, cfg.lr)

        def evaluate():
            algo._costs_around(1, base, ev, sigma)
    else:
        def evaluate():
            algo.candidate_costs(1, theta, batch, sigma)

    blas = es_products(algo, theta, X)
    times = interleave({"f": lambda rnd: evaluate(), "b": lambda rnd: blas()}, reps, warmup)
    t_fwd, t_blas = times["f"], times["b"]
    med = slowest(comm, [_median(t_fwd), _median(t_blas)])
    return {
        "bench": "forward",
        "ranks": comm.size,
        "rows": n,
        "K": K,
        "layers": m.layers,
        "es_method": method_label(cfg.to_dict()),
        "median_candidates_s": float(med[0]),
        "median_blas_s": float(med[1]),
        "forward_vs_blas": float(med[1] / med[0]),
        "candidate_flops": es_flops(m, cfg, n),
    }


def es_flops(m, cfg, rows: int) -> int:
    """Floating-point operations of the matrix products of one rank's K-candidate evaluation on ``rows``
    examples (2 per multiply-add), as the ES step of ``cfg.perturb`` makes them."""
    from ..config import perturb_rank

    K, R = cfg.K, perturb_rank(cfg.perturb)
    d = m.layer_dims
    if R:
        first = d[0][0] * d[0][1] + K * R * sum(d[0])
        deeper = sum((K + 1) * a * b + K * R * (a + b) for a, b in d[1:])
        return 2 * rows * (first + deeper)
    if cfg.perturb == "output":
        return 2 * rows * (sum(a * b for a, b in d) + K * d[-1][0] * d[-1][1])
    passes = K + (1 if cfg.baseline or cfg.adapt_sigma else 0)
    return passes * m.flops_forward(rows)


def grad_flops(m, rows: int) -> int:
    """Floating-point operations of a gradient step's matrix products on ``rows`` examples: the forward
    pass, and two products per layer backward but one for the first (no gradient of the input)."""
    d = m.layer_dims
    return 2 * rows * (3 * sum(a * b for a, b in d) - d[0][0] * d[0][1])


