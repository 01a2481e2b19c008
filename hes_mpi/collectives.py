"""The collective algorithms of each MPI family, their alpha-beta costs, the bytes each rank puts on the
wire, and network presets. Pure functions: no MPI, no I/O (the communicator, the emulation, the fit and the
projection all read the algorithm choices from here, so they are written once).

Families
--------
Every function that depends on the algorithm choice takes ``family``: ``"mpich"`` (the default; the
models below) or ``"openmpi"`` (Open MPI 5's ``coll/tuned`` decision rules, in
:mod:`hes_mpi.ompi_tuned`). :func:`collective_model` says which family a run's MPI follows and whether
the figures are exact or assumed (an MPI of neither family, a tuning override in the environment, or
Open MPI's hierarchical ``han`` component on several ranks per node of several nodes).

The module runs over 400 lines because every cost is written once for scalars and arrays alike (the fit
and the projection pass arrays, the communicator scalars), and the family choice sits with the models it
selects.

Cost models
-----------
Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication Operations in MPICH",
IJHPCA 19(1), 2005: the time of a message of ``n`` bytes is ``alpha + n beta`` (latency ``alpha`` in
seconds, inverse bandwidth ``beta`` in seconds per byte); a collective on ``p`` ranks costs a number of
such rounds. Every model is linear in alpha and beta, ``t = a(n, p) alpha + b(n, p) beta`` (see
:func:`coefficients`), which is what :func:`hes_mpi.post.fit.fit_alpha_beta` exploits. ``p`` ranks are
one rank per node; ``p = 1`` costs nothing. On a ``p`` that is not a power of two, recursive doubling and
Rabenseifner's allreduce run on the largest power of two ``p' < p`` after a pre-step (the ranks beyond it
send their whole vector to a partner) and before a post-step (the result sent back): two more rounds of
``n`` bytes, as MPICH implements them (on 3 ranks Rabenseifner's costs ``4 alpha + 3 n beta``, against
``2 alpha + n beta`` on 2; measured on the emulated cluster at 100 Mbit/s: 2.9 times). The ``auto`` algorithm is MPICH's classic choice (:func:`mpich_algorithm`). The
reduction's compute term (gamma) is an optional argument of :func:`allreduce_time` only (default 0);
a fit without it folds the reduction into beta.

Wire bytes
----------
:func:`wire_bytes` is the number of bytes one rank sends for a call, by the same algorithm choice:
what the run log's ``wire_bytes`` column holds.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import ompi_tuned
from .errors import UsageError
from .schema import OPS

#: The algorithm families modelled: MPICH's classic choice and Open MPI's tuned component.
FAMILIES = ("mpich", "openmpi")

# MPICH's default switch points (bytes).
#: Allreduce: recursive doubling up to this payload, Rabenseifner's algorithm above.
ALLREDUCE_SHORT_MSG = 2048
#: Bcast: the binomial tree below this payload (or on fewer than BCAST_MIN_PROCS ranks).
BCAST_SHORT_MSG = 12288
#: MPICH's allgather: recursive doubling below this total size (p x n bytes) on a power-of-two p.
ALLGATHER_SHORT_MSG = 81920
#: MPICH's bcast uses the binomial tree on fewer ranks than this, whatever the size.
BCAST_MIN_PROCS = 8
#: Payload of the ES step's MINLOC allreduce: MPI_DOUBLE_INT (8-byte cost + 4-byte index).
MINLOC_BYTES = 12

ALLREDUCE_ALGORITHMS = ("auto", "ring", "recursive_doubling", "rabenseifner")
ALLGATHER_ALGORITHMS = ("auto", "ring", "recursive_doubling")
BCAST_ALGORITHMS = ("auto", "binomial", "scatter_allgather")

#: name -> (alpha s, beta s/byte, description). Bandwidths are line rates (8 bits per byte, no protocol
#: overhead: optimistic by 5-10 %). Latencies are typical small-message MPI ping-pong figures
#: (osu_latency): TCP over 1 GbE 25-60 us, TCP over 10 GbE ~10 us, RoCE/100 GbE 2-3 us, InfiniBand HDR
#: ~1 us (NVIDIA/Mellanox ConnectX-6 data sheets and OSU published results). Assumptions, not measurements.
PRESETS: dict[str, tuple[float, float, str]] = {
    "1gbe": (50e-6, 8 / 1e9, "1 Gbit/s Ethernet, MPI over TCP (50 us)"),
    "10gbe": (10e-6, 8 / 10e9, "10 Gbit/s Ethernet, MPI over TCP (10 us)"),
    "100gbe": (3e-6, 8 / 100e9, "100 Gbit/s Ethernet with RDMA (RoCE, 3 us)"),
    "ib-hdr": (1e-6, 8 / 200e9, "InfiniBand HDR, 200 Gbit/s (1 us)"),
}


# ---------------------------------------------------------------------------------------- helpers
_SCALAR_TYPES = (int, float, np.integer, np.floating)


def _scalar(*xs) -> bool:
    """True when every argument is a plain number (the fast, numpy-free path)."""
    for x in xs:
        if not (isinstance(x, _SCALAR_TYPES) or (isinstance(x, np.ndarray) and x.ndim == 0)):
            return False
    return True


def _ceil_log2(p, scalar: bool):
    """ceil(log2 p) for integer p >= 1 (exact: the bit length of p - 1)."""
    if scalar:
        return float((int(p) - 1).bit_length())
    return np.frexp(np.asarray(p, dtype=np.float64) - 1)[1].astype(np.float64)


def _is_pow2(p, scalar: bool):
    if scalar:
        q = int(p)
        return q & (q - 1) == 0
    q = np.asarray(p, dtype=np.int64)
    return (q & (q - 1)) == 0


def _select(cond, x, y, scalar: bool):
    return (x if cond else y) if scalar else np.where(cond, x, y)


def _check(nbytes, p, scalar: bool) -> None:
    if scalar:
        bad_p, bad_n = p < 1, nbytes < 0
    else:
        bad_p, bad_n = np.any(np.asarray(p) < 1), np.any(np.asarray(nbytes) < 0)
    if bad_p:
        raise ValueError(f"rank count must be >= 1, got {p}")
    if bad_n:
        raise ValueError(f"message size must be >= 0 bytes, got {nbytes}")


def _out(x, scalar: bool):
    return float(x) if scalar else np.asarray(x, dtype=np.float64)


def _choice(algorithm: str, allowed: tuple[str, ...], what: str) -> str:
    if algorithm not in allowed:
        raise ValueError(f"unknown {what} algorithm {algorithm!r}; one of {', '.join(allowed)}")
    return algorithm


def network_of(network) -> tuple[str, float, float]:
    """``(name, alpha, beta)`` from a spec for :func:`parse_network` or an ``(name, alpha, beta)`` tuple."""
    if isinstance(network, str):
        return parse_network(network)
    name, alpha, beta = network[:3]
    return str(name), float(alpha), float(beta)


# ---------------------------------------------------------------------------------------- MPICH's choice
def _auto_short(op: str, n, pf, p, scalar: bool):
    """Whether MPICH's ``auto`` choice for ``op`` on ``n`` bytes and ``p`` ranks is its short-message algorithm
    (allreduce, minloc, allgather: recursive doubling; bcast: the binomial tree). The one place where the
    switch points are applied; arrays broadcast."""
    if op in ("allreduce", "minloc"):
        return n <= ALLREDUCE_SHORT_MSG
    if op == "allgather":
        return (pf * n < ALLGATHER_SHORT_MSG) & _is_pow2(p, scalar)
    if op == "bcast":
        return (n < BCAST_SHORT_MSG) | (pf < BCAST_MIN_PROCS)
    raise ValueError(f"no algorithm choice for {op!r}")


def mpich_algorithm(op: str, nbytes: int, p: int) -> str:
    """The algorithm MPICH's classic ``auto`` selection runs for ``op`` on ``nbytes`` per rank and ``p``
    ranks: allreduce and minloc ``recursive_doubling`` up to :data:`ALLREDUCE_SHORT_MSG` bytes, else
    ``rabenseifner``; allgather ``recursive_doubling`` when ``p x nbytes`` is below
    :data:`ALLGATHER_SHORT_MSG` and ``p`` is a power of two, else ``ring``; bcast ``binomial`` below
    :data:`BCAST_SHORT_MSG` bytes or on fewer than :data:`BCAST_MIN_PROCS` ranks, else
    ``scatter_allgather``; barrier ``dissemination``; the rest ``direct``."""
    n, pf = float(nbytes), float(p)
    if op in ("allreduce", "minloc"):
        return "recursive_doubling" if _auto_short(op, n, pf, p, True) else "rabenseifner"
    if op == "allgather":
        return "recursive_doubling" if _auto_short(op, n, pf, p, True) else "ring"
    if op == "bcast":
        return "binomial" if _auto_short(op, n, pf, p, True) else "scatter_allgather"
    return "dissemination" if op == "barrier" else "direct"


def _family(family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown MPI algorithm family {family!r}; one of {', '.join(FAMILIES)}")
    return family


def algorithm(op: str, nbytes: int, p: int, family: str = "mpich", count: int | None = None) -> str:
    """The algorithm ``family``'s default selection runs for ``op`` on ``nbytes`` per rank (``count``
    elements; Open MPI's fallbacks depend on it) and ``p`` ranks."""
    if _family(family) == "openmpi":
        return ompi_tuned.algorithm(op, int(nbytes), int(p), count)
    return mpich_algorithm(op, nbytes, p)


