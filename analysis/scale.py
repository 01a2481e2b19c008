"""The accuracy-at-scale table from run logs: at each rank count N, BGD, H-ES and its control (gradient
reuse) with 95% CIs over their seeds, and H-ES - reuse with Welch's interval (hes_mpi.post.scale); runs of
other configurations (local SGD, compressed BGD) add a column each.

Usage: python analysis/scale.py DIR_OR_RUN.h5 [...] [--simulated ROWS.jsonl ...] [--target ACC] [--out-dir DIR]

A folder is searched for run logs below it (benchmarks/scale_accuracy.sh writes results/scale/nN/*.h5). With
--simulated (the output of 'hes-mpi simulate --json' of the same methods), also the time to the target dev
accuracy (default: BGD's final mean minus 0.5 points) on each simulated platform and N: the epochs to the
target of the mean curve over seeds at the nearest measured rank count at or below N (marked * when that is
not N itself) times the simulated epoch time, for every simulated method whose accuracy runs are among the
inputs (e.g. the 2-rank baselines runs of fp16, top-k, PowerSGD and local SGD beside the scale study's: their
accuracy at larger N is then assumed from 2 ranks). With --out-dir, also writes scale.md, scale.csv, scale.png
(H-ES - reuse against N) and time_to_target.md, time_to_target.csv, time_to_target.png (time to target against
N, one panel per platform, one line per method).
Exit status: 0 success, 2 bad input (a one-line message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hes_mpi.errors import UsageError, run_script
from hes_mpi.post.scale import (
    markdown_scale,
    markdown_time_to_target,
    plot_scale,
    plot_time_to_target,
    scale_rows,
    target_of,
    time_to_target_rows,
)
from hes_mpi.post.tables import load_runs, to_csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="run logs or folders of jobs/scale.params runs")
    p.add_argument("--simulated", nargs="+", default=[], metavar="ROWS.jsonl",
                   help="hes-mpi simulate --json output: adds the time-to-target table")
    p.add_argument("--target", type=float, default=None, metavar="ACC",
                   help="dev accuracy target as a fraction (default: BGD's final mean minus 0.005)")
    p.add_argument("--out-dir", default=None, help="also write scale.md, scale.csv and scale.png into this folder")
    args = p.parse_args(argv)
    files = []
    for x in args.paths:
        files += sorted(str(f) for f in Path(x).rglob("*.h5")) if Path(x).is_dir() else [x]
    try:
        if not files:
            raise UsageError("no run logs found")
        runs = load_runs(files)
        rows = scale_rows(runs)
        if not rows:
            raise UsageError("no BGD, H-ES or reuse run logs among the inputs")
        simulated = []
        for f in args.simulated:
            try:
                with open(f, encoding="utf-8") as fh:
                    simulated += [json.loads(line) for line in fh if line.strip()]
            except (OSError, ValueError) as e:
                raise UsageError(f"{f}: not readable as hes-mpi simulate --json output ({e})") from None
        ttt = []
        if simulated:
            try:
                ttt = time_to_target_rows(runs, simulated, target_of(runs, args.target))
            except ValueError as e:
                raise UsageError(str(e)) from None
    except UsageError as e:
        print(f"scale.py: error: {e}", file=sys.stderr)
        return 2
    text = markdown_scale(rows)
    ttt_text = markdown_time_to_target(ttt)
    if args.out_dir:  # before printing: a reader that stops early (| head) does not cost the files
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.md").write_text(text + "\n")
        (out / "scale.csv").write_text(to_csv(rows))
        plot_scale(rows, out / "scale.png")
        if ttt:
            (out / "time_to_target.md").write_text(ttt_text + "\n")
            (out / "time_to_target.csv").write_text(to_csv(ttt))
            plot_time_to_target(ttt, out / "time_to_target.png")
    print(text + ("\n\n" + ttt_text if ttt_text else ""))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
