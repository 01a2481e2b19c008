"""``hes-mpi simulate``: run logs replayed on simulated clusters of N nodes with SimGrid's SMPI.

For each run log, platform and node count: :mod:`hes_mpi.post.simtrace` writes one trace per simulated rank
from one measured epoch, :mod:`hes_mpi.post.smpi` replays them, and :func:`simulate_one` turns the replay's
per-action clocks into the report's figures:

* a rank's step ends when its last action of that iteration ends; its duration is the difference of two
  ends; ``grad_s``, ``es_s``, ... sum the steps of each kind, mean over the ranks (as the measured
  ``step_s``: a rank that leaves a collective early waits in its next step, which the mean keeps in one
  place); ``replayed_s`` is the slowest rank's end of the epoch;
* ``epoch_s`` = ``replayed_s`` + the measured time outside the steps (``overhead_s``, not replayed);
* per rank and collective, the waiting is the time from the rank's arrival to the last rank's (the same rule
  as the measured split, :mod:`hes_mpi.telemetry`), the rest of the call is communication; ``compute_s``,
  ``comm_s`` and ``wait_s`` are their means over the ranks, per epoch;
* ``measured_<kind>_s``: the same sums as measured (slowest rank per iteration); at the run's own rank count,
  ``error_<kind>`` and ``error_epoch`` are the replay's relative errors against them (the validation);
* ``ratio_to_bgd``: ``epoch_s`` over that of the BGD run (no compression) among the inputs, on the same
  platform, node count, scaling and hosts.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import sys
import tempfile
import time

import numpy as np

from ..errors import RunError, UsageError
from . import projection, simtrace, smpi

KIND_LABELS = simtrace.kind_names()


def load_epochs(paths, epoch: int | None = None) -> list[simtrace.Epoch]:
    from ..runlog import RunLog
    from .tables import label_runs, load_runs

    runs = label_runs(load_runs(paths))
    out = []
    for run in runs:
        plain = run.config.get("compress", "none") in ("none", "")
        with RunLog(run.path) as log:
            ep = simtrace.epoch_steps(log, epoch, run.label)
            if plain and run.config.get("algo") in ("bgd", "hes"):
                ep.costs = projection.step_costs(log)
        ep.path = run.path
        ep.reference = run.config.get("algo") == "bgd" and plain
        out.append(ep)
    return out


def _iteration_ends(ends: np.ndarray, owners: list[np.ndarray], n_iter: int) -> np.ndarray:
    """(ranks, iterations): when each rank's last action of each iteration ends."""
    out = np.zeros((len(ends), n_iter))
    for j, (end, own) in enumerate(zip(ends, owners)):
        m = own >= 0
        np.maximum.at(out[j], own[m], end[m])
    return np.maximum.accumulate(out, axis=1)


