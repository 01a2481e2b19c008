"""``cluster up|status|run|fault|down``: an emulated cluster on this host (docs/cluster.md)."""

from __future__ import annotations

import json

from ..cluster.launch import MPIS
from ..errors import UsageError
from .common import Parser, show_help

NAME_HELP = "the cluster's name (default %(default)s): it prefixes its namespaces, so several can be up at once"


def _pairs(values, what: str, convert) -> dict:
    out = {}
    for v in values or []:
        node, sep, x = v.partition("=")
        if not sep or not node or not x:
            raise UsageError(f"{what} {v!r}: expected NODE=VALUE, e.g. node1=100mbit")
        out[node.strip()] = convert(x.strip())
    return out


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"CPU fraction {text!r}: a number such as 0.5 (half a core)") from None


def add_parsers(sub) -> None:
    c = sub.add_parser("cluster", help="an emulated cluster on this host: nodes in network namespaces, real TCP "
                       "over rate-limited links (root)", description="Emulate a cluster on this host: every node "
                       "a network namespace with its own hostname, joined to a bridge by a veth link that the "
                       "kernel rate-limits in both directions; MPI runs over real TCP between the nodes. Needs root "
                       "(or CAP_NET_ADMIN). See docs/cluster.md.")
    csub = c.add_subparsers(dest="cluster_command", metavar="ACTION", parser_class=Parser)

    u = csub.add_parser("up", help="create the nodes, links, rate limits and CPU quotas",
                        description="Create NODES emulated nodes node0..node{N-1}: a network namespace each, a veth "
                        "link to a bridge (in a namespace of its own) with a tbf rate limit in both directions, an "
                        "address on a private subnet that exists only inside the namespaces, and a cpu cgroup. The "
                        "description is kept in a JSON file that later commands read.")
    u.add_argument("--nodes", type=int, default=2, help="number of nodes (default %(default)s)")
    u.add_argument("--link", default="1gbit", metavar="RATE", help="rate of every link, each direction, in tc's "
                   "units: 1gbit, 100mbit, ... (default %(default)s)")
    u.add_argument("--link-of", action="append", metavar="NODE=RATE", help="another rate for one node's link "
                   "(repeatable), e.g. --link-of node1=100mbit")
    u.add_argument("--cpu-of", action="append", metavar="NODE=FRACTION", help="limit a node to FRACTION of one "
                   "core (cgroup cpu quota; repeatable), e.g. --cpu-of node1=0.3: a slow node")
    u.add_argument("--delay", default=None, metavar="D", help="one-way delay added to every link with netem "
                   "(e.g. 100us); a one-line error where the kernel has no netem")
    u.add_argument("--subnet", default="10.231.0.0/24", help="the nodes' subnet, inside the namespaces only "
                   "(default %(default)s)")
    u.add_argument("--name", default="hes", help=NAME_HELP)
    u.set_defaults(func=cmd_up)

    s = csub.add_parser("status", help="the nodes, their namespaces, addresses, rates and CPU quotas",
                        description="Print the emulated cluster: each node's namespace, interface, address, link "
                        "rate and CPU quota, and the kernel's byte counters of its link.")
    s.add_argument("--json", action="store_true", help="print the state as one JSON object")
    s.add_argument("--name", default="hes", help=NAME_HELP)
    s.set_defaults(func=cmd_status)

    r = csub.add_parser("run", help="run a hes-mpi command as one MPI job across the nodes",
                        description="Run a hes-mpi command (train, compare, sweep, bench ...) as one MPI job across "
                        "the nodes: mpiexec on node0, each node's ranks started in its namespaces by Hydra's ssh "
                        "launcher, MPI over TCP on the node links. Its run logs record the cluster. Exit status: "
                        "the job's.", usage="hes-mpi cluster run [-n RANKS] [--ppn P] [--mpi mpich|openmpi] [--name NAME] -- COMMAND ...")
    r.add_argument("-n", dest="ranks", type=int, default=None, help="MPI ranks (default: nodes x --ppn)")
    r.add_argument("--ppn", type=int, default=1, help="ranks per node (default %(default)s: one rank per node, "
                   "so all MPI traffic crosses the links)")
    r.add_argument("--mpi", choices=MPIS, default=None, help="the MPI whose launcher starts the job "
                   "(default: the one installed next to this Python; naming it checks that it is)")
    r.add_argument("--name", default="hes", help=NAME_HELP)
    r.add_argument("argv", nargs="+", metavar="COMMAND", help="the hes-mpi command and its options, after --")
    r.set_defaults(func=cmd_run)

    sl = csub.add_parser("slurm", help="a Slurm on the nodes for one command (sbatch, srun, ...)",
                         description="Start a Slurm on the emulated nodes (slurmctld on node0, a slurmd on every "
                         "node, MUNGE), run COMMAND on node0 as on a login node (the current folder and PATH "
                         "kept), then stop Slurm again. Exit status: COMMAND's. E.g. hes-mpi cluster slurm -- "
                         "sbatch --wait -N 2 jobs/train.sbatch",
                         usage="hes-mpi cluster slurm [--name NAME] -- COMMAND ...")
    sl.add_argument("--name", default="hes", help=NAME_HELP)
    sl.add_argument("argv", nargs="+", metavar="COMMAND", help="the command to run on node0, after --")
    sl.set_defaults(func=cmd_slurm)

    f = csub.add_parser("fault", help="faults: link-down, link-up, slow, kill",
                        description="Inject a fault into the emulated cluster, now or while a job runs.")
    fsub = f.add_subparsers(dest="fault", metavar="FAULT", parser_class=Parser)
    for name, text in (("link-down", "take a node's link down (MPI over TCP then hangs: see --collective-timeout)"),
                       ("link-up", "bring a node's link up again")):
        p = fsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("node", help="node0, node1, ...")
        p.add_argument("--after", type=float, default=0.0, metavar="SECONDS", help="in SECONDS, in the background "
                       "(the command returns at once; recorded in the state, and 'cluster down' ends it if it has "
                       "not acted yet; default: now)")
        p.add_argument("--name", default="hes", help=NAME_HELP)
        p.set_defaults(func=cmd_fault, state="down" if name == "link-down" else "up")
    p = fsub.add_parser("slow", help="limit a node to a fraction of one core", description="Limit a node to "
                        "FRACTION of one core (its cgroup's cpu quota), at once: running jobs slow down too.")
    p.add_argument("node", help="node0, node1, ...")
    p.add_argument("fraction", help="fraction of one core, e.g. 0.25; 'off' removes the limit")
    p.add_argument("--name", default="hes", help=NAME_HELP)
    p.set_defaults(func=cmd_slow)
    p = fsub.add_parser("kill", help="kill every process on a node", description="SIGKILL every process on a "
                        "node (a node that dies).")
    p.add_argument("node", help="node0, node1, ...")
    p.add_argument("--name", default="hes", help=NAME_HELP)
    p.set_defaults(func=cmd_kill)
    f.set_defaults(func=lambda a: show_help(f))

    b = csub.add_parser("bench", help="BGD and H-ES measured on emulated clusters, next to the cost model",
                        description="For every --nodes and --link: bring a cluster up, run the OSU allreduce table, "
                        "BGD and H-ES (r = 2) over its links (reading the kernel's byte counters of every link), and "
                        "BGD with --emulate-net at the link's nominal rate on this host; take the cluster down; then "
                        "write and print the table of measured and modelled step and epoch times (docs/cluster.md). "
                        "With --rounds N, the whole matrix N times, interleaved; medians with their range.")
    b.add_argument("--nodes", type=int, nargs="+", default=[2, 4], help="node counts (default: 2 4)")
    b.add_argument("--link", nargs="+", default=["1gbit", "100mbit"], metavar="RATE", help="link rates "
                   "(default: 1gbit 100mbit)")
    b.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
    b.add_argument("--epochs", type=int, default=3, help="epochs of each training run (default %(default)s)")
    b.add_argument("--target", type=float, default=None, help="dev accuracy for the time-to-target columns "
                   "(default: each configuration's BGD final dev accuracy minus 0.005)")
    b.add_argument("--rounds", type=int, default=1, help="repeat the whole matrix this many times, interleaved "
                   "(each round visits every configuration, the order reversed on even rounds), and report "
                   "medians with the smallest and largest value (default %(default)s)")
    b.add_argument("--args", dest="common", default="", metavar="OPTIONS", help="more train options for every run")
    b.add_argument("--out-dir", default="results/cluster-bench", help="folder for run logs and the table "
                   "(default %(default)s)")
    b.add_argument("--no-emulated", dest="emulated", action="store_false", help="skip the --emulate-net runs")
    b.add_argument("--no-osu", dest="osu", action="store_false", help="skip the OSU allreduce table of each cluster")
    b.add_argument("--name", default="bench", help=NAME_HELP)
    b.set_defaults(func=cmd_bench)

    d = csub.add_parser("down", help="remove everything the cluster made", description="End the faults still "
                        "waiting (--after), then remove every namespace, link, bridge, qdisc, cgroup and file the "
                        "cluster made, and its processes. Idempotent: removing a cluster that is not there is not an "
                        "error.")
    d.add_argument("--name", default="hes", help=NAME_HELP)
    d.set_defaults(func=cmd_down)
    c.set_defaults(func=lambda a: show_help(c))


