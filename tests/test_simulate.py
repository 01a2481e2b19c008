"""``hes-mpi simulate``: traces that hold exactly what ran, replays against hand-worked times, host speeds
and the waiting they cause, and the one-line errors. Replays use the real smpirun (.ci/install-simgrid.sh)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import mpi_size, run_cli

from hes_mpi.errors import UsageError
from hes_mpi.post import projection, simtrace, simulate, smpi
from hes_mpi.runlog import RunLog
from hes_mpi.schema import StepKind

pytestmark = pytest.mark.skipif(mpi_size() > 1, reason="runs its own jobs: run serially")

BW = 1.25e8  # 1gbit in bytes per second
LAT = 30e-6


@pytest.fixture(scope="module")
def two_rank_logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    base = ["train", "--data", "synthetic:800", "--hidden", "16", "--batch", "200", "--lr", "1", "--epochs", "2"]
    out = {}
    for name, extra in (("bgd", []), ("hes", ["--algo", "hes", "--r", "2"]),
                        ("topk", ["--compress", "topk:0.25"])):
        path = d / f"{name}.h5"
        proc = run_cli([*base, *extra, "--out", path], n=2)
        assert proc.returncode == 0, proc.stderr
        out[name] = path
    return out


def needs_smpirun():
    if shutil.which("smpirun") is None:
        pytest.fail("smpirun is not installed: bash .ci/install-simgrid.sh")


@pytest.mark.parametrize("name", ["bgd", "hes", "topk"])
def test_trace_of_a_two_rank_run_has_exactly_its_calls_and_bytes(two_rank_logs, name):
    with RunLog(str(two_rank_logs[name])) as log:
        ep = simtrace.epoch_steps(log, epoch=2)
        rec = log.records()
        ops, phases = log.names("op_names"), log.names("phase_names")
        it = log.table("iterations")
    iters = it["iteration"][it["epoch"] == 1]
    sel = simtrace.select([ep], 2)
    for rank in (0, 1):
        m = (np.isin(rec["phase"], [phases.index("grad"), phases.index("es")]) & np.isin(rec["iteration"], iters)
             & (rec["rank"] == rank))
        order = np.argsort(rec["t_enter"][m], kind="stable")
        want = [(ops[o], int(b)) for o, b in zip(rec["op"][m][order], rec["bytes_sent"][m][order])]
        lines, owner = simtrace.rank_trace(ep, rank, 2, "weak", 1.0, sel)
        got = []
        for ln in lines:
            f = ln.split()
            assert f[0] == str(rank)
            if f[1] in ("allreduce", "allgather"):
                got.append((f[1], int(f[2])))
            elif f[1] == "barrier":  # the stand-in of a small recursive-doubling allreduce
                got.append(("barrier", 0))
        expect = [("allreduce" if op == "minloc" else op, b) for op, b in want]
        if sel.stand_ins:
            expect = [("barrier", 0) if op == "allreduce" and b <= simtrace.STAND_IN_BYTES else (op, b)
                      for op, b in expect]
        assert got == expect and len(got) > 0
        assert lines[0] == f"{rank} init" and lines[-1] == f"{rank} finalize" and len(owner) == len(lines)
        # the compute of the trace is the measured step time less the calls' own time
        compute = sum(int(ln.split()[2]) for ln in lines if ln.split()[1] == "compute") / simtrace.REFERENCE_FLOPS
        spans = (rec["t_exit"][m] - rec["t_enter"][m]).sum()
        step = it["step_s"][it["epoch"] == 1][:, rank].sum()
        assert compute == pytest.approx(step - spans, rel=1e-3, abs=1e-5)
    if name == "hes":
        assert sel.stand_ins == int(np.sum(ep.kinds == StepKind.ES)) and sel.other == 0


def test_allgather_grows_with_the_nodes(two_rank_logs):
    with RunLog(str(two_rank_logs["topk"])) as log:
        ep = simtrace.epoch_steps(log)
    for n in (2, 8):
        lines, _ = simtrace.rank_trace(ep, 0, n, "weak", 1.0, simtrace.select([ep], n))
        ag = [ln.split() for ln in lines if ln.split()[1] == "allgather"]
        assert ag and all(int(f[2]) == int(f[3]) for f in ag)  # every rank receives n blocks of its own size
    assert simtrace.call_action("allgather", 4000, 8000, 64, "mpich")[2] == "ring"  # 64 x 4000 B: MPICH's ring


def synthetic(kinds, items, ranks=2, rows=100) -> simtrace.Epoch:
    """An epoch by hand: ``items`` per iteration, the same on every rank."""
    return simtrace.Epoch(label="synthetic", algo="bgd", epoch=1, ranks=ranks, family="mpich", batch=rows * ranks,
                          kinds=np.array(kinds), items=[[list(it) for _ in range(ranks)] for it in items],
                          rows=np.full((len(items), ranks), rows), measured_step_s=np.zeros(len(items)),
                          measured_epoch_s=0.0, overhead_s=0.0, reference=True)


def replay(ep, n, **kw):
    needs_smpirun()
    return simulate.simulate_one(ep, "star:1gbit,30us", n, factors_one=True, **kw)


def test_replay_on_a_star_matches_the_closed_forms():
    """Rabenseifner on 2 ranks: a reduce-scatter and an allgather round of n/2 bytes each, 2 (L + n/2B);
    on 4 ranks 4 rounds of n/2, n/4, n/4, n/2: 4L + 1.5 n/B. MINLOC (12 B) by recursive doubling: log2 p
    rounds of L + 12/B (replayed as the recursive-doubling barrier: without its 12 bytes)."""
    n_bytes, c = 1_000_000, 0.010
    ep = synthetic([0, 1, 0], [[("compute", c), ("call", "allreduce", n_bytes, n_bytes)],
                               [("compute", c / 2), ("call", "minloc", 12, 12)],
                               [("compute", c), ("call", "allreduce", n_bytes, n_bytes)]])
    for p, rab, rd in ((2, 2 * (LAT + n_bytes / 2 / BW), LAT + 12 / BW),
                       (4, 4 * LAT + 1.5 * n_bytes / BW, 2 * (LAT + 12 / BW))):
        row = replay(ep, p)
        assert row["grad_s"] == pytest.approx(2 * (c + rab), rel=0.02)
        assert row["es_s"] == pytest.approx(c / 2 + rd, rel=0.02)
        assert row["comm_s"] == pytest.approx(2 * rab + rd, rel=0.03)
        assert row["wait_s"] == pytest.approx(0.0, abs=1e-6)
        assert row["epoch_s"] == pytest.approx(row["grad_s"] + row["es_s"])
        assert "allreduce:rab_rdb" in row["algorithms"] and row["stand_in_calls"] == 1


def test_a_slow_host_holds_the_others_by_its_extra_compute():
    c, n_bytes = 0.020, 100_000
    ep = synthetic([0] * 3, [[("compute", c), ("call", "allreduce", n_bytes, n_bytes)]] * 3)
    even = replay(ep, 2)
    slow = replay(ep, 2, hosts="list:1,0.5")  # rank 1 at half speed: 2c of compute, rank 0 waits c per call
    assert slow["epoch_s"] - even["epoch_s"] == pytest.approx(3 * c, rel=0.02)
    assert slow["wait_s"] == pytest.approx(3 * c / 2, rel=0.02)  # the mean over the two ranks
    assert slow["comm_s"] == pytest.approx(even["comm_s"], rel=0.02)
    fast = replay(ep, 4, hosts="0.25:gpu=20x")  # one node of four 20x faster: it waits, the others do not
    assert fast["epoch_s"] == pytest.approx(even["epoch_s"] + (replay(ep, 4)["epoch_s"] - even["epoch_s"]), rel=0.02)
    assert fast["wait_s"] == pytest.approx(3 * (c - c / 20) / 4, rel=0.02)


def test_strong_scaling_shrinks_compute_with_the_rows():
    ep = synthetic([0], [[("compute", 0.040), ("call", "allreduce", 4000, 4000)]], ranks=2, rows=100)
    lines, _ = simtrace.rank_trace(ep, 0, 8, "strong", 1.0, simtrace.select([ep], 8))
    assert int(lines[1].split()[2]) == pytest.approx(0.040 * 25 / 100 * simtrace.REFERENCE_FLOPS)
    weak, _ = simtrace.rank_trace(ep, 0, 8, "weak", 1.0, simtrace.select([ep], 8))
    assert int(weak[1].split()[2]) == pytest.approx(0.040 * simtrace.REFERENCE_FLOPS)


def test_host_specs():
    assert simtrace.speeds_for(4, "0.25:gpu=20x") == [1.0, 1.0, 20.0, 1.0]
    assert simtrace.speeds_for(8, "0.25:gpu=20x,0.25:old=0.5x") == [1, 0.5, 20, 1, 1, 0.5, 20, 1]
    assert simtrace.speeds_for(3, "list:1,0.5") == [1.0, 0.5, 1.0]
    assert sum(s == 20 for s in simtrace.speeds_for(1024, "0.25:gpu=20x")) == 256
    for bad in ("0.25gpu", "1.5:gpu=2x", "0.5:a=2x,0.6:b=3x", "list:0", "list:"):
        with pytest.raises(UsageError):
            simtrace.speeds_for(4, bad)


def test_platforms():
    xml, hosts, _ = smpi.platform("star:100mbit,50us", 3)
    assert hosts == ["node-0", "node-1", "node-2"] and 'bw="1.25e+07Bps"' in xml and 'lat="25000ns"' in xml
    xml, hosts, _ = smpi.platform("fattree:10gbit,1us,16", 40)
    assert 'topo_parameters="2;16,3;1,16;1,1"' in xml and len(hosts) == 40
    xml, hosts, _ = smpi.platform("dragonfly:10gbit,1us", 100)
    assert 'topology="DRAGONFLY"' in xml and len(hosts) == 100
    for alpha, beta in ((50e-6, 8e-9), (1e-6, 4e-11), (5.5e-6, 1.76e-10)):  # the model's networks as stars
        spec = smpi.star_spec(alpha, beta)
        assert smpi.star_alpha_beta(spec) == pytest.approx((alpha, beta), rel=1e-8)
        smpi.platform(spec, 2)
    assert smpi.star_alpha_beta("fattree:1gbit,1us") is None
    for bad in ("ring:1gbit,1us", "star:1gbit", "star:fast,1us", "fattree:1gbit,1us,0"):
        with pytest.raises(UsageError):
            smpi.platform(bad, 4)


def test_simulate_command_end_to_end(two_rank_logs, tmp_path):
    needs_smpirun()
    proc = run_cli(["simulate", two_rank_logs["bgd"], two_rank_logs["hes"], "--nodes", "2", "16", "--json",
                    "--out", tmp_path], n=None, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(rows) == 4 and {r["nodes"] for r in rows} == {2, 16}
    for r in rows:
        assert {"label", "algo", "nodes", "platform", "epoch_s", "grad_s"} <= set(r)
        assert r["epoch_s"] > 0 and r["ratio_to_bgd"] > 0
    assert all(r["ratio_to_bgd"] == 1 for r in rows if r["algo"] == "bgd")
    assert all("es_s" in r for r in rows if r["algo"] == "hes")
    for r in rows:  # at the run's own rank count, the replay's error against what was measured
        assert ("error_epoch" in r) == (r["nodes"] == r["measured_ranks"] == 2)
        if "error_epoch" in r:
            assert r["error_epoch"] == pytest.approx(r["epoch_s"] / r["measured_epoch_s"] - 1)
            assert r["error_grad"] == pytest.approx(r["grad_s"] / r["measured_grad_s"] - 1)
    table = simulate.validation_markdown(rows)
    assert table.count("\n") == 2 + 2 and ("(+" in table or "(-" in table)
    assert proc.stderr.count("simulate: [") == 4  # one progress line per replay
    for f in ("simulate.md", "simulate.csv", "simulate.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_the_alpha_beta_projection_stands_beside_the_replay_on_a_star(two_rank_logs):
    """Where the projection models the method (BGD, H-ES) and the platform is a star, each row carries its
    epoch and error; nothing for top-k, a fat tree or mixed hosts. On a star of factors 1 both are
    latency-bandwidth models of the same calls: their communication (the replay's without its waiting) agrees
    within 5% of the epoch. Their compute differs by design (the model: each kind's median on the slowest rank;
    the replay: every step as recorded, the ranks' imbalance showing as waiting: on a loaded machine it was
    half of a replayed epoch once), so the waiting is left out, and the star is slow (10 Mbit/s, 100 us), where
    communication is most of the epoch."""
    needs_smpirun()
    star, lat, bw = "star:10mbit,100us", 100e-6, 1.25e6
    rows = simulate.simulate([two_rank_logs[k] for k in ("bgd", "hes", "topk")], [2, 16],
                             [star, "fattree:1gbit,15us,4"], factors_one=True)
    for r in rows:
        has = str(r["run"]) != str(two_rank_logs["topk"]) and r["platform"] == star
        assert ("projection_epoch_s" in r) == has, r["label"]
        if has:
            assert r["projection_error"] == pytest.approx(r["projection_epoch_s"] / r["epoch_s"] - 1)
            with RunLog(str(r["run"])) as log:
                c = projection.step_costs(log)
            model_comm = r["projection_epoch_s"] - r["overhead_s"] - projection.epoch_time(c, 0.0, 0.0, r["nodes"])
            # the replay's communication without its waiting (which is the ranks' compute imbalance)
            assert abs(model_comm - r["comm_s"]) < 0.05 * r["replayed_s"], r
            assert ("projection_error_measured" in r) == (r["nodes"] == 2)
            # the model's figure is its own: the same computed directly from the log's step costs
            assert r["projection_epoch_s"] == pytest.approx(
                projection.epoch_time(c, lat, 1 / bw, r["nodes"]) + r["overhead_s"])
    assert sum("projection_epoch_s" in r for r in rows) == 4
    mixed = simulate.simulate([two_rank_logs["bgd"]], [2], [star], hosts="0.5:fast=2x", factors_one=True)
    assert "projection_epoch_s" not in mixed[0]
    table = simulate.validation_markdown([r for r in rows if r["platform"] == star])
    assert "alpha-beta projection" in table and table.count("%)") >= 4


def test_missing_smpirun_is_one_line_with_the_install_hint(two_rank_logs):
    proc = run_cli(["simulate", two_rank_logs["bgd"], "--nodes", "2"], n=None,
                   env={"HES_MPI_SMPIRUN": "no-such-smpirun"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "smpirun" in lines[0] and "apt-get install" in lines[0], proc.stderr


def test_bad_input_is_one_line(two_rank_logs):
    for args in (["--platform", "ring:1gbit,1us"], ["--hosts", "2:gpu"], ["--scaling", "strong", "--nodes", "4096"],
                 ["--epoch", "9"]):
        proc = run_cli(["simulate", two_rank_logs["bgd"], *args], n=None)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
