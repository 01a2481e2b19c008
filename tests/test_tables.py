"""Tables from run logs: a label tells apart every configuration of its table."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from conftest import run_cli

from hes_mpi.config import RunConfig
from hes_mpi.post.tables import Run, accuracy_rows, label_runs

ROOT = Path(__file__).resolve().parents[1]
SYN = ["--data", "synthetic:800", "--hidden", "16", "--batch", "200", "--epochs", "1"]


def run_of(**options) -> Run:
    return Run(path="x.h5", summary={"ranks": 2, "epochs": 1, "train_acc": 0.5, "dev_acc": 0.5},
               config=RunConfig(**options).to_dict(), epochs={}, iterations={})


def test_two_bgd_runs_at_different_lr_have_different_labels(tmp_path):
    """End to end, as a user compares two learning rates: accuracy.md has one row per lr, each naming it."""
    logs = []
    for lr in ("1", "2"):
        logs.append(tmp_path / f"bgd_lr{lr}.h5")
        proc = run_cli(["train", *SYN, "--lr", lr, "--out", logs[-1]], n=1)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "analysis" / "compare.py"), *map(str, logs), "--out-dir",
                           str(tmp_path / "t")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "t" / "accuracy.csv", newline="") as f:
        labels = [r["run"] for r in csv.DictReader(f)]
    assert labels == ["Reference (BGD), lr 1", "Reference (BGD), lr 2"]
    assert "| Reference (BGD), lr 1 |" in (tmp_path / "t" / "accuracy.md").read_text()


def test_labels_name_each_differing_option_and_only_those():
    runs = label_runs([run_of(algo="bgd", lr=5.0, batch=1000), run_of(algo="bgd", lr=5.0, batch=2000),
                       run_of(algo="hes", r=2, lr=5.0, batch=1000, K=8), run_of(algo="hes", r=2, lr=2.0, batch=1000,
                                                                                K=16)])
    labels = [r.label for r in runs]
    assert len(set(labels)) == 4
    assert labels[0] == "Reference (BGD), batch 1000, lr 5"
    assert labels[1] == "Reference (BGD), batch 2000, lr 5"
    # K is an H-ES option: shown for the H-ES runs (it differs between them), never for BGD
    assert labels[2] == "H-ES, r = 2 [output layer, baseline, ES step auto], K 8, batch 1000, lr 5"
    assert labels[3] == "H-ES, r = 2 [output layer, baseline, ES step auto], K 16, batch 1000, lr 2"
    assert [r["run"] for r in accuracy_rows(runs)] == labels


def test_the_main_jobs_labels_stay_the_poster_names():
    """Runs that differ only in what the poster label says (algorithm, r, assisted) get nothing appended;
    the seed is never a difference (seeds of one configuration are averaged)."""
    runs = label_runs([run_of(algo="bgd"), run_of(algo="hes", assisted=True), run_of(algo="hes", r=2),
                       run_of(algo="hes", r=3, seed=1)])
    assert [r.label for r in runs] == ["Reference (BGD)", "Assisted H-ES (r = 1) [output layer, baseline, ES step auto]",
                                       "H-ES, r = 2 [output layer, baseline, ES step auto]",
                                       "H-ES, r = 3 [output layer, baseline, ES step auto]"]
