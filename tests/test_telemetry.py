"""Instrumentation as a user sees it: records and cost figures in the run log, OSU tables, a killed run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import MPIEXEC, kill_job, mpi_size, mpiexec_cmd, run_cli

from hes_mpi.collectives import wire_bytes as wire_bytes_model
from hes_mpi.runlog import RunLog
from hes_mpi.schema import PHASES, RECORD_DTYPE
from hes_mpi.telemetry import split_times, traced_peak

SYN = ["--data", "synthetic:800", "--hidden", "16", "--batch", "200", "--lr", "1", "--epochs", "2"]


def test_wire_bytes_model():
    assert wire_bytes_model("allreduce", 1000, 1) == 0
    assert wire_bytes_model("allreduce", 12, 4) == 2 * 12  # recursive doubling: log2(p) rounds
    assert wire_bytes_model("allreduce", 4_000_000, 2) == 4_000_000  # ring / Rabenseifner: 2(p-1)/p n
    assert wire_bytes_model("allreduce", 4_000_000, 4) == 6_000_000
    assert wire_bytes_model("allgather", 100, 4) == 300
    assert wire_bytes_model("gather", 100, 4, root=True) == 0


def test_split_times_assigns_waiting_to_the_early_rank():
    rec = np.zeros(4, RECORD_DTYPE)
    rec["seq"] = [0, 0, 1, 1]
    rec["phase"] = PHASES.index("grad")
    rec["iteration"] = [0, 0, 1, 1]
    # rank 0 enters at 1.0, rank 1 (clock 10 s ahead) at 11.003: rank 0 waits 3 ms, then 1 ms transfer
    rec["t_enter"] = [1.000, 11.003, 2.000, 12.000]
    rec["t_exit"] = [1.004, 11.004, 2.001, 12.001]
    ranks = np.array([0, 1, 0, 1])
    comm_s, wait_s = split_times(rec, ranks, np.array([0.0, 10.0]), np.array([0, 1]), 2)
    np.testing.assert_allclose(wait_s, [[0.003, 0.0], [0.0, 0.0]], atol=1e-9)
    np.testing.assert_allclose(comm_s, [[0.001, 0.001], [0.001, 0.001]], atol=1e-9)


def test_traced_peak_sees_numpy_buffers():
    peak, _ = traced_peak(lambda: np.ones(1_000_000).sum())
    assert 8_000_000 <= peak < 9_000_000


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("algo", ["bgd", "hes"])
def test_runlog_costs(tmp_path, n, algo):
    out = tmp_path / "run.h5"
    proc = run_cli(["train", *SYN, "--algo", algo, "--r", "2", "--K", "3", "--out", out], n=n)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(run_cli(["summary", out, "--json"], n=None).stdout)
    p = s["param_count"]
    assert s["grad_step_bytes_sent_per_rank"] == 4 * p  # exactly the flat float32 gradient
    if algo == "hes":
        assert 0 < s["es_step_bytes_sent_per_rank"] <= 32
        assert s["comm_bytes_sent_per_rank"] == 4 * p * s["grad_steps"] + 12 * s["es_steps"]
    else:
        assert s["es_step_bytes_sent_per_rank"] == 0
        assert s["comm_bytes_sent_per_rank"] == 4 * p * s["iterations"]
    assert s["comm_calls"] == s["iterations"]  # one collective per step
    assert s["theta_consistent"] is True
    for key in ("comm_time_s", "compute_time_s", "peak_rss_bytes", "step_peak_bytes_grad"):
        assert s[key] > 0
    assert s["step_peak_bytes_es"] > 0 if algo == "hes" else s["step_peak_bytes_es"] == 0
    with h5py.File(out, "r") as f:
        it = f["iterations"]
        split = it["compute_s"][()] + it["comm_s"][()] + it["wait_s"][()]
        assert np.all(split <= it["step_s"][()] + 1e-9)
        assert np.all(it["rss_hwm_bytes"][()] > 10_000_000)
        rec = f["comm/records"]
        phases = list(f["comm"].attrs["phase_names"])
        assert set(np.unique(rec["rank"][()])) == set(range(n))
        assert np.all(rec["t_exit"][()] >= rec["t_enter"][()])
        tel = rec["phase"][()] == phases.index("telemetry")
        assert np.count_nonzero(tel) > 0  # the log's own gathers are recorded, apart
        assert f["clock/offset_start"].shape == (n,)
        assert f["clock"].attrs["wtick"] > 0
        assert rec["t_exit"].attrs["units"].startswith("s")


def test_killed_run_leaves_a_readable_log(tmp_path):
    if MPIEXEC is None or mpi_size() > 1:
        pytest.skip("needs mpiexec, run serially")
    out = tmp_path / "killed.h5"
    cmd = [*mpiexec_cmd(2), sys.executable, "-m", "hes_mpi", "train", "--data", "synthetic:20000", "--hidden",
           "64", "--batch", "100", "--epochs", "1000", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        epochs = 0
        while time.time() < deadline and epochs < 2:
            time.sleep(0.3)
            with contextlib.suppress(Exception), RunLog(str(out)) as rl:  # not created yet, or mid-flush
                epochs = rl.table("epochs")["epoch"].size
        assert epochs >= 2, "the run did not flush two epochs in time"
    finally:
        kill_job(proc, str(out))
    with RunLog(str(out)) as rl:
        s = rl.summary()
        assert rl.complete is False and s["complete"] is False
        assert s["epochs"] >= 2 and s["iterations"] == 200 * s["epochs"]
        assert s["grad_step_bytes_sent_per_rank"] == 4 * s["param_count"]
        assert rl.theta() is None
    summary = run_cli(["summary", out, "--json"], n=None)
    assert summary.returncode == 0 and json.loads(summary.stdout)["complete"] is False


@pytest.mark.parametrize("op", ["allreduce", "allgather", "bcast"])
@pytest.mark.parametrize("raw", [False, True])
def test_osu_table(op, raw):
    args = ["bench", "osu", "--op", op, "--max-size", "64", "--iterations", "20", "--warmup", "5"]
    proc = run_cli(args + (["--raw"] if raw else []))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1].split() == ["#", "Size", "Avg", "Latency(us)", "Min", "Latency(us)", "Max", "Latency(us)",
                                "Iterations"]
    rows = [ln.split() for ln in lines[2:]]
    assert [int(r[0]) for r in rows] == [4, 8, 16, 32, 64]
    for r in rows:
        avg, lo, hi = map(float, r[1:4])
        assert 0 < lo <= avg <= hi and int(r[4]) == 20


def test_overhead_bench_smoke():
    proc = run_cli(["bench", "overhead", "--data", "synthetic:800", "--hidden", "16", "--batch", "200",
                    "--steps", "5"])
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["median_step_s_raw"] > 0 and d["record_cost_us"] > 0
    assert abs(d["instrumentation_overhead"]) < 5  # a smoke test: the figure itself is measured on MNIST


def test_bench_bad_input():
    proc = run_cli(["bench", "osu", "--min-size", "0"], n=None)
    assert proc.returncode == 2 and "--min-size" in proc.stderr


def test_held_bytes_counts_each_buffer_once_and_not_the_communicator():
    from hes_mpi.algorithms import make_algorithm
    from hes_mpi.comm import InstrumentedComm
    from hes_mpi.config import RunConfig
    from hes_mpi.model import MLP
    from hes_mpi.noise import NoiseTable, Perturbations
    from hes_mpi.telemetry import held_bytes

    comm = InstrumentedComm()
    m = MLP(784, 300, 10)
    bgd = make_algorithm(RunConfig(algo="bgd").validate(), m, comm, 500, 1000)
    assert held_bytes(bgd) >= 4 * m.param_count  # at least the stored gradient
    from hes_mpi.algorithms.base import StepInfo

    holder, buf = StepInfo(), np.zeros(1000, dtype=np.float32)
    holder.a, holder.b, holder.c, holder.d = buf, buf[10:], [buf[::2], {"x": buf}], comm  # views of one buffer
    assert comm.records.nbytes > 0 and held_bytes(holder) == buf.nbytes  # once; the communicator's records not
    hes = make_algorithm(RunConfig(algo="hes").validate(), m, comm, 500, 1000)  # output layer, the table
    table = NoiseTable(3010).nbytes
    assert held_bytes(hes, Perturbations) == table
    assert held_bytes(hes) >= table + 4 * m.param_count
    philox = make_algorithm(RunConfig(algo="hes", noise="philox").validate(), m, comm, 500, 1000)
    assert held_bytes(philox, Perturbations) < 0.01 * table
    local = make_algorithm(RunConfig(algo="localsgd").validate(), m, comm, 500, 1000)
    assert held_bytes(local) == pytest.approx(held_bytes(bgd) + 4 * m.param_count, abs=4096)  # its local copy


@pytest.mark.parametrize("noise", ["table", "philox", "counter"])
def test_the_run_log_counts_the_method_state_whole(tmp_path, noise):
    """H-ES's noise table is in the method's state, in the run log and in the savings table's whole memory; the
    counter source holds nothing of its own."""
    from hes_mpi.noise import NoiseTable
    from hes_mpi.post.tables import load_runs, savings_rows

    syn = ["--data", "synthetic:2000", "--hidden", "32", "--batch", "200", "--epochs", "1"]
    logs = [tmp_path / "bgd.h5", tmp_path / "hes.h5"]
    assert run_cli(["train", "--algo", "bgd", *syn, "--out", logs[0]]).returncode == 0
    proc = run_cli(["train", "--algo", "hes", "--noise", noise, *syn, "--out", logs[1]])
    assert proc.returncode == 0, proc.stderr
    with RunLog(str(logs[1])) as rl:
        s = rl.summary()
    n_out = 32 * 10 + 10  # --perturb output: the output layer
    expected_table = NoiseTable(n_out).nbytes if noise == "table" else 0
    if noise == "table":
        assert s["state_bytes_noise"] == expected_table
    elif noise == "counter":
        assert s["state_bytes_noise"] == 0
    else:
        assert s["state_bytes_noise"] < 4 * n_out * 2
    assert s["state_bytes"] > s["state_bytes_noise"]
    rows = {r["run"].split(",")[0]: r for r in savings_rows(load_runs([str(p) for p in logs]))}
    hes = next(v for k, v in rows.items() if k.startswith("H-ES"))
    bgd = rows["Reference (BGD)"]
    assert bgd["memory_whole_pct"] == pytest.approx(100)
    assert hes["state_bytes"] == s["state_bytes"]
    if noise == "table":  # a table of 1024 x the output layer outweighs everything BGD holds
        assert hes["memory_whole_pct"] > 150
