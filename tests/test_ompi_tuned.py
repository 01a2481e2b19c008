"""Open MPI's tuned decision tables (hes_mpi.ompi_tuned), the family dispatch in hes_mpi.collectives, and
which model a run follows (collectives.collective_model). Points are worked by hand from the rules of
coll_tuned_decision_fixed.c and the algorithms' fallbacks, as the module's docstring cites them."""

from __future__ import annotations

import numpy as np
import pytest

from hes_mpi import collectives as nm
from hes_mpi import ompi_tuned as ot


# ------------------------------------------------------------------------------------------ the tables
@pytest.mark.parametrize("nbytes,p,count,want", [
    (4, 2, 1, "recursive_doubling"),  # 2 ranks, < 8 bytes: ring, but 1 element < 2 ranks falls back
    (8, 2, 2, "recursive_doubling"),  # 8 bytes is not below 8: recursive doubling up to 4 KiB
    (5000, 2, 1250, "ring"),  # 4096 <= n < 8192 on 2-3 ranks
    (100_000, 2, 25_000, "segmented_ring"),  # 64 KiB <= n < 256 KiB
    (400_000, 2, 100_000, "rabenseifner"),
    (12, 6, 1, "recursive_doubling"),  # minloc on 6 ranks: ring below 16 bytes, 1 element < 6 ranks
    (100, 6, 25, "recursive_doubling"),
    (10_000, 6, 2500, "rabenseifner"),
    (60, 16, 60, "segmented_ring"),  # 16-31 ranks: segmented ring below 64 bytes ...
    (12, 16, 1, "recursive_doubling"),  # ... unless fewer elements than ranks
    (5000, 16, 1250, "rabenseifner"),
    (8192, 16, 8, "basic_linear"),  # Rabenseifner's needs count >= the largest power of two <= p
    (100_000, 100, 25_000, "recursive_doubling"),  # 64-127 ranks: rd from 128 bytes to 256 KiB
    (1000, 300, 250, "nonoverlapping"),
    (3_000_000, 1000, 750_000, "rabenseifner"),
])
def test_allreduce_choice(nbytes, p, count, want):
    assert ot.algorithm("allreduce", nbytes, p, count) == want
    assert nm.algorithm("allreduce", nbytes, p, "openmpi", count) == want


def test_minloc_counts_one_element():
    """hes_mpi's minloc is one MPI_DOUBLE_INT: the ring's fallback applies on any rank count."""
    assert ot.algorithm("minloc", 12, 6) == "recursive_doubling"
    assert ot.algorithm("minloc", 12, 20) == "recursive_doubling"


@pytest.mark.parametrize("op,nbytes,p,want", [
    ("bcast", 100, 2, "binary_tree"), ("bcast", 20_000, 2, "basic_linear"), ("bcast", 100, 6, "binomial"),
    ("bcast", 5_000_000, 6, "chain"), ("bcast", 100, 20, "knomial"), ("bcast", 5_000_000, 20, "scatter_allgather"),
    ("allgather", 100, 2, "two_proc"), ("allgather", 100, 8, "recursive_doubling"), ("allgather", 100, 6, "bruck"),
    ("allgather", 2000, 40, "neighbor"), ("allgather", 2000, 41, "ring"), ("allgather", 100_000, 40, "ring"),
    ("barrier", 0, 2, "recursive_doubling"), ("barrier", 0, 5, "linear"), ("barrier", 0, 100, "bruck"),
    ("gather", 100, 4, "linear"),
])
def test_other_choices(op, nbytes, p, want):
    assert ot.algorithm(op, nbytes, p) == want


@pytest.mark.parametrize("op,nbytes,p,count,want", [
    ("allreduce", 400, 2, 100, 400),  # recursive doubling on 2: one exchange
    ("allreduce", 400_000, 2, 100_000, 400_000),  # Rabenseifner on 2: half out, half back
    ("allreduce", 100_000, 3, 25_000, 133_333),  # segmented ring: 2 (p-1)/p n
    ("allreduce", 100_000, 4, 25_000, 150_000),  # Rabenseifner on 4: 2 (p-1)/p n
    ("allreduce", 1000, 3, 250, 1333),  # rd on 3: p'=2, r=1: (2*1 + 2*1) n / 3
    ("minloc", 12, 6, 1, 24),  # rd on 6: p'=4, r=2: (4*2 + 2*2) * 12 / 6
    ("allreduce", 1_000_000, 16, 250_000, 1_875_000),  # Rabenseifner on 16: 2 (16-1)/16 n
    ("allreduce", 1_000_000, 6, 250_000, 1_833_333),  # Rabenseifner on 6: (2 (4-1) + 2.5 * 2) n / 6
    ("allreduce", 8192, 16, 8, 15_360),  # linear: 2 (p-1)/p n
    ("bcast", 100, 4, 25, 75),
    ("allgather", 100, 6, 25, 500),
])
def test_wire_bytes_by_hand(op, nbytes, p, count, want):
    assert ot.wire_bytes(op, nbytes, p, count=count) == want
    assert nm.wire_bytes(op, nbytes, p, family="openmpi", count=count) == want


