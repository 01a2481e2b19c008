"""Figures from run logs: training curves, equal-budget curves, time split, memory, the gradient.

Usage: python analysis/plots.py RUN.h5 [RUN.h5 ...] [--out-dir figures] [--target ACC]

Writes training.png (loss and accuracy against iteration), budget.png (dev accuracy against
cumulative bytes sent and against wall-clock time), time_split.png (compute / communication / waiting
per rank), memory.png (memory per step kind, peak RSS), gradient.png (the full gradient's norm
and per-component variance over iterations, with the sigma^2 it suggests) and pareto.png (final dev
accuracy, mean and 95% CI over seeds, against MB sent per rank and against training time, one point per
configuration, the fronts joined; and the dev accuracy reached against training time, with the target of
the time-to-target columns, --target or the reference's final mean minus 0.5 points, dashed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hes_mpi.errors import UsageError, run_script
from hes_mpi.post.figures import FIGURES, write_figures
from hes_mpi.post.tables import load_runs
from hes_mpi.post.target import add_target_option


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="plots.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run logs written by 'hes-mpi train --out'")
    p.add_argument("--out-dir", default="figures", help="folder for the PNG files (default %(default)s)")
    add_target_option(p)
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.runs)
        paths = write_figures(runs, Path(args.out_dir), args.target)
    except UsageError as e:
        print(f"plots.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"plots.py: error: cannot write into {args.out_dir}: {e.strerror}", file=sys.stderr)
        return 2
    print("\n".join(str(p) for p in paths))
    assert len(paths) == len(FIGURES)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
