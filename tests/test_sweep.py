"""hes-mpi sweep: a parameter file of named train configurations, several seeds, one MPI job, tables."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import run_cli

COMMON = "--data synthetic:2000 --hidden 16 --batch 200 --lr 1 --epochs 2"
PARAMS = """# a comment line
bgd    --algo bgd
plain  --algo hes --r 2 --plain      # the poster's algorithm
head   --algo hes --r 2 --perturb output --baseline
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    (d / "p.params").write_text(PARAMS)
    proc = run_cli(["sweep", d / "p.params", "--seeds", "0", "1", "--args", COMMON, "--out-dir", d / "out"])
    assert proc.returncode == 0, proc.stderr
    return d, proc


def test_every_configuration_and_seed_has_a_run_log_and_the_tables_group_seeds(swept):
    d, proc = swept
    for name in ("bgd", "plain", "head"):
        for seed in (0, 1):
            assert (d / "out" / f"{name}_s{seed}.h5").stat().st_size > 0
    with open(d / "out" / "accuracy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["Reference (BGD)", "H-ES, r = 2 [plain]",
                                        "H-ES, r = 2 [output layer, baseline, ES step auto]"]
    assert all(r["seeds"] == "2" for r in rows)
    assert "± " in proc.stdout and "Net BW" in proc.stdout


