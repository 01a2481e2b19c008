"""The main job (``compare``) and parameter sweeps (``sweep``): runs one after the other in one MPI job.

``mpirun -n 2 python -m hes_mpi`` (or ``hes-mpi compare``) fetches MNIST when it is missing, trains the
reference (BGD), Assisted H-ES (r = 1) and H-ES for each ``--r`` one after the other in the same MPI
job and writes one run log per run into one folder; the command then has the tables and figures made
from them (:mod:`hes_mpi.post.tables`, :mod:`hes_mpi.post.figures`). A sweep trains every run of a
parameter file (:mod:`.params`) whose run log is not already complete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path

from ..config import RunConfig, result_options, run_label
from ..data import fetch_mnist, mnist_status, resolve_data_dir
from ..errors import UsageError
from ..log import get_logger
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


def make_out_dir(comm, out: Path) -> None:
    """Rank 0 creates the output folder; every rank learns whether it could (a one-line error if not)."""

    def prepare():
        if comm.rank == 0:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--out-dir {out}: {e.strerror}") from None

    comm.agree(prepare)


def run_suite(comm, base: RunConfig, out_dir: str, r_values: list[int], assisted: bool = True,
              argv=None) -> list[str]:
    out = Path(out_dir)

    make_out_dir(comm, out)
    ensure_mnist(comm, base)
    paths = []
    todo = variants(r_values, assisted)
    for n, (name, overrides) in enumerate(todo, 1):
        cfg = dataclasses.replace(base, out=str(out / f"{name}.h5"), force=True, **overrides)
        comm.agree(cfg.validate)
        log.info("== run %d/%d: %s", n, len(todo), run_label(cfg.to_dict()))
        train(cfg, comm, argv)
        paths.append(cfg.out)
    return paths


# ------------------------------------------------------------------------------------------ sweeps
def finished(path: Path, cfg: RunConfig) -> bool:
    """True when ``path`` is a complete run log of the same configuration (so a sweep can skip it)."""
    from ..runlog import RunLog

    if not path.exists():
        return False
    try:
        with RunLog(str(path)) as rl:
            done = bool(rl.summary().get("complete"))
            saved = rl.config
    except Exception:  # noqa: BLE001  (unreadable or foreign: run it again)
        return False
    # The options that decide the result; a log older than an option ran as config.LEGACY says.
    return done and result_options(saved) == result_options(cfg.to_dict())


def run_sweep(comm, runs: list[tuple[str, RunConfig]], out_dir: str, argv=None) -> list[str]:
    """Train every (name, config) whose run log is not already complete; returns every run log path."""
    out = Path(out_dir)

    make_out_dir(comm, out)
    if any(cfg.data == "mnist" for _, cfg in runs):
        ensure_mnist(comm, runs[0][1])
    paths = []
    for n, (name, base) in enumerate(runs, 1):
        path = out / f"{name}.h5"
        cfg = dataclasses.replace(base, out=str(path), force=True)
        comm.agree(cfg.validate)
        paths.append(str(path))
        if comm.agree(finished, path, cfg):
            log.info("== run %d/%d: %s: complete in %s, kept", n, len(runs), name, path)
            continue
        log.info("== run %d/%d: %s (%s, seed %d)", n, len(runs), name, run_label(cfg.to_dict()), cfg.seed)
        train(cfg, comm, argv)
    return paths
