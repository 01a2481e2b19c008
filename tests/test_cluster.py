"""The emulated cluster, for real: network namespaces, veth links with kernel rate limits, cpu cgroups, MPI
over TCP between the nodes, faults. Needs root (CI runs as root); skipped with the reason elsewhere."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import launcher_is_open_mpi, modes_seen, mpi_size, run_cli

from hes_mpi.runlog import RunLog

pytestmark = [
    pytest.mark.skipif(mpi_size() > 1, reason="makes its own cluster and MPI jobs: run serially"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the emulated cluster needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tc") is None, reason="needs iproute2 (ip, tc)"),
]

SYN = ["--data", "synthetic:4000", "--hidden", "256", "--batch", "400", "--lr", "1"]


def cli(*args, timeout: float = 300, env: dict | None = None, cwd=None):
    return run_cli(list(args), n=None, timeout=timeout, env=env, cwd=cwd)


@pytest.fixture
def state_root(tmp_path, monkeypatch):
    """Cluster state in this test's folder (so a test never sees another's or the user's clusters)."""
    root = tmp_path / "clusters"
    monkeypatch.setenv("HES_MPI_CLUSTER_DIR", str(root))
    return root


@contextlib.contextmanager
def cluster(name: str, *options: str):
    proc = cli("cluster", "up", "--name", name, *options)
    assert proc.returncode == 0, proc.stderr
    try:
        yield json.loads(cli("cluster", "status", "--name", name, "--json").stdout)
    finally:
        cli("cluster", "down", "--name", name)


