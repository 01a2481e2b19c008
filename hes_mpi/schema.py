"""The run-log schema, shared by everyone who writes or reads it: MPI operations, phases, the call
record, step kinds and the column tables, each with its units.

This module is the bottom layer (see docs/architecture.md): it imports nothing of hes_mpi, so the
communicator, the run log, the training loop and the post-processing can all use it.
"""

from __future__ import annotations

import enum

import numpy as np

#: The MPI operations the instrumented communicator records, by index (``/comm/records/op``).
OPS = ("allreduce", "allgather", "bcast", "barrier", "gather", "minloc", "sendrecv", "split")
#: Phase tags of the records, by index (``/comm/records/phase``).
PHASES = ("setup", "grad", "es", "eval", "check", "telemetry")
#: Phases whose traffic belongs to the training algorithm (the rest is the tool's own).
ALGORITHM_PHASES = ("grad", "es")

#: One recorded MPI call (a row of the communicator's buffer; ``/comm/records`` adds ``rank``).
RECORD_DTYPE = np.dtype(
    [
        ("seq", "i8"),  # collective call number: the same call has the same seq on every rank (-1: point-to-point)
        ("op", "u1"),
        ("phase", "u1"),
        ("iteration", "i4"),
        ("bytes_sent", "i8"),
        ("bytes_recv", "i8"),
        ("wire_bytes", "i8"),
        ("t_enter", "f8"),
        ("t_exit", "f8"),
    ]
)
#: Units of the record fields (stored as attributes in the run log).
RECORD_UNITS = {"seq": "1", "op": "index into op_names", "phase": "index into phase_names", "iteration": "1",
                "bytes_sent": "bytes", "bytes_recv": "bytes", "wire_bytes": "bytes", "t_enter": "s (MPI_Wtime)",
                "t_exit": "s (MPI_Wtime)"}
RECORD_FIELDS = ("rank", *RECORD_DTYPE.names)


class StepKind(enum.IntEnum):
    """What an iteration did (``/iterations/kind``)."""

    GRAD = 0  # a full gradient step (one Allreduce of the flat gradient, or its compressed exchange)
    ES = 1  # an ES selection around an older gradient (one MINLOC of 12 bytes)
    ASSISTED = 2  # a fresh gradient followed by an ES selection around it
    REUSE = 3  # the last full gradient applied again: no forward pass, no communication (--algo reuse)
    LOCAL = 4  # a step on this rank's own gradient, no communication (--algo localsgd)
    AVERAGE = 5  # a local step, then the parameters averaged over the ranks with one Allreduce (--algo localsgd)

    @property
    def label(self) -> str:
        return self.name.lower()


KIND_UNITS = ", ".join(f"{k.value} {k.label}" for k in StepKind)
#: Kinds whose step computes a gradient (forward and backward pass; the batch loss is known).
GRADIENT_KINDS = (StepKind.GRAD, StepKind.ASSISTED, StepKind.LOCAL, StepKind.AVERAGE)
#: Kinds whose step selects among perturbed candidates.
ES_KINDS = (StepKind.ES, StepKind.ASSISTED)

#: Column name -> (dtype, units) of the per-epoch table ``/epochs``.
EPOCH_COLUMNS = {
    "epoch": ("i4", "1"),
    "iteration": ("i8", "1"),
    "train_loss": ("f8", "nats per example"),
    "train_acc": ("f8", "fraction"),
    "dev_loss": ("f8", "nats per example"),
    "dev_acc": ("f8", "fraction"),
    "epoch_s": ("f8", "s"),
    "eval_s": ("f8", "s"),
    "wall_s": ("f8", "s"),
}
#: Column name -> (dtype, units) of the per-iteration table ``/iterations`` (one value per iteration).
ITERATION_COLUMNS = {
    "iteration": ("i8", "1"),
    "epoch": ("i4", "1"),
    "kind": ("u1", KIND_UNITS),
    "batch_loss": ("f8", "nats per example"),
    "grad_norm": ("f8", "1"),
    "grad_var": ("f8", "1"),
    "sigma": ("f8", "1"),
    "es_cost": ("f8", "nats per example"),
    "es_rank": ("i4", "1"),
    "es_k": ("i4", "1"),
}
#: Column name -> (dtype, units) of the per-iteration, per-rank columns of ``/iterations`` (rows x ranks).
PER_RANK_COLUMNS = {
    "step_s": ("f8", "s"),
    "compute_s": ("f8", "s"),
    "comm_s": ("f8", "s"),
    "wait_s": ("f8", "s"),
    "local_n": ("i4", "examples"),
    "rss_hwm_bytes": ("i8", "bytes"),
    "step_bytes": ("i8", "bytes"),
}


def decode(v):
    """An HDF5 attribute value as plain Python: numpy scalars to numbers, bytes to str."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def decode_names(values) -> list[str]:
    """A stored list of names (``op_names``, ``phase_names``) as a list of str."""
    return [str(decode(v)) for v in values]
