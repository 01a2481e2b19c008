"""SimGrid's SMPI for ``hes-mpi simulate``: the platforms it writes, ``smpirun -replay`` and its output.

Platform specifications (``--platform``), every link rate in bits per second as ``tc`` writes them
(``100mbit``, ``1gbit``, ``10gbit``, ``100gbit``) and latencies with a unit (``30us``, ``1ms``):

``star:RATE,LATENCY``
    every node on its own link of RATE to one non-blocking switch; LATENCY is node to node, one way (each
    link gets half of it).
``fattree:RATE,LATENCY[,RADIX]``
    a two-level fat tree of full bisection: leaf switches of RADIX nodes (default 16), RADIX spine switches,
    every link RATE; LATENCY is a node's link to its leaf switch (a message between leaves crosses four links).
``dragonfly:RATE,LATENCY[,GROUPS,CHASSIS,ROUTERS,NODES]``
    SimGrid's dragonfly (default shape: 4 nodes a router, 4 routers a chassis, 2 chassis a group, as many
    groups as the node count needs), every link RATE and LATENCY.
``FILE.xml``
    a platform of your own; its first N hosts in document order (``<host id>`` and ``<cluster>`` expansions)
    run ranks 0 to N-1, and a host of speed S Gf runs compute S times as fast as the measured host.

The written platforms' hosts run at :data:`hes_mpi.post.simtrace.REFERENCE_FLOPS` (1x: the measured host).
SMPI's network model factors stay at SimGrid's defaults unless ``--smpi-factors 1`` sets them to 1 (a pure
latency-bandwidth model, as the tests' closed forms assume).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

from ..errors import RunError, UsageError

INSTALL_HINT = "install SimGrid's SMPI: apt-get install simgrid libsimgrid-dev (Debian 12: SimGrid 3.32)"
_RATE = re.compile(r"^([0-9.]+)\s*(k|m|g|t)?(bit|bps)$", re.IGNORECASE)
_TIME = re.compile(r"^([0-9.]+)\s*(s|ms|us|ns)$", re.IGNORECASE)
_RATE_MULT = {None: 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_MULT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
KINDS = ("star", "fattree", "dragonfly")


def rate_bytes(text: str) -> float:
    """``1gbit`` -> 1.25e8 bytes per second (``bit``: bits per second; ``bps``: bytes per second, as tc)."""
    m = _RATE.match(text.strip())
    if not m:
        raise UsageError(f"link rate {text!r}: expected e.g. 100mbit, 1gbit, 10gbit")
    v = float(m.group(1)) * _RATE_MULT[m.group(2) and m.group(2).lower()]
    return v / 8 if m.group(3).lower() == "bit" else v


def seconds(text: str) -> float:
    m = _TIME.match(text.strip())
    if not m:
        raise UsageError(f"latency {text!r}: expected e.g. 30us, 1ms")
    return float(m.group(1)) * _TIME_MULT[m.group(2).lower()]


def _bw(bytes_per_s: float) -> str:
    return f"{bytes_per_s:.6g}Bps"


def _lat(s: float) -> str:
    return f"{s * 1e9:.6g}ns"


def _doc(body: str) -> str:
    return ("<?xml version='1.0'?>\n<!DOCTYPE platform SYSTEM \"https://simgrid.org/simgrid.dtd\">\n"
            f"<platform version=\"4.1\">\n{body}</platform>\n")


def star_alpha_beta(spec: str) -> tuple[float, float] | None:
    """``(alpha, beta)`` of a ``star:RATE,LATENCY`` spec as the alpha-beta model reads it (node-to-node
    latency in s, s per byte); None for any other platform (no single latency and bandwidth describes it)."""
    kind, _, args = spec.partition(":")
    parts = [a.strip() for a in args.split(",")]
    if kind.strip().lower() != "star" or len(parts) != 2:
        return None
    return seconds(parts[1]), 1.0 / rate_bytes(parts[0])


def star_spec(alpha: float, beta: float) -> str:
    """The ``star:RATE,LATENCY`` spec of an alpha-beta network (the inverse of :func:`star_alpha_beta`)."""
    return f"star:{8 / beta / 1e3:.9g}kbit,{alpha * 1e9:.9g}ns"


def platform(spec: str, n: int) -> tuple[str, list[str], str]:
    """(platform XML, the host names of ranks 0..n-1, a short description) for ``spec`` at ``n`` nodes."""
    if spec.endswith(".xml"):
        return _own_platform(spec, n)
    kind, _, args = spec.partition(":")
    if kind not in KINDS or not args:
        raise UsageError(f"--platform {spec!r}: expected star:RATE,LATENCY, fattree:RATE,LATENCY[,RADIX], "
                         "dragonfly:RATE,LATENCY[,G,C,R,N] or a platform FILE.xml")
    parts = [a.strip() for a in args.split(",")]
    if len(parts) < 2:
        raise UsageError(f"--platform {spec!r}: give a link rate and a latency, e.g. {kind}:1gbit,30us")
    bw, lat = rate_bytes(parts[0]), seconds(parts[1])
    speed = "1Gf"
    if kind == "star":
        if len(parts) != 2:
            raise UsageError(f"--platform {spec!r}: star takes RATE,LATENCY")
        # No backbone: SimGrid's cluster then joins the nodes' links directly (a non-blocking switch). A FATPIPE
        # backbone of n x RATE gave the same times to the bit but put every flow in one constraint of the
        # network solver: 1024 nodes replayed in 90 s instead of 19.
        body = (f"  <cluster id=\"star\" prefix=\"node-\" suffix=\"\" radical=\"0-{n - 1}\" speed=\"{speed}\" "
                f"bw=\"{_bw(bw)}\" lat=\"{_lat(lat / 2)}\"/>\n")
        hosts = [f"node-{i}" for i in range(n)]
        return _doc(body), hosts, f"star, {parts[0]}, {parts[1]}"
    if kind == "fattree":
        radix = _int(parts[2], spec) if len(parts) > 2 else 16
        if len(parts) > 3:
            raise UsageError(f"--platform {spec!r}: fattree takes RATE,LATENCY[,RADIX]")
        if n <= radix:
            topo = f"1;{n};1;1"
            total = n
        else:
            leaves = math.ceil(n / radix)
            topo = f"2;{radix},{leaves};1,{radix};1,1"
            total = radix * leaves
        body = (f"  <cluster id=\"fattree\" prefix=\"node-\" suffix=\"\" radical=\"0-{total - 1}\" speed=\"{speed}\" "
                f"bw=\"{_bw(bw)}\" lat=\"{_lat(lat)}\" topology=\"FAT_TREE\" topo_parameters=\"{topo}\"/>\n")
        return _doc(body), [f"node-{i}" for i in range(n)], f"fat tree (radix {min(radix, n)}), {parts[0]}, {parts[1]}"
    shape = [_int(p, spec) for p in parts[2:]]
    if shape and len(shape) != 4:
        raise UsageError(f"--platform {spec!r}: dragonfly's shape is GROUPS,CHASSIS,ROUTERS,NODES")
    if not shape:
        per_group = 2 * 4 * 4
        shape = [max(1, math.ceil(n / per_group)), 2, 4, 4]
    g, c, r, h = shape
    total = g * c * r * h
    if total < n:
        raise UsageError(f"--platform {spec!r}: {total} hosts, fewer than the {n} nodes")
    topo = f"{g},1;{c},1;{r},1;{h}"
    body = (f"  <cluster id=\"dragonfly\" prefix=\"node-\" suffix=\"\" radical=\"0-{total - 1}\" speed=\"{speed}\" "
            f"bw=\"{_bw(bw)}\" lat=\"{_lat(lat)}\" topology=\"DRAGONFLY\" topo_parameters=\"{topo}\"/>\n")
    return _doc(body), [f"node-{i}" for i in range(n)], f"dragonfly {g}x{c}x{r}x{h}, {parts[0]}, {parts[1]}"


def _int(text: str, spec: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise UsageError(f"--platform {spec!r}: {text!r} is not a positive integer")
    return v


def _own_platform(path: str, n: int) -> tuple[str, list[str], str]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        root = ET.fromstring(text)
    except OSError as e:
        raise UsageError(f"--platform {path}: {e.strerror}") from None
    except ET.ParseError as e:
        raise UsageError(f"--platform {path}: not XML ({e})") from None
    hosts = []
    for el in root.iter():
        if el.tag == "host" and "id" in el.attrib:
            hosts.append(el.attrib["id"])
        elif el.tag == "cluster":
            pre, suf = el.attrib.get("prefix", ""), el.attrib.get("suffix", "")
            for part in el.attrib.get("radical", "").split(","):
                lo, _, hi = part.partition("-")
                if lo.strip().isdigit():
                    for i in range(int(lo), int(hi or lo) + 1):
                        hosts.append(f"{pre}{i}{suf}")
    if len(hosts) < n:
        raise UsageError(f"--platform {path}: {len(hosts)} hosts, fewer than the {n} nodes")
    return text, hosts[:n], os.path.basename(path)


def smpirun() -> str:
    """The ``smpirun`` on PATH, or a one-line error with the install hint."""
    exe = shutil.which(os.environ.get("HES_MPI_SMPIRUN", "smpirun"))
    if not exe:
        raise UsageError(f"simulate needs smpirun, which is not on PATH: {INSTALL_HINT}")
    return exe


def version() -> str:
    try:
        out = subprocess.run([smpirun(), "-version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"SimGrid version ([0-9.]+)", out)
    return m.group(1) if m else out.strip().splitlines()[0] if out.strip() else ""


FACTORS_ONE = ("--cfg=smpi/bw-factor:0:1", "--cfg=smpi/lat-factor:0:1", "--cfg=network/crosstraffic:0")


def replay(workdir: str, traces: list[list[str]], platform_xml: str, hosts: list[str], cfg: list[str],
           timeout: float = 3600.0) -> dict[int, list[tuple[float, float]]]:
    """Replay one trace per rank; returns, per rank, (simulated clock at the end, duration) of every action
    after ``init``, in trace order."""
    exe = smpirun()
    os.makedirs(workdir, exist_ok=True)
    names = []
    for j, lines in enumerate(traces):
        name = os.path.join(workdir, f"rank{j}.trace")
        with open(name, "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
        names.append(name)
    listing = os.path.join(workdir, "traces.txt")
    with open(listing, "w", encoding="ascii") as f:
        f.write("\n".join(names) + "\n")
    plat = os.path.join(workdir, "platform.xml")
    with open(plat, "w", encoding="utf-8") as f:
        f.write(platform_xml)
    hostfile = os.path.join(workdir, "hostfile")
    with open(hostfile, "w", encoding="ascii") as f:
        f.write("\n".join(hosts) + "\n")
    cmd = [exe, "-np", str(len(traces)), "-platform", plat, "-hostfile", hostfile, *cfg,
           "--log=root.thres:error", "--log=smpi_replay.thres:verbose", "--log=smpi_replay.fmt:%r@%m%n",
           f"--cfg=smpi/tmpdir:{workdir}", "-replay", listing]
    out_path = os.path.join(workdir, "replay.out")
    try:
        with open(out_path, "w", encoding="utf-8") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=workdir,
                                  check=False)
    except subprocess.TimeoutExpired:
        raise RunError(f"smpirun replay of {len(traces)} ranks took over {timeout:.0f} s") from None
    per_rank: dict[int, list[tuple[float, float]]] = {j: [] for j in range(len(traces))}
    last = ""
    with open(out_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            clock, at, msg = line.partition("@")
            if not at:
                last = line.strip() or last
                continue
            fields = msg.split()
            if len(fields) < 3 or not fields[0].isdigit():
                continue
            try:
                per_rank[int(fields[0])].append((float(clock), float(fields[-1])))
            except (ValueError, KeyError):
                last = line.strip()
    if proc.returncode != 0:
        raise RunError(f"smpirun replay failed (exit {proc.returncode}): {last or 'no output'} (see {out_path})")
    return per_rank
