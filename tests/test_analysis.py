"""Analysis scripts, the main job and network emulation, run as a user runs them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import run_cli

from hes_mpi.collectives import collective_time, parse_network
from hes_mpi.schema import StepKind

ROOT = Path(__file__).resolve().parents[1]
SYN = ["--data", "synthetic:800", "--hidden", "16", "--batch", "200", "--lr", "1"]


def script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "analysis" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """The main job on a small synthetic problem: 4 runs, tables and figures in one folder."""
    out = tmp_path_factory.mktemp("suite") / "cmp"
    proc = run_cli([*SYN, "--epochs", "3", "--K", "4", "--out-dir", out])  # no command: the main job
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_main_job_writes_logs_tables_and_figures(suite):
    out, proc = suite
    for name in ("bgd.h5", "hes_assisted.h5", "hes_r2.h5", "hes_r3.h5", "accuracy.md", "accuracy.csv",
                 "savings.md", "savings.csv", "training.png", "budget.png", "time_split.png", "memory.png",
                 "gradient.png"):
        assert (out / name).stat().st_size > 0, name
    assert "Reference (BGD)" in proc.stdout and "Assisted H-ES (r = 1)" in proc.stdout
    assert "H-ES, r = 3" in proc.stdout and "Net BW" in proc.stdout
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_savings_are_measured(suite):
    out, _ = suite
    with open(out / "savings.csv", newline="") as f:
        rows = {r["run"].split(" [")[0]: r for r in csv.DictReader(f)}  # label without its [methods]
    assert float(rows["Reference (BGD)"]["net_bw_pct"]) == pytest.approx(100)
    # r = 2: gradients every other iteration (plus 12 bytes on the others): about half the bytes
    assert float(rows["H-ES, r = 2"]["net_bw_pct"]) == pytest.approx(50, abs=1.5)
    assert float(rows["H-ES, r = 3"]["net_bw_pct"]) == pytest.approx(100 / 3, abs=1.5)
    assert float(rows["Reference (BGD)"]["runtime_pct"]) == pytest.approx(100)
    # Runtime % is the ratio of the logged training times (12 iterations of a tiny network: which run is
    # faster is noise here, so the figure is checked against the logs, not against an expected order)
    def train_s(name):
        with h5py.File(out / name, "r") as f:
            return float(np.sum(f["epochs/epoch_s"][()])), f["iterations/kind"][()]

    (bgd_s, _), (assisted_s, kinds) = train_s("bgd.h5"), train_s("hes_assisted.h5")
    assert np.all(kinds == StepKind.ASSISTED)  # every iteration of assisted H-ES: a gradient and an ES step
    assert float(rows["Assisted H-ES (r = 1)"]["runtime_pct"]) == pytest.approx(100 * assisted_s / bgd_s, rel=1e-6)
    assert float(rows["H-ES, r = 2"]["memory_pct"]) > 0


def test_compare_script(suite):
    out, _ = suite
    logs = sorted(out.glob("*.h5"))
    proc = script("compare.py", *logs)
    assert proc.returncode == 0, proc.stderr
    assert "| Reference (BGD) |" in proc.stdout and "Runtime" in proc.stdout
    csv = script("compare.py", *logs, "--csv")
    assert "dev_acc" in csv.stdout and "runtime_pct" in csv.stdout


def test_compare_reports_seeds_as_mean_and_spread(tmp_path):
    logs = []
    for seed in (0, 1):
        logs.append(tmp_path / f"s{seed}.h5")
        assert run_cli(["train", *SYN, "--epochs", "2", "--seed", seed, "--out", logs[-1]], n=1).returncode == 0
    proc = script("compare.py", *logs)
    assert "| 2 |" in proc.stdout and "±" in proc.stdout


def test_plots_script(suite, tmp_path):
    out, _ = suite
    proc = script("plots.py", *sorted(out.glob("*.h5")), "--out-dir", tmp_path / "figs")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "figs").glob("*.png")) == sorted(
        ["training.png", "budget.png", "time_split.png", "memory.png", "gradient.png", "pareto.png"])


@pytest.mark.parametrize("name", ["compare.py", "plots.py", "project.py", "trace.py"])
def test_scripts_help_and_bad_files(name, tmp_path):
    assert script(name, "--help").returncode == 0
    missing = script(name, tmp_path / "nope.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    for proc in (missing, script(name, foreign), script(name, trunc)):
        assert proc.returncode == 2, (name, proc.stdout, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def small_logs(tmp_path_factory):
    """BGD, H-ES r = 2 and gradient reuse r = 2 on 2 ranks, one seed, 2 epochs: one small sweep (one MPI job)
    whose logs every analysis script reads."""
    d = tmp_path_factory.mktemp("small")
    (d / "small.params").write_text("bgd --algo bgd\nhes_r2 --algo hes --r 2 --K 4\nreuse_r2 --algo reuse --r 2\n")
    proc = run_cli(["sweep", d / "small.params", "--seeds", "0", "--args=" + " ".join([*SYN, "--epochs", "2"]),
                    "--out-dir", d / "logs"], timeout=900)
    assert proc.returncode == 0, proc.stderr
    return {p.name.split("_s")[0]: p for p in (d / "logs").glob("*.h5")}


def piped_args(name: str, logs: dict, out: Path) -> list:
    """Arguments of each analysis script over ``small_logs`` (its --out-dir ``out``, where it has one). project.py
    prints JSON: its Markdown of these logs (4.1 KB) happened to end quietly in a closed pipe even without
    run_script (CPython 3.11 left that write's failure unreported), its JSON did not."""
    every = sorted(logs.values())
    return {"compare.py": [*every, "--out-dir", out], "plots.py": [*every, "--out-dir", out],
            "project.py": [logs["bgd"], logs["hes_r2"], "--json"], "scale.py": [*every, "--out-dir", out],
            "size.py": [*every, "--out-dir", out], "trace.py": [logs["bgd"], "-o", out / "bgd.trace.json"]}[name]


def into_closed_pipe(cmd: list, buffered: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` with its standard output into a pipe whose reader has gone before it writes a byte (as
    `head -1` has once it has its line), so every write fails: at exit when Python buffers the output (a pipe,
    by default), in the first print under PYTHONUNBUFFERED."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    try:
        return subprocess.run([sys.executable, *map(str, cmd)], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=env, timeout=600, check=False)
    finally:
        os.close(write)


def assert_quiet(proc, status: int = 0) -> None:
    assert proc.returncode == status, proc.stderr
    for text in ("Traceback", "BrokenPipe", "Exception ignored"):
        assert text not in proc.stderr, proc.stderr


@pytest.mark.parametrize("name, buffered", [(p.name, True) for p in sorted((ROOT / "analysis").glob("*.py"))]
                         + [("compare.py", False)])
def test_scripts_end_quietly_when_the_reader_stops_early(small_logs, tmp_path, name, buffered):
    """`python analysis/X.py ... | head -1`: no traceback, exit status 0, and the files of --out-dir written."""
    out = tmp_path / "out"
    out.mkdir()
    assert_quiet(into_closed_pipe([ROOT / "analysis" / name, *piped_args(name, small_logs, out)], buffered))
    if name != "project.py":
        assert any(out.iterdir()), name  # written before the output that nobody reads


def test_hes_mpi_ends_quietly_when_the_reader_stops_early(small_logs):
    """The same for hes-mpi (its status there: 1), whose buffered output used to fail again at exit."""
    assert_quiet(into_closed_pipe(["-m", "hes_mpi", "summary", small_logs["bgd"]]), status=1)

def test_emulated_1gbe_slows_bgd_steps_by_the_modelled_amount():
    """With an emulated network the measured BGD step time grows by the modelled amount (within 20%): steps with
    and without emulation interleaved on the same batch, median of the paired differences. The network is 1 GbE's
    bandwidth with a 5 ms latency: a busy-waiting rank preempted on a loaded host overshoots its hold by up to a
    scheduler slice (1 GbE's own 1.5 ms grew by 2.8 ms on a host with a second job running), which 5 ms keeps
    within the bound."""
    spec = f"0.005,{parse_network('1gbe')[2]:g}"
    proc = run_cli(["bench", "emulation", "--network", spec, "--data", "synthetic:4000", "--hidden", "1024",
                    "--batch", "400", "--steps", "60"])
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    _, alpha, beta = parse_network(spec)
    assert d["modelled_s"] == pytest.approx(collective_time("allreduce", d["gradient_bytes"], 2, alpha, beta))
    assert d["step_growth_s"] == pytest.approx(d["modelled_s"], rel=0.2)


def test_emulated_training_run_records_it(tmp_path):
    """End to end: a training run under --emulate-net spends the modelled time in its Allreduces and says so."""
    args = ["train", *SYN, "--epochs", "2", "--no-eval-train"]
    comm = {}
    for name, extra in (("local", []), ("slow", ["--emulate-net", "0.005,1e-9"])):
        out = tmp_path / f"{name}.h5"
        proc = run_cli([*args, *extra, "--out", out])
        assert proc.returncode == 0, proc.stderr
        with h5py.File(out, "r") as f:
            comm[name] = float(np.median(f["iterations/comm_s"][()].max(axis=1)))
            p = int(f["environment"].attrs["param_count"])
    # 5 ms latency: well above the noise (with 2 ms, a host running a second job added 1.1-1.4 ms to the hold)
    modelled = collective_time("allreduce", 4 * p, 2, 0.005, 1e-9)
    assert comm["slow"] - comm["local"] == pytest.approx(modelled, rel=0.2)
    s = json.loads(run_cli(["summary", tmp_path / "slow.h5", "--json"], n=None).stdout)
    assert s["emulated_network"] == parse_network("0.005,1e-9")[0]


def test_bad_emulation_spec():
    proc = run_cli(["train", *SYN, "--emulate-net", "carrier-pigeon"])
    assert proc.returncode == 2 and "carrier-pigeon" in proc.stderr


def test_labels_name_the_es_methods_and_old_logs_count_as_plain():
    from hes_mpi.config import RunConfig, method_label, run_label

    old = {k: v for k, v in RunConfig(algo="hes", r=2).to_dict().items()
           if k not in ("perturb", "baseline", "antithetic", "recombine", "carry", "adapt_sigma", "dist", "es_rows",
                        "es_step")}
    assert method_label(old) == "plain" and run_label(old) == "H-ES, r = 2 [plain]"
    cfg = {**old, "perturb": "output", "baseline": True, "recombine": "weighted", "es_rows": 0.5}
    assert method_label(cfg) == "output layer, baseline, weighted recombination, 0.5 of rows"
    assert run_label({**cfg, "assisted": True}).startswith("Assisted H-ES (r = 1) [output layer")
    assert run_label({"algo": "bgd"}) == "Reference (BGD)"
    assert method_label(RunConfig(algo="hes").to_dict()) == "output layer, baseline, ES step auto"
