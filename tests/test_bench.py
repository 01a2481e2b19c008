"""The speed benchmarks (hes-mpi bench steps|forward|torch|all) in smoke mode, under the real mpiexec.

These check that each bench runs, measures what it says and reports every goal key; the figures
themselves are benchmarks (benchmarks/README.md), not timed tests.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_cli

from hes_mpi.bench.goals import GOALS, goals_met
from hes_mpi.bench.torch_peer import torch_available
from hes_mpi.model import MLP

SMALL = ["--data", "synthetic:2000", "--hidden", "32", "--batch", "200"]


def bench(*args, n=2, timeout=240, shape=SMALL) -> dict:
    proc = run_cli(["bench", *args, *shape], n=n, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout  # one JSON object from rank 0; progress on stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def all_smoke() -> dict:
    return bench("all", "--smoke", "--json")


def test_all_reports_every_goal_key(all_smoke):
    assert set(GOALS) <= set(all_smoke)
    for key in set(GOALS) - {"bgd_epoch_vs_torch"}:
        assert isinstance(all_smoke[key], float) and math.isfinite(all_smoke[key]), key
    assert all_smoke["goals_met"] == goals_met(all_smoke)
    assert set(all_smoke["details"]) == {"forward", "steps", "overhead", "torch"}


def test_all_torch_part_runs_or_says_why(all_smoke):
    t = all_smoke["details"]["torch"]
    if torch_available() is None:
        assert all_smoke["bgd_epoch_vs_torch"] > 0
        # Same initial weights, rows and updates: torch DDP and hes_mpi end an epoch with the same weights.
        assert t["max_abs_weight_difference"] < 1e-4
    else:
        assert all_smoke["bgd_epoch_vs_torch"] is None and "torch" in t["skipped"]


def test_steps_counts_bytes_and_memory_of_each_kind():
    plain = bench("steps", "--reps", "3", "--plain")
    params = MLP(32, 32, 10).param_count
    assert plain["grad_step_bytes_sent_per_rank"] == 4 * params
    assert plain["es_step_bytes_sent_per_rank"] == 12  # one MINLOC of (double, int)
    assert plain["es_method"] == "plain"
    assert 0 < plain["noise_share"] < 1
    assert plain["median_es_step_s"] > 0 and plain["median_grad_step_s"] > 0
    assert plain["es_over_grad_step"] == pytest.approx(plain["median_es_step_s"] / plain["median_grad_step_s"])
    head = bench("steps", "--reps", "3", "--perturb", "output", "--recombine", "weighted")
    assert head["es_step_bytes_sent_per_rank"] == 8 * 8  # an Allgather of K float64 costs per rank
    assert head["mem_es_over_grad"] == pytest.approx(head["es_step_memory_bytes"] / head["grad_step_memory_bytes"])


def test_output_layer_candidates_in_chunks_write_less_than_whole_vector_ones():
    """With batches large enough for activations to dominate (as on MNIST), the ES step of --perturb
    output (row chunks, shared hidden layer) writes much less than a plain one, and than a gradient step."""
    wide = ["--data", "synthetic:4000", "--hidden", "512", "--batch", "2000"]
    plain = bench("steps", "--reps", "2", "--plain", shape=wide)
    head = bench("steps", "--reps", "2", "--perturb", "output", shape=wide)
    assert head["es_step_memory_bytes"] < 0.7 * plain["es_step_memory_bytes"]
    assert head["mem_es_over_grad"] < 0.5


def test_forward_compares_with_blas_of_the_same_shapes():
    r = bench("forward", "--reps", "3")
    assert r["rows"] > 0 and r["K"] == 8
    assert 0 < r["forward_vs_blas"] < 5
    assert r["forward_vs_blas"] == pytest.approx(r["median_blas_s"] / r["median_candidates_s"])


@pytest.mark.parametrize("perturb", ["output", "lowrank:2", "all"])
def test_steps_on_a_deeper_network_reports_the_flop_floor_of_each_step(perturb):
    """bench steps on a 2-hidden-layer network in each perturbation mode: the FLOPs of each step as counted
    from the network's shapes, and each step's time against its own matrix products timed alone."""
    deep = ["--data", "synthetic:2000", "--hidden", "64,32", "--activation", "relu", "--init", "he", "--batch", "200"]
    r = bench("steps", "--reps", "3", "--lr", "0.2", "--perturb", perturb, shape=deep)
    assert r["layers"] == "32-64-32-10"
    products = 32 * 64 + 64 * 32 + 32 * 10
    per_row_grad = 2 * (3 * products - 32 * 64)  # forward, and two products per layer backward but the first
    rows, rest = divmod(r["grad_step_flops"], per_row_grad)  # this rank's rows of the first batch (about 100)
    assert rest == 0 and 60 < rows < 140
    if perturb == "output":
        per_row_es = 2 * (products + 8 * 32 * 10)
    elif perturb == "all":
        per_row_es = 9 * 2 * products  # K + 1 forward passes (with --baseline)
    else:
        per_row_es = 2 * (32 * 64 + 8 * 2 * (32 + 64) + 9 * 64 * 32 + 8 * 2 * (64 + 32) + 9 * 32 * 10 + 8 * 2 * (32 + 10))
    assert r["es_step_flops"] == rows * per_row_es
    for key in ("grad_floor_s", "es_floor_s", "grad_step_over_floor", "es_step_over_floor", "es_over_grad_floor"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["es_step_bytes_sent_per_rank"] == 12


def test_bench_rejects_bad_reps_in_one_line():
    proc = run_cli(["bench", "steps", "--reps", "0", *SMALL], n=2)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--reps" in proc.stderr


def test_goals_met_compares_in_the_right_direction():
    assert goals_met({"forward_vs_blas": 0.9, "es_over_grad_step": 0.7, "noise_share": float("nan")}) == {
        "forward_vs_blas": True, "es_over_grad_step": False}


def test_profile_table_attributes_step_samples_to_the_innermost_project_frame():
    from hes_mpi.post.benchtables import profile_markdown, profile_table

    step = "main (x.py:1);Trainer.run (hes_mpi/trainer.py:9);"
    lines = [
        step + ("HybridES.step (hes_mpi/algorithms/hes.py:5);HybridES._head_costs (hes_mpi/algorithms/hes.py:7);"
                "<numba> (kernels.py:3) 30"),
        step + "BGD.step (hes_mpi/algorithms/bgd.py:2);InstrumentedComm.Allreduce (hes_mpi/comm.py:185) 10",
        "main (x.py:1);Trainer.evaluate (hes_mpi/trainer.py:4) 60",  # not a step: left out
        "garbage line",
    ]
    raw = "\n".join(lines)
    rows = profile_table(raw)
    assert [r["samples"] for r in rows] == [30, 10]
    assert rows[0]["frame"] == "HybridES._head_costs (hes_mpi/algorithms/hes.py:7)"
    assert rows[0]["share"] == pytest.approx(0.75)
    assert "75.0%" in profile_markdown(rows)


def test_scaling_table_from_bench_steps_rows(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hes_mpi.post.benchtables import scaling_markdown

    def row(mode, p, batch, g, e):
        return {"scaling": mode, "ranks": p, "batch": batch, "median_grad_step_s": g, "median_es_step_s": e,
                "grad_step_bytes_sent_per_rank": 954040.0 if p > 1 else 0.0, "es_step_bytes_sent_per_rank": 12.0}

    rows = [row("strong", 2, 1000, 0.004, 0.002), row("strong", 1, 1000, 0.008, 0.004), row("weak", 1, 500, 0.004,
                                                                                            0.002)]
    md = scaling_markdown(rows).splitlines()
    assert len(md) == 2 + 3
    assert md[2].startswith("| strong | 1 | 1000 | 1000 | 8.00 | 4.00 | 0.50 |")
    assert md[3].startswith("| strong | 2 | 1000 | 500 | 4.00 | 2.00 | 0.50 | 954,040 | 12 | 2.00 | 2.00 |")
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "scaling_table.py"
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == scaling_markdown(rows)
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "none")], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_mpis_table_gives_medians_over_rounds_and_the_ratio(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from hes_mpi.post.benchtables import mpis_markdown

    def osu(mpi, raw, us):
        return {"bench": "osu", "mpi": mpi, "raw": raw, "rows": [{"size": 4, "avg_us": us}]}

    rows = [{"bench": "startup", "mpi": "Open MPI 5.0.11", "seconds": s} for s in (1.0, 3.0, 2.0)]
    rows += [{"bench": "startup", "mpi": "MPICH 5.0.2", "seconds": s} for s in (0.5, 0.4, 0.6)]
    rows += [osu("MPICH 5.0.2", False, us) for us in (10.0, 30.0, 20.0)] + [osu("MPICH 5.0.2", True, 9.0)]
    rows += [osu("Open MPI 5.0.11", False, us) for us in (5.0, 6.0, 100.0)] + [osu("Open MPI 5.0.11", True, 4.0)]
    rows += [dict(osu("MPICH 5.0.2", False, 8.0), launch="-bind-to core")]  # a column of its own
    md = mpis_markdown(rows).splitlines()
    assert "| MPICH 5.0.2 -bind-to core (us) |" in md[5] and md[-1].startswith("| 4 | 20.0 | 8.0 | 6.0 |")
    rows.pop()
    md = mpis_markdown(rows).splitlines()
    assert md[2] == "| MPICH 5.0.2 | 0.50 (0.40–0.60) | 3 |"
    assert md[3] == "| Open MPI 5.0.11 | 2.00 (1.00–3.00) | 3 |"
    assert md[-1] == "| 4 | 20.0 | 6.0 | 0.30 | 9.0 | 4.0 |"
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "mpis_table.py"
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == mpis_markdown(rows)


def test_runtime_table_is_relative_to_the_median_bgd_run(tmp_path):
    from hes_mpi.post.benchtables import runtime_markdown

    small = ["--data", "synthetic:400", "--hidden", "16", "--batch", "100", "--lr", "1", "--epochs", "2"]
    paths = []
    for name, opts in (("bgd", ["--algo", "bgd"]), ("r2", ["--algo", "hes", "--r", "2"])):
        out = tmp_path / f"{name}.h5"
        assert run_cli(["train", *small, *opts, "--out", out]).returncode == 0
        paths.append(str(out))
    md = runtime_markdown(paths).splitlines()
    assert md[2].startswith("| Reference (BGD) | 1 |") and md[2].endswith("| 100.0% |")
    assert md[3].startswith("| H-ES, r = 2 [")
    with pytest.raises(ValueError, match="no BGD run"):
        runtime_markdown(paths[1:])


@pytest.mark.parametrize("compress", ["fp16", "powersgd:2"])
def test_torch_peer_of_a_compressed_exchange_sends_the_same_bytes_as_pytorchs_hook(compress):
    """Our fp16 and PowerSGD exchanges against PyTorch's fp16_compress_hook and powerSGD_hook on the same
    rows from the same start: the same payload per step (PowerSGD's P and Q have the same sizes whichever
    way round a weight matrix is stored), and the same learning (fp16: within a point after 3 epochs)."""
    out = bench("torch", "--compress", compress, "--epochs", "3", "--lr", "1")
    if torch_available() is not None:
        assert "torch" in out["skipped"]
        return
    assert out["bytes_per_step_hes_mpi"] == out["bytes_per_step_torch"]
    assert out["bytes_per_step_hes_mpi"] < out["bytes_per_step_uncompressed"] / (1.9 if compress == "fp16" else 3)
    assert math.isfinite(out["dev_acc_hes_mpi"]) and math.isfinite(out["dev_acc_torch"])
    if compress == "fp16":
        assert out["bytes_per_step_hes_mpi"] == out["bytes_per_step_uncompressed"] / 2
        assert abs(out["dev_acc_difference_points"]) <= 1.0


def test_torch_peer_refuses_a_compression_pytorch_has_no_hook_for():
    proc = run_cli(["bench", "torch", "--compress", "topk:0.1", *SMALL], n=None)
    assert proc.returncode == 2 and "fp16 and powersgd:R only" in proc.stderr


def test_compress_reports_each_method_against_the_gradient_step_and_its_floor():
    out = bench("compress", "--reps", "3", "--json", "--methods", "fp16", "topk:0.25", "powersgd:2")
    n = MLP(32, 32, 10).param_count  # synthetic rows have 32 features
    assert out["params"] == n and out["ranks"] == 2
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"fp16", "topk:0.25", "powersgd:2"}
    assert out["copy_bandwidth_bytes_per_s"] > 0 and out["grad_step_s"] > 0
    k = math.ceil(0.25 * n)
    floors = {"fp16": 12 * n, "topk:0.25": 16 * n + 8 * k * 3, "powersgd:2": 32 * n}
    for m, r in rows.items():
        # the call's time minus its collectives' (inside it, on the same clock): positive
        assert r["encode_decode_s"] > 0 and r["collectives_s"] > 0, m
        assert r["over_grad_step"] == pytest.approx(r["encode_decode_s"] / out["grad_step_s"])
        assert r["floor_s"] == pytest.approx(floors[m] / out["copy_bandwidth_bytes_per_s"])
        assert r["goal_met"] == (r["over_grad_step"] <= r["goal_over_grad_step"] and r["over_floor"] <= 2.0)


def test_compress_refuses_a_method_with_nothing_to_encode():
    proc = run_cli(["bench", "compress", "--methods", "none", *SMALL], n=2)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "nothing to encode" in proc.stderr