@functools.lru_cache(maxsize=4096)
def wire_bytes(op: str, nbytes: int, size: int, root: bool = False, family: str = "mpich",
               count: int | None = None) -> int:
    """Bytes this rank puts on the wire for ``op`` on a payload of ``nbytes`` (``count`` elements) per
    rank, by the algorithm ``family`` picks (Open MPI: :func:`hes_mpi.ompi_tuned.wire_bytes`; MPICH:
    :func:`mpich_algorithm`, as follows).

    Allreduce and minloc: recursive doubling sends ``ceil(log2 p) x n``, Rabenseifner's reduce-scatter +
    allgather ``2 (p-1)/p x n``. Allgather: ``(p-1) x n`` (ring and recursive doubling alike). Bcast,
    averaged over the ranks: the binomial tree ``(p-1)/p x n``; scatter + allgather (van de Geijn) the
    binomial scatter's ``log2(p)/(2p) x n`` plus the ring allgather's ``(p-1)/p x n``. Gather: ``n``
    from every non-root rank. Barrier, sendrecv, split: 0 (not counted).
    """
    p = size
    if p <= 1 or nbytes <= 0:
        return 0
    if _family(family) == "openmpi":
        return ompi_tuned.wire_bytes(op, int(nbytes), int(p), root, count)
    alg = mpich_algorithm(op, nbytes, p) if op in ("allreduce", "minloc", "bcast") else None
    if alg == "recursive_doubling":
        return math.ceil(math.log2(p)) * nbytes
    if alg == "rabenseifner":
        return round(2 * (p - 1) / p * nbytes)
    if op == "allgather":
        return (p - 1) * nbytes
    if alg == "binomial":
        return round((p - 1) / p * nbytes)
    if alg == "scatter_allgather":
        return round((math.ceil(math.log2(p)) / (2 * p) + (p - 1) / p) * nbytes)
    if op == "gather":
        return 0 if root else nbytes
    return 0


