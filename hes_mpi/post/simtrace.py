"""A run log's training epoch as SMPI time-independent traces, one per simulated rank (``hes-mpi simulate``).

What is replayed is what ran: :func:`epoch_steps` takes one epoch of a run log, and for every rank and
iteration the method's own MPI calls (phases ``grad`` and ``es``, in their order, with their payload bytes)
and the compute around them:

* the compute between two calls of a step is the measured gap between them;
* the rest of the step (``step_s`` less the span of its calls) is replayed as compute *before* its first
  call. That is where the forward and backward passes are; what follows the last call (the parameter
  update, rebuilding the ES winner) moves before it, which changes the time of the step by nothing and
  its waiting only when hosts differ;
* time outside the steps (consistency checks, recording) is not replayed: :class:`Epoch` keeps it as
  ``overhead_s`` and the report adds it to the replayed epoch as measured.

:func:`rank_trace` writes simulated rank ``j`` of ``N`` from measured rank ``j mod R``:

* ``weak`` scaling: each rank's compute as measured (its rows as measured; the global batch grows with N);
* ``strong`` scaling: the global batch as measured, so each rank's compute is multiplied by its rows at N
  over its rows as measured. **What does not shrink in reality and does here:** per-parameter work (the
  update, noise and candidate construction, compression), so strong-scaling compute at large N is a lower
  bound, most of all for ES steps;
* a host of speed ``s`` (``--hosts``) divides the rank's compute by ``s``.

Each collective is written as the algorithm the run's MPI family picks for its size at N
(:func:`hes_mpi.collectives.algorithm`), an allgather's message growing with N (every rank receives N
blocks). SMPI takes one algorithm per collective and replay: :func:`select` gives each collective the
algorithm of its calls with the most bytes; a small recursive-doubling allreduce (H-ES's 12-byte MINLOC)
that loses to the gradient's Rabenseifner or ring is replayed as a recursive-doubling barrier (the same
partners and rounds, without its payload); any other call replayed with another algorithm is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..collectives import algorithm as family_algorithm
from ..errors import UsageError
from ..schema import StepKind

#: Host speed of the written platforms: a trace's ``compute F`` is F / REFERENCE_FLOPS seconds on a 1x host.
REFERENCE_FLOPS = 1e9
#: SMPI's datatype code of MPI_BYTE in a replay action.
BYTE = 6
SCALINGS = ("weak", "strong")

#: The family's allreduce algorithms -> SMPI's.
_ALLREDUCE = {"recursive_doubling": "rdb", "rabenseifner": "rab_rdb", "ring": "lr",
              "segmented_ring": "ompi_ring_segmented", "basic_linear": "redbcast", "nonoverlapping": "redbcast"}
_ALLGATHER = {"recursive_doubling": "rdb", "ring": "ring", "bruck": "bruck", "neighbor": "ompi_neighborexchange",
              "two_proc": "pair", "linear": "GB"}
_BCAST = {"binomial": "binomial_tree", "scatter_allgather": "scatter_rdb_allgather",
          "scatter_allgather_ring": "scatter_LR_allgather", "split_binary_tree": "ompi_split_bintree",
          "pipeline": "ompi_pipeline", "chain": "ompi_pipeline", "binary_tree": "SMP_binary",
          "knomial": "binomial_tree", "basic_linear": "flattree"}
_BARRIER = {"dissemination": "ompi_bruck", "bruck": "ompi_bruck", "recursive_doubling": "ompi_recursivedoubling",
            "linear": "ompi_basic_linear", "double_ring": "ompi_doublering", "two_proc": "ompi_two_procs",
            "tree": "ompi_tree"}
#: A recursive-doubling allreduce of at most this many bytes (MINLOC's 12, a check's 16) in a replay whose
#: allreduce algorithm is another one is replayed as a recursive-doubling barrier: the same partners in the
#: same rounds, the payload left out (at most 64 bytes a round: 0.5 us at 1 Gbit/s).
STAND_IN_BYTES = 64
STAND_IN = ("barrier", "barrier", "ompi_recursivedoubling")


@dataclass
class Epoch:
    """One measured epoch, ready to be written as traces."""

    label: str
    algo: str
    epoch: int
    ranks: int
    family: str
    batch: int
    kinds: np.ndarray  # (iterations,) StepKind values
    # per iteration, per measured rank: [("compute", s) | ("call", op, bytes_sent, bytes_recv)], in order
    items: list = field(default_factory=list)
    rows: np.ndarray | None = None  # (iterations, ranks) rows of each rank
    measured_step_s: np.ndarray | None = None  # (iterations,) step time, mean over the ranks
    measured_epoch_s: float = math.nan
    overhead_s: float = 0.0  # measured epoch time outside the steps (not replayed)
    ops: tuple = ()  # ((op, bytes_sent), count) of the calls, for the report
    path: str = ""
    reference: bool = False  # BGD without compression: what ratio_to_bgd divides by
    costs: object = None  # hes_mpi.post.projection.StepCosts when the alpha-beta projection models the method
    method: str = ""  # the configuration's poster label (config.run_label), without the options that tell runs apart


def _median_epoch(epochs: dict) -> int:
    e, s = epochs["epoch"], epochs["epoch_s"]
    order = np.argsort(s, kind="stable")
    return int(e[order[(len(order) - 1) // 2]])


def epoch_steps(log, epoch: int | None = None, label: str = "") -> Epoch:
    """The iterations of ``epoch`` (default: the epoch of median training time) of an open :class:`RunLog`."""
    from ..collectives import family_of

    epochs, it = log.table("epochs"), log.table("iterations")
    if epochs["epoch"].size == 0 or it["iteration"].size == 0:
        raise UsageError(f"{log.path}: no finished epoch to replay")
    if epoch is None:
        epoch = _median_epoch(epochs)
    if epoch not in {int(e) for e in epochs["epoch"]}:
        raise UsageError(f"{log.path}: no epoch {epoch} (it has {int(epochs['epoch'][0])} to {int(epochs['epoch'][-1])})")
    env, cfg = log.environment, log.config
    sel = np.nonzero(it["epoch"] == epoch - 1)[0]  # /iterations counts epochs from 0, /epochs from 1
    if sel.size == 0:
        raise UsageError(f"{log.path}: epoch {epoch} has no iterations recorded")
    iters = it["iteration"][sel]
    ranks = int(env["ranks"])
    rec = log.records()
    ops, phases = log.names("op_names"), log.names("phase_names")
    algo_phases = [phases.index(p) for p in ("grad", "es")]
    keep = np.isin(rec["phase"], algo_phases) & np.isin(rec["iteration"], iters)
    step_s = it["step_s"][sel]
    items = []
    pos = {int(i): n for n, i in enumerate(iters)}
    by = [[[] for _ in range(ranks)] for _ in iters]
    idx = np.nonzero(keep)[0]
    idx = idx[np.lexsort((rec["t_enter"][idx], rec["rank"][idx], rec["iteration"][idx]))]
    for k in idx:
        by[pos[int(rec["iteration"][k])]][int(rec["rank"][k])].append(k)
    counts: dict = {}
    for n in range(len(iters)):
        per_rank = []
        for r in range(ranks):
            calls = by[n][r]
            seq = []
            if calls:
                span = rec["t_exit"][calls[-1]] - rec["t_enter"][calls[0]]
                seq.append(("compute", max(0.0, float(step_s[n, r] - span))))
                for j, k in enumerate(calls):
                    if j:
                        seq.append(("compute", max(0.0, float(rec["t_enter"][k] - rec["t_exit"][calls[j - 1]]))))
                    op = ops[int(rec["op"][k])]
                    seq.append(("call", op, int(rec["bytes_sent"][k]), int(rec["bytes_recv"][k])))
                    if r == 0:
                        key = (op, int(rec["bytes_sent"][k]))
                        counts[key] = counts.get(key, 0) + 1
            else:
                seq.append(("compute", float(step_s[n, r])))
            per_rank.append(seq)
        items.append(per_rank)
    row = int(np.nonzero(epochs["epoch"] == epoch)[0][0])
    measured_step = step_s.mean(axis=1)
    measured_epoch = float(epochs["epoch_s"][row])
    from ..config import run_label
    return Epoch(label=label or run_label(cfg), method=run_label(cfg), algo=str(cfg.get("algo", "")), epoch=int(epoch),
                 ranks=ranks,
                 family=family_of(env), batch=int(cfg.get("batch", 0)), kinds=it["kind"][sel].astype(int),
                 items=items, rows=it["local_n"][sel], measured_step_s=measured_step, measured_epoch_s=measured_epoch,
                 overhead_s=max(0.0, measured_epoch - float(step_s.sum(axis=0).max())),
                 ops=tuple(sorted(counts.items())))


def rows_at(batch: int, n: int, rank: int) -> int:
    """Rows of ``rank`` of ``n`` when a global batch of ``batch`` rows is split as evenly as it goes."""
    return batch // n + (1 if rank < batch % n else 0)


def call_action(op: str, sent: int, recv: int, n: int, family: str) -> tuple[str, str, str]:
    """One call at ``n`` ranks as an SMPI replay action: (action line without the rank, SMPI collective, the
    SMPI algorithm of the family's choice)."""
    if op in ("allreduce", "minloc"):
        return f"allreduce {sent} 0 {BYTE}", "allreduce", _ALLREDUCE[family_algorithm(op, sent, n, family)]
    if op == "allgather":
        return (f"allgather {sent} {sent} {BYTE} {BYTE}", "allgather",
                _ALLGATHER[family_algorithm(op, sent, n, family)])
    if op == "bcast":
        nbytes = max(sent, recv)
        return f"bcast {nbytes} 0 {BYTE}", "bcast", _BCAST[family_algorithm(op, nbytes, n, family)]
    if op == "barrier":
        return "barrier", "barrier", _BARRIER.get(family_algorithm(op, 0, n, family), "default")
    raise UsageError(f"cannot replay a {op} in a training step")


def _calls(ep: Epoch):
    for per_rank in ep.items:
        for item in per_rank[0]:
            if item[0] == "call":
                yield item[1:]


@dataclass
class Selection:
    """SMPI's one algorithm per collective for one replay, and how each call is written."""

    algorithms: dict  # SMPI collective -> algorithm
    actions: dict  # (op, sent, recv) -> action line
    calls: int = 0
    stand_ins: int = 0  # small recursive-doubling allreduces replayed as a recursive-doubling barrier
    other: int = 0  # calls replayed with another algorithm than their own

    def cfg(self) -> list[str]:
        return [f"--cfg=smpi/{c}:{a}" for c, a in sorted(self.algorithms.items())]


def select(epochs: list[Epoch], n: int) -> Selection:
    """Per collective, the algorithm of the calls with the most bytes; small recursive-doubling allreduces
    that lose to another allreduce algorithm become :data:`STAND_IN` barriers; the other losers are counted."""
    weight: dict = {}
    count: dict = {}
    acts: dict = {}
    for ep in epochs:
        for key in _calls(ep):
            if (key, ep.family) not in acts:
                acts[key, ep.family] = call_action(*key, n, ep.family)
            line, coll, alg = acts[key, ep.family]
            count[key, ep.family] = count.get((key, ep.family), 0) + 1
            weight.setdefault(coll, {}).setdefault(alg, 0)
            weight[coll][alg] += max(key[1], key[2]) + 1
    chosen = {c: max(w.items(), key=lambda kv: kv[1])[0] for c, w in weight.items()}
    sel = Selection(algorithms=chosen, actions={})
    for (key, family), (line, coll, alg) in acts.items():
        c = count[key, family]
        sel.calls += c
        if coll == "allreduce" and alg == "rdb" and chosen[coll] != alg and key[1] <= STAND_IN_BYTES:
            line, coll, alg = STAND_IN
            sel.stand_ins += c
            if chosen.setdefault(coll, alg) != alg:
                sel.other += c
        elif chosen[coll] != alg:
            sel.other += c
        sel.actions[key, family] = line
    return sel


def speeds_for(n: int, spec: str | None) -> list[float]:
    """Host speeds of ``n`` nodes from ``--hosts``: ``FRACTION:NAME=Sx[,FRACTION:NAME=Sx ...]`` (that fraction
    of the nodes, spread evenly, at S times this host's speed; the rest 1x), or ``list:S1,S2,...`` (per node,
    repeated over the nodes)."""
    if not spec:
        return [1.0] * n
    try:
        if spec.startswith("list:"):
            vals = [float(v.rstrip("x")) for v in spec[5:].split(",") if v]
            if not vals or min(vals) <= 0:
                raise ValueError
            return [vals[i % len(vals)] for i in range(n)]
        speeds = [1.0] * n
        free = list(range(n))
        taken = 0.0
        for term in spec.split(","):
            frac_s, rest = term.split(":", 1)
            _, sp = rest.split("=", 1)
            frac, speed = float(frac_s), float(sp.rstrip("x"))
            taken += frac
            if not 0 < frac <= 1 or speed <= 0 or taken > 1 + 1e-9:
                raise ValueError
            count = min(len(free), round(frac * n))
            picked = [free[int((k + 0.5) * len(free) / count)] for k in range(count)] if count else []
            for i in picked:  # evenly spaced over the nodes still at 1x
                speeds[i] = speed
            free = [i for i in free if i not in set(picked)]
        return speeds
    except ValueError:
        raise UsageError(f"--hosts {spec!r}: expected FRACTION:NAME=SPEEDx[,...] with fractions summing to at "
                         "most 1 (e.g. 0.25:gpu=20x) or list:S1,S2,... (speeds > 0, per node)") from None


def rank_trace(ep: Epoch, j: int, n: int, scaling: str, speed: float, sel: Selection) -> tuple[list[str], list[int]]:
    """The trace lines of simulated rank ``j`` of ``n`` and, for each line, the index of its iteration
    (-1: init and finalize)."""
    if scaling not in SCALINGS:
        raise UsageError(f"--scaling must be one of {', '.join(SCALINGS)}")
    src = j % ep.ranks
    lines, owner = [f"{j} init"], [-1]
    for i, per_rank in enumerate(ep.items):
        factor = 1.0 / speed
        if scaling == "strong" and ep.rows is not None and int(ep.rows[i, src]) > 0:
            factor *= rows_at(ep.batch, n, j) / int(ep.rows[i, src])
        for item in per_rank[src]:
            if item[0] == "compute":
                flops = item[1] * factor * REFERENCE_FLOPS
                if flops >= 1:
                    lines.append(f"{j} compute {flops:.0f}")
                    owner.append(i)
            else:
                lines.append(f"{j} {sel.actions[item[1:], ep.family]}")
                owner.append(i)
    lines.append(f"{j} finalize")
    owner.append(-1)
    return lines, owner


def kind_names() -> dict[int, str]:
    return {k.value: k.label for k in StepKind}
