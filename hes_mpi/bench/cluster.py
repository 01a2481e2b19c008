"""Measured, not modelled: BGD and H-ES on emulated clusters (``hes-mpi cluster bench``).

For every (node count, link rate): a cluster is brought up, and over its links run
- ``bench osu`` (the allreduce latency table; not with ``--no-osu``),
- ``train --algo bgd`` and ``train --algo hes`` (r = 2), each with the kernel's byte counters of every link
  read before and after,
- and, on this host without the cluster, ``train --algo bgd --emulate-net ALPHA,BETA`` with the link's
  nominal bandwidth (the modelled busy-wait of the first phase, to compare with the real links),
then the cluster is taken down again. Everything lands in ``OUT/NODESn_RATE/`` (``OUT/NODESn_RATE/roundK/`` with
``--rounds``, which repeats the whole matrix, interleaved): the run logs, ``osu.json`` and ``links.json``
(bytes per link and run). :mod:`hes_mpi.post.clustertables` makes the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..cluster import launch, net, state
from ..errors import RunError, UsageError
from ..log import get_logger

log = get_logger("bench")

#: A fixed, short latency for the emulated-network comparison runs (alpha, s): a veth hop and TCP on this host.
EMULATED_ALPHA_S = 50e-6


def config_dir(out: Path, nodes: int, rate: str) -> Path:
    return out / f"{nodes}n_{rate}"


def round_dir(out: Path, nodes: int, rate: str, rnd: int, rounds: int) -> Path:
    """Where one round of one configuration lands: the configuration's folder, or its ``roundK`` below it
    when there are several rounds."""
    d = config_dir(out, nodes, rate)
    return d / f"round{rnd}" if rounds > 1 else d


def _hes_mpi(*args: str) -> list[str]:
    return [sys.executable, "-m", "hes_mpi", *args]


def run_matrix(out: Path, nodes_list: list[int], rates: list[str], train_args: list[str], name: str = "bench",
               emulated: bool = True, rounds: int = 1, osu: bool = True) -> list[Path]:
    """Run the measurements of the module docstring for every node count and rate, ``rounds`` times,
    interleaved: each round visits every configuration (in reverse order on even rounds, and BGD and
    H-ES swap places), so that a slow spell of the host lands on all of them alike. Returns the
    configurations' folders (each with ``round1`` ... ``roundN`` when ``rounds`` > 1)."""
    net.require_privileges()
    for r in rates:
        state.parse_rate(r)
    if any(n < 2 for n in nodes_list):
        raise UsageError("--nodes: a cluster bench needs at least 2 nodes")
    if rounds < 1:
        raise UsageError("--rounds must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    configs = [(nodes, rate) for nodes in nodes_list for rate in rates]
    for rnd in range(1, rounds + 1):
        order = configs if rnd % 2 else configs[::-1]
        algos = ("bgd", "hes") if rnd % 2 else ("hes", "bgd")
        for nodes, rate in order:
            d = round_dir(out, nodes, rate, rnd, rounds)
            d.mkdir(parents=True, exist_ok=True)
            log.info("== cluster bench%s: %d nodes at %s -> %s", f" round {rnd}/{rounds}" if rounds > 1 else "",
                     nodes, rate, d)
            net.down(name, quiet=True)
            cluster = net.up(name, nodes, rate, {}, {}, None)
            try:
                _measure(cluster, d, train_args, algos, osu)
            finally:
                net.down(name, quiet=True)
            if emulated:
                _emulated(d, nodes, rate, train_args)
    return [config_dir(out, nodes, rate) for nodes, rate in configs]


def _run_on(cluster, argv: list[str], what: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch.job_command(cluster, None, 1, argv), env=launch.job_environment(cluster),
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RunError(f"cluster bench: {what} failed (exit {proc.returncode}): "
                       f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc


def _measure(cluster, d: Path, train_args: list[str], algos=("bgd", "hes"), osu: bool = True) -> None:
    if osu:
        table = _run_on(cluster, ["bench", "osu", "--json", "--max-size", str(1 << 22), "--iterations", "200",
                                  "--iterations-large", "20", "--warmup", "20", "--warmup-large", "3"], "bench osu")
        (d / "osu.json").write_text(table.stdout.strip().splitlines()[-1] + "\n")
    links = {}
    for algo in algos:
        log.info("   %s over the links", algo)
        before = net.link_bytes(cluster)
        _run_on(cluster, ["train", "--algo", algo, *train_args, "--out", str(d / f"{algo}.h5"), "--force"],
                f"train --algo {algo}")
        after = net.link_bytes(cluster)
        links[algo] = {n: {k: after[n][k] - before[n][k] for k in ("tx", "rx")} for n in after}
    (d / "links.json").write_text(json.dumps({"cluster": cluster.to_dict(), "bytes": links}, indent=1) + "\n")


def _emulated(d: Path, nodes: int, rate: str, train_args: list[str]) -> None:
    """BGD on this host with ``--emulate-net`` at the link's nominal bandwidth (all ranks in shared memory)."""
    beta = 8 / state.parse_rate(rate)
    mpiexec = launch.mpiexec_path()
    log.info("   bgd with --emulate-net %g,%g on this host", EMULATED_ALPHA_S, beta)
    env = {**os.environ, "MPIR_CVAR_CH4_NETMOD": os.environ.get("MPIR_CVAR_CH4_NETMOD", "ofi")}
    cmd = [mpiexec, "-n", str(nodes), *_hes_mpi("train", "--algo", "bgd", *train_args, "--threads", "1",
                                              "--emulate-net", f"{EMULATED_ALPHA_S:g},{beta:g}",
                                              "--out", str(d / "bgd_emulated.h5"), "--force")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RunError(f"cluster bench: the emulated run failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
