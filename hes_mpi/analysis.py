"""Post-processing of run logs: the poster's tables and the figures (the logic behind ``analysis/``).

Runs are grouped by configuration (algorithm, r, K, sigma^2, assisted, ...) and labelled as in the
poster ("Reference (BGD)", "Assisted H-ES (r = 1)", "H-ES, r = 2"); several seeds of one
configuration are reported as mean and standard deviation.

Savings relative to the reference (BGD), each measured from the logs:

- Runtime %: training wall time (no evaluation) relative to the reference's.
- Memory %: the step memory averaged over the iterations (work buffers of each step plus its
  measured transient allocations, see :mod:`hes_mpi.telemetry`) relative to the reference's.
- Net BW %: payload bytes the algorithm sent per rank per iteration relative to the reference's.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import PLAIN
from .runlog import RunLog


@dataclass
class Run:
    path: str
    summary: dict
    config: dict
    epochs: dict
    iterations: dict
    records: dict = field(default_factory=dict)
    phase_names: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return run_label(self.config)

    @property
    def key(self) -> tuple:
        """Configuration identity (everything but the seed and the output)."""
        c = self.config
        if c["algo"] == "bgd":
            return ("bgd", c["lr"], c["batch"], c["hidden"], c["l2"], c["data"], self.summary["ranks"])
        return ("hes", c["assisted"], c["r"], c["K"], c["sigma2"], c["sigma_scale"], c["lr"], c["batch"],
                c["hidden"], c["l2"], c["data"], self.summary["ranks"], c.get("noise", "philox"), es_methods(c))

    def mean_step_bytes(self) -> float:
        it = self.iterations
        if "step_bytes" not in it or it["step_bytes"].size == 0:
            return math.nan
        per_iter = it["step_bytes"].max(axis=1).astype(float)
        s = self.summary  # plus the measured transient allocations of each step kind
        transient = np.where(it["kind"] == 1, s.get("step_transient_bytes_es", 0), s.get("step_transient_bytes_grad", 0))
        return float((per_iter + transient).mean())


def es_methods(config: dict) -> tuple:
    """The H-ES method options of a run, ((name, value), ...); run logs older than these options ran the
    poster's plain algorithm."""
    return tuple((k, config.get(k, v)) for k, v in PLAIN.items())


def method_label(config: dict) -> str:
    """'plain', or the method options that differ from the poster's, e.g. 'output layer, baseline'."""
    words = []
    for k, v in es_methods(config):
        if v == PLAIN[k]:
            continue
        if k == "perturb":
            words.append("output layer" if v == "output" else str(v))
        elif k == "recombine":
            words.append(f"{v} recombination")
        elif k == "es_rows":
            words.append(f"{v:g} of rows")
        elif k == "es_step":
            words.append(f"ES step {v:g} lr" if v else "ES step auto")
        elif k == "dist":
            words.append(str(v))
        elif v is True:
            words.append(k.replace("_", "-"))
    return ", ".join(words) or "plain"


def run_label(config: dict) -> str:
    if config["algo"] == "bgd":
        return "Reference (BGD)"
    head = "Assisted H-ES (r = 1)" if config.get("assisted") else f"H-ES, r = {config['r']}"
    return f"{head} [{method_label(config)}]"


def load_run(path: str) -> Run:
    with RunLog(path) as rl:
        s = rl.summary()
        recs = rl.table("comm/records") if "comm/records" in rl.f else {}
        phases = [p.decode() if isinstance(p, bytes) else str(p) for p in rl.f["comm"].attrs["phase_names"]] \
            if "comm" in rl.f else []
        return Run(path=str(path), summary=s, config=rl.config, epochs=rl.table("epochs"),
                   iterations=rl.table("iterations"), records=recs, phase_names=phases)


def load_runs(paths) -> list[Run]:
    return [load_run(p) for p in paths]


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by configuration, reference (BGD) first, then by assisted, r."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)

    def order(g):
        c = g[0].config
        return (c["algo"] != "bgd", not c.get("assisted", False), c["r"], c["K"], c["sigma2"],
                method_label(c) != "plain", method_label(c))

    return sorted(groups.values(), key=order)


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _pct(mean: float, std: float, n: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if n > 1 else "")


