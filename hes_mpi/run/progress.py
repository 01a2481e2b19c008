"""Where a long job is: elapsed time and an estimate of what is left, for sweeps (a line per run started and
finished) and training (the epoch lines).

The estimate is the mean duration of the items done so far times the items left. Items that took no time
(a sweep's run logs that were already complete) are counted as done but do not enter the mean.
"""

from __future__ import annotations

import math
import time


def duration(seconds: float) -> str:
    """'42 s', '12:03' (minutes:seconds) or '1:02:10' (hours:minutes:seconds); '?' when unknown."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """``total`` items; :meth:`done` after each, with what it took (None for an item that was skipped)."""

    def __init__(self, total: int, clock=time.monotonic):
        self.total = total
        self.clock = clock
        self.t0 = clock()
        self.finished = 0
        self.timed: list[float] = []

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def eta(self) -> float:
        """Seconds left: the mean of the timed items times the items left (NaN before any was timed)."""
        left = self.total - self.finished
        if left <= 0:
            return 0.0
        return left * sum(self.timed) / len(self.timed) if self.timed else math.nan

    def done(self, seconds: float | None = None) -> None:
        self.finished += 1
        if seconds is not None:
            self.timed.append(seconds)

    def status(self) -> str:
        """'elapsed 12:03, ETA 1:02:10' (or 'ETA ?' before the first timed item)."""
        left = self.total - self.finished
        return f"elapsed {duration(self.elapsed())}" + (f", ETA {duration(self.eta())}" if left > 0 else "")
