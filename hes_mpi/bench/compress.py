"""``hes-mpi bench compress``: what each compressed exchange costs a gradient step on this host, beside its floor.

For each ``--compress`` method, its exchange (:mod:`hes_mpi.algorithms.compress`) reduces the gradient of a
real batch through the instrumented communicator; the time of the call minus the time its collectives took
(their records' ``t_exit - t_enter``) is the encode plus decode time. It is reported as a ratio to the
gradient step (forward, backward, the exact Allreduce and the update's gradient terms: the step the
compression is part of), and beside its floor: the bytes the method must read and write, at this host's
copy bandwidth measured in the same rounds (a STREAM-like copy of arrays of the gradient's size, so in the
cache level the kernels work in). All variants alternate in the same rounds (:func:`.harness.interleave`);
figures are the slowest rank's medians.

The floors, for n parameters, k sent entries and N ranks (float32 = 4 bytes):

``fp16``
    read the gradient (4n), write its halves (2n), read the summed halves (2n), write the gradient (4n): 12n.
``topk:F``
    read the gradient (4n), read and write the error feedback (8n), write the sent pairs (8k), read
    every rank's pairs (8kN), write the gradient (4n): 16n + 8k(N + 1).
``powersgd:R``
    form M = e + g (read 8n, write 4n), read M for P = M Q and again for Q = Mᵀ P (8n), write the
    approximation and the new error (8n, reading e again: 4n): 32n (the small P and Q left out).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..algorithms.base import GradientStep, StepInfo
from ..algorithms.compress import make_exchange
from ..schema import OPS
from .harness import BenchSetup, interleave, slowest
from .harness import median as _median

BARRIER = OPS.index("barrier")

#: The methods timed by default, and the goals of the fair-time issue (ratio to a gradient step).
METHODS = ("fp16", "topk:0.25", "powersgd:4")
GOALS = {"fp16": 0.05, "topk": 0.15, "powersgd": 0.25}
#: A method meets its goal when its ratio is at most its bound and its time within this factor of its floor.
FLOOR_FACTOR = 2.0


def floor_bytes(method: str, n: int, k: int, ranks: int) -> int:
    """Bytes ``method`` must read and write per step (module docstring)."""
    name = method.split(":")[0]
    if name == "fp16":
        return 12 * n
    if name == "topk":
        return 16 * n + 8 * k * (ranks + 1)
    if name == "powersgd":
        return 32 * n
    raise ValueError(f"no floor for {method!r}")


def compress(comm, cfg, methods=METHODS, reps: int = 40, warmup: int = 4) -> dict:
    """The bench (module docstring) on this job's ranks, as one JSON-ready dict."""
    base = dataclasses.replace(cfg, algo="bgd", compress="none")
    s = BenchSetup(comm, base, compress=True)
    model = s.model
    theta = s.model.init_params(cfg.seed)
    batch = next(iter(s.batches(0)))
    X, y = batch.full()
    grad = GradientStep(base, model, comm, s.max_rows, cfg.batch)

    def grad_step(rnd):
        grad.compute(2, theta, X, y, StepInfo())

    grad_step(0)
    local = np.empty_like(grad.g)
    grad.backward(2, theta, X, y, StepInfo())  # this rank's gradient sum, the input of every exchange
    local[:] = grad.g
    work = np.empty_like(local)
    exchanges = {m: make_exchange(dataclasses.replace(base, compress=m), model, comm.size) for m in methods}
    comm_s = {m: [] for m in methods}

    def timed(m):
        ex = exchanges[m]

        def prepare():
            work[:] = local
            comm.drain()

        def run(rnd):
            ex.reduce(comm, work, 1.0 / cfg.batch)
            rec = comm.drain()
            own = rec["op"] != BARRIER  # the harness's barrier before the call is recorded too
            comm_s[m].append(float(np.sum(rec["t_exit"][own] - rec["t_enter"][own])))
        return prepare, run

    src = np.empty_like(local)
    src[:] = local
    dst = np.empty_like(local)
    variants = {"grad": grad_step, "copy": lambda rnd: np.copyto(dst, src), **{m: timed(m) for m in methods}}
    comm.drain()
    times = interleave(variants, reps, warmup, barrier=comm.Barrier, clock=comm.wtime)
    comm.drain()
    own = {m: np.array(times[m]) - np.array(comm_s[m][warmup:]) for m in methods}
    med = slowest(comm, [_median(times["grad"]), _median(times["copy"]),
                         *[_median(own[m]) for m in methods], *[_median(comm_s[m][warmup:]) for m in methods]])
    t_grad, t_copy = float(med[0]), float(med[1])
    bandwidth = 2 * local.nbytes / t_copy
    n = model.param_count
    rows = []
    for j, m in enumerate(methods):
        ex = exchanges[m]
        t_own = float(med[2 + j])
        floor_s = floor_bytes(m, n, getattr(ex, "k", 0), comm.size) / bandwidth
        goal = GOALS[m.split(":")[0]]
        ratio = t_own / t_grad
        rows.append({
            "method": m,
            "encode_decode_s": t_own,
            "collectives_s": float(med[2 + len(methods) + j]),
            "over_grad_step": ratio,
            "floor_s": floor_s,
            "over_floor": t_own / floor_s,
            "goal_over_grad_step": goal,
            "goal_met": bool(ratio <= goal and t_own <= FLOOR_FACTOR * floor_s),
        })
    return {
        "bench": "compress",
        "ranks": comm.size,
        "threads_per_rank": s.threads,
        "data": cfg.data,
        "layers": model.layers,
        "params": n,
        "batch": cfg.batch,
        "reps": reps,
        "grad_step_s": t_grad,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "copy_bytes": 2 * local.nbytes,
        "rows": rows,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def format_compress(result: dict) -> str:
    """The bench as a markdown table."""
    lines = [(f"# bench compress: {result['layers']}, {result['params']} parameters, "
             f"{result['ranks']} rank(s), batch {result['batch']}"),
             (f"gradient step {result['grad_step_s'] * 1e3:.3g} ms; copy bandwidth "
             f"{result['copy_bandwidth_bytes_per_s'] / 1e9:.3g} GB/s ({result['copy_bytes']} bytes a copy)"), "",
             "| method | encode + decode ms | / gradient step | goal | floor ms | / floor | met |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['encode_decode_s'] * 1e3:.3g} | {r['over_grad_step']:.3f} | "
                     f"<= {r['goal_over_grad_step']:g} | {r['floor_s'] * 1e3:.3g} | {r['over_floor']:.2f} | "
                     f"{'yes' if r['goal_met'] else 'no'} |")
    return "\n".join(lines)
