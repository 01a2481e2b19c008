"""MPICH's algorithm choice, the alpha-beta cost models, the bytes each rank puts on the wire, and the
network presets."""

from __future__ import annotations

import numpy as np
import pytest

from hes_mpi import collectives as nm
from hes_mpi.collectives import (
    ALLGATHER_SHORT_MSG,
    ALLREDUCE_SHORT_MSG,
    BCAST_MIN_PROCS,
    BCAST_SHORT_MSG,
    coefficients,
    mpich_algorithm,
    wire_bytes,
)
from hes_mpi.errors import UsageError
from hes_mpi.schema import OPS

A, B = 1e-6, 1e-9  # 1 us, 1 ns/byte: hand-computed points below


# ---------------------------------------------------------------------------------- the wire-byte model
@pytest.mark.parametrize("op", OPS)
def test_wire_bytes_one_rank_or_nothing_sends_nothing(op):
    assert wire_bytes(op, 1_000_000, 1) == 0
    assert wire_bytes(op, 1_000_000, 1, root=True) == 0
    assert wire_bytes(op, 0, 8) == 0


@pytest.mark.parametrize("op", ["allreduce", "minloc"])
def test_wire_bytes_allreduce(op):
    # recursive doubling up to MPICH's short-message limit: ceil(log2 p) rounds of n
    assert wire_bytes(op, 12, 2) == 12
    assert wire_bytes(op, 12, 3) == 24
    assert wire_bytes(op, 12, 4) == 24
    assert wire_bytes(op, 12, 5) == 36
    assert wire_bytes(op, 2048, 8) == 3 * 2048  # the limit itself is still short
    # Rabenseifner above it: reduce-scatter + allgather, 2 (p-1)/p n
    assert wire_bytes(op, 2052, 4) == 3078
    assert wire_bytes(op, 2052, 2) == 2052
    assert wire_bytes(op, 4_000_000, 4) == 6_000_000
    assert wire_bytes(op, 4_000_000, 8) == 7_000_000
    assert wire_bytes(op, 3000, 3) == 4000


def test_wire_bytes_other_collectives():
    assert wire_bytes("allgather", 100, 4) == 300
    assert wire_bytes("allgather", 1_000_000, 3) == 2_000_000  # no short/long switch
    assert wire_bytes("bcast", 1000, 4) == 750  # binomial tree, (p-1)/p n per rank on average
    assert wire_bytes("bcast", 1000, 2) == 500
    assert wire_bytes("bcast", 30000, 3) == 20000
    # from 12288 bytes on 8 or more ranks MPICH broadcasts by scatter + allgather (van de Geijn): the
    # binomial scatter's log2(p)/(2p) n plus the ring allgather's (p-1)/p n, per rank on average
    assert wire_bytes("bcast", 12287, 8) == 10751
    assert wire_bytes("bcast", 16000, 8) == round((3 / 16 + 7 / 8) * 16000)
    assert wire_bytes("bcast", 16000, 7) == round(6 / 7 * 16000)  # fewer than 8 ranks: binomial at any size
    assert wire_bytes("gather", 100, 4, root=True) == 0
    assert wire_bytes("gather", 100, 4, root=False) == 100
    assert wire_bytes("gather", 100, 4) == 100
    for op in ("barrier", "split", "sendrecv"):
        assert wire_bytes(op, 100, 4) == 0


