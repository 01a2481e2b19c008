"""MPICH's algorithm choice, the bytes each rank puts on the wire, and their agreement with the cost model."""

from __future__ import annotations

import pytest

from hes_mpi.collectives import (
    ALLGATHER_SHORT_MSG,
    ALLREDUCE_SHORT_MSG,
    BCAST_MIN_PROCS,
    BCAST_SHORT_MSG,
    coefficients,
    mpich_algorithm,
    wire_bytes,
)
from hes_mpi.schema import OPS


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
