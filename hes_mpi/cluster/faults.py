"""Faults on an emulated cluster (``hes-mpi cluster fault ...``): a node's link down and up again, a node
slowed to a fraction of a core, a node's processes killed. A fault given ``--after`` S seconds is a process
of its own that sleeps, then acts; it is recorded in the cluster's state (:class:`.state.Timer`), so that
``cluster down`` ends it."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..errors import UsageError
from ..log import get_logger
from .net import check_fraction, kill_pids, node_pids, set_cpu_quota, sh
from .state import Cluster, Timer, editing, process_start

log = get_logger("cluster")


def link_command(cluster: Cluster, node: str, state: str) -> list[str]:
    """``ip`` command that sets ``node``'s link (its end at the bridge) ``up`` or ``down``."""
    return ["ip", "-n", cluster.switch_netns, "link", "set", cluster.node(node).peer, state]


def link(cluster: Cluster, node: str, state: str, after_s: float = 0.0) -> None:
    """Take ``node``'s link down (or bring it up) now, or ``after_s`` seconds from now (in the background:
    the command returns at once, so it can be given while a job runs)."""
    cmd = link_command(cluster, node, state)
    if after_s < 0:
        raise UsageError(f"--after must be >= 0 seconds, got {after_s}")
    if after_s == 0:
        sh(*cmd)
        log.info("cluster %s: %s's link is %s", cluster.name, node, state)
        return
    proc = None
    try:
        with editing(cluster) as current:  # under the state folder's lock: 'down' meanwhile waits, or went first
            proc = subprocess.Popen(["sh", "-c", f"sleep {after_s:g}; exec {shlex.join(cmd)}"], start_new_session=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            start = process_start(proc.pid)
            current.timers = [t for t in current.timers if t.running()]  # those that acted are forgotten
            if start is not None:  # None: it has acted already
                current.timers.append(Timer(proc.pid, start, f"{node} link {state}", time.time() + after_s))
    except BaseException:
        if proc is not None:  # not recorded: nothing could end it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        raise
    log.info("cluster %s: %s's link goes %s in %g s", cluster.name, node, state, after_s)


def slow(cluster: Cluster, node: str, fraction: float | None) -> None:
    """Limit ``node`` to ``fraction`` of one core (None: no limit); takes effect at once, running jobs too."""
    if not cluster.node(node).cgroup:
        raise UsageError("this host has no cgroup v1 cpu controller: nodes cannot be slowed")
    if fraction is not None:
        check_fraction(fraction, f"slow {node} {fraction:g} (or 'off')")
    with editing(cluster) as current:
        set_cpu_quota(current.node(node), fraction)
    log.info("cluster %s: %s %s", cluster.name, node, f"limited to {fraction:g} of a core" if fraction else "unlimited")


def kill(cluster: Cluster, node: str) -> int:
    """SIGKILL every process on ``node``; returns how many there were. The session folders of the Open MPI
    daemons among them are removed once they have gone (:func:`daemon_sessions`)."""
    pids = node_pids(cluster.node(node))
    sessions = daemon_sessions(pids)
    n = kill_pids(pids)
    for pid, folder in sessions:
        deadline = time.monotonic() + 5.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with contextlib.suppress(OSError):
            if folder.lstat().st_uid == os.geteuid():  # ours, and not a link (rmtree refuses those)
                shutil.rmtree(folder)
    log.info("cluster %s: killed %d processes on %s", cluster.name, n, node)
    return n


def daemon_sessions(pids: list[int]) -> list[tuple[int, Path]]:
    """(pid, session folder) of each of Open MPI's node daemons (``prted``) among ``pids``: PRRTE keeps
    ``TMPDIR/prted.PID`` (``/tmp`` without TMPDIR) and removes it when it ends; a killed daemon leaves it, and
    on the emulated cluster every node shares the host's ``/tmp``."""
    out = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "prted":
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone already
            continue
        tmp = next((e[len(b"TMPDIR="):].decode() for e in env if e.startswith(b"TMPDIR=")), "") or "/tmp"
        out.append((pid, Path(tmp) / f"prted.{pid}"))
    return out
