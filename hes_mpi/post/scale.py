"""The accuracy-at-scale study (``jobs/scale.params``, ``analysis/scale.py``): at each rank count N, the
final dev accuracy of BGD, H-ES and its control (gradient reuse) over their seeds, and H-ES minus reuse
with Welch's 95% interval. With the global batch fixed, an H-ES step searches K x N candidates (K per rank),
so this asks whether the search starts to pay as N grows."""

from __future__ import annotations

import math

import numpy as np

from ..config import run_label
from .stats import mean_ci, welch
from .tables import Run
from .target import BELOW_REFERENCE, is_reference

METHODS = ("bgd", "hes", "reuse")


def _pct(m, lo, hi) -> str:
    if not math.isfinite(m):
        return ""
    half = (hi - lo) / 2 if math.isfinite(lo) else math.nan
    return f"{100 * m:.2f}%" + (f" ± {100 * half:.2f}" if math.isfinite(half) else "")


def _plain(config: dict) -> bool:
    """Uncompressed and not assisted: the method its ``algo`` names, and nothing added."""
    return config.get("compress", "none") in ("none", "") and not config.get("assisted")


def _core(r: Run) -> bool:
    """A run of the study's three methods (BGD, H-ES, reuse), uncompressed and not assisted."""
    return r.config["algo"] in METHODS and _plain(r.config)


def scale_rows(runs: list[Run]) -> list[dict]:
    """One row per rank count: each method's mean final dev accuracy with its 95% CI, and H-ES - reuse. Runs
    of other configurations (local SGD, compressed BGD: the baselines) add columns ``LABEL|mean``,
    ``LABEL|low``, ``LABEL|high`` and ``LABEL|n`` (their ``run_label``), NaN and 0 at a rank count without
    them."""
    by_n: dict[int, dict[str, list[Run]]] = {}
    others: list[str] = []
    for r in runs:
        core = _core(r)
        key = r.config["algo"] if core else run_label(r.config)
        if not core and key not in others:
            others.append(key)
        by_n.setdefault(int(r.summary["ranks"]), {}).setdefault(key, []).append(r)
    rows = []
    for n in sorted(by_n):
        g = by_n[n]
        if not any(a in g for a in METHODS):
            continue
        acc = {a: [r.summary["dev_acc"] for r in g.get(a, [])] for a in (*METHODS, *others)}
        k = int(g["hes"][0].config["K"]) if g.get("hes") else 0
        row = {"ranks": n, "candidates": k * n}
        for a in METHODS:
            m, lo, hi, cnt = mean_ci(acc[a])
            row.update({f"{a}_mean": m, f"{a}_low": lo, f"{a}_high": hi, f"{a}_n": cnt})
        w = welch(acc["hes"], acc["reuse"])
        row.update({"diff": w["diff"], "diff_low": w["low"], "diff_high": w["high"], "p": w["p"]})
        for label in sorted(others):
            m, lo, hi, cnt = mean_ci(acc[label])
            row.update({f"{label}|mean": m, f"{label}|low": lo, f"{label}|high": hi, f"{label}|n": cnt})
        rows.append(row)
    return rows