# ---------------------------------------------------------------------------------------- which model a run follows
#: ``MPI.get_vendor()`` names whose default algorithm choice is modelled, and their family.
VENDOR_FAMILIES = {"MPICH": "mpich", "Open MPI": "openmpi"}
#: What each family's model is, as the run log records it.
MODEL_NAMES = {"mpich": "MPICH classic auto selection (hes_mpi.collectives.mpich_algorithm)",
               "openmpi": f"Open MPI coll/tuned fixed decisions ({ompi_tuned.SOURCE})"}
_MPICH_TUNING = ("ALLREDUCE", "ALLGATHER", "BCAST", "BARRIER", "REDUCE", "COLL", "CSEL")
_MPICH_PREFIXES = ("MPIR_CVAR_", "MPIR_PARAM_", "MPICH_")


def _tuning_overrides(family: str, environ) -> list[str]:
    """Environment variables that change ``family``'s algorithm choice (sorted names)."""
    names = []
    for name in environ:
        if family == "openmpi" and name.upper().startswith("OMPI_MCA_COLL"):
            names.append(name)
        elif family == "mpich" and name.upper().startswith(_MPICH_PREFIXES):
            rest = name.upper().split("_", 2)[-1]
            if any(word in rest for word in _MPICH_TUNING):
                names.append(name)
    return sorted(names)


