"""Network cost models, their fit to run logs, projections, crossovers and analysis/project.py end to end."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
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
from hes_mpi.runlog import RunLog, RunLogWriter
from hes_mpi.schema import RECORD_DTYPE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "analysis" / "project.py"
A, B = 1e-6, 1e-9  # 1 us, 1 ns/byte: hand-computed points below


# ------------------------------------------------------------------------------------------ formulas
def test_one_rank_costs_nothing():
    for op in ("allreduce", "minloc", "allgather", "bcast", "barrier", "gather"):
        assert nm.collective_time(op, 10**6, 1, A, B) == 0.0
    for alg in ("ring", "recursive_doubling", "rabenseifner"):
        assert nm.allreduce_time(10**6, 1, A, B, algorithm=alg) == 0.0
    assert nm.bcast_time(10**6, 1, A, B, "scatter_allgather") == 0.0


def test_allreduce_hand_computed():
    # p = 2: recursive doubling 1 (alpha + n beta) up to 2048 bytes, Rabenseifner 2 alpha + n beta above
    assert nm.allreduce_time(1000, 2, A, B) == pytest.approx(1e-6 + 1000e-9)
    assert nm.allreduce_time(2048, 2, A, B) == pytest.approx(1e-6 + 2048e-9)
    assert nm.allreduce_time(2049, 2, A, B) == pytest.approx(2e-6 + 2049e-9)
    # p = 4, 1 MB
    n = 10**6
    assert nm.allreduce_time(n, 4, A, B, "rabenseifner") == pytest.approx(4e-6 + 1.5e-3)
    assert nm.allreduce_time(n, 4, A, B, "ring") == pytest.approx(6e-6 + 1.5e-3)
    assert nm.allreduce_time(n, 4, A, B, "recursive_doubling") == pytest.approx(2 * (1e-6 + 1e-3))
    assert nm.allreduce_time(n, 4, A, B) == nm.allreduce_time(n, 4, A, B, "rabenseifner")
    assert nm.allreduce_time(100, 4, A, B) == pytest.approx(2 * (1e-6 + 100e-9))
    # the optional reduction term: (p-1)/p n gamma for Rabenseifner
    assert nm.allreduce_time(4096, 4, A, B, gamma=1e-10) == pytest.approx(4e-6 + 6144e-9 + 3072e-10)
    assert nm.collective_time("minloc", 12, 4, A, B) == nm.allreduce_time(12, 4, A, B)


def test_allgather_bcast_barrier_hand_computed():
    assert nm.allgather_time(100, 4, A, B) == pytest.approx(2e-6 + 300e-9)  # recursive doubling
    assert nm.allgather_time(100, 3, A, B) == pytest.approx(2e-6 + 200e-9)  # not a power of two: ring
    assert nm.allgather_time(30000, 4, A, B) == pytest.approx(3e-6 + 90000e-9)  # 120 KB total: ring
    assert nm.allgather_time(100, 2, A, B, "ring") == pytest.approx(1e-6 + 100e-9)
    assert nm.bcast_time(100, 4, A, B) == pytest.approx(2 * (1e-6 + 100e-9))  # binomial
    assert nm.bcast_time(10**6, 4, A, B) == pytest.approx(2 * (1e-6 + 1e-3))  # fewer than 8 ranks: binomial
    assert nm.bcast_time(10**6, 8, A, B) == pytest.approx(10e-6 + 1.75e-3)  # scatter + allgather
    assert nm.bcast_time(12287, 8, A, B) == pytest.approx(3 * (1e-6 + 12287e-9))
    assert nm.collective_time("barrier", 0, 4, A, B) == pytest.approx(2e-6)
    assert nm.collective_time("barrier", 0, 5, A, B) == pytest.approx(3e-6)
    assert nm.collective_time("gather", 10**6, 8, A, B) == 0.0
    with pytest.raises(ValueError):
        nm.collective_time("alltoall", 8, 4, A, B)
    with pytest.raises(ValueError):
        nm.allreduce_time(8, 0, A, B)


def test_numpy_broadcasting_matches_scalars():
    sizes = np.array([12, 2048, 2049, 10**6])
    ranks = np.array([[1], [2], [3], [4], [1024]])
    grid = nm.allreduce_time(sizes, ranks, A, B)
    assert grid.shape == (5, 4)
    for i, p in enumerate(ranks[:, 0]):
        for j, n in enumerate(sizes):
            assert grid[i, j] == pytest.approx(nm.allreduce_time(int(n), int(p), A, B))
    ag = nm.allgather_time(sizes, 4, A, B)
    assert ag == pytest.approx([nm.allgather_time(int(n), 4, A, B) for n in sizes])
    assert isinstance(nm.collective_time("allreduce", 954040, 2, A, B), float)


# ------------------------------------------------------------------------------------------ networks
def test_parse_network_presets_and_pairs():
    assert nm.parse_network("1gbe") == ("1gbe", 50e-6, pytest.approx(8e-9))
    name, alpha, beta = nm.parse_network("IB-HDR")
    assert name == "ib-hdr" and alpha == pytest.approx(1e-6) and 8 / beta == pytest.approx(200e9)
    for preset in ("1gbe", "10gbe", "100gbe", "ib-hdr"):
        assert preset in nm.PRESETS
    assert 8 / nm.PRESETS["10gbe"][1] == pytest.approx(10e9) and 8 / nm.PRESETS["100gbe"][1] == pytest.approx(1e11)
    name, alpha, beta = nm.parse_network(" 2e-6 , 1e-9 ")
    assert (alpha, beta) == (2e-6, 1e-9) and name


@pytest.mark.parametrize("spec", ["carrier-pigeon", "1,2,3", "-1e-6,1e-9", "nan,1e-9", "a,b", "", "1e-6"])
def test_parse_network_bad_specs(spec):
    with pytest.raises(UsageError) as e:
        nm.parse_network(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert all(p in msg for p in nm.PRESETS)


# ------------------------------------------------------------------------------------------ fit
def synthetic_pairs(alpha, beta, p, noise=0.02, calls=15, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for op, sizes in (("allreduce", (8, 16, 64, 1024, 4096, 65536, 10**6)), ("minloc", (12,)),
                      ("allgather", (8, 256)), ("bcast", (16, 100000))):
        for n in sizes:
            t = nm.collective_time(op, n, p, alpha, beta)
            out += [(op, n, t * float(np.exp(rng.normal(0, noise)))) for _ in range(calls)]
    return out


@pytest.mark.parametrize("p", [2, 4, 16])
def test_fit_recovers_alpha_beta(p):
    fit = fitting.fit_alpha_beta(synthetic_pairs(3e-6, 2e-10, p), p)
    assert fit.alpha == pytest.approx(3e-6, rel=0.05)
    assert fit.beta == pytest.approx(2e-10, rel=0.05)
    assert fit.max_rel_error < 0.05 and fit.median_rel_error <= fit.max_rel_error
    assert {c["op"] for c in fit.classes} == {"allreduce", "minloc", "allgather", "bcast"}
    for c in fit.classes:
        assert c["predicted_s"] == pytest.approx(c["measured_s"], rel=0.05)


def test_fit_mixed_rank_counts_and_outliers():
    pairs = [(*t, 2) for t in synthetic_pairs(5e-6, 1e-9, 2)] + [(*t, 8) for t in synthetic_pairs(5e-6, 1e-9, 8)]
    pairs += [("allreduce", 16, 1.0, 2)] * 3  # a few huge outliers: the class median ignores them
    fit = fitting.fit_alpha_beta(pairs)
    assert fit.alpha == pytest.approx(5e-6, rel=0.05) and fit.beta == pytest.approx(1e-9, rel=0.05)
    assert {c["ranks"] for c in fit.classes} == {2, 8}


def test_fit_is_non_negative_and_needs_two_ranks():
    # pure bandwidth: alpha must not go negative to absorb noise
    fit = fitting.fit_alpha_beta([("allreduce", n, 2 * (3 / 4) * n * 1e-9) for n in (4096, 65536, 10**6)], 4)
    assert fit.alpha >= 0 and fit.beta == pytest.approx(1e-9, rel=1e-6)
    with pytest.raises(UsageError):
        fitting.fit_alpha_beta(synthetic_pairs(1e-6, 1e-9, 1), 1)


def test_measured_pairs_subtracts_waiting(tmp_path):
    rec = np.zeros(6, RECORD_DTYPE)
    rank = np.array([0, 1, 0, 1, 0, 1])
    # seq 0: allreduce of 16 bytes; rank 1's clock runs 0.1 s ahead (offset 0.1): aligned entries 0.0 and 0.6,
    # both leave at 1.0 (aligned): communication 0.4 s on both, waiting 0.6 s on rank 0
    rec[0] = (0, 0, 1, 0, 16, 16, 16, 0.0, 1.0)
    rec[1] = (0, 0, 1, 0, 16, 16, 16, 0.7, 1.1)
    # seq 1: bcast of 8 bytes from rank 0 (sent 8 on the root, received 8 elsewhere), no waiting
    rec[2] = (1, 2, 3, 0, 8, 0, 8, 2.0, 2.5)
    rec[3] = (1, 2, 3, 0, 0, 8, 8, 2.1, 2.6)
    # seq 2: gather (no model) and a point-to-point call: left out
    rec[4] = (2, 4, 5, 0, 8, 16, 8, 3.0, 3.1)
    rec[5] = (-1, 6, 0, 0, 8, 8, 8, 3.0, 3.1)
    path = tmp_path / "fake.h5"
    w = RunLogWriter(str(path), True, {"algo": "bgd"}, {"ranks": 2}, ["test"])
    w.add_records(rec, rank)
    w.set_clock(np.array([0.0, 0.1]), np.zeros(2), np.array([0.0, 0.1]), np.zeros(2), 1e-9, False)
    w.flush()
    with RunLog(path) as rl:
        pairs = sorted(fitting.measured_pairs(rl))
        quads = fitting.measured_pairs(rl, with_ranks=True)
    assert [(op, n) for op, n, _ in pairs] == [("allreduce", 16), ("allreduce", 16), ("bcast", 8), ("bcast", 8)]
    assert [s for _, _, s in pairs] == pytest.approx([0.4, 0.4, 0.5, 0.5])
    assert all(q[3] == 2 for q in quads)


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
    for opt in ("--network", "--nodes", "--scaling", "--at-nodes", "--fit", "--markdown", "--csv", "--json"):
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
