"""The accuracy-at-scale table (hes_mpi.post.scale, analysis/scale.py): per rank count, each method over its
seeds and H-ES - reuse with Welch's interval, checked against scipy directly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from hes_mpi.config import run_label
from hes_mpi.post.scale import (
    epochs_to_target,
    markdown_scale,
    markdown_time_to_target,
    plot_scale,
    scale_rows,
    target_of,
    time_to_target_rows,
)
from hes_mpi.post.stats import mean_ci
from hes_mpi.post.tables import Run

SCRIPT = Path(__file__).resolve().parents[1] / "analysis" / "scale.py"


def run(algo, ranks, acc, seed, curve=()):
    cfg = {"algo": algo, "K": 8, "r": 2, "lr": 5.0, "seed": seed, "compress": "none", "assisted": False}
    return Run(path=f"{algo}_{ranks}_{seed}.h5", summary={"ranks": ranks, "dev_acc": acc}, config=cfg,
               epochs={"dev_acc": list(curve)}, iterations={})


def test_rows_per_rank_count_with_welch(tmp_path):
    accs = {2: {"bgd": [0.96, 0.97, 0.965], "hes": [0.95, 0.96, 0.955], "reuse": [0.94, 0.95, 0.96]},
            32: {"bgd": [0.96, 0.97, 0.965], "hes": [0.97, 0.96, 0.965], "reuse": [0.93, 0.95, 0.94]}}
    runs = [run(a, n, x, s) for n, by in accs.items() for a, xs in by.items() for s, x in enumerate(xs)]
    rows = scale_rows(runs)
    assert [r["ranks"] for r in rows] == [2, 32] and [r["candidates"] for r in rows] == [16, 256]
    for r in rows:
        a, b = accs[r["ranks"]]["hes"], accs[r["ranks"]]["reuse"]
        t = stats.ttest_ind(a, b, equal_var=False)
        assert r["diff"] == pytest.approx(sum(a) / 3 - sum(b) / 3)
        assert r["p"] == pytest.approx(t.pvalue)
        assert (r["diff_low"], r["diff_high"]) == pytest.approx(tuple(t.confidence_interval(0.95)))
        assert r["bgd_n"] == r["hes_n"] == r["reuse_n"] == 3
    text = markdown_scale(rows)
    assert text.count("\n") == 3 and "| 32 | 256 |" in text
    assert Path(plot_scale(rows, tmp_path / "s.png")).stat().st_size > 0


def test_the_baselines_accuracy_is_a_column_per_configuration():
    """Local SGD and compressed BGD runs beside the study's (jobs/scale.params measures the two baselines that
    win at scale): a column each, by run label, with the mean and CI over its seeds at every rank count that
    has them, blank elsewhere; the study's own columns do not take them in."""
    runs = [run(a, n, 0.96, s) for n in (2, 8) for a in ("bgd", "hes", "reuse") for s in range(3)]
    local = [run("localsgd", n, acc, s) for n, accs in ((2, [0.97, 0.975, 0.972]), (8, [0.95, 0.94, 0.945]))
             for s, acc in enumerate(accs)]
    for r in local:
        r.config["r"] = 4
    power = [run("bgd", 8, acc, s) for s, acc in enumerate([0.96, 0.962, 0.958])]
    for r in power:
        r.config["compress"] = "powersgd:4"
    rows = scale_rows([*runs, *local, *power])
    lsgd, psgd = run_label(local[0].config), run_label(power[0].config)
    assert lsgd != psgd and "BGD" not in lsgd
    at = {r["ranks"]: r for r in rows}
    assert at[8]["bgd_n"] == 3 and at[8]["bgd_mean"] == pytest.approx(0.96)  # PowerSGD is not the reference
    m, lo, hi, n = mean_ci([0.95, 0.94, 0.945])
    assert (at[8][f"{lsgd}|mean"], at[8][f"{lsgd}|low"], at[8][f"{lsgd}|high"], at[8][f"{lsgd}|n"]) == (m, lo, hi, n)
    assert at[2][f"{psgd}|n"] == 0
    text = markdown_scale(rows).splitlines()
    assert sorted([lsgd, psgd]) == [psgd, lsgd] and text[0].endswith(f" {psgd} | {lsgd} |")  # sorted by label
    cells = [line.strip("| ").split(" | ") for line in text[2:]]
    assert cells[0][-2:] == ["", "97.23% ± 0.63 (n 3)"]  # N = 2: local SGD, no PowerSGD
    assert cells[1][-2].startswith("96.00% ± ") and cells[1][-1].startswith("94.50% ± ")


