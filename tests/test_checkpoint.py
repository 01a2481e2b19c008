"""Checkpoints on real files: a bitwise round trip, atomic replacement, and the refusals of load."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from hes_mpi import checkpoint
from hes_mpi.config import RunConfig
from hes_mpi.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def awkward_floats(n: int, seed: int) -> np.ndarray:
    """float32 values whose bit patterns a lossy round trip would change: NaN payloads, -0, inf, subnormals."""
    a = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    a[:6] = np.array([0x7FC00001, 0xFFC01234, 0x80000000, 0x7F800000, 0xFF800000, 0x00000001],
                     dtype=np.uint32).view(np.float32)
    return a


def make_state(seed: int = 0) -> dict:
    return {
        "theta": awkward_floats(1000, seed),
        "g": awkward_floats(1000, seed + 1),
        "counts": np.arange(-3, 4, dtype=np.int64).reshape(7, 1),
        "has_grad": True,
        "grad_var": 0.1 + seed,  # not a short binary fraction: any float32 detour would show
        "sigma_mult": 1.0 / 3.0,
        "epoch": 4 + seed,
        "batch": 7,
        "iteration": 2**40 + 3,  # beyond int32
        "ranks": 2,
        "rows_epochs": 4,
    }


def config(**changes) -> dict:
    return RunConfig(algo="hes", data="synthetic:800", hidden=16, out="run.h5", **changes).to_dict()


@pytest.fixture
def saved(tmp_path):
    path = str(tmp_path / "run.h5.ckpt")
    checkpoint.save(path, make_state(), config())
    return path


def test_default_path():
    assert checkpoint.default_path("runs/a.h5") == "runs/a.h5.ckpt"
    assert checkpoint.default_path(None) == "hes_mpi.ckpt"
    assert checkpoint.default_path("") == "hes_mpi.ckpt"


def test_round_trip_is_bitwise(saved):
    state = make_state()
    loaded = checkpoint.load(saved, config())
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape, k
            assert bits(loaded[k]) == bits(v), k
        else:
            assert type(loaded[k]) is type(v), (k, type(loaded[k]))
            assert loaded[k] == v, k
    # besides the state: the format tag and the configuration it was written with
    assert set(loaded) == set(state) | {"format", "config"}
    assert loaded["format"] == checkpoint.FORMAT
    assert json.loads(loaded["config"]) == config()


def test_save_replaces_atomically_and_leaves_no_tmp(tmp_path, saved):
    assert os.listdir(tmp_path) == ["run.h5.ckpt"]
    checkpoint.save(saved, make_state(seed=1), config())
    assert os.listdir(tmp_path) == ["run.h5.ckpt"]
    loaded = checkpoint.load(saved, config())
    assert loaded["epoch"] == 5 and bits(loaded["theta"]) == bits(make_state(seed=1)["theta"])
    with h5py.File(saved, "r") as f:  # a plain HDF5 file, readable by any tool
        assert f.attrs["format"] == checkpoint.FORMAT


def test_write_to_a_missing_folder_raises_oserror_naming_the_path(tmp_path):
    path = str(tmp_path / "no" / "such" / "folder" / "c.ckpt")
    with pytest.raises(OSError) as e:
        checkpoint.save(path, make_state(), config())
    assert path in str(e.value)
    assert e.value.errno == 2  # ENOENT, kept from the failing call
    assert os.listdir(tmp_path) == []


def test_write_failing_midway_keeps_the_previous_checkpoint(tmp_path, saved):
    """A write that fails after PATH.tmp is created and partly written (the file-size limit, as a full disk
    would; enforced for root too) removes PATH.tmp and leaves the old checkpoint untouched."""
    before = Path(saved).read_bytes()
    script = textwrap.dedent(f"""
        import json, resource, signal, sys
        import numpy as np
        from hes_mpi import checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        state = {{"theta": np.ones(100_000, np.float32), "epoch": 99}}
        try:
            checkpoint.save({saved!r}, state, {{}})
        except OSError as e:
            print(json.dumps({{"errno": e.errno, "message": str(e)}}))
            sys.exit(0)
        sys.exit("no OSError")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    err = json.loads(proc.stdout)
    assert err["errno"] == 27  # EFBIG
    assert f"cannot write checkpoint {saved}:" in err["message"]
    assert os.listdir(tmp_path) == ["run.h5.ckpt"]  # no PATH.tmp left behind
    assert Path(saved).read_bytes() == before
    assert checkpoint.load(saved, config())["epoch"] == 4


