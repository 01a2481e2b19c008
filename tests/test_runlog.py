"""The HDF5 run log on real files: the documented schema, appending and reading back, resuming, the
errors of writer and reader, and summary() of a hand-written log and of a real 2-rank training run."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import run_cli

import hes_mpi
from hes_mpi import faultpoints, kernels
from hes_mpi.config import RunConfig
from hes_mpi.errors import UsageError
from hes_mpi.runlog import FORMAT_VERSION, RunLog, RunLogWriter, check_writable, collapse_summary
from hes_mpi.schema import OPS, PHASES, RECORD_DTYPE

# The schema as the module docstring documents it (written out here, so that code and docs cannot drift apart
# unnoticed).
DOC_EPOCHS = ["epoch", "iteration", "train_loss", "train_acc", "dev_loss", "dev_acc", "epoch_s", "eval_s", "wall_s"]
DOC_ITERATIONS = ["iteration", "epoch", "kind", "batch_loss", "grad_norm", "grad_var", "sigma", "es_cost", "es_rank",
                  "es_k"]
DOC_PER_RANK = ["step_s", "compute_s", "comm_s", "wait_s", "local_n", "rss_hwm_bytes", "step_bytes"]
DOC_RECORDS = ["rank", "seq", "op", "phase", "iteration", "bytes_sent", "bytes_recv", "wire_bytes", "t_enter",
               "t_exit"]
DOC_ROOT_ATTRS = ["format", "format_version", "complete", "created", "hes_mpi_version", "command"]
DOC_ENVIRONMENT = ["python", "numpy", "numba", "h5py", "mpi4py", "mpi_vendor", "mpi_library", "hostname", "ranks",
                   "threads_per_rank", "platform", "param_count", "n_train", "n_dev", "dataset", "layers"]
DOC_CLOCK = ["offset_start", "offset_end", "rtt_start", "rtt_end"]
DOC_FINAL_ATTRS = ["iterations", "wall_s", "theta_checksum", "theta_consistent", "consistency_checks",
                   "step_transient_bytes_grad", "step_transient_bytes_es"]

RANKS = 2
COMMAND = ["hes-mpi", "train", "--algo", "hes"]


def config() -> dict:
    return RunConfig(algo="hes", data="synthetic:800", hidden=16, batch=200, K=3, r=2, out="run.h5").to_dict()


def environment() -> dict:
    return {"python": "3.x", "ranks": RANKS, "param_count": 100, "dataset": "synthetic", "n_train": 800,
            "layers": "16-16-10", "threads_per_rank": 1}


def epoch_row(e: int) -> dict:
    return {"epoch": e, "iteration": 4 * (e + 1), "train_loss": 2.5 - 0.1 * e, "train_acc": 0.3 + 0.1 * e,
            "dev_loss": 2.6 - 0.1 * e, "dev_acc": 0.25 + 0.1 * e, "epoch_s": 0.5 + e, "eval_s": 0.125, "wall_s": 1.0 + e}


def iteration_cols(start: int, m: int, epoch: int) -> dict:
    """Columns of m iterations from ``start``, alternating gradient (even) and ES (odd) steps."""
    i = np.arange(start, start + m)
    kind = (i % 2).astype(np.uint8)
    es = kind == 1
    per_rank = np.add.outer(i, np.arange(RANKS))  # distinct per iteration and rank
    return {"iteration": i, "epoch": np.full(m, epoch), "kind": kind,
            "batch_loss": np.where(es, np.nan, 2.0 + 0.01 * i), "grad_norm": 1.0 + 0.5 * i,
            "grad_var": np.where(es, np.nan, 1e-3 * i), "sigma": np.where(es, 0.1, np.nan),
            "es_cost": np.where(es, -0.01 * i, np.nan), "es_rank": np.where(es, i % RANKS, -1),
            "es_k": np.where(es, i % 3, -1),
            "step_s": 0.01 * per_rank, "compute_s": 0.006 * per_rank, "comm_s": 0.003 * per_rank,
            "wait_s": 0.001 * per_rank, "local_n": 100 + per_rank, "rss_hwm_bytes": 10**8 + per_rank,
            "step_bytes": 1000 * (1 + per_rank)}


GRAD_BYTES = 400  # the flat gradient of a 100-parameter model


def records_for(iterations: np.ndarray, kinds: np.ndarray, seq0: int) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's records of the given iterations: one algorithm collective per step and one telemetry gather."""
    rows = []
    seq = seq0
    for i, k in zip(iterations, kinds, strict=True):
        for rank in range(RANKS):
            t = 10.0 * rank + i
            if k == 0:
                rows.append(((seq, OPS.index("allreduce"), PHASES.index("grad"), i, GRAD_BYTES, GRAD_BYTES,
                              GRAD_BYTES, t, t + 0.001), rank))
            else:
                rows.append(((seq, OPS.index("minloc"), PHASES.index("es"), i, 12, 12, 12, t, t + 0.0005), rank))
            rows.append(((seq + 1, OPS.index("gather"), PHASES.index("telemetry"), i, 64, 128 if rank == 0 else 0,
                          0 if rank == 0 else 64, t + 0.002, t + 0.003), rank))
        seq += 2
    rec = np.array([r for r, _ in rows], dtype=RECORD_DTYPE)
    return rec, np.array([rank for _, rank in rows])