def test_gather_and_one_rank():
    assert nm.wire_bytes("gather", 100, 4, root=True, family="openmpi") == 0
    assert nm.wire_bytes("gather", 100, 4, family="openmpi") == 100
    for op in ("allreduce", "minloc", "bcast", "allgather"):
        assert nm.wire_bytes(op, 1000, 1, family="openmpi") == 0
        assert nm.coefficients(op, 1000, 1, family="openmpi") == (0.0, 0.0)


def test_costs_by_hand():
    # segmented ring on 3 ranks: 2 (p-1) rounds of n/p each way
    assert nm.coefficients("allreduce", 99_999, 3, family="openmpi") == (4.0, pytest.approx(66_666.0 * 2))
    # recursive doubling on 3: one pre-step, log2(2) exchanges, one post-step ...
    assert nm.coefficients("allreduce", 1000, 3, family="openmpi") == (3.0, 3000.0)
    # ... as MPICH's recursive doubling does
    assert nm.coefficients("allreduce", 1000, 3) == (3.0, 3000.0)
    # Rabenseifner on 4 costs 2 log2 p rounds on either
    assert nm.coefficients("allreduce", 100_000, 4, family="openmpi") == nm.coefficients("allreduce", 100_000, 4)
    assert nm.coefficients("allreduce", 100_000, 4) == (4.0, 150_000.0)
    # Rabenseifner on 6: 2 log2 4 + 3 rounds; 2 (4-1)/4 n + 2 n bytes
    assert nm.coefficients("allreduce", 1_000_000, 6, family="openmpi") == (7.0, 3_500_000.0)
    t = nm.collective_time("allreduce", 1000, 3, 1e-6, 1e-9, family="openmpi")
    assert t == pytest.approx(3e-6 + 3e-6)


def test_costs_broadcast_over_arrays_as_on_scalars():
    sizes = np.array([12, 4000, 100_000, 4_000_000])
    ranks = np.array([[2], [4], [6], [64]])
    a, b = nm.coefficients("allreduce", sizes, ranks, family="openmpi")
    assert a.shape == b.shape == (4, 4)
    for i, p in enumerate(ranks[:, 0]):
        for j, n in enumerate(sizes):
            assert (a[i, j], b[i, j]) == nm.coefficients("allreduce", int(n), int(p), family="openmpi")


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="family"):
        nm.wire_bytes("allreduce", 100, 4, family="lam")
    with pytest.raises(ValueError, match="family"):
        nm.collective_time("allreduce", 100, 4, 1e-6, 1e-9, family="lam")


# ------------------------------------------------------------------------------------------ which model
def test_the_model_follows_the_vendor():
    m = nm.collective_model("Open MPI", ["a", "a"], {})
    assert m["mpi_family"] == "openmpi" and not m["collective_model_assumed"] and m["collective_model_note"] == ""
    assert ot.SOURCE in m["collective_model"]
    m = nm.collective_model("MPICH", ["a", "b"], {"MPIR_CVAR_CH4_NETMOD": "ofi", "PATH": "/bin"})
    assert m["mpi_family"] == "mpich" and not m["collective_model_assumed"]


def test_one_rank_per_node_on_open_mpi_is_tuned_exactly():
    m = nm.collective_model("Open MPI", ["node0", "node1", "node2", "node3"], {})
    assert not m["collective_model_assumed"]


def test_assumed_figures_say_why():
    han = nm.collective_model("Open MPI", ["a", "a", "b", "b"], {})
    assert han["collective_model_assumed"] and "han" in han["collective_model_note"]
    other = nm.collective_model("Intel(R) MPI Library", [], {})
    assert other["mpi_family"] == "mpich" and other["collective_model_assumed"]
    assert "Intel(R) MPI Library" in other["collective_model_note"]
    tuned = nm.collective_model("Open MPI", [], {"OMPI_MCA_coll_tuned_use_dynamic_rules": "1"})
    assert tuned["collective_model_assumed"] and "OMPI_MCA_coll_tuned_use_dynamic_rules" in tuned["collective_model_note"]
    ch = nm.collective_model("MPICH", [], {"MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "ring"})
    assert ch["collective_model_assumed"] and "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM" in ch["collective_model_note"]
    # another MPI's tuning variables say nothing about this one
    assert not nm.collective_model("MPICH", [], {"OMPI_MCA_coll": "^han"})["collective_model_assumed"]


def test_old_logs_follow_mpich():
    assert nm.family_of({}) == "mpich"
    assert nm.family_of({"mpi_family": "openmpi"}) == "openmpi"
    assert nm.family_of({"mpi_family": "lam"}) == "mpich"
