"""What a fair comparison needs beyond the poster's tables: accuracy against the budget it cost, the
configurations on the Pareto front, and H-ES against its control (gradient reuse at the same r) with a
test of the difference.

- :func:`pareto_rows`: per configuration (seeds grouped as in :mod:`.tables`), the dev accuracy (mean,
  95% CI, n), the payload bytes the algorithm sent per rank over the whole run, the training time
  (epochs, no evaluation), the time to a target dev accuracy (:mod:`.target`), and whether no other
  configuration is at least as accurate for fewer bytes (or less time) — the fronts.
- :func:`comparisons`: every H-ES configuration against the ``reuse`` configuration with the same r and
  every other option shared but the learning rate (the same lr when there is one, else reuse's own:
  each at its tuned lr): the difference of the mean dev accuracies, its 95% CI and Welch's p.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..config import METHOD_OPTIONS, READS, result_options
from .stats import mean_ci, welch
from .tables import (
    Run,
    accuracy_rows,
    add_last_epochs,
    diverged_count,
    group_runs,
    last_epochs_acc,
    markdown_accuracy,
    markdown_savings,
    savings_rows,
    seeds_cell,
    to_csv,
)
from .target import cell as target_cell
from .target import default_target, group_time_to_target
from .target import header as target_header


def _train_s(r: Run) -> float:
    return float(np.sum(r.epochs["epoch_s"]))


def _front(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, accuracy) points: True where no other point costs no more and is no less accurate,
    with one of the two strictly better."""
    out = []
    for j, (c, a) in enumerate(points):
        if not (math.isfinite(c) and math.isfinite(a)):
            out.append(False)
            continue
        out.append(not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a)
                           for k, (c2, a2) in enumerate(points) if k != j and math.isfinite(c2) and math.isfinite(a2)))
    return out


def pareto_rows(runs: list[Run], target: float | None = None, last_epochs: int | None = None) -> list[dict]:
    groups = group_runs(runs)
    goal = default_target(groups, target)
    rows = []
    for g in groups:
        m, lo, hi, n = mean_ci([r.summary["dev_acc"] for r in g])
        row = {"run": g[0].label, "seeds": n, "diverged": diverged_count(g), "dev_acc": m, "dev_acc_ci_low": lo,
               "dev_acc_ci_high": hi}
        add_last_epochs(row, g, last_epochs)
        if any("test_acc" in r.summary for r in g):  # measured once at the end (analysis/compare.py --test)
            tm, tlo, thi, _ = mean_ci([r.summary.get("test_acc", math.nan) for r in g])
            row.update({"test_acc": tm, "test_acc_ci_low": tlo, "test_acc_ci_high": thi})
        row.update({"bytes_per_rank": float(np.mean([r.summary.get("comm_bytes_sent_per_rank", math.nan) for r in g])),
                    "train_s": float(np.median([_train_s(r) for r in g])), **group_time_to_target(g, goal)})
        rows.append(row)
    for key, cost in (("front_bytes", "bytes_per_rank"), ("front_time", "train_s")):
        for row, on in zip(rows, _front([(r[cost], r["dev_acc"]) for r in rows])):
            row[key] = on
    return rows


def _acc(r: dict, split: str) -> str:
    m, lo, hi = r[f"{split}_acc"], r[f"{split}_acc_ci_low"], r[f"{split}_acc_ci_high"]
    return f"{100 * m:.2f}%" + (f" ± {100 * (hi - lo) / 2:.2f}" if math.isfinite(hi) else "")


def markdown_pareto(rows: list[dict]) -> str:
    test = any("test_acc" in r for r in rows)
    last = rows[0].get("last_epochs") if rows else None
    goal = rows[0]["target"] if rows else math.nan
    out = ["| run | seeds (n) | dev (mean ± 95% CI) |" + (f" dev, last {last} epochs |" if last else "")
           + (" test (mean ± 95% CI) |" if test else "")
           + f" MB sent per rank | training s (median) | {target_header(goal)[:-4]} (s, median) "
           "| front: bytes | front: time |",
           "|---|---|---|" + ("---|" if last else "") + ("---|" if test else "") + "---|---|---|---|---|"]
    for r in rows:
        cells = [r["run"], seeds_cell(r["seeds"] + r.get("diverged", 0), r.get("diverged", 0)), _acc(r, "dev"),
                 *([_acc(r, "dev_last")] if last else []), *([_acc(r, "test")] if test else []),
                 f"{r['bytes_per_rank'] / 1e6:,.2f}", f"{r['train_s']:.1f}", target_cell(r, r["seeds"]),
                 "yes" if r["front_bytes"] else "", "yes" if r["front_time"] else ""]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _control_key(config: dict) -> tuple:
    """The options a reuse run and an H-ES run must share to be compared: all but the method's own and the
    learning rate (each method at its own, e.g. tuned, lr)."""
    opts = result_options(config)
    keep = {k: v for k, v in opts.items()
            if (k not in METHOD_OPTIONS or k in READS["reuse"]) and k not in ("algo", "seed", "lr")}
    return tuple(sorted(keep.items()))


