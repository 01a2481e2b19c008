"""The main job (``compare``) and parameter sweeps (``sweep``): runs one after the other in one MPI job,
then the tables and figures.

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
from .config import PLAIN, RunConfig
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
    if comm.rank == 0:
        runs = load_runs(paths)
        acc_md, sav_md = write_tables(runs, out)
        figures = write_figures(runs, out)
        print(f"\nAccuracy ({base.epochs} epochs, {comm.size} ranks, {base.data}):\n\n{acc_md}\n")
        print(f"Savings relative to the reference (measured from the run logs):\n\n{sav_md}\n")
        print(f"Run logs, tables (accuracy.md/.csv, savings.md/.csv) and figures ({len(figures)} PNG) in {out}/",
              flush=True)
    return paths


# ------------------------------------------------------------------------------------------ sweeps
def read_params(path: str) -> list[tuple[int, str, list[str]]]:
    """The configurations of a sweep file: (line number, NAME, train options) per line ``NAME OPTIONS...``;
    ``#`` starts a comment, blank lines are skipped."""
    import re
    import shlex

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"parameter file {path}: {e.strerror or e}") from None
    out, names = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name, opts = words[0], words[1:]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("-"):
            raise UsageError(f"{path}:{n}: a line is NAME OPTIONS... (NAME: letters, digits, _ . -), got {name!r}")
        if name in names:
            raise UsageError(f"{path}:{n}: NAME {name!r} is used twice")
        if any(o in ("--out", "--seed", "--resume") or o.startswith(("--out=", "--seed=")) for o in opts):
            raise UsageError(f"{path}:{n}: --out, --seed and --resume are set by the sweep")
        names.add(name)
        out.append((n, name, opts))
    if not out:
        raise UsageError(f"parameter file {path} has no configuration lines")
    return out


#: Options that do not change what a run computes: a finished run log is reused across them.
_SAME_RUN_IGNORES = {"out", "force", "data_dir", "threads", "check_every", "checkpoint", "checkpoint_every",
                     "resume"}


#: Options BGD does not read.
_HES_ONLY = {"K", "r", "sigma2", "sigma_scale", "assisted", "noise", *PLAIN}


def finished(path: Path, cfg: RunConfig) -> bool:
    """True when ``path`` is a complete run log of the same configuration (so a sweep can skip it)."""
    from .runlog import RunLog

    if not path.exists():
        return False
    try:
        with RunLog(str(path)) as rl:
            done = bool(rl.summary().get("complete"))
            saved = rl.config
    except Exception:  # noqa: BLE001  (unreadable or foreign: run it again)
        return False
    want = cfg.to_dict()
    ignore = _SAME_RUN_IGNORES | (_HES_ONLY if cfg.algo == "bgd" else set())
    # A log older than an H-ES method option ran the poster's plain algorithm (as hes_mpi.analysis reads it).
    return done and all(saved.get(k, PLAIN.get(k)) == v for k, v in want.items() if k not in ignore)


def run_sweep(comm, runs: list[tuple[str, RunConfig]], out_dir: str, argv=None) -> list[str]:
    """Train every (name, config) whose run log is not already complete, then tabulate them all."""
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
    if comm.rank == 0:
        table = load_runs(paths)
        acc_md, sav_md = write_tables(table, out)
        print(f"\nAccuracy ({comm.size} ranks; seeds as mean ± std):\n\n{acc_md}\n")
        if sav_md:
            print(f"Savings relative to the reference (measured from the run logs):\n\n{sav_md}\n")
        print(f"Run logs and tables (accuracy.md/.csv, savings.md/.csv) in {out}/", flush=True)
    return paths
