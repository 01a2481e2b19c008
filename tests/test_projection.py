"""Projection of epoch times to N nodes, the crossover, and analysis/project.py run as a user runs it."""

from __future__ import annotations

import csv
import importlib.util
import io
import itertools
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hes_mpi import collectives as nm
from hes_mpi.errors import UsageError
from hes_mpi.post import fit as fitting
from hes_mpi.post import projection
from hes_mpi.runlog import RunLog

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analysis" / "project.py"


# ------------------------------------------------------------------------------------------ projection
def costs(algo="bgd", cg=5e-3, ce=50e-3, ca=None, r=2, params=238510, ranks=2, iters=50, assisted=False):
    return projection.StepCosts(label=f"{algo}.h5", algo=algo, assisted=assisted, r=r, K=8, ranks=ranks, param_count=params,
                        batch=1000, n_train=50000, iterations_per_epoch=iters,
                        compute_grad_s=None if assisted else cg, compute_es_s=None if algo == "bgd" or assisted else ce,
                        compute_assisted_s=ca, median_epoch_s=None)


NODES = [2**k for k in range(1, 11)]


def test_bgd_epoch_grows_with_nodes_on_1gbe():
    rows = projection.project(costs("bgd"), "1gbe", NODES)
    epochs = [r["bgd_epoch_s"] for r in rows]
    assert all(b > a for a, b in itertools.pairwise(epochs))
    assert all(r["hes_epoch_s"] is None and r["hes_over_bgd"] is None for r in rows)
    alpha, beta = nm.PRESETS["1gbe"][:2]
    r0 = rows[0]
    assert r0["bgd_iteration_s"] == pytest.approx(5e-3 + nm.allreduce_time(4 * 238510, 2, alpha, beta))
    assert r0["bgd_epoch_s"] == pytest.approx(50 * r0["bgd_iteration_s"])


def test_hes_moves_only_twelve_bytes_per_es_step():
    both = [costs("bgd"), costs("hes")]
    for row in projection.project(both, "1gbe", NODES):
        n = row["nodes"]
        alpha, beta = nm.PRESETS["1gbe"][:2]
        ar = nm.allreduce_time(4 * 238510, n, alpha, beta)
        ml = nm.allreduce_time(12, n, alpha, beta)
        assert ml == pytest.approx(math.ceil(math.log2(n)) * (alpha + 12 * beta))
        assert row["hes_comm_s"] == pytest.approx((ar + ml) / 2)
        assert row["hes_iteration_s"] == pytest.approx((5e-3 + ar + 50e-3 + ml) / 2)
        assert row["hes_over_bgd"] == pytest.approx(row["hes_epoch_s"] / row["bgd_epoch_s"])
    # an H-ES log alone is projected alone
    rows = projection.project(costs("hes"), "10gbe", [4])
    assert rows[0]["bgd_epoch_s"] is None and rows[0]["hes_epoch_s"] > 0


def test_strong_scaling_divides_compute():
    weak = projection.project(costs("bgd"), "ib-hdr", [2, 64], "weak")
    strong = projection.project(costs("bgd"), "ib-hdr", [2, 64], "strong")
    assert strong[0]["bgd_epoch_s"] == pytest.approx(weak[0]["bgd_epoch_s"])  # measured on 2 ranks
    assert strong[1]["bgd_iteration_s"] == pytest.approx(5e-3 * 2 / 64 + weak[1]["bgd_comm_s"])
    with pytest.raises(UsageError):
        projection.project(costs("bgd"), "ib-hdr", [2], "sideways")


def test_crossover_found_on_constructed_case():
    # alpha only (1 ms, infinite bandwidth): per H-ES iteration (r = 2) the difference is
    # (c_es - c_grad + minloc - allreduce) / 2 = (9.5 ms - log2(N) ms) / 2: H-ES wins from N = 1024
    net = ("slow", 1e-3, 0.0)
    c = [costs("bgd", cg=1e-3), costs("hes", cg=1e-3, ce=10.5e-3)]
    assert projection.crossover(c, net)["nodes"] == 1024
    # bandwidth only, 1 MB gradient on 2 nodes: H-ES wins when 1e6 beta - 12 beta > c_es - c_grad = 1 ms
    c = [costs("bgd", cg=1e-3, params=250000), costs("hes", cg=1e-3, ce=2e-3, params=250000)]
    x = projection.crossover(c, ("bw", 0.0, 1e-9), at_nodes=2)
    assert x["at_nodes"] == 2
    assert x["bandwidth_bytes_per_s"] == pytest.approx((1e6 - 12) / 1e-3, rel=1e-6)
    # ES steps cheaper than gradient steps: H-ES wins everywhere
    x = projection.crossover([costs("bgd", cg=5e-3), costs("hes", cg=5e-3, ce=1e-3)], "ib-hdr")
    assert x["nodes"] == 2 and x["bandwidth_bytes_per_s"] == math.inf


def test_crossover_none_when_hes_always_slower():
    # assisted H-ES does a gradient step and an ES selection on every iteration: never faster
    c = [costs("bgd", cg=5e-3), costs("hes", ca=60e-3, assisted=True)]
    x = projection.crossover(c, "1gbe")
    assert x["nodes"] is None and x["bandwidth_bytes_per_s"] is None
    with pytest.raises(UsageError):
        projection.crossover(costs("bgd"), "1gbe")


