"""Project BGD and H-ES epoch times from this machine's run logs to larger clusters and slower networks.

Usage: python analysis/project.py BGD.h5 [HES.h5] [--network 1gbe --network 10gbe ... | --network ALPHA,BETA]
       [--nodes 2 4 8 ... 1024] [--scaling weak|strong] [--at-nodes N] [--simgrid] [--fit]
       [--markdown | --csv FILE | --json]

Measured compute per step (from the logs) plus modelled communication (alpha-beta models of MPICH's
collectives, Thakur, Rabenseifner & Gropp 2005) on N nodes; the crossover where H-ES beats BGD; and
alpha and beta fitted to the logs' own collectives. The models live in hes_mpi.collectives, the projection in hes_mpi.post.projection.
--simgrid puts each row beside SimGrid's replay of the same logs on a star of that network (the model's
error against the validated simulator; hes-mpi simulate covers every method, this model only BGD and H-ES).
Exit status: 0 success, 1 a replay failed, 2 bad input (a one-line message).
"""

from __future__ import annotations

import argparse
import json
import sys

from hes_mpi.collectives import PRESETS
from hes_mpi.errors import RunError, UsageError, run_script
from hes_mpi.post import projection, simulate
from hes_mpi.post import report as fmt

PROG = "project.py"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="Presets: " + "; ".join(f"{k}: {d}" for k, (_, _, d) in PRESETS.items()))
    p.add_argument("runs", nargs="+", metavar="RUN.h5", help="run logs from 'hes-mpi train --out': one BGD and/or "
                   "one H-ES log of the same network, batch and rank count")
    p.add_argument("--network", action="append", default=None, metavar="NAME|ALPHA,BETA",
                   help="network to project onto, repeatable: 'measured' (alpha and beta fitted to the logs), a "
                   f"preset ({', '.join(PRESETS)}) or latency in s and inverse bandwidth in s/byte, "
                   f"e.g. 2e-6,1e-9 (default: {' '.join(projection.DEFAULT_NETWORKS)})")
    p.add_argument("--nodes", type=int, nargs="+", default=None, metavar="N",
                   help="node counts, one rank per node (default: 2 4 8 ... 1024)")
    p.add_argument("--scaling", choices=projection.SCALINGS, default="weak",
                   help="weak: per-node compute as measured, data and global batch grow with N; strong: compute "
                   "x measured ranks / N (optimistic for ES steps) (default %(default)s)")
    p.add_argument("--at-nodes", type=int, default=None, metavar="N",
                   help="node count of the bandwidth crossover (default: the largest --nodes)")
    p.add_argument("--simgrid", action="store_true",
                   help="beside each row, SimGrid's replay of the same logs ('hes-mpi simulate') on a star of that "
                   "network, and the model's error against it (needs smpirun; minutes at 1024 nodes)")
    p.add_argument("--fit", action="store_true",
                   help="also print the fit per op/size class: measured median vs modelled time")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print Markdown (the default)")
    fmt.add_argument("--csv", metavar="FILE", default=None,
                     help="write the projection rows as CSV to FILE ('-': standard output) instead")
    fmt.add_argument("--json", action="store_true", help="print the whole report as one JSON object instead")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.at_nodes is not None and args.at_nodes < 1:
            raise UsageError(f"--at-nodes must be >= 1, got {args.at_nodes}")
        report = projection.build_report(args.runs, networks=args.network, nodes=args.nodes, scaling=args.scaling,
                                       at_nodes=args.at_nodes)
        if args.simgrid:
            simulate.against_projection(args.runs, report,
                                        progress=lambda t: print(f"{PROG}: {t}", file=sys.stderr, flush=True))
        if args.csv:
            text = fmt.format_csv(report)
            if args.csv == "-":
                sys.stdout.write(text)
            else:
                try:
                    with open(args.csv, "w", encoding="utf-8") as f:
                        f.write(text)
                except OSError as e:
                    raise UsageError(f"--csv {args.csv}: {e.strerror}") from None
        elif args.json:
            print(json.dumps(fmt.jsonable(report), indent=1))
        else:
            print(fmt.format_markdown(report, fit_table=args.fit))
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
