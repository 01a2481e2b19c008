"""Folders and files that root trusts: the emulated clusters' state and Slurm's private MUNGE key.

Commands run as root read ``state.json`` from a cluster's folder and execute its ``launch.sh`` (Hydra,
PRRTE and slurmd run the launcher as root), so no other user may change what is in that folder or where
its path leads:

- the folder itself (``$HES_MPI_CLUSTER_DIR``, default ``/run/hes_mpi/cluster``, and each cluster's folder
  in it) is a real folder, not a symlink, owned by the effective user (or by root) and writable by no one
  else: no group or other write bit;
- every folder above it is owned by root or the effective user and writable by no one else, unless it is
  sticky as ``/tmp`` is (no one else can then rename or remove what is ours in it);
- the path is walked from ``/`` one folder at a time through open descriptors (``O_NOFOLLOW``, each checked
  with ``fstat``), so what is checked is what is used;
- a file is made in its folder's descriptor under a fresh temporary name opened with
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` and the file's final mode, then renamed over its name: no symlink is ever
  followed, and no file is ever more open than its final mode, whatever the umask;
- a file is read with ``O_NOFOLLOW`` and only when it is a regular file owned by the effective user (or
  root) that no one else can write.

A folder that breaks a rule is a one-line :class:`UsageError` naming it and what is wrong (exit status 2);
a file that cannot be written is a :class:`RunError` (exit status 1).
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RunError, UsageError

if TYPE_CHECKING:  # typing.Self is Python >= 3.11
    from typing import Self

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Mode of the folders made here: every user may read the state (``cluster status``), only its owner write it.
FOLDER_MODE = 0o755
HINT = ("a state folder must be owned by you and writable by no one else, as must every folder above it unless "
        "sticky (/tmp); set $HES_MPI_CLUSTER_DIR to such a folder, or unset it")


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def writers(mode: int) -> str:
    who = "its group and others" if mode & 0o022 == 0o022 else "its group" if mode & 0o020 else "others"
    return f"{who} (mode {stat.S_IMODE(mode):04o})"


def problem(st: os.stat_result, above: bool) -> str | None:
    """What makes a folder (``above``: a folder above the state folder) unsafe, or None."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    me = os.geteuid()
    if st.st_uid not in trusted_owners():
        return f"is owned by {user_name(st.st_uid)}, not by {user_name(me)}{'' if me == 0 else ' or root'}"
    if st.st_mode & 0o022 and not (above and st.st_mode & stat.S_ISVTX):
        return f"is writable by {writers(st.st_mode)}"
    return None


class Folder:
    """A folder held open through a checked descriptor; files are made and read through it."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def lock(self) -> None:
        """An exclusive lock on the folder until it is closed (state.json's read, change and write)."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def subfolder(self, name: str, create: bool = False, exclusive: bool = False) -> Folder:
        """Folder ``name`` in this one, checked; made (mode :data:`FOLDER_MODE`) when missing and ``create``;
        with ``exclusive``, FileExistsError when it exists already. FileNotFoundError when missing."""
        return self._enter(name, create, exclusive, above=False)

    def _enter(self, name: str, create: bool, exclusive: bool, above: bool, target: Path | None = None) -> Folder:
        made = False
        if create:
            try:
                os.mkdir(name, FOLDER_MODE, dir_fd=self.fd)
                made = True
            except FileExistsError:
                if exclusive:
                    raise
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=self.fd)
        except FileNotFoundError:
            raise
        except OSError as e:  # a symlink (ELOOP), a file (ENOTDIR), no permission
            sub = Folder(-1, self.path / name)
            raise UsageError(f"{sub.where(above, target)} "
                             f"{'is a symlink' if e.errno == errno.ELOOP else e.strerror.lower()}: {HINT}") from None
        sub = Folder(fd, self.path / name)
        try:
            if made:
                os.fchmod(fd, FOLDER_MODE)  # the umask may have taken bits away: every user may read the state
            sub.check(above, target)
        except BaseException:
            sub.close()
            raise
        return sub

    def where(self, above: bool, target: Path | None) -> str:
        return f"{self.path} above state folder {target}" if above else f"state folder {self.path}"

    def check(self, above: bool = False, target: Path | None = None) -> None:
        """UsageError unless this folder is safe as the state folder (``above``: as a folder above ``target``)."""
        bad = problem(os.fstat(self.fd), above)
        if bad:
            raise UsageError(f"{self.where(above, target)} {bad}: {HINT}")

    def write(self, name: str, data: bytes, mode: int) -> None:
        """``name`` holds ``data`` with permissions ``mode``: a fresh file made with O_EXCL|O_NOFOLLOW and
        ``mode`` (never more open), written, synced and renamed over ``name`` (a symlink there is replaced,
        never followed)."""
        try:
            for _ in range(100):
                tmp = f".{name}.{secrets.token_hex(6)}"
                try:
                    fd = os.open(tmp, NEW_FILE_FLAGS, mode, dir_fd=self.fd)
                    break
                except FileExistsError:
                    continue
            else:  # pragma: no cover - 100 collisions of 48 random bits
                raise FileExistsError(f"no free temporary name for {name}")
            try:
                with os.fdopen(fd, "wb") as f:
                    os.fchmod(f.fileno(), mode)  # the umask may have taken bits away; adds none beyond mode
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=self.fd)
                except OSError:
                    pass
                raise
        except OSError as e:
            raise RunError(f"cannot write {self.path / name}: {e.strerror or e}") from None

    def read(self, name: str) -> bytes:
        """The content of file ``name``: a regular file (not a symlink) owned by the effective user or root that
        no one else can write; a one-line UsageError otherwise, FileNotFoundError when it is missing."""
        path = self.path / name
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise UsageError(f"{path} {'is a symlink' if e.errno == errno.ELOOP else e.strerror.lower()}: {HINT}") from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            bad = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
                   f"is owned by {user_name(st.st_uid)}" if st.st_uid not in trusted_owners() else
                   f"is writable by {writers(st.st_mode)}" if st.st_mode & 0o022 else None)
            if bad:
                raise UsageError(f"{path} {bad}: {HINT}")
            return f.read()


def open_folder(path: str | Path, create: bool = False) -> Folder:
    """The state folder ``path`` (its real path), checked with every folder above it (see the module
    docstring); missing folders are made when ``create``, else FileNotFoundError. The caller closes it."""
    real = Path(os.path.realpath(path))
    folder = Folder(os.open("/", DIR_FLAGS), Path("/"))
    try:
        folder.check(above=len(real.parts) > 1, target=real)
        for k, part in enumerate(real.parts[1:], start=2):
            sub = folder._enter(part, create, False, above=k < len(real.parts), target=real)
            folder.close()
            folder = sub
    except BaseException:
        folder.close()
        raise
    return folder
