"""``evaluate``, ``summary`` and ``simulate``: the commands that read run logs."""

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
    add_simulate_parser(sub)


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


def add_simulate_parser(sub) -> None:
    from ..post import simtrace, smpi

    s = sub.add_parser("simulate", help="replay run logs on simulated clusters of N nodes (SimGrid SMPI)",
                       description="Replay one measured epoch of each run log on N simulated nodes with SimGrid's "
                       "SMPI (smpirun -replay): the run's own MPI calls, sizes and order, its measured compute "
                       "between them, each collective as its MPI family's algorithm at N. Prints a Markdown table "
                       "(or --json: one object per run x platform x N); --out DIR also writes simulate.md, "
                       "simulate.csv and simulate.png. Needs smpirun: " + smpi.INSTALL_HINT + ".")
    s.add_argument("runlog", nargs="+", help="run logs written by train --out (any method)")
    s.add_argument("--nodes", type=int, nargs="+", default=[2, 16, 128, 1024], metavar="N",
                   help="simulated node counts, one rank per node (default: 2 16 128 1024)")
    s.add_argument("--platform", action="append", default=None, metavar="SPEC",
                   help="repeatable: star:RATE,LATENCY, fattree:RATE,LATENCY[,RADIX], "
                   "dragonfly:RATE,LATENCY[,G,C,R,N] or a platform FILE.xml (default: star:1gbit,30us)")
    s.add_argument("--scaling", choices=simtrace.SCALINGS, default="weak",
                   help="weak: each node's rows and compute as measured; strong: the global batch as measured, "
                   "each rank's compute x its rows at N / its rows measured (default %(default)s)")
    s.add_argument("--hosts", default=None, metavar="SPEC",
                   help="host speeds: FRACTION:NAME=SPEEDx[,...] (e.g. 0.25:gpu=20x: a quarter of the nodes, "
                   "spread evenly, 20 times this host) or list:S1,S2,... per node (default: all 1x)")
    s.add_argument("--epoch", type=int, default=None, help="which measured epoch (default: the median by time)")
    s.add_argument("--smpi-factors", choices=("default", "1"), default="default",
                   help="SMPI's latency and bandwidth factors: SimGrid's defaults or 1 (a pure latency-bandwidth "
                   "model) (default %(default)s)")
    s.add_argument("--out", default=None, metavar="DIR", help="also write simulate.md, simulate.csv, simulate.png")
    s.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    s.set_defaults(func=cmd_simulate)


def cmd_simulate(args) -> int:
    import math
    import os

    from ..post import simulate

    rows = simulate.simulate(args.runlog, args.nodes, args.platform or ["star:1gbit,30us"], args.scaling,
                             args.hosts, args.epoch, args.smpi_factors == "1", progress=simulate.stderr_progress)
    if args.json:
        for r in rows:
            print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}))
    else:
        print(simulate.format_markdown(rows), end="")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "simulate.md"), "w", encoding="utf-8") as f:
            f.write(simulate.format_markdown(rows))
        with open(os.path.join(args.out, "simulate.csv"), "w", encoding="utf-8") as f:
            f.write(simulate.format_csv(rows))
        simulate.plot(rows, os.path.join(args.out, "simulate.png"))
    return 0
