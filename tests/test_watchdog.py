"""The stall warning (``--stall-factor``): the running median of each kind of call, and the watchdog that warns
once about a call far slower than its kind and still ends the run only at ``--collective-timeout``. Call
durations and the clock are the test's own: a call "hangs" when the test moves the clock, never by a race."""

from __future__ import annotations

import logging
import threading

from hes_mpi.schema import OPS
from hes_mpi.watchdog import CollectiveWatchdog, StallDetector, size_class

SMALL = OPS.index("minloc") << 6 | (12).bit_length()  # the communicator's kinds: op and bit length of the bytes
LARGE = OPS.index("allreduce") << 6 | (954_040).bit_length()


def test_each_kind_has_its_own_running_median():
    d = StallDetector(factor=50, min_s=5)
    for _ in range(4):
        d.add(SMALL, 50e-6)
    assert d.median(SMALL) is None and d.stalled(SMALL, 60) is None  # too few calls to know its kind
    d.add(SMALL, 50e-6)
    for _ in range(20):
        d.add(LARGE, 0.2)
    assert d.median(SMALL) == 50e-6 and d.median(LARGE) == 0.2
    assert d.stalled(SMALL, 4.9) is None  # 100,000 times its median, but not yet 5 s
    assert d.stalled(SMALL, 5.1) == 50e-6
    assert d.stalled(LARGE, 9.9) is None  # 50 times 0.2 s is 10 s
    assert d.stalled(LARGE, 10.1) == 0.2
    for _ in range(64):  # the median runs over the last 64 calls
        d.add(SMALL, 1.0)
    assert d.median(SMALL) == 1.0 and d.stalled(SMALL, 49) is None and d.stalled(SMALL, 51) == 1.0
    d.factor = 0  # --stall-factor 0: never
    assert d.stalled(LARGE, 1e6) is None
    assert size_class(SMALL) == "8-15 bytes" and size_class(LARGE) == "524288-1048575 bytes"


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_watchdog_warns_once_and_ends_the_run_only_at_the_timeout():
    clock = Clock()
    box = []
    # made in a thread of its own, so that it leaves the test process's signal wakeup fd alone
    maker = threading.Thread(target=lambda: box.append(
        CollectiveWatchdog(20, " (rank 0/2)", stall_factor=50, clock=clock)))
    maker.start()
    maker.join()
    wd = box[0]
    wd.stop()
    wd._thread.join()  # the test polls by hand
    ended = []
    wd._end = ended.append  # instead of MPI_Abort and the process's exit
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("hes_mpi.watchdog")
    logger.addHandler(handler)
    try:
        for i in range(20):  # a gradient Allreduce of 0.2 s and a 12-byte MINLOC of 50 us, in turn
            wd.arm("allreduce", "grad", 2 * i, kind=LARGE)
            clock.t += 0.2
            wd.disarm()
            wd.arm("minloc", "es", 2 * i + 1, kind=SMALL)
            clock.t += 50e-6
            wd.disarm()
        wd.arm("allreduce", "grad", 40, kind=LARGE)  # the link goes down
        for dt in (9.0, 1.5, 5.0):  # 9 s: under 50 times its median; 10.5 s: one warning; 15.5 s: no second
            clock.t += dt
            wd.poll()
            assert len(warnings) == (0 if dt == 9.0 else 1) and not ended
        assert warnings[0].startswith("allreduce (phase grad, iteration 40) has waited 10.5 s, 52 times the median "
                                      "of its kind (200 ms, allreduce of 524288-1048575 bytes)")
        assert "the run ends at --collective-timeout (20 s)" in warnings[0]
        clock.t += 4.0  # 19.5 s: still waiting
        wd.poll()
        assert not ended
        clock.t += 1.0  # 20.5 s: past --collective-timeout, the run ends
        wd.poll()
        assert ended == [1] and len(warnings) == 1
        wd.disarm()
        wd.arm("minloc", "es", 41, kind=SMALL)  # a 12-byte call has a median of its own: 5 s is a stall
        clock.t += 5.2
        wd.poll()
        assert len(warnings) == 2 and warnings[1].startswith("minloc (phase es, iteration 41) has waited 5.2 s")
        wd.disarm()
        wd.arm("allreduce", "setup", -1, limit=900)  # setup calls have no kind: never warned about, never counted
        clock.t += 60
        wd.poll()
        assert len(warnings) == 2 and ended == [1]
        wd.disarm()
        assert sorted(wd.stalls._durations) == sorted([SMALL, LARGE]) and len(wd.stalls._durations[SMALL]) == 21
    finally:
        logger.removeHandler(handler)
