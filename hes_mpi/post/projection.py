"""Projection of BGD and H-ES epoch times from this machine's run logs to N nodes of a given network.

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

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from ..collectives import MINLOC_BYTES, PRESETS, collective_time, describe_network, family_of, network_of, parse_network
from ..errors import UsageError
from ..schema import StepKind
from .fit import fit_alpha_beta, measured_pairs

SCALINGS = ("weak", "strong")
DEFAULT_NETWORKS = ("measured", *PRESETS)
#: Node counts of a default report.
DEFAULT_NODES = tuple(2**k for k in range(1, 11))
#: Node counts :func:`crossover` searches.
CROSSOVER_SEARCH = tuple(2**k for k in range(1, 21))



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
    ran_on: str = ""  # the emulated cluster or network the run was measured on ("": this host as it is)
    family: str = "mpich"  # the MPI's algorithm family (hes_mpi.collectives.FAMILIES) the collectives follow

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
        batch=batch, n_train=n_train, iterations_per_epoch=per_epoch, compute_grad_s=med(StepKind.GRAD),
        compute_es_s=med(StepKind.ES), compute_assisted_s=med(StepKind.ASSISTED),
        median_epoch_s=float(np.median(epoch_s)) if np.size(epoch_s) else None,
        ran_on=str(env.get("emulated_cluster") or env.get("emulated_network") or ""), family=family_of(env),
    )



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
    t_ar = collective_time("allreduce", grad_bytes, n, alpha, beta, ref.family)
    t_ml = collective_time("minloc", MINLOC_BYTES, n, alpha, beta, ref.family)
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


def epoch_time(c: StepCosts, alpha: float, beta: float, n: int, scaling: str = "weak") -> float:
    """The modelled steps of one epoch of run ``c`` (BGD or H-ES) on ``n`` nodes of an alpha-beta network."""
    t = _epoch_times(c if c.algo == "bgd" else None, c if c.algo == "hes" else None, alpha, beta, n, scaling)
    return float(t[f"{c.algo}_epoch_s"])


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
    name, alpha, beta = network_of(network)
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
    name, alpha, beta = network_of(network)
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
    count of the bandwidth crossover (default the largest of ``nodes``). Its rows beside SimGrid's replay of
    the same logs: :func:`hes_mpi.post.simulate.against_projection`.
    """
    from ..runlog import RunLog

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
        for what in ("param_count", "batch", "ranks", "family"):
            if getattr(bgd, what) != getattr(hes, what):
                raise UsageError(f"{bgd.label} and {hes.label} differ in {what} ({getattr(bgd, what)} vs "
                                 f"{getattr(hes, what)}): project runs of the same network, batch and ranks")
    notes = []
    fit = None
    fit_problem = None
    try:
        fit = fit_alpha_beta(pairs, family=costs[0].family)
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
        "simgrid": False,
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

