"""The main job (``compare``) and parameter sweeps (``sweep``): runs one after the other in one MPI job.

``mpirun -n 2 python -m hes_mpi`` (or ``hes-mpi compare``) fetches MNIST when it is missing, trains the
reference (BGD), Assisted H-ES (r = 1), H-ES for each ``--r``, and two baselines at r = 2 (gradient
reuse, H-ES's control, and local SGD) one after the other in the same MPI job and writes one run log per run into one folder; the command then has the tables and figures made
from them (:mod:`hes_mpi.post.tables`, :mod:`hes_mpi.post.figures`). A sweep trains every run of a
parameter file (:mod:`.params`) whose run log is not already complete.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
from pathlib import Path

from ..config import RunConfig, result_options, run_label
from ..data import fetch_mnist, mnist_status, resolve_data_dir
from ..errors import Diverged, RunError, UsageError
from ..log import get_logger
from .progress import Progress, duration
from .trainer import train

log = get_logger("suite")


def variants(r_values: list[int], assisted: bool) -> list[tuple[str, dict]]:
    out = [("bgd", {"algo": "bgd"})]
    if assisted:
        out.append(("hes_assisted", {"algo": "hes", "assisted": True}))
    out += [(f"hes_r{r}", {"algo": "hes", "r": r}) for r in r_values]
    # H-ES is never shown without its control (the same steps without the search) and local SGD at equal bytes
    out += [("reuse_r2", {"algo": "reuse", "r": 2}), ("localsgd_r2", {"algo": "localsgd", "r": 2})]
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
    progress = Progress(len(runs), comm.wtime)
    for n, (name, base) in enumerate(runs, 1):
        path = out / f"{name}.h5"
        cfg = dataclasses.replace(base, out=str(path), force=True)
        comm.agree(cfg.validate)
        paths.append(str(path))
        if comm.decide(finished, path, cfg):  # rank 0, which wrote the log, decides
            progress.done()
            log.info("== run %d/%d: %s: complete in %s, kept", n, len(runs), name, path)
            continue
        log.info("== run %d/%d: %s (%s, seed %d) started; %s", n, len(runs), name, run_label(cfg.to_dict()),
                 cfg.seed, progress.status())
        t0 = comm.wtime()
        try:
            train(cfg, comm, argv)
            how = "finished"
        except Diverged as e:  # recorded in its run log, which counts as done: the sweep goes on
            log.warning("== run %d/%d: %s diverged: %s", n, len(runs), name, e)
            how = "diverged"
        progress.done(comm.wtime() - t0)
        log.info("== run %d/%d: %s %s in %s; %s", n, len(runs), name, how, duration(comm.wtime() - t0),
                 progress.status())
    return paths


# --------------------------------------------------------------------------------- learning-rate tuning
def final_dev_acc(path: Path) -> float:
    """The last epoch's dev accuracy of a complete run log (NaN when incomplete)."""
    from ..runlog import RunLog

    with RunLog(str(path)) as rl:
        s = rl.summary()
    return float(s["dev_acc"]) if s.get("complete") else math.nan


def tune_lr(comm, grid: list[tuple[str, float, RunConfig]], out_dir: str, argv=None) -> tuple[dict, list[dict]]:
    """Train every (NAME, lr, config) of ``grid`` into OUT-DIR/NAME_lrLR.h5 (a complete log of the same
    options is kept) and choose, per NAME, the lr with the best final dev accuracy (the smallest lr on a
    tie); a run that diverges (:class:`Diverged`: not finite; its log is complete, so a restart keeps it)
    counts as NaN. Returns ({NAME: lr}, one row per run)."""
    out = Path(out_dir)
    make_out_dir(comm, out)
    rows = []
    progress = Progress(len(grid), comm.wtime)
    for n, (name, lr, base) in enumerate(grid, 1):
        path = out / f"{name}_lr{lr:g}.h5"
        cfg = dataclasses.replace(base, out=str(path), force=True)
        comm.agree(cfg.validate)
        if comm.decide(finished, path, cfg):  # rank 0, which wrote the log, decides
            progress.done()
            log.info("== tuning %d/%d: %s at lr %g: complete in %s, kept", n, len(grid), name, lr, path)
        else:
            log.info("== tuning %d/%d: %s at lr %g (seed %d) started; %s", n, len(grid), name, lr, cfg.seed,
                     progress.status())
            t0 = comm.wtime()
            try:
                train(cfg, comm, argv)
            except Diverged as e:  # every rank sees the same non-finite figure, so all of them are here. Any other
                # error ends the sweep: a write that failed on rank 0 alone left the others leaving (SilentExit)
                log.warning("tuning %s at lr %g: %s", name, lr, e)
            progress.done(comm.wtime() - t0)
            log.info("== tuning %d/%d: %s at lr %g done in %s; %s", n, len(grid), name, lr,
                     duration(comm.wtime() - t0), progress.status())
        dev = comm.decide(lambda p=path: final_dev_acc(p) if p.exists() else math.nan)  # one choice of lr
        rows.append({"name": name, "lr": lr, "dev_acc": dev, "runlog": str(path)})
    chosen = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = sorted((r for r in rows if r["name"] == name), key=lambda r: r["lr"])
        finite = [r for r in mine if math.isfinite(r["dev_acc"])]
        if not finite:
            raise RunError(f"tuning {name}: every learning rate of the grid diverged", everywhere=True)
        best = max(finite, key=lambda r: r["dev_acc"])  # max keeps the first (smallest lr) on a tie
        chosen[name] = best["lr"]
        for r in mine:
            r["chosen"] = r is best
    return chosen, rows


def markdown_tuning(rows: list[dict]) -> str:
    """The grid and the choice: one row per configuration, one column per lr (final dev accuracy)."""
    lrs = sorted({r["lr"] for r in rows})
    head = "| configuration | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | chosen |"
    out = [head, "|---|" + "---|" * (len(lrs) + 1)]
    for name in dict.fromkeys(r["name"] for r in rows):
        cells, pick = [], ""
        for lr in lrs:
            r = next((r for r in rows if r["name"] == name and r["lr"] == lr), None)
            if r is None:
                cells.append("")
                continue
            text = "diverged" if not math.isfinite(r["dev_acc"]) else f"{100 * r['dev_acc']:.2f}%"
            cells.append(f"**{text}**" if r.get("chosen") else text)
            pick = f"{lr:g}" if r.get("chosen") else pick
        out.append(f"| {name} | " + " | ".join(cells) + f" | {pick} |")
    return "\n".join(out)


def write_tuning(comm, out_dir: str, rows: list[dict]) -> str:
    """The tuning table (:func:`markdown_tuning`), written by rank 0 into OUT-DIR/tuning.md; every rank learns
    whether the write failed (a one-line error on every rank, never a rank left waiting). Returns the table."""
    text = markdown_tuning(rows)
    path = Path(out_dir, "tuning.md")

    def write():
        if comm.rank == 0:
            try:
                path.write_text(text + "\n")
            except OSError as e:
                raise RunError(f"cannot write {path}: {e.strerror or e}") from None

    comm.agree(write)
    return text
