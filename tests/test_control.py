"""The abort policy of every MPI command (``run.control.run_mpi``), on a stand-in communicator: who prints an
error, and whether the ranks leave together or one takes them all down with MPI_Abort."""

from __future__ import annotations

import pytest

import hes_mpi.comm
from hes_mpi.errors import Diverged, RunError, UsageError
from hes_mpi.run import control


class FakeComm:
    """Two ranks; records what run_mpi does with MPI."""

    rank = 0
    size = 2

    def __init__(self):
        self.calls = []

    def finalize(self):
        self.calls.append("finalize")

    def Abort(self, code):
        self.calls.append(("abort", code))


def agreed(err):
    err.agreed = True  # what comm.agree sets on the rank that re-raises its own error
    return err


@pytest.mark.parametrize(("rank", "error", "line", "calls"), [
    # met on one rank alone (a write of rank 0's, a file only it reads): its line, then MPI_Abort, so that no
    # other rank is left waiting in a collective for it
    (0, lambda: RunError("cannot write tuning.md"), "hes-mpi: error (rank 0/2): cannot write tuning.md", [("abort", 1)]),
    (1, lambda: UsageError("bad file"), "hes-mpi: error (rank 1/2): bad file", [("abort", 2)]),
    # agreed with comm.agree: the rank that met it says it, every rank leaves together
    (1, lambda: agreed(RunError("disk full")), "hes-mpi: error (rank 1/2): disk full", ["finalize", ("exit", 1)]),
    # raised by every rank at the same point: rank 0 says it once, the others leave quietly
    (0, lambda: Diverged("loss is not finite"), "hes-mpi: error: loss is not finite", ["finalize", ("exit", 1)]),
    (1, lambda: Diverged("loss is not finite"), None, ["finalize", ("exit", 0)]),
    (1, lambda: RunError("parameters differ", everywhere=True), None, ["finalize", ("exit", 0)]),
    # anything else: traceback, the line, MPI_Abort
    (1, lambda: KeyError("x"), "hes-mpi: error (rank 1/2): KeyError: 'x'; aborting all ranks", [("abort", 1)]),
])
def test_who_speaks_and_how_the_ranks_leave(monkeypatch, capsys, rank, error, line, calls):
    comm = FakeComm()
    comm.rank = rank
    monkeypatch.setattr(hes_mpi.comm, "InstrumentedComm", lambda: comm)
    monkeypatch.setattr(control.time, "sleep", lambda s: None)
    monkeypatch.setattr(control, "exit_now", lambda status: comm.calls.append(("exit", status)))

    def body(c):
        raise error()

    control.run_mpi(body)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hes-mpi:")]
    assert lines == ([line] if line else [])
    assert comm.calls == calls
