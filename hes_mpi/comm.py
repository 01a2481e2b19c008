"""The instrumented communicator: the only module that talks to MPI.

Every MPI operation of a run goes through :class:`InstrumentedComm`, which records, per call, the
operation, the phase tag, the iteration, the payload bytes this rank sends and receives (the
mpiP/IPM rule: count x type size; for ``IN_PLACE`` the receive side), the wire bytes the collective
algorithm MPICH would pick is modelled to send from this rank, and ``t_enter``/``t_exit`` from
``MPI.Wtime()``. Records go into a preallocated structured array (doubled only if it ever fills up
between two drains); a call does no I/O.

mpi4py is imported lazily so that commands that need no MPI (``summary``, ``data``) never start it.

The module is over 400 lines because it is, by rule, the only one that talks to MPI (a test checks it):
the instrumented collectives, their raw twins for overhead benchmarks, the clock offsets, the agreement
on errors and the MPI_Init watchdog all need mpi4py.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .collectives import VENDOR_FAMILIES, collective_model, collective_time, wire_bytes
from .errors import RunError, UsageError
from .schema import ALGORITHM_PHASES, OPS, PHASES, RECORD_DTYPE
from .watchdog import CollectiveWatchdog, init_watchdog

_OP = {name: i for i, name in enumerate(OPS)}
_PHASE = {name: i for i, name in enumerate(PHASES)}


class InstrumentedComm:
    """A thin wrapper around an mpi4py communicator that records every call.

    Use the buffer (uppercase) methods on numpy arrays. Set the phase and iteration with
    :meth:`set_phase` before the calls of a step.
    """

    def __init__(self, comm=None, capacity: int = 4096, instrument: bool = True, sync_barrier: bool = False):
        with init_watchdog():
            from mpi4py import MPI

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.instrument = instrument
        #: The algorithm family (:data:`hes_mpi.collectives.FAMILIES`) the wire bytes and the emulation
        #: follow: the running MPI's, MPICH's when it is of neither (:meth:`collective_model` says so).
        self.family = VENDOR_FAMILIES.get(MPI.get_vendor()[0], "mpich")
        #: OSU's trick: a timed barrier before every algorithm collective separates waiting for late ranks.
        self.sync_barrier = sync_barrier
        self._seq = 0
        #: Ends the process when a collective hangs (:meth:`watch_collectives`); None: off.
        self.watchdog: CollectiveWatchdog | None = None
        #: Network emulation: (name, alpha, beta) or None; see :meth:`emulate_network`.
        self.emulation: tuple[str, float, float] | None = None
        self.emulated_seconds = 0.0
        self.records = np.zeros(capacity, RECORD_DTYPE)
        self.n_records = 0
        self.total_calls = 0
        self.phase = "setup"
        self._phase_code = _PHASE["setup"]
        self.iteration = -1
        self.comm_seconds = 0.0  # running total of time inside MPI calls (all phases)
        self._ops = _Ops(MPI)
        self._minloc_buf = np.zeros(1, dtype=np.dtype([("value", "f8"), ("index", "i4")], align=True))
        self._minloc_type_size = MPI.DOUBLE_INT.Get_size()
        self._flag = np.zeros(2, dtype=np.int64)

    # ------------------------------------------------------------------ bookkeeping
    def set_phase(self, phase: str, iteration: int | None = None) -> None:
        self.phase = phase
        self._phase_code = _PHASE[phase]
        if iteration is not None:
            self.iteration = iteration

    def wtime(self) -> float:
        return self.MPI.Wtime()

    def emulate_network(self, name: str, alpha: float, beta: float) -> None:
        """Hold every collective for its modelled cost on a network of latency ``alpha`` (s) and
        inverse bandwidth ``beta`` (s/byte), as :func:`hes_mpi.collectives.collective_time` gives it, on
        top of its real duration here. All ranks hold the same call for the same time, so the run
        stays in step; the hold counts as communication time in the records."""
        self.emulation = (name, float(alpha), float(beta))

    def _hold(self, op: str, nbytes: int, t1: float) -> float:
        """Busy-wait until ``t1`` + the emulated cost; returns the new exit time. Like MPI's own progress
        loop it polls rather than sleeps, so the core stays as hot as in a real wait."""
        _, alpha, beta = self.emulation
        extra = collective_time(op, nbytes, self.size, alpha, beta, self.family)
        self.emulated_seconds += extra
        until = t1 + extra
        wtime = self.MPI.Wtime
        while (now := wtime()) < until:
            pass
        return now

    def _enter(self, op: str, nbytes: int = 0) -> float:
        """The entry time of a call; arms the collective watchdog (setup calls with its setup timeout; the
        calls of the other phases with their kind for the stall warning: the operation and the bit length of
        ``nbytes``, the per-rank payload)."""
        wd = self.watchdog
        if wd is not None:
            if self._phase_code:
                wd.arm(op, self.phase, self.iteration, None, _OP[op] << 6 | nbytes.bit_length())
            elif wd.setup_timeout_s > 0:
                wd.arm(op, self.phase, self.iteration, wd.setup_timeout_s)
        return self.MPI.Wtime()

    def watch_collectives(self, timeout_s: float, hint: str = "", stall_factor: float = 0.0) -> None:
        """End this process with one line and exit status 1 when a collective does not complete within
        ``timeout_s`` seconds (one of the setup phase: ``$HES_MPI_SETUP_TIMEOUT``, default 900 s; 0: never),
        and warn in one line about a call that takes ``stall_factor`` times the running median of its kind
        and at least 5 s (0: never); both 0: no watchdog. ``hint`` is appended to the message (e.g. where
        the last checkpoint is)."""
        if timeout_s <= 0 and stall_factor <= 0:
            if self.watchdog is not None:
                self.watchdog.stop()
            self.watchdog = None
            return
        if self.watchdog is None:
            where = f" (rank {self.rank}/{self.size})" if self.size > 1 else ""
            self.watchdog = CollectiveWatchdog(timeout_s, where, grace_s=3.0 if self.rank else 0.0,
                                               abort=self.comm.Abort)
        self.watchdog.timeout_s = max(float(timeout_s), 0.0)
        self.watchdog.stalls.factor = float(stall_factor)
        self.watchdog.hint = hint

    def _record(self, op: str, sent: int, recv: int, wire: int, t0: float, t1: float, p2p: bool = False) -> None:
        if self.watchdog is not None:
            self.watchdog.disarm()
        if self.emulation is not None and not p2p:
            t1 = self._hold(op, sent if op in ("allgather", "gather") else max(sent, recv), t1)
        self.comm_seconds += t1 - t0
        self.total_calls += 1
        seq = -1
        if not p2p:
            seq = self._seq
            self._seq += 1
        if not self.instrument:
            return
        n = self.n_records
        if n == self.records.shape[0]:  # rare: grow by doubling between two drains
            grown = np.zeros(2 * n, RECORD_DTYPE)
            grown[:n] = self.records
            self.records = grown
        self.records[n] = (seq, _OP[op], self._phase_code, self.iteration, sent, recv, wire, t0, t1)
        self.n_records = n + 1

    def _pre_sync(self) -> None:
        """``--sync-barrier``: a timed barrier before every collective of an algorithm phase (allreduce,
        minloc, allgather, bcast; a gather's count exchange is an allgather)."""
        if self.sync_barrier and self.phase in ALGORITHM_PHASES:
            self.Barrier()

    def drain(self) -> np.ndarray:
        """Return the records since the last drain (a copy) and start a new batch."""
        out = self.records[: self.n_records].copy()
        self.n_records = 0
        return out

    def record_cost_us(self, n: int = 200_000) -> float:
        """Microseconds that recording one call costs (timestamps excluded; with the collective watchdog on,
        arming and disarming it too), measured in a tight loop of ``n`` records that are discarded again (the
        buffer, the phase and the watchdog's medians are left as they were)."""
        import time

        saved = self.n_records, self.phase, self.iteration, self._seq, self.total_calls, self.comm_seconds
        wd, kind = self.watchdog, 63  # a kind no call has (a payload of 2**62 bytes)
        t0 = time.perf_counter()
        for _ in range(n):
            if wd is not None:
                wd.arm("allreduce", "grad", 0, None, kind)
            self._record("allreduce", 4, 4, 0, 0.0, 0.0)
            self.n_records = saved[0]
        t1 = time.perf_counter()
        if wd is not None:
            wd.stalls._durations.pop(kind, None)
        self.set_phase(saved[1], saved[2])
        self._seq, self.total_calls, self.comm_seconds = saved[3], saved[4], saved[5]
        return (t1 - t0) * 1e6 / n

    # ------------------------------------------------------------------ collectives
    def Allreduce(self, buf: np.ndarray, out: np.ndarray | None = None, op: str = "sum") -> np.ndarray:
        """Allreduce ``buf`` into ``out``, or in place when ``out`` is None. Returns the result."""
        MPI = self.MPI
        nbytes = buf.nbytes
        self._pre_sync()
        t0 = self._enter("allreduce", nbytes)
        if out is None:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=self._ops[op])
            out = buf
        else:
            self.comm.Allreduce(buf, out, op=self._ops[op])
        t1 = MPI.Wtime()
        self._record("allreduce", nbytes, nbytes, wire_bytes("allreduce", nbytes, self.size, False, self.family, buf.size), t0, t1)
        return out

    def minloc(self, value: float, index: int) -> tuple[float, int]:
        """The global minimum of ``value`` and the index that holds it (lowest index on ties)."""
        MPI = self.MPI
        buf = self._minloc_buf
        buf["value"][0] = value
        buf["index"][0] = index
        nbytes = self._minloc_type_size
        self._pre_sync()
        t0 = self._enter("minloc", nbytes)
        self.comm.Allreduce(MPI.IN_PLACE, [buf, MPI.DOUBLE_INT], op=MPI.MINLOC)
        t1 = MPI.Wtime()
        self._record("minloc", nbytes, nbytes, wire_bytes("minloc", nbytes, self.size, False, self.family, 1), t0, t1)
        return float(buf["value"][0]), int(buf["index"][0])

    def Allgather(self, sendbuf: np.ndarray, recvbuf: np.ndarray) -> np.ndarray:
        MPI = self.MPI
        self._pre_sync()
        t0 = self._enter("allgather", sendbuf.nbytes)
        self.comm.Allgather(sendbuf, recvbuf)
        t1 = MPI.Wtime()
        n = sendbuf.nbytes
        self._record("allgather", n, recvbuf.nbytes, wire_bytes("allgather", n, self.size, False, self.family, sendbuf.size), t0, t1)
        return recvbuf

    def Bcast(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        MPI = self.MPI
        self._pre_sync()
        t0 = self._enter("bcast", buf.nbytes)
        self.comm.Bcast(buf, root=root)
        t1 = MPI.Wtime()
        n = buf.nbytes
        is_root = self.rank == root
        self._record(
            "bcast", n if is_root else 0, 0 if is_root else n, wire_bytes("bcast", n, self.size, False, self.family, buf.size), t0, t1
        )
        return buf

    def Gatherv(self, sendbuf: np.ndarray, root: int = 0) -> np.ndarray | None:
        """Gather 1-d arrays of possibly different lengths to ``root``; returns the concatenation there."""
        MPI = self.MPI
        counts = np.zeros(self.size, dtype=np.int64)
        self.Allgather(np.array([sendbuf.shape[0]], dtype=np.int64), counts)
        is_root = self.rank == root
        recv = np.empty(int(counts.sum()), dtype=sendbuf.dtype) if is_root else None
        t0 = self._enter("gather", sendbuf.nbytes)
        if is_root:
            self.comm.Gatherv(sendbuf, [recv, counts.tolist()], root=root)
        else:
            self.comm.Gatherv(sendbuf, None, root=root)
        t1 = MPI.Wtime()
        n = sendbuf.nbytes
        self._record(
            "gather", n, recv.nbytes if is_root else 0, wire_bytes("gather", n, self.size, is_root, self.family), t0, t1
        )
        return recv

    def Barrier(self) -> None:
        MPI = self.MPI
        t0 = self._enter("barrier")
        self.comm.Barrier()
        t1 = MPI.Wtime()
        self._record("barrier", 0, 0, 0, t0, t1)

    def clock_offsets(self, rounds: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Offsets of every rank's ``MPI_Wtime`` from rank 0's, by minimum round-trip ping-pong.

        Returns ``(offset, rtt)`` arrays of length ``size`` on every rank: ``t - offset[r]`` puts a
        time of rank r on rank 0's axis; ``rtt[r]`` is the best round trip (the offset's error is at
        most half of it).
        """
        MPI = self.MPI
        offset = np.zeros(self.size)
        rtt = np.zeros(self.size)
        ping = np.zeros(1)
        pong = np.zeros(1)
        for peer in range(1, self.size):
            best = math.inf
            for _ in range(rounds):
                if self.rank == 0:
                    t0 = MPI.Wtime()
                    ping[0] = t0
                    self.comm.Send(ping, dest=peer, tag=77)
                    self.comm.Recv(pong, source=peer, tag=78)
                    t1 = MPI.Wtime()
                    self._record("sendrecv", 16, 8, 16, t0, t1, p2p=True)
                    if t1 - t0 < best:
                        best = t1 - t0
                        offset[peer] = pong[0] - 0.5 * (t0 + t1)
                elif self.rank == peer:
                    t0 = MPI.Wtime()
                    self.comm.Recv(ping, source=0, tag=77)
                    pong[0] = MPI.Wtime()
                    self.comm.Send(pong, dest=0, tag=78)
                    self._record("sendrecv", 8, 8, 8, t0, MPI.Wtime(), p2p=True)
            rtt[peer] = best if self.rank == 0 else 0.0
        self.Bcast(offset)
        self.Bcast(rtt)
        return offset, rtt

    def wtime_is_global(self) -> bool:
        try:
            return bool(self.comm.Get_attr(self.MPI.WTIME_IS_GLOBAL))
        except Exception:  # noqa: BLE001  (attribute not provided by every MPI)
            return False

    def raw(self) -> RawComm:
        """The same collectives straight to mpi4py, with no timing or records (for overhead benchmarks)."""
        return RawComm(self)

    def finalize(self) -> None:
        if not self.MPI.Is_finalized():
            self.MPI.Finalize()

    def Abort(self, code: int = 1) -> None:
        self.comm.Abort(code)

    # ------------------------------------------------------------------ helpers built on the above
    def local_size(self) -> int:
        """Number of ranks on this node (MPI_COMM_TYPE_SHARED)."""
        MPI = self.MPI
        t0 = MPI.Wtime()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        t1 = MPI.Wtime()
        self._record("split", 0, 0, 0, t0, t1)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def agree(self, fn, *args, **kwargs):
        """Run ``fn`` on every rank and agree on failure, so that no rank waits for a failed one.

        When :class:`UsageError` or :class:`RunError` is raised on any rank, the lowest failing
        rank re-raises its own error and the others raise :class:`SilentExit` with the same code.
        """
        err = None
        result = None
        try:
            result = fn(*args, **kwargs)
        except (UsageError, RunError) as e:
            err = e
        flag = self._flag
        flag[0] = err.exit_code if err is not None else 0
        flag[1] = (self.size - self.rank) if err is not None else 0  # max picks the lowest failing rank
        self.Allreduce(flag, op="max")
        if flag[0] == 0:
            return result
        if err is not None and self.size - self.rank == flag[1]:
            err.agreed = True  # every rank knows: they leave together (run.control)
            raise err
        raise SilentExit(int(flag[0]))

    def decide(self, fn, *args, root: int = 0, **kwargs) -> float:
        """One decision every rank follows: ``fn`` runs on ``root`` alone (under :meth:`agree`, so its failure
        ends every rank together) and its result, a number (a bool, an int up to 2**53, a float, NaN), is
        broadcast. For every choice that precedes a collective and that a rank could otherwise make from its
        own view (a file it sees, a read that failed on it alone)."""
        value = self.agree(lambda: float(fn(*args, **kwargs)) if self.rank == root else 0.0)
        buf = np.array([value], dtype=np.float64)
        self.Bcast(buf, root=root)
        return float(buf[0])

    def exists_everywhere(self, path: str, what: str = "file") -> bool:
        """True when ``path`` exists on every rank, False when on none. When only some ranks see it (a
        node-local folder, a file system not mounted everywhere) every rank ends together: the lowest rank
        that sees it raises :class:`RunError` naming the ranks, the others :class:`SilentExit`."""
        import os

        seen = np.array([1 if os.path.exists(path) else 0, 0], dtype=np.int64)
        seen[1] = 1 - seen[0]
        both = seen.copy()
        self.Allreduce(both, op="max")
        if not (both[0] and both[1]):
            return bool(both[0])
        who = np.zeros(self.size, dtype=np.int64)
        self.Allgather(seen[:1].copy(), who)
        ranks = [r for r in range(self.size) if who[r]]
        if self.rank == ranks[0]:
            err = RunError(f"the {what} {path} exists on rank{'s' if len(ranks) > 1 else ''} "
                           f"{', '.join(map(str, ranks))} of {self.size} only: put it on a file system every "
                           "rank sees")
            err.agreed = True
            raise err
        raise SilentExit(RunError.exit_code)

    def bcast_str(self, text: str, root: int = 0, max_bytes: int = 4096) -> str:
        """Rank ``root``'s string on every rank (one Bcast of a fixed-size byte buffer)."""
        buf = np.zeros(max_bytes, dtype=np.uint8)
        if self.rank == root:
            raw = text.encode()[: max_bytes - 1]
            buf[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        self.Bcast(buf, root=root)
        return bytes(buf).split(b"\0", 1)[0].decode()

    def same_everywhere(self, value: int) -> bool:
        """True when the 63-bit integer ``value`` is the same on every rank (one Allreduce)."""
        buf = np.array([value, -value], dtype=np.int64)
        self.Allreduce(buf, op="max")
        return bool(buf[0] == -buf[1])

    def processor_names(self, max_bytes: int = 64) -> list[str]:
        """``MPI.Get_processor_name()`` of every rank, in rank order (one Allgather of fixed-size buffers)."""
        mine = np.zeros(max_bytes, dtype=np.uint8)
        raw = c_string(self.MPI.Get_processor_name()).encode()[: max_bytes - 1]
        mine[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        everyone = np.zeros(max_bytes * self.size, dtype=np.uint8)
        self.Allgather(mine, everyone)
        return [bytes(everyone[r * max_bytes:(r + 1) * max_bytes]).split(b"\0", 1)[0].decode(errors="replace")
                for r in range(self.size)]

    def library_version(self) -> str:
        return c_string(self.MPI.Get_library_version()).strip()

    def vendor(self) -> str:
        name, ver = self.MPI.get_vendor()
        return f"{name} {'.'.join(map(str, ver))}"

    def collective_model(self, processor_names=()) -> dict:
        """The run log's record of which algorithm family the figures follow and whether they are
        assumed (:func:`hes_mpi.collectives.collective_model`; ``processor_names`` one per rank)."""
        import os

        return collective_model(self.MPI.get_vendor()[0], processor_names, os.environ)

    def mpi4py_version(self) -> str:
        import mpi4py

        return mpi4py.__version__

    def wtick(self) -> float:
        return self.MPI.Wtick()


def c_string(text: str) -> str:
    """``text`` up to its first NUL. Open MPI 5.0 (up to 5.0.11 at least; open-mpi/ompi#14411) counts the
    terminating NUL in ``MPI_Get_library_version``'s length, so mpi4py returns the string with a trailing
    ``"\\0"``, which HDF5 refuses in a string attribute: every string from MPI passes through here."""
    return text.split("\0", 1)[0]


class SilentExit(Exception):
    """Another rank reported the error; this rank exits with the same status and says nothing."""

    def __init__(self, exit_code: int):
        super().__init__(exit_code)
        self.exit_code = exit_code


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Ops(dict):
    """MPI reduction operations by name: MPI's own, and ``half_sum``, the float16 sum of buffers carried as
    uint16 bit patterns (:func:`hes_mpi.compress_kernels.add_halves`), made on first use. With it every MPI
    moves the bytes of a float16 Allreduce as 2-byte integers and runs the same commutative algorithms."""

    def __init__(self, MPI):
        super().__init__(sum=MPI.SUM, max=MPI.MAX, min=MPI.MIN)
        self.MPI = MPI

    def __missing__(self, name: str):
        if name != "half_sum":
            raise KeyError(name)
        from .compress_kernels import add_halves

        def half_sum(inmem, inoutmem, datatype):
            add_halves(np.frombuffer(inmem, dtype=np.uint16), np.frombuffer(inoutmem, dtype=np.uint16))

        self[name] = self.MPI.Op.Create(half_sum, commute=True)
        return self[name]


class RawComm:
    """Uninstrumented twin of :class:`InstrumentedComm` for the calls of a training step."""

    def __init__(self, icomm: InstrumentedComm):
        self._ic = icomm
        self.comm = icomm.comm
        self.MPI = icomm.MPI
        self.rank = icomm.rank
        self.size = icomm.size
        self.comm_seconds = 0.0
        self._ops = icomm._ops
        self._minloc_buf = np.zeros(1, dtype=icomm._minloc_buf.dtype)

    def set_phase(self, phase: str, iteration: int | None = None) -> None:
        pass

    def wtime(self) -> float:
        return self.MPI.Wtime()

    def Allreduce(self, buf, out=None, op: str = "sum"):
        if out is None:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])
            return buf
        self.comm.Allreduce(buf, out, op=self._ops[op])
        return out

    def minloc(self, value: float, index: int) -> tuple[float, int]:
        buf = self._minloc_buf
        buf["value"][0] = value
        buf["index"][0] = index
        self.comm.Allreduce(self.MPI.IN_PLACE, [buf, self.MPI.DOUBLE_INT], op=self.MPI.MINLOC)
        return float(buf["value"][0]), int(buf["index"][0])

    def Allgather(self, sendbuf, recvbuf):
        self.comm.Allgather(sendbuf, recvbuf)
        return recvbuf

    def Bcast(self, buf, root: int = 0):
        self.comm.Bcast(buf, root=root)
        return buf

    def Barrier(self) -> None:
        self.comm.Barrier()