def test_mpich_algorithm_switch_points():
    assert mpich_algorithm("allreduce", ALLREDUCE_SHORT_MSG, 8) == "recursive_doubling"
    assert mpich_algorithm("allreduce", ALLREDUCE_SHORT_MSG + 4, 8) == "rabenseifner"
    assert mpich_algorithm("minloc", 12, 1024) == "recursive_doubling"
    assert mpich_algorithm("allgather", ALLGATHER_SHORT_MSG // 8 - 4, 8) == "recursive_doubling"
    assert mpich_algorithm("allgather", ALLGATHER_SHORT_MSG // 8, 8) == "ring"
    assert mpich_algorithm("allgather", 4, 6) == "ring"  # not a power of two
    assert mpich_algorithm("bcast", BCAST_SHORT_MSG - 1, 64) == "binomial"
    assert mpich_algorithm("bcast", BCAST_SHORT_MSG, BCAST_MIN_PROCS) == "scatter_allgather"
    assert mpich_algorithm("bcast", 10**7, BCAST_MIN_PROCS - 1) == "binomial"


@pytest.mark.parametrize("op", ["allreduce", "minloc", "allgather", "bcast"])
@pytest.mark.parametrize("p", [2, 3, 8, 16])
@pytest.mark.parametrize("n", [12, 2048, 4096, 12288, 1 << 20])
def test_cost_model_and_wire_bytes_pick_the_same_algorithm(op, p, n):
    """One choice of algorithm for both: the cost model's bandwidth term of MPICH's choice is the one of the
    algorithm that :func:`mpich_algorithm` names (the two were written separately once, and disagreed for
    large bcasts on 8 or more ranks)."""
    alg = mpich_algorithm(op, n, p)
    assert coefficients(op, n, p) == coefficients(op, n, p, alg)
    assert wire_bytes(op, n, p) > 0


# ------------------------------------------------------------------------------------------ formulas
def test_one_rank_costs_nothing():
    for op in ("allreduce", "minloc", "allgather", "bcast", "barrier", "gather"):
        assert nm.collective_time(op, 10**6, 1, A, B) == 0.0
    for alg in ("ring", "recursive_doubling", "rabenseifner"):
        assert nm.allreduce_time(10**6, 1, A, B, algorithm=alg) == 0.0
    assert nm.bcast_time(10**6, 1, A, B, "scatter_allgather") == 0.0


def test_allreduce_hand_computed():
    # p = 2: recursive doubling 1 (alpha + n beta) up to 2048 bytes, Rabenseifner 2 alpha + n beta above
    assert nm.allreduce_time(1000, 2, A, B) == pytest.approx(1e-6 + 1000e-9)
    assert nm.allreduce_time(2048, 2, A, B) == pytest.approx(1e-6 + 2048e-9)
    assert nm.allreduce_time(2049, 2, A, B) == pytest.approx(2e-6 + 2049e-9)
    # p = 4, 1 MB
    n = 10**6
    assert nm.allreduce_time(n, 4, A, B, "rabenseifner") == pytest.approx(4e-6 + 1.5e-3)
    assert nm.allreduce_time(n, 4, A, B, "ring") == pytest.approx(6e-6 + 1.5e-3)
    assert nm.allreduce_time(n, 4, A, B, "recursive_doubling") == pytest.approx(2 * (1e-6 + 1e-3))
    assert nm.allreduce_time(n, 4, A, B) == nm.allreduce_time(n, 4, A, B, "rabenseifner")
    assert nm.allreduce_time(100, 4, A, B) == pytest.approx(2 * (1e-6 + 100e-9))
    # the optional reduction term: (p-1)/p n gamma for Rabenseifner
    assert nm.allreduce_time(4096, 4, A, B, gamma=1e-10) == pytest.approx(4e-6 + 6144e-9 + 3072e-10)
    assert nm.collective_time("minloc", 12, 4, A, B) == nm.allreduce_time(12, 4, A, B)
    # p not a power of two: a pre-step and a post-step of the whole vector around the largest power of two
    # (3 ranks: Rabenseifner on 2 plus 2 rounds; 6: on 4 plus 2; 1000: on 512 plus 2)
    assert nm.allreduce_time(n, 3, A, B) == pytest.approx(4e-6 + 3e-3)
    assert nm.allreduce_time(n, 6, A, B) == pytest.approx(6e-6 + 3.5e-3)
    assert nm.allreduce_time(n, 1000, A, B) == pytest.approx(20e-6 + (2 * 511 / 512 + 2) * 1e-3)
    assert nm.allreduce_time(100, 3, A, B) == pytest.approx(3 * (1e-6 + 100e-9))  # recursive doubling
    assert nm.allreduce_time(100, 5, A, B) == pytest.approx(4 * (1e-6 + 100e-9))


def test_allgather_bcast_barrier_hand_computed():
    assert nm.allgather_time(100, 4, A, B) == pytest.approx(2e-6 + 300e-9)  # recursive doubling
    assert nm.allgather_time(100, 3, A, B) == pytest.approx(2e-6 + 200e-9)  # not a power of two: ring
    assert nm.allgather_time(30000, 4, A, B) == pytest.approx(3e-6 + 90000e-9)  # 120 KB total: ring
    assert nm.allgather_time(100, 2, A, B, "ring") == pytest.approx(1e-6 + 100e-9)
    assert nm.bcast_time(100, 4, A, B) == pytest.approx(2 * (1e-6 + 100e-9))  # binomial
    assert nm.bcast_time(10**6, 4, A, B) == pytest.approx(2 * (1e-6 + 1e-3))  # fewer than 8 ranks: binomial
    assert nm.bcast_time(10**6, 8, A, B) == pytest.approx(10e-6 + 1.75e-3)  # scatter + allgather
    assert nm.bcast_time(12287, 8, A, B) == pytest.approx(3 * (1e-6 + 12287e-9))
    assert nm.collective_time("barrier", 0, 4, A, B) == pytest.approx(2e-6)
    assert nm.collective_time("barrier", 0, 5, A, B) == pytest.approx(3e-6)
    assert nm.collective_time("gather", 10**6, 8, A, B) == 0.0
    with pytest.raises(ValueError):
        nm.collective_time("alltoall", 8, 4, A, B)
    with pytest.raises(ValueError):
        nm.allreduce_time(8, 0, A, B)


def test_numpy_broadcasting_matches_scalars():
    sizes = np.array([12, 2048, 2049, 10**6])
    ranks = np.array([[1], [2], [3], [4], [1024]])
    grid = nm.allreduce_time(sizes, ranks, A, B)
    assert grid.shape == (5, 4)
    for i, p in enumerate(ranks[:, 0]):
        for j, n in enumerate(sizes):
            assert grid[i, j] == pytest.approx(nm.allreduce_time(int(n), int(p), A, B))
    ag = nm.allgather_time(sizes, 4, A, B)
    assert ag == pytest.approx([nm.allgather_time(int(n), 4, A, B) for n in sizes])
    assert isinstance(nm.collective_time("allreduce", 954040, 2, A, B), float)


# ------------------------------------------------------------------------------------------ networks
def test_parse_network_presets_and_pairs():
    assert nm.parse_network("1gbe") == ("1gbe", 50e-6, pytest.approx(8e-9))
    name, alpha, beta = nm.parse_network("IB-HDR")
    assert name == "ib-hdr" and alpha == pytest.approx(1e-6) and 8 / beta == pytest.approx(200e9)
    for preset in ("1gbe", "10gbe", "100gbe", "ib-hdr"):
        assert preset in nm.PRESETS
    assert 8 / nm.PRESETS["10gbe"][1] == pytest.approx(10e9) and 8 / nm.PRESETS["100gbe"][1] == pytest.approx(1e11)
    name, alpha, beta = nm.parse_network(" 2e-6 , 1e-9 ")
    assert (alpha, beta) == (2e-6, 1e-9) and name


@pytest.mark.parametrize("spec", ["carrier-pigeon", "1,2,3", "-1e-6,1e-9", "nan,1e-9", "a,b", "", "1e-6"])
def test_parse_network_bad_specs(spec):
    with pytest.raises(UsageError) as e:
        nm.parse_network(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert all(p in msg for p in nm.PRESETS)


