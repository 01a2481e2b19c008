"""The HDF5 run log: its layout, writing (append, flush, mark complete) and reading.

The module is over 400 lines because the writer and the reader of one file format are kept together,
with the layout they both follow written out below (the column tables live in :mod:`hes_mpi.schema`).

Written by rank 0 only, after the other ranks' per-iteration figures and call records are gathered
to it (pip's h5py has no parallel HDF5, and the records are small: one file is simpler to move and
read than one per rank plus an index). Every update of the file (its creation, each flush: every epoch,
every checkpoint and the end; a resume's cut) is made to a copy that then replaces it by a rename
(:mod:`hes_mpi.atomicfile`), so a run killed at any moment, even inside a flush, leaves a whole file that
holds every flushed epoch and ``complete = False``. HDF5 file locking is off for writer and readers, so
that reading a live run (``hes-mpi summary``) can never stop the run's next flush.

Schema (``format = "hes_mpi.runlog"``, ``format_version = 1``); growable datasets are chunked with
``maxshape=(None, ...)``; every dataset carries a ``units`` attribute.

====================  =================================================================
``/`` attrs           ``format``, ``format_version``, ``complete`` (bool), ``created`` (ISO 8601 UTC),
                      ``hes_mpi_version``, ``command`` (argv)
``/config`` attrs     every :class:`~hes_mpi.config.RunConfig` field, and ``json`` (all of them)
``/environment`` attrs  ``python``, ``numpy``, ``numba``, ``h5py``, ``mpi4py``, ``mpi_vendor``,
                      ``mpi_library``, ``hostname``, ``ranks``, ``threads_per_rank``, ``platform``,
                      ``param_count``, ``n_train``, ``n_dev``, ``dataset``, ``layers``, ``hdf5``,
                      ``hes_mpi``, ``wtick``, ``emulated_network``/``_alpha_s``/``_beta_s_per_byte``,
                      ``processor_names`` (every rank's, comma-separated), ``emulated_cluster``,
                      ``cluster`` (JSON), ``cluster_nodes``, ``cluster_link_rates``, ``mpi_family``,
                      ``collective_model``, ``collective_model_assumed``, ``collective_model_note``
                      (docs/runlog.md)
``/epochs/*``         one row per epoch: ``epoch``, ``iteration`` (iterations done), ``train_loss``,
                      ``train_acc``, ``dev_loss``, ``dev_acc``, ``epoch_s`` (training time, no
                      evaluation), ``eval_s``, ``wall_s`` (since the start of training)
``/iterations/*``     one row per iteration: ``iteration``, ``epoch``, ``kind`` (0 grad, 1 es,
                      2 assisted), ``batch_loss`` (global mean cross-entropy before a gradient
                      step, NaN on ES steps), ``grad_norm``, ``grad_var`` (per-component variance
                      of the full gradient; NaN on ES steps), ``sigma``, ``es_cost``, ``es_rank``,
                      ``es_k``; per rank (rows x ranks): ``step_s`` (wall time of the step),
                      ``compute_s``, ``comm_s`` and ``wait_s`` (its split, see
                      :mod:`hes_mpi.telemetry`), ``local_n`` (rows), ``rss_hwm_bytes`` (resident-set
                      high-water mark after the step), ``step_bytes`` (bytes of the buffers the step writes)
``/comm/records/*``   one row per MPI call of every rank (columns of equal length): ``rank``,
                      ``seq`` (collective call number, equal across ranks; -1 point-to-point),
                      ``op`` and ``phase`` (indices into the attrs ``op_names``/``phase_names``),
                      ``iteration``, ``bytes_sent``, ``bytes_recv`` (payload: count x type size),
                      ``wire_bytes`` (modelled), ``t_enter``, ``t_exit`` (``MPI_Wtime``, the rank's
                      own clock). Phases ``grad`` and ``es`` are the algorithm's; ``setup``,
                      ``eval``, ``check`` and ``telemetry`` (the log's own gathers) are the tool's.
                      The calls of the final gather itself are not in the file.
``/clock``            ``offset_start``, ``offset_end``, ``rtt_start``, ``rtt_end`` (per rank, s;
                      ``t - offset[r]`` is rank r's time on rank 0's axis); attrs ``wtick``,
                      ``wtime_is_global``
``/final``            ``theta`` (float32, the final flat parameters, bitwise equal on all ranks);
                      attrs ``iterations``, ``wall_s``, ``theta_checksum``, ``theta_consistent``,
                      ``consistency_checks``, ``step_transient_bytes_grad``/``_es`` (tracemalloc
                      peak of one probe step of each kind, max over ranks), ``state_bytes`` (every
                      array the method keeps between steps, the noise table included) and
                      ``state_bytes_noise`` (its noise source's share), max over ranks; a run that diverged
                      has ``diverged`` (true), ``diverged_iteration``, ``diverged_reason`` and
                      ``theta`` as it was then, instead of the figures of a finished run
====================  =================================================================
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import hashlib
import io
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

from . import atomicfile
from .errors import UsageError
from .schema import (
    ALGORITHM_PHASES,
    EPOCH_COLUMNS,
    ES_KINDS,
    GRADIENT_KINDS,
    ITERATION_COLUMNS,
    OPS,
    PER_RANK_COLUMNS,
    PHASES,
    RECORD_DTYPE,
    RECORD_FIELDS,
    RECORD_UNITS,
    StepKind,
    decode,
    decode_names,
)

FORMAT = "hes_mpi.runlog"
FORMAT_VERSION = 1



def _h5py():
    import h5py

    return h5py


_STATE = {"damaged_handles": False}


def damaged_handles() -> bool:
    """True after a failed write left HDF5 objects that the library cannot close cleanly; the process
    should then end without HDF5's own teardown (see :mod:`hes_mpi.run.control`)."""
    return _STATE["damaged_handles"]


