"""Write a run log's MPI calls as a Chrome / Perfetto timeline (one track pair per rank).

Usage: python analysis/trace.py RUN.h5 [-o RUN.trace.json] [--max-events N] [--iterations A:B] [--force]

Open the output in https://ui.perfetto.dev ("Open trace file") or chrome://tracing ("Load"). The work
is done by :mod:`hes_mpi.post.trace`; this script only parses the options.
"""

from __future__ import annotations

import argparse
import sys

from hes_mpi.errors import UsageError, run_script
from hes_mpi.post.trace import parse_iterations, write_trace

PROG = "trace.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a hes_mpi run log (HDF5) into a Chrome/Perfetto trace (Trace Event Format JSON): "
                    "one process per rank, an 'MPI' thread with every MPI call and a 'compute' thread with the "
                    "gaps between them. Open it at https://ui.perfetto.dev or chrome://tracing.")
    p.add_argument("runlog", metavar="RUN.h5", help="run log written by 'hes-mpi train --out'")
    p.add_argument("-o", "--output", metavar="OUT.json", default=None,
                   help="trace file to write (default: the run log's name with .trace.json, next to it)")
    p.add_argument("--max-events", metavar="N", type=int, default=None,
                   help="write only the earliest N complete events (metadata not counted); "
                        "the trace's otherData notes the truncation")
    p.add_argument("--iterations", metavar="A:B", default=None,
                   help="only the calls of iterations A <= i < B ('A:', ':B' and a single 'A' work too; "
                        "setup calls have iteration -1)")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the script; return the exit status (0 ok, 2 usage error: bad option, unreadable run log, output exists)."""
    args = build_parser().parse_args(argv)
    try:
        if args.max_events is not None and args.max_events < 1:
            raise UsageError(f"--max-events {args.max_events}: must be at least 1")
        iterations = parse_iterations(args.iterations) if args.iterations is not None else None
        info = write_trace(args.runlog, args.output, max_events=args.max_events, iterations=iterations,
                           force=args.force)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    note = f" (truncated from {info['events_total']})" if info["truncated"] else ""
    print(f"{info['path']}: {info['events_written']} events{note}, {info['ranks']} ranks, {info['bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
