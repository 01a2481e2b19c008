"""Benchmarks of the communication (``hes-mpi bench osu|overhead|emulation``), through the instrumented
communicator.

``osu``: the OSU micro-benchmark protocol for one collective — for each message size (powers of two):
a barrier, warm-up iterations, then a timed loop of ``MPI_Wtime()`` around each call followed by a
barrier (as ``osu_allreduce`` does); per-rank average latencies reduced to min / avg / max. Sizes are
bytes of the per-rank buffer (float32 elements for allreduce). ``--raw`` runs the same loop on the
bare mpi4py communicator, so the two tables side by side show the instrumentation's cost, and either
can be held against ``osu_allreduce`` of the OSU suite on the same nodes.

``emulation``: the same interleaving with and without ``--emulate-net``: how much an emulated network
lengthens a BGD step, next to the cost model's figure for the step's Allreduce.

``overhead``: BGD steps of the default network, alternately with the instrumented and the raw
communicator, on the same batch; reports the median step time of each, and the overhead as the
median ratio of adjacent (instrumented, raw) step pairs minus one, plus the measured cost of one
record (the only work instrumentation adds to a call, besides two ``MPI_Wtime``).
"""

from __future__ import annotations

import numpy as np

from ..collectives import collective_time, parse_network
from ..comm import InstrumentedComm
from ..watchdog import DEFAULT_STALL_FACTOR, default_collective_timeout
from .harness import BenchSetup, interleave, slowest

OSU_OPS = ("allreduce", "allgather", "bcast")
LARGE_MESSAGE = 8192  # bytes: OSU switches to fewer iterations above this


def osu(comm: InstrumentedComm, op: str, min_size: int = 4, max_size: int = 1 << 20, iterations: int = 1000,
        iterations_large: int = 100, warmup: int = 200, warmup_large: int = 10, raw: bool = False) -> list[dict]:
    """One OSU latency table for ``op``; rows are returned on every rank, complete on rank 0."""
    target = comm.raw() if raw else comm
    comm.set_phase("setup", -1)
    rows = []
    size = max(4, min_size)
    stats = np.zeros(3)
    while size <= max_size:
        n = size // 4
        send = np.ones(n, dtype=np.float32)
        recv = np.empty(n * comm.size if op == "allgather" else n, dtype=np.float32)
        iters, skip = (iterations, warmup) if size <= LARGE_MESSAGE else (iterations_large, warmup_large)
        if op == "allreduce":
            def call(send=send, recv=recv):
                target.Allreduce(send, recv)
        elif op == "allgather":
            def call(send=send, recv=recv):
                target.Allgather(send, recv)
        else:
            def call(send=send):
                target.Bcast(send, root=0)
        comm.Barrier()
        timer = 0.0
        for i in range(iters + skip):
            t0 = comm.wtime()
            call()
            t1 = comm.wtime()
            if i >= skip:
                timer += t1 - t0
            target.Barrier()
        comm.drain()  # keep the record buffer small; the table is the result here
        lat = timer * 1e6 / iters
        stats[:] = (lat, -lat, lat)
        comm.set_phase("telemetry", -1)
        comm.Allreduce(stats[:2], op="max")
        total = np.array([lat])
        comm.Allreduce(total)
        comm.set_phase("setup", -1)
        rows.append({"size": size, "avg_us": float(total[0] / comm.size), "min_us": float(-stats[1]),
                     "max_us": float(stats[0]), "iterations": iters})
        size *= 2
    return rows


def format_osu(rows: list[dict], op: str, raw: bool, ranks: int, mpi: str = "") -> str:
    title = {"allreduce": "Allreduce", "allgather": "Allgather", "bcast": "Broadcast"}[op]
    on = f", {mpi}" if mpi else ""
    lines = [f"# OSU MPI {title} Latency Test (hes_mpi {'raw mpi4py' if raw else 'instrumented'}, {ranks} ranks{on})",
             f"# {'Size':<10}{'Avg Latency(us)':>18}{'Min Latency(us)':>18}{'Max Latency(us)':>18}{'Iterations':>12}"]
    for r in rows:
        lines.append(f"{r['size']:<12}{r['avg_us']:>18.2f}{r['min_us']:>18.2f}{r['max_us']:>18.2f}"
                     f"{r['iterations']:>12}")
    return "\n".join(lines)


