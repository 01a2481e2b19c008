"""Watchdogs that end a process which MPI would leave hanging.

- :func:`init_watchdog`: ``MPI_Init`` that does not return (seen with the MPICH wheel under srun) holds
  Python's lock, so no Python code can run: faulthandler's C thread prints where the process is stuck and
  SIGALRM's default action ends it (exit status 142, :data:`INIT_TIMEOUT_EXIT`).
- :class:`CollectiveWatchdog`: a collective that does not complete, e.g. when a peer's link is down and TCP
  retransmits for minutes. mpi4py releases Python's lock inside MPI calls, so a watcher thread runs while
  the main thread waits: past the timeout it prints one line naming the operation, the phase and the
  iteration, and calls ``MPI_Abort`` (exit status 1), so that the launcher ends every rank. Checkpoints are
  written atomically, so the last one is whole. Long before that, a call that takes far longer than calls of
  its kind usually do gets one warning line (:class:`StallDetector`).
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import sys
import threading
import time
from collections import defaultdict, deque
from functools import partial

from .log import get_logger

log = get_logger("watchdog")

#: Environment variable for the collective timeout in seconds (``train --collective-timeout``); 0: off.
ENV_COLLECTIVE_TIMEOUT = "HES_MPI_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT_S = 120.0
#: Seconds the watchdog gives MPI_Abort before the process exits by itself.
ABORT_TIMEOUT_S = 10.0
#: A call waiting this long when SIGTERM arrives is stuck (a dead peer), not merely slow.
STUCK_S = 5.0


#: Seconds a collective of the setup phase may take (agreeing that every rank loaded its data, found the
#: same checkpoint, ...): generous, since a rank may be reading a large dataset or compiling kernels while
#: the others wait. ``$HES_MPI_SETUP_TIMEOUT`` overrides it; 0 turns it off.
DEFAULT_SETUP_TIMEOUT_S = 900.0
ENV_SETUP_TIMEOUT = "HES_MPI_SETUP_TIMEOUT"


#: ``--stall-factor``: a call is warned about when it has taken this many times the running median of its
#: kind, and at least :data:`STALL_MIN_S` seconds (0: no warnings).
DEFAULT_STALL_FACTOR = 50.0
STALL_MIN_S = 5.0
#: The running median of a kind of call is over its last STALL_WINDOW calls, once it has STALL_MIN_CALLS.
STALL_WINDOW = 64
STALL_MIN_CALLS = 5


class StallDetector:
    """The running median duration of each kind of call, and whether a call that is still waiting stalls.

    A kind is a number the caller chooses (the communicator: the operation and the power-of-two class of its
    bytes, so that a 12-byte Allreduce and a gradient's have medians of their own). :meth:`add` is the hot
    path (a deque append); :meth:`stalled`, which sorts a window, runs in the watchdog's thread, and only
    once a call has waited :data:`STALL_MIN_S`.
    """

    def __init__(self, factor: float = DEFAULT_STALL_FACTOR, min_s: float = STALL_MIN_S):
        self.factor = float(factor)
        self.min_s = float(min_s)
        self._durations: defaultdict[int, deque] = defaultdict(partial(deque, maxlen=STALL_WINDOW))

    def add(self, kind: int, seconds: float) -> None:
        """A completed call of ``kind`` that took ``seconds``."""
        self._durations[kind].append(seconds)

    def median(self, kind: int) -> float | None:
        """The median of the last calls of ``kind`` (None before :data:`STALL_MIN_CALLS` calls)."""
        try:
            last = sorted(self._durations.get(kind, ()))  # the main thread may append meanwhile: then next time
        except RuntimeError:
            return None
        if len(last) < STALL_MIN_CALLS:
            return None
        n = len(last)
        return last[n // 2] if n % 2 else 0.5 * (last[n // 2 - 1] + last[n // 2])

    def stalled(self, kind: int, waited: float) -> float | None:
        """The median of ``kind`` when a call of it that has waited ``waited`` seconds stalls (more than
        :attr:`factor` times the median and at least :attr:`min_s`), else None."""
        if self.factor <= 0 or waited < self.min_s:
            return None
        med = self.median(kind)
        return med if med is not None and waited > self.factor * med else None


def size_class(kind: int) -> str:
    """The byte range of a communicator kind's size class (its low six bits: the byte count's bit length)."""
    bits = kind & 63
    return "0 bytes" if bits == 0 else f"{1 << (bits - 1)}-{(1 << bits) - 1} bytes"


def default_setup_timeout() -> float:
    try:
        return float(os.environ.get(ENV_SETUP_TIMEOUT, DEFAULT_SETUP_TIMEOUT_S))
    except ValueError:
        return DEFAULT_SETUP_TIMEOUT_S


def default_collective_timeout() -> float:
    try:
        return float(os.environ.get(ENV_COLLECTIVE_TIMEOUT, DEFAULT_COLLECTIVE_TIMEOUT_S))
    except ValueError:
        return DEFAULT_COLLECTIVE_TIMEOUT_S


class CollectiveWatchdog:
    """A daemon thread that ends the process when an armed call stays armed longer than ``timeout_s`` (0: never),
    and warns once about an armed call that stalls (:class:`StallDetector`, ``stall_factor``; 0: never).

    :meth:`arm` and :meth:`disarm` only set attributes and append a duration (a few hundred nanoseconds per
    call); the thread looks at them a few times per second. ``clock`` is for tests.
    """

    def __init__(self, timeout_s: float, where: str = "", grace_s: float = 0.0, abort=None,
                 stall_factor: float = 0.0, clock=time.monotonic):
        self.timeout_s = float(timeout_s)
        self.where = where
        #: Extra seconds before this rank gives up: the other ranks wait a little longer than rank 0, whose
        #: exit then ends the job with its line alone (unless rank 0 is the one that is gone).
        self.grace_s = float(grace_s)
        #: How to take the whole job down (``MPI_Abort``: the launcher then ends every rank; a rank that only
        #: exits leaves the others of a multi-host job waiting). The process exits on its own if it hangs.
        self.abort = abort
        self.hint = ""
        #: The limit of setup-phase calls (:data:`DEFAULT_SETUP_TIMEOUT_S`); 0: not watched.
        self.setup_timeout_s = default_setup_timeout()
        self.stalls = StallDetector(stall_factor)
        self._durations = self.stalls._durations
        self._clock = clock
        self._call: tuple[str, str, int] | None = None
        self._kind = -1
        self._warned: tuple | None = None
        self._limit = self.timeout_s
        self._since = 0.0
        self._stop = threading.Event()
        self._signals = self._signal_pipe()
        self._thread = threading.Thread(target=self._watch, name="hes_mpi-collective-watchdog", daemon=True)
        self._thread.start()

    @staticmethod
    def _signal_pipe() -> int | None:
        """The read end of a pipe that Python's C-level signal handler writes every signal number to, even
        while the main thread is stuck inside MPI and no Python handler can run (``signal.set_wakeup_fd``);
        None when this is not the main thread or a wakeup fd is taken already."""
        if threading.current_thread() is not threading.main_thread():
            return None
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        try:
            if signal.set_wakeup_fd(w, warn_on_full_buffer=False) != -1:  # someone else's: give it back
                signal.set_wakeup_fd(-1)
                raise ValueError
        except ValueError:
            os.close(r)
            os.close(w)
            return None
        return r

    def _terminated_while_stuck(self, wait_s: float) -> bool:
        """Wait up to ``wait_s``; True when SIGTERM came while a call has been stuck for over
        :data:`STUCK_S` seconds: the launcher is ending the job (another rank gave up first), and this rank
        can only leave quietly. (A SIGTERM during ordinary work is the trainer's: checkpoint and stop.)"""
        if self._signals is None:
            self._stop.wait(wait_s)
            return False
        import select

        ready, _, _ = select.select([self._signals], [], [], wait_s)
        if not ready:
            return False
        try:
            got = os.read(self._signals, 64)
        except BlockingIOError:
            return False
        stuck = self._call is not None and self._clock() - self._since > STUCK_S
        return stuck and signal.SIGTERM in got

    def arm(self, op: str, phase: str, iteration: int, limit: float | None = None, kind: int = -1) -> None:
        """Watch a call from now on; ``limit``: its own timeout (setup calls), default :attr:`timeout_s`;
        ``kind``: its kind for the stall warning (-1: none, not counted)."""
        self._since = self._clock()
        self._limit = self.timeout_s if limit is None else limit
        self._kind = kind
        self._call = (op, phase, iteration)

    def disarm(self) -> None:
        """The call completed: its duration joins its kind's median (:meth:`StallDetector.add`, inlined)."""
        kind = self._kind
        if kind >= 0:
            self._durations[kind].append(self._clock() - self._since)
            self._kind = -1
        self._call = None

    def stop(self) -> None:
        self._stop.set()

    def message(self, call: tuple[str, str, int], waited: float) -> str:
        op, phase, iteration = call
        which = f"${ENV_SETUP_TIMEOUT}" if phase == "setup" else "--collective-timeout"
        text = (f"hes-mpi: error{self.where}: {op} (phase {phase}, iteration {iteration}) did not complete within "
                f"{self._limit:g} s (waited {waited:.0f} s): a node or its link is down, or a rank died; "
                f"stopping ({which})")
        return text + (f"; {self.hint}" if self.hint else "")

    def stall_warning(self, call: tuple[str, str, int], kind: int, waited: float, median: float) -> str:
        op, phase, iteration = call
        end = f"the run ends at --collective-timeout ({self.timeout_s:g} s)" if self.timeout_s > 0 else \
            "--collective-timeout 0: waiting for ever"
        return (f"{op} (phase {phase}, iteration {iteration}) has waited {waited:.1f} s, {waited / median:.0f} times "
                f"the median of its kind ({median * 1e3:.3g} ms, {op} of {size_class(kind)}): a node, its link "
                f"or a rank may be stuck; {end}")

    def poll(self) -> None:
        """One look at the armed call: warn about a stall once, end the process past its limit."""
        call, kind = self._call, self._kind
        if call is None:
            return
        waited = self._clock() - self._since
        if kind >= 0 and call is not self._warned:
            median = self.stalls.stalled(kind, waited)
            if median is not None and self._call is call:
                self._warned = call
                log.warning(self.stall_warning(call, kind, waited, median))
        if self.timeout_s > 0 and waited > self._limit + self.grace_s and self._call is call:
            with contextlib.suppress(Exception):  # nothing may stop the exit
                sys.stdout.flush()
            os.write(2, (self.message(call, waited) + "\n").encode())
            self._end(1)

    def _watch(self) -> None:
        while not self._stop.is_set():
            every = min(0.5, max(0.05, self.timeout_s / 20)) if self.timeout_s > 0 else 0.5
            if self._terminated_while_stuck(every):
                os._exit(128 + signal.SIGTERM)
            self.poll()

    def _end(self, code: int) -> None:
        if self.abort is not None:
            threading.Timer(ABORT_TIMEOUT_S, os._exit, (code,)).start()  # if MPI_Abort cannot reach the launcher
            with contextlib.suppress(Exception):
                self.abort(code)
        os._exit(code)


#: Exit status of a process whose MPI_Init did not return in time: killed by SIGALRM (128 + 14), as srun
#: and mpiexec report it. The job scripts start such a step again.
INIT_TIMEOUT_EXIT = 142


@contextlib.contextmanager
def init_watchdog():
    """Kill the process if MPI_Init does not return within ``$HES_MPI_INIT_TIMEOUT`` seconds (default 300;
    0: wait for ever). Seen with the MPICH wheel under srun: now and then both ranks spin in MPI_Init for
    ever, holding Python's lock, so no Python code can run. Two mechanisms that need no Python: faulthandler's
    watchdog thread prints where the process is stuck, then SIGALRM with its default action ends it (exit
    status 142); ``srun --kill-on-bad-exit`` ends the step, and the job scripts start it again."""
    if "mpi4py.MPI" in sys.modules:  # already started in this process
        yield
        return
    try:
        timeout = float(os.environ.get("HES_MPI_INIT_TIMEOUT", "300"))
    except ValueError:
        timeout = 300.0
    if timeout <= 0:
        yield
        return
    sys.stderr.write("")  # make sure stderr exists before faulthandler needs it
    faulthandler.dump_traceback_later(timeout, exit=False)
    previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(max(1, math.ceil(timeout)) + 1)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        faulthandler.cancel_dump_traceback_later()


