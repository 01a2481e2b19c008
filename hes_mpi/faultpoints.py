"""The points inside the run log's file updates where the fault tests stop a writer, so that a kill lands
exactly there instead of wherever a timer happens to fire.

Normal runs install no observer, and the writer opens its files as usual. With an observer (:func:`observe`;
``HES_MPI_PAUSE_IN_FLUSH`` installs one, see :mod:`hes_mpi.run.control`), the writer opens its file
through :class:`ObservedFile`, so that HDF5's every write to it is a point, and marks the steps between
writes with :func:`point`: ``begin`` and ``end`` of each update (creation, flush, the cut of a resume)
and whatever the writer does in between. The observer gets the run log's path and the point's name.
"""

from __future__ import annotations

import contextlib
import io

_OBSERVER: dict = {"fn": None}


def observe(fn) -> None:
    """Call ``fn(path, what)`` at every point from now on (None: no more)."""
    _OBSERVER["fn"] = fn


def point(path, what: str) -> None:
    """A point of an update of the file at ``path``: ``begin``, ``write``, ..., ``end``."""
    fn = _OBSERVER["fn"]
    if fn is not None:
        fn(str(path), what)


class ObservedFile(io.FileIO):
    """A file whose every write is a point of ``observed_as`` (HDF5 writes through it when h5py is given a
    file object); unbuffered, so that a write is in the operating system's hands when its point comes."""

    def __init__(self, path, mode: str, observed_as):
        super().__init__(path, mode)
        self.observed_as = str(observed_as)

    def write(self, b) -> int:
        n = super().write(b)
        point(self.observed_as, "write")
        return n


@contextlib.contextmanager
def h5_target(path, mode: str, observed_as=None):
    """What to hand ``h5py.File`` for the file at ``path``: the path itself, or, while observed, an
    :class:`ObservedFile` opened with ``mode`` (``r+b`` to change a file, ``w+b`` to create one)."""
    if _OBSERVER["fn"] is None:
        yield str(path)
        return
    with ObservedFile(path, mode, observed_as or path) as fh:
        yield fh
