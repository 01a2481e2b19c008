"""Exceptions that the command line turns into one-line messages and exit codes."""


class UsageError(Exception):
    """Bad input from the user (options, data, output path): exit status 2, no traceback."""

    exit_code = 2


class RunError(Exception):
    """A run that cannot go on (ranks diverged, loss not finite): exit status 1, no traceback."""

    exit_code = 1


class Diverged(RunError):
    """A run whose loss or gradient stopped being finite (every rank sees the same global figure, so every
    rank raises it at the same iteration). Its run log is complete, with ``diverged = true``, the iteration
    and the reason: a sweep records it and goes on, and counts it as done when it restarts. Exit status 1."""

    def __init__(self, message: str, iteration: int):
        super().__init__(message)
        self.iteration = iteration