def collective_model(vendor: str, processor_names=(), environ=None) -> dict:
    """Which algorithm family a run's figures follow, and whether they are exact or assumed.

    ``vendor`` is the name ``MPI.get_vendor()`` gives (``"MPICH"``, ``"Open MPI"``, ...),
    ``processor_names`` one per rank (the node each rank runs on), ``environ`` the environment the MPI
    library read (default: none). Returns the run log's ``/environment`` attributes ``mpi_family``
    (a name of :data:`FAMILIES`), ``collective_model`` (what is modelled), ``collective_model_assumed``
    (bool) and ``collective_model_note`` (why assumed; empty when exact). Assumed when: the MPI is of
    neither family (MPICH's choice is used); a variable in the environment tunes the selection
    (``OMPI_MCA_coll*``; MPICH's ``MPIR_CVAR_*`` of a collective, ``COLL`` or ``CSEL``); or Open MPI runs
    several ranks on each of several nodes, where its ``han`` component, not ``tuned``, picks.
    """
    family = VENDOR_FAMILIES.get(str(vendor).strip())
    notes = []
    if family is None:
        family = "mpich"
        notes.append(f"{vendor or 'this MPI'}'s algorithm choice is not modelled; MPICH's is assumed")
    overrides = _tuning_overrides(family, environ or {})
    if overrides:
        notes.append(f"the environment tunes collectives ({', '.join(overrides)}); the default choice is assumed")
    names = [str(n) for n in processor_names]
    if family == "openmpi" and names:
        per_node = {n: names.count(n) for n in set(names)}
        if len(per_node) > 1 and max(per_node.values()) > 1:
            notes.append(f"Open MPI's han component picks on {len(per_node)} nodes with up to "
                         f"{max(per_node.values())} ranks each; tuned's choice is assumed")
    return {"mpi_family": family, "collective_model": MODEL_NAMES[family],
            "collective_model_assumed": bool(notes), "collective_model_note": "; ".join(notes)}


def family_of(environment: dict) -> str:
    """The algorithm family a run log's ``/environment`` names (logs written before it was recorded:
    ``"mpich"``, the only MPI hes_mpi ran on then)."""
    family = str(environment.get("mpi_family", "") or "mpich")
    return family if family in FAMILIES else "mpich"