def check_writable(path, force: bool, option: str = "--out") -> None:
    """Raise UsageError when the output ``path`` exists (without force) or cannot be created; messages
    name ``option`` (the command-line option that gave the path, or nothing)."""
    p = Path(path)
    name = f"{option} {path}" if option else str(path)
    if p.is_dir():
        raise UsageError(f"{name} is a folder")
    if p.exists() and not force:
        raise UsageError(f"{name} exists; pass --force to overwrite it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{name}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{name}: not writable")


def _attr(v):
    if v is None:
        return ""
    return v


#: A run whose dev accuracy ends this far (absolute) below its best epoch has collapsed: H-ES can
#: diverge slowly without any NaN (the loss grows, the accuracy falls).
COLLAPSE_DROP = 0.05


def collapse_summary(dev_acc: np.ndarray) -> dict:
    """``best_dev_acc``, ``best_dev_epoch`` (1-based) and ``collapsed`` from the per-epoch dev accuracy."""
    acc = np.asarray(dev_acc, dtype=float)
    ok = np.isfinite(acc)
    if not ok.any():
        return {"best_dev_acc": math.nan, "best_dev_epoch": 0, "collapsed": False}
    best = int(np.nanargmax(np.where(ok, acc, -np.inf)))
    last = acc[ok][-1]
    return {"best_dev_acc": float(acc[best]), "best_dev_epoch": best + 1,
            "collapsed": bool(acc[best] - last > COLLAPSE_DROP)}


