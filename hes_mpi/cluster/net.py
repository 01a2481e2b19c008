"""Making and removing an emulated cluster: network namespaces, veth links, a bridge, tbf rate limits, netem
delay (where the kernel has it) and cpu cgroups (v1), with ``ip``, ``tc`` and the cgroup file system.

Layout of cluster NAME with N nodes:

- namespace ``hes-NAME-sw`` holds bridge ``br0`` and one end of every node's link (``n0``, ``n1``, ...);
- namespace ``hes-NAME-nodeK`` holds the other end, ``eth0``, with address ``.K+1`` of the subnet (default
  ``10.231.0.0/24``: it exists only inside these namespaces; the host's own network is never touched);
- a second, management network (bridge ``mg0``, links ``mK`` - ``mgmt0``, subnet ``10.232.0.0/24``, no
  rate limit) carries only the launcher's control traffic, as on a real cluster: MPI's data crosses the
  rate-limited links alone, and a data link that goes down does not leave ``mpiexec`` unable to learn
  that the node's ranks ended;
- each link is rate-limited in both directions by a ``tbf`` qdisc: on ``eth0`` (what the node sends) and
  on ``nK`` in the switch namespace (what it receives); ``--delay`` adds a ``netem`` qdisc under each;
- cgroup ``cpu:/hes_mpi/NAME/nodeK`` (``cpu.cfs_quota_us`` for ``--cpu-of``); every process started on
  the node joins it, which is also how ``fault kill`` finds them.

Every step is undone when a later one fails, and ``down`` removes whatever of a cluster is left, also
without its state file: it is idempotent. It first ends the faults still waiting to act (``fault ... --after``,
recorded in the state), under the state folder's lock. The state folder is made, and only used, by the rules
of :mod:`.files`: root executes the launcher in it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..errors import RunError, UsageError
from ..log import get_logger
from .files import Folder
from .state import DATA_IFACE, MGMT_IFACE, STATE_FILE, Cluster, Node, Timer, check_name, folder_of, root_dir

log = get_logger("cluster")

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
#: CFS bandwidth period for ``--cpu-of``: short, so a slow node is slow in every phase of a step (with 100 ms a
#: step of a few ms ran at full speed or not at all); longer only where the quota would fall under the kernel's 1 ms.
CFS_PERIOD_US = 10_000
CFS_MIN_QUOTA_US = 1_000
CFS_MAX_PERIOD_US = 1_000_000
#: tbf's queue: packets that would wait longer than this are dropped (TCP then backs off, as on a real link).
TBF_LATENCY = "100ms"
DEFAULT_SUBNET = "10.231.0.0/24"
MGMT_SUBNET = "10.232.0.0/24"


def netns_name(cluster: str, what: str) -> str:
    return f"hes-{cluster}-{what}"


def tbf_burst(rate_bps: int) -> int:
    """tbf's bucket: at least a 64 KiB GSO packet, else half a millisecond at the line rate."""
    return max(65536, rate_bps // 8 // 2000)


# ---------------------------------------------------------------------------------------------- commands
def require_privileges() -> None:
    """UsageError unless this process may create namespaces and links (root or CAP_NET_ADMIN) with ip and tc."""
    missing = [t for t in ("ip", "tc", "unshare", "nsenter") if shutil.which(t) is None]
    if missing:
        raise UsageError(f"the emulated cluster needs {', '.join(missing)} (Debian: apt-get install iproute2 "
                         "util-linux)")
    try:
        caps = int(next(ln.split()[1] for ln in Path("/proc/self/status").read_text().splitlines()
                        if ln.startswith("CapEff:")), 16)
    except (OSError, StopIteration, ValueError):
        caps = (1 << 12) | (1 << 21) if os.geteuid() == 0 else 0
    if not (caps & (1 << 12) and caps & (1 << 21)):  # CAP_NET_ADMIN, CAP_SYS_ADMIN
        raise UsageError("the emulated cluster needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network "
                         "namespaces: run it with sudo")


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one command; with ``check`` a failure is a RunError quoting it and its message (one line)."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip() or f"exit status {proc.returncode}").splitlines()[0]
        raise RunError(f"'{' '.join(cmd)}' failed: {msg}")
    return proc


def existing_netns() -> set[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc (tried on a loopback in a scratch namespace)."""
    ns = f"hes-netem-probe-{os.getpid()}"
    try:
        sh("ip", "netns", "add", ns)
        return sh("tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                  check=False).returncode == 0
    finally:
        sh("ip", "netns", "del", ns, check=False)


# ---------------------------------------------------------------------------------------------- cgroups
def cgroup_dir(cluster: str, node: str | None = None) -> Path:
    d = CGROUP_CPU / "hes_mpi" / cluster
    return d / node if node else d


def check_fraction(fraction: float, what: str) -> None:
    """A CPU fraction the kernel can enforce: from 0.001 (1 ms per second) to 64 cores."""
    if not CFS_MIN_QUOTA_US / CFS_MAX_PERIOD_US <= fraction <= 64:
        raise UsageError(f"{what}: a fraction of one core from 0.001 to 64 (e.g. 0.5 for half a core)")


def cfs_bandwidth(fraction: float | None) -> tuple[int, int]:
    """(period, quota) in µs for ``fraction`` of one core: the shortest period whose quota is at least 1 ms."""
    if fraction is None:
        return CFS_PERIOD_US, -1
    period = max(CFS_PERIOD_US, min(CFS_MAX_PERIOD_US, math.ceil(CFS_MIN_QUOTA_US / fraction)))
    return period, max(CFS_MIN_QUOTA_US, round(fraction * period))


def set_cpu_quota(node: Node, fraction: float | None) -> None:
    """A node's CPU quota: ``fraction`` of one core (None: no limit)."""
    d = Path(node.cgroup)
    period, quota = cfs_bandwidth(fraction)
    (d / "cpu.cfs_quota_us").write_text("-1")  # lift the old quota first: the kernel checks it against a new period
    (d / "cpu.cfs_period_us").write_text(str(period))
    (d / "cpu.cfs_quota_us").write_text(str(quota))
    node.cpu = fraction


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def node_pids(node: Node) -> list[int]:
    """Every process on the node: in its cgroup or in its network namespace."""
    pids = set(cgroup_pids(Path(node.cgroup)))
    out = sh("ip", "netns", "pids", node.netns, check=False).stdout
    pids.update(int(x) for x in out.split() if x.isdigit())
    return sorted(pids)


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> int:
    n = 0
    for pid in pids:
        try:
            os.kill(pid, sig)
            n += 1
        except ProcessLookupError:
            pass
    return n


# ---------------------------------------------------------------------------------------------- up
def up(name: str, nodes: int, link: str, link_of: dict[str, int], cpu_of: dict[str, float], delay: str | None,
       subnet: str = DEFAULT_SUBNET) -> Cluster:
    """Create cluster NAME with ``nodes`` nodes (see the module docstring); returns its state, saved."""
    from .launch import write_launcher
    from .state import parse_rate

    check_name(name)
    require_privileges()
    if nodes < 1:
        raise UsageError(f"--nodes must be at least 1, got {nodes}")
    rate = parse_rate(link)
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError as e:
        raise UsageError(f"--subnet {subnet!r}: {e} (e.g. 10.231.0.0/24)") from None
    if net.num_addresses - 2 < nodes:
        raise UsageError(f"--subnet {subnet} has room for {net.num_addresses - 2} nodes, not {nodes}")
    node_names = [f"node{k}" for k in range(nodes)]
    for what, opts in (("--link-of", link_of), ("--cpu-of", cpu_of)):
        unknown = sorted(set(opts) - set(node_names))
        if unknown:
            raise UsageError(f"{what} {unknown[0]}: no such node (nodes: node0..node{nodes - 1})")
    for node, f in cpu_of.items():
        check_fraction(f, f"--cpu-of {node}={f:g}")
    if delay is not None and not netem_available():
        raise UsageError(f"--delay {delay}: this kernel has no netem qdisc (sch_netem), so no delay can be added; "
                         "leave --delay out (links then have their real, sub-millisecond latency)")
    if cpu_of and not CGROUP_CPU.is_dir():
        raise UsageError(f"--cpu-of needs the cgroup v1 cpu controller at {CGROUP_CPU}, which this host lacks")
    busy = f"a cluster named {name!r} is up already: 'hes-mpi cluster down --name {name}' first, or pick another --name"
    if any(ns.startswith(f"hes-{name}-") for ns in existing_netns()):
        raise UsageError(busy)
    try:  # a new folder, checked with every folder above it (files.py); an existing one is never taken over
        made = folder_of(name, create=True)
        made.close()
    except FileExistsError:
        raise UsageError(f"{busy} (its state folder {root_dir() / name} exists)") from None
    hosts = list(net.hosts())
    mgmt = ipaddress.ip_network(MGMT_SUBNET if net != ipaddress.ip_network(MGMT_SUBNET) else DEFAULT_SUBNET)
    mgmt_hosts = list(mgmt.hosts())
    cluster = Cluster(name=name, subnet=str(net), switch_netns=netns_name(name, "sw"), bridge="br0",
                      delay=delay, directory=str(made.path), mgmt_subnet=str(mgmt), mgmt_bridge="mg0")
    try:
        sw = cluster.switch_netns
        sh("ip", "netns", "add", sw)
        sh("ip", "-n", sw, "link", "set", "lo", "up")
        for bridge in (cluster.bridge, cluster.mgmt_bridge):
            sh("ip", "-n", sw, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", sw, "link", "set", bridge, "up")
        for k, node_name in enumerate(node_names):
            node = Node(name=node_name, netns=netns_name(name, node_name), address=str(hosts[k]), peer=f"n{k}",
                        rate_bps=link_of.get(node_name, rate), mgmt_address=str(mgmt_hosts[k]), mgmt_peer=f"m{k}",
                        interface=DATA_IFACE, mgmt_interface=MGMT_IFACE)
            cluster.nodes.append(node)
            _make_node(cluster, node, net.prefixlen, mgmt.prefixlen)
            if CGROUP_CPU.is_dir():
                d = cgroup_dir(name, node_name)
                d.mkdir(parents=True, exist_ok=True)
                node.cgroup = str(d)
                set_cpu_quota(node, cpu_of.get(node_name))
        write_launcher(cluster)  # first: a state file means a whole cluster
        cluster.save()
    except BaseException:
        down(name, quiet=True)
        raise
    return cluster


def _make_node(cluster: Cluster, node: Node, prefixlen: int, mgmt_prefixlen: int) -> None:
    sw, ns = cluster.switch_netns, node.netns
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    _link(cluster, ns, node.interface, f"{node.address}/{prefixlen}", node.peer, cluster.bridge)
    _link(cluster, ns, node.mgmt_interface, f"{node.mgmt_address}/{mgmt_prefixlen}", node.mgmt_peer,
          cluster.mgmt_bridge)
    for where, dev in ((ns, node.interface), (sw, node.peer)):
        set_rate(where, dev, node.rate_bps, cluster.delay, replace=False)


def _link(cluster: Cluster, ns: str, dev: str, address: str, peer: str, bridge: str) -> None:
    """A veth pair: ``dev`` with ``address`` in namespace ``ns``, ``peer`` on ``bridge`` in the switch namespace."""
    sw = cluster.switch_netns
    tmp_node, tmp_peer = f"hes{cluster.name}{peer}a", f"hes{cluster.name}{peer}b"  # <= 15 characters
    sh("ip", "link", "add", tmp_node, "type", "veth", "peer", "name", tmp_peer)
    sh("ip", "link", "set", tmp_node, "netns", ns)
    sh("ip", "link", "set", tmp_peer, "netns", sw)
    sh("ip", "-n", ns, "link", "set", tmp_node, "name", dev)
    sh("ip", "-n", ns, "addr", "add", address, "dev", dev)
    sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", sw, "link", "set", tmp_peer, "name", peer)
    sh("ip", "-n", sw, "link", "set", peer, "master", bridge)
    sh("ip", "-n", sw, "link", "set", peer, "up")


def set_rate(netns: str, dev: str, rate_bps: int, delay: str | None, replace: bool = True) -> None:
    """The tbf rate limit (and the netem delay under it) of one direction of a link."""
    verb = "replace" if replace else "add"
    sh("tc", "-n", netns, "qdisc", verb, "dev", dev, "root", "handle", "1:", "tbf", "rate", f"{rate_bps}bit",
       "burst", str(tbf_burst(rate_bps)), "latency", TBF_LATENCY)
    if delay:
        sh("tc", "-n", netns, "qdisc", verb, "dev", dev, "parent", "1:1", "handle", "10:", "netem", "delay", delay)


# ---------------------------------------------------------------------------------------------- down
def down(name: str, quiet: bool = False) -> list[str]:
    """Remove everything cluster NAME made (its waiting faults, processes, namespaces with their links and
    qdiscs, cgroups, the state folder), with or without its state file; returns what was removed. Removing
    nothing is fine; a state folder that is not safe (files.py) is a UsageError, and nothing is removed."""
    check_name(name)
    require_privileges()
    try:
        folder = folder_of(name)
    except FileNotFoundError:
        folder = None
    if folder is None:
        removed = _remove(name)
    else:
        with folder:
            folder.lock()  # a fault given meanwhile waits for it, then finds no cluster
            removed = end_timers(folder) + _remove(name)
            shutil.rmtree(folder.path, ignore_errors=True)
            removed.append(f"state {folder.path}")
    if not quiet:
        log.info("cluster %s: %s", name, "removed " + ", ".join(removed) if removed else "nothing to remove")
    return removed


def end_timers(folder: Folder) -> list[str]:
    """SIGKILL the session of every fault timer recorded in the state that still runs (the same process: its
    start time is checked, so a reused pid is left alone)."""
    try:
        timers = [Timer(**t) for t in json.loads(folder.read(STATE_FILE)).get("timers", [])]
    except (OSError, UsageError, ValueError, TypeError, AttributeError):  # no state, or none to trust
        return []
    ended = []
    for t in timers:
        try:
            if t.running() and os.getpgid(t.pid) == t.pid:
                os.killpg(t.pid, signal.SIGKILL)
                ended.append(f"timer '{t.action}'")
        except ProcessLookupError:
            pass
    return ended


def _remove(name: str) -> list[str]:
    """Cluster NAME's processes, namespaces, half-made links and cgroups: what ``down`` removes besides its state."""
    removed = []
    prefix = f"hes-{name}-"
    spaces = sorted(ns for ns in existing_netns() if ns.startswith(prefix))
    for ns in spaces:  # processes first: a namespace with processes in it outlives 'ip netns del'
        pids = [int(x) for x in sh("ip", "netns", "pids", ns, check=False).stdout.split() if x.isdigit()]
        kill_pids(pids)
    cg = cgroup_dir(name)
    if cg.is_dir():
        for d in sorted(cg.iterdir()):
            if d.is_dir():
                kill_pids(cgroup_pids(d))
    for ns in spaces:
        sh("ip", "netns", "del", ns, check=False)
        removed.append(f"netns {ns}")
    for link in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():  # a half-made link in the host
        dev = link.split(":")[1].strip().split("@")[0] if ":" in link else ""
        if dev.startswith((f"hes{name}n", f"hes{name}m")):
            sh("ip", "link", "del", dev, check=False)
            removed.append(f"link {dev}")
    if cg.is_dir():
        for d in sorted(cg.iterdir()):
            if d.is_dir():
                _rmdir_cgroup(d)
        _rmdir_cgroup(cg)
        removed.append(f"cgroup {cg}")
        parent = cg.parent
        if parent.is_dir() and not any(p.is_dir() for p in parent.iterdir()):
            _rmdir_cgroup(parent)
    return removed


def _rmdir_cgroup(d: Path, tries: int = 50) -> None:
    """rmdir of a cgroup whose killed processes may take a moment to leave it."""
    for _ in range(tries):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            kill_pids(cgroup_pids(d))
            time.sleep(0.05)
    raise RunError(f"cannot remove cgroup {d}: processes are still in it")


# ---------------------------------------------------------------------------------------------- counters
def link_bytes(cluster: Cluster) -> dict[str, dict[str, int]]:
    """Bytes the kernel counted on each node's link: ``{node: {"tx": sent by the node, "rx": received}}``
    (read on the node's ``interface`` inside its namespace; headers included)."""
    out = {}
    for n in cluster.nodes:
        stats = {}
        for key, counter in (("tx", "tx_bytes"), ("rx", "rx_bytes")):
            proc = sh("ip", "netns", "exec", n.netns, "cat", f"/sys/class/net/{n.interface}/statistics/{counter}")
            stats[key] = int(proc.stdout.strip())
        out[n.name] = stats
    return out
