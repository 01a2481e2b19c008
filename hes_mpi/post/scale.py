"""The accuracy-at-scale study (``jobs/scale.params``, ``analysis/scale.py``): at each rank count N, the
final dev accuracy of BGD, H-ES and its control (gradient reuse) over their seeds, and H-ES minus reuse
with Welch's 95% interval. With the global batch fixed, an H-ES step searches K x N candidates (K per rank),
so this asks whether the search starts to pay as N grows."""

from __future__ import annotations

import math

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