class RunLogWriter:
    """Rank 0's writer. Creates the file at once, appends at each :meth:`flush`; each update replaces the
    file whole (:func:`hes_mpi.atomicfile.replaced`)."""

    def __init__(self, path: str, force: bool, config: dict, environment: dict, command: list[str],
                 resume_rows: dict | None = None):
        self.path = str(path)
        self.n_ranks = int(environment.get("ranks", 1))
        self._pending_epochs: list[dict] = []
        self._pending_iters: list[dict] = []
        self._pending_records: list[tuple[np.ndarray, np.ndarray]] = []
        self._clock: dict | None = None
        if resume_rows is not None:
            self._reopen(resume_rows, command)
            return
        check_writable(path, force)
        try:
            with atomicfile.replaced(self.path, copy=False) as target:
                self._create(target, config, environment, command)
        except OSError as e:
            raise UsageError(f"--out {self.path}: cannot create ({e})") from None

    def _create(self, target, config: dict, environment: dict, command: list[str]) -> None:
        with _h5py().File(target, "w", locking=False) as f:
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
            c = f.create_group("comm")
            c.attrs["op_names"] = list(OPS)
            c.attrs["phase_names"] = list(PHASES)
            c.attrs["algorithm_phases"] = list(ALGORITHM_PHASES)
            c.attrs["payload_rule"] = ("bytes_sent/bytes_recv: count x type size of the buffers this rank passes "
                                       "(IN_PLACE: the receive buffer); wire_bytes: modelled bytes sent by this rank "
                                       "by the default algorithm of /environment's mpi_family (see hes_mpi.collectives.wire_bytes)")
            rec = c.create_group("records")
            for name in RECORD_FIELDS:
                dt = np.dtype("i4") if name == "rank" else RECORD_DTYPE[name]
                d = rec.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
                d.attrs["units"] = RECORD_UNITS.get(name, "1")

    def _reopen(self, rows: dict, command: list[str]) -> None:
        """Continue an existing log from a checkpoint: cut every table back to ``rows``."""
        try:
            with atomicfile.replaced(self.path) as target:
                self._cut(target, rows, command)
        except OSError as e:
            raise UsageError(f"--out {self.path}: cannot reopen the run log to resume ({e})") from None

    def _cut(self, target, rows: dict, command: list[str]) -> None:
        with _h5py().File(target, "a", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise UsageError(f"--out {self.path}: not a hes_mpi run log; cannot resume into it")
            for group, n in (("epochs", rows["epochs"]), ("iterations", rows["iterations"]),
                             ("comm/records", rows["records"])):
                for name in f[group]:
                    d = f[group][name]
                    if d.shape[0] < n:
                        raise UsageError(f"--out {self.path} has fewer rows than the checkpoint; cannot resume")
                    d.resize(n, axis=0)
            if "final" in f:
                del f["final"]
            f.attrs["complete"] = False
            f.attrs["resumed"] = int(f.attrs.get("resumed", 0)) + 1
            f.attrs["command"] = str(f.attrs["command"]) + " ; resumed: " + " ".join(command)

    def rows(self) -> dict:
        """Row counts of the flushed tables (the position a checkpoint records)."""
        h5py = _h5py()
        with h5py.File(self.path, "r", locking=False) as f:
            return {"epochs": f["epochs/epoch"].shape[0], "iterations": f["iterations/iteration"].shape[0],
                    "records": f["comm/records/seq"].shape[0]}

    def add_epoch(self, row: dict) -> None:
        self._pending_epochs.append(row)

    def add_iterations(self, columns: dict) -> None:
        self._pending_iters.append(columns)

    def add_records(self, records: np.ndarray, ranks: np.ndarray) -> None:
        self._pending_records.append((records, ranks))

    def set_clock(self, offset_start, rtt_start, offset_end, rtt_end, wtick: float, is_global: bool) -> None:
        self._clock = {"offset_start": offset_start, "rtt_start": rtt_start, "offset_end": offset_end,
                       "rtt_end": rtt_end, "wtick": wtick, "wtime_is_global": is_global}

    @staticmethod
    def _append(group, name: str, values: np.ndarray) -> None:
        d = group[name]
        n = d.shape[0]
        d.resize(n + values.shape[0], axis=0)
        d[n:] = values

    def flush(self, final: dict | None = None) -> None:
        """Append everything pending, then close the file. ``final`` marks the run complete.

        Raises OSError when the file cannot be written (disk full, gone, unwritable)."""
        # When a write fails, h5py prints a traceback for every half-closed object it releases; keep
        # them out of the user's terminal and report the failure once, as OSError.
        captured = io.StringIO()
        failed = None
        with contextlib.redirect_stderr(captured):
            try:
                with atomicfile.replaced(self.path) as target:  # the log itself changes only by a rename
                    self._flush(target, final)
                    gc.collect()  # release every object of the file here, so that late write errors are seen now
                    if "write failed" in captured.getvalue():  # a dataset's cached chunks failed on release
                        raise OSError(captured.getvalue())
            except (OSError, RuntimeError) as e:  # h5py reports ENOSPC at close as RuntimeError
                failed = (e.strerror if isinstance(e, OSError) else None) or str(e)
            gc.collect()
        text = captured.getvalue()
        if failed is not None:
            _STATE["damaged_handles"] = True
            m = re.search(r"error message = '([^']*)'", failed)
            raise OSError(m.group(1) if m else (failed.strip().splitlines() or ["write failed"])[0])
        sys.stderr.write(text)

    def _flush(self, target, final: dict | None) -> None:
        h5py = _h5py()
        with h5py.File(target, "a", locking=False) as f:
            for row in self._pending_epochs:
                for name, (dt, _) in EPOCH_COLUMNS.items():
                    self._append(f["epochs"], name, np.array([row[name]], dtype=dt))
            for cols in self._pending_iters:
                for name, (dt, _) in {**ITERATION_COLUMNS, **PER_RANK_COLUMNS}.items():
                    self._append(f["iterations"], name, np.asarray(cols[name], dtype=dt))
            for recs, ranks in self._pending_records:
                grp = f["comm/records"]
                self._append(grp, "rank", np.asarray(ranks, dtype="i4"))
                for name in RECORD_DTYPE.names:
                    self._append(grp, name, recs[name])
            if self._clock is not None:
                ck = f.require_group("clock")
                for k in ("offset_start", "rtt_start", "offset_end", "rtt_end"):
                    if k in ck:
                        del ck[k]
                    ck.create_dataset(k, data=np.asarray(self._clock[k], dtype="f8"))
                    ck[k].attrs["units"] = "s"
                ck.attrs["wtick"] = self._clock["wtick"]
                ck.attrs["wtime_is_global"] = bool(self._clock["wtime_is_global"])
                ck.attrs["meaning"] = "t - offset[r] puts a time of rank r on rank 0's MPI_Wtime axis"
            if final is not None:
                g = f.require_group("final")
                if "theta" in g:
                    del g["theta"]
                g.create_dataset("theta", data=final.pop("theta"))
                g["theta"].attrs["units"] = "1"
                for k, v in final.items():
                    g.attrs[k] = v
                f.attrs["complete"] = True
            f.flush()  # write failures (a full disk) surface here, as an exception, not at deallocation
        self._pending_epochs.clear()
        self._pending_iters.clear()
        self._pending_records.clear()


# ---------------------------------------------------------------------------------------- reading
class RunLog:
    """Read-only access to a run log, with one-line errors for missing, truncated or foreign files."""

    def __init__(self, path: str):
        self.path = str(path)
        h5py = _h5py()
        if not os.path.exists(self.path):
            raise UsageError(f"{path}: no such file")
        try:
            self.f = h5py.File(self.path, "r", locking=False)
        except OSError:
            raise UsageError(f"{path}: not a readable HDF5 file (truncated or foreign?)") from None
        if self.f.attrs.get("format") != FORMAT:
            self.f.close()
            raise UsageError(f"{path}: not a hes_mpi run log")
        version = int(self.f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            self.f.close()
            raise UsageError(f"{path}: run log format {version} is newer than this hes_mpi")

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
        return {k: decode(v) for k, v in self.f["environment"].attrs.items()}

    @property
    def complete(self) -> bool:
        return bool(self.f.attrs["complete"])

    def table(self, group: str) -> dict[str, np.ndarray]:
        return {k: self.f[group][k][()] for k in self.f[group]}

    def names(self, attr: str) -> list[str]:
        """``op_names`` or ``phase_names`` of the call records, as stored (the schema's own lists for a log
        without them)."""
        default = {"op_names": OPS, "phase_names": PHASES}[attr]
        comm = self.f.get("comm")
        if comm is None or attr not in comm.attrs:
            return list(default)
        return decode_names(comm.attrs[attr])

    def records(self) -> dict[str, np.ndarray]:
        """The columns of ``/comm/records`` (empty dict when the log has none)."""
        return self.table("comm/records") if "comm/records" in self.f else {}

    def clock_offsets(self) -> np.ndarray | None:
        """``/clock/offset_start`` (per rank, s), or None when the run stopped before writing it."""
        return np.asarray(self.f["clock/offset_start"][()], dtype=np.float64) if "clock/offset_start" in self.f \
            else None

    def theta(self) -> np.ndarray | None:
        return self.f["final/theta"][()] if "final/theta" in self.f else None

    def summary(self) -> dict:
        cfg = self.config
        env = self.environment
        ep = self.table("epochs")
        it = self.table("iterations")
        kinds = it["kind"]
        last = {k: (float(v[-1]) if v.size else math.nan) for k, v in ep.items()}
        final_attrs = {k: decode(v) for k, v in self.f["final"].attrs.items()} if "final" in self.f else {}
        out = {
            "algo": cfg["algo"] + ("-assisted" if cfg["algo"] == "hes" and cfg.get("assisted") else ""),
            "ranks": int(env["ranks"]),
            "epochs": int(ep["epoch"].size),
            "iterations": int(kinds.size),
            "grad_steps": int(np.count_nonzero(np.isin(kinds, GRADIENT_KINDS))),
            "es_steps": int(np.count_nonzero(np.isin(kinds, ES_KINDS))),
            "train_acc": last["train_acc"],
            "dev_acc": last["dev_acc"],
            **collapse_summary(ep.get("dev_acc", np.zeros(0))),
            "train_loss": last["train_loss"],
            "dev_loss": last["dev_loss"],
            "wall_s": float(final_attrs.get("wall_s", last["wall_s"])),
            "median_epoch_s": float(np.median(ep["epoch_s"])) if ep["epoch_s"].size else math.nan,
            "param_count": int(env.get("param_count", 0)),
            "layers": env.get("layers"),
            "activation": cfg.get("activation", "sigmoid"),
            "init": cfg.get("init", "normal"),
            "complete": self.complete,
            "dataset": env.get("dataset"),
            "K": cfg["K"], "r": cfg["r"], "sigma2": cfg["sigma2"], "sigma_scale": cfg["sigma_scale"],
            "lr": cfg["lr"], "batch": cfg["batch"], "seed": cfg["seed"],
            "emulated_network": env.get("emulated_network") or None,
            "emulated_cluster": env.get("emulated_cluster") or None,
        }
        if final_attrs.get("diverged"):  # complete, but its last epoch is not a result: no final accuracy
            out.update({"diverged": True, "diverged_iteration": int(final_attrs["diverged_iteration"]),
                        "diverged_reason": str(final_attrs["diverged_reason"]), "train_acc": math.nan,
                        "dev_acc": math.nan, "train_loss": math.nan, "dev_loss": math.nan})
        else:
            out["diverged"] = False
        if "theta_checksum" in final_attrs:
            out["theta_checksum"] = int(final_attrs["theta_checksum"])
        theta = self.theta()
        out["theta_sha256"] = hashlib.sha256(theta.tobytes()).hexdigest() if theta is not None else None
        out.update(self.cost_summary(kinds, it, final_attrs, int(env["ranks"])))
        return out

    def cost_summary(self, kinds: np.ndarray, it: dict, final_attrs: dict, ranks: int) -> dict:
        """What the run cost: bytes, calls, time split and memory (the instrumented figures)."""
        rec = self.records()
        phase_names = self.names("phase_names")
        is_grad, is_es = np.isin(kinds, GRADIENT_KINDS), np.isin(kinds, ES_KINDS)
        n_grad, n_es = int(np.count_nonzero(is_grad)), int(np.count_nonzero(is_es))
        out: dict = {}
        if rec and rec["phase"].size:
            phase = rec["phase"]
            sent = rec["bytes_sent"]
            is_algo = np.isin(phase, [phase_names.index(p) for p in ALGORITHM_PHASES])
            grad = phase == phase_names.index("grad")
            es = phase == phase_names.index("es")
            out["comm_bytes_sent_per_rank"] = float(sent[is_algo].sum() / ranks)
            out["comm_wire_bytes_per_rank"] = float(rec["wire_bytes"][is_algo].sum() / ranks)
            out["grad_step_bytes_sent_per_rank"] = float(sent[grad].sum() / (ranks * n_grad)) if n_grad else 0.0
            out["es_step_bytes_sent_per_rank"] = float(sent[es].sum() / (ranks * n_es)) if n_es else 0.0
            out["comm_calls"] = float(np.count_nonzero(is_algo) / ranks)
            out["tool_bytes_sent_per_rank"] = float(sent[~is_algo].sum() / ranks)
        if "compute_s" in it and it["compute_s"].size:
            out["comm_time_s"] = float(it["comm_s"].sum(axis=0).mean())
            out["wait_time_s"] = float(it["wait_s"].sum(axis=0).mean())
            out["compute_time_s"] = float(it["compute_s"].sum(axis=0).mean())
            out["step_time_s"] = float(it["step_s"].sum(axis=0).mean())
            out["peak_rss_bytes"] = int(it["rss_hwm_bytes"].max())
            sb = it["step_bytes"].max(axis=1)
            tg = int(final_attrs.get("step_transient_bytes_grad", 0))
            te = int(final_attrs.get("step_transient_bytes_es", 0))
            out["step_transient_bytes_grad"] = tg
            out["step_transient_bytes_es"] = te
            out["step_peak_bytes_grad"] = int(sb[is_grad].max()) + tg if n_grad else 0
            out["step_peak_bytes_es"] = int(sb[is_es].max()) + te if n_es else 0
            for name, mask in (("grad", kinds == StepKind.GRAD), ("es", kinds == StepKind.ES)):
                if np.any(mask):
                    out[f"median_{name}_step_s"] = float(np.median(it["step_s"][mask].max(axis=1)))
        if "state_bytes" in final_attrs:  # the method's state, the noise table included (older logs: absent)
            out["state_bytes"] = int(final_attrs["state_bytes"])
            out["state_bytes_noise"] = int(final_attrs.get("state_bytes_noise", 0))
        out["theta_consistent"] = bool(final_attrs["theta_consistent"]) if "theta_consistent" in final_attrs else None
        return out