def write_log(path, epochs: int = 2, per_epoch: int = 4, final: bool = True) -> dict:
    """A complete hand-written log; returns what was written."""
    w = RunLogWriter(str(path), False, config(), environment(), COMMAND)
    written = {"epochs": [], "iterations": [], "records": []}
    for e in range(epochs):
        cols = iteration_cols(e * per_epoch, per_epoch, e)
        recs = records_for(cols["iteration"], cols["kind"], 2 * e * per_epoch)
        w.add_iterations(cols)
        w.add_records(*recs)
        w.add_epoch(epoch_row(e))
        w.flush()
        written["epochs"].append(epoch_row(e))
        written["iterations"].append(cols)
        written["records"].append(recs)
    if final:
        w.set_clock(np.array([0.0, 10.0]), np.array([0.0, 1e-5]), np.array([0.0, 10.5]), np.array([0.0, 2e-5]),
                    1e-9, False)
        theta = np.random.default_rng(1).standard_normal(100).astype(np.float32)
        w.flush(final={"theta": theta.copy(), "iterations": epochs * per_epoch, "wall_s": 12.5,
                       "theta_checksum": int(kernels.checksum(theta)), "theta_consistent": True,
                       "consistency_checks": 3, "step_transient_bytes_grad": 1000, "step_transient_bytes_es": 500})
        written["theta"] = theta
    return written


def datasets(f) -> dict[str, h5py.Dataset]:
    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj  # (a callback that returns anything but None stops the visit)

    f.visititems(visit)
    return out


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