def simulate_one(ep: simtrace.Epoch, spec: str, n: int, scaling: str = "weak", hosts: str | None = None,
                 factors_one: bool = False, workdir: str | None = None) -> dict:
    """One replay of ``ep`` on ``n`` nodes of platform ``spec``: the report's row."""
    t0 = time.perf_counter()
    xml, host_names, described = smpi.platform(spec, n)
    speeds = simtrace.speeds_for(n, hosts)
    sel = simtrace.select([ep], n)
    traces, owners, is_coll = [], [], []
    for j in range(n):
        lines, own = simtrace.rank_trace(ep, j, n, scaling, speeds[j], sel)
        traces.append(lines)
        body = lines[1:]  # replay logs every action after init
        owners.append(np.array(own[1:], dtype=np.int64))
        is_coll.append(np.array([ln.split()[1] not in ("compute", "finalize") for ln in body]))
    cfg = sel.cfg() + (list(smpi.FACTORS_ONE) if factors_one else [])
    tmp = workdir or tempfile.mkdtemp(prefix="hes-mpi-simulate-")
    per_rank = smpi.replay(tmp, traces, xml, host_names, cfg)  # a failed replay keeps its folder to look at
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    ends, durs, own_c, coll_c = [], [], [], []
    for j in range(n):
        acts = per_rank[j]
        k = min(len(acts), len(owners[j]))
        if k < int((owners[j] >= 0).sum()):
            raise RunError(f"replay of rank {j} logged {len(acts)} actions, its trace has {len(owners[j])}")
        ends.append(np.array([a[0] for a in acts[:k]]))
        durs.append(np.array([a[1] for a in acts[:k]]))
        own_c.append(owners[j][:k])
        coll_c.append(is_coll[j][:k])
    n_iter = len(ep.items)
    per_rank_end = _iteration_ends(ends, own_c, n_iter)
    # per step kind: each rank's own step durations, the mean over ranks (as measured: step_s)
    step = np.diff(np.concatenate((np.zeros((n, 1)), per_rank_end), axis=1), axis=1).mean(axis=0)
    row = {"label": ep.label, "method": ep.method, "algo": ep.algo, "run": ep.path, "reference": ep.reference, "epoch": ep.epoch,
           "measured_ranks": ep.ranks, "family": ep.family, "platform": spec, "platform_described": described,
           "nodes": n, "scaling": scaling, "hosts": hosts or "", "iterations": n_iter}
    for kind in sorted({int(k) for k in ep.kinds}):
        row[f"{KIND_LABELS[kind]}_s"] = float(step[ep.kinds == kind].sum())
    row["replayed_s"] = float(per_rank_end[:, -1].max()) if n_iter else 0.0  # the slowest rank
    row["overhead_s"] = float(ep.overhead_s)
    row["epoch_s"] = row["replayed_s"] + row["overhead_s"]
    # the time split: compute, communication and waiting per rank (all ranks have the same collectives)
    comp = np.array([d[~c].sum() for d, c in zip(durs, coll_c)])
    c_end = np.array([e[c] for e, c in zip(ends, coll_c)]) if n else np.zeros((0, 0))
    c_dur = np.array([d[c] for d, c in zip(durs, coll_c)]) if n else np.zeros((0, 0))
    if c_end.ndim == 2 and c_end.shape[1]:
        start = c_end - c_dur
        wait = start.max(axis=0, keepdims=True) - start
        row["wait_s"] = float(wait.sum(axis=1).mean())
        row["comm_s"] = float((c_dur - wait).sum(axis=1).mean())
    else:
        row["wait_s"] = row["comm_s"] = 0.0
    row["compute_s"] = float(comp.mean())
    row["measured_epoch_s"] = ep.measured_epoch_s
    for kind in sorted({int(k) for k in ep.kinds}):
        name = KIND_LABELS[kind]
        row[f"measured_{name}_s"] = float(ep.measured_step_s[ep.kinds == kind].sum())  # mean over ranks
        if n == ep.ranks and row[f"measured_{name}_s"] > 0:  # the run's own cluster size: how far the replay is from what was measured
            row[f"error_{name}"] = row[f"{name}_s"] / row[f"measured_{name}_s"] - 1
    if n == ep.ranks and ep.measured_epoch_s > 0:
        row["error_epoch"] = row["epoch_s"] / ep.measured_epoch_s - 1
    row["algorithms"] = " ".join(f"{c}:{a}" for c, a in sorted(sel.algorithms.items()))
    row["stand_in_calls"], row["other_algorithm_calls"], row["calls"] = sel.stand_ins, sel.other, sel.calls
    row["speeds"] = _speeds_text(speeds)
    row.update(projected(ep, spec, n, scaling, hosts, row))
    row["replay_wall_s"] = time.perf_counter() - t0
    return row