def comparisons(runs: list[Run], last_epochs: int | None = None) -> list[dict]:
    """H-ES (not assisted) against gradient reuse with the same r and shared options — at the same lr when
    the table has it, else at the one lr the table has for reuse (each method at its tuned lr): Welch's
    test on the final dev accuracies of their seeds, and with ``last_epochs`` E also on each seed's mean dev
    accuracy of its last E epochs (``last_diff``, ``last_low``, ``last_high``, ``last_p``)."""
    groups = group_runs(runs)
    reuse: dict[tuple, list] = {}
    for g in groups:
        if g[0].config["algo"] == "reuse":
            reuse.setdefault(_control_key(g[0].config), []).append(g)
    rows = []
    for g in groups:
        c = g[0].config
        if c["algo"] != "hes" or c.get("assisted"):
            continue
        candidates = reuse.get(_control_key(c), [])
        same_lr = [h for h in candidates if h[0].config["lr"] == c["lr"]]
        ctrl = same_lr[0] if same_lr else candidates[0] if len(candidates) == 1 else None
        if ctrl is None:
            continue
        w = welch([r.summary["dev_acc"] for r in g], [r.summary["dev_acc"] for r in ctrl])
        rows.append({"hes": g[0].label, "reuse": ctrl[0].label, "r": c["r"], **w})
        if last_epochs:
            lw = welch([last_epochs_acc(r, last_epochs) for r in g], [last_epochs_acc(r, last_epochs) for r in ctrl])
            rows[-1].update({"last_epochs": last_epochs, **{f"last_{k}": lw[k] for k in ("diff", "low", "high", "p")}})
    return rows


def markdown_comparisons(rows: list[dict]) -> str:
    last = rows[0].get("last_epochs") if rows else None
    more = f" last {last} epochs: difference | 95% CI | Welch p |" if last else ""
    out = ["| H-ES | its control | n (H-ES, reuse) | dev difference (points) | 95% CI | Welch p |" + more,
           "|---|---|---|---|---|---|" + ("---|---|---|" if last else "")]

    def cells(d, low, high, p):
        ci = f"[{100 * low:+.2f}, {100 * high:+.2f}]" if math.isfinite(low) else "n/a"
        return f"{100 * d:+.2f} | {ci} | " + (f"{p:.3g}" if math.isfinite(p) else "n/a")

    for r in rows:
        line = f"| {r['hes']} | {r['reuse']} | {r['n_a']}, {r['n_b']} | {cells(r['diff'], r['low'], r['high'], r['p'])} |"
        if last:
            line += f" {cells(r['last_diff'], r['last_low'], r['last_high'], r['last_p'])} |"
        out.append(line)
    return "\n".join(out)


def write_tables(runs: list[Run], out_dir: Path, target: float | None = None,
                 last_epochs: int | None = None) -> dict[str, str]:
    """Write the accuracy, savings, Pareto and (when there are H-ES runs and their reuse controls)
    comparison tables, Markdown and CSV, into ``out_dir``; return {name: Markdown} of those written.
    ``target``: the dev accuracy of the time-to-target columns (default: the reference's minus 0.5 points)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = {"accuracy": (accuracy_rows(runs, last_epochs), markdown_accuracy),
              "savings": (savings_rows(runs, target), markdown_savings),
              "pareto": (pareto_rows(runs, target, last_epochs), markdown_pareto),
              "comparisons": (comparisons(runs, last_epochs), markdown_comparisons)}
    out = {}
    for name, (rows, fmt) in tables.items():
        if not rows and name == "comparisons":
            continue
        out[name] = fmt(rows)
        (out_dir / f"{name}.md").write_text(out[name] + "\n")
        (out_dir / f"{name}.csv").write_text(to_csv(rows))
    return out
