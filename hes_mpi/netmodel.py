"""Network cost models of MPI collectives, their fit to a run log, and projections to larger clusters.

Cost models
-----------
Thakur, Rabenseifner & Gropp, "Optimization of Collective Communication Operations in MPICH",
IJHPCA 19(1), 2005: the time of a message of ``n`` bytes is ``alpha + n beta`` (latency ``alpha`` in
seconds, inverse bandwidth ``beta`` in seconds per byte); a collective on ``p`` ranks costs a number of
such rounds. Every model is linear in alpha and beta, ``t = a(n, p) alpha + b(n, p) beta`` (see
:func:`coefficients`), which is what :func:`fit_alpha_beta` exploits. ``p`` ranks are one rank per node;
``p = 1`` costs nothing. Latency terms use ``ceil(log2 p)`` rounds, exact for powers of two and a lower
bound otherwise (MPICH adds a pre- and post-step for the ranks beyond the largest power of two). The
``auto`` algorithm is MPICH's classic choice, with the switch points of :mod:`hes_mpi.comm`. The
reduction's compute term (gamma) is an optional argument of :func:`allreduce_time` only (default 0);
a fit without it folds the reduction into beta.

Projection
----------
:func:`step_costs` reads what a run measured (median compute seconds of each step kind, slowest rank
per iteration); :func:`project` adds the modelled communication of N nodes on a given network:

* BGD, per iteration: gradient compute + an allreduce of ``4 x param_count`` bytes.
* H-ES (r, K), per iteration on average: ``1/r`` gradient steps as above, ``(r-1)/r`` ES steps of ES
  compute + a 12-byte MINLOC allreduce; assisted H-ES: all of it on every iteration.

Scaling: ``weak`` keeps each node's rows as measured (per-rank compute as measured; the data set and
the global batch grow with N, so iterations per epoch stay as measured); ``strong`` keeps the data set
and the global batch, and multiplies compute by ``measured_ranks / N``. That assumes all compute is
proportional to the rows, which overstates the gain for ES steps: their noise generation (K vectors of
``param_count`` numbers per rank) does not shrink with the rows.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .comm import ALLREDUCE_SHORT_MSG, BCAST_SHORT_MSG, OPS
from .errors import UsageError

#: MPICH's allgather: recursive doubling below this total size (p x n bytes) on a power-of-two p.
ALLGATHER_SHORT_MSG = 81920
#: MPICH's bcast uses the binomial tree on fewer ranks than this, whatever the size.
BCAST_MIN_PROCS = 8
#: Payload of the ES step's MINLOC allreduce: MPI_DOUBLE_INT (8-byte cost + 4-byte index).
MINLOC_BYTES = 12
#: The operations :func:`measured_pairs` times (collectives with a model).
FIT_OPS = ("allreduce", "minloc", "allgather", "bcast")

ALLREDUCE_ALGORITHMS = ("auto", "ring", "recursive_doubling", "rabenseifner")
ALLGATHER_ALGORITHMS = ("auto", "ring", "recursive_doubling")
BCAST_ALGORITHMS = ("auto", "binomial", "scatter_allgather")
SCALINGS = ("weak", "strong")

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
#: The networks of a default report: this machine's fitted alpha and beta, then the presets.
DEFAULT_NETWORKS = ("measured", *PRESETS)
#: Node counts of a default report.
DEFAULT_NODES = tuple(2**k for k in range(1, 11))
#: Node counts :func:`crossover` searches.
CROSSOVER_SEARCH = tuple(2**k for k in range(1, 21))


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


def _network(network) -> tuple[str, float, float]:
    if isinstance(network, str):
        return parse_network(network)
    name, alpha, beta = network[:3]
    return str(name), float(alpha), float(beta)


# ---------------------------------------------------------------------------------------- cost models
def coefficients(op: str, nbytes, p, algorithm: str = "auto"):
    """``(a, b)`` with ``time = a alpha + b beta`` for ``op`` (a name of :data:`hes_mpi.comm.OPS`).

    ``nbytes`` is the payload per rank (the allreduce vector, each rank's allgather block, the bcast
    buffer). Operations without a model (gather, sendrecv, split) give ``(0, 0)``.
    """
    if op not in OPS:
        raise ValueError(f"unknown operation {op!r}; one of {', '.join(OPS)}")
    scalar = _scalar(nbytes, p)
    _check(nbytes, p, scalar)
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
        rd = (lg, lg * n)
        rab = (2 * lg, 2 * (pf - 1) / pf * n)
        if alg == "ring":
            a, b = ring
        elif alg == "recursive_doubling":
            a, b = rd
        elif alg == "rabenseifner":
            a, b = rab
        else:
            short = n <= ALLREDUCE_SHORT_MSG
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
            use_rd = (pf * n < ALLGATHER_SHORT_MSG) & _is_pow2(p, scalar)
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
            short = (n < BCAST_SHORT_MSG) | (pf < BCAST_MIN_PROCS)
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
      (:data:`hes_mpi.comm.ALLREDUCE_SHORT_MSG`), Rabenseifner above.

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
    * ``auto``: MPICH's choice: binomial below 12288 bytes (:data:`hes_mpi.comm.BCAST_SHORT_MSG`) or
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


def collective_time(op: str, nbytes, p, alpha, beta):
    """Modelled time of ``op`` (a name of :data:`hes_mpi.comm.OPS`) with MPICH's ``auto`` algorithm.

    ``allreduce`` and ``minloc``: :func:`allreduce_time`; ``allgather``: :func:`allgather_time`
    (``nbytes`` per rank); ``bcast``: :func:`bcast_time`; ``barrier``: ``ceil(log2 p) alpha``;
    ``gather``, ``sendrecv``, ``split``: 0 (no model). Cheap on scalars (no numpy).
    """
    scalar = _scalar(nbytes, p, alpha, beta)
    a, b = coefficients(op, nbytes, p)
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


# ---------------------------------------------------------------------------------------- run logs
def _names(runlog, attr: str) -> list[str]:
    from .runlog import _plain

    return [str(_plain(x)) for x in runlog.f["comm"].attrs[attr]]


def measured_pairs(runlog, phases=None, with_ranks: bool = False) -> list[tuple]:
    """``(op, payload bytes, seconds)`` of every timed collective of a :class:`hes_mpi.runlog.RunLog`.

    Every collective (``seq >= 0``) with a model (:data:`FIT_OPS`) of every rank, in the phases given
    (default: all — the algorithm's, evaluation, checks, setup and the log's own gathers). Payload: the
    bytes sent (allreduce, minloc: the vector; allgather: each rank's block); bcast: the buffer (sent at
    the root, received elsewhere). Seconds: the call's duration minus this rank's waiting, i.e. how
    long before the last rank it entered, with entry times put on rank 0's clock by
    ``/clock/offset_start`` (the rule of :func:`hes_mpi.telemetry.split_times`), so that the figures
    are communication only. ``with_ranks`` appends the run's rank count to each tuple.
    """
    f = runlog.f
    if "comm/records" not in f or "comm" not in f:
        return []
    rec = runlog.table("comm/records")
    if rec["seq"].size == 0:
        return []
    op_names = _names(runlog, "op_names")
    phase_names = _names(runlog, "phase_names")
    ranks = int(runlog.environment.get("ranks", 1))
    keep = rec["seq"] >= 0
    keep &= np.isin(rec["op"], [op_names.index(o) for o in FIT_OPS if o in op_names])
    if phases is not None:
        keep &= np.isin(rec["phase"], [phase_names.index(p) for p in phases if p in phase_names])
    if not np.any(keep):
        return []
    rk = rec["rank"][keep].astype(np.int64)
    offsets = np.zeros(max(ranks, int(rk.max()) + 1))
    if "clock/offset_start" in f:
        off = np.asarray(f["clock/offset_start"][()], dtype=np.float64).ravel()
        offsets[: off.size] = off[: offsets.size]
    t_enter = rec["t_enter"][keep]
    duration = rec["t_exit"][keep] - t_enter
    aligned = t_enter - offsets[rk]
    _, group = np.unique(rec["seq"][keep], return_inverse=True)
    latest = np.full(group.max() + 1, -np.inf)
    np.maximum.at(latest, group, aligned)
    wait = np.clip(latest[group] - aligned, 0.0, np.maximum(duration, 0.0))
    seconds = duration - wait
    ops = np.asarray(op_names, dtype=object)[rec["op"][keep]]
    sent = rec["bytes_sent"][keep]
    nbytes = np.where(ops == "bcast", np.maximum(sent, rec["bytes_recv"][keep]), sent)
    if with_ranks:
        return [(str(o), int(n), float(s), ranks) for o, n, s in zip(ops, nbytes, seconds)]
    return [(str(o), int(n), float(s)) for o, n, s in zip(ops, nbytes, seconds)]


@dataclass
class StepCosts:
    """What one run log measured, as :func:`project` needs it (seconds are the slowest rank's)."""

    label: str
    algo: str
    assisted: bool
    r: int
    K: int
    ranks: int
    param_count: int
    batch: int
    n_train: int
    iterations_per_epoch: float
    compute_grad_s: float | None  # median over gradient iterations of max over ranks of compute_s
    compute_es_s: float | None  # the same over ES iterations
    compute_assisted_s: float | None  # the same over assisted iterations (gradient and ES)
    median_epoch_s: float | None  # measured, training only (includes waiting and the tool's overheads)

    @property
    def schedule(self) -> str:
        if self.algo == "bgd":
            return "bgd"
        return f"hes assisted K={self.K}" if self.assisted else f"hes r={self.r} K={self.K}"


def step_costs(runlog) -> StepCosts:
    """:class:`StepCosts` of a :class:`hes_mpi.runlog.RunLog`: median compute of each step kind, slowest rank."""
    cfg = runlog.config
    env = runlog.environment
    it = runlog.table("iterations") if "iterations" in runlog.f else {}
    kinds = it.get("kind", np.zeros(0, dtype=np.uint8))
    if kinds.size == 0 or "compute_s" not in it:
        raise UsageError(f"{runlog.path}: no iterations recorded (the run stopped before its first epoch)")
    slowest = np.asarray(it["compute_s"], dtype=np.float64).reshape(kinds.size, -1).max(axis=1)

    def med(kind: int):
        m = kinds == kind
        return float(np.median(slowest[m])) if np.any(m) else None

    ep = runlog.table("epochs") if "epochs" in runlog.f else {}
    done = np.asarray(ep.get("iteration", []), dtype=np.float64)
    batch = int(cfg["batch"])
    n_train = int(env.get("n_train", 0))
    if done.size:
        per_epoch = float(np.median(np.diff(np.r_[0.0, done])))
    elif n_train and batch:
        per_epoch = float(n_train // batch)
    else:
        per_epoch = float(kinds.size)
    epoch_s = ep.get("epoch_s", np.zeros(0))
    return StepCosts(
        label=os.path.basename(runlog.path), algo=str(cfg["algo"]), assisted=bool(cfg.get("assisted", False)),
        r=int(cfg["r"]), K=int(cfg["K"]), ranks=int(env.get("ranks", 1)), param_count=int(env.get("param_count", 0)),
        batch=batch, n_train=n_train, iterations_per_epoch=per_epoch, compute_grad_s=med(0), compute_es_s=med(1),
        compute_assisted_s=med(2), median_epoch_s=float(np.median(epoch_s)) if np.size(epoch_s) else None,
    )


# ---------------------------------------------------------------------------------------- fit
@dataclass
class Fit:
    """Result of :func:`fit_alpha_beta`."""

    alpha: float
    beta: float
    calls: int
    classes: list[dict] = field(default_factory=list)  # op, nbytes, ranks, calls, measured_s, predicted_s, rel_error
    median_rel_error: float = math.nan  # over classes
    max_rel_error: float = math.nan

    def to_dict(self) -> dict:
        return asdict(self)


def _nnls2(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||A x - y|| over x >= 0 for two columns (exact: the best of the feasible faces)."""
    best, best_x = math.inf, np.zeros(2)
    cands = []
    x, *_ = np.linalg.lstsq(A, y, rcond=None)
    cands.append(x)
    for j in range(2):
        col = A[:, j]
        den = float(col @ col)
        x = np.zeros(2)
        if den > 0:
            x[j] = max(0.0, float(col @ y) / den)
        cands.append(x)
    for x in cands:
        if np.all(x >= 0):
            r = float(np.sum((A @ x - y) ** 2))
            if r < best:
                best, best_x = r, np.asarray(x, dtype=np.float64)
    return best_x


def fit_alpha_beta(records_or_pairs, p: int | None = None) -> Fit:
    """Fit latency ``alpha`` and inverse bandwidth ``beta`` to measured collectives.

    ``records_or_pairs``: a :class:`hes_mpi.runlog.RunLog` (its :func:`measured_pairs`) or an iterable
    of ``(op, nbytes, seconds)`` triples on ``p`` ranks, or ``(op, nbytes, seconds, p)`` quadruples
    (several rank counts). Calls are grouped into classes by (op, nbytes, p) and each class counts with
    its median (robust to noise and to the first calls' connection setup). Each ``auto`` model is
    ``t = a(n, p) alpha + b(n, p) beta`` (:func:`coefficients`), so the class medians give a linear
    system; it is solved by non-negative least squares on *relative* residuals (each row divided by
    its measured median, so a 2 us class counts as much as a 300 us one). Classes whose model is 0
    (one rank) or whose median is not positive are left out. Returns a :class:`Fit` with the
    per-class table (measured median vs predicted) and the median and max relative error over classes.
    """
    if hasattr(records_or_pairs, "f") and hasattr(records_or_pairs, "environment"):
        if p is None:
            p = int(records_or_pairs.environment.get("ranks", 1))
        pairs = measured_pairs(records_or_pairs)
    else:
        pairs = records_or_pairs
    groups: dict[tuple[str, int, int], list[float]] = {}
    for row in pairs:
        if len(row) >= 4:
            op, n, s, q = row[0], row[1], row[2], row[3]
        else:
            if p is None:
                raise ValueError("fit_alpha_beta: give p, or (op, nbytes, seconds, p) quadruples")
            op, n, s = row
            q = p
        groups.setdefault((str(op), int(n), int(q)), []).append(float(s))
    classes = []
    for (op, n, q), secs in sorted(groups.items()):
        a, b = coefficients(op, n, q)
        measured = float(np.median(secs))
        if (a == 0 and b == 0) or not measured > 0:
            continue
        classes.append({"op": op, "nbytes": n, "ranks": q, "calls": len(secs), "measured_s": measured,
                        "a": a, "b": b})
    if not classes:
        raise UsageError("cannot fit alpha and beta: no timed collectives between 2 or more ranks")
    A = np.array([[c["a"], c["b"]] for c in classes]) / np.array([[c["measured_s"]] for c in classes])
    alpha, beta = _nnls2(A, np.ones(len(classes)))
    errs = []
    for c in classes:
        c["predicted_s"] = float(c.pop("a") * alpha + c.pop("b") * beta)
        c["rel_error"] = (c["predicted_s"] - c["measured_s"]) / c["measured_s"]
        errs.append(abs(c["rel_error"]))
    return Fit(alpha=float(alpha), beta=float(beta), calls=sum(c["calls"] for c in classes), classes=classes,
               median_rel_error=float(np.median(errs)), max_rel_error=float(np.max(errs)))


# ---------------------------------------------------------------------------------------- projection
def _by_algo(costs) -> tuple[StepCosts | None, StepCosts | None]:
    items = [costs] if isinstance(costs, StepCosts) else list(costs)
    bgd = [c for c in items if c.algo == "bgd"]
    hes = [c for c in items if c.algo == "hes"]
    if len(bgd) > 1 or len(hes) > 1:
        raise UsageError("give at most one BGD and one H-ES run log")
    if not bgd and not hes:
        raise UsageError("no BGD or H-ES run to project")
    return (bgd[0] if bgd else None), (hes[0] if hes else None)


def _factor(c: StepCosts, n, scaling: str):
    if scaling == "weak":
        return 1.0
    if scaling == "strong":
        return c.ranks / np.asarray(n, dtype=np.float64) if np.ndim(n) else c.ranks / n
    raise UsageError(f"unknown scaling {scaling!r}: weak or strong")


def _epoch_times(bgd: StepCosts | None, hes: StepCosts | None, alpha: float, beta: float, n, scaling: str):
    """(bgd_iteration, bgd_epoch, hes_iteration, hes_epoch, comm parts) for node count(s) n; None: no such run."""
    out: dict = {}
    ref = bgd or hes
    grad_bytes = 4 * ref.param_count
    t_ar = collective_time("allreduce", grad_bytes, n, alpha, beta)
    t_ml = collective_time("minloc", MINLOC_BYTES, n, alpha, beta)
    if bgd is not None:
        cg = bgd.compute_grad_s if bgd.compute_grad_s is not None else (hes.compute_grad_s if hes else None)
        it = (cg or 0.0) * _factor(bgd, n, scaling) + t_ar
        out["bgd_iteration_s"] = it
        out["bgd_epoch_s"] = it * bgd.iterations_per_epoch
        out["bgd_comm_s"] = t_ar
    if hes is not None:
        f = _factor(hes, n, scaling)
        if hes.assisted:
            ca = hes.compute_assisted_s or 0.0
            it = ca * f + t_ar + t_ml
            comm = t_ar + t_ml
        else:
            cg = hes.compute_grad_s
            if cg is None and bgd is not None:
                cg = bgd.compute_grad_s
            ce = hes.compute_es_s or 0.0
            r = max(1, hes.r)
            it = ((cg or 0.0) * f + t_ar + (r - 1) * (ce * f + t_ml)) / r
            comm = (t_ar + (r - 1) * t_ml) / r
        out["hes_iteration_s"] = it
        out["hes_epoch_s"] = it * hes.iterations_per_epoch
        out["hes_comm_s"] = comm
    return out


def project(costs, network, nodes, scaling: str = "weak") -> list[dict]:
    """Modelled time per iteration and per epoch of BGD and H-ES on ``nodes`` nodes of ``network``.

    ``costs``: one :class:`StepCosts` or a sequence of them (at most one BGD and one H-ES run; with one
    run only that algorithm is projected, the other's figures are None). ``network``: a preset name,
    an ``"ALPHA,BETA"`` spec or an ``(name, alpha, beta)`` tuple. ``nodes``: node counts (one rank
    per node). ``scaling``: ``weak`` or ``strong`` (see the module docstring).

    BGD iteration: ``c_grad f + allreduce(4 P)``; H-ES iteration (average over r):
    ``(c_grad f + allreduce(4 P) + (r-1)(c_es f + minloc(12))) / r``; assisted:
    ``c_assisted f + allreduce(4 P) + minloc(12)``; ``f = 1`` (weak) or ``measured_ranks / N``
    (strong). Each algorithm uses its own log's gradient compute (H-ES without gradient steps of its
    own falls back to the BGD log's). Epoch: the iteration times the measured iterations per epoch.
    Rows: ``network, alpha_s, beta_s_per_byte, nodes, scaling, bgd_iteration_s, bgd_epoch_s,
    bgd_comm_s, hes_iteration_s, hes_epoch_s, hes_comm_s, hes_over_bgd`` (epoch ratio).
    """
    if scaling not in SCALINGS:
        raise UsageError(f"unknown scaling {scaling!r}: weak or strong")
    name, alpha, beta = _network(network)
    bgd, hes = _by_algo(costs)
    rows = []
    for n in nodes:
        n = int(n)
        if n < 1:
            raise UsageError(f"node counts must be >= 1, got {n}")
        t = _epoch_times(bgd, hes, alpha, beta, n, scaling)
        row = {"network": name, "alpha_s": alpha, "beta_s_per_byte": beta, "nodes": n, "scaling": scaling}
        for k in ("bgd_iteration_s", "bgd_epoch_s", "bgd_comm_s", "hes_iteration_s", "hes_epoch_s", "hes_comm_s"):
            row[k] = float(t[k]) if k in t else None
        row["hes_over_bgd"] = (row["hes_epoch_s"] / row["bgd_epoch_s"]
                               if row["hes_epoch_s"] is not None and row["bgd_epoch_s"] else None)
        rows.append(row)
    return rows


def crossover(costs, network, scaling: str = "weak", at_nodes: int = 1024,
              search=CROSSOVER_SEARCH) -> dict:
    """Where H-ES beats BGD per epoch, on ``network``.

    Returns ``{"nodes": N, "at_nodes": at_nodes, "bandwidth_bytes_per_s": B}``: N is the smallest node
    count of ``search`` (powers of two 2 .. 2**20) at which the H-ES epoch is shorter than the BGD
    epoch, None when it never is. B is, on ``at_nodes`` nodes with the network's alpha, the bandwidth
    (bytes/s) below which H-ES is faster: the epoch difference is linear in beta, so B is exact;
    ``math.inf`` when H-ES is faster at any bandwidth, None when at no bandwidth. Needs both a BGD and
    an H-ES run.
    """
    name, alpha, beta = _network(network)
    bgd, hes = _by_algo(costs)
    if bgd is None or hes is None:
        raise UsageError("a crossover needs a BGD and an H-ES run log")
    found = None
    for n in search:
        t = _epoch_times(bgd, hes, alpha, beta, int(n), scaling)
        if t["hes_epoch_s"] < t["bgd_epoch_s"]:
            found = int(n)
            break
    beta1 = 1e-6
    t0 = _epoch_times(bgd, hes, alpha, 0.0, int(at_nodes), scaling)
    t1 = _epoch_times(bgd, hes, alpha, beta1, int(at_nodes), scaling)
    c0 = t0["hes_epoch_s"] - t0["bgd_epoch_s"]
    c1 = ((t1["hes_epoch_s"] - t1["bgd_epoch_s"]) - c0) / beta1  # d(difference)/d(beta)
    if c0 < 0 and c1 <= 0:
        bandwidth = math.inf
    elif c0 >= 0 and c1 < 0:
        bandwidth = math.inf if c0 == 0 else -c1 / c0
    else:
        bandwidth = None
    return {"network": name, "nodes": found, "at_nodes": int(at_nodes), "bandwidth_bytes_per_s": bandwidth}


# ---------------------------------------------------------------------------------------- report
def build_report(paths, networks=None, nodes=None, scaling: str = "weak", at_nodes: int | None = None) -> dict:
    """Everything ``analysis/project.py`` prints, from run log paths (one BGD and/or one H-ES log).

    ``networks``: specs for :func:`parse_network`, or ``"measured"`` for alpha and beta fitted to the
    logs (default :data:`DEFAULT_NETWORKS`; a default "measured" that cannot be fitted, e.g. from
    1-rank logs, is left out with a note). ``nodes``: default :data:`DEFAULT_NODES`. ``at_nodes``: node
    count of the bandwidth crossover (default the largest of ``nodes``).
    """
    from .runlog import RunLog

    if scaling not in SCALINGS:
        raise UsageError(f"unknown scaling {scaling!r}: weak or strong")
    nodes = list(DEFAULT_NODES if not nodes else nodes)
    if any(int(n) < 1 for n in nodes):
        raise UsageError(f"node counts must be >= 1, got {min(nodes)}")
    costs: list[StepCosts] = []
    pairs: list[tuple] = []
    for path in paths:
        with RunLog(path) as rl:
            costs.append(step_costs(rl))
            pairs.extend(measured_pairs(rl, with_ranks=True))
    bgd, hes = _by_algo(costs)
    if bgd is not None and hes is not None:
        for what in ("param_count", "batch", "ranks"):
            if getattr(bgd, what) != getattr(hes, what):
                raise UsageError(f"{bgd.label} and {hes.label} differ in {what} ({getattr(bgd, what)} vs "
                                 f"{getattr(hes, what)}): project runs of the same network, batch and ranks")
    notes = []
    fit = None
    fit_problem = None
    try:
        fit = fit_alpha_beta(pairs)
    except UsageError as e:
        fit_problem = str(e)
    explicit = networks is not None and len(networks) > 0
    resolved = []
    for spec in (networks if explicit else DEFAULT_NETWORKS):
        if str(spec).strip().lower() == "measured":
            if fit is None:
                if explicit:
                    raise UsageError(f"--network measured: {fit_problem} (the logs ran on 1 rank?)")
                continue  # the fit section says why
            resolved.append(("measured", fit.alpha, fit.beta, "this machine, fitted to the logs"))
        else:
            name, alpha, beta = parse_network(spec)
            resolved.append((name, alpha, beta, describe_network(name)))
    rows, crossovers = [], []
    at = int(at_nodes) if at_nodes else max(int(n) for n in nodes)
    for name, alpha, beta, _ in resolved:
        rows.extend(project(costs, (name, alpha, beta), nodes, scaling))
        if bgd is not None and hes is not None:
            crossovers.append(crossover(costs, (name, alpha, beta), scaling, at))
    if bgd is None or hes is None:
        notes.append("only one algorithm given: no comparison and no crossover (give a BGD and an H-ES log)")
    check = None
    if fit is not None:
        p0 = (bgd or hes).ranks
        t = _epoch_times(bgd, hes, fit.alpha, fit.beta, p0, scaling)
        check = {"ranks": p0,
                 "bgd_model_epoch_s": t.get("bgd_epoch_s"), "bgd_measured_epoch_s": bgd.median_epoch_s if bgd else None,
                 "hes_model_epoch_s": t.get("hes_epoch_s"), "hes_measured_epoch_s": hes.median_epoch_s if hes else None}
    return {
        "scaling": scaling,
        "inputs": [asdict(c) | {"schedule": c.schedule} for c in costs],
        "networks": [{"name": n, "alpha_s": a, "beta_s_per_byte": b, "description": d} for n, a, b, d in resolved],
        "nodes": [int(n) for n in nodes],
        "rows": rows,
        "crossovers": crossovers,
        "fit": fit.to_dict() if fit is not None else None,
        "fit_problem": fit_problem,
        "model_check": check,
        "notes": notes,
    }


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 99.5:
        return f"{x:,.0f}"
    x = float(f"{x:.{digits}g}")  # round to significant digits first: 0.99999 -> 1.0
    ax = abs(x)
    if ax >= 0.01:
        return f"{x:.{max(0, digits - 1 - math.floor(math.log10(ax)))}f}"
    return f"{x:.{digits}g}"


def _rate(bytes_per_s: float) -> str:
    gbit = bytes_per_s * 8 / 1e9
    return f"{_num(gbit)} Gbit/s ({_num(bytes_per_s / 1e6)} MB/s)"


def _gbit(beta: float) -> str:
    return "inf" if beta == 0 else _num(8 / beta / 1e9)


def _ms(s) -> str:
    return "-" if s is None else f"{_num(1e3 * s)} ms"


def format_markdown(report: dict, fit_table: bool = False) -> str:
    """The report as Markdown: inputs, networks, projection table, crossovers, the fit and its error."""
    out = []
    sc = report["scaling"]
    out.append(f"## Projected time per epoch ({sc} scaling, one rank per node)\n")
    for c in report["inputs"]:
        parts = [(f"`{c['label']}`: {c['schedule']}, {c['ranks']} ranks, {c['param_count']:,} parameters "
                  f"({4 * c['param_count']:,}-byte gradient), {_num(c['iterations_per_epoch'])} iterations/epoch")]
        for k, what in (("compute_grad_s", "gradient step"), ("compute_es_s", "ES step"),
                        ("compute_assisted_s", "assisted step")):
            if c[k] is not None:
                parts.append(f"compute {_ms(c[k])} per {what}")
        out.append("- " + "; ".join(parts))
    if sc == "weak":
        out.append("\nWeak scaling: each node computes as measured per rank; the data set and the global batch "
                   "grow with N, iterations per epoch stay as measured.")
    else:
        out.append("\nStrong scaling: compute x measured ranks / N (optimistic for ES steps, whose noise "
                   "generation does not shrink with the rows).")
    out.append("\n| network | alpha (us) | bandwidth (Gbit/s) | what |\n|---|---|---|---|")
    for n in report["networks"]:
        out.append(f"| {n['name']} | {_num(n['alpha_s'] * 1e6)} | {_gbit(n['beta_s_per_byte'])} | "
                   f"{n['description']} |")
    out.append("\n| network | nodes | BGD (s/epoch) | H-ES (s/epoch) | H-ES / BGD |\n|---|---|---|---|---|")
    for r in report["rows"]:
        out.append(f"| {r['network']} | {r['nodes']} | {_num(r['bgd_epoch_s'])} | {_num(r['hes_epoch_s'])} | "
                   f"{_num(r['hes_over_bgd'])} |")
    if report["crossovers"]:
        out.append("\n### Crossover: where H-ES beats BGD per epoch\n")
        lo, hi = CROSSOVER_SEARCH[0], CROSSOVER_SEARCH[-1]
        for c in report["crossovers"]:
            where = (f"from N = {c['nodes']:,} nodes" if c["nodes"] is not None
                     else f"at no node count {lo}..{hi:,}")
            bw = c["bandwidth_bytes_per_s"]
            if bw is None:
                at = f"on {c['at_nodes']:,} nodes at no bandwidth"
            elif math.isinf(bw):
                at = f"on {c['at_nodes']:,} nodes at any bandwidth"
            else:
                at = f"on {c['at_nodes']:,} nodes when the bandwidth is below {_rate(bw)}"
            out.append(f"- {c['network']}: {where}; {at}")
    fit = report["fit"]
    out.append("\n### This machine: alpha and beta fitted to the logs\n")
    if fit is None:
        out.append(f"No fit: {report['fit_problem']}; the network 'measured' is left out.")
    else:
        out.append(f"alpha = {_num(fit['alpha'] * 1e6)} us, beta = {_num(fit['beta'] * 1e9)} ns/byte "
                   f"({_gbit(fit['beta'])} Gbit/s), from {fit['calls']:,} calls in {len(fit['classes'])} "
                   f"op/size classes (communication only: duration minus waiting; median per class). "
                   f"Model error over the classes: median {100 * fit['median_rel_error']:.0f} %, "
                   f"max {100 * fit['max_rel_error']:.0f} %.")
        ch = report.get("model_check")
        if ch:
            parts = []
            for algo, name in (("bgd", "BGD"), ("hes", "H-ES")):
                if ch[f"{algo}_model_epoch_s"] is not None:
                    parts.append(f"{name} {_num(ch[f'{algo}_model_epoch_s'])} s/epoch modelled vs "
                                 f"{_num(ch[f'{algo}_measured_epoch_s'])} s measured")
            out.append(f"\nCheck at N = {ch['ranks']} (the runs' own rank count) on the fitted network: "
                       + "; ".join(parts) + " (measured includes waiting and the tool's own work).")
        if fit_table:
            out.append("\n| op | bytes | ranks | calls | measured median (us) | model (us) | error |\n"
                       "|---|---|---|---|---|---|---|")
            for c in fit["classes"]:
                out.append(f"| {c['op']} | {c['nbytes']:,} | {c['ranks']} | {c['calls']:,} | "
                           f"{_num(c['measured_s'] * 1e6)} | {_num(c['predicted_s'] * 1e6)} | "
                           f"{100 * c['rel_error']:+.0f} % |")
    for n in report["notes"]:
        out.append(f"\nNote: {n}.")
    return "\n".join(out)


CSV_COLUMNS = ("network", "alpha_s", "beta_s_per_byte", "nodes", "scaling", "bgd_iteration_s", "bgd_epoch_s",
               "bgd_comm_s", "hes_iteration_s", "hes_epoch_s", "hes_comm_s", "hes_over_bgd")


def format_csv(report: dict) -> str:
    """The projection rows as CSV (one row per network and node count; empty cells: no such run)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in report["rows"]:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in CSV_COLUMNS})
    return buf.getvalue()


def jsonable(x):
    """``x`` with NaN as None and infinities as the strings "inf"/"-inf" (strict JSON)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    return x