def projected(ep: simtrace.Epoch, spec: str, n: int, scaling: str, hosts: str | None, row: dict) -> dict:
    """The alpha-beta projection (:mod:`hes_mpi.post.projection`) of the same run on the same star, for its
    error beside the replay's: ``projection_epoch_s`` (its modelled steps plus the same time outside them),
    ``projection_error`` against the replay's ``epoch_s`` and, at the run's own rank count,
    ``projection_error_measured`` against the measured epoch. Empty for methods the projection does not model
    (it knows BGD and H-ES without compression), platforms other than a star and heterogeneous hosts."""
    ab = smpi.star_alpha_beta(spec)
    if ep.costs is None or ab is None or (hosts and row["speeds"]):
        return {}
    out = {"projection_epoch_s": projection.epoch_time(ep.costs, ab[0], ab[1], n, scaling) + row["overhead_s"]}
    out["projection_error"] = out["projection_epoch_s"] / row["epoch_s"] - 1 if row["epoch_s"] > 0 else math.nan
    if n == ep.ranks and ep.measured_epoch_s > 0:
        out["projection_error_measured"] = out["projection_epoch_s"] / ep.measured_epoch_s - 1
    return out


def _speeds_text(speeds: list[float]) -> str:
    vals = sorted(set(speeds))
    if vals == [1.0]:
        return ""
    return ", ".join(f"{speeds.count(v)} x {v:g}x" for v in vals)


def simulate(paths, nodes, platforms, scaling: str = "weak", hosts: str | None = None, epoch: int | None = None,
             factors_one: bool = False, progress=None) -> list[dict]:
    """Every run log x platform x node count; ``progress(text)`` is told of each replay."""
    if not nodes or min(nodes) < 1:
        raise UsageError("--nodes: give node counts of at least 1")
    epochs = load_epochs(paths, epoch)
    for spec in platforms:  # bad platforms and hosts fail before any replay
        smpi.platform(spec, max(nodes))
    simtrace.speeds_for(max(nodes), hosts)
    if scaling == "strong":
        for ep in epochs:
            if max(nodes) > ep.batch:
                raise UsageError(f"--scaling strong: {max(nodes)} nodes exceed the global batch of {ep.batch} rows "
                                 f"({ep.label})")
    smpi.smpirun()
    rows = []
    total = len(epochs) * len(platforms) * len(nodes)
    for ep in epochs:
        for spec in platforms:
            for n in nodes:
                row = simulate_one(ep, spec, n, scaling, hosts, factors_one)
                rows.append(row)
                if progress:
                    progress(f"[{len(rows)}/{total}] {ep.label} on {spec} at {n} nodes: epoch "
                             f"{row['epoch_s']:.4g} s (replayed in {row['replay_wall_s']:.1f} s)")
    refs = {(r["platform"], r["nodes"], r["scaling"], r["hosts"]): r["epoch_s"] for r in rows if r["reference"]}
    for r in rows:
        ref = refs.get((r["platform"], r["nodes"], r["scaling"], r["hosts"]))
        r["ratio_to_bgd"] = r["epoch_s"] / ref if ref else math.nan
    return rows


def against_projection(paths, report: dict, progress=None) -> None:
    """Each row of a projection report (:func:`hes_mpi.post.projection.build_report`) beside SimGrid's replay
    of the same run logs on a star of the row's alpha and beta, SMPI's factors 1 (a pure latency-bandwidth network, the model's own assumption):
    ``simgrid_<algo>_epoch_s`` (the replayed steps of one epoch, the part the model models) and
    ``<algo>_error_vs_simgrid`` (model / replay - 1), in place. What differs is what the model leaves out:
    the run's own calls and their order, its compute per step as recorded (not the median of the slowest
    rank), the MPI's algorithm per size, and waiting. Sets ``report["simgrid"]``."""
    rows, scaling = report["rows"], report["scaling"]
    specs = {(r["alpha_s"], r["beta_s_per_byte"]): smpi.star_spec(r["alpha_s"], r["beta_s_per_byte"]) for r in rows}
    nodes = sorted({int(r["nodes"]) for r in rows})
    sim = simulate(paths, nodes, list(dict.fromkeys(specs.values())), scaling=scaling, factors_one=True,
                   progress=progress)
    got = {(x["platform"], x["nodes"], x["algo"]): x["replayed_s"] for x in sim}
    for r in rows:
        spec = specs[(r["alpha_s"], r["beta_s_per_byte"])]
        for algo in ("bgd", "hes"):
            t = got.get((spec, int(r["nodes"]), algo))
            r[f"simgrid_{algo}_epoch_s"] = t
            m = r[f"{algo}_epoch_s"]
            r[f"{algo}_error_vs_simgrid"] = m / t - 1 if t and m is not None else None
    report["simgrid"] = True


