"""Checkpoints: everything a run needs to continue bitwise-identically, written atomically.

A checkpoint is a small HDF5 file written by rank 0 (parameters and optimizer state are bitwise equal on
all ranks): ``theta``, the last full gradient ``g`` (H-ES perturbs it), ``has_grad``, the algorithm's scalars
(H-ES: ``grad_var`` and the ``--adapt-sigma`` multiplier ``sigma_mult``), the
position (``epoch``, ``batch`` within the epoch, ``iteration``), the run log's row counts at that point,
and the run's configuration. There is no random-generator state to save: minibatches come from
``(seed, epoch)`` and perturbations from ``(seed, iteration, rank, k)``, so the position is enough.

It is written to ``PATH.tmp``, flushed to disk, then renamed over ``PATH``: a crash, a full disk or a
kill at any moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np

from .config import MAY_CHANGE_ON_RESUME, RunConfig, result_options
from .errors import UsageError

FORMAT = "hes_mpi.checkpoint"

#: Options that may differ between the interrupted run and its resumption (kept in :mod:`hes_mpi.config`).
MAY_CHANGE = MAY_CHANGE_ON_RESUME


def default_path(out: str | None) -> str:
    return f"{out}.ckpt" if out else "hes_mpi.ckpt"


def save(path: str, state: dict, config: dict) -> None:
    """Write ``state`` (arrays and scalars) atomically to ``path``."""
    import h5py

    image = io.BytesIO()  # built in memory, so that only plain file writes can fail on disk
    with h5py.File(image, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["config"] = json.dumps(config, sort_keys=True)
        for k, v in state.items():
            if isinstance(v, np.ndarray):
                f.create_dataset(k, data=v)
            else:
                f.attrs[k] = v
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(image.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write checkpoint {path}: {e.strerror or e}") from None


def load(path: str, config: dict) -> dict:
    """Read a checkpoint and check that it belongs to a run with the same essential options."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise UsageError(f"{path}: not a hes_mpi checkpoint")
            saved = json.loads(f.attrs["config"])
            state = {k: f[k][()] for k in f}
            state.update({k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()})
    except OSError:
        raise UsageError(f"{path}: unreadable checkpoint") from None
    saved, now = _as_run(saved), _as_run(config)
    diff = sorted(k for k in set(saved) | set(now) if k not in MAY_CHANGE and saved.get(k) != now.get(k))
    if diff:
        raise UsageError(f"{path} was written with other options ({', '.join(diff)}); cannot resume with these")
    return state


def _as_run(config: dict) -> dict:
    """The options that decide what a run computes, as it ran: an option newer than the checkpoint reads as
    the runs before it ran (:func:`hes_mpi.config.result_options`, the rule by which sweeps reuse old logs);
    an option this version does not know is kept as it is, and so refused unless both sides have it equal."""
    known = {f.name for f in fields(RunConfig)}
    return {**result_options(config), **{k: v for k, v in config.items() if k not in known}}


def log_to_start_afresh(out: str) -> bool:
    """``--resume`` found no checkpoint for run log ``out``: True when an unfinished log is there, left by a
    run stopped before its first checkpoint; it holds nothing to continue from and is replaced (a requeued
    job always passes --resume). A finished log is a result: UsageError, not overwritten without --force."""
    from .runlog import RunLog

    if not os.path.exists(out):
        return False
    try:
        with RunLog(out) as rl:
            done = rl.complete
    except UsageError:  # not a whole run log (left by a crash of an old version): nothing to continue
        return True
    if done:
        raise UsageError(f"--resume: {out} is a finished run and there is no checkpoint to continue from; "
                         "pass --force to train it again")
    return True
