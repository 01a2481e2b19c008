"""Rank-aware logging: every line carries ``rank/size``; only rank 0 speaks below WARNING."""

import logging
import sys

_FORMAT = "%(asctime)s %(rankinfo)s %(levelname)s %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, size: int):
        super().__init__()
        self.rankinfo = f"{rank}/{size}"

    def filter(self, record):
        record.rankinfo = self.rankinfo
        return True


def setup_logging(rank: int = 0, size: int = 1, level: int = logging.INFO, stderr: bool = False) -> logging.Logger:
    """Configure the ``hes_mpi`` logger for this rank and return it.

    Non-root ranks log at WARNING and above, so a run prints one progress stream: rank 0's on standard
    output, or on standard error with ``stderr`` (commands whose standard output is JSON).
    """
    logger = logging.getLogger("hes_mpi")
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr if rank or stderr else sys.stdout)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter(rank, size))
    logger.addHandler(handler)
    logger.setLevel(level if rank == 0 else max(level, logging.WARNING))
    logger.propagate = False
    return logger


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger("hes_mpi" + (f".{name}" if name else ""))
