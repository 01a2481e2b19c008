"""The command line as a user runs it: real mpiexec, real files, one-line errors, exit codes, no hangs."""

from __future__ import annotations

import gzip
import json
import struct

import h5py
import numpy as np
import pytest
from conftest import error_lines, run_cli

SYN = ["--data", "synthetic:400", "--hidden", "16", "--batch", "100", "--lr", "1", "--epochs", "2"]


def assert_usage_error(proc, fragment: str):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    errs = error_lines(proc)
    assert len(errs) == 1, proc.stderr  # one line, from one rank
    assert fragment.lower() in errs[0].lower(), errs[0]
    assert "Traceback" not in proc.stderr


def write_idx(d, n=60, magic_images=0x00000803, n_labels=None, truncate=0, gz=False, size=4):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labs = rng.integers(0, 10, n_labels if n_labels is not None else n, dtype=np.uint8)
    img_bytes = struct.pack(">IIII", magic_images, n, size, size) + imgs.tobytes()
    lab_bytes = struct.pack(">II", 0x00000801, labs.size) + labs.tobytes()
    if truncate:
        img_bytes = img_bytes[:-truncate]
    for name, data in (("train-images-idx3-ubyte", img_bytes), ("train-labels-idx1-ubyte", lab_bytes),
                       ("t10k-images-idx3-ubyte", img_bytes), ("t10k-labels-idx1-ubyte", lab_bytes)):
        if gz:
            with gzip.open(d / (name + ".gz"), "wb") as f:
                f.write(data)
        else:
            (d / name).write_bytes(data)
    return d


# ------------------------------------------------------------------------------------------ happy paths
def test_plain_switch_and_explicit_method_options():
    """--plain sets every H-ES method option to the poster's; options given explicitly still apply."""
    from hes_mpi.cli import build_parser
    from hes_mpi.cli.common import es_methods as _es_methods
    from hes_mpi.config import PLAIN, RunConfig

    p = build_parser()
    sample = {"es_rows_sample": "random"}  # how --es-rows picks its rows; --plain leaves it alone
    assert _es_methods(p.parse_args(["train"])) == {**{k: getattr(RunConfig(), k) for k in PLAIN}, **sample}
    assert _es_methods(p.parse_args(["train", "--plain"])) == {**PLAIN, **sample}
    mixed = _es_methods(p.parse_args(["train", "--plain", "--carry", "--es-rows", "0.5"]))
    assert mixed == {**PLAIN, **sample, "carry": True, "es_rows": 0.5}
    assert _es_methods(p.parse_args(["compare", "--plain"])) == {**PLAIN, **sample}
    head = _es_methods(p.parse_args(["train", "--es-rows", "0.5", "--es-rows-sample", "head"]))
    assert head["es_rows_sample"] == "head"
    off = _es_methods(p.parse_args(["train", "--no-baseline", "--no-antithetic"]))
    assert off["baseline"] is False and off["antithetic"] is False


def test_help_documents_every_option():
    proc = run_cli(["train", "--help"], n=None)
    assert proc.returncode == 0
    for opt in ("--algo", "--K", "--r", "--sigma2", "--assisted", "--lr", "--batch", "--epochs", "--l2", "--hidden",
                "--seed", "--data", "--out", "--force", "--data-dir", "--plain", "--perturb", "--baseline",
                "--antithetic", "--recombine", "--carry", "--adapt-sigma", "--dist", "--es-rows", "--es-rows-sample"):
        assert opt in proc.stdout


def test_train_writes_runlog_and_summary(tmp_path):
    out = tmp_path / "run.h5"
    proc = run_cli(["train", *SYN, "--algo", "hes", "--r", "2", "--out", out])
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stdout and "done:" in proc.stdout
    assert proc.stderr.strip() == ""  # other ranks stay quiet
    s = run_cli(["summary", out, "--json"], n=None)
    assert s.returncode == 0, s.stderr
    d = json.loads(s.stdout)
    for key in ("algo", "ranks", "epochs", "iterations", "grad_steps", "es_steps", "train_acc", "dev_acc", "wall_s"):
        assert key in d
    assert d["ranks"] == 2 and d["epochs"] == 2 and d["iterations"] == 8
    assert d["grad_steps"] == 4 and d["es_steps"] == 4
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"]
        assert f["final/theta"].shape == (32 * 16 + 16 + 16 * 10 + 10,)
        assert "MPICH" in f["environment"].attrs["mpi_library"] or f["environment"].attrs["mpi_library"]


def test_same_command_is_bitwise_reproducible(tmp_path):
    outs = []
    for name in ("a.h5", "b.h5"):
        out = tmp_path / name
        proc = run_cli(["train", *SYN, "--algo", "hes", "--out", out])
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    with h5py.File(outs[0], "r") as a, h5py.File(outs[1], "r") as b:
        assert np.array_equal(a["final/theta"][()].view(np.uint32), b["final/theta"][()].view(np.uint32))
        for k in ("train_loss", "train_acc", "dev_loss", "dev_acc"):
            assert np.array_equal(a["epochs"][k][()], b["epochs"][k][()])
        assert np.array_equal(a["iterations/es_k"][()], b["iterations/es_k"][()])


