"""Exceptions that the command line turns into one-line messages and exit codes, and the quiet end of a
program whose reader went away (``... | head -1``).

Under MPI an error is either one that every rank raises at the same point (``everywhere``: it follows from
figures the ranks share, or the ranks agreed on it with ``comm.agree``), and then the ranks leave together
and one of them says it, or one that this rank may have met alone, and then it takes every rank down with
``MPI_Abort`` (:func:`hes_mpi.run.control.run_mpi`), so that no rank is left waiting in a collective.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class _OneLineError(Exception):
    exit_code = 1

    def __init__(self, message: str = "", *, everywhere: bool = False):
        super().__init__(message)
        #: True when every rank raises this error at the same point (a loss every rank sees, a checksum
        #: compared across ranks): the ranks leave together and rank 0 alone prints it.
        self.everywhere = everywhere


class UsageError(_OneLineError):
    """Bad input from the user (options, data, output path): exit status 2, no traceback."""

    exit_code = 2


class RunError(_OneLineError):
    """A run that cannot go on (ranks diverged, loss not finite): exit status 1, no traceback."""

    exit_code = 1


class Diverged(RunError):
    """The loss or the gradient stopped being finite (a learning rate too large). Every rank sees the same
    figures, so every rank raises it at the same iteration (``everywhere``: rank 0 says it). The run log is
    complete, with ``diverged = true``, the iteration and the reason: a sweep or a learning-rate search catches
    it alone, records it and goes on, and counts it as done when it restarts. Exit status 1."""

    def __init__(self, message: str, iteration: int = -1):
        super().__init__(message, everywhere=True)
        self.iteration = iteration


def silence_stdout() -> None:
    """Point standard output at /dev/null once its reader has closed the pipe: what Python still holds in
    its buffer then goes nowhere at exit instead of failing a second time ("Exception ignored ...")."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run_script(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """``main(argv)``'s exit status; 0, quietly, when the reader of standard output stops early (an analysis
    script piped into ``head``): no traceback, and the output is flushed here, where the error is caught,
    not at exit. Each ``analysis/*.py`` ends in ``sys.exit(run_script(main))``."""
    try:
        status = main(argv)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        silence_stdout()
        return 0
