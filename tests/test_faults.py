"""Checkpoint/restart and faults, with real processes, real signals and a real full disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import MPIEXEC, kill_job, mpi_size, mpiexec_cmd, rank_pids, run_cli

from hes_mpi.runlog import RunLog

SYN = ["--data", "synthetic:4000", "--hidden", "32", "--batch", "100", "--lr", "1", "--algo", "hes", "--r", "2",
       "--K", "4"]

pytestmark = pytest.mark.skipif(MPIEXEC is None or mpi_size() > 1, reason="launches mpiexec itself: run serially")


def launch(args, env=None):
    cmd = [*mpiexec_cmd(2), sys.executable, "-m", "hes_mpi", "train", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def wait_for_epochs(path: Path, n: int, timeout: float = 120) -> None:
    """Return as soon as the run log holds n epochs: polled every 20 ms, since a whole 6-epoch run of SYN
    takes about 0.3 s and a signal sent in its last epoch would (by design) let it finish."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(Exception), RunLog(str(path)) as rl:
            if rl.table("epochs")["epoch"].size >= n:
                return
        time.sleep(0.02)
    raise AssertionError(f"{path} did not reach {n} epochs")


def final(path: Path) -> tuple[bytes, dict]:
    with h5py.File(path, "r") as f:
        return f["final/theta"][()].tobytes(), {k: f["epochs"][k][()] for k in ("train_loss", "dev_loss", "dev_acc")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.h5"
    proc = run_cli(["train", *SYN, "--epochs", "6", "--out", out])
    assert proc.returncode == 0, proc.stderr
    sha = json.loads(run_cli(["summary", out, "--json"], n=None).stdout)["theta_sha256"]
    return (*final(out), sha)


def assert_same_as_reference(out: Path, reference):
    theta, metrics = final(out)
    assert theta == reference[0]  # bitwise
    for k, v in metrics.items():
        assert np.array_equal(v, reference[1][k]), k
    s = json.loads(run_cli(["summary", out, "--json"], n=None).stdout)
    assert s["complete"] and s["iterations"] == 6 * 40 and s["epochs"] == 6
    assert s["theta_sha256"] == reference[2]


def test_killed_and_resumed_run_is_bitwise_identical(tmp_path, reference):
    out = tmp_path / "run.h5"
    args = [*SYN, "--epochs", "6", "--checkpoint-every", "15", "--out", out]
    proc = launch(args)
    wait_for_epochs(out, 2)
    kill_job(proc, str(out))
    assert (tmp_path / "run.h5.ckpt").exists()
    done = run_cli(["train", *args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    assert_same_as_reference(out, reference)


def test_resume_without_a_checkpoint_replaces_an_unfinished_log_and_keeps_a_finished_one(tmp_path, reference):
    """A job killed before its first checkpoint leaves an unfinished run log and no checkpoint; requeued, it
    passes --resume (as jobs/train.sbatch always does) and must start afresh, not stop at "--out exists".
    A finished log with no checkpoint is a result: --resume leaves it alone, in one line."""
    out = tmp_path / "run.h5"
    args = [*SYN, "--epochs", "6", "--out", out]
    proc = launch([*SYN, "--epochs", "1000", "--out", out])  # still running when killed, under any MPI
    wait_for_epochs(out, 1)
    kill_job(proc, str(out))
    assert not (tmp_path / "run.h5.ckpt").exists()
    with RunLog(str(out)) as rl:
        assert not rl.complete
    done = run_cli(["train", *args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(out, reference)
    again = run_cli(["train", *args, "--resume"])
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a finished run and there is no checkpoint" in lines[0], again.stderr
    assert_same_as_reference(out, reference)  # untouched


#: Where the test below kills the job, as HES_MPI_PAUSE_IN_FLUSH=U:K (rank 0 stops at the K-th point, a write or
#: a step between writes, of the U-th update of its run log; at the update's end when it has fewer). Every job
#: passes --resume, as a requeued job script does. A fresh run's updates are its creation, then one flush per
#: checkpoint (every 15 iterations) and per epoch end (40 iterations), each followed by its checkpoint; a
#: resumed run's first update is the cut back to its checkpoint.
KILLS = (
    (4, 40),  # the third flush (the first epoch's end), amid its writes (2 checkpoints exist)
    (1, 5),  # the cut of the resume that follows, amid its writes
    (3, 10**6),  # the end of a flush, before its checkpoint: the log is ahead of the checkpoint
)


def kill_inside_an_update(args, update: int, point: int, marker: Path) -> None:
    """Run ``train ARGS --resume`` until rank 0 stops inside an update of its run log, then SIGKILL the job."""
    proc = launch([*args, "--resume"], env={"HES_MPI_PAUSE_IN_FLUSH": f"{update}:{point}"})
    try:
        deadline = time.time() + 120
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"no pause at update {update}, point {point}: {proc.communicate()[1]}"
    finally:
        kill_job(proc, str(marker.with_suffix("")))  # the run log's path, on every rank's command line
    marker.unlink()


def test_kills_inside_flushes_leave_a_readable_log_and_resume_bitwise(tmp_path, reference):
    """SIGKILL of the job inside updates of its run log (issue 21: a kill during a flush could leave an
    unreadable file, and --resume then failed with a good checkpoint), three times over: after each kill
    the log is read whole with RunLog, its tables agree, and the run resumes from its checkpoint; the last
    resume completes bitwise equal to an uninterrupted run."""
    out = tmp_path / "run.h5"
    args = [*SYN, "--epochs", "6", "--checkpoint-every", "15", "--out", out]
    for update, point in KILLS:
        kill_inside_an_update(args, update, point, Path(f"{out}.paused"))
        with RunLog(str(out)) as rl:
            s = rl.summary()
            records = rl.records()
        assert s["complete"] is False and s["epochs"] <= 6, s
        assert 40 * s["epochs"] <= s["iterations"] < 40 * (s["epochs"] + 1), s
        assert set(np.unique(records["rank"])) == {0, 1}
    done = run_cli(["train", *args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout
    assert_same_as_reference(out, reference)


@pytest.mark.parametrize(("sig", "ranks"), [(signal.SIGTERM, "one"), (signal.SIGUSR1, "all")])
def test_signal_checkpoints_exits_and_resumes(tmp_path, reference, sig, ranks):
    out = tmp_path / "run.h5"
    args = [*SYN, "--epochs", "6", "--out", out]
    proc = launch(args)
    wait_for_epochs(out, 1)
    pids = rank_pids(str(out))
    assert len(pids) == 2, pids
    for pid in pids[:1] if ranks == "one" else pids:
        os.kill(pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    assert "checkpoint written" in err and err.count("error") == 1
    with RunLog(str(out)) as rl:
        assert rl.complete is False
    done = run_cli(["train", *args, "--resume"])
    assert done.returncode == 0, done.stderr
    assert_same_as_reference(out, reference)


def test_kill_9_of_one_rank_ends_the_job(tmp_path):
    out = tmp_path / "run.h5"
    proc = launch([*SYN, "--epochs", "10000", "--out", out])
    try:
        wait_for_epochs(out, 1)
        pids = rank_pids(str(out))
        t0 = time.time()
        os.kill(pids[-1], signal.SIGKILL)
        proc.communicate(timeout=30)
        assert time.time() - t0 < 30
        assert proc.returncode != 0
    finally:
        kill_job(proc, str(out))
    with RunLog(str(out)) as rl:
        assert rl.complete is False and rl.table("epochs")["epoch"].size >= 1


def test_exception_on_one_rank_ends_all_within_10_s(tmp_path):
    out = tmp_path / "run.h5"
    proc = launch([*SYN, "--epochs", "10000", "--out", out], env={"HES_MPI_INJECT_FAULT": "1:30"})
    err = []
    try:
        for line in proc.stderr:  # the failing rank's message arrives first ...
            err.append(line)
            if "fault injected" in line:
                break
        t_fault = time.time()
        err.append(proc.stderr.read())
        proc.wait(timeout=30)
        assert time.time() - t_fault < 10  # ... and every rank has ended 10 s later
    finally:
        kill_job(proc, str(out))
    text = "".join(err)
    assert proc.returncode != 0
    assert "rank 1/2" in text and "fault injected" in text and "at iteration 30" in text


def test_nan_is_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run.h5"
    proc = run_cli(["train", *SYN, "--epochs", "6", "--checkpoint-every", "20", "--out", out],
                   env={"HES_MPI_INJECT_FAULT": "nan:50"})
    assert proc.returncode == 1
    assert "not finite at iteration 50" in proc.stderr and "Traceback" not in proc.stderr
    assert "last checkpoint" in proc.stderr
    with h5py.File(tmp_path / "run.h5.ckpt", "r") as f:
        assert int(f.attrs["iteration"]) == 40 and np.all(np.isfinite(f["theta"][()]))


@pytest.fixture
def tiny_disk(tmp_path):
    d = tmp_path / "disk"
    d.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_disk_full_at_a_flush(tiny_disk):
    out = tiny_disk / "run.h5"
    proc = run_cli(["train", *SYN, "--epochs", "10000", "--checkpoint-every", "40", "--out", out], timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if "error" in ln]) == 1
    ckpt = tiny_disk / "run.h5.ckpt"
    assert ckpt.exists(), "a checkpoint was written before the disk filled up"
    with h5py.File(ckpt, "r") as f:  # the last good checkpoint, whole
        assert np.all(np.isfinite(f["theta"][()])) and int(f.attrs["iteration"]) % 40 == 0
    assert not (tiny_disk / "run.h5.ckpt.tmp").exists()
    with RunLog(str(out)) as rl:  # the log as its last good flush left it, whole (the failed one wrote a copy)
        assert rl.complete is False and rl.table("epochs")["epoch"].size >= 1
    assert not (tiny_disk / "run.h5.tmp").exists()


def test_resume_refuses_other_options(tmp_path):
    out = tmp_path / "run.h5"
    assert run_cli(["train", *SYN, "--epochs", "1", "--checkpoint-every", "20", "--out", out]).returncode == 0
    proc = run_cli(["train", *SYN, "--epochs", "2", "--lr", "0.5", "--out", out, "--resume"])
    assert proc.returncode == 2 and "lr" in proc.stderr


def test_mpi_start_watchdog(tmp_path):
    """A process whose MPI_Init does not return in time ends with status 75 and says why (never a hang)."""
    # MPI_Init cannot be made to hang on purpose here: a stand-in that holds Python's lock the same way
    code = ("import time, hes_mpi.watchdog as w\n"
            "with w.init_watchdog():\n"
            "    t = time.time()\n"
            "    while time.time() - t < 30: pass\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HES_MPI_INIT_TIMEOUT": "1"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGALRM  # the same process, seen from outside: 128 + 14 = 142 in a shell
    assert "Timeout" in proc.stderr and "most recent call first" in proc.stderr  # where it was stuck


def extended_equals_straight(tmp_path, opts, check_checkpoint) -> None:
    """A run of ``opts`` extended from 2 to 4 epochs from its checkpoint ends bitwise equal to a straight
    4-epoch run; ``check_checkpoint(h5py.File)`` looks at the checkpoint in between."""
    straight = tmp_path / "straight.h5"
    assert run_cli(["train", *opts, "--epochs", "4", "--out", straight]).returncode == 0
    out = tmp_path / "run.h5"
    first = run_cli(["train", *opts, "--epochs", "2", "--checkpoint-every", "1000", "--out", out])
    assert first.returncode == 0, first.stderr
    with h5py.File(tmp_path / "run.h5.ckpt", "r") as f:
        check_checkpoint(f)
    more = run_cli(["train", *opts, "--epochs", "4", "--checkpoint-every", "1000", "--out", out, "--resume"])
    assert more.returncode == 0, more.stderr
    assert final(out)[0] == final(straight)[0]


def test_resume_restores_es_state_sigma_multiplier_and_carried_direction(tmp_path):
    """--adapt-sigma's multiplier and --carry's direction are state: a run continued from its
    checkpoint (here: extended from 2 to 4 epochs) ends bitwise equal to a straight 4-epoch run."""

    def moved(f):
        assert f.attrs["sigma_mult"] != 1.0  # the multiplier moved, so restoring it matters

    extended_equals_straight(tmp_path, [*SYN, "--r", "3", "--perturb", "output", "--baseline", "--adapt-sigma",
                                        "--carry"], moved)


@pytest.mark.parametrize("method", [["--algo", "localsgd", "--r", "3"], ["--algo", "bgd", "--compress", "topk:0.05"],
                                    ["--algo", "hes", "--r", "2", "--compress", "powersgd:2"]],
                         ids=["localsgd", "topk", "powersgd"])
def test_resume_restores_the_baselines_state(tmp_path, method):
    """Local SGD's per-rank parameters (40 iterations per epoch: an epoch ends between two averages), top-k's
    and PowerSGD's per-rank error feedback and PowerSGD's warm-started Q are state, gathered from every rank."""

    def gathered(f):
        name = "local_all" if "localsgd" in method else "compress_error"
        assert f[name].shape == (2 * f["theta"].shape[0],)  # both ranks' own

    extended_equals_straight(tmp_path, ["--data", "synthetic:4000", "--hidden", "32", "--batch", "100", "--lr", "1",
                                        *method], gathered)


def test_resume_restores_the_lowrank_state_of_a_deeper_network(tmp_path):
    """--perturb lowrank:R's per-layer gradient variances are state (an epoch ends between a gradient step
    and the ES steps around it), and the checkpoint names the network."""

    def per_layer(f):
        assert f["grad_vars"].shape == (3,) and np.all(f["grad_vars"][()] > 0)
        assert f.attrs["layers"] == "32-24-12-10" and f.attrs["activation"] == "tanh"

    extended_equals_straight(tmp_path, ["--data", "synthetic:4000", "--hidden", "24,12", "--activation", "tanh",
                                        "--init", "xavier", "--batch", "100", "--lr", "0.5", "--algo", "hes",
                                        "--r", "3", "--perturb", "lowrank:2"], per_layer)


def _mpmd_with_hidden_folder(folder: Path, args: list[str]) -> list[str]:
    """A 2-rank job of ``train ARGS`` in which rank 1 runs in a mount namespace where ``folder`` is an empty
    tmpfs: a path only rank 0 can see, as a node-local folder on a real cluster."""
    train = [sys.executable, "-m", "hes_mpi", "train", *map(str, args)]
    hidden = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none "$0" && shift && exec "$@"', str(folder), "sh", *train]
    first = mpiexec_cmd(1)
    return [*first, *train, ":", "-n", "1", *hidden]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare (mount ns)")
def test_a_checkpoint_only_one_rank_sees_is_one_line_not_two_runs(tmp_path):
    """--resume with a checkpoint rank 1 cannot see: every rank decides together (before, rank 0 restored and
    rank 1 started afresh; their collectives then paired different iterations, and each rank reported a
    different one)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    args = [*SYN, "--checkpoint", folder / "c.ckpt", "--checkpoint-every", "5", "--collective-timeout", "10",
            "--out", tmp_path / "run.h5"]
    first = run_cli(["train", *args, "--epochs", "1"])
    assert first.returncode == 0, first.stderr
    assert (folder / "c.ckpt").exists()
    proc = subprocess.run(_mpmd_with_hidden_folder(folder, [*args, "--epochs", "2", "--resume"]),
                          capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "exists on rank 0 of 2 only" in lines[0], proc.stderr


def test_a_rank_stuck_in_setup_ends_the_job_in_one_line(tmp_path):
    """The setup's collectives are watched too: rank 1 blocks reading its dataset (a FIFO nobody writes)
    while rank 0 waits for it to agree the data loaded; with HES_MPI_SETUP_TIMEOUT=3 the job ends with one
    line and exit 1 (before, nothing watched the setup and the job hung until killed)."""
    from hes_mpi.data.fetch import MANIFEST, MNIST_SPLITS, mnist_paths

    good, stuck = tmp_path / "good", tmp_path / "stuck"
    for root in (good, stuck):
        (root / "mnist").mkdir(parents=True)
        (root / "mnist" / MANIFEST).write_text("{}")
        for key, path in mnist_paths(root).items():
            n = MNIST_SPLITS[key.split("-")[0]]
            if root is stuck:
                os.mkfifo(path)
            else:
                np.save(path, np.zeros((n, 784) if key.endswith("images") else (n,), dtype=np.uint8))
    train = [sys.executable, "-m", "hes_mpi", "train", "--data", "mnist", "--epochs", "1"]
    cmd = [*mpiexec_cmd(1), "env", f"HES_MPI_DATA={good}", *train, ":", "-n", "1", "env", f"HES_MPI_DATA={stuck}", *train]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False,
                          env={**os.environ, "HES_MPI_SETUP_TIMEOUT": "3"})
    took = time.monotonic() - t0
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hes-mpi:")]
    assert proc.returncode != 0 and took < 60, (proc.returncode, took, proc.stderr)
    assert len(lines) == 1 and "(phase setup" in lines[0] and "$HES_MPI_SETUP_TIMEOUT" in lines[0], proc.stderr


def test_a_write_failure_on_rank_0_alone_during_tuning_ends_every_rank_within_5_s(tmp_path):
    """Rank 0's run-log write fails (an injected full disk, at the first flush from iteration 50: the end of
    epoch 2) in the first tuning run of a sweep: the job ends within 5 s of that rank's message, with that
    one line and exit status 1. (Before, rank 0 took the failure for a diverged tuning run and went on into
    its next collective while rank 1 had left: the job ended at --collective-timeout.)"""
    params = tmp_path / "one.params"
    params.write_text("a --algo bgd\n")
    cmd = [*mpiexec_cmd(2), sys.executable, "-m", "hes_mpi", "sweep", str(params), "--seeds", "0", "--tune-lr", "0.5",
           "1", "--out-dir", str(tmp_path / "out"), "--args",
           "--data synthetic:4000 --hidden 32 --batch 100 --epochs 4 --collective-timeout 30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HES_MPI_INJECT_FAULT": "write:50"})
    out = []
    try:
        for line in proc.stdout:  # the failing rank's line, as it is printed ...
            out.append(line)
            if "cannot write" in line:
                break
        t_fail = time.monotonic()
        out.append(proc.stdout.read())
        proc.wait(timeout=60)
        took = time.monotonic() - t_fail  # ... to the end of the whole job
    finally:
        kill_job(proc, str(params))
    text = "".join(out)
    errors = [ln for ln in text.splitlines() if ln.startswith("hes-mpi: error")]
    assert proc.returncode == 1, text
    assert took < 5, (took, text)
    assert len(errors) == 1 and "cannot write the run log" in errors[0] and "a_lr0.5.h5" in errors[0], text
    assert "Traceback" not in text and "did not complete" not in text
