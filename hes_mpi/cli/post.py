"""``evaluate`` and ``summary``: the commands that read run logs."""

from __future__ import annotations

import json


def add_parsers(sub) -> None:
    ev = sub.add_parser("evaluate", help="accuracy of a run's final parameters on a data split (the test set)",
                        description="Loss and accuracy of the final parameters of finished run logs on a split of "
                        "their dataset: 'test' (the third MNIST split, IDX t10k, the synthetic test set) by default. "
                        "Report the test accuracy of the configuration you chose on the dev set, once: never tune "
                        "on it. Several logs (seeds): one line each, then the mean and standard deviation.")
    ev.add_argument("runlog", nargs="+", help="run logs written by train --out (complete)")
    ev.add_argument("--split", choices=("test", "dev"), default="test", help="which split (default %(default)s)")
    ev.add_argument("--data-dir", default=None, help="data folder (default: the run's, else $HES_MPI_DATA)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("summary", help="summarise a run log", description="Summarise an HDF5 run log.")
    s.add_argument("runlog", nargs="+", help="the .h5 file(s) written by train --out")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object (one per line for several files)")
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table, one row per run log")
    s.set_defaults(func=cmd_summary)


def cmd_evaluate(args) -> int:
    from ..post.evaluate import evaluate, format_text

    result = evaluate(args.runlog, args.split, args.data_dir)
    print(json.dumps(result) if args.json else format_text(result))
    return 0


def cmd_summary(args) -> int:
    from ..post import summary

    rows = summary.summaries(args.runlog)
    if args.json:
        print(summary.format_json(rows))
    elif args.markdown:
        print(summary.format_markdown(rows))
    else:
        print(summary.format_text(rows))
    return 0
