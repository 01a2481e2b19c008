"""The container image, built and run for real with podman (docker/build.sh): its size, a 2-rank training
writing a run log into a mounted folder that the host reads, the data in it, the non-root user. Needs root,
podman, debootstrap and runc (.ci/run installs them); skipped with the reason elsewhere."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mpi_size

ROOT = Path(__file__).resolve().parents[1]
TAG = "localhost/hes_mpi-test:latest"
BASE = "localhost/hes_mpi-test-base:bookworm"
#: The container issue's goal was 600 MB; the two-stage image measures 756 MB (docker/README.md: 199 MB
#: Debian with Python, 56 MB MPICH's runtime, 446 MB the virtual environment -- llvmlite alone 153 MB --,
#: 55 MB MNIST). The goal is missed, and said so; this bound keeps the image from growing unnoticed.
MAX_IMAGE_BYTES = 800_000_000

pytestmark = [
    pytest.mark.skipif(mpi_size() > 1, reason="builds and runs containers: run serially"),
    pytest.mark.skipif(os.geteuid() != 0, reason="podman here runs rootful (and debootstrap needs root)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("podman", "debootstrap", "runc")),
                       reason="needs podman, debootstrap and runc (apt-get install podman buildah debootstrap runc)"),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The image, built once per test session by docker/build.sh from scratch: its own base image too (made
    again by debootstrap, never one left by an earlier run), both removed afterwards."""
    work = tmp_path_factory.mktemp("build")
    env = {**os.environ, "HES_MPI_WORK": str(work), "HES_MPI_SMOKE": "0", "HES_MPI_BASE": BASE,
           "HES_MPI_REBUILD_BASE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "docker" / "build.sh"), TAG], capture_output=True, text=True,
                          env=env, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield {"tag": TAG, "log": proc.stdout, "conf": str(work / "containers.conf")}
    subprocess.run(["podman", "rmi", "-f", TAG, BASE], capture_output=True, env={**os.environ,
                   "CONTAINERS_CONF": str(work / "containers.conf")}, check=False)


def podman(image, *args, timeout=300):
    env = {**os.environ, "CONTAINERS_CONF": image["conf"]}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def test_the_image_does_not_grow(image):
    size = int(podman(image, "image", "inspect", image["tag"], "--format", "{{.Size}}").stdout.strip())
    assert size <= MAX_IMAGE_BYTES, f"{size / 1e6:.0f} MB"
    assert f"built {image['tag']} in" in image["log"]


def test_help(image):
    proc = podman(image, "run", "--rm", image["tag"])
    assert proc.returncode == 0, proc.stderr
    assert "usage: hes-mpi" in proc.stdout and "cluster" in proc.stdout


def test_two_rank_training_writes_a_run_log_the_host_reads(image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)  # the image's user (uid 1000) writes into it
    proc = podman(image, "run", "--rm", "--shm-size=256m", "-v", f"{out}:/home/hes/out", "--entrypoint", "mpiexec",
                  image["tag"], "-n", "2", "hes-mpi", "train", "--data", "synthetic", "--epochs", "2",
                  "--out", "out/run.h5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = subprocess.run([sys.executable, "-m", "hes_mpi", "summary", str(out / "run.h5"), "--json"],
                             capture_output=True, text=True, timeout=120, check=False)
    assert summary.returncode == 0, summary.stderr
    s = json.loads(summary.stdout)
    assert s["ranks"] == 2 and s["complete"] is True and s["theta_consistent"] is True
    from hes_mpi.runlog import RunLog

    with RunLog(str(out / "run.h5")) as rl:
        assert "MPICH" in rl.environment["mpi_vendor"] and "4.0" in rl.environment["mpi_library"]


def test_the_image_holds_verified_mnist(image):
    proc = podman(image, "run", "--rm", image["tag"], "data", "list", "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout and "/data" in proc.stdout


def test_it_runs_as_a_user_not_root(image):
    proc = podman(image, "run", "--rm", "--entrypoint", "id", image["tag"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("uid=1000(hes)")


def documented_podman_commands() -> list[str]:
    """The commands of docker/README.md's Podman section, in order (continuation lines joined)."""
    section = (ROOT / "docker" / "README.md").read_text().split("\n## Podman", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_documented_commands_run_as_written(image, tmp_path):
    """docker/README.md's commands, as a user copies them (the build done, MNIST's minutes-long training left
    out): `sudo bash docker/run.sh ...` with podman's own configuration, not build.sh's, so podman's default
    ulimits apply unless the wrapper caps them (`podman run` alone fails on hosts like this one)."""
    env = {k: v for k, v in os.environ.items() if k != "CONTAINERS_CONF"}
    ran = []
    for line in documented_podman_commands():
        if "docker/build.sh" in line or "--data mnist" in line:
            continue
        cmd = (line.removeprefix("sudo ").replace("localhost/hes_mpi ", f"{image['tag']} ")
               .replace("bash docker/run.sh", f"bash {ROOT / 'docker' / 'run.sh'}"))
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}{proc.stderr}"
        ran.append((line, proc.stdout))
    assert [line.split()[:3] for line, _ in ran if "run.sh" in line] == [["sudo", "bash", "docker/run.sh"]] * 3
    assert "usage: hes-mpi" in next(out for line, out in ran if line.endswith("--help"))
    assert (tmp_path / "out" / "run.h5").stat().st_size > 0
