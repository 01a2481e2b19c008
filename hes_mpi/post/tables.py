"""The poster's tables from run logs: accuracy, and savings relative to the BGD reference.

Runs are grouped by configuration (every option that decides a result, :func:`hes_mpi.config.result_options`,
apart from the seed) and labelled as in the poster ("Reference (BGD)", "Assisted H-ES (r = 1)",
"H-ES, r = 2"), followed by every other option that differs between the configurations of the table
(e.g. "Reference (BGD), lr 2"), so no two rows of a table look alike; several seeds of one
configuration are reported as the mean and its 95% confidence interval (Student's t, :mod:`.stats`),
with n, the number of seeds.

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

import numpy as np

from ..config import LABELLED, method_label, result_options, run_label
from ..runlog import RunLog
from ..schema import StepKind
from .stats import mean_ci
from .target import cell as target_cell
from .target import default_target, group_time_to_target
from .target import header as target_header


@dataclass
class Run:
    path: str
    summary: dict
    config: dict
    epochs: dict
    iterations: dict
    records: dict = field(default_factory=dict)
    phase_names: list = field(default_factory=list)
    #: Set by :func:`label_runs`: the options that tell this run's configuration apart in its table.
    distinguishing: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        base = run_label(self.config)
        if not self.distinguishing:
            return base
        return base + ", " + ", ".join(f"{k.replace('_', '-')} {_value(v)}" for k, v in self.distinguishing.items())

    @property
    def key(self) -> tuple:
        """Configuration identity: every option that decides the result but the seed, and the rank count."""
        opts = result_options(self.config)
        opts.pop("seed", None)
        return (*sorted(opts.items()), ("ranks", self.summary["ranks"]))

    def mean_step_bytes(self) -> float:
        it = self.iterations
        if "step_bytes" not in it or it["step_bytes"].size == 0:
            return math.nan
        per_iter = it["step_bytes"].max(axis=1).astype(float)
        s = self.summary  # plus the measured transient allocations of each step kind
        transient = np.where(it["kind"] == StepKind.ES, s.get("step_transient_bytes_es", 0),
                             s.get("step_transient_bytes_grad", 0))
        return float((per_iter + transient).mean())


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def label_runs(runs: list[Run]) -> list[Run]:
    """Give every run the options, beyond its poster label, whose values differ between the runs of the
    table (options a run does not read, such as H-ES options for BGD, are not shown for it); returns ``runs``."""
    keys = [dict(r.key) for r in runs]
    differing = set()
    for k in set().union(*keys) if keys else set():
        values = {repr(opts[k]) for opts in keys if k in opts}
        if len(values) > 1 and k not in LABELLED:
            differing.add(k)
    for r, opts in zip(runs, keys):
        r.distinguishing = {k: opts[k] for k in sorted(differing) if k in opts}
    return runs


def load_run(path: str) -> Run:
    with RunLog(path) as rl:
        return Run(path=str(path), summary=rl.summary(), config=rl.config, epochs=rl.table("epochs"),
                   iterations=rl.table("iterations"), records=rl.records(), phase_names=rl.names("phase_names"))


def load_runs(paths) -> list[Run]:
    """The run logs at ``paths``, labelled so that every configuration of the set reads differently."""
    return label_runs([load_run(p) for p in paths])


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs grouped by configuration: the reference (BGD) first, compressed BGD, H-ES (assisted, then by r),
    gradient reuse, local SGD."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key, []).append(r)

    algos = ("bgd", "hes", "reuse", "localsgd")

    def order(g):
        c = g[0].config
        compress = c.get("compress", "none")
        return (algos.index(c["algo"]) if c["algo"] in algos else len(algos), compress != "none", compress,
                not c.get("assisted", False), c["r"], c["K"], c["sigma2"], method_label(c) != "plain",
                method_label(c), g[0].label)

    return sorted(groups.values(), key=order)


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _pct(mean: float, low: float, high: float, n: int) -> str:
    """'96.33%', or with a confidence interval '96.33% ± 0.21' (its half-width, in points)."""
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.2f}%" + (f" ± {100 * (high - low) / 2:.2f}" if n > 1 and math.isfinite(high) else "")


def diverged_count(g: list[Run]) -> int:
    """How many runs of a configuration diverged (their run logs say ``diverged``)."""
    return sum(bool(r.summary.get("diverged")) for r in g)


def seeds_cell(n: int, diverged: int) -> str:
    """'5', or with diverged runs '3 (2 of 5 diverged)': the seeds a mean is over, and those left out."""
    return f"{n - diverged} ({diverged} of {n} diverged)" if diverged else str(n)


def last_epochs_acc(run: Run, epochs: int) -> float:
    """The mean dev accuracy of the run's last ``epochs`` epochs (a steadier figure than the last one alone,
    whose seed-to-seed swing can be points); NaN for a run that diverged or has fewer epochs."""
    acc = np.asarray(run.epochs.get("dev_acc", ()), dtype=float)
    if run.summary.get("diverged") or acc.size < epochs:
        return math.nan
    return float(acc[-epochs:].mean())


def add_last_epochs(row: dict, g: list[Run], epochs: int | None) -> None:
    """``dev_last_acc`` (mean over the seeds of :func:`last_epochs_acc`) and its 95% CI, with ``last_epochs``."""
    if not epochs:
        return
    m, lo, hi, _ = mean_ci([last_epochs_acc(r, epochs) for r in g])
    row.update({"last_epochs": epochs, "dev_last_acc": m, "dev_last_acc_ci_low": lo, "dev_last_acc_ci_high": hi})


def accuracy_rows(runs: list[Run], last_epochs: int | None = None) -> list[dict]:
    rows = []
    for g in group_runs(runs):
        c = g[0].config
        row = {"run": g[0].label, "algo": c["algo"]}
        row["r"] = (1 if c.get("assisted") else c["r"]) if c["algo"] in ("hes", "reuse", "localsgd") else ""
        row.update({"K": c["K"] if c["algo"] == "hes" else "", "sigma2": c["sigma2"] if c["algo"] == "hes" else "",
                    "epochs": g[0].summary["epochs"], "seeds": len(g), "diverged": diverged_count(g)})
        for split in ("train", "dev"):
            values = [r.summary[f"{split}_acc"] for r in g]
            m, lo, hi, _ = mean_ci(values)
            row.update({f"{split}_acc": m, f"{split}_acc_std": _mean_std(values)[1], f"{split}_acc_ci_low": lo,
                        f"{split}_acc_ci_high": hi})
        add_last_epochs(row, g, last_epochs)
        rows.append(row)
    return rows


def savings_rows(runs: list[Run], target: float | None = None) -> list[dict]:
    """Runtime, memory and network savings of every configuration relative to the BGD reference, and each
    one's time to the ``target`` dev accuracy (default: the reference's minus 0.5 points; :mod:`.target`)."""
    groups = group_runs(runs)
    ref = next((g for g in groups if g[0].config["algo"] == "bgd"), None)  # the first BGD configuration
    if ref is None:
        return []
    rw, rm, rb = cost_metrics(ref)
    rs = whole_memory(ref)
    goal = default_target(groups, target)
    rows = []
    for g in groups:
        w, m, b = cost_metrics(g)
        whole = whole_memory(g)
        rows.append({"run": g[0].label, "seeds": len(g), "train_s": w, "runtime_pct": 100 * w / rw,
                     **group_time_to_target(g, goal), "step_bytes_mean": m, "memory_pct": 100 * m / rm,
                     "state_bytes": _mean_std([r.summary.get("state_bytes", math.nan) for r in g])[0],
                     "state_bytes_noise": _mean_std([r.summary.get("state_bytes_noise", math.nan) for r in g])[0],
                     "memory_whole_bytes": whole, "memory_whole_pct": 100 * whole / rs,
                     "bytes_per_iteration": b, "net_bw_pct": 100 * b / rb})
    return rows


def whole_memory(g: list[Run]) -> float:
    """The method's memory counted whole, per rank: its state (every array it keeps between steps, the
    noise table included) plus the larger transient peak of its step kinds; the mean over the seeds (NaN
    for logs that predate ``state_bytes``)."""
    def one(s: dict) -> float:
        if "state_bytes" not in s:
            return math.nan
        return s["state_bytes"] + max(s.get("step_transient_bytes_grad", 0), s.get("step_transient_bytes_es", 0))

    return _mean_std([one(r.summary) for r in g])[0]


def cost_metrics(g: list[Run]) -> tuple[float, float, float]:
    """(training time without evaluation in s, mean step memory in bytes, payload bytes sent per rank per
    iteration) of one configuration, the means over its seeds: what Runtime %, Memory % and Net BW % compare."""
    wall = _mean_std([float(np.sum(r.epochs["epoch_s"])) for r in g])[0]
    mem = _mean_std([r.mean_step_bytes() for r in g])[0]
    bw = _mean_std([r.summary.get("comm_bytes_sent_per_rank", math.nan) / max(1, r.summary["iterations"])
                    for r in g])[0]
    return wall, mem, bw


def markdown_accuracy(rows: list[dict]) -> str:
    last = rows[0].get("last_epochs") if rows else None
    out = ["| run | r | K | sigma^2 | epochs | seeds (n) | train (mean ± 95% CI) | dev (mean ± 95% CI) |"
           + (f" dev, mean of the last {last} epochs |" if last else ""),
           "|---|---|---|---|---|---|---|---|" + ("---|" if last else "")]
    for r in rows:
        acc = [_pct(r[f"{s}_acc"], r[f"{s}_acc_ci_low"], r[f"{s}_acc_ci_high"], r["seeds"]) for s in ("train", "dev")]
        if last:
            acc.append(_pct(r["dev_last_acc"], r["dev_last_acc_ci_low"], r["dev_last_acc_ci_high"], r["seeds"]))
        out.append(f"| {r['run']} | {r['r'] or '-'} | {r['K'] or '-'} | {r['sigma2'] if r['sigma2'] != '' else '-'} "
                   f"| {r['epochs']} | {seeds_cell(r['seeds'], r.get('diverged', 0))} | " + " | ".join(acc) + " |")
    return "\n".join(out)


def markdown_savings(rows: list[dict]) -> str:
    goal = rows[0]["target"] if rows else math.nan
    out = [(f"| run | training time (s) | Runtime | {target_header(goal)} | mean step memory | Memory "
            "| method state (noise) | Memory, whole | bytes/iteration/rank | Net BW |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        state = (f"{r['state_bytes'] / 1e6:.2f} MB ({r['state_bytes_noise'] / 1e6:.2f})"
                 if math.isfinite(r.get("state_bytes", math.nan)) else "n/a")
        whole = f"{r['memory_whole_pct']:.1f}%" if math.isfinite(r.get("memory_whole_pct", math.nan)) else "n/a"
        out.append(f"| {r['run']} | {r['train_s']:.2f} | {r['runtime_pct']:.1f}% | {target_cell(r, r['seeds'])} "
                   f"| {r['step_bytes_mean'] / 1e6:.2f} MB | {r['memory_pct']:.1f}% | {state} | {whole} "
                   f"| {r['bytes_per_iteration']:,.0f} | {r['net_bw_pct']:.1f}% |")
    return "\n".join(out)


def to_csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()
