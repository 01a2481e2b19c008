"""The size study from run logs: Runtime %, Memory % and Net BW % of every method against BGD on the same
network, with the parameter count and the dev accuracy beside them (hes_mpi.post.size).

Usage: python analysis/size.py RUN.h5 [RUN.h5 ...] [--out-dir DIR] [--target ACC]

Each row also gives the time to a target dev accuracy (--target, default: that network's BGD final mean
minus 0.5 points). With --out-dir, also writes size.md, size.csv and size.png (the four panels against the parameter count).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hes_mpi.errors import UsageError, run_script
from hes_mpi.post.figures import plot_size
from hes_mpi.post.size import markdown_size, size_rows
from hes_mpi.post.tables import load_runs, to_csv
from hes_mpi.post.target import add_target_option


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="size.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run logs of the size study (jobs/size.params)")
    p.add_argument("--out-dir", default=None, help="also write size.md, size.csv and size.png into this folder")
    add_target_option(p)
    args = p.parse_args(argv)
    try:
        rows = size_rows(load_runs(args.runs), args.target)
    except UsageError as e:
        print(f"size.py: error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print("size.py: error: no network has a BGD run to compare with", file=sys.stderr)
        return 2
    text = markdown_size(rows)
    if args.out_dir:  # before printing: a reader that stops early (| head) does not cost the files
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "size.md").write_text(text + "\n")
        (out / "size.csv").write_text(to_csv(rows))
        plot_size(rows, out / "size.png")
        print(f"wrote {out / 'size.md'}, size.csv, size.png", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
