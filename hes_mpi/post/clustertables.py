"""The table of ``hes-mpi cluster bench``: BGD and H-ES measured on emulated clusters, next to the cost
model's figures for the same cluster, and the kernel's byte counts next to the logged wire bytes.

For every folder of :mod:`hes_mpi.bench.cluster` (one node count and link rate):

- measured: the median step time of each kind (slowest rank), the median epoch (training only), H-ES / BGD
  per epoch, the training time until the dev accuracy first reaches ``target`` (default: BGD's final dev
  accuracy minus 0.5 points, :mod:`.target`);
- modelled: each step kind as its measured compute (the same logs) plus the modelled collective on the
  link's nominal bandwidth, with latency and bandwidth fitted to the logs' own collectives (alpha-beta of
  :mod:`hes_mpi.post.fit`), and the error of each against the measurement;
- bytes: what the kernel counted leaving the nodes' links (headers included) over the bytes the run log
  says the MPI calls put on the wire (:func:`hes_mpi.collectives.wire_bytes`);
- the busy-wait emulation (``--emulate-net`` at the nominal rate, on one host) against the real links.

A folder with ``round1`` ... ``roundN`` (``cluster bench --rounds N``) gives one row: the median over its
rounds of every figure, and for the epoch times, H-ES / BGD and the times to target their smallest and
largest value over the rounds (``*_min``, ``*_max``), shown as "median (min-max)".
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
from .target import BELOW_REFERENCE, seconds_to


def _median_steps(rl: RunLog) -> dict[int, float]:
    it = rl.table("iterations")
    slowest = it["step_s"].max(axis=1)
    return {int(k): float(np.median(slowest[it["kind"] == k])) for k in np.unique(it["kind"])}


def _time_to(rl: RunLog, target: float) -> float | None:
    t = seconds_to(rl.table("epochs"), target)
    return t if math.isfinite(t) else None


def _wire_bytes(rl: RunLog) -> int:
    rec = rl.records()
    return int(rec["wire_bytes"].sum()) if rec else 0


def _err(model: float, measured: float) -> float:
    return model / measured - 1 if measured else math.nan


def folder_row(d: Path, target: float | None = None) -> dict:
    """One configuration's (one round's) measured and modelled figures (see the module docstring)."""
    need = [d / f for f in ("bgd.h5", "hes.h5", "links.json")]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise UsageError(f"{d}: not a finished cluster bench folder ({', '.join(missing)} missing)")
    if target is None:
        with RunLog(str(d / "bgd.h5")) as rl:
            target = float(rl.summary()["dev_acc"]) - BELOW_REFERENCE
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
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


#: Figures shown with their range over the rounds.
SPREAD = ("bgd_epoch_s", "hes_epoch_s", "hes_over_bgd", "bgd_to_target_s", "hes_to_target_s", "bgd_emulated_epoch_s")


def config_row(d: Path, target: float | None = None) -> dict:
    """One configuration's row: :func:`folder_row` of its folder, or the median of its rounds' rows with
    the range of the :data:`SPREAD` figures (a time to target that a round never reached counts as NaN)."""
    rounds = sorted((x for x in d.glob("round*") if x.is_dir()), key=lambda x: int(x.name[5:] or 0))
    if not rounds:
        return {**folder_row(d, target), "rounds": 1}
    rows = [folder_row(x, target) for x in rounds]
    out: dict = {"rounds": len(rows)}
    for k, v in rows[0].items():
        values = [r.get(k) for r in rows]
        if all(x == v for x in values) and k not in SPREAD:  # the same in every round (nodes, rate, target)
            out[k] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool) or v is None and k in SPREAD:
            arr = np.array([math.nan if x is None else x for x in values], dtype=float)
            finite = arr[np.isfinite(arr)]
            out[k] = float(np.median(finite)) if finite.size else math.nan
            if k in SPREAD:
                out[f"{k}_min"] = float(finite.min()) if finite.size else math.nan
                out[f"{k}_max"] = float(finite.max()) if finite.size else math.nan
                out[f"{k}_n"] = int(finite.size)
        else:
            out[k] = v
    out["folder"] = d.name
    return out


def _spread(r: dict, key: str, fmt=_s) -> str:
    """'0.71' or, over several rounds, '0.71 (0.69-0.80)', with 'k of n' when some rounds have no value; a time
    to target that no round reached is 'never'."""
    v = r.get(key)
    if key.endswith("_to_target_s") and (v is None or (isinstance(v, float) and math.isnan(v))):
        return "never"
    text = fmt(v)
    if r.get("rounds", 1) > 1 and f"{key}_min" in r and math.isfinite(r[f"{key}_min"]):
        text += f" ({fmt(r[f'{key}_min'])}-{fmt(r[f'{key}_max'])})"
        if r[f"{key}_n"] < r["rounds"]:
            text += f" [{r[f'{key}_n']} of {r['rounds']}]"
    return text


def markdown(rows: list[dict]) -> str:
    """Three Markdown tables: time, the model's error per step kind, bytes on the links."""
    rounds = max((r.get("rounds", 1) for r in rows), default=1)
    out = ([f"Medians over {rounds} interleaved rounds (smallest-largest in brackets).", ""] if rounds > 1 else []) + [
        ("| nodes | link | BGD epoch (s) | H-ES epoch (s) | H-ES / BGD | target dev | BGD to target (s) "
        "| H-ES to target (s) | BGD, --emulate-net (s) |"),
        "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['nodes']} | {r['rate']} | {_spread(r, 'bgd_epoch_s')} | {_spread(r, 'hes_epoch_s')} | "
                   f"{_spread(r, 'hes_over_bgd')} | {100 * r['target']:.2f}% | {_spread(r, 'bgd_to_target_s')} | "
                   f"{_spread(r, 'hes_to_target_s')} | {_spread(r, 'bgd_emulated_epoch_s')} |")
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


def table(folders, target: float | None = None) -> tuple[list[dict], str]:
    rows = [config_row(Path(d), target) for d in folders]
    return rows, markdown(rows)
