"""A run log's MPI calls as a timeline: Chrome / Perfetto "Trace Event Format" JSON, like Horovod's.

:func:`chrome_trace` turns the ``/comm/records`` of a run log (see :mod:`hes_mpi.runlog`) into the JSON
object ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``:

* one process per rank, named ``rank N`` (``pid`` N + 1: Perfetto treats pid 0 as the kernel's idle
  task), sorted by rank, with two threads: ``MPI`` (tid 1) and ``compute`` (tid 2);
* every MPI call is a complete event (``"ph": "X"``) on the MPI thread, named by the operation
  (``allreduce``, ``minloc``, ...), category = phase (``setup``, ``grad``, ``es``, ``eval``, ``check``,
  ``telemetry``), ``args`` = ``iteration``, ``bytes_sent``, ``bytes_recv``, ``wire_bytes``, ``seq``
  (-1 for point-to-point calls);
* the gap between the exit of one call of a rank and the entry of its next call is a compute span on
  the compute thread, named ``compute (PHASE)`` with category PHASE, the phase of the call that ends
  it; only when both calls belong to the same or adjacent iterations (so the hours between unrelated
  phases are not drawn as one span), and only gaps of at least 1 us.

Times: ``ts`` and ``dur`` in microseconds. Every rank's ``MPI_Wtime`` is put on rank 0's axis with the
clock offsets measured at start (``t - /clock/offset_start[r]``), then shifted so that the earliest
event is at 0 (``otherData.origin_wtime_s`` is that instant on rank 0's ``MPI_Wtime`` clock). One
collective has the same ``seq`` on all ranks, so its events line up across the ranks' tracks.

Viewing: open the file in Perfetto (https://ui.perfetto.dev, "Open trace file", or drag the file onto
the page; nothing is uploaded) or in Chrome's legacy viewer (``chrome://tracing``, "Load"). Keys W/S
zoom, A/D pan; click an event for its args. Large runs: pass ``max_events`` or ``iterations``.

Command line: ``python analysis/trace.py RUN.h5`` (see that script's ``--help``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..runlog import RunLog, check_writable

#: Thread ids within each rank's process.
TID_MPI = 1
TID_COMPUTE = 2
#: Gaps shorter than this (seconds) between two calls are not drawn as compute spans.
MIN_COMPUTE_GAP_S = 1e-6


def parse_iterations(text: str) -> tuple[int | None, int | None]:
    """Parse ``A:B`` (``A <= iteration < B``), ``A:``, ``:B`` or ``A`` (just A) into (start, stop)."""
    s = str(text).strip()
    try:
        if ":" in s:
            a, b = s.split(":", 1)
            start = int(a) if a.strip() else None
            stop = int(b) if b.strip() else None
        else:
            start = int(s)
            stop = start + 1
    except ValueError:
        raise UsageError(f"--iterations {text!r}: expected A:B, A:, :B or A (integers)") from None
    if start is not None and stop is not None and stop <= start:
        raise UsageError(f"--iterations {text!r}: empty range (B must be greater than A)")
    return start, stop


def _read(rl: RunLog) -> tuple[dict, list[str], list[str], np.ndarray, bool, int]:
    """Records (dict of columns), op and phase names, clock offsets, whether aligned, rank count."""
    try:
        rec = rl.records()
        ops = rl.names("op_names")
        phases = rl.names("phase_names")
        env = rl.environment if "environment" in rl.f else {}
        offsets = rl.clock_offsets()
    except (OSError, KeyError, ValueError) as e:
        raise UsageError(f"{rl.path}: cannot read the call records ({e}; truncated?)") from None
    needed = ("rank", "seq", "op", "phase", "iteration", "bytes_sent", "bytes_recv", "wire_bytes", "t_enter", "t_exit")
    missing = [k for k in needed if k not in rec]
    if rec and missing:
        raise UsageError(f"{rl.path}: /comm/records lacks {', '.join(missing)}")
    if not rec:
        rec = {k: np.zeros(0, "f8" if k.startswith("t_") else "i8") for k in needed}
    if len({rec[k].shape[0] for k in needed}) != 1:
        raise UsageError(f"{rl.path}: /comm/records columns differ in length (truncated?)")
    n_ranks = int(env.get("ranks", 0) or 0)
    if rec["rank"].size:
        n_ranks = max(n_ranks, int(rec["rank"].max()) + 1)
    n_ranks = max(n_ranks, 1)
    aligned = offsets is not None and offsets.shape[0] >= n_ranks
    if not aligned:
        offsets = np.zeros(n_ranks)
    return rec, ops, phases, np.asarray(offsets, dtype="f8"), aligned, n_ranks


def _label(names: list[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else f"#{i}"


def chrome_trace(runlog, max_events: int | None = None,
                 iterations: tuple[int | None, int | None] | None = None) -> dict:
    """The Chrome / Perfetto trace (a JSON-ready dict) of a run log's MPI calls and compute gaps.

    ``runlog``: a :class:`~hes_mpi.runlog.RunLog` or a path. ``iterations``: ``(start, stop)``, keep
    the calls with ``start <= iteration < stop`` (either end None: open; setup calls have iteration
    -1). ``max_events``: keep only the earliest that many complete events (metadata events are not
    counted); ``otherData`` then says ``truncated: true`` and how many there were.
    """
    if max_events is not None and max_events < 0:
        raise UsageError(f"--max-events {max_events}: must be >= 0")
    if not isinstance(runlog, RunLog):
        with RunLog(runlog) as rl:
            return chrome_trace(rl, max_events=max_events, iterations=iterations)
    rl = runlog
    rec, ops, phases, offsets, aligned, n_ranks = _read(rl)

    rank = rec["rank"].astype(np.int64)
    keep = (rank >= 0) & (rank < offsets.shape[0])
    start, stop = iterations if iterations is not None else (None, None)
    if start is not None:
        keep &= rec["iteration"] >= start
    if stop is not None:
        keep &= rec["iteration"] < stop
    # Per rank in call order: the records of one rank arrive in batches (one per flush), in order.
    idx = np.flatnonzero(keep)
    idx = idx[np.lexsort((rec["t_enter"][idx], rank[idx]))]
    rk = rank[idx]
    t0 = rec["t_enter"][idx] - offsets[rk]
    t1 = rec["t_exit"][idx] - offsets[rk]
    it = rec["iteration"][idx].astype(np.int64)
    ph = rec["phase"][idx].astype(np.int64)

    # Compute spans: exit of call i to entry of call i+1 on the same rank.
    gap_start, gap_end = t1[:-1], t0[1:]
    is_gap = ((rk[:-1] == rk[1:]) & (np.abs(it[1:] - it[:-1]) <= 1)
              & (gap_end - gap_start >= MIN_COMPUTE_GAP_S))
    g = np.flatnonzero(is_gap)

    origin = float(t0.min()) if t0.size else 0.0

    def us_array(t: np.ndarray) -> np.ndarray:
        return np.round((t - origin) * 1e6, 3)

    def us(t: np.ndarray) -> list[float]:
        return us_array(t).tolist()

    def dur_us(a: np.ndarray, b: np.ndarray) -> list[float]:
        # The difference of the rounded ends, so that ts + dur lands on the rounded time of the end
        # (a compute span ends exactly where the next call begins, to the nanosecond shown).
        return np.round(np.maximum(us_array(b) - us_array(a), 0.0), 3).tolist()

    events: list[dict] = []
    for r, ts, dur, op, phase, iteration, sent, recv, wire, seq in zip(
            rk.tolist(), us(t0), dur_us(t0, t1), rec["op"][idx].tolist(), ph.tolist(), it.tolist(),
            rec["bytes_sent"][idx].tolist(), rec["bytes_recv"][idx].tolist(), rec["wire_bytes"][idx].tolist(),
            rec["seq"][idx].tolist()):
        events.append({"name": _label(ops, op), "cat": _label(phases, phase), "ph": "X", "ts": ts, "dur": dur,
                       "pid": r + 1, "tid": TID_MPI,
                       "args": {"iteration": iteration, "bytes_sent": sent, "bytes_recv": recv,
                                "wire_bytes": wire, "seq": seq}})
    n_mpi = len(events)
    for r, ts, dur, phase, iteration in zip(rk[g].tolist(), us(gap_start[g]), dur_us(gap_start[g], gap_end[g]),
                                            ph[g + 1].tolist(), it[g + 1].tolist()):
        name = _label(phases, phase)
        events.append({"name": f"compute ({name})", "cat": name, "ph": "X", "ts": ts, "dur": dur,
                       "pid": r + 1, "tid": TID_COMPUTE, "args": {"iteration": iteration}})
    events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
    total = len(events)
    truncated = max_events is not None and total > max_events
    if truncated:
        events = events[:max_events]

    meta: list[dict] = []
    for r in range(n_ranks):
        pid = r + 1
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": f"rank {r}"}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": r}})
        for tid, tname in ((TID_MPI, "MPI"), (TID_COMPUTE, "compute")):
            meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": tname}})
            meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                         "args": {"sort_index": tid}})

    cfg = {}
    try:
        cfg = rl.config
    except (KeyError, ValueError, OSError):
        pass
    other = {
        "source": os.path.abspath(rl.path),
        "format": "hes_mpi run log trace",
        "hes_mpi_version": str(rl.f.attrs.get("hes_mpi_version", "")),
        "algo": str(cfg.get("algo", "")),
        "ranks": n_ranks,
        "complete": bool(rl.f.attrs.get("complete", False)),
        "clock_aligned": bool(aligned),
        "clock": "rank r's MPI_Wtime - /clock/offset_start[r] (rank 0's axis), shifted so the earliest event is 0",
        "origin_wtime_s": origin,
        "mpi_events": n_mpi,
        "compute_events": total - n_mpi,
        "events_total": total,
        "events_written": len(events),
        "truncated": bool(truncated),
        "iterations": None if iterations is None else
        f"{'' if start is None else start}:{'' if stop is None else stop}",
    }
    if truncated:
        other["truncated_note"] = (f"only the earliest {len(events)} of {total} complete events are written "
                                   f"(max_events={max_events})")
    return {"traceEvents": meta + events, "displayTimeUnit": "ms", "otherData": other}


def default_output(runlog_path) -> Path:
    """``run.h5`` -> ``run.trace.json`` (next to the run log)."""
    return Path(runlog_path).with_suffix(".trace.json")


def check_output(out_path, force: bool) -> None:
    """UsageError when ``out_path`` exists (without force) or cannot be written."""
    check_writable(out_path, force, option="")


def write_trace(runlog_path, out_path=None, max_events: int | None = None,
                iterations: tuple[int | None, int | None] | None = None, force: bool = False) -> dict:
    """Write the trace of ``runlog_path`` to ``out_path`` (default: ``RUN.trace.json``) as compact JSON.

    Refuses (UsageError) to overwrite an existing file unless ``force``. The file appears whole or not
    at all (written to a temporary name, then renamed). Returns the trace's ``otherData`` plus ``path``
    and ``bytes``.
    """
    out = Path(out_path) if out_path is not None else default_output(runlog_path)
    with RunLog(runlog_path) as rl:
        check_output(out, force)
        trace = chrome_trace(rl, max_events=max_events, iterations=iterations)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(trace, fh, separators=(",", ":"), allow_nan=False)
        os.replace(tmp, out)
    except OSError as e:
        raise UsageError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return {**trace["otherData"], "path": str(out), "bytes": out.stat().st_size}