# ------------------------------------------------------------------------------------------ the schema
def test_new_file_has_the_documented_schema(tmp_path):
    path = tmp_path / "run.h5"
    RunLogWriter(str(path), False, {**config(), "checkpoint": None}, environment(), COMMAND)
    with h5py.File(path, "r") as f:
        assert sorted(f.attrs) == sorted(DOC_ROOT_ATTRS)
        assert f.attrs["format"] == "hes_mpi.runlog"
        assert f.attrs["format_version"] == 1 == FORMAT_VERSION
        assert not f.attrs["complete"] and isinstance(f.attrs["complete"], np.bool_)
        created = dt.datetime.fromisoformat(f.attrs["created"])
        assert created.tzinfo is not None and abs(dt.datetime.now(dt.UTC) - created).total_seconds() < 60
        assert f.attrs["hes_mpi_version"] == hes_mpi.__version__
        assert f.attrs["command"] == "hes-mpi train --algo hes"
        assert sorted(f) == ["comm", "config", "environment", "epochs", "iterations"]
        # /config: every RunConfig field (None as ""), and json with all of them
        assert set(f["config"].attrs) == set(config()) | {"json"}
        assert json.loads(f["config"].attrs["json"]) == config()
        assert f["config"].attrs["checkpoint"] == "" and f["config"].attrs["K"] == 3
        assert dict(f["environment"].attrs) == environment()
        assert sorted(f["epochs"]) == sorted(DOC_EPOCHS)
        assert sorted(f["iterations"]) == sorted(DOC_ITERATIONS + DOC_PER_RANK)
        assert sorted(f["comm/records"]) == sorted(DOC_RECORDS)
        assert list(f["comm"].attrs["op_names"]) == list(OPS)
        assert list(f["comm"].attrs["phase_names"]) == list(PHASES)
        assert list(f["comm"].attrs["algorithm_phases"]) == ["grad", "es"]
        assert "count x type size" in f["comm"].attrs["payload_rule"]
        ds = datasets(f)
        assert len(ds) == len(DOC_EPOCHS) + len(DOC_ITERATIONS) + len(DOC_PER_RANK) + len(DOC_RECORDS)
        for name, d in ds.items():
            assert isinstance(d.attrs["units"], str) and d.attrs["units"], name
            assert d.shape[0] == 0 and d.maxshape[0] is None and d.chunks is not None, name
            per_rank = name.split("/")[-1] in DOC_PER_RANK
            assert d.shape == ((0, RANKS) if per_rank else (0,)), name
        assert f["epochs/dev_acc"].attrs["units"] == "fraction"
        assert f["iterations/step_s"].attrs["units"] == "s"
        assert f["comm/records/bytes_sent"].attrs["units"] == "bytes"
        assert f["comm/records/t_enter"].attrs["units"].startswith("s")
        assert f["comm/records/rank"].dtype == np.int32
        for name in RECORD_DTYPE.names:
            assert f["comm/records"][name].dtype == RECORD_DTYPE[name], name


