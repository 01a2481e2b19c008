"""The job scripts in jobs/ on a real one-node Slurm cluster (hes_mpi/cluster/slurm.py starts and stops it).

Each job is submitted with ``sbatch`` from a temporary submit folder (not the repository), with the
virtual environment's bin first on PATH, and waited for with ``sbatch --wait`` under a timeout, so a
broken cluster fails the test instead of hanging the suite. Skipped when Slurm is not installed
(``bash .ci/install-slurm.sh`` installs it) or when not root.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import modes_seen, mpi_size, mpiexec_cmd

from hes_mpi.cluster.slurm import PACKAGES, SlurmCluster, SlurmClusterError, missing_binaries
from hes_mpi.runlog import RunLog

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
SBATCH_TIMEOUT = 300  # seconds for one sbatch --wait
TRAIN_ARGS = "--data synthetic:800 --hidden 16 --batch 200 --lr 1 --epochs 2"

pytestmark = pytest.mark.skipif(mpi_size() > 1, reason="starts its own Slurm cluster: run serially")


# --------------------------------------------------------------------------- the scripts, without Slurm


@pytest.mark.parametrize("script", sorted(JOBS.glob("*.sbatch")), ids=lambda p: p.name)
def test_job_script_is_valid_bash_and_documents_its_environment(script):
    bash = shutil.which("bash") or "/bin/bash"
    proc = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    header = text.split("\nset -euo pipefail", 1)[0]
    assert "set -euo pipefail" in text
    assert "HES_MPI_ARGS" in header, f"{script.name} does not document HES_MPI_ARGS in its header"
    # every HES_MPI_* variable the script reads is documented in its header comment
    used = set(re.findall(r"\$\{?(HES_MPI_[A-Z_]+)", text.split("\nset -euo pipefail", 1)[1]))
    undocumented = sorted(v for v in used if f"#   {v}" not in header)
    assert undocumented == [], f"{script.name}: undocumented variables {undocumented}"
    assert re.search(r"^#SBATCH --output=hes_mpi-\S+%", text, flags=re.MULTILINE)


def _config_lines(path: Path) -> list[list[str]]:
    lines = (ln.split("#", 1)[0].split() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def test_sweep_params_match_the_default_array():
    configs = _config_lines(JOBS / "sweep.params")
    assert configs[0] == ["bgd"], "the BGD reference comes first"
    for fields in configs[1:]:
        r, k, s = fields  # R K SIGMA2
        assert int(r) >= 1 and int(k) >= 1 and float(s) >= 0
    assert {int(f[0]) for f in configs[1:]} == {2, 3}
    array = re.search(r"^#SBATCH --array=0-(\d+)$", (JOBS / "sweep.sbatch").read_text(), flags=re.MULTILINE)
    assert array and int(array.group(1)) == len(configs) - 1


def test_results_params_parse_and_match_the_documented_array():
    """jobs/results.params is valid for hes-mpi sweep, and the documented job array covers it x 3 seeds."""
    from hes_mpi.cli.train import sweep_runs

    runs = sweep_runs(str(JOBS / "results.params"), [0, 1, 2])
    for text in ((JOBS / "README.md").read_text(), (JOBS / "sweep.sbatch").read_text()):
        m = re.search(r"--array=0-(\d+) --export=ALL,HES_MPI_PARAMS=jobs/results.params", text)
        assert m and int(m.group(1)) == len(runs) - 1


# --------------------------------------------------------------------------- MUNGE's key


@pytest.mark.parametrize("mungekey", [True, False], ids=["mungekey", "without-mungekey"])
def test_munge_key_is_never_readable_by_others(monkeypatch, mungekey):
    """The cluster's private MUNGE key, made with mungekey or (older MUNGE: none installed) from random bytes,
    under umask 000: between any two steps of its making it is no one's but its owner's; munged starts with
    it and a credential encoded with it decodes."""
    import stat
    import tempfile

    if os.geteuid() != 0 or shutil.which("munged", path="/usr/sbin:" + os.environ.get("PATH", "")) is None:
        pytest.skip("needs root and munged (apt-get install munge)")
    exists = Path.exists
    if mungekey and not exists(Path(shutil.which("mungekey") or "/usr/sbin/mungekey")):
        pytest.skip("mungekey not installed")
    if not mungekey:  # a host without mungekey: the fallback
        monkeypatch.setattr(Path, "exists", lambda self: self.name != "mungekey" and exists(self))
    cluster = SlurmCluster()
    cluster.dir = Path(tempfile.mkdtemp(prefix="hes_mpi-slurm-"))
    cluster.dir.chmod(0o755)
    try:
        with modes_seen(cluster.dir / "munge", umask=0o000) as seen:
            cluster._start_munge()
        keys = [(name, mode) for name, mode in seen if "munge.key" in name]
        assert keys and all(stat.S_ISREG(m) for _, m in keys), keys
        assert sorted({f"{stat.S_IMODE(m):04o}" for _, m in keys if m & 0o077}) == [], keys
        assert stat.S_IMODE((cluster.dir / "munge" / "munge.key").stat().st_mode) == 0o400
        socket = f"--socket={cluster.munge_socket}"
        cred = subprocess.run(["munge", socket, "-n"], capture_output=True, check=True, timeout=30).stdout
        subprocess.run(["unmunge", socket], input=cred, capture_output=True, check=True, timeout=30)  # decodes
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="session")
def slurm():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): apt-get install {' '.join(PACKAGES)} "
                    "(done by .ci/install-slurm.sh)")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster needs root (slurmd, munged)")
    cluster = SlurmCluster()
    try:
        cluster.start()
    except SlurmClusterError as e:
        pytest.fail(f"could not start the test Slurm cluster: {e}", pytrace=False)
    yield cluster
    cluster.stop()


def job_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """Client environment: the cluster's SLURM_CONF, this interpreter's bin first on PATH, no HES_MPI_*
    variable of the caller's but HES_MPI_DATA."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    env = {k: v for k, v in cluster.env(PATH=path, **extra).items()
           if not k.startswith("HES_MPI_") or k == "HES_MPI_DATA" or k in extra}
    env.setdefault("HES_MPI_INIT_TIMEOUT", "30")  # a hung MPI start is retried by the scripts after 30 s
    return env


