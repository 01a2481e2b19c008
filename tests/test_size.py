"""The size study's table and figure (analysis/size.py, hes_mpi.post.size) from real runs of two networks:
each network against its own BGD run."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from conftest import MPIEXEC, mpi_size, run_cli

pytestmark = pytest.mark.skipif(MPIEXEC is None or mpi_size() > 1, reason="launches mpiexec itself: run serially")

ROOT = Path(__file__).resolve().parent.parent
SYN = ["--data", "synthetic:2000", "--batch", "200", "--lr", "0.2", "--epochs", "2", "--activation", "relu",
       "--init", "he", "--no-eval-train"]


@pytest.fixture(scope="module")
def size_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("size")
    for hidden in ("32", "64,64"):
        for name, method in (("bgd", ["--algo", "bgd"]), ("hes", ["--algo", "hes"]),
                             ("lowrank", ["--algo", "hes", "--perturb", "lowrank:1"])):
            out = d / f"{hidden.replace(',', 'x')}_{name}.h5"
            proc = run_cli(["train", *SYN, "--hidden", hidden, *method, "--out", out])
            assert proc.returncode == 0, proc.stderr
    return d


def test_each_network_is_measured_against_its_own_bgd(size_runs):
    import subprocess

    out = size_runs / "tables"
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "size.py"), *map(str, sorted(size_runs.glob("*.h5"))),
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "size.csv").open()))
    assert (out / "size.png").stat().st_size > 10_000 and (out / "size.md").exists()
    assert len(rows) == 6
    nets = {r["layers"] for r in rows}
    assert len(nets) == 2
    for net in nets:
        mine = {r["run"].split(" [")[0] + (" lowrank" if "low-rank" in r["run"] else ""): r
                for r in rows if r["layers"] == net}
        bgd, hes, low = mine["Reference (BGD)"], mine["H-ES, r = 2"], mine["H-ES, r = 2 lowrank"]
        assert float(bgd["runtime_pct"]) == float(bgd["memory_pct"]) == float(bgd["net_bw_pct"]) == 100.0
        # r = 2: half of the iterations send the gradient, the others 12 bytes
        for r in (hes, low):
            assert 49.0 < float(r["net_bw_pct"]) < 51.5
        assert int(hes["params"]) == int(bgd["params"]) == int(low["params"])
    # the 2-hidden-layer network has more parameters, and the table is ordered by them
    assert int(rows[0]["params"]) < int(rows[-1]["params"])


def test_no_bgd_run_is_a_one_line_error(size_runs):
    import subprocess

    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "size.py"), str(size_runs / "32_hes.h5")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "no network has a BGD run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
