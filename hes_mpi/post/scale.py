"""The accuracy-at-scale study (``jobs/scale.params``, ``analysis/scale.py``): at each rank count N, the
final dev accuracy of BGD, H-ES and its control (gradient reuse) over their seeds, and H-ES minus reuse
with Welch's 95% interval. With the global batch fixed, an H-ES step searches K x N candidates (K per rank),
so this asks whether the search starts to pay as N grows."""

from __future__ import annotations

import math

import numpy as np

from .stats import mean_ci, welch
from .tables import Run

METHODS = ("bgd", "hes", "reuse")


def _pct(m, lo, hi) -> str:
    if not math.isfinite(m):
        return ""
    half = (hi - lo) / 2 if math.isfinite(lo) else math.nan
    return f"{100 * m:.2f}%" + (f" ± {100 * half:.2f}" if math.isfinite(half) else "")


def scale_rows(runs: list[Run]) -> list[dict]:
    """One row per rank count: each method's mean final dev accuracy with its 95% CI, and H-ES - reuse."""
    by_n: dict[int, dict[str, list[Run]]] = {}
    for r in runs:
        algo = r.config["algo"]
        if algo in METHODS and not r.config.get("assisted") and r.config.get("compress", "none") in ("none", ""):
            by_n.setdefault(int(r.summary["ranks"]), {}).setdefault(algo, []).append(r)
    rows = []
    for n in sorted(by_n):
        g = by_n[n]
        acc = {a: [r.summary["dev_acc"] for r in g.get(a, [])] for a in METHODS}
        k = int(g["hes"][0].config["K"]) if g.get("hes") else 0
        row = {"ranks": n, "candidates": k * n}
        for a in METHODS:
            m, lo, hi, cnt = mean_ci(acc[a])
            row.update({f"{a}_mean": m, f"{a}_low": lo, f"{a}_high": hi, f"{a}_n": cnt})
        w = welch(acc["hes"], acc["reuse"])
        row.update({"diff": w["diff"], "diff_low": w["low"], "diff_high": w["high"], "p": w["p"]})
        rows.append(row)
    return rows


def markdown_scale(rows: list[dict]) -> str:
    out = ["| ranks N | candidates K x N | BGD | H-ES, r = 2 | reuse, r = 2 | H-ES - reuse (points) | 95% CI | Welch p |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = (f"[{100 * r['diff_low']:+.2f}, {100 * r['diff_high']:+.2f}]" if math.isfinite(r["diff_low"])
              else "n/a")
        p = f"{r['p']:.3g}" if math.isfinite(r["p"]) else "n/a"
        diff = f"{100 * r['diff']:+.2f}" if math.isfinite(r["diff"]) else ""
        cells = [str(r["ranks"]), str(r["candidates"]),
                 *(_pct(r[f"{a}_mean"], r[f"{a}_low"], r[f"{a}_high"]) + f" (n {r[f'{a}_n']})" for a in METHODS),
                 diff, ci, p]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_scale(rows: list[dict], path) -> str:
    """H-ES - reuse with its 95% CI against N."""
    from .figures import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["ranks"] for r in rows]
    d = [100 * r["diff"] for r in rows]
    err = [[100 * (r["diff"] - r["diff_low"]) for r in rows], [100 * (r["diff_high"] - r["diff"]) for r in rows]]
    ax.errorbar(ns, d, yerr=err, marker="o", capsize=4)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [f"{n}\n({r['candidates']})" for n, r in zip(ns, rows)])
    ax.set_xlabel("ranks N (candidates K x N)")
    ax.set_ylabel("H-ES - reuse, dev accuracy (points)")
    _save(plt, fig, path)
    return str(path)


def target_of(runs: list[Run], target: float | None = None) -> float:
    """The dev-accuracy target: ``target`` when given, else the BGD runs' mean final dev accuracy (at the
    smallest rank count) minus 0.5 points."""
    if target is not None:
        return target
    bgd = [r for r in runs if r.config["algo"] == "bgd"]
    if not bgd:
        raise ValueError("no BGD run to set the target from: give --target")
    n0 = min(int(r.summary["ranks"]) for r in bgd)
    return float(np.mean([r.summary["dev_acc"] for r in bgd if int(r.summary["ranks"]) == n0])) - 0.005


def epochs_to_target(runs: list[Run], target: float) -> float:
    """The first epoch (1-based) whose dev accuracy, mean over the runs (seeds), reaches ``target``; NaN
    when none does."""
    curves = [np.asarray(r.epochs["dev_acc"], dtype=float) for r in runs if len(r.epochs.get("dev_acc", ()))]
    if not curves:
        return math.nan
    n = min(len(c) for c in curves)
    mean = np.mean([c[:n] for c in curves], axis=0)
    hit = np.nonzero(mean >= target)[0]
    return float(hit[0] + 1) if hit.size else math.nan


def time_to_target_rows(runs: list[Run], simulated: list[dict], target: float) -> list[dict]:
    """Per simulated method, platform and N: the epochs to ``target`` measured at the nearest rank count
    at or below N (``assumed`` when that is not N itself) times the simulated epoch time."""
    by: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        by.setdefault((r.config["algo"], int(r.summary["ranks"])), []).append(r)
    out = []
    for s in simulated:
        ns = sorted(n for a, n in by if a == s["algo"] and n <= s["nodes"])
        if not ns:
            continue
        n_acc = ns[-1]
        e = epochs_to_target(by[s["algo"], n_acc], target)
        out.append({"label": s["label"], "algo": s["algo"], "platform": s["platform"], "nodes": s["nodes"],
                    "scaling": s["scaling"], "epoch_s": s["epoch_s"], "accuracy_ranks": n_acc,
                    "assumed": n_acc != s["nodes"], "epochs_to_target": e, "target": target,
                    "time_to_target_s": e * s["epoch_s"] if math.isfinite(e) else math.nan})
    return out


def markdown_time_to_target(rows: list[dict]) -> str:
    if not rows:
        return ""
    t = rows[0]["target"]
    methods = list(dict.fromkeys(r["label"] for r in rows))
    keys = list(dict.fromkeys((r["platform"], r["nodes"]) for r in rows))
    cell = {(r["label"], r["platform"], r["nodes"]): r for r in rows}
    out = [(f"Time to {100 * t:.2f}% dev accuracy (s; epochs to it in brackets; * accuracy measured at fewer "
            "ranks and assumed at this N; - never reached)"), "",
           "| platform | nodes | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for spec, n in keys:
        cells = []
        for m in methods:
            r = cell.get((m, spec, n))
            if r is None:
                cells.append("")
            elif not math.isfinite(r["time_to_target_s"]):
                cells.append("-")
            else:
                cells.append(f"{r['time_to_target_s']:.3g} ({r['epochs_to_target']:.0f}{'*' if r['assumed'] else ''})")
        out.append(f"| {spec} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)
