"""The main job: BGD and the H-ES variants on the same data and ranks, then the tables and figures.

``mpirun -n 2 python -m hes_mpi`` (or ``hes-mpi compare``) fetches MNIST when it is missing, trains the
reference (BGD), Assisted H-ES (r = 1) and H-ES for each ``--r`` one after the other in the same MPI
job, writes one run log per run, the accuracy and savings tables (Markdown and CSV) and the figures into
one folder, and prints the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path

from .analysis import load_runs, run_label, write_figures, write_tables
from .config import RunConfig
from .data import fetch_mnist, mnist_status, resolve_data_dir
from .errors import UsageError
from .log import get_logger
from .trainer import train

log = get_logger("suite")


def variants(r_values: list[int], assisted: bool) -> list[tuple[str, dict]]:
    out = [("bgd", {"algo": "bgd"})]
    if assisted:
        out.append(("hes_assisted", {"algo": "hes", "assisted": True}))
    out += [(f"hes_r{r}", {"algo": "hes", "r": r}) for r in r_values]
    return out


def default_out_dir(comm) -> str:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%d-%H%M%S") if comm.rank == 0 else ""
    return comm.bcast_str(f"results/compare-{stamp}")


def ensure_mnist(comm, base: RunConfig) -> None:
    """Rank 0 fetches MNIST when it is missing; the others wait and share the outcome."""
    if base.data != "mnist":
        return
    root = resolve_data_dir(base.data_dir)

    def fetch():
        if comm.rank == 0 and not mnist_status(root)[0]:
            log.info("MNIST is not in %s yet: fetching it", root)
            fetch_mnist(root)

    comm.agree(fetch)


def run_suite(comm, base: RunConfig, out_dir: str, r_values: list[int], assisted: bool = True,
              argv=None) -> list[str]:
    out = Path(out_dir)

    def prepare():
        if comm.rank == 0:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out-dir {out}: {e.strerror}") from None

    comm.agree(prepare)
    ensure_mnist(comm, base)
    paths = []
    todo = variants(r_values, assisted)
    for n, (name, overrides) in enumerate(todo, 1):
        cfg = dataclasses.replace(base, out=str(out / f"{name}.h5"), force=True, **overrides)
        comm.agree(cfg.validate)
        log.info("== run %d/%d: %s", n, len(todo), run_label(cfg.to_dict()))
        train(cfg, comm, argv)
        paths.append(cfg.out)
    if comm.rank == 0:
        runs = load_runs(paths)
        acc_md, sav_md = write_tables(runs, out)
        figures = write_figures(runs, out)
        print(f"\nAccuracy ({base.epochs} epochs, {comm.size} ranks, {base.data}):\n\n{acc_md}\n")
        print(f"Savings relative to the reference (measured from the run logs):\n\n{sav_md}\n")
        print(f"Run logs, tables (accuracy.md/.csv, savings.md/.csv) and figures ({len(figures)} PNG) in {out}/",
              flush=True)
    return paths
