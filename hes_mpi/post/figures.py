"""Figures from run logs: training curves, equal-budget curves, time split, memory, the gradient, and the
Pareto view (accuracy against bytes and against time, one point per configuration, and the accuracy reached
against time), and the size study's
savings against the parameter count."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..schema import ALGORITHM_PHASES, GRADIENT_KINDS
from .study import pareto_rows
from .tables import Run, group_runs
from .target import accuracy_over_time


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cumulative_bytes_at_epochs(run: Run) -> np.ndarray:
    """Algorithm payload bytes sent per rank, cumulated up to the end of each epoch."""
    rec = run.records
    ends = run.epochs["iteration"]
    if not rec or rec["phase"].size == 0:
        return np.full(ends.size, np.nan)
    algo = np.isin(rec["phase"], [run.phase_names.index(p) for p in ALGORITHM_PHASES])
    it = rec["iteration"][algo]
    sent = rec["bytes_sent"][algo].astype(float)
    ranks = max(1, run.summary["ranks"])
    return np.array([sent[it < e].sum() / ranks for e in ends])


def plot_training(runs: list[Run], path: Path) -> Path:
    """Loss against iteration (global batch loss at gradient steps) and accuracy against iteration."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        it = r.iterations
        grad = np.isin(it["kind"], GRADIENT_KINDS)
        a1.plot(it["iteration"][grad], it["batch_loss"][grad], lw=0.8, label=r.label)
        (line,) = a2.plot(r.epochs["iteration"], 100 * r.epochs["dev_acc"], marker="o", ms=3, label=f"{r.label} dev")
        if np.all(np.isfinite(r.epochs["train_acc"])):
            a2.plot(r.epochs["iteration"], 100 * r.epochs["train_acc"], ls="--", lw=0.8, color=line.get_color(),
                    label=f"{r.label} train")
    a1.set(xlabel="iteration", ylabel="cross-entropy of the global minibatch (nats)", yscale="log",
           title="Loss before each gradient step (no L2 term)")
    a2.set(xlabel="iteration", ylabel="accuracy (%)", title="Accuracy")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_budget(runs: list[Run], path: Path) -> Path:
    """Dev accuracy against cumulative bytes sent per rank and against wall-clock time."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        acc = 100 * r.epochs["dev_acc"]
        a1.plot(cumulative_bytes_at_epochs(r) / 1e6, acc, marker="o", ms=3, label=r.label)
        a2.plot(r.epochs["wall_s"], acc, marker="o", ms=3, label=r.label)
    a1.set(xlabel="MB sent per rank by the algorithm", ylabel="dev accuracy (%)", title="Equal network budget")
    a2.set(xlabel="wall-clock seconds (evaluation included)", ylabel="dev accuracy (%)", title="Equal time budget")
    a1.set_xscale("log")
    for a in (a1, a2):
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_time_split(runs: list[Run], path: Path) -> Path:
    """Per-rank totals of compute, communication and waiting, one group of bars per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * sum(r.summary["ranks"] for r in runs)), 4.5))
    x = 0
    ticks, labels = [], []
    for r in runs:
        it = r.iterations
        comp, comm, wait = (it[k].sum(axis=0) for k in ("compute_s", "comm_s", "wait_s"))
        for rank in range(comp.size):
            ax.bar(x, comp[rank], color="tab:blue", label="compute" if x == 0 else None)
            ax.bar(x, comm[rank], bottom=comp[rank], color="tab:orange", label="communication" if x == 0 else None)
            ax.bar(x, wait[rank], bottom=comp[rank] + comm[rank], color="tab:gray", label="waiting" if x == 0 else None)
            ticks.append(x)
            labels.append(f"{r.label}\nrank {rank}")
            x += 1
        x += 0.5
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set(ylabel="seconds (sum over the run's steps)", title="Time split per rank")
    ax.legend()
    return _save(plt, fig, path)


def plot_memory(runs: list[Run], path: Path) -> Path:
    """Step memory of each kind (work buffers + measured transients) and the RSS high-water mark."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r.label for r in runs]
    g = [r.summary.get("step_peak_bytes_grad", 0) / 1e6 for r in runs]
    e = [r.summary.get("step_peak_bytes_es", 0) / 1e6 for r in runs]
    xs = np.arange(len(runs))
    a1.bar(xs - 0.2, g, 0.4, label="gradient step")
    a1.bar(xs + 0.2, e, 0.4, label="ES step")
    a1.set_xticks(xs, names, fontsize=7, rotation=15)
    a1.set(ylabel="MB", title="Memory a step needs")
    a1.legend()
    a2.bar(xs, [r.summary.get("peak_rss_bytes", 0) / 1e6 for r in runs])
    a2.set_xticks(xs, names, fontsize=7, rotation=15)
    a2.set(ylabel="MB", title="Peak resident set (any rank)")
    return _save(plt, fig, path)


def gradient_variance(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iterations, gradient norm, per-component variance) at the full-gradient steps."""
    it = run.iterations
    grad = np.isin(it["kind"], GRADIENT_KINDS) & np.isfinite(it["grad_var"])
    return it["iteration"][grad], it["grad_norm"][grad], it["grad_var"][grad]