def test_script_without_run_logs_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "scale.py: error: no run logs found", proc.stderr


def test_time_to_target_uses_the_nearest_measured_rank_count():
    runs = [run("bgd", 2, 0.97, 0, [0.90, 0.96, 0.97]), run("bgd", 2, 0.96, 1, [0.90, 0.95, 0.96]),
            run("hes", 2, 0.95, 0, [0.80, 0.90, 0.95]), run("hes", 8, 0.96, 0, [0.85, 0.96, 0.96])]
    t = target_of(runs)
    assert t == pytest.approx(0.965 - 0.005)
    fp16 = run("bgd", 2, 0.90, 2, [0.80, 0.85, 0.90])
    fp16.config["compress"] = "fp16"
    assert target_of([*runs, fp16]) == t  # compressed BGD is another method, not the reference
    assert epochs_to_target(runs[:2], t) == 3  # the mean curve 0.90, 0.955, 0.965 reaches 0.96 at epoch 3
    assert epochs_to_target(runs[2:3], t) != epochs_to_target(runs[2:3], t)  # never: NaN
    sim = [{"label": "H-ES", "algo": "hes", "platform": "star", "nodes": n, "scaling": "strong", "epoch_s": 2.0}
           for n in (2, 8, 64)] + [{"label": "BGD", "algo": "bgd", "platform": "star", "nodes": 64,
                                     "scaling": "strong", "epoch_s": 1.5}]
    rows = time_to_target_rows(runs, sim, 0.95)
    got = {(r["label"], r["nodes"]): (r["accuracy_ranks"], r["assumed"], r["epochs_to_target"], r["time_to_target_s"])
           for r in rows}
    assert got[("H-ES", 2)] == (2, False, 3.0, 6.0)
    assert got[("H-ES", 8)] == (8, False, 2.0, 4.0)
    assert got[("H-ES", 64)] == (8, True, 2.0, 4.0)  # assumed from 8 ranks
    assert got[("BGD", 64)] == (2, True, 2.0, 3.0)
    text = markdown_time_to_target(rows)
    assert "| star | 64 | 4 (2*) | 3 (2*) |" in text and "95.00%" in text
    assert "| star | 2 | 6 (3) | n/r |" in text  # BGD was not replayed at 2 nodes


def test_time_to_target_matches_each_baseline_by_its_configuration(tmp_path):
    """A simulated row carries its configuration's poster label (``method``): BGD and BGD with PowerSGD are
    both algo 'bgd' but are matched with their own accuracy runs; a method measured at 2 ranks only is assumed
    from 2 ranks at every N; a method without accuracy runs is left out."""
    from hes_mpi.config import run_label
    from hes_mpi.post.scale import plot_time_to_target

    runs = [run("bgd", 2, 0.97, 0, [0.90, 0.96, 0.97]), run("bgd", 2, 0.97, 1, [0.90, 0.96, 0.97])]
    psgd = [run("bgd", 2, 0.96, s, [0.80, 0.90, 0.96]) for s in (0, 1)]
    for r in psgd:
        r.config["compress"] = "powersgd:4"
    local = [run("localsgd", 2, 0.95, s, [0.80, 0.90, 0.95]) for s in (0, 1)]
    bgd_label, psgd_label = run_label(runs[0].config), run_label(psgd[0].config)
    assert bgd_label != psgd_label
    sim = [{"label": lab, "method": lab, "algo": "bgd", "platform": p, "nodes": n, "scaling": "strong",
            "epoch_s": 1.0} for lab in (bgd_label, psgd_label) for p in ("star", "fattree") for n in (2, 64)]
    sim.append({"label": "fp16", "method": "BGD, fp16", "algo": "bgd", "platform": "star", "nodes": 2,
                "scaling": "strong", "epoch_s": 1.0})
    rows = time_to_target_rows(runs + psgd + local, sim, 0.955)
    got = {(r["method"], r["platform"], r["nodes"]): (r["epochs_to_target"], r["assumed"]) for r in rows}
    assert got[(bgd_label, "star", 2)] == (2.0, False) and got[(bgd_label, "star", 64)] == (2.0, True)
    assert got[(psgd_label, "fattree", 64)] == (3.0, True)
    assert not any(m == "BGD, fp16" for m, _, _ in got)  # no accuracy runs: left out
    text = markdown_time_to_target(rows)
    assert f"| {bgd_label} | {psgd_label} |" in text
    never = time_to_target_rows(runs + psgd, sim, 0.965)  # PowerSGD never reaches it
    assert "-" in markdown_time_to_target(never)
    assert Path(plot_time_to_target(never, tmp_path / "t.png")).stat().st_size > 0
