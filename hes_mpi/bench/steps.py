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
    buffers the step writes plus the transient peak tracemalloc sees while it runs.
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
    med = slowest(comm, [_median(t_grad), _median(t_es), _median(share),
                         float(np.median(np.array(t_es) / np.array(t_grad)))])
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
        "noise_share": float(med[2]),
        "grad_step_bytes_sent_per_rank": sent["grad"],
        "es_step_bytes_sent_per_rank": sent["es"],
        "grad_step_memory_bytes": int(mem_grad),
        "es_step_memory_bytes": int(mem_es),
        "mem_es_over_grad": float(mem_es / mem_grad),
    }


# ------------------------------------------------------------------------------------------ forward
def forward(comm, cfg, reps: int = 30, warmup: int = 3) -> dict:
    """One rank's K-candidate evaluation against the bare matrix products of the same shapes."""
    from ..algorithms import HybridES
    from ..algorithms.hes import CHUNK_ROWS

    cfg = dataclasses.replace(cfg, algo="hes", r=2, assisted=False)
    s = BenchSetup(comm, cfg)
    algo = HybridES(cfg, s.model, comm.raw(), s.max_rows, cfg.batch)
    m = s.model
    theta = s.model.init_params(cfg.seed)
    batch = next(iter(s.batches(0)))
    algo.step(0, theta, batch)  # a gradient: candidates are built around it
    sigma = algo.sigma()
    ev = batch.head(cfg.es_rows)
    X, _ = ev.full()
    n, K = X.shape[0], cfg.K
    W1, _, W2, _ = m.views(theta)
    rng = np.random.default_rng(0)
    if algo.head_only:
        chunk = min(CHUNK_ROWS, n)
        H = np.empty((chunk, m.hidden), np.float32)
        Z = np.empty((chunk, m.n_out), np.float32)
        Zp = np.empty((chunk, K * m.n_out), np.float32)
        Zcat = rng.standard_normal((m.hidden, K * m.n_out), dtype=np.float32)

        def blas():
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                np.dot(X[a:b], W1, H[: b - a])
                np.dot(H[: b - a], W2, Z[: b - a])
                np.dot(H[: b - a], Zcat, Zp[: b - a])

        base = theta.copy()  # the ES step applies the base step once, then evaluates around it
        kernels.sgd_update(base, algo.g, cfg.lr)

        def evaluate():
            algo.output_layer_costs(1, base, ev, sigma)
    else:
        H = np.empty((n, m.hidden), np.float32)
        Z = np.empty((n, m.n_out), np.float32)

        def blas():
            for _ in range(K):
                np.dot(X, W1, H)
                np.dot(H, W2, Z)

        def evaluate():
            algo.candidate_costs(1, theta, batch, sigma)

    times = interleave({"f": lambda rnd: evaluate(), "b": lambda rnd: blas()}, reps, warmup)
    t_fwd, t_blas = times["f"], times["b"]
    med = slowest(comm, [_median(t_fwd), _median(t_blas)])
    return {
        "bench": "forward",
        "ranks": comm.size,
        "rows": n,
        "K": K,
        "es_method": method_label(cfg.to_dict()),
        "median_candidates_s": float(med[0]),
        "median_blas_s": float(med[1]),
        "forward_vs_blas": float(med[1] / med[0]),
    }