# ------------------------------------------------------------------------------------------ the script
def train(path: Path, *extra: str) -> Path:
    cmd = [sys.executable, "-m", "hes_mpi", "train", "--data", "synthetic:800", "--hidden", "16", "--batch", "200",
           "--lr", "1", "--epochs", "2", "--out", str(path), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=path.parent)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    return train(d / "bgd.h5"), train(d / "hes.h5", "--algo", "hes", "--r", "2")


def script(*args, cwd=None):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)


def load_script():
    spec = importlib.util.spec_from_file_location("project_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("project.py: error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def test_script_end_to_end(logs):
    proc = script(*logs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for net in ("1gbe", "10gbe", "100gbe", "ib-hdr"):
        for n in (2, 64, 1024):
            assert f"| {net} | {n} |" in out
    assert "H-ES / BGD" in out and "Crossover" in out
    assert "measured' is left out" in out  # 1-rank logs: nothing to fit alpha and beta to
    with RunLog(logs[0]) as rl:
        c = projection.step_costs(rl)
        assert c.algo == "bgd" and c.iterations_per_epoch == 4 and c.param_count == 32 * 16 + 16 + 16 * 10 + 10
        assert c.compute_grad_s > 0 and c.compute_es_s is None
        assert all(q[3] == 1 for q in fitting.measured_pairs(rl, with_ranks=True))
    with RunLog(logs[1]) as rl:
        c = projection.step_costs(rl)
        assert c.algo == "hes" and c.r == 2 and c.compute_es_s > 0


def test_script_options_in_process(logs, tmp_path, capsys):
    mod = load_script()
    assert mod.main([str(logs[0]), "--network", "1gbe", "--network", "1e-5,1e-9", "--nodes", "2", "8"]) == 0
    out = capsys.readouterr().out
    assert "| 1gbe | 8 |" in out and "| 1e-05,1e-09 | 2 |" in out and "10gbe" not in out
    csv_path = tmp_path / "p.csv"
    assert mod.main([*map(str, logs), "--network", "10gbe", "--nodes", "2", "4", "8", "--csv", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("network,alpha_s,beta_s_per_byte,nodes") and len(lines) == 4
    assert mod.main([*map(str, logs), "--json", "--scaling", "strong", "--nodes", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scaling"] == "strong" and report["fit"] is None and len(report["crossovers"]) == 4
    assert mod.main([str(logs[0]), "--network", "measured"]) == 2  # 1 rank: no fit
    assert mod.main([str(logs[0]), str(logs[0])]) == 2  # two BGD logs
    err = capsys.readouterr().err
    assert err.count("project.py: error:") == 2


def test_script_bad_files(logs, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(logs[0].read_bytes()[:2000])
    for bad in (foreign, truncated, tmp_path / "missing.h5"):
        assert_one_line_error(script(logs[0], bad))
    assert_one_line_error(script(logs[0], "--network", "carrier-pigeon"))
    assert_one_line_error(script(logs[0], "--nodes", "0"))


def test_script_help():
    proc = script("--help")
    assert proc.returncode == 0
    for opt in ("--network", "--nodes", "--scaling", "--at-nodes", "--simgrid", "--fit", "--markdown", "--csv", "--json"):
        assert opt in proc.stdout
    assert "Usage: python analysis/project.py" in load_script().__doc__


def test_script_on_real_two_rank_logs(tmp_path):
    """The script on logs of real 2-rank runs (BGD and H-ES under mpiexec): the projection, and alpha and
    beta fitted to their own collectives."""
    from conftest import run_cli

    logs = []
    for algo in ("bgd", "hes"):
        logs.append(tmp_path / f"{algo}.h5")
        proc = run_cli(["train", "--algo", algo, "--data", "synthetic:4000", "--hidden", "256", "--epochs", "3",
                        "--out", logs[-1]])
        assert proc.returncode == 0, proc.stderr
    proc = script(*logs, "--fit")
    assert proc.returncode == 0, proc.stderr
    assert "| measured | 1024 |" in proc.stdout and "alpha = " in proc.stdout
    with RunLog(str(logs[0])) as rl:
        fit = fitting.fit_alpha_beta(rl)
    assert fit.alpha > 0 and fit.beta > 0
    big = [c for c in fit.classes if c["nbytes"] > 2048]
    assert big and all(abs(c["rel_error"]) < 0.5 for c in big)
    # --simgrid: each row beside SimGrid's replay of the same logs on a star of that network. Both are
    # latency-bandwidth models of the same calls; their compute differs (the model: medians of the slowest
    # rank; the replay: each step as recorded), so on a 10 Mbit/s network, where the gradient's Allreduce
    # is 30 times a step's compute, they agree within 5% (measured on MNIST at 1 GbE: 0.3-0.7%)
    if shutil.which("smpirun") is None:
        pytest.fail("smpirun is not installed: bash .ci/install-simgrid.sh")
    slow = "1e-4,8e-7"
    proc = script(*logs, "--simgrid", "--network", slow, "--network", "1gbe", "--nodes", "2", "16", "--csv", "-")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert len(rows) == 4 and proc.stderr.count("project.py: [") == 8  # a progress line per run and replay
    for r in rows:
        for algo in ("bgd", "hes"):
            model, sim = float(r[f"{algo}_epoch_s"]), float(r[f"simgrid_{algo}_epoch_s"])
            assert float(r[f"{algo}_error_vs_simgrid"]) == pytest.approx(model / sim - 1)
            if r["network"] == slow:
                assert abs(model / sim - 1) < 0.05, r
    md = script(*logs, "--simgrid", "--network", "1gbe", "--nodes", "4")
    assert md.returncode == 0 and "SimGrid (model error)" in md.stdout and "| 1gbe | 4 |" in md.stdout