def plot_gradient(runs: list[Run], path: Path) -> Path:
    """The poster's "Investigating the gradient": norm and per-component variance over iterations,
    with the sigma^2 they suggest (the median component variance, absolute scale)."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        i, norm, var = gradient_variance(r)
        if i.size == 0:
            continue
        a1.plot(i, norm, lw=0.8, label=r.label)
        a2.plot(i, var, lw=0.8, label=f"{r.label} (median {np.median(var):.3g})")
    a1.set(xlabel="iteration", ylabel="||g||", yscale="log", title="Full-gradient norm")
    a2.set(xlabel="iteration", ylabel="per-component variance of g", yscale="log",
           title="Gradient component variance = suggested absolute sigma^2")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_pareto(runs: list[Run], path: Path, target: float | None = None) -> Path:
    """Dev accuracy (mean, 95% CI) against MB sent per rank (log scale) and against training time, one point
    per configuration (its own colour and marker), the fronts joined by a line; and, third, the accuracy
    each configuration has reached against the training time it took (median over seeds of the best dev
    accuracy so far, at the end of each epoch), with the target of the time-to-target columns
    (:mod:`.target`) as a dashed line."""
    plt = _plt()
    rows = pareto_rows(runs, target)
    groups = group_runs(runs)
    fig, axes = plt.subplots(1, 3, figsize=(21, 5.5))
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>p"
    for ax, cost, key, xlabel in ((axes[0], "bytes_per_rank", "front_bytes", "MB sent per rank by the algorithm"),
                                  (axes[1], "train_s", "front_time", "training seconds (median over seeds)")):
        scale = 1e6 if cost == "bytes_per_rank" else 1.0
        for j, r in enumerate(rows):
            y = 100 * r["dev_acc"]
            err = 100 * (r["dev_acc_ci_high"] - r["dev_acc_ci_low"]) / 2 if math.isfinite(r["dev_acc_ci_high"]) else 0
            ax.errorbar(r[cost] / scale, y, yerr=err, fmt=markers[j % len(markers)], ms=6, capsize=3,
                        color=colours[j % len(colours)], label=r["run"])
        front = sorted((r[cost] / scale, 100 * r["dev_acc"]) for r in rows if r[key])
        if front:
            ax.plot(*zip(*front), color="k", lw=0.8, ls="--", label="front")
        ax.set(xlabel=xlabel, ylabel="dev accuracy (%)")
        if cost == "bytes_per_rank" and all(r[cost] > 0 for r in rows):
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    ax = axes[2]
    for j, g in enumerate(groups):
        t, a = accuracy_over_time(g)
        if t.size:
            ax.plot(t, 100 * a, marker=markers[j % len(markers)], ms=3, lw=1, color=colours[j % len(colours)])
    goal = rows[0]["target"] if rows else math.nan
    if math.isfinite(goal):
        ax.axhline(100 * goal, color="k", lw=0.8, ls="--")
        reached = [100 * a for g in groups for a in accuracy_over_time(g)[1]]
        if reached:  # the last points near the target, not the first epochs
            ax.set_ylim(max(min(reached), 100 * goal - 3), max(max(reached), 100 * goal) + 0.3)
    ax.set(xlabel="training seconds (median over seeds)", ylabel="dev accuracy reached (%)")
    ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy against bytes (mean, 95% CI)")
    axes[1].set_title("Accuracy against time")
    axes[2].set_title(f"Accuracy reached against time (target {100 * goal:.2f}%, dashed)" if math.isfinite(goal)
                      else "Accuracy reached against time")
    handles, labels = axes[1].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.82, 0.5))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


FIGURES = {
    "training.png": plot_training,
    "budget.png": plot_budget,
    "time_split.png": plot_time_split,
    "memory.png": plot_memory,
    "gradient.png": plot_gradient,
    "pareto.png": plot_pareto,
}


def write_figures(runs: list[Run], out_dir: Path, target: float | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [fn(runs, out_dir / name, target) if fn is plot_pareto else fn(runs, out_dir / name)
            for name, fn in FIGURES.items()]


def plot_size(rows: list[dict], path: Path) -> Path:
    """Runtime %, Memory %, Net BW % (relative to each network's BGD) and dev accuracy against the parameter
    count, one line per method and depth."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["run"], r["depth"]), []).append(r)
    keys = [("runtime_pct", "Runtime (% of BGD's)"), ("memory_pct", "Memory (% of BGD's)"),
            ("net_bw_pct", "Net BW (% of BGD's)"), ("dev_acc", "dev accuracy (%)")]
    for (run, depth), pts in sorted(series.items()):
        pts = sorted(pts, key=lambda r: r["params"])
        x = [p["params"] for p in pts]
        for ax, (key, _) in zip(axes, keys):
            y = [100 * p[key] if key == "dev_acc" else p[key] for p in pts]
            ax.plot(x, y, marker="o", ms=4, ls="-" if depth == 1 else "--" if depth == 2 else ":",
                    label=f"{run}, {depth} hidden")
    for ax, (_, title) in zip(axes, keys):
        ax.set(xscale="log", xlabel="parameters", title=title)
    axes[0].axhline(100, color="grey", lw=0.6)
    axes[-1].legend(fontsize=6)
    return _save(plt, fig, path)
