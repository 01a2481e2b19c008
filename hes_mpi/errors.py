"""Exceptions that the command line turns into one-line messages and exit codes."""


class UsageError(Exception):
    """Bad input from the user (options, data, output path): exit status 2, no traceback."""

    exit_code = 2


class RunError(Exception):
    """A run that cannot go on (ranks diverged, loss not finite): exit status 1, no traceback."""

    exit_code = 1