# ---------------------------------------------------------------------------------------- cost models
def coefficients(op: str, nbytes, p, algorithm: str = "auto", family: str = "mpich"):
    """``(a, b)`` with ``time = a alpha + b beta`` for ``op`` (a name of :data:`hes_mpi.schema.OPS`).

    ``nbytes`` is the payload per rank (the allreduce vector, each rank's allgather block, the bcast
    buffer). Operations without a model (gather, sendrecv, split) give ``(0, 0)``. ``algorithm="auto"``
    is ``family``'s own choice (Open MPI: :func:`hes_mpi.ompi_tuned.coefficients`, 4-byte elements); a
    named algorithm costs the same on either family.
    """
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPS)}")
    scalar = _scalar(nbytes, p)
    _check(nbytes, p, scalar)
    if _family(family) == "openmpi" and algorithm == "auto":
        if scalar:
            return ompi_tuned.coefficients(op, int(nbytes), int(p))
        n_arr, p_arr = np.broadcast_arrays(np.asarray(nbytes), np.asarray(p))
        pairs = [ompi_tuned.coefficients(op, int(n), int(q)) for n, q in zip(n_arr.ravel(), p_arr.ravel())]
        ab = np.array(pairs, dtype=np.float64).reshape(n_arr.shape + (2,))
        return ab[..., 0], ab[..., 1]
    if scalar:
        n, pf, zero = float(nbytes), float(p), 0.0
    else:
        n = np.asarray(nbytes, dtype=np.float64)
        pf = np.asarray(p, dtype=np.float64)
        zero = np.zeros(np.broadcast(n, pf).shape)
    lg = _ceil_log2(p, scalar)
    if op in ("allreduce", "minloc"):
        alg = _choice(algorithm, ALLREDUCE_ALGORITHMS, "allreduce")
        ring = (2 * (pf - 1), 2 * (pf - 1) / pf * n)
        # p not a power of two: the ranks beyond the largest power of two p' hand their whole vector to a
        # partner first and get the result back last (two more rounds of n bytes); the rest runs on p'
        odd = ~_is_pow2(p, scalar) if not scalar else not _is_pow2(p, scalar)
        lg2 = lg - _select(odd, 1.0, 0.0, scalar)  # log2 p'
        extra = _select(odd, 2.0, 0.0, scalar)
        p2 = 2.0 ** lg2
        rd = (lg2 + extra, (lg2 + extra) * n)
        rab = (2 * lg2 + extra, (2 * (p2 - 1) / p2 + extra) * n)
        if alg == "ring":
            a, b = ring
        elif alg == "recursive_doubling":
            a, b = rd
        elif alg == "rabenseifner":
            a, b = rab
        else:
            short = _auto_short(op, n, pf, p, scalar)
            a, b = _select(short, rd[0], rab[0], scalar), _select(short, rd[1], rab[1], scalar)
    elif op == "allgather":
        alg = _choice(algorithm, ALLGATHER_ALGORITHMS, "allgather")
        ring = (pf - 1, (pf - 1) * n)
        rd = (lg, (pf - 1) * n)
        if alg == "ring":
            a, b = ring
        elif alg == "recursive_doubling":
            a, b = rd
        else:
            use_rd = _auto_short(op, n, pf, p, scalar)
            a, b = _select(use_rd, rd[0], ring[0], scalar), _select(use_rd, rd[1], ring[1], scalar)
    elif op == "bcast":
        alg = _choice(algorithm, BCAST_ALGORITHMS, "bcast")
        binomial = (lg, lg * n)
        sag = (lg + pf - 1, 2 * (pf - 1) / pf * n)
        if alg == "binomial":
            a, b = binomial
        elif alg == "scatter_allgather":
            a, b = sag
        else:
            short = _auto_short(op, n, pf, p, scalar)
            a, b = _select(short, binomial[0], sag[0], scalar), _select(short, binomial[1], sag[1], scalar)
    elif op == "barrier":
        a, b = lg, 0.0
    else:
        a, b = 0.0, 0.0
    return _out(a + zero, scalar), _out(b + zero, scalar)


def allreduce_time(nbytes, p, alpha, beta, algorithm: str = "auto", gamma=0.0):
    """Time of an allreduce of ``nbytes`` (the vector, per rank) on ``p`` ranks.

    * ``ring``: ``2(p-1) alpha + 2(p-1)/p n beta + (p-1)/p n gamma``
    * ``recursive_doubling``: ``ceil(log2 p) (alpha + n beta + n gamma)``
    * ``rabenseifner`` (reduce-scatter by recursive halving, then allgather by recursive doubling):
      ``2 log2(p) alpha + 2(p-1)/p n beta + (p-1)/p n gamma``
    * ``auto``: MPICH's choice: recursive doubling for ``n <= 2048`` bytes
      (:data:`ALLREDUCE_SHORT_MSG`), Rabenseifner above.

    ``gamma`` is the reduction's compute time per byte (default 0). ``p = 1`` costs 0.
    Scalars give a float; arrays broadcast.
    """
    scalar = _scalar(nbytes, p, alpha, beta, gamma)
    a, b = coefficients("allreduce", nbytes, p, algorithm)
    t = a * alpha + b * beta
    if np.any(np.asarray(gamma) != 0):
        pf = np.asarray(p, dtype=np.float64)
        n = np.asarray(nbytes, dtype=np.float64)
        rd = _ceil_log2(p, False) * n
        halves = (pf - 1) / pf * n
        if algorithm == "recursive_doubling":
            c = rd
        elif algorithm in ("ring", "rabenseifner"):
            c = halves
        else:
            c = np.where(n <= ALLREDUCE_SHORT_MSG, rd, halves)
        t = t + c * gamma
    return _out(t, scalar)


