"""A real Slurm cluster of this host's own: MUNGE, slurmctld and slurmd, started here and stopped again.

:class:`SlurmCluster` is one node (this host; ``tests/test_slurm.py`` runs the job scripts on it);
:class:`EmulatedSlurmCluster` has a slurmd in every node of an emulated cluster (``hes-mpi cluster slurm``,
``tests/test_cluster.py``)::

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", "--wait", ...], env=cluster.env(...))

Everything lives in one temporary folder only its owner can write: a private MUNGE key (no one else's from
its creation, whatever the umask) and socket (the host's ``/etc/munge`` and any munged or slurmd running are
left alone), ``slurm.conf`` (mode 0644 from its creation), the controller's state and slurmd's spool folders,
the pid and log files. The daemons run in the foreground as children of this process, on free TCP ports,
with ``SLURM_CONF`` naming that configuration, as for clients (``sbatch``, ``sinfo``, ``srun``; ``env()``).

Configuration for a container: ``proctrack/linuxproc`` and ``task/none`` (no cgroups), no accounting, no
job-completion log; ``select/cons_tres`` with ``CR_Core``; partition ``debug`` is the default. The node
declares at least 2 CPUs (``SlurmdParameters=config_overrides`` keeps a 1-core machine from being drained),
so the 2-rank jobs of the tests fit. ``MinJobAge=5`` keeps ``sbatch --wait`` polling every 2 s (it backs
off up to 32 s otherwise); ``cred_expire=20`` restarts a requeued job after 20 s, not 120 (the credential
lifetime, ample here); ``DependencyParameters=kill_invalid_depend`` cancels a job whose dependency
failed instead of leaving it pending, so a test waiting on it ends. Needs root (slurmd starts jobs as
their submitting user).

``stop()`` cancels the jobs left, stops the three daemons it started (by their pid), then kills any process
still carrying this cluster's ``SLURM_CONF`` in its environment (slurmstepd and job processes that outlived
slurmd), and removes the folder.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .files import open_folder

if TYPE_CHECKING:  # typing.Self is Python >= 3.11
    from typing import Self

#: Debian packages that provide the binaries (installed by .ci/install-slurm.sh).
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel", "srun")


class SlurmClusterError(RuntimeError):
    """The cluster could not be started; the message includes the daemons' logs."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024  # pragma: no cover


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text[-lines:]) or "(empty)"


