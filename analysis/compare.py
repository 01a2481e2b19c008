"""The poster's two tables from run logs (accuracy, and savings relative to the BGD reference), the
Pareto table (accuracy against bytes and time) and H-ES against gradient reuse at the same r.

Usage: python analysis/compare.py RUN.h5 [RUN.h5 ...] [--out-dir DIR] [--csv] [--test] [--target ACC]
                                  [--last-epochs E]

Runs of the same configuration with different seeds are reported as the mean and its 95% confidence
interval, with n; H-ES against reuse as the difference, its 95% CI and Welch's p (hes_mpi.post.stats).
Runtime %, Memory % and Net BW % are measured from the logs (see hes_mpi.post.tables). The savings and
Pareto tables give each configuration's time to a target dev accuracy (hes_mpi.post.target): the reference's
final mean minus 0.5 points, or --target.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hes_mpi.errors import UsageError, run_script
from hes_mpi.post.study import comparisons, markdown_comparisons, markdown_pareto, pareto_rows, write_tables
from hes_mpi.post.tables import (
    accuracy_rows,
    load_runs,
    markdown_accuracy,
    markdown_savings,
    savings_rows,
    to_csv,
)
from hes_mpi.post.target import add_target_option


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="compare.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run logs written by 'hes-mpi train --out' (or the compare command)")
    p.add_argument("--out-dir", default=None, help="also write the tables (accuracy, savings, pareto, comparisons; "
                   ".md and .csv) into this folder")
    p.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    p.add_argument("--test", action="store_true", help="also measure every run's final parameters on the test split "
                   "(once, at the end; as hes-mpi evaluate) and add it to the Pareto table")
    add_target_option(p)
    p.add_argument("--last-epochs", type=int, default=None, metavar="E", help="also the mean dev accuracy of the "
                   "last E epochs of each run (mean and 95%% CI over the seeds; and H-ES - reuse on it): steadier "
                   "than the last epoch alone")
    args = p.parse_args(argv)
    if args.last_epochs is not None and args.last_epochs < 1:
        p.error("--last-epochs must be >= 1")
    try:
        runs = load_runs(args.runs)
        if args.test:
            from hes_mpi.post.evaluate import evaluate

            for run, row in zip(runs, evaluate([r.path for r in runs])["runs"]):
                run.summary["test_acc"] = row["accuracy"]
    except UsageError as e:
        print(f"compare.py: error: {e}", file=sys.stderr)
        return 2
    acc, sav = accuracy_rows(runs, args.last_epochs), savings_rows(runs, args.target)
    par, cmp = pareto_rows(runs, args.target, args.last_epochs), comparisons(runs, args.last_epochs)
    if args.out_dir:  # before printing: a reader that stops early (| head) does not cost the files
        write_tables(runs, Path(args.out_dir), args.target, args.last_epochs)
    if args.csv:
        for rows in (acc, sav, par, cmp):
            if rows:
                print(to_csv(rows))
    else:
        print("Accuracy\n\n" + markdown_accuracy(acc) + "\n")
        if sav:
            print("Savings relative to the reference (BGD)\n\n" + markdown_savings(sav) + "\n")
        else:
            print("(no BGD run given: no savings table)\n")
        print("Accuracy against budget (the Pareto fronts)\n\n" + markdown_pareto(par))
        if cmp:
            print("\nH-ES against gradient reuse at the same r (Welch's t-test)\n\n" + markdown_comparisons(cmp))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
