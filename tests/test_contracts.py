"""1-rank against N-rank contracts of the baselines, end to end through ``train``: the same global batches
on 1 and 2 ranks give the same training up to the order of float32 sums (and, for compressed exchanges,
up to what compressing each rank's share separately changes)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import MPIEXEC, mpi_size, run_cli

pytestmark = pytest.mark.skipif(MPIEXEC is None or mpi_size() > 1, reason="launches mpiexec itself: run serially")

SYN = ["--data", "synthetic:2000", "--hidden", "32", "--batch", "200", "--lr", "1", "--epochs", "2"]


def final_theta(tmp_path, ranks: int, method: list[str]) -> np.ndarray:
    out = tmp_path / f"{ranks}.h5"
    proc = run_cli(["train", *SYN, *method, "--out", out], n=ranks)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(out, "r") as f:
        return f["final/theta"][()]


@pytest.mark.parametrize(("method", "atol"), [
    (["--algo", "reuse", "--r", "2"], 1e-4),  # the gradient of the global batch, whoever sums it
    (["--algo", "reuse", "--r", "3", "--compress", "fp16"], 2e-2),  # float16 shares: rounded per rank
    (["--algo", "bgd", "--compress", "powersgd:2"], 2e-2),  # the power iteration on the summed shares
    (["--algo", "bgd", "--hidden", "32,16,8", "--activation", "relu", "--init", "he"], 1e-4),  # a deeper network
    (["--algo", "bgd", "--hidden", "24,12", "--activation", "tanh", "--init", "xavier"], 1e-4),
], ids=["reuse", "reuse-fp16", "powersgd", "deep-relu", "deep-tanh"])
def test_one_rank_and_two_ranks_train_alike(tmp_path, method, atol):
    one, two = final_theta(tmp_path, 1, method), final_theta(tmp_path, 2, method)
    assert np.max(np.abs(one - two)) < atol


def test_local_sgd_on_one_rank_is_bgd_and_on_two_ranks_stays_near_it(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "l").mkdir()
    bgd1 = final_theta(tmp_path / "b", 1, ["--algo", "bgd"])
    local1 = final_theta(tmp_path / "l", 1, ["--algo", "localsgd", "--r", "1"])
    assert np.array_equal(bgd1.view(np.uint32), local1.view(np.uint32))
    local2 = final_theta(tmp_path / "l", 2, ["--algo", "localsgd", "--r", "1"])
    assert 0 < np.max(np.abs(local2 - bgd1)) < 0.1  # each rank's mean of its own rows: near, not equal
