"""The alpha-beta fit to the collectives a run log timed (communication only: minus the waiting)."""

from __future__ import annotations

import numpy as np
import pytest

from hes_mpi import collectives as nm
from hes_mpi.errors import UsageError
from hes_mpi.post import fit as fitting
from hes_mpi.runlog import RunLog, RunLogWriter
from hes_mpi.schema import RECORD_DTYPE


# ------------------------------------------------------------------------------------------ fit
def synthetic_pairs(alpha, beta, p, noise=0.02, calls=15, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for op, sizes in (("allreduce", (8, 16, 64, 1024, 4096, 65536, 10**6)), ("minloc", (12,)),
                      ("allgather", (8, 256)), ("bcast", (16, 100000))):
        for n in sizes:
            t = nm.collective_time(op, n, p, alpha, beta)
            out += [(op, n, t * float(np.exp(rng.normal(0, noise)))) for _ in range(calls)]
    return out


@pytest.mark.parametrize("p", [2, 4, 16])
def test_fit_recovers_alpha_beta(p):
    fit = fitting.fit_alpha_beta(synthetic_pairs(3e-6, 2e-10, p), p)
    assert fit.alpha == pytest.approx(3e-6, rel=0.05)
    assert fit.beta == pytest.approx(2e-10, rel=0.05)
    assert fit.max_rel_error < 0.05 and fit.median_rel_error <= fit.max_rel_error
    assert {c["op"] for c in fit.classes} == {"allreduce", "minloc", "allgather", "bcast"}
    for c in fit.classes:
        assert c["predicted_s"] == pytest.approx(c["measured_s"], rel=0.05)


def test_fit_mixed_rank_counts_and_outliers():
    pairs = [(*t, 2) for t in synthetic_pairs(5e-6, 1e-9, 2)] + [(*t, 8) for t in synthetic_pairs(5e-6, 1e-9, 8)]
    pairs += [("allreduce", 16, 1.0, 2)] * 3  # a few huge outliers: the class median ignores them
    fit = fitting.fit_alpha_beta(pairs)
    assert fit.alpha == pytest.approx(5e-6, rel=0.05) and fit.beta == pytest.approx(1e-9, rel=0.05)
    assert {c["ranks"] for c in fit.classes} == {2, 8}


def test_fit_is_non_negative_and_needs_two_ranks():
    # pure bandwidth: alpha must not go negative to absorb noise
    fit = fitting.fit_alpha_beta([("allreduce", n, 2 * (3 / 4) * n * 1e-9) for n in (4096, 65536, 10**6)], 4)
    assert fit.alpha >= 0 and fit.beta == pytest.approx(1e-9, rel=1e-6)
    with pytest.raises(UsageError):
        fitting.fit_alpha_beta(synthetic_pairs(1e-6, 1e-9, 1), 1)


def test_measured_pairs_subtracts_waiting(tmp_path):
    rec = np.zeros(6, RECORD_DTYPE)
    rank = np.array([0, 1, 0, 1, 0, 1])
    # seq 0: allreduce of 16 bytes; rank 1's clock runs 0.1 s ahead (offset 0.1): aligned entries 0.0 and 0.6,
    # both leave at 1.0 (aligned): communication 0.4 s on both, waiting 0.6 s on rank 0
    rec[0] = (0, 0, 1, 0, 16, 16, 16, 0.0, 1.0)
    rec[1] = (0, 0, 1, 0, 16, 16, 16, 0.7, 1.1)
    # seq 1: bcast of 8 bytes from rank 0 (sent 8 on the root, received 8 elsewhere), no waiting
    rec[2] = (1, 2, 3, 0, 8, 0, 8, 2.0, 2.5)
    rec[3] = (1, 2, 3, 0, 0, 8, 8, 2.1, 2.6)
    # seq 2: gather (no model) and a point-to-point call: left out
    rec[4] = (2, 4, 5, 0, 8, 16, 8, 3.0, 3.1)
    rec[5] = (-1, 6, 0, 0, 8, 8, 8, 3.0, 3.1)
    path = tmp_path / "fake.h5"
    w = RunLogWriter(str(path), True, {"algo": "bgd"}, {"ranks": 2}, ["test"])
    w.add_records(rec, rank)
    w.set_clock(np.array([0.0, 0.1]), np.zeros(2), np.array([0.0, 0.1]), np.zeros(2), 1e-9, False)
    w.flush()
    with RunLog(path) as rl:
        pairs = sorted(fitting.measured_pairs(rl))
        quads = fitting.measured_pairs(rl, with_ranks=True)
    assert [(op, n) for op, n, _ in pairs] == [("allreduce", 16), ("allreduce", 16), ("bcast", 8), ("bcast", 8)]
    assert [s for _, _, s in pairs] == pytest.approx([0.4, 0.4, 0.5, 0.5])
    assert all(q[3] == 2 for q in quads)


