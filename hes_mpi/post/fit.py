"""The latency ``alpha`` and inverse bandwidth ``beta`` of this machine's network, fitted to the collectives a
run log timed (communication only: each call's duration minus its waiting, by the time split's rule)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..collectives import coefficients, family_of
from ..errors import UsageError
from ..telemetry import waits

#: The operations :func:`measured_pairs` times (collectives with a model).
FIT_OPS = ("allreduce", "minloc", "allgather", "bcast")


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
    rec = runlog.records()
    if not rec or rec["seq"].size == 0:
        return []
    op_names = runlog.names("op_names")
    phase_names = runlog.names("phase_names")
    ranks = int(runlog.environment.get("ranks", 1))
    keep = rec["seq"] >= 0
    keep &= np.isin(rec["op"], [op_names.index(o) for o in FIT_OPS if o in op_names])
    if phases is not None:
        keep &= np.isin(rec["phase"], [phase_names.index(p) for p in phases if p in phase_names])
    if not np.any(keep):
        return []
    rk = rec["rank"][keep].astype(np.int64)
    offsets = np.zeros(max(ranks, int(rk.max()) + 1))
    off = runlog.clock_offsets()
    if off is not None:
        off = off.ravel()
        offsets[: off.size] = off[: offsets.size]
    t_enter = rec["t_enter"][keep]
    duration = rec["t_exit"][keep] - t_enter
    wait = waits(rec["seq"][keep], t_enter - offsets[rk], duration)
    seconds = duration - wait
    ops = np.asarray(op_names, dtype=object)[rec["op"][keep]]
    sent = rec["bytes_sent"][keep]
    nbytes = np.where(ops == "bcast", np.maximum(sent, rec["bytes_recv"][keep]), sent)
    if with_ranks:
        return [(str(o), int(n), float(s), ranks) for o, n, s in zip(ops, nbytes, seconds)]
    return [(str(o), int(n), float(s)) for o, n, s in zip(ops, nbytes, seconds)]



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


def fit_alpha_beta(records_or_pairs, p: int | None = None, family: str | None = None) -> Fit:
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
    ``family`` is the MPI's algorithm family the models follow (default: the run log's, or ``"mpich"``).
    """
    if hasattr(records_or_pairs, "f") and hasattr(records_or_pairs, "environment"):
        if p is None:
            p = int(records_or_pairs.environment.get("ranks", 1))
        if family is None:
            family = family_of(records_or_pairs.environment)
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
        a, b = coefficients(op, n, q, family=family or "mpich")
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