def markdown_scale(rows: list[dict]) -> str:
    others = [k[: -len("|mean")] for k in (rows[0] if rows else {}) if k.endswith("|mean")]
    out = ["| ranks N | candidates K x N | BGD | H-ES, r = 2 | reuse, r = 2 | H-ES - reuse (points) | 95% CI | Welch p |"
           + "".join(f" {label} |" for label in others),
           "|---|---|---|---|---|---|---|---|" + "---|" * len(others)]
    for r in rows:
        ci = (f"[{100 * r['diff_low']:+.2f}, {100 * r['diff_high']:+.2f}]" if math.isfinite(r["diff_low"])
              else "n/a")
        p = f"{r['p']:.3g}" if math.isfinite(r["p"]) else "n/a"
        diff = f"{100 * r['diff']:+.2f}" if math.isfinite(r["diff"]) else ""
        cells = [str(r["ranks"]), str(r["candidates"]),
                 *(_pct(r[f"{a}_mean"], r[f"{a}_low"], r[f"{a}_high"]) + f" (n {r[f'{a}_n']})" for a in METHODS),
                 diff, ci, p,
                 *((_pct(r[f"{x}|mean"], r[f"{x}|low"], r[f"{x}|high"]) + f" (n {r[f'{x}|n']})") if r[f"{x}|n"]
                   else "" for x in others)]
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
    """The dev-accuracy target: ``target`` when given, else the reference BGD runs' mean final dev accuracy
    (at the smallest rank count) minus 0.5 points. BGD with a compressed exchange is another method, not the
    reference."""
    if target is not None:
        return target
    bgd = [r for r in runs if is_reference(r.config)]
    if not bgd:
        raise ValueError("no BGD run to set the target from: give --target")
    n0 = min(int(r.summary["ranks"]) for r in bgd)
    return float(np.mean([r.summary["dev_acc"] for r in bgd if int(r.summary["ranks"]) == n0])) - BELOW_REFERENCE


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
    at or below N (``assumed`` when that is not N itself) times the simulated epoch time. A simulated row is
    matched with the accuracy runs of its configuration (``method``: the poster label, ``run_label``; rows of
    older simulate output without it match uncompressed runs of their ``algo``); methods without accuracy
    runs are left out."""
    by: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        by.setdefault((run_label(r.config), int(r.summary["ranks"])), []).append(r)
        if _plain(r.config):
            by.setdefault((f"algo:{r.config['algo']}", int(r.summary["ranks"])), []).append(r)
    out = []
    for s in simulated:
        key = s.get("method") or f"algo:{s['algo']}"
        ns = sorted(n for m, n in by if m == key and n <= s["nodes"])
        if not ns:
            continue
        n_acc = ns[-1]
        e = epochs_to_target(by[key, n_acc], target)
        out.append({"label": s["label"], "method": s.get("method", s["label"]), "algo": s["algo"],
                    "platform": s["platform"], "nodes": s["nodes"], "scaling": s["scaling"], "epoch_s": s["epoch_s"],
                    "accuracy_ranks": n_acc, "assumed": n_acc != s["nodes"], "epochs_to_target": e, "target": target,
                    "time_to_target_s": e * s["epoch_s"] if math.isfinite(e) else math.nan})
    return out


def markdown_time_to_target(rows: list[dict]) -> str:
    if not rows:
        return ""
    t = rows[0]["target"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    keys = list(dict.fromkeys((r["platform"], r["nodes"]) for r in rows))
    cell = {(r["method"], r["platform"], r["nodes"]): r for r in rows}
    out = [(f"Time to {100 * t:.2f}% dev accuracy (s; epochs to it in brackets; * accuracy measured at fewer "
            "ranks and assumed at this N; - never reached; n/r not replayed at this N)"), "",
           "| platform | nodes | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for spec, n in keys:
        cells = []
        for m in methods:
            r = cell.get((m, spec, n))
            if r is None:
                cells.append("n/r")
            elif not math.isfinite(r["time_to_target_s"]):
                cells.append("-")
            else:
                cells.append(f"{r['time_to_target_s']:.3g} ({r['epochs_to_target']:.0f}{'*' if r['assumed'] else ''})")
        out.append(f"| {spec} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot_time_to_target(rows: list[dict], path) -> str:
    """Time to the target against N, one panel per platform, one line per method (hollow markers where the
    accuracy is assumed from fewer ranks; methods that never reach the target are left out, and named)."""
    from .figures import _plt, _save

    plt = _plt()
    platforms = list(dict.fromkeys(r["platform"] for r in rows))
    fig, axes = plt.subplots(1, len(platforms), figsize=(5.5 * len(platforms), 4.5), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = plt.get_cmap("tab10").colors
    for ax, spec in zip(axes[0], platforms):
        never = []
        for j, m in enumerate(methods):
            pts = sorted((r["nodes"], r["time_to_target_s"], r["assumed"]) for r in rows
                         if r["platform"] == spec and r["method"] == m)
            ok = [p for p in pts if math.isfinite(p[1])]
            if pts and not ok:
                never.append(m)
            if not ok:
                continue
            c = colours[j % len(colours)]
            ax.plot([p[0] for p in ok], [p[1] for p in ok], color=c, lw=1, label=m)
            for n, t, assumed in ok:
                ax.plot(n, t, "o", color=c, mfc="none" if assumed else c, ms=5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="nodes N", ylabel="time to target (s)", title=spec)
        if never:
            ax.text(0.02, 0.02, "never reach it: " + "; ".join(never), transform=ax.transAxes, fontsize=6, va="bottom")
        ax.grid(alpha=0.3)
    t = rows[0]["target"] if rows else math.nan
    fig.suptitle(f"Time to {100 * t:.2f}% dev accuracy (hollow: accuracy assumed from fewer ranks)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=min(4, max(1, len(labels))))
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    _save(plt, fig, path)
    return str(path)
