"""Telemetry: memory measurements and the per-iteration time split (compute / communication / waiting).

Time split
----------
Every algorithm collective is recorded on every rank with the same ``seq`` number (see
:mod:`hes_mpi.comm`). With the per-rank clock offsets measured at start, rank 0 puts the entry times
of one collective on a common axis; a rank's *waiting* time in that call is how long before the last
rank it entered (``max_r t_enter[r] - t_enter[rank]``, never more than the call's duration), and the
rest of the call is *communication*. Compute is the step's wall time minus both. With
``--sync-barrier`` a timed barrier precedes each algorithm collective (OSU's protocol): the waiting
then happens, and is counted, in that barrier.

Memory
------
``rss_hwm_bytes``: the process's resident-set high-water mark (``ru_maxrss``), read after every step.
Step memory: the bytes of every work buffer a step of that kind touches (explicit accounting by the
algorithm, for the rows it actually had), plus the peak of transient allocations during one probe step
of each kind measured with ``tracemalloc`` (which sees numpy buffers) after training.
Method state (:func:`held_bytes`): every array the method keeps from one step to the next, whether a step
touches it or not: the stored gradient, work buffers, H-ES's noise table and perturbation buffers, the
compressed exchanges' error feedback and message buffers, local SGD's local copy. Counted once per
underlying buffer (views of one array count once), the parameters and the data left out (every method
holds the same).
"""

from __future__ import annotations

import resource
import sys
import tracemalloc
from types import ModuleType

import numpy as np

from .schema import ALGORITHM_PHASES, PHASES

_MAXRSS_SCALE = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


def rss_hwm_bytes() -> int:
    """Resident-set high-water mark of this process, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_SCALE


def traced_peak(fn, *args, **kwargs) -> tuple[int, object]:
    """Run ``fn`` under tracemalloc; return (peak bytes allocated during the call, result)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = fn(*args, **kwargs)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was:
            tracemalloc.stop()
    return max(0, int(peak)), result


def waits(seq: np.ndarray, aligned_enter: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """The waiting part of each call: how long before the last rank it entered the same collective
    (same ``seq``), on a common clock (``aligned_enter``), never below 0 nor above the call's duration.
    The one rule of the time split; the alpha-beta fit (:mod:`hes_mpi.post.fit`) uses it too."""
    if seq.size == 0:
        return np.zeros(0)
    order = np.argsort(seq, kind="stable")
    seq_sorted = seq[order]
    new = np.r_[True, seq_sorted[1:] != seq_sorted[:-1]]
    last_entry = np.maximum.reduceat(aligned_enter[order], np.flatnonzero(new))
    latest = np.empty_like(aligned_enter)
    latest[order] = last_entry[np.cumsum(new) - 1]
    return np.clip(latest - aligned_enter, 0.0, np.maximum(duration, 0.0))


def split_times(records: np.ndarray, ranks: np.ndarray, offsets: np.ndarray, iterations: np.ndarray,
                n_ranks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-iteration, per-rank (comm_s, wait_s) from the algorithm-phase call records of all ranks.

    ``records`` are RECORD_DTYPE rows with their ``ranks``; ``offsets[r]`` maps rank r's clock onto
    rank 0's; ``iterations`` lists the iterations to report (rows of the result).
    """
    comm_s = np.zeros((iterations.size, n_ranks))
    wait_s = np.zeros((iterations.size, n_ranks))
    if records.size == 0 or iterations.size == 0:
        return comm_s, wait_s
    algo = np.isin(records["phase"], [PHASES.index(p) for p in ALGORITHM_PHASES]) & (records["seq"] >= 0)
    rec = records[algo]
    rk = ranks[algo]
    if rec.size == 0:
        return comm_s, wait_s
    aligned = rec["t_enter"] - offsets[rk]
    duration = rec["t_exit"] - rec["t_enter"]
    wait = waits(rec["seq"], aligned, duration)
    comm = duration - wait
    row = np.searchsorted(iterations, rec["iteration"])
    ok = (row < iterations.size) & (iterations[np.minimum(row, iterations.size - 1)] == rec["iteration"])
    np.add.at(comm_s, (row[ok], rk[ok]), comm[ok])
    np.add.at(wait_s, (row[ok], rk[ok]), wait[ok])
    return comm_s, wait_s


#: Objects the method-state walk does not enter: the communicator (its record buffer is the tool's, not the
#: method's), the network description and the configuration.
_NOT_STATE = ("hes_mpi.comm", "hes_mpi.model", "hes_mpi.config", "hes_mpi.data")


def held_bytes(obj, within=None) -> int:
    """Bytes of every numpy array reachable from ``obj`` through the attributes of hes_mpi objects, lists,
    tuples and dicts (each underlying buffer once; not through the communicator, the model, the
    configuration or the data). With ``within`` (a type), only the arrays reached through an object of that
    type (e.g. the noise source's table)."""
    seen: set[int] = set()
    buffers: dict[int, int] = {}

    def visit(x, inside: bool) -> None:
        if isinstance(x, np.ndarray):
            base = x
            while isinstance(base.base, np.ndarray):
                base = base.base
            if inside:
                buffers[id(base)] = base.nbytes
            return
        if id(x) in seen or isinstance(x, (str, bytes, int, float, ModuleType)):
            return
        seen.add(id(x))
        if isinstance(x, (list, tuple)):
            for y in x:
                visit(y, inside)
        elif isinstance(x, dict):
            for y in x.values():
                visit(y, inside)
        elif type(x).__module__.startswith("hes_mpi.") and not type(x).__module__.startswith(_NOT_STATE):
            inner = inside or (within is not None and isinstance(x, within))
            for y in getattr(x, "__dict__", {}).values():
                visit(y, inner)

    visit(obj, within is None)
    return int(sum(buffers.values()))