def test_a_second_sweep_keeps_complete_runs(swept):
    d, _ = swept
    before = {p.name: p.stat().st_mtime_ns for p in (d / "out").glob("*.h5")}
    proc = run_cli(["sweep", d / "p.params", "--seeds", "0", "1", "--args", COMMON, "--out-dir", d / "out"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("kept") == 6
    assert {p.name: p.stat().st_mtime_ns for p in (d / "out").glob("*.h5")} == before


def test_dry_run_lists_the_runs_without_mpi(tmp_path):
    (tmp_path / "p.params").write_text(PARAMS)
    proc = run_cli(["sweep", tmp_path / "p.params", "--seeds", "3", "--args", COMMON, "--dry-run"], n=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "bgd_s3: Reference (BGD), seed 3, 2 epochs, data synthetic:2000",
        "plain_s3: H-ES, r = 2 [plain], seed 3, 2 epochs, data synthetic:2000",
        "head_s3: H-ES, r = 2 [output layer, baseline, ES step auto], seed 3, 2 epochs, data synthetic:2000"]


def test_interleave_runs_seed_by_seed(tmp_path):
    (tmp_path / "p.params").write_text(PARAMS)
    proc = run_cli(["sweep", tmp_path / "p.params", "--seeds", "4", "2", "--args", COMMON, "--dry-run", "--interleave"],
                   n=None)
    assert proc.returncode == 0, proc.stderr
    assert [ln.split(":")[0] for ln in proc.stdout.splitlines()] == [
        "bgd_s4", "plain_s4", "head_s4", "bgd_s2", "plain_s2", "head_s2"]


def test_only_runs_the_matching_lines(tmp_path):
    size = Path(__file__).resolve().parent.parent / "jobs" / "size.params"
    proc = run_cli(["sweep", size, "--seeds", "0", "--only", "w1024_*", "w300_d1_bgd",
                    "--args=--epochs 3", "--dry-run"], n=None)
    assert proc.returncode == 0, proc.stderr
    names = [ln.split(":")[0] for ln in proc.stdout.splitlines()]
    assert names == ["w300_d1_bgd_s0"] + [f"w1024_d{d}_{m}_s0" for d in (1, 2, 3) for m in ("bgd", "hes", "lowrank")]
    proc = run_cli(["sweep", size, "--only", "w4096_*", "--dry-run"], n=None)
    assert proc.returncode == 2 and "size.params matches" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("text", "fragment"), [
    ("a --algo hes --bogus 1\n", "p.params:1 (a): unrecognized arguments: --bogus"),
    ("a --algo bgd\na --algo hes\n", "p.params:2: NAME 'a' is used twice"),
    ("a --algo bgd --out x.h5\n", "set by the sweep"),
    ("# nothing\n", "no configuration lines"),
    ("a --algo hes --K 0\n", "p.params:1 (a): --K must be at least 1"),
])
def test_bad_parameter_files_are_one_line_errors(tmp_path, text, fragment):
    (tmp_path / "p.params").write_text(text)
    proc = run_cli(["sweep", tmp_path / "p.params", "--dry-run"], n=None)
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert fragment in proc.stderr


def test_a_finished_log_is_recognised_across_irrelevant_options(swept):
    """BGD ignores the H-ES options, and logs without a newer method option count as plain."""
    from hes_mpi.config import PLAIN, RunConfig
    from hes_mpi.run.suite import finished

    d, _ = swept
    bgd = d / "out" / "bgd_s0.h5"
    base = {"data": "synthetic:2000", "hidden": 16, "batch": 200, "lr": 1.0, "epochs": 2, "seed": 0}
    assert finished(bgd, RunConfig(algo="bgd", **base))
    assert finished(bgd, RunConfig(algo="bgd", K=3, perturb="all", es_rows=0.5, threads=7, **base))
    assert not finished(bgd, RunConfig(algo="bgd", **{**base, "lr": 2.0}))
    assert not finished(bgd, RunConfig(algo="bgd", **{**base, "epochs": 3}))
    plain = d / "out" / "plain_s0.h5"
    assert finished(plain, RunConfig(algo="hes", r=2, **base, **PLAIN))
    assert not finished(plain, RunConfig(algo="hes", r=2, **base))  # the defaults are not plain


def test_tune_lr_picks_the_best_dev_accuracy_per_line_then_runs_the_seeds(tmp_path):
    (tmp_path / "p.params").write_text("bgd --algo bgd\nreuse --algo reuse --r 2\nfixed --algo bgd --lr 0.5\n")
    common = "--data synthetic:2000 --hidden 16 --batch 200 --epochs 2"
    proc = run_cli(["sweep", tmp_path / "p.params", "--seeds", "0", "1", "--tune-lr", "0.3", "3", "--args", common,
                    "--out-dir", tmp_path / "out"])
    assert proc.returncode == 0, proc.stderr
    from hes_mpi.runlog import RunLog

    def dev(path):
        with RunLog(str(path)) as rl:
            return rl.summary()["dev_acc"]

    for name in ("bgd", "reuse"):
        accs = {lr: dev(tmp_path / "out" / "tune" / f"{name}_lr{lr}.h5") for lr in ("0.3", "3")}
        best = max(accs, key=lambda k: (accs[k], -float(k)))
        with RunLog(str(tmp_path / "out" / f"{name}_s1.h5")) as rl:
            assert rl.config["lr"] == float(best) and rl.config["seed"] == 1
    assert not list((tmp_path / "out" / "tune").glob("fixed_*"))  # a line that sets --lr is not tuned
    with RunLog(str(tmp_path / "out" / "fixed_s0.h5")) as rl:
        assert rl.config["lr"] == 0.5
    table = (tmp_path / "out" / "tuning.md").read_text()
    assert "| bgd |" in table and "| reuse |" in table and "**" in table
    assert "Learning rate chosen on the dev set" in proc.stdout and "95% confidence interval" in proc.stdout


def test_tune_lr_refuses_an_lr_in_args(tmp_path):
    (tmp_path / "p.params").write_text(PARAMS)
    proc = run_cli(["sweep", tmp_path / "p.params", "--tune-lr", "1", "2", "--args", "--lr 3", "--dry-run"], n=None)
    assert proc.returncode == 2 and "leave --lr out of --args" in proc.stderr


def test_a_diverging_line_is_recorded_and_the_sweep_goes_on(tmp_path):
    """The first line diverges (its lr blows the parameters up), and so does the tuning run of the second at
    lr 1e30: their run logs are complete with ``diverged``, the iteration and the reason; the sweep goes on
    (the second line is tuned and runs); the tables say '0 (1 of 1 diverged)'; a restart keeps every run."""
    (tmp_path / "p.params").write_text("boom --algo bgd --lr 1e30\nok --algo bgd\n")
    common = "--data synthetic:2000 --hidden 16 --batch 200 --epochs 2"
    args = ["sweep", tmp_path / "p.params", "--seeds", "0", "--tune-lr", "1", "1e30", "--args", common,
            "--out-dir", tmp_path / "out"]
    proc = run_cli(args)
    assert proc.returncode == 0, proc.stderr
    assert "tuning ok at lr 1e+30: loss or gradient is not finite" in proc.stderr, proc.stderr
    assert proc.stderr.count("boom_s0 diverged: loss or gradient is not finite at iteration") == 1, proc.stderr
    s = json.loads(run_cli(["summary", tmp_path / "out" / "boom_s0.h5", "--json"], n=None).stdout)
    assert s["complete"] and s["diverged"] and s["diverged_iteration"] >= 0 and "not finite" in s["diverged_reason"]
    assert s["dev_acc"] is None  # NaN in JSON: no final accuracy
    ok = json.loads(run_cli(["summary", tmp_path / "out" / "ok_s0.h5", "--json"], n=None).stdout)
    assert ok["complete"] and not ok["diverged"] and ok["dev_acc"] > 0 and ok["lr"] == 1
    assert "| 0 (1 of 1 diverged) |" in (tmp_path / "out" / "accuracy.md").read_text()
    again = run_cli(args)  # two tuning runs and two final runs, all complete: nothing is trained again
    assert again.returncode == 0 and again.stdout.count("kept") == 4, again.stdout + again.stderr


def test_sweep_and_training_say_where_they_are(swept):
    """A line per run started and finished (its index of the total, elapsed time, an ETA from the runs so far),
    and the training's epoch lines end with the ETA of the run."""
    _, proc = swept
    out = proc.stdout
    assert out.count(" started; elapsed ") == 6
    assert "== run 1/6: bgd_s0 (Reference (BGD), seed 0) started; elapsed 0 s, ETA ?" in out
    t = r"(\d+ s|\d+(:\d\d)+)"  # 42 s, 1:30, 1:02:10
    assert re.search(rf"== run 1/6: bgd_s0 finished in {t}; elapsed {t}, ETA {t}\n", out), out
    assert re.search(rf"== run 6/6: head_s1 finished in {t}; elapsed {t}\n", out), out
    assert re.search(rf"epoch 1/2 .*, ETA {t}\n", out) and not re.search(r"epoch 2/2 .*ETA", out)


def test_progress_estimates_from_the_timed_items_only():
    from hes_mpi.run.progress import Progress, duration

    now = [100.0]
    p = Progress(5, clock=lambda: now[0])
    assert p.status() == "elapsed 0 s, ETA ?"
    p.done()  # kept: no time, not in the mean
    now[0] += 70
    p.done(30.0)
    p.done(90.0)
    assert p.eta() == 2 * 60.0 and p.status() == "elapsed 1:10, ETA 2:00"
    assert duration(3725) == "1:02:05" and duration(float("nan")) == "?"