def allgather_time(nbytes_per_rank, p, alpha, beta, algorithm: str = "auto"):
    """Time of an allgather of ``nbytes_per_rank`` from each of ``p`` ranks.

    * ``ring``: ``(p-1) alpha + (p-1) n beta``
    * ``recursive_doubling``: ``log2(p) alpha + (p-1) n beta``
    * ``auto``: MPICH's choice: recursive doubling when the gathered total ``p n`` is below 80 KiB
      (:data:`ALLGATHER_SHORT_MSG`) and ``p`` is a power of two, else the ring.
    """
    scalar = _scalar(nbytes_per_rank, p, alpha, beta)
    a, b = coefficients("allgather", nbytes_per_rank, p, algorithm)
    return _out(a * alpha + b * beta, scalar)


def bcast_time(nbytes, p, alpha, beta, algorithm: str = "auto"):
    """Time of a broadcast of ``nbytes`` from one root to ``p`` ranks.

    * ``binomial`` tree: ``ceil(log2 p) (alpha + n beta)``
    * ``scatter_allgather`` (van de Geijn: binomial scatter, then allgather):
      ``(log2 p + p - 1) alpha + 2(p-1)/p n beta``
    * ``auto``: MPICH's choice: binomial below 12288 bytes (:data:`BCAST_SHORT_MSG`) or
      on fewer than 8 ranks (:data:`BCAST_MIN_PROCS`), scatter + allgather otherwise.
    """
    scalar = _scalar(nbytes, p, alpha, beta)
    a, b = coefficients("bcast", nbytes, p, algorithm)
    return _out(a * alpha + b * beta, scalar)


def barrier_time(p, alpha):
    """Dissemination barrier: ``ceil(log2 p) alpha``."""
    scalar = _scalar(p, alpha)
    a, _ = coefficients("barrier", 0, p)
    return _out(a * alpha, scalar)


def collective_time(op: str, nbytes, p, alpha, beta, family: str = "mpich"):
    """Modelled time of ``op`` (a name of :data:`hes_mpi.schema.OPS`) with ``family``'s default algorithm.

    MPICH: ``allreduce`` and ``minloc``: :func:`allreduce_time`; ``allgather``: :func:`allgather_time`
    (``nbytes`` per rank); ``bcast``: :func:`bcast_time`; ``barrier``: ``ceil(log2 p) alpha``;
    ``gather``, ``sendrecv``, ``split``: 0 (no model). Open MPI: :func:`hes_mpi.ompi_tuned.coefficients`.
    Cheap on scalars (no numpy).
    """
    scalar = _scalar(nbytes, p, alpha, beta)
    a, b = coefficients(op, nbytes, p, family=family)
    return _out(a * alpha + b * beta, scalar)


# ---------------------------------------------------------------------------------------- networks
def _presets_line() -> str:
    return ", ".join(PRESETS)


def parse_network(spec: str) -> tuple[str, float, float]:
    """``(name, alpha, beta)`` from a preset name of :data:`PRESETS` or ``"ALPHA_S,BETA_S_PER_BYTE"``.

    A bad spec raises :class:`~hes_mpi.errors.UsageError` with a one-line message listing the presets.
    """
    text = str(spec).strip()
    key = text.lower()
    if key in PRESETS:
        alpha, beta, _ = PRESETS[key]
        return key, alpha, beta
    parts = [s.strip() for s in text.split(",")]
    hint = f"use a preset ({_presets_line()}) or ALPHA_S,BETA_S_PER_BYTE such as 2e-6,1e-9"
    if len(parts) != 2:
        raise UsageError(f"unknown network {spec!r}: {hint}")
    try:
        alpha, beta = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(f"unknown network {spec!r}: {hint}") from None
    if not (math.isfinite(alpha) and math.isfinite(beta)) or alpha < 0 or beta < 0:
        raise UsageError(f"network {spec!r}: alpha and beta must be finite and >= 0; {hint}")
    return f"{alpha:g},{beta:g}", alpha, beta


def describe_network(name: str) -> str:
    return PRESETS[name][2] if name in PRESETS else ""


