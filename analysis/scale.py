"""The accuracy-at-scale table from run logs: at each rank count N, BGD, H-ES and its control (gradient
reuse) with 95% CIs over their seeds, and H-ES - reuse with Welch's interval (hes_mpi.post.scale).

Usage: python analysis/scale.py DIR_OR_RUN.h5 [...] [--out-dir DIR]

A folder is searched for run logs below it (benchmarks/scale_accuracy.sh writes results/scale/nN/*.h5). With
--out-dir, also writes scale.md, scale.csv and scale.png (H-ES - reuse against N).
Exit status: 0 success, 2 bad input (a one-line message).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hes_mpi.errors import UsageError
from hes_mpi.post.scale import markdown_scale, plot_scale, scale_rows
from hes_mpi.post.tables import load_runs, to_csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="run logs or folders of jobs/scale.params runs")
    p.add_argument("--out-dir", default=None, help="also write scale.md, scale.csv and scale.png into this folder")
    args = p.parse_args(argv)
    files = []
    for x in args.paths:
        files += sorted(str(f) for f in Path(x).rglob("*.h5")) if Path(x).is_dir() else [x]
    try:
        if not files:
            raise UsageError("no run logs found")
        rows = scale_rows(load_runs(files))
        if not rows:
            raise UsageError("no BGD, H-ES or reuse run logs among the inputs")
    except UsageError as e:
        print(f"scale.py: error: {e}", file=sys.stderr)
        return 2
    text = markdown_scale(rows)
    try:
        print(text)
    except BrokenPipeError:
        return 0
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.md").write_text(text + "\n")
        (out / "scale.csv").write_text(to_csv(rows))
        plot_scale(rows, out / "scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
