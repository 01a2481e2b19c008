"""Running an MPI job across the nodes of an emulated cluster (``hes-mpi cluster run``).

Hydra (MPICH's ``mpiexec``) starts its proxy on each host with ``-launcher ssh -launcher-exec launch.sh``:
it runs ``launch.sh [options] HOST COMMAND...`` as it would run ssh. ``launch.sh``, written by ``cluster up``,
maps the node address HOST to its node and runs COMMAND there: in the node's network namespace, in a fresh
UTS namespace whose hostname is the node's name (so ``MPI.Get_processor_name()`` and the run log name the
node), in the node's cpu cgroup. ``mpiexec`` itself is started on node0 the same way, so node0's ranks are
forked by it directly. Hydra's own control traffic uses the management network (``mgmt0``); MPI's data
uses the rate-limited links (libfabric's tcp provider on ``eth0``). Hydra gives every host its own node id,
so MPICH talks TCP, not shared memory, between ranks on different nodes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from ..errors import UsageError
from .state import ENV_STATE, Cluster

#: hes-mpi commands that ``cluster run`` starts as ``python -m hes_mpi COMMAND ...`` on the nodes.
RUNNABLE = ("train", "compare", "sweep", "bench")

LAUNCHER = """#!/bin/sh
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
# cleanup of a failed job) reaches the command, not a shell left in between.
exec nsenter --net=/run/netns/"$ns" unshare --uts sh -c 'hostname "$1"; shift; exec sh -c "exec $*"' sh "$node" "$@"
"""


def write_launcher(cluster: Cluster) -> None:
    cases = "\n".join(f"  {n.mgmt_address}|{n.address}) ns={n.netns} node={n.name} cg={shlex.quote(n.cgroup)} ;;"
                      for n in cluster.nodes)
    path = cluster.launcher
    path.write_text(LAUNCHER.format(name=cluster.name, cases=cases))
    path.chmod(0o755)


def mpiexec_path() -> str:
    """The mpiexec next to this Python (the MPICH wheel's), else the one on PATH."""
    here = os.path.dirname(sys.executable)
    found = shutil.which("mpiexec", path=here + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise UsageError("no mpiexec found (pip install mpich)")
    return found


def job_environment(cluster: Cluster) -> dict[str, str]:
    """The environment of a job on the cluster: MPI over TCP on the node links, and the cluster's state."""
    env = dict(os.environ)
    env.update({"MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": "eth0",
                ENV_STATE: str(cluster.state_path)})
    return env


def mpiexec_command(cluster: Cluster, ranks: int | None, ppn: int, argv: list[str]) -> list[str]:
    """``mpiexec ... python -m hes_mpi ARGV`` across the cluster's nodes, ``ppn`` ranks per node."""
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
    return [mpiexec_path(), "-launcher", "ssh", "-launcher-exec", str(cluster.launcher), "-iface", "mgmt0",
            "-hosts", ",".join(n.mgmt_address for n in used), "-ppn", str(ppn), "-n", str(ranks),
            sys.executable, "-m", "hes_mpi", *argv]


def on_node(cluster: Cluster, node_name: str, argv: list[str]) -> list[str]:
    """A command line that runs ``argv`` on one node (as the launcher runs Hydra's proxies)."""
    return [str(cluster.launcher), cluster.node(node_name).mgmt_address, shlex.join(argv)]


def job_command(cluster: Cluster, ranks: int | None, ppn: int, argv: list[str]) -> list[str]:
    """The command line of one MPI job across the cluster: :func:`mpiexec_command`, started on node0."""
    return on_node(cluster, cluster.nodes[0].name, mpiexec_command(cluster, ranks, ppn, argv))


def run(cluster: Cluster, ranks: int | None, ppn: int, argv: list[str]) -> int:
    """Run ``argv`` as one MPI job across the cluster, mpiexec on node0; returns the job's exit status."""
    proc = subprocess.Popen(job_command(cluster, ranks, ppn, argv), env=job_environment(cluster))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
