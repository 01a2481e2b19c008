"""Results are bitwise the same as before the restructuring of the package: four runs whose final
parameters were hashed with the code as it was (2 ranks, seed 7), before any module moved."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

#: (algo, dataset, epochs) -> theta_sha256 of ``mpiexec -n 2 hes-mpi train --algo A --data D --epochs E --seed 7``.
RECORDED = {
    ("bgd", "synthetic", 2): "32f3f04d8bb59f8d489365d566c7ea4dd3bd328c05dfd048b8e9b20659359f30",
    ("hes", "synthetic", 2): "3d46be0a2153325cdcd606ed535ce782a724ae88c76852694599db8655a096d8",
    ("hes", "mnist", 1): "e0062785d05fadcb3b65092213fd313c6b503889df18bb14489dc2a52ef55791",
    ("bgd", "mnist", 1): "a7b85384bc112486ffa7024d69950db4712625f7ede7009369c5db94db6132eb",
}


def final_sha256(tmp_path, algo: str, data: str, epochs: int, *extra) -> str:
    out = tmp_path / f"{algo}_{data}.h5"
    proc = run_cli(["train", "--algo", algo, "--data", data, "--epochs", epochs, "--seed", 7, "--out", out, *extra],
                   n=2, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(run_cli(["summary", out, "--json"], n=None).stdout)["theta_sha256"]


@pytest.mark.parametrize("algo", ["bgd", "hes"])
def test_synthetic_runs_end_with_the_recorded_parameters(tmp_path, algo):
    assert final_sha256(tmp_path, algo, "synthetic", 2) == RECORDED[(algo, "synthetic", 2)]


@pytest.mark.parametrize("algo", ["bgd", "hes"])
def test_mnist_runs_end_with_the_recorded_parameters(tmp_path, mnist_dir, algo):
    assert final_sha256(tmp_path, algo, "mnist", 1, "--data-dir", mnist_dir) == RECORDED[(algo, "mnist", 1)]