def _bgd_setup(comm: InstrumentedComm, cfg):
    """A BGD step on this rank's part of the first global batch (threads as in training)."""
    from ..algorithms import BGD

    s = BenchSetup(comm, cfg)
    X, y = next(s.batches(0)).full()
    algo = BGD(cfg, s.model, comm, max(1, X.shape[0]), cfg.batch)
    return algo, s.model, s.model.init_params(cfg.seed), X, y


def _paired_steps(comm: InstrumentedComm, algo, theta, X, y, variants: dict, steps: int, warmup: int) -> dict:
    """Step times of each variant (a function that prepares the algorithm), in adjacent pairs whose
    order alternates, so that slow drifts of the machine's load cancel in paired statistics."""
    from ..data import Batch

    batch = Batch(X, y)
    timed = {name: (prep, lambda i: algo.step(i, theta, batch)) for name, prep in variants.items()}
    times = interleave(timed, steps, warmup, barrier=comm.Barrier, clock=comm.wtime)
    comm.drain()
    return times


def overhead(comm: InstrumentedComm, cfg, steps: int = 50, warmup: int = 5) -> dict:
    """Median BGD step time with the instrumented vs the raw communicator (interleaved, same batch). The
    instrumented one has the collective watchdog and its stall warning on, as in every training run."""
    algo, model, theta, X, y = _bgd_setup(comm, cfg)
    raw = comm.raw()
    watched = comm.watchdog is not None
    if not watched:
        comm.watch_collectives(default_collective_timeout(), stall_factor=DEFAULT_STALL_FACTOR)
    times = _paired_steps(comm, algo, theta, X, y, {"instrumented": lambda: setattr(algo, "comm", comm),
                                                    "raw": lambda: setattr(algo, "comm", raw)}, steps, warmup)
    # every rank's step ends with the same Allreduce: take the slowest rank's figures. The overhead is
    # the median of the ratios of adjacent (instrumented, raw) pairs, which cancels slow drifts of load.
    ratio = np.median(times["instrumented"] / times["raw"])
    med = slowest(comm, [np.median(times["instrumented"]), np.median(times["raw"]), ratio])
    per_call = comm.record_cost_us()
    if not watched:
        comm.watch_collectives(0)
    return {
        "bench": "instrumentation_overhead",
        "ranks": comm.size,
        "data": cfg.data,
        "layers": model.layers,
        "batch": cfg.batch,
        "steps_each": steps,
        "median_step_s_instrumented": float(med[0]),
        "median_step_s_raw": float(med[1]),
        "instrumentation_overhead": float(med[2] - 1.0),
        "record_cost_us": per_call,
        "record_cost_share": float(per_call * 1e-6 / med[1]),  # one recorded call per BGD step
    }


def emulation(comm: InstrumentedComm, cfg, network: str, steps: int = 50, warmup: int = 5) -> dict:
    """How much an emulated network lengthens a BGD step, against the cost model's figure for its
    Allreduce: steps with and without emulation, interleaved on the same batch, median paired difference."""
    name, alpha, beta = parse_network(network)
    algo, model, theta, X, y = _bgd_setup(comm, cfg)

    def on():
        comm.emulate_network(name, alpha, beta)

    def off():
        comm.emulation = None

    times = _paired_steps(comm, algo, theta, X, y, {"emulated": on, "local": off}, steps, warmup)
    off()
    stats = slowest(comm, [np.median(times["emulated"] - times["local"]), np.median(times["local"])])
    modelled = collective_time("allreduce", 4 * model.param_count, comm.size, alpha, beta, comm.family)
    return {
        "bench": "emulation",
        "network": name,
        "ranks": comm.size,
        "layers": model.layers,
        "gradient_bytes": 4 * model.param_count,
        "median_step_s_local": float(stats[1]),
        "step_growth_s": float(stats[0]),
        "modelled_s": float(modelled),
        "growth_over_modelled": float(stats[0] / modelled) if modelled else float("nan"),
    }