def test_final_flush_adds_clock_and_final_with_units(tmp_path):
    path = tmp_path / "run.h5"
    written = write_log(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["complete"]
        assert sorted(f["clock"]) == sorted(DOC_CLOCK)
        for k in DOC_CLOCK:
            assert f["clock"][k].shape == (RANKS,) and f["clock"][k].attrs["units"] == "s"
        assert same_bits(f["clock/offset_end"][()], [0.0, 10.5])
        assert f["clock"].attrs["wtick"] == 1e-9 and not f["clock"].attrs["wtime_is_global"]
        assert sorted(f["final"].attrs) == sorted(DOC_FINAL_ATTRS)
        assert f["final/theta"].dtype == np.float32 and same_bits(f["final/theta"][()], written["theta"])
        for name, d in datasets(f).items():
            assert d.attrs["units"], name


# ------------------------------------------------------------------------------------ writing and reading
def test_flush_appends_and_runlog_reads_back_exactly(tmp_path):
    path = tmp_path / "run.h5"
    written = write_log(path, epochs=3, per_epoch=4)
    with RunLog(str(path)) as rl:
        assert rl.complete is True
        assert rl.config == config()
        assert rl.environment == environment()
        ep = rl.table("epochs")
        assert sorted(ep) == sorted(DOC_EPOCHS)
        for name in DOC_EPOCHS:
            want = np.array([row[name] for row in written["epochs"]])
            assert ep[name].shape == (3,) and np.array_equal(ep[name], want), name
        it = rl.table("iterations")
        for name in DOC_ITERATIONS + DOC_PER_RANK:
            want = np.concatenate([c[name] for c in written["iterations"]])
            assert it[name].shape == want.shape, name
            assert same_bits(it[name].astype(np.float64), want.astype(np.float64)), name  # NaN where written
        assert it["step_s"].shape == (12, RANKS) and it["kind"].dtype == np.uint8
        rec = rl.table("comm/records")
        want_rec = np.concatenate([r for r, _ in written["records"]])
        want_rank = np.concatenate([k for _, k in written["records"]])
        assert np.array_equal(rec["rank"], want_rank)
        for name in RECORD_DTYPE.names:
            assert same_bits(rec[name], want_rec[name]), name
        assert same_bits(rl.theta(), written["theta"])
        assert rl.theta().dtype == np.float32


def test_flush_without_final_is_readable_and_incomplete(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, epochs=2, final=False)
    with RunLog(str(path)) as rl:
        assert rl.complete is False
        assert rl.theta() is None
        assert rl.table("epochs")["epoch"].tolist() == [0, 1]
        assert rl.table("iterations")["iteration"].tolist() == list(range(8))
        s = rl.summary()
    assert s["complete"] is False and s["theta_sha256"] is None and s["theta_consistent"] is None
    assert "theta_checksum" not in s
    assert s["wall_s"] == 2.0  # the last epoch's, without a final group
    with h5py.File(path, "r") as f:
        assert "final" not in f and "clock" not in f


def test_flush_with_nothing_pending_adds_nothing(tmp_path):
    path = tmp_path / "run.h5"
    w = RunLogWriter(str(path), False, config(), environment(), COMMAND)
    w.add_epoch(epoch_row(0))
    w.add_iterations(iteration_cols(0, 4, 0))
    w.add_records(*records_for(np.arange(4), np.arange(4) % 2, 0))
    w.flush()
    assert w.rows() == {"epochs": 1, "iterations": 4, "records": 4 * 2 * RANKS}
    w.flush()
    w.flush()
    assert w.rows() == {"epochs": 1, "iterations": 4, "records": 4 * 2 * RANKS}


def test_writer_does_not_touch_an_existing_file_without_force(tmp_path):
    path = tmp_path / "run.h5"
    path.write_bytes(b"precious")
    with pytest.raises(UsageError, match="exists; pass --force"):
        RunLogWriter(str(path), False, config(), environment(), COMMAND)
    assert path.read_bytes() == b"precious"
    RunLogWriter(str(path), True, config(), environment(), COMMAND)
    with RunLog(str(path)) as rl:
        assert rl.table("epochs")["epoch"].size == 0


# ------------------------------------------------------------------------------------------------ resume
def test_resume_cuts_every_table_back_to_the_checkpoint_rows(tmp_path):
    path = tmp_path / "run.h5"
    written = write_log(path, epochs=3, per_epoch=4)
    rows = {"epochs": 1, "iterations": 4, "records": 4 * 2 * RANKS}
    w = RunLogWriter(str(path), False, config(), environment(), ["hes-mpi", "train", "--resume"], resume_rows=rows)
    assert w.rows() == rows
    with h5py.File(path, "r") as f:
        assert not f.attrs["complete"] and f.attrs["resumed"] == 1
        assert f.attrs["command"] == "hes-mpi train --algo hes ; resumed: hes-mpi train --resume"
        assert "final" not in f
        for name, d in datasets(f).items():
            group = name.rsplit("/", 1)[0]
            if group in ("epochs", "iterations", "comm/records"):
                assert d.shape[0] == rows[group.split("/")[-1]], name
        assert f["iterations/step_s"].shape == (4, RANKS)
        assert same_bits(f["iterations/step_s"][()], written["iterations"][0]["step_s"])
        assert same_bits(f["comm/records/seq"][()], written["records"][0][0]["seq"])
    # the resumed run appends after the cut, and completes
    cols = iteration_cols(4, 4, 1)
    w.add_iterations(cols)
    w.add_records(*records_for(cols["iteration"], cols["kind"], 8))
    w.add_epoch(epoch_row(1))
    w.flush(final={"theta": np.zeros(100, np.float32), "theta_consistent": True})
    with RunLog(str(path)) as rl:
        assert rl.complete is True
        assert rl.table("epochs")["epoch"].tolist() == [0, 1]
        assert rl.table("iterations")["iteration"].tolist() == list(range(8))
        assert rl.table("comm/records")["seq"].size == 8 * 2 * RANKS
    RunLogWriter(str(path), False, config(), environment(), ["again"], resume_rows=rows)
    with h5py.File(path, "r") as f:
        assert f.attrs["resumed"] == 2 and f.attrs["command"].endswith("; resumed: again")


def test_resume_refuses_a_log_shorter_than_the_checkpoint(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, epochs=1, final=False)
    with pytest.raises(UsageError, match="fewer rows than the checkpoint"):
        RunLogWriter(str(path), False, config(), environment(), COMMAND,
                     resume_rows={"epochs": 5, "iterations": 4, "records": 0})
    with RunLog(str(path)) as rl:
        assert rl.table("epochs")["epoch"].size == 1


def test_resume_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(UsageError, match="not a hes_mpi run log; cannot resume"):
        RunLogWriter(str(path), False, config(), environment(), COMMAND,
                     resume_rows={"epochs": 0, "iterations": 0, "records": 0})


# -------------------------------------------------------------------------------------------------- kills
def life_of_a_log(path, per_epoch: int = 4) -> int:
    """The updates of a run log's life: creation, three epochs flushed, a resume cut back to the first epoch,
    the second epoch flushed again, the final flush (7 updates). Run in a child process that stops itself
    (SIGSTOP) at every point of every update (:mod:`hes_mpi.faultpoints`: each write to the file and each
    step between); returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        faultpoints.observe(lambda _path, _what: os.kill(os.getpid(), signal.SIGSTOP))
        write_log(path, epochs=3, per_epoch=per_epoch, final=False)
        rows = {"epochs": 1, "iterations": per_epoch, "records": per_epoch * 2 * RANKS}
        w = RunLogWriter(str(path), False, config(), environment(), ["hes-mpi", "train", "--resume"], resume_rows=rows)
        cols = iteration_cols(per_epoch, per_epoch, 1)
        w.add_iterations(cols)
        w.add_records(*records_for(cols["iteration"], cols["kind"], 2 * per_epoch))
        w.add_epoch(epoch_row(1))
        w.flush()
        w.flush(final={"theta": np.zeros(100, np.float32), "theta_consistent": True})
        status = 0
    finally:
        os._exit(status)


def test_a_kill_at_any_point_of_any_update_leaves_a_whole_run_log(tmp_path):
    """A SIGKILL can land anywhere in a flush (issue 21: an 'addr overflow' after one, and --resume failed).
    The writer is stopped at every point of every update of a log's life, and the file at the log's path,
    as a kill there would leave it, is read with RunLog: every state is readable, its tables agree with one
    another, and it is one of the states between two updates, never a torn one."""
    path = tmp_path / "run.h5"
    pid = life_of_a_log(path)
    points, states, status = 0, {}, None
    try:
        while True:
            _, status = os.waitpid(pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):
                break
            points += 1
            if path.exists():
                key = hashlib.sha256(path.read_bytes()).hexdigest()
                if key not in states:
                    states[key] = (points, state_of(path))
            os.kill(pid, signal.SIGCONT)
    finally:
        if status is None or os.WIFSTOPPED(status):  # never leave the writer stopped
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert points > 7 * 10  # every write of every update was a point
    bad = [(at, state) for at, state in states.values() if isinstance(state, str)]
    assert bad == [], f"{len(bad)} of {points} points leave an unreadable log, the first: {bad[:3]}"
    assert len(states) <= 7, f"{len(states)} different files at the log's path: torn updates"
    assert max(states.values())[1] == (2, True)  # the last state: complete


def state_of(path) -> tuple[int, bool] | str:
    """(epochs, complete) of the log at ``path`` read whole with RunLog, or why it cannot be."""
    try:
        with RunLog(str(path)) as rl:
            s = rl.summary()
            records = rl.records()
            theta = rl.theta()
        e = s["epochs"]
        assert s["iterations"] == 4 * e and records["seq"].size == 4 * 2 * RANKS * e, s
        assert s["complete"] == (theta is not None), s
        return e, s["complete"]
    except Exception as ex:  # noqa: BLE001  whatever a reader would meet
        return f"{type(ex).__name__}: {ex}"


# ---------------------------------------------------------------------------------------- check_writable
def test_check_writable(tmp_path):
    new = tmp_path / "new.h5"
    check_writable(new, force=False)  # nothing there: fine
    new.write_bytes(b"x")
    with pytest.raises(UsageError) as e:
        check_writable(new, force=False)
    assert str(e.value) == f"--out {new} exists; pass --force to overwrite it"
    check_writable(new, force=True)
    missing = tmp_path / "no" / "run.h5"
    with pytest.raises(UsageError) as e:
        check_writable(missing, force=True)
    assert str(e.value) == f"--out {missing}: folder {missing.parent} does not exist"
    with pytest.raises(UsageError) as e:
        check_writable(tmp_path, force=True)
    assert str(e.value) == f"--out {tmp_path} is a folder"
    with pytest.raises(UsageError) as e:
        check_writable(new, force=False, option="--trace")
    assert str(e.value).startswith(f"--trace {new} exists")
    with pytest.raises(UsageError) as e:
        check_writable(tmp_path, force=False, option="")
    assert str(e.value) == f"{tmp_path} is a folder"


def test_check_writable_relative_path_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_writable("run.h5", force=False)
    (tmp_path / "run.h5").write_bytes(b"x")
    with pytest.raises(UsageError, match="exists"):
        check_writable("run.h5", force=False)


# ----------------------------------------------------------------------------------------- reader errors
def test_runlog_errors_are_one_line(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(UsageError) as e:
        RunLog(str(missing))
    assert str(e.value) == f"{missing}: no such file"
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF not really\n" * 64)
    with pytest.raises(UsageError) as e:
        RunLog(str(garbage))
    assert str(e.value) == f"{garbage}: not a readable HDF5 file (truncated or foreign?)"
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=[1, 2, 3])
    with pytest.raises(UsageError) as e:
        RunLog(str(foreign))
    assert str(e.value) == f"{foreign}: not a hes_mpi run log"


def test_runlog_refuses_a_truncated_log(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(UsageError, match="not a readable HDF5 file"):
        RunLog(str(path))


def test_runlog_refuses_a_newer_format(tmp_path):
    path = tmp_path / "run.h5"
    write_log(path, epochs=1, final=False)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(UsageError) as e:
        RunLog(str(path))
    assert str(e.value) == f"{path}: run log format {FORMAT_VERSION + 1} is newer than this hes_mpi"
    with h5py.File(path, "w") as f:  # the reader closed it: the file can be rewritten
        f.attrs["x"] = 1


# ------------------------------------------------------------------------------------------------ collapse
NAN = math.nan


@pytest.mark.parametrize("acc, best, epoch, collapsed", [
    ([0.5, 0.7, 0.9], 0.9, 3, False),
    ([0.9, 0.8], 0.9, 1, True),  # 0.10 below the best
    ([0.9, 0.86], 0.9, 1, False),  # 0.04 below: within COLLAPSE_DROP
    ([0.9, 0.84], 0.9, 1, True),  # 0.06 below
    ([0.9, 0.2, 0.88], 0.9, 1, False),  # recovered by the last epoch
    ([0.8, 0.8, 0.8], 0.8, 1, False),  # ties: the first best epoch
    ([0.5, NAN, 0.9, NAN], 0.9, 3, False),  # NaN epochs ignored; the last finite one counts
    ([0.9, 0.5, NAN], 0.9, 1, True),
    ([NAN, 0.4], 0.4, 2, False),
    ([math.inf, 0.5], 0.5, 2, False),
])
def test_collapse_summary(acc, best, epoch, collapsed):
    s = collapse_summary(np.array(acc))
    assert s == {"best_dev_acc": best, "best_dev_epoch": epoch, "collapsed": collapsed}
    assert type(s["best_dev_epoch"]) is int and type(s["collapsed"]) is bool and type(s["best_dev_acc"]) is float


@pytest.mark.parametrize("acc", [[], [NAN], [NAN, NAN]])
def test_collapse_summary_without_a_finite_epoch(acc):
    s = collapse_summary(np.array(acc))
    assert math.isnan(s["best_dev_acc"]) and s["best_dev_epoch"] == 0 and s["collapsed"] is False


# ------------------------------------------------------------------------------------------------- summary
def test_summary_of_a_hand_written_log(tmp_path):
    path = tmp_path / "run.h5"
    written = write_log(path, epochs=2, per_epoch=4)
    with RunLog(str(path)) as rl:
        s = rl.summary()
    assert s["algo"] == "hes" and s["ranks"] == RANKS and s["complete"] is True
    assert (s["epochs"], s["iterations"], s["grad_steps"], s["es_steps"]) == (2, 8, 4, 4)
    assert s["train_acc"] == epoch_row(1)["train_acc"] and s["dev_loss"] == epoch_row(1)["dev_loss"]
    assert s["best_dev_epoch"] == 2 and s["collapsed"] is False
    assert s["wall_s"] == 12.5  # the final attribute wins over the last epoch's
    assert s["median_epoch_s"] == 1.0
    assert (s["K"], s["r"], s["batch"], s["param_count"], s["dataset"]) == (3, 2, 200, 100, "synthetic")
    assert s["emulated_network"] is None
    assert s["theta_sha256"] == hashlib.sha256(written["theta"].tobytes()).hexdigest()
    assert s["theta_checksum"] == int(kernels.checksum(written["theta"]))
    assert s["theta_consistent"] is True
    # costs: only the grad/es phases are the algorithm's; the telemetry gathers are the tool's
    assert s["grad_step_bytes_sent_per_rank"] == GRAD_BYTES
    assert s["es_step_bytes_sent_per_rank"] == 12
    assert s["comm_bytes_sent_per_rank"] == 4 * GRAD_BYTES + 4 * 12
    assert s["comm_wire_bytes_per_rank"] == 4 * GRAD_BYTES + 4 * 12
    assert s["comm_calls"] == 8
    assert s["tool_bytes_sent_per_rank"] == 8 * 64
    # times: per-rank sums, averaged over the ranks (rank r's row i is (i + r) x the unit)
    units = np.add.outer(np.arange(8), np.arange(RANKS)).sum(axis=0).mean()
    assert s["step_time_s"] == pytest.approx(0.01 * units)
    assert s["comm_time_s"] == pytest.approx(0.003 * units)
    assert s["wait_time_s"] == pytest.approx(0.001 * units)
    assert s["compute_time_s"] == pytest.approx(0.006 * units)
    assert s["peak_rss_bytes"] == 10**8 + 7 + RANKS - 1
    assert s["step_peak_bytes_grad"] == 1000 * (1 + 6 + RANKS - 1) + 1000  # iteration 6 is the last grad step
    assert s["step_peak_bytes_es"] == 1000 * (1 + 7 + RANKS - 1) + 500
    assert s["median_grad_step_s"] == pytest.approx(0.01 * (3 + RANKS - 1))  # max over ranks of 0, 2, 4, 6
    assert s["median_es_step_s"] == pytest.approx(0.01 * (4 + RANKS - 1))
    json.dumps(s)  # plain values only: `hes-mpi summary --json` prints it


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real run: H-ES on the synthetic data, 2 epochs, under mpiexec -n 2."""
    out = tmp_path_factory.mktemp("trained") / "run.h5"
    proc = run_cli(["train", "--algo", "hes", "--data", "synthetic", "--epochs", "2", "--out", out], n=2)
    assert proc.returncode == 0, proc.stderr
    return out


def test_summary_of_a_real_training_run(trained):
    with RunLog(str(trained)) as rl:
        s = rl.summary()
        theta = rl.theta()
        cfg = rl.config
        kinds = rl.table("iterations")["kind"]
        ep = rl.table("epochs")
    assert s["complete"] is True and s["theta_consistent"] is True
    assert s["ranks"] == 2 and s["epochs"] == 2 == ep["epoch"].size
    assert s["iterations"] == 8  # 4000 synthetic examples in batches of 1000
    r = cfg["r"]
    assert s["grad_steps"] + s["es_steps"] == s["iterations"]
    assert s["grad_steps"] == math.ceil(s["iterations"] / r)  # every r-th iteration, from the first
    assert kinds.tolist() == [0 if i % r == 0 else 1 for i in range(8)]
    p = s["param_count"]
    assert p == theta.size and theta.dtype == np.float32
    assert s["grad_step_bytes_sent_per_rank"] == 4 * p
    assert s["es_step_bytes_sent_per_rank"] == 12  # one MINLOC of a (double, int) per ES step
    assert s["comm_bytes_sent_per_rank"] == 4 * p * s["grad_steps"] + 12 * s["es_steps"]
    assert s["comm_calls"] == s["iterations"]
    assert s["theta_sha256"] == hashlib.sha256(theta.tobytes()).hexdigest()
    assert s["theta_checksum"] == int(kernels.checksum(theta))
    assert s["train_acc"] == ep["train_acc"][-1] and s["dev_acc"] == ep["dev_acc"][-1]
    assert (s["algo"], s["K"], s["r"], s["lr"], s["batch"]) == ("hes", cfg["K"], r, cfg["lr"], 1000)
    assert s["dataset"] == "synthetic"


def test_real_run_log_has_the_documented_schema(trained):
    with h5py.File(trained, "r") as f:
        assert set(DOC_ROOT_ATTRS) <= set(f.attrs)
        assert set(DOC_ENVIRONMENT) <= set(f["environment"].attrs)
        assert int(f["environment"].attrs["ranks"]) == 2
        assert sorted(f["clock"]) == sorted(DOC_CLOCK)
        assert set(DOC_FINAL_ATTRS) <= set(f["final"].attrs)
        assert int(f["final"].attrs["iterations"]) == 8
        for name, d in datasets(f).items():
            assert isinstance(d.attrs.get("units"), str) and d.attrs["units"], name
        assert f["iterations/step_s"].shape == (8, 2)
        assert set(np.unique(f["comm/records/rank"][()])) == {0, 1}


def test_the_flushes_collection_scans_only_what_training_made(tmp_path):
    """Each flush runs a full garbage collection (to see late write errors). With Numba loaded a full scan
    covers about 110,000 setup objects, 0.1-0.2 s an epoch here (a 150-epoch run took 58 s instead of 15);
    setup's objects are frozen before the loop (and thawed after it), so every flush's collection meets only
    the objects made since. The child records what each collection in a flush would scan."""
    script = f"""
import gc, json, sys
from hes_mpi import runlog
from hes_mpi.cli import main
seen = []
real = gc.collect
def collect(*a):
    if sys._getframe(1).f_code.co_name == "flush":  # the run log's flush (gc.collect is the one function)
        seen.append((gc.get_freeze_count(), len(gc.get_objects())))
    return real(*a)
runlog.gc.collect = collect
status = main(["train", "--data", "synthetic:400", "--hidden", "8", "--batch", "100", "--epochs", "3",
               "--threads", "1", "--out", {str(tmp_path / "run.h5")!r}])
json.dump({{"status": status, "seen": seen, "after": gc.get_freeze_count()}}, sys.stdout)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["status"] == 0
    assert len(out["seen"]) == 8, out["seen"]  # two a flush: 3 epochs, then the end's, after the thaw
    for frozen, scanned in out["seen"][:6]:
        assert frozen > 50_000 and scanned < frozen / 4, out["seen"]
    assert out["after"] == 0  # undone when the run ends: a sweep's next run collects what this one left
