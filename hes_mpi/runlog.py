"""The HDF5 run log: schema, writing (append, flush, mark complete) and reading.

Written by rank 0 only, after the other ranks' per-iteration figures are gathered to it (pip's h5py
has no parallel HDF5, and the records are small). The file is opened, appended to and closed at
every flush (each epoch and at exit), so a run killed between two flushes leaves a valid file that
holds every flushed epoch and ``complete = False``.

Schema (``format = "hes_mpi.runlog"``, ``format_version = 1``); growable datasets are chunked with
``maxshape=(None, ...)``; every dataset carries a ``units`` attribute.

====================  =================================================================
``/`` attrs           ``format``, ``format_version``, ``complete`` (bool), ``created`` (ISO 8601 UTC),
                      ``hes_mpi_version``, ``command`` (argv)
``/config`` attrs     every :class:`~hes_mpi.config.RunConfig` field, and ``json`` (all of them)
``/environment`` attrs  ``python``, ``numpy``, ``numba``, ``h5py``, ``mpi4py``, ``mpi_vendor``,
                      ``mpi_library``, ``hostname``, ``ranks``, ``threads_per_rank``, ``platform``,
                      ``param_count``, ``n_train``, ``n_dev``, ``dataset``, ``layers``
``/epochs/*``         one row per epoch: ``epoch``, ``iteration`` (iterations done), ``train_loss``,
                      ``train_acc``, ``dev_loss``, ``dev_acc``, ``epoch_s`` (training time, no
                      evaluation), ``eval_s``, ``wall_s`` (since the start of training)
``/iterations/*``     one row per iteration: ``iteration``, ``epoch``, ``kind`` (0 grad, 1 es,
                      2 assisted), ``batch_loss`` (global mean cross-entropy before a gradient
                      step, NaN on ES steps), ``grad_norm``, ``grad_var`` (per-component variance
                      of the full gradient; NaN on ES steps), ``sigma``, ``es_cost``, ``es_rank``, ``es_k``;
                      per rank (rows x ranks): ``step_s``, ``comm_s``, ``local_n``
``/final``            ``theta`` (float32, the final flat parameters, bitwise equal on all ranks);
                      attrs ``iterations``, ``wall_s``, ``theta_checksum``
====================  =================================================================
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import UsageError

FORMAT = "hes_mpi.runlog"
FORMAT_VERSION = 1

EPOCH_COLUMNS = {
    "epoch": ("i4", "1"),
    "iteration": ("i8", "1"),
    "train_loss": ("f8", "nats per example"),
    "train_acc": ("f8", "fraction"),
    "dev_loss": ("f8", "nats per example"),
    "dev_acc": ("f8", "fraction"),
    "epoch_s": ("f8", "s"),
    "eval_s": ("f8", "s"),
    "wall_s": ("f8", "s"),
}
ITERATION_COLUMNS = {
    "iteration": ("i8", "1"),
    "epoch": ("i4", "1"),
    "kind": ("u1", "0 grad, 1 es, 2 assisted"),
    "batch_loss": ("f8", "nats per example"),
    "grad_norm": ("f8", "1"),
    "grad_var": ("f8", "1"),
    "sigma": ("f8", "1"),
    "es_cost": ("f8", "nats per example"),
    "es_rank": ("i4", "1"),
    "es_k": ("i4", "1"),
}
PER_RANK_COLUMNS = {
    "step_s": ("f8", "s"),
    "comm_s": ("f8", "s"),
    "local_n": ("i4", "examples"),
}


def _h5py():
    import h5py

    return h5py


def check_writable(path: str, force: bool) -> None:
    """Raise UsageError when ``path`` exists (without force) or cannot be created."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"--out {path} is a folder")
    if p.exists() and not force:
        raise UsageError(f"--out {path} exists; pass --force to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"--out {path}: not writable")


def _attr(v):
    if v is None:
        return ""
    return v


class RunLogWriter:
    """Rank 0's writer. Creates the file at once, appends at each :meth:`flush`."""

    def __init__(self, path: str, force: bool, config: dict, environment: dict, command: list[str]):
        check_writable(path, force)
        self.path = str(path)
        self.n_ranks = int(environment.get("ranks", 1))
        self._pending_epochs: list[dict] = []
        self._pending_iters: list[dict] = []
        h5py = _h5py()
        try:
            f = h5py.File(self.path, "w")
        except OSError as e:
            raise UsageError(f"--out {path}: cannot create ({e})") from None
        with f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["complete"] = False
            f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            f.attrs["command"] = " ".join(command)
            from . import __version__

            f.attrs["hes_mpi_version"] = __version__
            g = f.create_group("config")
            for k, v in config.items():
                g.attrs[k] = _attr(v)
            g.attrs["json"] = json.dumps(config, sort_keys=True)
            e = f.create_group("environment")
            for k, v in environment.items():
                e.attrs[k] = _attr(v)
            ep = f.create_group("epochs")
            for name, (dt, units) in EPOCH_COLUMNS.items():
                d = ep.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(256,))
                d.attrs["units"] = units
            it = f.create_group("iterations")
            for name, (dt, units) in ITERATION_COLUMNS.items():
                d = it.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(1024,))
                d.attrs["units"] = units
            for name, (dt, units) in PER_RANK_COLUMNS.items():
                d = it.create_dataset(name, shape=(0, self.n_ranks), maxshape=(None, self.n_ranks), dtype=dt,
                                      chunks=(max(1, 4096 // self.n_ranks), self.n_ranks))
                d.attrs["units"] = units

    def add_epoch(self, row: dict) -> None:
        self._pending_epochs.append(row)

    def add_iterations(self, columns: dict) -> None:
        self._pending_iters.append(columns)

    @staticmethod
    def _append(group, name: str, values: np.ndarray) -> None:
        d = group[name]
        n = d.shape[0]
        d.resize(n + values.shape[0], axis=0)
        d[n:] = values

    def flush(self, final: dict | None = None) -> None:
        """Append everything pending, then close the file. ``final`` marks the run complete."""
        h5py = _h5py()
        with h5py.File(self.path, "a") as f:
            for row in self._pending_epochs:
                for name, (dt, _) in EPOCH_COLUMNS.items():
                    self._append(f["epochs"], name, np.array([row[name]], dtype=dt))
            for cols in self._pending_iters:
                for name, (dt, _) in {**ITERATION_COLUMNS, **PER_RANK_COLUMNS}.items():
                    self._append(f["iterations"], name, np.asarray(cols[name], dtype=dt))
            if final is not None:
                g = f.require_group("final")
                if "theta" in g:
                    del g["theta"]
                g.create_dataset("theta", data=final.pop("theta"))
                g["theta"].attrs["units"] = "1"
                for k, v in final.items():
                    g.attrs[k] = v
                f.attrs["complete"] = True
        self._pending_epochs.clear()
        self._pending_iters.clear()


# ---------------------------------------------------------------------------------------- reading
class RunLog:
    """Read-only access to a run log, with one-line errors for missing, truncated or foreign files."""

    def __init__(self, path: str):
        self.path = str(path)
        h5py = _h5py()
        if not os.path.exists(self.path):
            raise UsageError(f"{path}: no such file")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError:
            raise UsageError(f"{path}: not a readable HDF5 file (truncated or foreign?)") from None
        if self.f.attrs.get("format") != FORMAT:
            self.f.close()
            raise UsageError(f"{path}: not a hes_mpi run log")
        if int(self.f.attrs.get("format_version", 0)) > FORMAT_VERSION:
            self.f.close()
            raise UsageError(f"{path}: run log format {self.f.attrs['format_version']} is newer than this hes_mpi")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.f.close()

    @property
    def config(self) -> dict:
        return json.loads(self.f["config"].attrs["json"])

    @property
    def environment(self) -> dict:
        return {k: _plain(v) for k, v in self.f["environment"].attrs.items()}

    @property
    def complete(self) -> bool:
        return bool(self.f.attrs["complete"])

    def table(self, group: str) -> dict[str, np.ndarray]:
        return {k: self.f[group][k][()] for k in self.f[group]}

    def theta(self) -> np.ndarray | None:
        return self.f["final/theta"][()] if "final/theta" in self.f else None

    def summary(self) -> dict:
        cfg = self.config
        env = self.environment
        ep = self.table("epochs")
        it = self.table("iterations")
        kinds = it["kind"]
        last = {k: (float(v[-1]) if v.size else math.nan) for k, v in ep.items()}
        final_attrs = {k: _plain(v) for k, v in self.f["final"].attrs.items()} if "final" in self.f else {}
        out = {
            "algo": cfg["algo"] + ("-assisted" if cfg["algo"] == "hes" and cfg.get("assisted") else ""),
            "ranks": int(env["ranks"]),
            "epochs": int(ep["epoch"].size),
            "iterations": int(kinds.size),
            "grad_steps": int(np.count_nonzero(kinds != 1)),
            "es_steps": int(np.count_nonzero(kinds != 0)),
            "train_acc": last["train_acc"],
            "dev_acc": last["dev_acc"],
            "train_loss": last["train_loss"],
            "dev_loss": last["dev_loss"],
            "wall_s": float(final_attrs.get("wall_s", last["wall_s"])),
            "median_epoch_s": float(np.median(ep["epoch_s"])) if ep["epoch_s"].size else math.nan,
            "param_count": int(env.get("param_count", 0)),
            "complete": self.complete,
            "dataset": env.get("dataset"),
            "K": cfg["K"], "r": cfg["r"], "sigma2": cfg["sigma2"], "sigma_scale": cfg["sigma_scale"],
            "lr": cfg["lr"], "batch": cfg["batch"], "seed": cfg["seed"],
        }
        if "theta_checksum" in final_attrs:
            out["theta_checksum"] = int(final_attrs["theta_checksum"])
        return out


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v
