"""The table of ``hes-mpi cluster bench``: BGD and H-ES measured on emulated clusters, next to the cost
model's figures for the same cluster, and the kernel's byte counts next to the logged wire bytes.

For every folder of :mod:`hes_mpi.bench.cluster` (one node count and link rate):

- measured: the median step time of each kind (slowest rank), the median epoch (training only), H-ES / BGD
  per epoch, the training time until the dev accuracy first reaches ``target``;
- modelled: each step kind as its measured compute (the same logs) plus the modelled collective on the
  link's nominal bandwidth, with latency and bandwidth fitted to the logs' own collectives (alpha-beta of
  :mod:`hes_mpi.post.fit`), and the error of each against the measurement;
- bytes: what the kernel counted leaving the nodes' links (headers included) over the bytes the run log
  says the MPI calls put on the wire (:func:`hes_mpi.collectives.wire_bytes`);
- the busy-wait emulation (``--emulate-net`` at the nominal rate, on one host) against the real links.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..cluster.state import format_rate
from ..collectives import MINLOC_BYTES, collective_time
from ..errors import UsageError
from ..runlog import RunLog
from ..schema import StepKind
from .fit import fit_alpha_beta, measured_pairs
from .projection import step_costs


def _median_steps(rl: RunLog) -> dict[int, float]:
    it = rl.table("iterations")
    slowest = it["step_s"].max(axis=1)
    return {int(k): float(np.median(slowest[it["kind"] == k])) for k in np.unique(it["kind"])}


def _time_to(rl: RunLog, target: float) -> float | None:
    ep = rl.table("epochs")
    reached = np.flatnonzero(ep["dev_acc"] >= target)
    return float(np.sum(ep["epoch_s"][: reached[0] + 1])) if reached.size else None


def _wire_bytes(rl: RunLog) -> int:
    rec = rl.records()
    return int(rec["wire_bytes"].sum()) if rec else 0


def _err(model: float, measured: float) -> float:
    return model / measured - 1 if measured else math.nan


def folder_row(d: Path, target: float = 0.9) -> dict:
    """One configuration's measured and modelled figures (see the module docstring)."""
    need = [d / f for f in ("bgd.h5", "hes.h5", "links.json")]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise UsageError(f"{d}: not a finished cluster bench folder ({', '.join(missing)} missing)")
    links = json.loads((d / "links.json").read_text())
    nodes = len(links["cluster"]["nodes"])
    rate_bps = links["cluster"]["nodes"][0]["rate_bps"]
    row: dict = {"folder": d.name, "nodes": nodes, "rate": format_rate(rate_bps), "rate_bps": rate_bps}
    pairs, runs = [], {}
    for algo in ("bgd", "hes"):
        with RunLog(str(d / f"{algo}.h5")) as rl:
            runs[algo] = {"steps": _median_steps(rl), "costs": step_costs(rl), "epoch_s": rl.summary()["median_epoch_s"],
                          "to_target_s": _time_to(rl, target), "wire": _wire_bytes(rl),
                          "dev_acc": rl.summary()["dev_acc"]}
            pairs.extend(measured_pairs(rl, with_ranks=True))
    family = runs["bgd"]["costs"].family
    fit = fit_alpha_beta(pairs, family=family)
    row.update({"fit_alpha_us": fit.alpha * 1e6, "fit_gbit": 8 / fit.beta / 1e9 if fit.beta else math.inf,
                "fit_median_error": fit.median_rel_error, "target": target})
    beta_nominal = 8 / rate_bps
    p = runs["bgd"]["costs"].param_count
    for name, alpha, beta in (("nominal", fit.alpha, beta_nominal), ("fit", fit.alpha, fit.beta)):
        t_ar = collective_time("allreduce", 4 * p, nodes, alpha, beta, family)
        t_ml = collective_time("minloc", MINLOC_BYTES, nodes, alpha, beta, family)
        for algo, kind, compute, comm in (("bgd", StepKind.GRAD, runs["bgd"]["costs"].compute_grad_s, t_ar),
                                          ("hes", StepKind.GRAD, runs["hes"]["costs"].compute_grad_s, t_ar),
                                          ("hes", StepKind.ES, runs["hes"]["costs"].compute_es_s, t_ml)):
            key = f"{algo}_{kind.label}"
            measured = runs[algo]["steps"].get(int(kind), math.nan)
            row[f"{key}_s"] = measured
            row[f"{key}_model_{name}_s"] = (compute or 0.0) + comm
            row[f"{key}_error_{name}"] = _err(row[f"{key}_model_{name}_s"], measured)
    for algo in ("bgd", "hes"):
        sent = sum(v["tx"] for v in links["bytes"][algo].values())
        row[f"{algo}_epoch_s"] = runs[algo]["epoch_s"]
        row[f"{algo}_to_target_s"] = runs[algo]["to_target_s"]
        row[f"{algo}_dev_acc"] = runs[algo]["dev_acc"]
        row[f"{algo}_link_bytes"] = sent
        row[f"{algo}_wire_bytes"] = runs[algo]["wire"]
        row[f"{algo}_link_over_wire"] = sent / runs[algo]["wire"] if runs[algo]["wire"] else math.nan
    row["hes_over_bgd"] = row["hes_epoch_s"] / row["bgd_epoch_s"]
    if (d / "bgd_emulated.h5").exists():
        with RunLog(str(d / "bgd_emulated.h5")) as rl:
            row["bgd_emulated_epoch_s"] = rl.summary()["median_epoch_s"]
    return row


def _ms(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{1e3 * x:.1f}"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.0f}%"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(rows: list[dict]) -> str:
    """Three Markdown tables: time, the model's error per step kind, bytes on the links."""
    out = ["| nodes | link | BGD epoch (s) | H-ES epoch (s) | H-ES / BGD | BGD to {t} dev (s) | H-ES to {t} dev (s) | "
           "BGD, --emulate-net (s) |".format(t=f"{100 * rows[0]['target']:.0f}%" if rows else ""),
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['nodes']} | {r['rate']} | {_s(r['bgd_epoch_s'])} | {_s(r['hes_epoch_s'])} | "
                   f"{r['hes_over_bgd']:.2f} | {_s(r['bgd_to_target_s'])} | {_s(r['hes_to_target_s'])} | "
                   f"{_s(r.get('bgd_emulated_epoch_s'))} |")
    out += ["", "| nodes | link | step | measured (ms) | model, nominal rate (ms) | error | model, fitted (ms) | error |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for key, what in (("bgd_grad", "BGD gradient"), ("hes_grad", "H-ES gradient"), ("hes_es", "H-ES ES")):
            out.append(f"| {r['nodes']} | {r['rate']} | {what} | {_ms(r[f'{key}_s'])} | "
                       f"{_ms(r[f'{key}_model_nominal_s'])} | {_pct(r[f'{key}_error_nominal'])} | "
                       f"{_ms(r[f'{key}_model_fit_s'])} | {_pct(r[f'{key}_error_fit'])} |")
    out += ["", ("| nodes | link | fit: alpha (us) | fit: Gbit/s | fit error (median) | BGD link / wire bytes | "
            "H-ES link / wire bytes |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['nodes']} | {r['rate']} | {r['fit_alpha_us']:.1f} | {r['fit_gbit']:.3g} | "
                   f"{100 * r['fit_median_error']:.0f}% | {r['bgd_link_over_wire']:.3f} | "
                   f"{r['hes_link_over_wire']:.3f} |")
    return "\n".join(out)


def table(folders, target: float = 0.9) -> tuple[list[dict], str]:
    rows = [folder_row(Path(d), target) for d in folders]
    return rows, markdown(rows)