def sbatch(cluster: SlurmCluster, script: str, *options: str, submit_dir: Path, wait: bool = True,
           timeout: float = SBATCH_TIMEOUT, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """Submit jobs/SCRIPT from submit_dir (the job's SLURM_SUBMIT_DIR and working folder); return the
    finished sbatch process and the job id. ``env`` goes to the job with --export=ALL."""
    cmd = [shutil.which("sbatch", path=job_env(cluster)["PATH"]) or "sbatch", "--parsable",
           f"--chdir={submit_dir}", *options, *(["--wait"] if wait else []), str(JOBS / script)]
    try:
        proc = subprocess.run(cmd, cwd=submit_dir, env=job_env(cluster, **env), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s\nsqueue: {cluster.squeue()}\n"
                    f"{job_outputs(submit_dir)}\n{cluster.logs()}", pytrace=False)
        raise AssertionError from e  # not reached
    job_id = proc.stdout.strip().split(";")[0].split("\n")[0]
    assert job_id.isdigit(), f"sbatch printed no job id: {proc.stdout!r} {proc.stderr!r}"
    return proc, job_id


def job_outputs(submit_dir: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}" for p in sorted(submit_dir.glob("*.out")))


def summary(log: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hes_mpi", "summary", str(log), "--json"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_train_job(slurm, tmp_path):
    proc, job = sbatch(slurm, "train.sbatch", submit_dir=tmp_path, HES_MPI_ARGS=TRAIN_ARGS)
    out = tmp_path / f"hes_mpi-train-{job}.out"
    assert proc.returncode == 0, f"{proc.stderr}\n{job_outputs(tmp_path)}"
    text = out.read_text()
    assert "+ srun --mpi=pmi2 --kill-on-bad-exit=1 --cpus-per-task=1 python3 -m hes_mpi train --data synthetic:800" in text
    log = tmp_path / "runs" / f"train_{job}.h5"
    assert log.is_file(), text
    s = summary(log)
    assert s["ranks"] == 2 and s["complete"] is True and s["theta_consistent"] is True
    assert s["algo"] == "bgd" and s["dataset"] == "synthetic:800" and s["epochs"] == 2


SMALL_PARAMS = """\
# a small sweep for the tests: the BGD reference and two H-ES configurations
bgd
2 8 0.5   # r = 2
3 4 1.0
"""
EXPECTED = {"bgd.h5": {"algo": "bgd"},
            "r2_K8_s0.5.h5": {"algo": "hes", "r": 2, "K": 8, "sigma2": 0.5},
            "r3_K4_s1.0.h5": {"algo": "hes", "r": 3, "K": 4, "sigma2": 1.0}}


@pytest.fixture(scope="module")
def sweep_then_compare(slurm, tmp_path_factory):
    """Submit the sweep (3 array tasks), then compare.sbatch with --dependency=afterok on it, as the
    README of jobs/ says; wait for compare (which runs only after every sweep task succeeded)."""
    submit_dir = tmp_path_factory.mktemp("sweep")
    params = submit_dir / "small.params"
    params.write_text(SMALL_PARAMS)
    _, sweep_job = sbatch(slurm, "sweep.sbatch", "--array=0-2", submit_dir=submit_dir, wait=False,
                          HES_MPI_ARGS=TRAIN_ARGS, HES_MPI_PARAMS=str(params), HES_MPI_PYTHON=sys.executable)
    compare, compare_job = sbatch(slurm, "compare.sbatch", f"--dependency=afterok:{sweep_job}",
                                  submit_dir=submit_dir, HES_MPI_SWEEP_DIR=f"runs/sweep_{sweep_job}",
                                  HES_MPI_REPO=str(ROOT), HES_MPI_PYTHON=sys.executable)
    return submit_dir, sweep_job, compare, compare_job


def test_sweep_job_writes_one_log_per_task(sweep_then_compare):
    submit_dir, sweep_job, _, _ = sweep_then_compare
    run_dir = submit_dir / "runs" / f"sweep_{sweep_job}"
    outputs = job_outputs(submit_dir)
    assert sorted(p.name for p in run_dir.glob("*.h5")) == sorted(EXPECTED), outputs
    for task in range(3):
        text = (submit_dir / f"hes_mpi-sweep-{sweep_job}_{task}.out").read_text()
        assert f"+ srun --mpi=pmi2 --kill-on-bad-exit=1 --cpus-per-task=1 {sys.executable} -m hes_mpi train --algo " in text
    for name, want in EXPECTED.items():
        s = summary(run_dir / name)
        assert s["ranks"] == 2 and s["complete"] is True, name
        assert {k: s[k] for k in want} == want, name


def test_compare_job_after_the_sweep_writes_the_tables(sweep_then_compare):
    submit_dir, sweep_job, compare, compare_job = sweep_then_compare
    assert compare.returncode == 0, f"{compare.stderr}\n{job_outputs(submit_dir)}"
    run_dir = submit_dir / "runs" / f"sweep_{sweep_job}"
    for table in ("accuracy.md", "accuracy.csv", "savings.md", "savings.csv"):
        assert (run_dir / table).stat().st_size > 0, table
    out = (submit_dir / f"hes_mpi-compare-{compare_job}.out").read_text()
    assert "Savings relative to the reference (BGD)" in out
    savings = (run_dir / "savings.md").read_text()
    assert savings.count("\n") >= 4  # header, rule and the two H-ES rows


def test_sweep_task_without_a_line_fails_clearly(slurm, tmp_path):
    params = tmp_path / "small.params"
    params.write_text(SMALL_PARAMS)
    proc, job = sbatch(slurm, "sweep.sbatch", "--array=3", submit_dir=tmp_path, HES_MPI_ARGS=TRAIN_ARGS,
                       HES_MPI_PARAMS=str(params))
    assert proc.returncode != 0
    text = (tmp_path / f"hes_mpi-sweep-{job}_3.out").read_text()
    assert "sweep.sbatch: error: array task 3 has no configuration" in text
    assert "has 3 configuration line(s) (tasks 0-2); submit with --array=0-2" in text
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.h5"))


def test_sweep_named_lines_run_once_per_seed(slurm, tmp_path):
    """'NAME OPTIONS...' lines (the format of hes-mpi sweep and jobs/results.params) and HES_MPI_SEEDS:
    task = line x seeds + seed index, logs NAME_sSEED.h5 as the local sweep names them."""
    params = tmp_path / "named.params"
    params.write_text("head --algo hes --r 2 --perturb output   # a NAME line\n")
    proc, job = sbatch(slurm, "sweep.sbatch", "--array=0-1", submit_dir=tmp_path, HES_MPI_ARGS=TRAIN_ARGS,
                       HES_MPI_PARAMS=str(params), HES_MPI_SEEDS="0 1", HES_MPI_PYTHON=sys.executable)
    assert proc.returncode == 0, job_outputs(tmp_path)
    run_dir = tmp_path / "runs" / f"sweep_{job}"
    assert sorted(p.name for p in run_dir.glob("*.h5")) == ["head_s0.h5", "head_s1.h5"]
    for seed in (0, 1):
        s = summary(run_dir / f"head_s{seed}.h5")
        assert s["complete"] is True and s["seed"] == seed and s["algo"] == "hes" and s["r"] == 2


def test_compare_job_without_a_folder_fails_clearly(slurm, tmp_path):
    proc, job = sbatch(slurm, "compare.sbatch", submit_dir=tmp_path, HES_MPI_REPO=str(ROOT))
    assert proc.returncode != 0
    text = (tmp_path / f"hes_mpi-compare-{job}.out").read_text()
    assert "compare.sbatch: error: set HES_MPI_SWEEP_DIR" in text


RESUME_ARGS = "--data synthetic:4000 --hidden 32 --batch 100 --lr 1 --algo hes --r 2 --K 4 --epochs 150"


def _wait(predicate, timeout: float, what: str, cluster: SlurmCluster, submit_dir: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\nsqueue: {cluster.squeue()}\n{job_outputs(submit_dir)}",
                pytrace=False)


def _epochs(log: Path) -> int:
    with contextlib.suppress(Exception), RunLog(str(log)) as rl:
        return rl.table("epochs")["epoch"].size
    return 0


def test_signal_before_time_limit_checkpoints_requeues_and_resumes_bitwise(slurm, tmp_path):
    """USR1 (what --signal=USR1@120 sends before the time limit) -> checkpoint, exit 3, the script requeues
    the job, the next start resumes: the result is bitwise the uninterrupted run's."""
    ref = tmp_path / "ref.h5"
    r = subprocess.run([*mpiexec_cmd(2), sys.executable, "-m", "hes_mpi", "train", *RESUME_ARGS.split(),
                        "--threads", "1", "--out", str(ref)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    proc, job = sbatch(slurm, "train.sbatch", submit_dir=tmp_path, wait=False, HES_MPI_ARGS=RESUME_ARGS)
    assert proc.returncode == 0, proc.stderr
    log = tmp_path / "runs" / f"train_{job}.h5"
    _wait(lambda: _epochs(log) >= 2, 300, "two epochs", slurm, tmp_path)
    scancel = shutil.which("scancel", path=job_env(slurm)["PATH"]) or "scancel"
    subprocess.run([scancel, "--signal=USR1", job], env=job_env(slurm), check=True, timeout=30)
    _wait(lambda: "requeueing job" in job_outputs(tmp_path), 120, "the requeue", slurm, tmp_path)
    done = _wait(lambda: summary(log)["complete"] if _epochs(log) == 150 else False, 400, "the resumed run",
                 slurm, tmp_path)
    assert done
    text = job_outputs(tmp_path)
    assert "resuming from" in text and "stopped by SIGUSR1" in text
    with h5py.File(ref, "r") as a, h5py.File(log, "r") as b:
        assert a["final/theta"][()].tobytes() == b["final/theta"][()].tobytes()
        assert np.array_equal(a["epochs/dev_loss"][()], b["epochs/dev_loss"][()])
