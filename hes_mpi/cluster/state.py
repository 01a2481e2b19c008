"""The description of an emulated cluster, kept as JSON so that every later command finds it.

One folder per cluster, ``$HES_MPI_CLUSTER_DIR/NAME`` (default ``/run/hes_mpi/cluster/NAME``): ``state.json``
(this module's :class:`Cluster`) and ``launch.sh`` (the launcher Hydra calls to start a process on a
node). A run started by ``hes-mpi cluster run`` gets ``HES_MPI_CLUSTER`` = the path of ``state.json``, and
its run log's ``/environment`` records the cluster from it. Root executes ``launch.sh``, so the folders and
both files are made, checked and read by the rules of :mod:`.files`; ``state.json`` is rewritten under the
folder's lock (:func:`editing`). It also records the faults given with ``--after`` (:class:`Timer`), which
``cluster down`` ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RunError, UsageError
from .files import Folder, open_folder

#: Environment variable that names the state file of the cluster a process runs on.
ENV_STATE = "HES_MPI_CLUSTER"
#: Environment variable for the folder of all clusters' state (default :data:`DEFAULT_ROOT`).
ENV_ROOT = "HES_MPI_CLUSTER_DIR"
DEFAULT_ROOT = "/run/hes_mpi/cluster"
STATE_FILE, LAUNCHER_FILE = "state.json", "launch.sh"
NAME_RE = re.compile(r"[a-z][a-z0-9]{0,5}")
#: The interface inside each node's namespace that MPI's traffic crosses (the rate-limited link), and the one of
#: the management network (the launcher's control traffic).
DATA_IFACE = "eth0"
MGMT_IFACE = "mgmt0"
#: Units tc understands for --link, and their bits per second.
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


def parse_rate(text: str) -> int:
    """Bits per second of a rate such as ``1gbit``, ``100mbit``, ``2.5gbit`` (tc's units); UsageError else."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)\s*", str(text).lower())
    if not m or m.group(2) not in RATE_UNITS or float(m.group(1)) <= 0:
        raise UsageError(f"rate {text!r}: a number and one of {', '.join(RATE_UNITS)}, e.g. 1gbit or 100mbit")
    return int(float(m.group(1)) * RATE_UNITS[m.group(2)])


def format_rate(bits_per_s: int) -> str:
    for unit in ("tbit", "gbit", "mbit", "kbit"):
        v = bits_per_s / RATE_UNITS[unit]
        if v >= 1 and float(f"{v:g}") == v:
            return f"{v:g}{unit}"
    return f"{bits_per_s}bit"


@dataclass
class Node:
    """One emulated node."""

    name: str  # node0, node1, ...: its hostname inside its UTS namespace
    netns: str  # its network namespace (ip netns)
    address: str  # its address on the cluster subnet (on ``interface``, in its namespace)
    peer: str  # its link's other end, attached to the bridge in the switch namespace
    rate_bps: int  # rate limit of its link, each direction
    cpu: float | None = None  # CPU quota as a fraction of one core (None: no limit)
    cgroup: str = ""  # its cpu cgroup (cgroup v1), every process started on it joins
    mgmt_address: str = ""  # its address on the management network (on ``mgmt_interface``; Hydra's control traffic)
    mgmt_peer: str = ""  # the management link's other end, on the management bridge
    interface: str = DATA_IFACE  # its end of the link, in its namespace: what MPI uses, tc limits, the counters read
    mgmt_interface: str = MGMT_IFACE  # its end of the management link, in its namespace

    @property
    def rate(self) -> str:
        return format_rate(self.rate_bps)


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, /proc/PID/stat), or None when there is none (or
    only its zombie, an ended process that no one has reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Timer:
    """A fault given with ``--after``: a process that sleeps, then acts; it leads a session of its own."""

    pid: int
    start: int  # its start time (process_start): a pid the kernel gave to another process since differs
    action: str  # e.g. "node1 link down"
    at: float  # when it acts, seconds since the epoch

    def running(self) -> bool:
        return process_start(self.pid) == self.start


@dataclass
class Cluster:
    name: str
    subnet: str  # e.g. 10.231.0.0/24
    switch_netns: str  # the namespace of the bridge
    bridge: str
    nodes: list[Node] = field(default_factory=list)
    mgmt_subnet: str = ""
    mgmt_bridge: str = ""
    delay: str | None = None  # netem delay on every link, where the kernel has netem
    directory: str = ""
    timers: list[Timer] = field(default_factory=list)  # faults given with --after, ended by 'cluster down'

    @property
    def state_path(self) -> Path:
        return Path(self.directory) / STATE_FILE

    @property
    def launcher(self) -> Path:
        return Path(self.directory) / LAUNCHER_FILE

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise UsageError(f"cluster {self.name} has no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Cluster:
        return cls(**{**d, "nodes": [Node(**n) for n in d.get("nodes", [])],
                      "timers": [Timer(**t) for t in d.get("timers", [])]})

    def describe(self) -> str:
        """One line: ``NAME: N nodes, links RATE (node1 RATE'), cpu node1 0.5, delay D``."""
        rates = {n.rate for n in self.nodes}
        common = max(rates, key=lambda r: sum(n.rate == r for n in self.nodes)) if rates else "-"
        parts = [f"{self.name}: {len(self.nodes)} nodes, links {common}"]
        other = [f"{n.name} {n.rate}" for n in self.nodes if n.rate != common]
        if other:
            parts[0] += f" ({', '.join(other)})"
        cpus = [f"{n.name} {n.cpu:g}" for n in self.nodes if n.cpu is not None]
        if cpus:
            parts.append("cpu " + ", ".join(cpus))
        parts.append(f"delay {self.delay}" if self.delay else "no added delay")
        return ", ".join(parts)

    def save(self, folder: Folder | None = None) -> None:
        """Write ``state.json`` (mode 0644, replacing the old one whole) into ``folder`` or the cluster's folder."""
        with contextlib.ExitStack() as stack:
            try:
                folder = folder or stack.enter_context(open_folder(self.directory))
            except FileNotFoundError:
                raise RunError(f"cannot write the state of cluster {self.name}: {self.directory} is gone") from None
            folder.write(STATE_FILE, (json.dumps(self.to_dict(), indent=1) + "\n").encode(), 0o644)


def root_dir() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise UsageError(f"--name {name!r}: 1-6 lower-case letters and digits, starting with a letter "
                         "(it prefixes the namespaces and interface names)")
    return name


def folder_of(name: str, create: bool = False) -> Folder:
    """The state folder of cluster NAME, checked (:mod:`.files`); with ``create`` a new one, FileExistsError
    when it exists. FileNotFoundError when it is missing (and not ``create``)."""
    check_name(name)
    with open_folder(root_dir(), create=create) as root:
        return root.subfolder(name, create=create, exclusive=create)


def _read(folder: Folder, name: str) -> Cluster:
    path = folder.path / STATE_FILE
    try:
        cluster = Cluster.from_dict(json.loads(folder.read(STATE_FILE)))
        folder.read(LAUNCHER_FILE)  # what root will execute: a regular file of ours that no one else can write
    except FileNotFoundError as e:
        raise UsageError(f"no emulated cluster {name!r} is up (no {folder.path / e.filename}); start one with "
                         "'hes-mpi cluster up'") from None
    except (ValueError, TypeError, KeyError) as e:
        raise UsageError(f"{path}: not a cluster state file ({e}); 'hes-mpi cluster down --name {name}' "
                         "removes what it can") from None
    cluster.directory = str(folder.path)
    return cluster


def load(name: str) -> Cluster:
    """The cluster NAME; a one-line UsageError when it is not up or its folder is not safe (:mod:`.files`)."""
    try:
        folder = folder_of(name)
    except FileNotFoundError:
        raise UsageError(f"no emulated cluster {name!r} is up (no {root_dir() / name}); start one with "
                         "'hes-mpi cluster up'") from None
    with folder:
        return _read(folder, name)


@contextlib.contextmanager
def editing(cluster: Cluster):
    """The cluster's state read afresh under its folder's lock, and written back when the block ends without
    an error: concurrent commands (a fault while another is given) never lose each other's changes."""
    try:
        folder = folder_of(cluster.name)
    except FileNotFoundError:
        raise UsageError(f"no emulated cluster {cluster.name!r} is up (no {root_dir() / cluster.name})") from None
    with folder:
        folder.lock()
        fresh = _read(folder, cluster.name)
        yield fresh
        fresh.save(folder)


def names() -> list[str]:
    """The clusters that have a state folder."""
    root = root_dir()
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists()) if root.is_dir() else []


def from_environment() -> Cluster | None:
    """The cluster this process runs on (``$HES_MPI_CLUSTER``), or None (also when the file is unreadable)."""
    path = os.environ.get(ENV_STATE)
    if not path:
        return None
    try:
        return Cluster.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
