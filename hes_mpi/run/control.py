"""How a run stops: signals (checkpoint and exit 3), injected faults and pauses (for the fault tests), and the abort
policy of every MPI command (one-line errors, agreed exit codes, ``MPI_Abort`` on anything else)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import time

import numpy as np

from .. import faultpoints
from ..errors import RunError, UsageError

#: Seconds a failing rank waits after printing its message and before MPI_Abort.
ABORT_GRACE_S = 0.5


class Stopped(Exception):
    """SIGTERM or SIGUSR1 reached a rank: the run checkpointed and stops (exit status 3)."""

    exit_code = 3

    def __init__(self, iteration: int):
        super().__init__(f"stopped by {_STOP['signal'] or 'a signal on another rank'} after iteration {iteration}; "
                         "checkpoint written: run again with --resume to continue")


_STOP: dict = {"signal": None}


def stop_requested() -> bool:
    """True once SIGTERM or SIGUSR1 reached this rank (inside :func:`stop_on_signals`)."""
    return _STOP["signal"] is not None


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGUSR1 (what Slurm sends before a time limit, or with --signal) set a flag that the
    next consistency check shares with every rank; the run then checkpoints and exits."""
    def handler(signum, frame):
        _STOP["signal"] = signal.Signals(signum).name

    _STOP["signal"] = None
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class Fault:
    """A fault for the fault tests, from ``HES_MPI_INJECT_FAULT``: ``RANK:ITERATION`` raises an exception
    on that rank at that iteration; ``nan:ITERATION`` turns the parameters into NaN on every rank (a
    diverging run); ``write:ITERATION`` makes the first run-log write at or after that iteration fail as on a
    full disk (on rank 0, the rank that writes it). :meth:`from_env` gives None when the variable is not set
    (or names another rank)."""

    def __init__(self, what: str, iteration: int):
        self.what = what
        self.iteration = iteration

    @classmethod
    def from_env(cls, rank: int) -> Fault | None:
        spec = os.environ.get("HES_MPI_INJECT_FAULT")
        if not spec:
            return None
        who, it = spec.split(":")
        if who in ("nan", "write"):
            return cls(who, int(it))
        return cls("raise", int(it)) if int(who) == rank else None

    def apply(self, i: int, theta: np.ndarray) -> None:
        """Inject the fault when iteration ``i`` is its iteration."""
        if i != self.iteration:
            return
        if self.what == "raise":
            raise RuntimeError(f"fault injected by HES_MPI_INJECT_FAULT at iteration {i}")
        if self.what == "nan":
            theta[:] = np.nan

    def before_write(self, i: int) -> None:
        """Called before a run-log write after iteration ``i``: raise the full disk's error when due."""
        if self.what == "write" and i >= self.iteration:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by HES_MPI_INJECT_FAULT)")


def pause_in_flush_from_env() -> None:
    """``HES_MPI_PAUSE_IN_FLUSH=U:K`` (for the fault tests): the writer of the run log stops for good at the K-th
    point (a write, or a step between writes: :mod:`hes_mpi.faultpoints`) of the U-th update of its file in this
    process (1: the creation, or a resume's cut; then each flush), or at that update's end when it has fewer
    points, after creating ``OUT.paused`` with where it stopped; the test then SIGKILLs the job there."""
    spec = os.environ.get("HES_MPI_PAUSE_IN_FLUSH")
    if not spec:
        faultpoints.observe(None)
        return
    update, at = (int(v) for v in spec.split(":"))
    seen = {"updates": 0, "points": 0}

    def observer(path: str, what: str) -> None:
        if what == "begin":
            seen["updates"] += 1
            seen["points"] = 0
            return
        if seen["updates"] != update:
            return
        seen["points"] += 1
        if seen["points"] == at or what == "end":
            _pause_for_good(f"{path}.paused", f"update {update}, point {seen['points']} ({what})")

    faultpoints.observe(observer)


def _pause_for_good(marker: str, where: str) -> None:
    with open(f"{marker}.tmp", "w") as fh:
        fh.write(where + "\n")
    os.replace(f"{marker}.tmp", marker)
    while True:  # until SIGKILL (a caught SIGTERM wakes it, and it waits again)
        signal.pause()


#: Seconds the rank that printed a job's message waits, after the others have left, before it exits with the
#: job's status. A launcher ends the whole job at the first rank that exits with a failure (Open MPI's at
#: once, with a banner and at times a "PMIX ERROR: PMIX_ERR_UNREACH" line of its own): the one rank with a
#: failing status leaves last, so that nothing is cut and nothing is killed.
LAST_EXIT_DELAY_S = 0.3


