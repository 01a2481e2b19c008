"""The one timing harness of every benchmark: variants timed in interleaved repetitions after a warm-up,
so that a slow spell of a shared machine lands on all of them; and what a step benchmark prepares.

:func:`interleave` runs ``warmup + reps`` rounds; each round calls every variant once (in reversed order
on odd rounds unless ``alternate=False``), optionally after a barrier, and times the call. Results are
per-variant arrays of the timed rounds; :func:`slowest` reduces figures to the slowest rank's.
"""

from __future__ import annotations

import json
import time

import numpy as np


def interleave(variants: dict, reps: int, warmup: int = 0, alternate: bool = True, barrier=None,
               clock=time.perf_counter) -> dict[str, np.ndarray]:
    """Seconds of each variant in each of ``reps`` timed rounds (after ``warmup`` untimed ones).

    ``variants``: name -> ``fn(round)``, or name -> ``(prepare, fn)`` where ``prepare()`` runs untimed
    before the barrier (e.g. to swap a communicator in). ``barrier``: called before each timed call
    (untimed). ``alternate``: reverse the order of the variants on odd rounds (adjacent pairs then see the
    same load, and drifts cancel in paired ratios); off when one variant must follow another (an ES step
    after its gradient step)."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(warmup + reps):
        for name in names[::-1] if alternate and rnd % 2 else names:
            v = variants[name]
            prepare, fn = v if isinstance(v, tuple) else (None, v)
            if prepare is not None:
                prepare()
            if barrier is not None:
                barrier()
            t0 = clock()
            fn(rnd)
            dt = clock() - t0
            if rnd >= warmup:
                times[name].append(dt)
    return {n: np.array(t) for n, t in times.items()}


def median(ts) -> float:
    return float(np.median(np.asarray(ts))) if len(ts) else float("nan")


def slowest(comm, values) -> np.ndarray:
    """The largest of each value over the ranks (phase ``telemetry``). Every rank's step ends in the
    same collective, so the slowest rank's medians are the step's."""
    out = np.array(values, dtype=np.float64)
    comm.set_phase("telemetry", -1)
    comm.Allreduce(out, op="max")
    return out


class BenchSetup:
    """What a benchmark of training steps needs, prepared as training prepares it: BLAS threads, this
    rank's shard, the network, warm kernels, and row buffers for its part of a global batch. The compressed
    exchanges' kernels are warmed for a ``cfg`` that compresses, or with ``compress`` (a bench that times
    every exchange)."""

    def __init__(self, comm, cfg, compress: bool = False):
        from ..run.setup import freeze_setup_objects, load_run_data, set_threads, warm_kernels

        self.cfg = cfg
        self.threads = set_threads(comm, cfg.threads)
        self.shard, self.model = load_run_data(comm, cfg)
        warm_kernels(comm, len(self.model.hidden), compress=compress or cfg.compress != "none")
        self.max_rows = min(self.shard.hi - self.shard.lo, cfg.batch)
        self.xbuf = np.empty((self.max_rows, self.model.n_in), dtype=np.float32)
        self.ybuf = np.empty(self.max_rows, dtype=np.int32)
        freeze_setup_objects()

    def batches(self, epoch: int):
        """This rank's Batch of every global batch of ``epoch``."""
        from ..data import Batch, global_batches, local_rows

        for idx in global_batches(self.shard.n_train, self.cfg.batch, self.cfg.seed, epoch):
            rows = local_rows(idx, self.shard.lo, self.shard.hi)
            yield Batch(self.shard.x_train, self.shard.y_train, rows, self.xbuf, self.ybuf)


def dumps(obj) -> str:
    return json.dumps(obj, sort_keys=False)
