"""The timeline export: a real 2-rank run log, under the real mpiexec, into Chrome/Perfetto trace JSON."""

from __future__ import annotations

import collections
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import MPIEXEC, mpi_size, mpiexec_cmd

from hes_mpi.post.trace import chrome_trace
from hes_mpi.runlog import RunLog

SCRIPT = Path(__file__).resolve().parent.parent / "analysis" / "trace.py"
SLACK_US = 50_000.0  # clock alignment and scheduling noise allowed when checking that a collective lines up


def run_script(*args, timeout: float = 60):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def x_events(trace: dict, tid: int | None = None) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (tid is None or e["tid"] == tid)]


def assert_one_line_error(proc, fragment: str = ""):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("trace.py: error: "), lines[0]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def runlog(tmp_path_factory) -> Path:
    """A 2-rank Hybrid-ES run log on synthetic data, from the real CLI under mpiexec."""
    if MPIEXEC is None:
        pytest.skip("no mpiexec on PATH or in the venv (pip install mpich)")
    if mpi_size() > 1:
        pytest.skip("launches its own mpiexec: run serially")
    path = tmp_path_factory.mktemp("trace") / "run.h5"
    proc = subprocess.run([*mpiexec_cmd(2), sys.executable, "-m", "hes_mpi", "train", "--data", "synthetic:800",
                           "--hidden", "16", "--batch", "200", "--lr", "1", "--epochs", "2", "--algo", "hes",
                           "--out", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def records(runlog) -> dict:
    with RunLog(runlog) as rl:
        return rl.table("comm/records")


@pytest.fixture(scope="module")
def trace(runlog) -> dict:
    """The trace as the script writes it (default output name), read back as JSON."""
    out = runlog.with_suffix(".trace.json")
    proc = run_script(runlog)
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and str(out) in proc.stdout
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    return json.loads(text)


# ------------------------------------------------------------------------------------------ content
def test_one_named_process_per_rank_with_mpi_and_compute_threads(trace):
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    procs = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert sorted(procs.values()) == ["rank 0", "rank 1"]
    assert len(procs) == 2
    sort_index = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    assert set(sort_index) == set(procs)
    threads = collections.defaultdict(set)
    for e in meta:
        if e["name"] == "thread_name":
            threads[e["pid"]].add(e["args"]["name"])
    assert all(threads[pid] == {"MPI", "compute"} for pid in procs)
    assert {e["pid"] for e in x_events(trace)} <= set(procs)
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["ranks"] == 2 and trace["otherData"]["truncated"] is False


def test_complete_events_have_non_negative_times_starting_at_zero(trace):
    xs = x_events(trace)
    assert xs
    assert all(e["ts"] >= 0 and e["dur"] >= 0 for e in xs)
    assert min(e["ts"] for e in xs) == 0
    assert all(isinstance(e["ts"], (int, float)) and isinstance(e["dur"], (int, float)) for e in xs)


def test_one_mpi_event_per_record_named_by_op(trace, records, runlog):
    with RunLog(runlog) as rl:
        ops = list(rl.f["comm"].attrs["op_names"])
        phases = list(rl.f["comm"].attrs["phase_names"])
    mpi = [e for e in x_events(trace) if not e["name"].startswith("compute")]
    assert len(mpi) == records["rank"].size
    want = collections.Counter((int(r) + 1, ops[o], phases[p], int(s))
                               for r, o, p, s in zip(records["rank"], records["op"], records["phase"], records["seq"]))
    got = collections.Counter((e["pid"], e["name"], e["cat"], e["args"]["seq"]) for e in mpi)
    assert got == want
    assert all(set(e["args"]) == {"iteration", "bytes_sent", "bytes_recv", "wire_bytes", "seq"} for e in mpi)
    assert sum(e["args"]["bytes_sent"] for e in mpi) == int(records["bytes_sent"].sum())
    assert {"allreduce", "minloc"} <= {e["name"] for e in mpi}
    assert {"grad", "es"} <= {e["cat"] for e in mpi}


def test_compute_spans_fill_gaps_between_calls(trace):
    mpi_tid = {e["tid"] for e in x_events(trace) if not e["name"].startswith("compute")}
    compute = [e for e in x_events(trace) if e["name"].startswith("compute")]
    assert len(mpi_tid) == 1 and compute
    assert {e["tid"] for e in compute}.isdisjoint(mpi_tid)
    assert all(e["name"] == f"compute ({e['cat']})" for e in compute)
    assert {"compute (grad)", "compute (es)"} <= {e["name"] for e in compute}
    assert all(e["dur"] >= 1.0 for e in compute)
    assert {e["pid"] for e in compute} == {1, 2}
    # A compute span lies between two calls of its rank: it overlaps none of them.
    for pid in (1, 2):
        calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in x_events(trace) if e["pid"] == pid
                       and not e["name"].startswith("compute"))
        starts = np.array([c[0] for c in calls])
        for e in (c for c in compute if c["pid"] == pid):
            i = np.searchsorted(starts, e["ts"] + e["dur"] - 1e-3)  # first call starting at the span's end
            # The call before ends where the span begins, and the span ends where the next call begins
            # (times in us rounded to 1 ns: dur is the difference of the rounded ends, so they match exactly).
            assert abs(calls[i - 1][1] - e["ts"]) <= 1e-6
            assert abs(calls[i][0] - (e["ts"] + e["dur"])) <= 1e-6


def test_same_collective_overlaps_across_ranks(trace):
    by_seq = collections.defaultdict(dict)
    for e in x_events(trace):
        if not e["name"].startswith("compute") and e["args"]["seq"] >= 0:
            by_seq[e["args"]["seq"]][e["pid"]] = e
    assert len(by_seq) > 10
    for seq, evs in by_seq.items():
        assert set(evs) == {1, 2}, seq
        a, b = evs[1], evs[2]
        assert a["name"] == b["name"] and a["args"]["iteration"] == b["args"]["iteration"]
        later_entry = max(a["ts"], b["ts"])
        earlier_exit = min(a["ts"] + a["dur"], b["ts"] + b["dur"])
        assert later_entry <= earlier_exit + SLACK_US, (seq, a, b)


# ------------------------------------------------------------------------------------------ options
def test_iteration_filter(runlog, records, tmp_path):
    out = tmp_path / "it.json"
    proc = run_script(runlog, "-o", out, "--iterations", "2:5")
    assert proc.returncode == 0, proc.stderr
    t = json.loads(out.read_text())
    mpi = [e for e in x_events(t) if not e["name"].startswith("compute")]
    its = records["iteration"]
    assert len(mpi) == int(np.count_nonzero((its >= 2) & (its < 5))) > 0
    assert {e["args"]["iteration"] for e in x_events(t)} <= {2, 3, 4}
    assert min(e["ts"] for e in x_events(t)) == 0
    assert t["otherData"]["iterations"] == "2:5"
    # Open ends, in the library too.
    with RunLog(runlog) as rl:
        tail = chrome_trace(rl, iterations=(7, None))
        setup = chrome_trace(rl, iterations=(None, 0))
    assert {e["args"]["iteration"] for e in x_events(tail)} == {7, 8}
    assert {e["args"]["iteration"] for e in x_events(setup)} == {-1}


def test_max_events_keeps_the_earliest(runlog, tmp_path, trace):
    out = tmp_path / "few.json"
    proc = run_script(runlog, "-o", out, "--max-events", "25")
    assert proc.returncode == 0, proc.stderr
    t = json.loads(out.read_text())
    xs = x_events(t)
    assert len(xs) == 25
    assert t["otherData"]["truncated"] is True
    assert t["otherData"]["events_total"] == len(x_events(trace)) > 25
    assert "25" in t["otherData"]["truncated_note"]
    all_ts = sorted(e["ts"] for e in x_events(trace))
    assert max(e["ts"] for e in xs) <= all_ts[24]
    assert len([e for e in t["traceEvents"] if e["name"] == "process_name"]) == 2  # metadata kept


def test_existing_output_refused_without_force(runlog, tmp_path):
    out = tmp_path / "x.trace.json"
    out.write_text("keep me")
    proc = run_script(runlog, "-o", out)
    assert_one_line_error(proc, "--force")
    assert out.read_text() == "keep me"
    proc = run_script(runlog, "-o", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["traceEvents"]


def test_main_in_process_returns_exit_code(runlog, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("trace_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "m.json"
    assert mod.main([str(runlog), "-o", str(out), "--iterations", "0:2"]) == 0
    assert out.exists()
    assert mod.main([str(runlog), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad input
def test_foreign_truncated_and_missing_files_exit_2(runlog, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    assert_one_line_error(run_script(foreign), "not a hes_mpi run log")
    truncated = tmp_path / "truncated.h5"
    data = runlog.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    assert_one_line_error(run_script(truncated), "truncated.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n")
    assert_one_line_error(run_script(text), "notes.h5")
    assert_one_line_error(run_script(tmp_path / "missing.h5"), "no such file")
    assert not list(tmp_path.glob("*.json"))


def test_bad_options_exit_2(runlog, tmp_path):
    assert_one_line_error(run_script(runlog, "-o", tmp_path / "a.json", "--iterations", "5:2"), "--iterations")
    assert_one_line_error(run_script(runlog, "-o", tmp_path / "a.json", "--max-events", "0"), "--max-events")
    assert_one_line_error(run_script(runlog, "-o", tmp_path / "no_dir" / "a.json"), "does not exist")


def test_help_documents_every_option():
    proc = run_script("--help")
    assert proc.returncode == 0, proc.stderr
    for opt in ("RUN.h5", "-o", "--output", "--max-events", "--iterations", "--force"):
        assert opt in proc.stdout