def _f(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}g}"


def kind_columns(rows) -> list[str]:
    return [f"{KIND_LABELS[k]}_s" for k in sorted(KIND_LABELS) if any(f"{KIND_LABELS[k]}_s" in r for r in rows)]


def format_markdown(rows: list[dict]) -> str:
    kinds = kind_columns(rows)
    head = ["method", "platform", "nodes", "epoch s", "x BGD", *(k[:-2] + " s" for k in kinds),
            "compute s", "comm s", "wait s", "not replayed s", "measured epoch s (ranks)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], r["platform"] + (f" [{r['speeds']}]" if r["speeds"] else ""), str(r["nodes"]),
                 _f(r["epoch_s"]), _f(r["ratio_to_bgd"], 3), *(_f(r.get(k)) for k in kinds), _f(r["compute_s"]),
                 _f(r["comm_s"]), _f(r["wait_s"]), _f(r["overhead_s"]),
                 f"{_f(r['measured_epoch_s'])} ({r['measured_ranks']})"]
        lines.append("| " + " | ".join(cells) + " |")
    scal = sorted({r["scaling"] for r in rows})
    notes = [(f"Scaling: {', '.join(scal)}. Seconds per epoch: the epoch on the slowest rank; the step kinds, "
              "compute, comm and wait as means over the ranks.")]
    if "strong" in scal:
        notes.append("Strong scaling shrinks all compute with the rows, per-parameter work (update, noise, "
                     "compression) included: a lower bound on compute at large N.")
    other = sum(r["other_algorithm_calls"] for r in rows)
    if other:
        notes.append(f"{other} calls were replayed with another algorithm than their MPI's (one algorithm per "
                     "collective and replay); see the csv's algorithms column.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def format_csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def plot(rows: list[dict], path) -> str:
    """Epoch time against nodes, one line per method and platform (log-log)."""
    from .figures import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict = {}
    for r in rows:
        series.setdefault((r["label"], r["platform"], r["speeds"]), []).append((r["nodes"], r["epoch_s"]))
    for (label, spec, speeds), pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=f"{label} - {spec}" + (f" [{speeds}]" if speeds else ""))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("simulated epoch time (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _save(plt, fig, path)
    return str(path)


def stderr_progress(text: str) -> None:
    print(f"simulate: {text}", file=sys.stderr, flush=True)


def validation_markdown(rows: list[dict]) -> str:
    """The replay against what was measured, for rows at their run's own rank count: seconds per epoch of
    each step kind and of the epoch, measured and replayed, and the relative error; where the alpha-beta
    projection models the method (BGD, H-ES) and the platform is a star, its epoch and error beside them."""
    kinds = [k[:-2] for k in kind_columns(rows)]
    proj = any("projection_error_measured" in r for r in rows)
    head = ["nodes", "link", "method", *(f"{k}: measured / replayed s (error)" for k in kinds),
            "epoch: measured / replayed s (error)", *(["alpha-beta projection s (error)"] if proj else [])]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["nodes"] != r["measured_ranks"]:
            continue
        cells = [str(r["nodes"]), r["platform"], r["label"]]
        for k in kinds:
            cells.append(f"{_f(r[f'measured_{k}_s'])} / {_f(r[f'{k}_s'])} ({100 * r[f'error_{k}']:+.1f}%)"
                         if f"error_{k}" in r else "")
        cells.append(f"{_f(r['measured_epoch_s'])} / {_f(r['epoch_s'])} ({100 * r['error_epoch']:+.1f}%)")
        if proj:
            cells.append(f"{_f(r['projection_epoch_s'])} ({100 * r['projection_error_measured']:+.1f}%)"
                         if "projection_error_measured" in r else "")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