@pytest.mark.parametrize("n", [2, 4])
def test_one_rank_and_n_ranks_agree(tmp_path, n):
    """Contract: the same global batches on 1 and n ranks give the same BGD parameters (fp tolerance)."""
    thetas = {}
    for ranks in (1, n):
        out = tmp_path / f"r{ranks}.h5"
        proc = run_cli(["train", *SYN, "--epochs", "3", "--out", out], n=ranks)
        assert proc.returncode == 0, proc.stderr
        with h5py.File(out, "r") as f:
            thetas[ranks] = f["final/theta"][()]
            acc = f["epochs/dev_acc"][()]
        thetas[(ranks, "acc")] = acc
    np.testing.assert_allclose(thetas[n], thetas[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(thetas[(n, "acc")], thetas[(1, "acc")], atol=2e-3)


def test_summary_errors_are_one_line(tmp_path):
    missing = run_cli(["summary", tmp_path / "nope.h5"], n=None)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    trunc = tmp_path / "trunc.h5"
    ok = tmp_path / "ok.h5"
    assert run_cli(["train", *SYN, "--out", ok]).returncode == 0
    trunc.write_bytes(ok.read_bytes()[:2000])
    p = run_cli(["summary", trunc], n=None)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    p = run_cli(["summary", foreign], n=None)
    assert p.returncode == 2 and "not a hes_mpi run log" in p.stderr


# ------------------------------------------------------------------------------------------ bad input rows
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--data", "nosuchset"], "unknown dataset"),
        (["--K", "0"], "--K"),
        (["--r", "0"], "--r"),
        (["--sigma2", "-1"], "--sigma2"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-3"], "--lr"),
        (["--batch", "1"], "smaller than the rank count"),
        (["--batch", "500"], "shard holds only"),
        (["--data", "synthetic:1"], "ranks but only 1 training"),
        (["--algo", "sgd"], "invalid choice"),
        (["--K", "two"], "invalid int"),
        (["--algo", "hes", "--antithetic", "--K", "3"], "even --K"),
        (["--algo", "hes", "--es-rows", "0"], "--es-rows"),
        (["--algo", "hes", "--adapt-sigma", "--no-baseline"], "needs --baseline"),
        (["--algo", "hes", "--perturb", "middle"], "must be all, output or lowrank:R"),
        (["--algo", "hes", "--perturb", "lowrank:0"], "must be all, output or lowrank:R"),
        (["--hidden", "300,0"], "--hidden"),
        (["--hidden", "wide"], "--hidden"),
        (["--activation", "gelu"], "invalid choice"),
        (["--init", "zeros"], "invalid choice"),
    ],
)
def test_bad_options(args, fragment):
    proc = run_cli(["train", *SYN, *args])
    assert_usage_error(proc, fragment)


@pytest.mark.parametrize("args", [
    ["compare", "--r", "0"],
    ["bench", "steps", "--reps", "0"],
    ["train", "--algo", "sgd"],
    ["sweep", "BAD_PARAMS"],
    ["cluster", "status", "--json", "--no-such-option"],
])
def test_errors_found_before_mpi_starts_are_one_line_from_one_rank(tmp_path, args):
    """Every rank sees the same bad input before MPI starts: the launcher's rank 0 alone says so and carries
    the exit status; the others leave first with 0 (Open MPI's launcher ends the job at the first rank that
    fails, with a banner of its own)."""
    bad = tmp_path / "p.params"
    bad.write_text("a --algo hes --bogus 1\n")
    proc = run_cli([str(bad) if a == "BAD_PARAMS" else a for a in args], n=2)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()  # nothing of the launcher's either: the speaking rank leaves last
    assert len(lines) == 1 and lines[0].startswith("hes-mpi"), proc.stderr


def test_missing_mnist(tmp_path):
    proc = run_cli(["train", "--data", "mnist", "--data-dir", tmp_path])
    assert_usage_error(proc, "data fetch mnist")


def test_corrupt_mnist_npy(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    (d / "train-images.npy").write_bytes(b"\x93NUMPY garbage")
    proc = run_cli(["train", "--data", "mnist", "--data-dir", tmp_path])
    assert_usage_error(proc, "mnist")


def test_bad_checksum_refused(tmp_path):
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(b"not the real thing"))
    proc = run_cli(["data", "fetch", "mnist", "--from", fake, "--data-dir", tmp_path / "d"], n=None)
    assert_usage_error(proc, "sha256")
    assert not (tmp_path / "d" / "mnist").exists()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"magic_images": 0x00000903}, "magic"),
        ({"magic_images": 0x12340803}, "magic"),
        ({"truncate": 10}, "truncated"),
        ({"truncate": 10, "gz": True}, "truncated"),
        ({"n_labels": 50}, "labels"),
    ],
)
def test_bad_idx(tmp_path, kwargs, fragment):
    d = write_idx(tmp_path / "idx", **kwargs)
    proc = run_cli(["train", "--data", f"idx:{d}", "--dev-size", "10", "--batch", "10", "--hidden", "8"])
    assert_usage_error(proc, fragment)


