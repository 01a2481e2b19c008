"""Open MPI's collective algorithms as its ``coll/tuned`` component picks them, their alpha-beta costs and the
bytes each rank puts on the wire. Pure functions: no MPI, no I/O (:mod:`hes_mpi.collectives` dispatches here
for runs on Open MPI).

Where the rules come from
-------------------------
The decision tables below are those of ``ompi_coll_tuned_*_intra_dec_fixed`` in Open MPI's
``ompi/mca/coll/tuned/coll_tuned_decision_fixed.c``, release v5.0.10 (the file is unchanged on the v5.0.x
branch through August 2026, the source of the 5.0.11 wheel on PyPI), with the fallbacks of the algorithms
themselves (``ompi/mca/coll/base/coll_base_allreduce.c``, ``coll_base_allgather.c``): the ring allreduce
runs recursive doubling when the count is below the rank count, Rabenseifner's runs the linear algorithm
when the count is below the largest power of two <= p, recursive-doubling allgather runs Bruck's on a
non-power-of-two p and the neighbour exchange the ring on an odd p. ``tuned`` is the component Open MPI 5
selects on a communicator whose ranks are all on one node, or one per node: ``coll/han`` (priority 35
against tuned's 30) disqualifies itself on one node and hands every collective back to tuned when no node
holds two ranks (``coll_han_subcomms.c``). With several ranks on each of several nodes han runs its own
hierarchical algorithms, which are not modelled here: :func:`hes_mpi.collectives.collective_model` then
marks the figures as assumed.

Wire bytes
----------
What one rank sends, averaged over the ranks where the algorithm is not symmetric (a root or the extra
ranks of a non-power-of-two p send more): recursive doubling ``(p' log2 p' + 2r) n / p`` with
``p' = 2^floor(log2 p)`` and ``r = p - p'`` (the r extra ranks hand their vector in and get the result
back); Rabenseifner's ``(2(p'-1) + 2.5 r) n / p`` (the extra ranks' pairs swap halves, one half goes back,
the result goes out); the ring and the segmented ring ``2(p-1)/p n``; the linear and the non-overlapping
algorithm (a reduce, then a bcast, each a tree: every non-root rank sends its n once) ``2(p-1)/p n``.
Bcast trees send ``(p-1)/p n`` per rank; scatter + allgather as in MPICH's model. Every allgather algorithm
sends ``(p-1) n`` per rank. Gatherv (hes_mpi's gather) is linear: ``n`` from every non-root rank.

Costs
-----
``time = a alpha + b beta`` as in :func:`hes_mpi.collectives.coefficients`. Exact in the rounds and bytes
on the critical path for the ring, recursive doubling, Rabenseifner's, the linear algorithms, the binomial
tree, Bruck's allgather and the neighbour exchange; first-order for the rest: the non-overlapping allreduce
as a binomial reduce plus a binomial bcast, chain and pipeline bcasts unsegmented (``p - 1`` hops), the
binary tree two sends per level, the split binary tree as a binary tree on half the message plus one
exchange, the k-nomial tree (radix 4) ``min(p-1, 3 ceil(log4 p))`` sends.
"""

from __future__ import annotations

import functools

#: Where the tables come from (recorded in run logs, cited in docs/measurement.md).
SOURCE = "Open MPI v5.0.10 ompi/mca/coll/tuned/coll_tuned_decision_fixed.c (unchanged through v5.0.x, Aug 2026)"

ALLREDUCE = {1: "basic_linear", 2: "nonoverlapping", 3: "recursive_doubling", 4: "ring", 5: "segmented_ring",
             6: "rabenseifner"}
BCAST = {1: "basic_linear", 2: "chain", 3: "pipeline", 4: "split_binary_tree", 5: "binary_tree", 6: "binomial",
         7: "knomial", 8: "scatter_allgather", 9: "scatter_allgather_ring"}
ALLGATHER = {1: "linear", 2: "bruck", 3: "recursive_doubling", 4: "ring", 5: "neighbor", 6: "two_proc"}
BARRIER = {1: "linear", 2: "double_ring", 3: "recursive_doubling", 4: "bruck", 5: "two_proc", 6: "tree"}

