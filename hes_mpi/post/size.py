"""The size study (``analysis/size.py``, ``jobs/size.params``): what H-ES saves against BGD as the
network grows, one row per network and method.

Runs are grouped by configuration (:func:`hes_mpi.post.tables.group_runs`); each network (its layer list,
activation and initialisation) has its own reference, the BGD run of that network, and every other
configuration of the network is measured against it: Runtime %, Memory % and Net BW % as in the poster's
savings table (:mod:`hes_mpi.post.tables`), with the network's parameter count and the dev accuracy
beside them.
"""

from __future__ import annotations

import math

from ..config import run_label
from .stats import mean_ci
from .tables import Run, cost_metrics, group_runs
from .target import cell as target_cell
from .target import default_target, group_time_to_target


def network_of(run: Run) -> tuple[str, str, str]:
    """(layers, activation, init) of a run, e.g. ('784-1024-1024-10', 'relu', 'he')."""
    s, c = run.summary, run.config
    layers = s.get("layers") or f"?-{c['hidden']}-?"
    return layers, c.get("activation", "sigmoid"), c.get("init", "normal")


def size_rows(runs: list[Run], target: float | None = None) -> list[dict]:
    """One row per configuration that has a BGD run of its network to compare with (BGD's own row says
    100%), ordered by parameter count; the time to ``target`` (default: that network's BGD final dev accuracy
    minus 0.5 points)."""
    by_net: dict[tuple, list[list[Run]]] = {}
    for g in group_runs(runs):
        by_net.setdefault(network_of(g[0]), []).append(g)
    rows = []
    for net, groups in by_net.items():
        ref = next((g for g in groups if g[0].config["algo"] == "bgd" and g[0].config.get("compress", "none")
                    == "none"), None)
        if ref is None:
            continue
        rw, rm, rb = cost_metrics(ref)
        goal = default_target([ref], target)
        for g in groups:
            w, m, b = cost_metrics(g)
            dev, lo, hi, n = mean_ci([r.summary["dev_acc"] for r in g])
            rows.append({"layers": net[0], "activation": net[1], "init": net[2], "depth": net[0].count("-") - 1,
                         "params": int(g[0].summary["param_count"]), "run": run_label(g[0].config),
                         "epochs": g[0].summary["epochs"], "seeds": n, "dev_acc": dev,
                         "dev_acc_ci_half": (hi - lo) / 2 if n > 1 else math.nan, "train_s": w,
                         "runtime_pct": 100 * w / rw, **group_time_to_target(g, goal), "step_bytes_mean": m,
                         "memory_pct": 100 * m / rm,
                         "bytes_per_iteration": b, "net_bw_pct": 100 * b / rb})
    return sorted(rows, key=lambda r: (r["params"], r["layers"], r["run"] != "Reference (BGD)", r["run"]))


def _to_target(r: dict) -> str:
    return f"{target_cell(r, r['seeds'])} (to {100 * r['target']:.2f}%)" if math.isfinite(r["target"]) else ""


def markdown_size(rows: list[dict]) -> str:
    out = [("| network | parameters | run | epochs | seeds (n) | dev | training time (s) | Runtime | time to target (s) "
           "| Memory | Net BW |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dev = f"{100 * r['dev_acc']:.2f}%" + (f" ± {100 * r['dev_acc_ci_half']:.2f}"
                                               if math.isfinite(r["dev_acc_ci_half"]) else "")
        out.append(f"| {r['layers']} {r['activation']} | {r['params']:,} | {r['run']} | {r['epochs']} | {r['seeds']} "
                   f"| {dev} | {r['train_s']:.1f} | {r['runtime_pct']:.1f}% | {_to_target(r)} | {r['memory_pct']:.1f}% "
                   f"| {r['net_bw_pct']:.1f}% |")
    return "\n".join(out)