def _logging() -> None:
    from ..log import setup_logging

    setup_logging()


def cmd_up(args) -> int:
    from ..cluster import net
    from ..cluster.state import parse_rate

    _logging()
    cluster = net.up(args.name, args.nodes, args.link, _pairs(args.link_of, "--link-of", parse_rate),
                     _pairs(args.cpu_of, "--cpu-of", _fraction), args.delay, args.subnet)
    print(_status_text(cluster))
    return 0


def _status_text(cluster, counters: dict | None = None) -> str:
    lines = [f"cluster {cluster.describe()}", (f"  subnet {cluster.subnet}; bridge {cluster.bridge} in namespace "
             f"{cluster.switch_netns}; state {cluster.state_path}"),
             (f"  {'node':<7} {'namespace':<18} {'interface':<9} {'address':<15} {'rate':<8} {'cpu':<6} "
             f"{'sent':>12} {'received':>12}")]
    for n in cluster.nodes:
        c = (counters or {}).get(n.name, {})
        cpu = f"{n.cpu:g}" if n.cpu is not None else "-"
        lines.append(f"  {n.name:<7} {n.netns:<18} {n.interface:<9} {n.address:<15} {n.rate:<8} {cpu:<6} "
                     f"{c.get('tx', '-'):>12} {c.get('rx', '-'):>12}")
    return "\n".join(lines)