# Each table: rows of (rank count below, [(bytes below, algorithm), ..., (None, algorithm)]); the last row's
# bound is None (any larger rank count). ("==", 2) in the C source is written as "below 3" after a row for 2.
_ALLREDUCE_COMMUTATIVE = (
    (4, ((8, 4), (4096, 3), (8192, 4), (16384, 3), (65536, 4), (262144, 5), (None, 6))),
    (8, ((16, 4), (8192, 3), (None, 6))),
    (16, ((8192, 3), (None, 6))),
    (32, ((64, 5), (4096, 3), (None, 6))),
    (64, ((128, 5), (None, 6))),
    (128, ((262144, 3), (None, 6))),
    (256, ((131072, 2), (262144, 3), (None, 6))),
    (512, ((4096, 2), (None, 6))),
    (2048, ((2048, 2), (16384, 3), (None, 6))),
    (4096, ((2048, 2), (4096, 5), (16384, 3), (None, 6))),
    (None, ((2048, 2), (16384, 5), (32768, 3), (None, 6))),
)
_BCAST = (
    (4, ((32, 3), (256, 5), (512, 3), (1024, 7), (32768, 1), (131072, 5), (262144, 2), (524288, 1), (1048576, 6),
         (None, 5))),
    (8, ((64, 5), (128, 6), (2048, 5), (8192, 6), (1048576, 1), (None, 2))),
    (16, ((8, 7), (64, 5), (4096, 7), (16384, 5), (32768, 6), (None, 1))),
    (32, ((4096, 7), (1048576, 6), (None, 8))),
    (64, ((2048, 6), (None, 7))),
    (128, ((None, 7),)),
    (256, ((2, 6), (16384, 5), (32768, 1), (65536, 5), (None, 7))),
    (1024, ((16384, 7), (32768, 4), (None, 7))),
    (2048, ((524288, 7), (None, 8))),
    (4096, ((262144, 7), (None, 8))),
    (None, ((8192, 7), (16384, 5), (262144, 7), (None, 8))),
)
#: Allgather: decided on the bytes of one rank's block.
_ALLGATHER = (
    (3, ((None, 6),)),  # exactly 2 ranks (1 rank never reaches tuned)
    (32, ((None, 3),)),
    (64, ((1024, 3), (65536, 5), (None, 4))),
    (128, ((512, 3), (65536, 5), (None, 4))),
    (256, ((512, 3), (131072, 5), (524288, 4), (1048576, 5), (None, 4))),
    (512, ((32, 3), (128, 2), (1024, 3), (131072, 5), (524288, 4), (1048576, 5), (None, 4))),
    (1024, ((64, 3), (256, 2), (2048, 3), (None, 5))),
    (2048, ((4, 3), (8, 2), (16, 3), (32, 2), (256, 3), (512, 2), (4096, 3), (None, 5))),
    (4096, ((32, 2), (128, 3), (512, 2), (4096, 3), (None, 5))),
    (None, ((2, 3), (8, 2), (16, 3), (512, 2), (4096, 3), (None, 5))),
)
_BARRIER = ((4, 3), (8, 1), (64, 3), (256, 4), (512, 6), (1024, 4), (4096, 6), (None, 4))

#: The k-nomial bcast's radix (``coll_tuned_bcast_algorithm_knomial_radix``, default 4).
KNOMIAL_RADIX = 4


def _lookup(table, p: int, nbytes: int) -> int:
    for p_below, rows in table:
        if p_below is None or p < p_below:
            for n_below, alg in rows:
                if n_below is None or nbytes < n_below:
                    return alg
    raise AssertionError("unreachable: every table ends in a catch-all row")


def _pof2(p: int) -> tuple[int, int, int]:
    """``(p', log2 p', r)``: the largest power of two <= p, its log, and the ranks beyond it."""
    lg = p.bit_length() - 1
    return 1 << lg, lg, p - (1 << lg)


def _ceil_log2(p: int) -> int:
    return (p - 1).bit_length()