def test_load_refuses_other_essential_options(saved):
    with pytest.raises(UsageError) as e:
        checkpoint.load(saved, config(lr=1.0, K=3))
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(saved) and "(K, lr)" in msg  # the differing options, sorted, and only them


def test_load_refuses_an_option_missing_on_one_side(saved):
    newer = {**config(), "new_option": 1}
    with pytest.raises(UsageError, match=r"\(new_option\)"):
        checkpoint.load(saved, newer)
    older = config()
    del older["noise"]
    with pytest.raises(UsageError, match=r"\(noise\)"):
        checkpoint.load(saved, older)


def test_a_checkpoint_older_than_an_option_reads_it_as_the_old_runs_ran(tmp_path):
    """A checkpoint written before an option existed belongs to a run that ran as config.LEGACY says (else as
    the default), the rule by which sweeps reuse old run logs: a resume with that value continues, another
    value is refused by name."""
    path = str(tmp_path / "old.ckpt")

    def save_without(name, cfg):
        old = dict(cfg)
        del old[name]
        checkpoint.save(path, make_state(), old)

    save_without("es_rows_sample", config())
    assert checkpoint.load(path, config())["epoch"] == 4  # every row is every row, however picked
    save_without("es_rows_sample", config(es_rows=0.5))
    assert checkpoint.load(path, config(es_rows=0.5, es_rows_sample="head"))["epoch"] == 4
    with pytest.raises(UsageError, match=r"\(es_rows_sample\)"):
        checkpoint.load(path, config(es_rows=0.5))
    save_without("noise", config())
    assert checkpoint.load(path, config(noise="philox"))["epoch"] == 4
    with pytest.raises(UsageError, match=r"\(noise\)"):
        checkpoint.load(path, config())


def test_may_change_names_real_options():
    assert checkpoint.MAY_CHANGE <= {f.name for f in dataclasses.fields(RunConfig)}


def test_load_accepts_changes_of_the_options_that_may_change(saved):
    changed = {"epochs": 99, "out": "elsewhere.h5", "force": True, "resume": True, "checkpoint": "c.ckpt",
               "checkpoint_every": 5, "check_every": 3, "threads": 4, "eval_train": False, "sync_barrier": True,
               "data_dir": "/data", "collective_timeout": 30.0, "stall_factor": 10.0}
    assert set(changed) == checkpoint.MAY_CHANGE
    base = config()
    for k, v in changed.items():
        assert base[k] != v, k
        assert checkpoint.load(saved, {**base, k: v})["epoch"] == 4, k
    assert checkpoint.load(saved, {**base, **changed})["iteration"] == 2**40 + 3


def test_load_refuses_a_foreign_hdf5_file(tmp_path):
    path = str(tmp_path / "other.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("theta", data=np.zeros(3))
        f.attrs["config"] = json.dumps(config())
    with pytest.raises(UsageError) as e:
        checkpoint.load(path, config())
    assert str(e.value) == f"{path}: not a hes_mpi checkpoint"
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "hes_mpi.runlog"  # another hes_mpi file is not a checkpoint either
    with pytest.raises(UsageError, match="not a hes_mpi checkpoint"):
        checkpoint.load(path, config())


@pytest.mark.parametrize("content", ["garbage", "truncated", "empty", "missing"])
def test_load_refuses_an_unreadable_file_in_one_line(tmp_path, saved, content):
    path = tmp_path / "bad.ckpt"
    if content == "garbage":
        path.write_bytes(b"this is not HDF5\n" * 100)
    elif content == "truncated":
        data = Path(saved).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "empty":
        path.write_bytes(b"")
    with pytest.raises(UsageError) as e:
        checkpoint.load(str(path), config())
    assert str(e.value) == f"{path}: unreadable checkpoint"
