"""Results are bitwise the same as before the restructuring of the package: four runs whose final
parameters were hashed with the code as it was (2 ranks, seed 7), before any module moved; and the
compressed exchanges as they were before their Numba kernels (issue: fair time), six more runs hashed with the
NumPy code they replaced; and each noise source with whole-vector and output-layer perturbations."""

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

#: (compress, dataset, epochs) -> theta_sha256 of ``... train --algo bgd --compress C --data D --epochs E --seed 7``,
#: recorded with the NumPy exchanges (algorithms/compress.py before compress_kernels.py).
RECORDED_COMPRESS = {
    ("fp16", "synthetic", 2): "2034984624bd6cb9f4e26862dac26bc33c7b3abbbefb621241f4db8e040dac32",
    ("fp16", "mnist", 1): "3fbcd553db684b8d0d893bd092e21e7583a3bd4876b7729a77213df869bc0a0a",
    ("topk:0.25", "synthetic", 2): "202f3698b5944bd3d0b98ff402c8a2e9192b2312b31e97680e959cc9ade8b6a1",
    ("topk:0.25", "mnist", 1): "fe32a40d37cecfd9ca89cea5be2af7f074baef5be70236fb3fdacae55bd60a26",
    ("powersgd:4", "synthetic", 2): "2a8c86ce6bbba6fb3876c1f802c14dcf76355825806a4a99ba79513f3b62bad5",
    ("powersgd:4", "mnist", 1): "1b728d305ecf8f4e037b4f43c6904815327c78c9f460aec558a555c75e18c66c",
}

#: (noise, perturb) -> theta_sha256 of ``... train --algo hes --noise N --perturb P --data synthetic --epochs 2
#: --seed 7``: table and philox recorded before the counter source (which writes into H-ES's buffers), counter
#: when it came (it pins Philox4x32-10 and the Box-Muller kernel's float32 bits).
RECORDED_NOISE = {
    ("philox", "output"): "29851b19b3ffa248061bb4e5cfa320321e94b1909580df65705298ebdffd0333",
    ("philox", "all"): "782a21d32d42200840f5ad74df645b8e0e303db6dcd50190db13d06096556975",
    ("table", "all"): "8935848af92f5f01128c234c0129158feb9326fd71feae147b5ac68ed2f2b136",
    ("counter", "output"): "f8a69d1aada44744d49ad13536556066d6829a8007125c22a4240ae583dfc4ed",
    ("counter", "all"): "87cbdf2ba8a77a548004f46cac9db3a8e3cda7c3e7c69940cf5d0ea96dee4b4c",
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


@pytest.mark.parametrize("compress", ["fp16", "topk:0.25", "powersgd:4"])
def test_compressed_runs_end_with_the_recorded_parameters(tmp_path, mnist_dir, compress):
    assert final_sha256(tmp_path, "bgd", "synthetic", 2, "--compress", compress) == \
        RECORDED_COMPRESS[(compress, "synthetic", 2)]
    assert final_sha256(tmp_path, "bgd", "mnist", 1, "--compress", compress, "--data-dir", mnist_dir) == \
        RECORDED_COMPRESS[(compress, "mnist", 1)]


@pytest.mark.parametrize(("noise", "perturb"), list(RECORDED_NOISE))
def test_each_noise_source_ends_with_the_recorded_parameters(tmp_path, noise, perturb):
    assert final_sha256(tmp_path, "hes", "synthetic", 2, "--noise", noise, "--perturb", perturb) == \
        RECORDED_NOISE[(noise, perturb)]