def exit_status(code: int, speaker: bool, under_launcher: bool = True) -> int:
    """The exit status of one rank of a job that ends with status ``code`` and one message: the rank that
    printed it (``speaker``) carries ``code`` and leaves last; the others leave with 0 at once. ``mpiexec``
    and ``srun`` report the worst status of their ranks, so the job's status is ``code`` either way."""
    if not under_launcher or code == 0:
        return code
    if not speaker:
        return 0
    sys.stderr.flush()
    time.sleep(LAST_EXIT_DELAY_S)
    return code


def say_error(msg: str, rank_info: str = "") -> None:
    """The one-line error every command prints: ``hes-mpi: error[ (rank r/p)]: MESSAGE``."""
    print(f"hes-mpi: error{rank_info}: {msg}", file=sys.stderr, flush=True)


def run_mpi(body, json_output: bool = False) -> int:
    """Run ``body(comm)`` on every rank of this MPI job and return its exit status, with the abort policy:

    - a :class:`UsageError` or :class:`RunError` prints one line and exits 2 or 1. One that the ranks agreed on
      (``comm.agree``) is printed by the rank that met it, one that every rank raises at the same point
      (``everywhere``) by rank 0; the ranks then leave together. One that this rank may have met alone names
      the rank and takes every rank down with ``MPI_Abort``, so that none is left waiting in a collective;
    - :class:`Stopped` (a signal; every rank stops at the same iteration): rank 0 says so, exit 3;
    - anything else prints its traceback and takes every rank down with ``MPI_Abort``.

    With ``json_output`` progress goes to standard error, so that standard output is the JSON object alone.
    """
    from ..comm import InstrumentedComm, SilentExit
    from ..log import setup_logging

    comm = InstrumentedComm()
    setup_logging(comm.rank, comm.size, stderr=json_output)
    where = f" (rank {comm.rank}/{comm.size})" if comm.size > 1 else ""
    try:
        return body(comm)
    except SilentExit as e:  # another rank says it (agreed with comm.agree): leave first, and quietly
        return _leave(comm, e.exit_code, speaker=False)
    except Stopped as e:  # every rank stops at the same iteration; rank 0 says so
        if comm.rank == 0:
            say_error(str(e))
        return _leave(comm, e.exit_code, speaker=comm.rank == 0)
    except (UsageError, RunError) as e:
        agreed = getattr(e, "agreed", False)  # comm.agree: this rank says it, the others leave (SilentExit)
        if agreed or comm.rank == 0 or not e.everywhere:  # an error raised everywhere: rank 0 says it
            say_error(str(e), "" if e.everywhere else where)
        if not (agreed or e.everywhere):  # met on this rank alone: the others may be waiting in a collective
            return _abort(comm, e.exit_code)
        _exit_now_if_hdf5_damaged(comm, e.exit_code)
        return _leave(comm, e.exit_code, speaker=agreed or comm.rank == 0)
    except BaseException as e:  # noqa: BLE001  anything else: say it here, then take every rank down
        import traceback

        traceback.print_exc()
        say_error(f"{type(e).__name__}: {e}; aborting all ranks", where)
        return _abort(comm, 1)


def _abort(comm, code: int) -> int:
    """Take every rank down with ``MPI_Abort(code)`` after this rank's message (one rank: return ``code``)."""
    if comm.size > 1:
        # MPI_Abort makes the launcher kill every rank at once: give it a moment to forward this
        # rank's message first (it was lost now and then under mpiexec without the pause).
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        comm.Abort(code)
    return code


def _leave(comm, code: int, speaker: bool) -> int:
    """This rank's exit when every rank ends with ``code`` and one of them printed why (an error agreed with
    ``comm.agree`` or raised everywhere, or a stop): every rank finalises MPI and leaves at once
    (:func:`exit_now`) with :func:`exit_status`."""
    if comm.size == 1:
        return code
    comm.finalize()
    exit_now(exit_status(code, speaker))


def exit_now(status: int) -> None:
    """End the process with ``status`` through the C library's ``exit``, without Python's teardown: the
    modules' teardown (Numba's, LLVM's) takes seconds on a loaded machine, and a job that failed should end
    within a moment of its message. C ``exit`` still runs the libraries' own handlers (MPI's, HDF5's), as a
    C program's end does: ``os._exit`` skips them too, and MPICH's launcher then takes the first rank that
    leaves so for the end of the job and kills the others, the one that carries the job's status among them.
    Run logs and checkpoints are closed after every write."""
    import ctypes

    sys.stdout.flush()
    sys.stderr.flush()
    ctypes.PyDLL(None).exit(status)  # PyDLL holds Python's lock: no Python thread runs during the C teardown


def _exit_now_if_hdf5_damaged(comm, code: int) -> None:
    """After a failed write (disk full), HDF5's teardown at exit can crash on the damaged file handle:
    finalise MPI and leave without it, so the exit status stays the one we chose."""
    from ..runlog import damaged_handles

    if damaged_handles():
        sys.stdout.flush()
        sys.stderr.flush()
        comm.finalize()
        os._exit(code)