@functools.lru_cache(maxsize=4096)
def algorithm(op: str, nbytes: int, p: int, count: int | None = None) -> str:
    """The algorithm Open MPI's tuned component runs for ``op`` on ``nbytes`` per rank (``count`` elements;
    default: 4-byte elements) on ``p`` ranks, the algorithms' own fallbacks applied. Every hes_mpi reduction
    (sum, max, min, minloc) is commutative."""
    if count is None:
        count = 1 if op == "minloc" else max(1, nbytes // 4)
    if op in ("allreduce", "minloc"):
        alg = ALLREDUCE[_lookup(_ALLREDUCE_COMMUTATIVE, p, nbytes)]
        if alg in ("ring", "segmented_ring") and count < p:
            return "recursive_doubling"
        if alg == "rabenseifner" and count < _pof2(p)[0]:
            return "basic_linear"
        return alg
    if op == "bcast":
        return BCAST[_lookup(_BCAST, p, nbytes)]
    if op == "allgather":
        alg = ALLGATHER[_lookup(_ALLGATHER, p, nbytes)]
        if alg == "recursive_doubling" and p & (p - 1):
            return "bruck"
        if alg == "neighbor" and p % 2:
            return "ring"
        return alg
    if op == "barrier":
        for p_below, alg in _BARRIER:
            if p_below is None or p < p_below:
                return BARRIER[alg]
    return "linear" if op == "gather" else "direct"


def wire_bytes(op: str, nbytes: int, p: int, root: bool = False, count: int | None = None) -> int:
    """Bytes one rank puts on the wire for ``op`` (see the module's docstring for each algorithm)."""
    if p <= 1 or nbytes <= 0:
        return 0
    n = nbytes
    if op == "gather":
        return 0 if root else n
    if op == "allgather":
        return (p - 1) * n
    if op not in ("allreduce", "minloc", "bcast"):
        return 0
    alg = algorithm(op, nbytes, p, count)
    q, lg, r = _pof2(p)
    if alg == "recursive_doubling":
        return round((q * lg + 2 * r) * n / p)
    if alg == "rabenseifner":
        return round((2 * (q - 1) + 2.5 * r) * n / p)
    if op in ("allreduce", "minloc"):  # ring, segmented ring, linear, non-overlapping
        return round(2 * (p - 1) / p * n)
    if alg in ("scatter_allgather", "scatter_allgather_ring"):
        return round((_ceil_log2(p) / (2 * p) + (p - 1) / p) * n)
    return round((p - 1) / p * n)  # every bcast tree: each rank but the root receives n once


def coefficients(op: str, nbytes: int, p: int, count: int | None = None) -> tuple[float, float]:
    """``(a, b)`` with ``time = a alpha + b beta`` for the algorithm :func:`algorithm` picks."""
    if p <= 1:
        return 0.0, 0.0
    n = float(nbytes)
    q, lg, r = _pof2(p)
    extra = 1 if r else 0
    cl = _ceil_log2(p)
    if op in ("allreduce", "minloc"):
        alg = algorithm(op, nbytes, p, count)
        if alg == "recursive_doubling":
            return float(lg + 2 * extra), (lg + 2 * extra) * n
        if alg == "rabenseifner":
            return float(2 * lg + 3 * extra), 2 * (q - 1) / q * n + 2 * extra * n
        if alg in ("ring", "segmented_ring"):
            return 2.0 * (p - 1), 2 * (p - 1) / p * n
        if alg == "basic_linear":
            return 2.0 * (p - 1), 2 * (p - 1) * n
        return 2.0 * cl, 2 * cl * n  # non-overlapping: reduce + bcast, as binomial trees
    if op == "bcast":
        alg = algorithm(op, nbytes, p, count)
        if alg in ("basic_linear", "chain", "pipeline"):
            return float(p - 1), (p - 1) * n
        if alg == "binomial":
            return float(cl), cl * n
        if alg == "knomial":
            levels, reach = 0, 1
            while reach < p:
                levels, reach = levels + 1, reach * KNOMIAL_RADIX
            sends = min(p - 1, (KNOMIAL_RADIX - 1) * levels)
            return float(sends), sends * n
        depth = p.bit_length() - 1  # levels below the root of a binary tree of p nodes
        if alg == "binary_tree":
            return 2.0 * depth, 2 * depth * n
        if alg == "split_binary_tree":
            return 2.0 * depth + 1, (2 * depth + 1) * n / 2
        return float(cl + p - 1), 2 * (p - 1) / p * n  # scatter + allgather
    if op == "allgather":
        alg = algorithm(op, nbytes, p, count)
        if alg == "two_proc":
            return 1.0, n
        if alg in ("recursive_doubling", "bruck"):
            return float(cl), (p - 1) * n
        if alg == "neighbor":
            return p / 2, (p - 1) * n
        if alg == "ring":
            return float(p - 1), (p - 1) * n
        return 2.0 * (p - 1), (p - 1) * n + (p - 1) * p * n  # linear: gather, then bcast of all p blocks
    if op == "barrier":
        alg = algorithm(op, 0, p)
        if alg == "linear":
            return 2.0 * (p - 1), 0.0
        if alg == "double_ring":
            return 2.0 * p, 0.0
        if alg == "recursive_doubling":
            return float(lg + 2 * extra), 0.0
        if alg == "tree":
            return 2.0 * cl, 0.0
        return float(cl), 0.0  # bruck, two_proc
    return 0.0, 0.0