def accuracy_rows(runs: list[Run]) -> list[dict]:
    rows = []
    for g in group_runs(runs):
        c = g[0].config
        tr = _mean_std([r.summary["train_acc"] for r in g])
        dv = _mean_std([r.summary["dev_acc"] for r in g])
        r = (1 if c.get("assisted") else c["r"]) if c["algo"] == "hes" else ""
        rows.append({"run": g[0].label, "algo": c["algo"], "r": r,
                     "K": c["K"] if c["algo"] == "hes" else "", "sigma2": c["sigma2"] if c["algo"] == "hes" else "",
                     "epochs": g[0].summary["epochs"], "seeds": len(g), "train_acc": tr[0], "train_acc_std": tr[1],
                     "dev_acc": dv[0], "dev_acc_std": dv[1]})
    return rows


def savings_rows(runs: list[Run]) -> list[dict]:
    """Runtime, memory and network savings of every configuration relative to the BGD reference."""
    groups = group_runs(runs)
    ref = next((g for g in groups if g[0].config["algo"] == "bgd"), None)
    if ref is None:
        return []

    def metrics(g):
        wall = _mean_std([float(np.sum(r.epochs["epoch_s"])) for r in g])[0]
        mem = _mean_std([r.mean_step_bytes() for r in g])[0]
        bw = _mean_std([r.summary.get("comm_bytes_sent_per_rank", math.nan) / max(1, r.summary["iterations"])
                        for r in g])[0]
        return wall, mem, bw

    rw, rm, rb = metrics(ref)
    rows = []
    for g in groups:
        w, m, b = metrics(g)
        rows.append({"run": g[0].label, "seeds": len(g), "train_s": w, "runtime_pct": 100 * w / rw,
                     "step_bytes_mean": m, "memory_pct": 100 * m / rm, "bytes_per_iteration": b,
                     "net_bw_pct": 100 * b / rb})
    return rows


def markdown_accuracy(rows: list[dict]) -> str:
    out = ["| run | r | K | sigma^2 | epochs | seeds | train | dev |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['run']} | {r['r'] or '-'} | {r['K'] or '-'} | {r['sigma2'] if r['sigma2'] != '' else '-'} "
                   f"| {r['epochs']} | {r['seeds']} | {_pct(r['train_acc'], r['train_acc_std'], r['seeds'])} "
                   f"| {_pct(r['dev_acc'], r['dev_acc_std'], r['seeds'])} |")
    return "\n".join(out)


def markdown_savings(rows: list[dict]) -> str:
    out = ["| run | training time (s) | Runtime | mean step memory | Memory | bytes/iteration/rank | Net BW |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['run']} | {r['train_s']:.2f} | {r['runtime_pct']:.1f}% | {r['step_bytes_mean'] / 1e6:.2f} MB "
                   f"| {r['memory_pct']:.1f}% | {r['bytes_per_iteration']:,.0f} | {r['net_bw_pct']:.1f}% |")
    return "\n".join(out)


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- figures
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
    algo = np.isin(rec["phase"], [run.phase_names.index(p) for p in ("grad", "es")])
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
        grad = it["kind"] != 1
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
    grad = (it["kind"] != 1) & np.isfinite(it["grad_var"])
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


FIGURES = {
    "training.png": plot_training,
    "budget.png": plot_budget,
    "time_split.png": plot_time_split,
    "memory.png": plot_memory,
    "gradient.png": plot_gradient,
}


def write_figures(runs: list[Run], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [fn(runs, out_dir / name) for name, fn in FIGURES.items()]


def write_tables(runs: list[Run], out_dir: Path) -> tuple[str, str]:
    """Write accuracy and savings tables (Markdown + CSV) into ``out_dir``; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = accuracy_rows(runs)
    sav = savings_rows(runs)
    acc_md, sav_md = markdown_accuracy(acc), markdown_savings(sav)
    (out_dir / "accuracy.md").write_text(acc_md + "\n")
    (out_dir / "accuracy.csv").write_text(to_csv(acc))
    (out_dir / "savings.md").write_text(sav_md + "\n")
    (out_dir / "savings.csv").write_text(to_csv(sav))
    return acc_md, sav_md
