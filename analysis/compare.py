"""The poster's two tables from run logs: accuracy, and savings relative to the BGD reference.

Usage: python analysis/compare.py RUN.h5 [RUN.h5 ...] [--out-dir DIR] [--csv]

Runs of the same configuration with different seeds are reported as mean ± standard deviation.
Runtime %, Memory % and Net BW % are measured from the logs (see hes_mpi.post.tables).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hes_mpi.errors import UsageError
from hes_mpi.post.tables import (
    accuracy_rows,
    load_runs,
    markdown_accuracy,
    markdown_savings,
    savings_rows,
    to_csv,
    write_tables,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run logs written by 'hes-mpi train --out' (or the compare command)")
    p.add_argument("--out-dir", default=None, help="also write accuracy.md/.csv and savings.md/.csv into this folder")
    p.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    args = p.parse_args(argv)
    try:
        runs = load_runs(args.runs)
    except UsageError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    acc, sav = accuracy_rows(runs), savings_rows(runs)
    if args.csv:
        print(to_csv(acc))
        print(to_csv(sav))
    else:
        print("Accuracy\n\n" + markdown_accuracy(acc) + "\n")
        if sav:
            print("Savings relative to the reference (BGD)\n\n" + markdown_savings(sav))
        else:
            print("(no BGD run given: no savings table)")
    if args.out_dir:
        write_tables(runs, Path(args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
