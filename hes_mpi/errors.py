"""Exceptions that the command line turns into one-line messages and exit codes, and the quiet end of a
program whose reader went away (``... | head -1``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UsageError(Exception):
    """Bad input from the user (options, data, output path): exit status 2, no traceback."""

    exit_code = 2


class RunError(Exception):
    """A run that cannot go on (ranks diverged, loss not finite): exit status 1, no traceback."""

    exit_code = 1


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
