"""The per-iteration record of a run: what every rank keeps for each iteration of an epoch, gathered to
rank 0 with the call records at each flush and appended to the run log there."""

from __future__ import annotations

import numpy as np

from ..errors import RunError
from ..schema import GRADIENT_KINDS, RECORD_DTYPE
from ..telemetry import rss_hwm_bytes, split_times

#: Per-iteration figures every rank keeps and gathers to rank 0 at each flush.
PER_RANK_GATHERED = ("step_s", "local_n", "loss_sum", "rss_hwm_bytes", "step_bytes")
#: Per-iteration figures that are the same on every rank (kept, not gathered).
SHARED_FLOAT = ("grad_norm", "grad_var", "sigma", "es_cost")
SHARED_INT = ("iteration", "kind", "es_rank", "es_k")


class Recorder:
    """One epoch's per-iteration columns on this rank, and their way into the run log (``writer`` on
    rank 0; None elsewhere, or without ``--out``)."""

    def __init__(self, comm, writer, iterations_per_epoch: int, global_batch: int, out: str | None, fault=None):
        self.comm = comm
        #: An injected fault (:class:`hes_mpi.run.control.Fault`) for the fault tests, or None.
        self.fault = fault
        self.writer = writer
        self.global_batch = global_batch
        self.out = out
        m = iterations_per_epoch
        self.cols = {k: np.zeros(m) for k in (*PER_RANK_GATHERED, *SHARED_FLOAT)}
        self.cols.update({k: np.zeros(m, dtype=np.int64) for k in SHARED_INT})
        self.offsets_start = np.zeros(comm.size)

    def record(self, j: int, i: int, info, step_s: float, step_bytes: int, rows: int) -> None:
        """Row ``j`` of this epoch: iteration ``i``, its :class:`~hes_mpi.algorithms.base.StepInfo`, wall
        time, step memory and this rank's row count."""
        cols = self.cols
        cols["step_s"][j] = step_s
        cols["rss_hwm_bytes"][j] = rss_hwm_bytes()
        cols["step_bytes"][j] = step_bytes
        cols["local_n"][j] = rows
        cols["loss_sum"][j] = info.loss_sum if info.kind in GRADIENT_KINDS else 0.0
        cols["iteration"][j] = i
        cols["kind"][j] = info.kind
        cols["grad_norm"][j] = info.grad_norm
        cols["grad_var"][j] = info.grad_var
        cols["sigma"][j] = info.sigma
        cols["es_cost"][j] = info.es_cost
        cols["es_rank"][j] = info.es_rank
        cols["es_k"][j] = info.es_k

    def gather_records(self, records: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Every rank's call records on rank 0, with the rank of each (None elsewhere)."""
        comm = self.comm
        counts = np.zeros(comm.size, dtype=np.int64)
        comm.Allgather(np.array([records.size], dtype=np.int64), counts)
        rec_bytes = comm.Gatherv(records.view(np.uint8))
        if comm.rank != 0:
            return None, None
        return rec_bytes.view(RECORD_DTYPE), np.repeat(np.arange(comm.size, dtype=np.int32), counts)

    def gather(self, epoch: int, a: int, b: int, iteration: int):
        """Rows a..b-1 of the per-iteration figures and the call records of every rank, gathered to
        rank 0 (phase ``telemetry``). Returns (iteration columns, records, their ranks) on rank 0."""
        comm = self.comm
        records = comm.drain()
        comm.set_phase("telemetry", iteration)
        cols = {k: v[a:b] for k, v in self.cols.items()}
        m = b - a
        local = np.concatenate([cols[k].astype(np.float64) for k in PER_RANK_GATHERED])
        allv = comm.Gatherv(local)
        recs, rec_ranks = self.gather_records(records)
        if comm.rank != 0:
            return None
        per = allv.reshape(comm.size, len(PER_RANK_GATHERED), m)
        get = {k: per[:, j, :].T for j, k in enumerate(PER_RANK_GATHERED)}
        kind = cols["kind"]
        iters = cols["iteration"]
        loss_sum = get["loss_sum"].sum(axis=1)
        comm_s, wait_s = split_times(recs, rec_ranks, self.offsets_start, iters, comm.size)
        rows = {
            "iteration": iters, "epoch": np.full(m, epoch), "kind": kind,
            "batch_loss": np.where(np.isin(kind, GRADIENT_KINDS), loss_sum / self.global_batch, np.nan),
            "grad_norm": cols["grad_norm"], "grad_var": cols["grad_var"], "sigma": cols["sigma"],
            "es_cost": cols["es_cost"], "es_rank": cols["es_rank"], "es_k": cols["es_k"],
            "step_s": get["step_s"], "comm_s": comm_s, "wait_s": wait_s,
            "compute_s": np.maximum(get["step_s"] - comm_s - wait_s, 0.0),
            "local_n": get["local_n"], "rss_hwm_bytes": get["rss_hwm_bytes"], "step_bytes": get["step_bytes"],
        }
        return rows, recs, rec_ranks

    def flush(self, epoch: int, a: int, b: int, iteration: int, epoch_row: dict | None = None) -> None:
        """Gather rows a..b-1 of this epoch (and the records) to rank 0 and append them to the run log.
        Every rank learns whether rank 0's write failed (disk full, unwritable), so none is left waiting."""
        gathered = self.gather(epoch, a, b, iteration)

        def write():
            if self.writer is None:
                return
            rows, recs, rec_ranks = gathered
            if epoch_row is not None:
                self.writer.add_epoch(epoch_row)
            if b > a:
                self.writer.add_iterations(rows)
            self.writer.add_records(recs, rec_ranks)
            try:
                if self.fault is not None:
                    self.fault.before_write(iteration)
                self.writer.flush()
            except OSError as e:
                raise RunError(f"cannot write the run log {self.out}: {e}") from None

        self.comm.agree(write)