def cmd_status(args) -> int:
    from ..cluster import net, state
    from ..errors import RunError

    cluster = state.load(args.name)
    try:
        counters = net.link_bytes(cluster)
    except RunError:  # without root the namespaces cannot be entered: the state alone
        counters = None
    if args.json:
        print(json.dumps({**cluster.to_dict(), "description": cluster.describe(), "link_bytes": counters}))
    else:
        print(_status_text(cluster, counters))
    return 0


def cmd_run(args) -> int:
    from ..cluster import launch, net, state

    net.require_privileges()
    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    return launch.run(state.load(args.name), args.ranks, args.ppn, argv, args.mpi)


def cmd_fault(args) -> int:
    from ..cluster import faults, net, state

    _logging()
    net.require_privileges()
    faults.link(state.load(args.name), args.node, args.state, args.after)
    return 0


def cmd_slow(args) -> int:
    from ..cluster import faults, net, state

    _logging()
    net.require_privileges()
    fraction = None if args.fraction.lower() in ("off", "none") else _fraction(args.fraction)
    faults.slow(state.load(args.name), args.node, fraction)
    return 0


def cmd_kill(args) -> int:
    from ..cluster import faults, net, state

    _logging()
    net.require_privileges()
    faults.kill(state.load(args.name), args.node)
    return 0


def cmd_down(args) -> int:
    from ..cluster import net

    _logging()
    net.down(args.name)
    return 0


def cmd_bench(args) -> int:
    import shlex
    from pathlib import Path

    from ..bench.cluster import run_matrix
    from ..post.clustertables import table

    _logging()
    if args.epochs < 1 or args.target is not None and not 0 < args.target <= 1:
        raise UsageError("--epochs must be >= 1 and --target a dev accuracy in (0, 1]")
    if args.rounds < 1:
        raise UsageError("--rounds must be >= 1")
    out = Path(args.out_dir)
    train_args = ["--data", args.data, "--epochs", str(args.epochs), "--no-eval-train", *shlex.split(args.common)]
    folders = run_matrix(out, args.nodes, args.link, train_args, args.name, args.emulated, args.rounds, args.osu)
    rows, md = table(folders, args.target)
    (out / "cluster.md").write_text(md + "\n")
    (out / "cluster.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(md)
    print(f"\nRun logs, osu.json and links.json per configuration, cluster.md and cluster.json in {out}/")
    return 0


def cmd_slurm(args) -> int:
    from ..cluster import net, state
    from ..cluster.slurm import run_with_slurm

    _logging()
    net.require_privileges()
    argv = args.argv[1:] if args.argv and args.argv[0] == "--" else args.argv
    return run_with_slurm(state.load(args.name), argv)