def test_idx_trains(tmp_path):
    d = write_idx(tmp_path / "idx", n=120, gz=True)
    proc = run_cli(["train", "--data", f"idx:{d}", "--dev-size", "20", "--batch", "20", "--hidden", "8",
                    "--epochs", "1", "--lr", "0.5"])
    assert proc.returncode == 0, proc.stderr


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "run.h5"
    out.write_bytes(b"precious")
    assert_usage_error(run_cli(["train", *SYN, "--out", out]), "--force")
    assert out.read_bytes() == b"precious"
    proc = run_cli(["train", *SYN, "--out", out, "--force"])
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("where", ["missing_folder", "is_folder"])
def test_unwritable_output(tmp_path, where):
    out = tmp_path / "no" / "such" / "run.h5" if where == "missing_folder" else tmp_path
    assert_usage_error(run_cli(["train", *SYN, "--out", out]), "--out")


def test_exception_on_one_rank_aborts_all():
    proc = run_cli(["train", *SYN, "--epochs", "50"], env={"HES_MPI_INJECT_FAULT": "1:3"}, timeout=60)
    assert proc.returncode != 0
    assert "fault injected" in proc.stderr
    assert "rank 1/2" in proc.stderr


def test_nonfinite_loss_is_a_clear_error():
    proc = run_cli(["train", *SYN, "--lr", "1e30"])
    assert proc.returncode == 1, proc.stderr
    assert "not finite" in proc.stderr and "Traceback" not in proc.stderr


def test_collapse_is_warned_once_and_reported_in_the_summary(tmp_path):
    """H-ES collapses without NaN (accuracy falls): one warning from rank 0, and summary says so."""
    out = tmp_path / "c.h5"
    proc = run_cli(["train", "--data", "synthetic:4000", "--hidden", "32", "--batch", "100", "--lr", "1", "--algo",
                    "hes", "--plain", "--r", "4", "--sigma-scale", "absolute", "--sigma2", "5", "--epochs", "6", "--out",
                    out])
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "collapsing" in warnings[0] and " 0/2 " in warnings[0]
    s = json.loads(run_cli(["summary", out, "--json"], n=None).stdout)
    assert s["collapsed"] is True and s["best_dev_acc"] - s["dev_acc"] > 0.05 and 1 <= s["best_dev_epoch"] < 6
    fine = tmp_path / "f.h5"
    assert run_cli(["train", *SYN, "--epochs", "3", "--out", fine]).returncode == 0
    s = json.loads(run_cli(["summary", fine, "--json"], n=None).stdout)
    assert s["collapsed"] is False and s["best_dev_acc"] >= s["dev_acc"]


def test_evaluate_reports_test_accuracy_and_agrees_with_the_dev_accuracy(tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}.h5"
        assert run_cli(["train", *SYN, "--epochs", "2", "--seed", seed, "--out", out]).returncode == 0
        runs.append(out)
    dev = json.loads(run_cli(["evaluate", *runs, "--split", "dev", "--json"], n=None).stdout)
    for r, path in zip(dev["runs"], runs):
        s = json.loads(run_cli(["summary", path, "--json"], n=None).stdout)
        assert r["accuracy"] == pytest.approx(s["dev_acc"], abs=1e-12)  # the same parameters, the same rows
    test = run_cli(["evaluate", *runs], n=None)
    assert test.returncode == 0, test.stderr
    assert "test accuracy" in test.stdout and "mean " in test.stdout and "over 2 runs" in test.stdout
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    bad = run_cli(["evaluate", foreign], n=None)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_command_is_the_first_argument():
    """An option's value that happens to be a command's name is not taken for the command."""
    from hes_mpi.cli import with_default_command

    assert with_default_command(["--out-dir", "train"]) == ["compare", "--out-dir", "train"]
    assert with_default_command(["--data-dir", "data", "--epochs", "1"])[0] == "compare"
    assert with_default_command(["--r", "2", "--out-dir", "summary"])[0] == "compare"
    assert with_default_command([]) == ["compare"]
    assert with_default_command(["train", "--out", "compare.h5"]) == ["train", "--out", "compare.h5"]
    for top in ("--help", "-h", "--version"):
        assert with_default_command([top]) == [top]


def test_out_dir_named_train_runs_the_main_job_into_that_folder(tmp_path):
    """``hes-mpi --out-dir train`` is the main job writing into ./train (it was once read as ``train``)."""
    proc = run_cli(["--out-dir", "train", "--data", "synthetic:800", "--hidden", "16", "--batch", "200", "--lr", "1",
                    "--epochs", "1", "--K", "4", "--r", "2", "--no-assisted"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "train"
    for name in ("bgd.h5", "hes_r2.h5", "accuracy.md", "savings.md", "training.png"):
        assert (out / name).stat().st_size > 0, name
    assert "Reference (BGD)" in proc.stdout and "H-ES, r = 2" in proc.stdout
