"""Files that a kill cannot tear: every change is made to a copy, which then takes the file's place.

:func:`replaced` copies ``PATH`` to ``PATH.tmp`` (or starts an empty one, to create a file), hands it to the
caller to change, fsyncs it, renames it over ``PATH`` and fsyncs the folder. A rename within a folder is
atomic (POSIX; NFS and Lustre keep it), so a reader, or a run resumed after a kill at any moment, finds
the file as it was before an update or as it is after it, never half-written. A kill leaves at most
``PATH.tmp``, an unfinished copy that the next update overwrites. The syncs make the same hold after a
power cut: the new file is on disk before its name, and its name before whatever the caller writes next
(a checkpoint that counts the log's rows).

HDF5 cannot give this in place: a file it is appending to is only consistent once it has closed it (a kill
in between left "addr overflow" or tables of different lengths), and SWMR, which keeps a file readable
while it is written, marks the file as open for writing until the writer closes it, so after a kill
neither a plain reader nor a writer can open it again without ``h5clear`` (docs/runlog.md).

The price is a copy of the file per update (by the kernel, no Python buffers) and the fsync of the copy;
docs/runlog.md gives the measured cost.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from . import faultpoints

SUFFIX = ".tmp"


@contextlib.contextmanager
def replaced(path, copy: bool = True):
    """Yield what to hand ``h5py.File`` for ``PATH.tmp``, a copy of ``path`` (``copy=False``: a new, empty
    file); when the block ends, the copy replaces ``path`` (fsync, rename, fsync of the folder). When the
    block or any of these steps raises, the copy is removed and ``path`` is left as it was."""
    path = str(path)
    tmp = path + SUFFIX
    faultpoints.point(path, "begin")
    try:
        if copy:
            shutil.copyfile(path, tmp)
            shutil.copymode(path, tmp)
        faultpoints.point(path, "copied")
        with faultpoints.h5_target(tmp, "r+b" if copy else "w+b", observed_as=path) as target:
            yield target
        faultpoints.point(path, "written")
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        faultpoints.point(path, "synced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    faultpoints.point(path, "renamed")
    _sync_folder(os.path.dirname(path) or ".")
    faultpoints.point(path, "end")


def _sync_folder(folder: str) -> None:
    """fsync a folder, so that a rename in it is on disk. The rename has happened already: a file system
    that cannot sync a folder (some network ones refuse) only loses the order after a power cut."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