class SlurmCluster:
    """One controller and one compute node on this host (see the module docstring)."""

    def __init__(self, cluster_name: str = "hestest", start_timeout: float = 60.0):
        self.cluster_name = cluster_name
        self.start_timeout = start_timeout
        self.host = socket.gethostname().split(".")[0]
        self.cpus = max(2, _cpus())
        self.real_memory_mb = max(256, int(_mem_mb() * 0.9))
        self.dir: Path | None = None
        self.conf: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, tuple[Path | None, Path]] = {}  # daemon: (log file, stdout and stderr)

    # ------------------------------------------------------------------ where things run (overridden below)
    @property
    def node_names(self) -> list[str]:
        return [self.host]

    def slurmd_name(self, node: str) -> str:
        return "slurmd"

    def slurmd_log(self, node: str) -> Path:
        return self.dir / f"slurmd-{node}.log"

    def client(self, cmd: list[str]) -> list[str]:
        """A client command (sinfo, sbatch, ...) as it must be run to reach the controller."""
        return cmd

    def on_controller(self, cmd: list[str]) -> list[str]:
        return cmd

    def on_node(self, node: str, cmd: list[str]) -> list[str]:
        return cmd

    def controller_address(self) -> tuple[str, str]:
        return self.host, "127.0.0.1"

    def nodes_conf(self) -> str:
        return (f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.real_memory_mb} "
                f"State=UNKNOWN\nPartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP "
                "OverSubscribe=YES\n")

    # ------------------------------------------------------------------ public

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for client commands: os.environ plus SLURM_CONF (and ``extra``), minus the
        variables of any Slurm job or MPI launcher this process itself runs under."""
        env = {k: v for k, v in os.environ.items()
               if k.startswith(("MPIR_CVAR_", "FI_")) or  # MPICH/libfabric settings (MPI's transport)
               not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PMI_", "PMIX_", "HYDRA_",
                                 "MPIR_", "OMPI_"))}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra)
        return env

    def start(self) -> Self:
        missing = missing_binaries()
        if missing:
            raise SlurmClusterError(f"Slurm binaries missing: {', '.join(missing)} "
                                    f"(apt-get install {' '.join(PACKAGES)})")
        self.dir = Path(tempfile.mkdtemp(prefix="hes_mpi-slurm-"))
        self.dir.chmod(0o755)  # munged wants every folder above its socket searchable by all
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", self.on_controller([_which("slurmctld"), "-D", "-f", str(self.conf)]),
                        self.dir / "slurmctld.log")
            for node in self.node_names:
                self._spawn(self.slurmd_name(node), self.on_node(node, [_which("slurmd"), "-D", "-f", str(self.conf),
                                                                        "-N", node]), self.slurmd_log(node))
            self._wait_idle()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            subprocess.run(self.client([_which("scancel"), "--full", "--quiet", "--user", getpass.getuser()]),
                           env=self.env(), capture_output=True, timeout=30, check=False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.squeue():
                time.sleep(0.5)
        for name in (*(self.slurmd_name(n) for n in self.node_names), "slurmctld", "munged"):  # reverse order
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._kill_leftovers()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def squeue(self) -> list[str]:
        """Job ids still known to the controller (pending, running or completing)."""
        p = subprocess.run(self.client([_which("squeue"), "-h", "-o", "%i %T"]), env=self.env(), capture_output=True,
                           text=True, timeout=30, check=False)
        return p.stdout.split("\n") if p.returncode == 0 and p.stdout.strip() else []

    def logs(self) -> str:
        """The last lines of every daemon's log (its log file, or its output when that is empty)."""
        parts = []
        for name, (log, out) in self._logs.items():
            path = log if log is not None and log.exists() and log.stat().st_size else out
            parts.append(f"--- {name} ({path}) ---\n{_tail(path)}")
        return "\n".join(parts)

    # ---------------------------------------------------------------- internal

    def _spawn(self, name: str, cmd: list[str], log: Path | None, env: dict | None = None) -> None:
        out = self.dir / f"{name}.stdout"
        self._logs[name] = (log, out)
        with open(out, "wb") as fh:
            self._procs[name] = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 env=env or self.env(), start_new_session=True)

    def _start_munge(self) -> None:
        munge = self.dir / "munge"
        munge.mkdir(mode=0o700)
        munge.chmod(0o755)  # munged wants its socket folder reachable by all; the key stays 0400
        key, mungekey = munge / "munge.key", shutil.which("mungekey") or "/usr/sbin/mungekey"
        if Path(mungekey).exists():  # the key is no one else's from its creation: O_EXCL, mode 0600, umask 077
            subprocess.run([mungekey, "--create", f"--keyfile={key}"], check=True, capture_output=True, timeout=30,
                           umask=0o077)
            key.chmod(0o400)
        else:  # older MUNGE: 1 KiB of random bytes is a valid key, made with mode 0400 (files.py)
            with open_folder(munge) as folder:
                folder.write(key.name, os.urandom(1024), 0o400)
        self.munge_socket = munge / "munge.socket"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={munge / 'munged.pid'}",
                               f"--seed-file={munge / 'munged.seed'}"],
                    None, env=os.environ.copy())  # logs to stderr in the foreground
        deadline = time.monotonic() + 15
        while not self.munge_socket.exists():
            if self._procs["munged"].poll() is not None or time.monotonic() > deadline:
                raise SlurmClusterError(f"munged did not start\n{self.logs()}")
            time.sleep(0.1)

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool", *(f"spool/{n}" for n in self.node_names)):
            (d / sub).mkdir(mode=0o755)
        self.conf, user = d / "slurm.conf", getpass.getuser()
        with open_folder(d) as folder:  # mode 0644 from its creation, whatever the umask: root's daemons read it
            folder.write(self.conf.name, (f"""\
# Written by hes_mpi/cluster/slurm.py ({type(self).__name__}), in {d}
ClusterName={self.cluster_name}
SlurmctldHost={self.controller_address()[0]}({self.controller_address()[1]})
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=20
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool' / '%n'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd-%n.pid'}
SlurmctldLogFile={d / 'slurmctld.log'}
SlurmdLogFile={d / 'slurmd-%n.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0
DependencyParameters=kill_invalid_depend
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MinJobAge=5
KillWait=5
InactiveLimit=0
""" + self.nodes_conf()).encode(), 0o644)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = ""
        while time.monotonic() < deadline:
            for name in ("munged", "slurmctld", *(self.slurmd_name(n) for n in self.node_names)):
                if self._procs[name].poll() is not None:
                    raise SlurmClusterError(f"{name} exited with status {self._procs[name].returncode}\n"
                                            f"{self.logs()}")
            p = subprocess.run(self.client([_which("sinfo"), "-h", "-N", "-o", "%N %T"]), env=self.env(),
                               capture_output=True, text=True, timeout=30, check=False)
            last = (p.stdout + p.stderr).strip()
            if p.returncode == 0 and sorted(p.stdout.split()) == sorted(
                    [w for n in self.node_names for w in (n, "idle")]):
                return
            time.sleep(0.25)
        raise SlurmClusterError(f"nodes {', '.join(self.node_names)} not idle after {self.start_timeout:.0f} s "
                                f"(last sinfo: {last!r})\n{self.logs()}")

    def _kill_leftovers(self) -> None:
        """SIGKILL processes whose environment holds this cluster's SLURM_CONF (slurmstepd, job steps)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except OSError:
                    pass


class EmulatedSlurmCluster(SlurmCluster):
    """Slurm across the nodes of an emulated cluster (``hes-mpi cluster up``): slurmctld on node0, one slurmd
    in every node's namespaces (its hostname, its cgroup), started through the cluster's launcher, all on
    the management network; MUNGE's socket is a file, so one munged serves every node. Clients run on node0
    (the login node): ``client()`` wraps their command lines. Jobs get the variables that put MPI on the
    node links (``FI_TCP_IFACE=eth0``) and name the cluster, so their run logs record it."""

    def __init__(self, cluster, cluster_name: str = "hesemu", start_timeout: float = 90.0):
        super().__init__(cluster_name, start_timeout)
        self.cluster = cluster
        self.cpus = 2

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.cluster.nodes]

    def slurmd_name(self, node: str) -> str:
        return f"slurmd-{node}"

    def _wrap(self, node: str, cmd: list[str]) -> list[str]:
        import shlex

        return [str(self.cluster.launcher), self.cluster.node(node).mgmt_address, shlex.join(cmd)]

    def client(self, cmd: list[str]) -> list[str]:
        return self._wrap(self.cluster.nodes[0].name, cmd)

    def on_controller(self, cmd: list[str]) -> list[str]:
        return self._wrap(self.cluster.nodes[0].name, cmd)

    def on_node(self, node: str, cmd: list[str]) -> list[str]:
        return self._wrap(node, cmd)

    def controller_address(self) -> tuple[str, str]:
        return self.cluster.nodes[0].name, self.cluster.nodes[0].mgmt_address

    def nodes_conf(self) -> str:
        lines = [f"NodeName={n.name} NodeAddr={n.mgmt_address} CPUs={self.cpus} RealMemory="
                 f"{self.real_memory_mb // len(self.cluster.nodes)} State=UNKNOWN" for n in self.cluster.nodes]
        lines.append(f"PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP "
                     "OverSubscribe=YES")
        return "\n".join(lines) + "\n"

    def env(self, **extra: str) -> dict[str, str]:
        from .launch import MPICH_ON_THE_LINKS, OPEN_MPI_ON_THE_LINKS

        return super().env(**MPICH_ON_THE_LINKS, **OPEN_MPI_ON_THE_LINKS, HES_MPI_CLUSTER=str(self.cluster.state_path),
                           **extra)


def run_with_slurm(cluster, argv: list[str]) -> int:
    """Start Slurm on the emulated ``cluster``, run ``argv`` on node0 (the login node) with the cluster's
    SLURM_CONF, stop Slurm again; returns the command's exit status (``hes-mpi cluster slurm``)."""
    import shlex

    from ..errors import RunError, UsageError

    missing = missing_binaries()
    if missing:
        raise UsageError(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install {' '.join(PACKAGES)}")
    if not argv:
        raise UsageError("cluster slurm: give the command after --, e.g. -- sbatch --wait -N 2 jobs/train.sbatch")
    slurm = EmulatedSlurmCluster(cluster)
    try:
        try:
            slurm.start()
        except SlurmClusterError as e:
            raise RunError(f"could not start Slurm on the emulated nodes: {str(e).splitlines()[0]}") from None
        path = os.path.dirname(os.path.realpath(shutil.which("python3") or "/usr/bin/python3"))
        env = slurm.env(PATH=os.environ.get("PATH", path))
        proc = subprocess.run(slurm.client(["sh", "-c", f"cd {shlex.quote(os.getcwd())} && exec {shlex.join(argv)}"]),
                              env=env, check=False)
        return proc.returncode
    finally:
        slurm.stop()