def leftovers(name: str) -> list[str]:
    """Everything of cluster ``name`` still on the host."""
    out = []
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    out += [f"netns {line.split()[0]}" for line in spaces.splitlines() if line.startswith(f"hes-{name}-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    out += [f"link {line}" for line in links.splitlines() if f"hes{name}n" in line]
    cg = Path("/sys/fs/cgroup/cpu/hes_mpi") / name
    if cg.exists():
        out.append(f"cgroup {cg}")
    return out


def counters(status: dict, name: str) -> dict:
    return json.loads(cli("cluster", "status", "--name", name, "--json").stdout)["link_bytes"]


# ---------------------------------------------------------------------------------------------- up, status, down
def test_up_status_down_leave_nothing_behind(state_root):
    name = "tup"
    proc = cli("cluster", "up", "--name", name, "--nodes", "3", "--link", "100mbit", "--link-of", "node2=10mbit",
               "--cpu-of", "node1=0.5")
    assert proc.returncode == 0, proc.stderr
    try:
        assert "3 nodes, links 100mbit (node2 10mbit), cpu node1 0.5" in proc.stdout
        s = json.loads(cli("cluster", "status", "--name", name, "--json").stdout)
        assert [n["name"] for n in s["nodes"]] == ["node0", "node1", "node2"]
        assert [n["address"] for n in s["nodes"]] == ["10.231.0.1", "10.231.0.2", "10.231.0.3"]
        assert [n["rate_bps"] for n in s["nodes"]] == [10**8, 10**8, 10**7]
        assert [n["cpu"] for n in s["nodes"]] == [None, 0.5, None]
        cg = Path(s["nodes"][1]["cgroup"])
        quota, period = (int((cg / f"cpu.cfs_{k}_us").read_text()) for k in ("quota", "period"))
        assert (quota, period) == (5000, 10000)  # half a core, throttled in 10 ms slices
        # the kernel has the rate limits, both directions of each link
        for n in s["nodes"]:
            for netns, dev in ((n["netns"], "eth0"), (s["switch_netns"], n["peer"])):
                q = subprocess.run(["tc", "-n", netns, "qdisc", "show", "dev", dev], capture_output=True, text=True,
                                   check=True).stdout
                assert "tbf" in q and ("100Mbit" in q if n["name"] != "node2" else "10Mbit" in q), q
        text = cli("cluster", "status", "--name", name).stdout
        assert "hes-tup-node1" in text and "10.231.0.2" in text and "eth0" in text
        assert len(leftovers(name)) >= 5
    finally:
        down = cli("cluster", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert leftovers(name) == []
    assert not (state_root / name).exists()
    again = cli("cluster", "down", "--name", name)  # idempotent
    assert again.returncode == 0 and "nothing to remove" in again.stdout + again.stderr


def test_status_json_names_each_nodes_interfaces(state_root):
    """`cluster status --json` gives each node's interfaces beside its namespace: ``interface``, its end of the
    rate-limited link (what MPI uses, where tc limits what it sends and the counters are read), ``peer``, the
    other end in ``switch_netns`` (tc on what it receives), and ``mgmt_interface``; each is the device the
    kernel has there, with the node's address. A state file written before these fields still loads."""
    from hes_mpi.cluster.state import Cluster

    with cluster("tif", "--nodes", "2") as s:
        for n in s["nodes"]:
            assert (n["interface"], n["peer"], n["mgmt_interface"]) == ("eth0", n["name"].replace("node", "n"), "mgmt0")
            for dev, address in ((n["interface"], n["address"]), (n["mgmt_interface"], n["mgmt_address"])):
                shown = subprocess.run(["ip", "-n", n["netns"], "-o", "addr", "show", "dev", dev], capture_output=True,
                                       text=True, check=True).stdout
                assert f"inet {address}/" in shown, shown
            peer = subprocess.run(["ip", "-n", s["switch_netns"], "-o", "link", "show", "dev", n["peer"]],
                                  capture_output=True, text=True, check=True).stdout
            assert f"master {s['bridge']}" in peer, peer
        assert set(s["link_bytes"]) == {"node0", "node1"}
        old = {**s, "nodes": [{k: v for k, v in n.items() if k not in ("interface", "mgmt_interface")}
                              for n in s["nodes"]]}
        old = {k: v for k, v in old.items() if k not in ("description", "link_bytes")}
        assert [n.interface for n in Cluster.from_dict(old).nodes] == ["eth0", "eth0"]

@pytest.mark.parametrize("fraction, expected", [
    (None, (10_000, -1)), (0.5, (10_000, 5_000)), (0.2, (10_000, 2_000)), (0.1, (10_000, 1_000)),
    (0.05, (20_000, 1_000)), (0.001, (1_000_000, 1_000)), (2.5, (10_000, 25_000)),
])
def test_cpu_quota_uses_the_shortest_period_the_kernel_allows(fraction, expected):
    from hes_mpi.cluster.net import cfs_bandwidth
    assert cfs_bandwidth(fraction) == expected
    if fraction:
        assert abs(expected[1] / expected[0] - fraction) < 1e-9


@pytest.mark.parametrize("args, fragment", [
    (["--link", "fast"], "rate 'fast'"),
    (["--link-of", "node7=1gbit"], "node7: no such node"),
    (["--cpu-of", "node1=-1"], "fraction of one core"),
    (["--cpu-of", "node1=0.0001"], "from 0.001 to 64"),
    (["--nodes", "0"], "--nodes must be at least 1"),
    (["--name", "Bad_Name"], "--name 'Bad_Name'"),
    (["--subnet", "10.231.0.1/24"], "--subnet '10.231.0.1/24'"),
    (["--nodes", "3", "--subnet", "10.9.9.0/31"], "has room for 0 nodes"),
])
def test_bad_up_options_are_one_line_errors(state_root, args, fragment):
    proc = cli("cluster", "up", "--name", "tbad", *args)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert leftovers("tbad") == []


def test_delay_needs_netem(state_root):
    proc = cli("cluster", "up", "--name", "tdel", "--delay", "1ms")
    try:
        if proc.returncode == 0:  # this kernel has netem: the delay is on every link
            s = json.loads(cli("cluster", "status", "--name", "tdel", "--json").stdout)
            q = subprocess.run(["tc", "-n", s["nodes"][0]["netns"], "qdisc", "show", "dev", "eth0"],
                               capture_output=True, text=True, check=True).stdout
            assert "netem" in q and "delay 1ms" in q
        else:
            assert proc.returncode == 2 and "no netem" in proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        cli("cluster", "down", "--name", "tdel")
    assert leftovers("tdel") == []


def test_a_second_cluster_of_the_same_name_is_refused(state_root):
    with cluster("tdup"):
        proc = cli("cluster", "up", "--name", "tdup")
        assert proc.returncode == 2 and "is up already" in proc.stderr
    assert leftovers("tdup") == []


def test_without_privileges_one_line_and_exit_2(state_root):
    """Without CAP_NET_ADMIN and CAP_SYS_ADMIN (root whose capabilities setpriv dropped): one line, exit 2."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop the capabilities")
    for args in (["cluster", "up", "--name", "tpriv"], ["cluster", "down", "--name", "tpriv"],
                 ["cluster", "run", "--name", "tpriv", "--", "train"]):
        proc = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "hes_mpi",
                               *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "needs root" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert leftovers("tpriv") == []


def test_status_of_a_cluster_that_is_not_up(state_root):
    proc = cli("cluster", "status", "--name", "tnone")
    assert proc.returncode == 2 and "no emulated cluster 'tnone' is up" in proc.stderr


# ---------------------------------------------------------------------------------------------- the state folder
# Root executes launch.sh from a cluster's state folder (Hydra, PRRTE, slurmd): no other user may be able to change
# it, and nothing is ever written through a symlink or with more permissions than its final ones (files.py).
NOBODY = 65534


def one_line_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr


def unsafe_folder(tmp_path, case: str) -> tuple[Path, Path, str]:
    """(value of $HES_MPI_CLUSTER_DIR, the folder the error must name, what it must say) for each case."""
    root = tmp_path / "clusters"
    if case == "writable by others":
        root.mkdir(mode=0o700)
        root.chmod(0o757)
        return root, root, "is writable by others (mode 0757)"
    if case == "writable by its group":
        root.mkdir(mode=0o700)
        root.chmod(0o775)
        return root, root, "is writable by its group (mode 0775)"
    if case == "owned by another user":
        root.mkdir()
        os.chown(root, NOBODY, NOBODY)
        return root, root, "is owned by"
    if case == "a folder above writable by others":
        (tmp_path / "open").mkdir()
        (tmp_path / "open").chmod(0o777)
        return tmp_path / "open" / "clusters", tmp_path / "open", "above state folder"
    if case == "a symlink to another user's folder":
        (tmp_path / "theirs").mkdir()
        os.chown(tmp_path / "theirs", NOBODY, NOBODY)
        root.symlink_to(tmp_path / "theirs")
        return root, tmp_path / "theirs", "is owned by"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["writable by others", "writable by its group", "owned by another user",
                                  "a folder above writable by others", "a symlink to another user's folder"])
def test_up_refuses_a_state_folder_another_user_could_change(tmp_path, monkeypatch, case):
    """``cluster up`` as root in a state folder that another user owns, or could write into (or whose path
    another user could redirect): one line naming the folder and what is wrong, exit 2, nothing made."""
    env_value, named, what = unsafe_folder(tmp_path, case)
    monkeypatch.setenv("HES_MPI_CLUSTER_DIR", str(env_value))
    proc = cli("cluster", "up", "--name", "tsafe")
    try:
        one_line_error(proc, str(named), what)
        assert leftovers("tsafe") == []
        assert not (Path(os.path.realpath(env_value)) / "tsafe").exists()
    finally:
        if proc.returncode == 0:  # the old code took the folder: take the cluster down again
            monkeypatch.setenv("HES_MPI_CLUSTER_DIR", str(env_value))
            cli("cluster", "down", "--name", "tsafe")


def test_up_never_takes_over_an_existing_folder_nor_writes_through_a_symlink(state_root, tmp_path):
    """A folder of the cluster's name left in the state folder, with launch.sh a symlink to another file:
    ``up`` refuses it in one line (exit 2) and the file the symlink names is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    folder = state_root / "tover"
    folder.mkdir(parents=True)
    (folder / "launch.sh").symlink_to(victim)
    proc = cli("cluster", "up", "--name", "tover")
    try:
        one_line_error(proc, "is up already", str(folder))
        assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
        assert leftovers("tover") == []
    finally:
        cli("cluster", "down", "--name", "tover")
    assert not folder.exists() and victim.read_text() == "precious\n"


def test_a_cluster_whose_folder_became_writable_by_others_is_not_run(state_root, tmp_path):
    """After ``up``, another user could write into the cluster's folder and plant a launch.sh of theirs:
    ``cluster run`` (which root's mpiexec would start it through) and ``down`` refuse it in one line, exit 2;
    the planted launcher never runs. Made safe again, ``down`` removes everything."""
    name = "tplant"
    assert cli("cluster", "up", "--name", name, "--nodes", "2").returncode == 0
    folder = state_root / name
    marker = tmp_path / "planted-launcher-ran"
    try:
        (folder / "launch.sh").unlink()
        (folder / "launch.sh").write_text(f"#!/bin/sh\ntouch {marker}\nexit 99\n")
        (folder / "launch.sh").chmod(0o755)
        os.chown(folder / "launch.sh", NOBODY, NOBODY)
        folder.chmod(0o777)
        proc = cli("cluster", "run", "--name", name, "--", "train", *SYN, "--epochs", "1")
        assert not marker.exists(), "root ran a launcher another user could have planted"
        one_line_error(proc, f"state folder {folder}", "is writable by its group and others (mode 0777)")
        one_line_error(cli("cluster", "down", "--name", name), f"state folder {folder}")
        assert len(leftovers(name)) >= 3  # refused: nothing removed
    finally:
        folder.chmod(0o755)
        down = cli("cluster", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert leftovers(name) == [] and not folder.exists()


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_state_files_have_their_final_mode_from_the_start_and_replace_symlinks(tmp_path, umask):
    """launch.sh (0755) and state.json (0644), written and rewritten under any umask: no file in the folder is
    ever writable by another user, not even between two steps of the writing, and a symlink in a file's
    place is replaced, never followed."""
    from hes_mpi.cluster.launch import write_launcher
    from hes_mpi.cluster.state import Cluster, Node

    folder = tmp_path / "clusters" / "tmode"
    folder.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    (folder / "launch.sh").symlink_to(victim)
    (folder / "state.json").symlink_to(victim)
    c = Cluster(name="tmode", subnet="10.231.0.0/24", switch_netns="hes-tmode-sw", bridge="br0", directory=str(folder),
                nodes=[Node(name="node0", netns="hes-tmode-node0", address="10.231.0.1", peer="n0", rate_bps=10**9)])
    with modes_seen(folder, umask) as seen:
        write_launcher(c)
        c.save()
        c.delay = "1ms"
        c.save()
    assert seen, "the audit hook saw nothing"
    open_to_others = sorted({(n, f"{stat.S_IMODE(m):04o}") for n, m in seen if not stat.S_ISLNK(m) and m & 0o022})
    assert open_to_others == []
    assert victim.read_text() == "precious\n" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    modes = {p.name: (stat.S_IFMT(p.lstat().st_mode), stat.S_IMODE(p.lstat().st_mode)) for p in folder.iterdir()}
    assert modes == {"launch.sh": (stat.S_IFREG, 0o755), "state.json": (stat.S_IFREG, 0o644)}
    assert json.loads((folder / "state.json").read_text())["delay"] == "1ms"


# ---------------------------------------------------------------------------------------------- fault timers
def timer_processes(name: str) -> list[int]:
    """Live processes of the fault timers of cluster ``name``: each timer's shell (its command names the
    cluster's switch namespace) and every process of its session (its sleep), found in /proc, not in the state."""
    def stat_of(pid: str) -> list[str]:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return ["Z"]

    leaders = set()
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if d.name.isdigit() and cmd.startswith("sh -c sleep") and f"hes-{name}-sw link set" in cmd:
            leaders.add(d.name)
    return sorted(int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
                  and stat_of(d.name)[0] != "Z" and stat_of(d.name)[2] in leaders)  # field 5: process group


def test_fault_timers_are_recorded_in_the_state_and_ended_by_down(state_root):
    """``fault link-down --after`` and ``link-up --after`` leave real timer processes; both are recorded in
    state.json (pid and start time) and ``cluster down`` ends them (shell and sleep), then stays idempotent."""
    name = "ttimer"
    try:
        with cluster(name, "--nodes", "2"):
            for fault in ("link-down", "link-up"):
                proc = cli("cluster", "fault", fault, "node1", "--after", "600", "--name", name)
                assert proc.returncode == 0, proc.stderr
            running = timer_processes(name)
            assert len(running) == 4, running  # two shells, each with its sleep
            timers = json.loads((state_root / name / "state.json").read_text()).get("timers", [])
            assert sorted(t["action"] for t in timers) == ["node1 link down", "node1 link up"]
            assert {t["pid"] for t in timers} <= set(running)
            down = cli("cluster", "down", "--name", name)
            assert down.returncode == 0, down.stderr
            said = down.stdout + down.stderr
            assert "timer 'node1 link down'" in said and "timer 'node1 link up'" in said, said
            assert timer_processes(name) == []
            again = cli("cluster", "down", "--name", name)
            assert again.returncode == 0 and "nothing to remove" in again.stdout + again.stderr
    finally:
        for pid in timer_processes(name):  # what the old code left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    assert leftovers(name) == []


def test_down_ends_only_the_recorded_timer_process_not_a_reused_pid(state_root):
    """``down`` kills a recorded timer only when its pid still belongs to the same process (same start time):
    a process that got a recorded pid again is left alone."""
    def process_start(pid: int) -> int:  # field 22 of /proc/PID/stat: clock ticks after boot
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])

    ours, other = (subprocess.Popen(["sleep", "300"], start_new_session=True) for _ in range(2))
    try:
        folder = state_root / "treuse"
        folder.mkdir(parents=True)
        timers = [{"pid": ours.pid, "start": process_start(ours.pid), "action": "node1 link down", "at": 0},
                  {"pid": other.pid, "start": process_start(other.pid) - 1, "action": "node1 link up", "at": 0}]
        (folder / "state.json").write_text(json.dumps({"timers": timers}))
        down = cli("cluster", "down", "--name", "treuse")
        assert down.returncode == 0, down.stderr
        assert ours.wait(timeout=10) == -9  # SIGKILL
        assert other.poll() is None, "down killed a process it did not start"
        assert not folder.exists()
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------------------------- MPI across nodes
def sha256_of_theta(path) -> str:
    with RunLog(str(path)) as rl:
        return hashlib.sha256(rl.theta().tobytes()).hexdigest()


def logged_wire_bytes(path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["comm/records/wire_bytes"][()].sum())


@pytest.mark.parametrize("nodes", [2, 3])
def test_train_across_nodes_over_tcp(state_root, tmp_path, nodes):
    """Each rank on its own node (its own hostname), and the MPI traffic crosses the rate-limited links: the
    kernel's counters move by the bytes the run log says went on the wire, plus at most 10%."""
    name = f"tr{nodes}"
    with cluster(name, "--nodes", str(nodes), "--link", "1gbit") as st:
        before = counters(st, name)
        out = tmp_path / "run.h5"
        proc = cli("cluster", "run", "--name", name, "--", "train", *SYN, "--epochs", "2", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        after = counters(st, name)
    s = json.loads(run_cli(["summary", out, "--json"], n=None).stdout)
    assert s["ranks"] == nodes
    with RunLog(str(out)) as rl:
        env = rl.environment
    assert env["processor_names"].split(",") == [f"node{k}" for k in range(nodes)]
    assert env["emulated_cluster"].startswith(f"{name}: {nodes} nodes, links 1gbit")
    assert s["emulated_cluster"] == env["emulated_cluster"]
    sent = sum(after[n]["tx"] - before[n]["tx"] for n in after)
    wire = logged_wire_bytes(out)
    # within +10%: TCP/IP and Ethernet headers, acknowledgements, the transport's own protocol (both MPIs)
    assert wire <= sent <= 1.10 * wire, (sent, wire, sent / wire)
    assert leftovers(name) == []


def test_cluster_run_names_the_mpi_and_refuses_the_other(state_root, tmp_path):
    """``--mpi`` must name the MPI installed next to this Python (its mpi4py is what the ranks load): the
    other one is a one-line error, exit 2, before any job starts; the right one runs."""
    mine = "openmpi" if launcher_is_open_mpi() else "mpich"
    other = "mpich" if mine == "openmpi" else "openmpi"
    with cluster("tmpi", "--nodes", "2"):
        proc = cli("cluster", "run", "--name", "tmpi", "--mpi", other, "--", "train", *SYN, "--epochs", "1")
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and f"--mpi {other}" in proc.stderr, proc.stderr
        out = tmp_path / "r.h5"
        proc = cli("cluster", "run", "--name", "tmpi", "--mpi", mine, "--", "train", *SYN, "--epochs", "1",
                   "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    with RunLog(str(out)) as rl:
        assert rl.environment["mpi_family"] == mine and not rl.environment["collective_model_assumed"]


def test_a_slow_node_shows_as_the_others_waiting(state_root, tmp_path):
    name = "tslow"
    with cluster(name, "--nodes", "2", "--cpu-of", "node1=0.2"):
        out = tmp_path / "slow.h5"
        proc = cli("cluster", "run", "--name", name, "--", "train", *SYN, "--data", "synthetic:8000", "--hidden", "2048",
                   "--batch", "4000", "--epochs", "6", "--threads", "1", "--no-eval-train", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        wait = f["iterations/wait_s"][()].sum(axis=0)
        compute = f["iterations/compute_s"][()].sum(axis=0)
    assert wait[0] > 3 * wait[1], (wait, compute)  # rank 0 (fast node) waits for rank 1 (slow node)
    # rank 1 computes about 1/0.2 = 5x longer (5.7x to 7.3x seen): the quota is enforced in 10 ms slices, so every
    # step is slowed (with 100 ms slices a run was slowed in bursts, 1.2x to 4.3x). A step's compute must be long
    # against the slice: the quota refills while rank 1 waits, so the first 2 ms of each step run at full speed (with
    # 3 ms steps, batch 400, the ratio was 2.0x to 3.6x)
    assert compute[1] > 3 * compute[0], (wait, compute)


def test_link_down_ends_the_job_then_resume_is_bitwise_identical(state_root, tmp_path):
    """A dead link: the collective watchdog ends the job within 60 s with one line and exit status 1, the
    checkpoint is whole; after link-up --resume ends with exactly the parameters of an uninterrupted run."""
    name = "tfault"
    args = ["train", *SYN, "--hidden", "1024", "--epochs", "30", "--checkpoint-every", "10",
            "--collective-timeout", "8", "--no-eval-train"]
    with cluster(name, "--nodes", "2", "--link", "100mbit"):
        whole = tmp_path / "whole.h5"
        proc = cli("cluster", "run", "--name", name, "--", *args, "--out", str(whole))
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / "cut.h5"
        assert cli("cluster", "fault", "link-down", "node1", "--after", "6", "--name", name).returncode == 0
        t0 = time.monotonic()
        proc = cli("cluster", "run", "--name", name, "--", *args, "--out", str(out), timeout=120)
        took = time.monotonic() - t0
        assert proc.returncode == 1, proc.stderr
        assert took < 60
        lines = [ln for ln in proc.stderr.splitlines() if "did not complete within 8 s" in ln]
        assert lines and "iteration" in lines[0] and "the last checkpoint is" in lines[0], proc.stderr
        ckpt = Path(f"{out}.ckpt")
        assert ckpt.exists() and not Path(f"{ckpt}.tmp").exists()
        assert cli("cluster", "fault", "link-up", "node1", "--name", name).returncode == 0
        proc = cli("cluster", "run", "--name", name, "--", *args, "--out", str(out), "--resume")
        assert proc.returncode == 0, proc.stderr
    assert sha256_of_theta(out) == sha256_of_theta(whole)
    with RunLog(str(out)) as rl:
        assert rl.complete and int(rl.f.attrs["resumed"]) == 1
        assert np.array_equal(rl.table("epochs")["epoch"], np.arange(1, 31))


def test_a_dead_link_is_warned_about_within_10_s_and_the_job_ends_at_the_timeout(state_root, tmp_path):
    """--stall-factor: node1's link goes down while a training run is under way; a stall warning line naming
    the operation, phase and iteration appears within 10 s (the calls' medians are milliseconds: the 5 s floor
    decides), and the job still ends only at --collective-timeout (20 s), with its one line and exit 1."""
    name = "tstall"
    args = ["train", *SYN, "--epochs", "10000", "--collective-timeout", "20", "--no-eval-train"]
    with cluster(name, "--nodes", "2", "--link", "1gbit"):
        proc = subprocess.Popen([sys.executable, "-m", "hes_mpi", "cluster", "run", "--name", name, "--", *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={"HES_MPI_DATA": str(tmp_path / "no_data"), **os.environ})
        out, t_down, t_warn = [], None, None
        try:
            for line in proc.stdout:
                out.append(line)
                if t_down is None and re.search(r"epoch +6/", line):  # every kind of call has a median by now
                    t_down = time.monotonic()
                    assert cli("cluster", "fault", "link-down", "node1", "--name", name).returncode == 0
                elif t_down is not None and "WARNING" in line and "has waited" in line:
                    t_warn = time.monotonic()
                    break
            out.append(proc.stdout.read())
            proc.wait(timeout=120)
            t_end = time.monotonic()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
    text = "".join(out)
    assert t_down is not None and t_warn is not None, text
    assert t_warn - t_down < 10, (t_warn - t_down, text)
    warnings = [ln for ln in text.splitlines() if "has waited" in ln]
    assert len(warnings) <= 2 and len({ln.split(" WARNING ")[0][-3:] for ln in warnings}) == len(warnings), text
    assert "(phase " in warnings[0] and ", iteration " in warnings[0] and "--collective-timeout (20 s)" in warnings[0]
    assert proc.returncode == 1, text
    assert "did not complete within 20 s" in text
    assert t_end - t_warn > 10, (t_end - t_warn, text)  # the warning did not end the run: the timeout did


# ---------------------------------------------------------------------------------------------- Slurm
@pytest.fixture(scope="module")
def emulated_slurm(tmp_path_factory):
    """Slurm on a 2-node emulated cluster: slurmctld on node0, a slurmd in each node (hes_mpi/cluster/slurm.py)."""
    from hes_mpi.cluster import state
    from hes_mpi.cluster.slurm import PACKAGES, EmulatedSlurmCluster, SlurmClusterError, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): apt-get install {' '.join(PACKAGES)} "
                    "(done by .ci/install-slurm.sh)")
    root = tmp_path_factory.mktemp("slurm-clusters")
    env = {"HES_MPI_CLUSTER_DIR": str(root)}
    proc = run_cli(["cluster", "up", "--name", "tslrm", "--nodes", "2", "--link", "1gbit"], n=None, env=env)
    assert proc.returncode == 0, proc.stderr
    old = os.environ.get("HES_MPI_CLUSTER_DIR")
    os.environ["HES_MPI_CLUSTER_DIR"] = str(root)
    slurm = EmulatedSlurmCluster(state.load("tslrm"))
    try:
        try:
            slurm.start()
        except SlurmClusterError as e:
            pytest.fail(f"could not start Slurm on the emulated nodes: {e}", pytrace=False)
        yield slurm
    finally:
        slurm.stop()
        run_cli(["cluster", "down", "--name", "tslrm"], n=None, env=env)
        if old is None:
            os.environ.pop("HES_MPI_CLUSTER_DIR", None)
        else:
            os.environ["HES_MPI_CLUSTER_DIR"] = old
    assert leftovers("tslrm") == []


def test_sbatch_across_two_emulated_nodes(emulated_slurm, tmp_path):
    """``sbatch -N 2 jobs/train.sbatch``: one task on each emulated node, MPI over the links; started by
    srun --mpi=pmi2 on MPICH, by Open MPI's mpirun inside the allocation on Open MPI."""
    slurm = emulated_slurm
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    launcher = {"HES_MPI_LAUNCHER": "mpirun"} if launcher_is_open_mpi() else {}
    env = slurm.env(PATH=path, HES_MPI_INIT_TIMEOUT="30", **launcher,
                    HES_MPI_ARGS="--data synthetic:4000 --hidden 256 --batch 400 --lr 1 --epochs 2")
    before = json.loads(cli("cluster", "status", "--name", "tslrm", "--json").stdout)["link_bytes"]
    cmd = slurm.client(["sbatch", "--parsable", f"--chdir={tmp_path}", "-N", "2", "--ntasks-per-node", "1",
                        "--wait", str(Path(__file__).resolve().parents[1] / "jobs" / "train.sbatch")])
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    outputs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.out"))
    assert proc.returncode == 0, f"{proc.stderr}\n{outputs}\n{slurm.logs()}"
    job = proc.stdout.strip().split(";")[0]
    assert f"== job {job} on node[0-1]: 2 tasks" in outputs
    after = json.loads(cli("cluster", "status", "--name", "tslrm", "--json").stdout)["link_bytes"]
    log = tmp_path / "runs" / f"train_{job}.h5"
    with RunLog(str(log)) as rl:
        env_attrs = rl.environment
        assert rl.complete
    assert env_attrs["processor_names"] == "node0,node1"
    assert env_attrs["emulated_cluster"].startswith("tslrm: 2 nodes, links 1gbit")
    assert env_attrs["mpi_family"] == ("openmpi" if launcher else "mpich")
    sent = sum(after[n]["tx"] - before[n]["tx"] for n in after)
    assert sent >= logged_wire_bytes(log) > 0


def test_sweep_array_across_two_emulated_nodes(emulated_slurm, tmp_path):
    """The sweep as a job array, every task on both emulated nodes."""
    slurm = emulated_slurm
    params = tmp_path / "small.params"
    params.write_text("bgd --algo bgd\nhes2 --algo hes --r 2\n")
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    launcher = {"HES_MPI_LAUNCHER": "mpirun"} if launcher_is_open_mpi() else {}
    env = slurm.env(PATH=path, HES_MPI_INIT_TIMEOUT="30", HES_MPI_PARAMS=str(params), HES_MPI_PYTHON=sys.executable,
                    HES_MPI_SEEDS="0", **launcher, HES_MPI_ARGS="--data synthetic:800 --hidden 16 --batch 200 --lr 1 --epochs 2")
    cmd = slurm.client(["sbatch", "--parsable", f"--chdir={tmp_path}", "-N", "2", "--ntasks-per-node", "1",
                        "--array=0-1", "--wait", str(Path(__file__).resolve().parents[1] / "jobs" / "sweep.sbatch")])
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    outputs = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("*.out"))
    assert proc.returncode == 0, f"{proc.stderr}\n{outputs}"
    job = proc.stdout.strip().split(";")[0]
    logs = sorted((tmp_path / "runs" / f"sweep_{job}").glob("*.h5"))
    assert [p.name for p in logs] == ["bgd_s0.h5", "hes2_s0.h5"], outputs
    for log in logs:
        with RunLog(str(log)) as rl:
            assert rl.complete and rl.environment["processor_names"] == "node0,node1"


def test_cluster_slurm_runs_a_command_with_slurm_on_the_nodes(state_root, tmp_path):
    from hes_mpi.cluster.slurm import missing_binaries

    if missing_binaries():
        pytest.skip("Slurm not installed (done by .ci/install-slurm.sh)")
    with cluster("tslc", "--nodes", "2"):
        proc = cli("cluster", "slurm", "--name", "tslc", "--", "sinfo", "-h", "-N", "-o", "%N %T", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["node0", "idle", "node1", "idle"]
        proc = cli("cluster", "slurm", "--name", "tslc", "--", "sh", "-c", "exit 7", cwd=tmp_path)
        assert proc.returncode == 7  # the command's own status
    assert leftovers("tslc") == []


def prted_sessions() -> set[str]:
    """Session folders of Open MPI's node daemons in the shared temporary folder."""
    return {str(p) for p in Path(os.environ.get("TMPDIR") or "/tmp").glob("prted.*")}


def test_a_killed_node_ends_the_job(state_root, tmp_path):
    """``cluster fault kill`` takes a node's ranks down mid-run: the job ends (non-zero) instead of hanging.
    Under Open MPI the killed node's daemon (prted) leaves no session folder in the host's /tmp, which every
    node shares (one left behind there could stop a later launcher given its PID)."""
    name = "tkill"
    sessions_before = prted_sessions()
    with cluster(name, "--nodes", "2"):
        out = tmp_path / "run.h5"
        job = subprocess.Popen([sys.executable, "-m", "hes_mpi", "cluster", "run", "--name", name, "--", "train", *SYN,
                                "--hidden", "1024", "--epochs", "200", "--collective-timeout", "8", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not out.exists() and time.monotonic() < deadline:  # training has started
                time.sleep(0.5)
            time.sleep(2)
            daemons = prted_sessions() - sessions_before
            killed = cli("cluster", "fault", "kill", "node1", "--name", name)
            assert killed.returncode == 0, killed.stderr
            t0 = time.monotonic()
            _, err = job.communicate(timeout=60)
            assert time.monotonic() - t0 < 60
        finally:
            if job.poll() is None:
                job.kill()
        assert job.returncode != 0, err
    assert leftovers(name) == []
    assert len(daemons) == (1 if launcher_is_open_mpi() else 0), daemons  # node1's daemon ran ...
    assert prted_sessions() - sessions_before == set()  # ... and its folder is gone


def test_cluster_bench_rounds_interleave_and_report_medians_with_their_range(state_root, tmp_path):
    """``cluster bench --rounds 2``: each round brings a cluster up, runs BGD and H-ES over its links and takes
    it down again; the table gives the median of the rounds with the smallest and largest value, and the
    time to the default target (BGD's final dev accuracy minus 0.5 points)."""
    out = tmp_path / "bench"
    proc = cli("cluster", "bench", "--name", "tb", "--nodes", "2", "--link", "1gbit", "--data", "synthetic:4000",
               "--epochs", "2", "--rounds", "2", "--no-emulated", "--no-osu", "--args", "--hidden 256 --batch 400 --lr 1",
               "--out-dir", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    d = out / "2n_1gbit"
    for rnd in ("round1", "round2"):
        assert all((d / rnd / f).stat().st_size > 0 for f in ("bgd.h5", "hes.h5", "links.json")), rnd
    (row,) = json.loads((out / "cluster.json").read_text())
    assert row["rounds"] == 2 and row["nodes"] == 2 and isinstance(row["nodes"], int) and row["rate"] == "1gbit"
    for key in ("bgd_epoch_s", "hes_epoch_s", "hes_over_bgd"):
        assert row[f"{key}_min"] <= row[key] <= row[f"{key}_max"], key
        assert row[f"{key}_n"] == 2
    epochs = []
    for rnd in ("round1", "round2"):
        with RunLog(str(d / rnd / "bgd.h5")) as rl:
            epochs.append(rl.summary()["median_epoch_s"])
            final = rl.summary()["dev_acc"]
    assert row["bgd_epoch_s"] == pytest.approx(np.median(epochs))
    assert row["target"] == pytest.approx(final - 0.005)  # the same final accuracy in both rounds (bitwise)
    assert "Medians over 2 interleaved rounds" in proc.stdout and f"| {100 * row['target']:.2f}% |" in proc.stdout
    assert leftovers("tb") == []
