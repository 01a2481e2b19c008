"""The projection report as Markdown, CSV or strict JSON (what ``analysis/project.py`` prints)."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from .projection import CROSSOVER_SEARCH


def _num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 99.5:
        return f"{x:,.0f}"
    x = float(f"{x:.{digits}g}")  # round to significant digits first: 0.99999 -> 1.0
    ax = abs(x)
    if ax >= 0.01:
        return f"{x:.{max(0, digits - 1 - math.floor(math.log10(ax)))}f}"
    return f"{x:.{digits}g}"


def _rate(bytes_per_s: float) -> str:
    gbit = bytes_per_s * 8 / 1e9
    return f"{_num(gbit)} Gbit/s ({_num(bytes_per_s / 1e6)} MB/s)"


def _gbit(beta: float) -> str:
    return "inf" if beta == 0 else _num(8 / beta / 1e9)


def _ms(s) -> str:
    return "-" if s is None else f"{_num(1e3 * s)} ms"


def format_markdown(report: dict, fit_table: bool = False) -> str:
    """The report as Markdown: inputs, networks, projection table, crossovers, the fit and its error."""
    out = []
    sc = report["scaling"]
    out.append(f"## Projected time per epoch ({sc} scaling, one rank per node)\n")
    for c in report["inputs"]:
        parts = [(f"`{c['label']}`: {c['schedule']}, {c['ranks']} ranks, {c['param_count']:,} parameters "
                  f"({4 * c['param_count']:,}-byte gradient), {_num(c['iterations_per_epoch'])} iterations/epoch")]
        for k, what in (("compute_grad_s", "gradient step"), ("compute_es_s", "ES step"),
                        ("compute_assisted_s", "assisted step")):
            if c[k] is not None:
                parts.append(f"compute {_ms(c[k])} per {what}")
        if c.get("ran_on"):
            parts.append(f"measured on {c['ran_on']}")
        out.append("- " + "; ".join(parts))
    if sc == "weak":
        out.append("\nWeak scaling: each node computes as measured per rank; the data set and the global batch "
                   "grow with N, iterations per epoch stay as measured.")
    else:
        out.append("\nStrong scaling: compute x measured ranks / N (optimistic for ES steps, whose noise "
                   "generation does not shrink with the rows).")
    out.append("\n| network | alpha (us) | bandwidth (Gbit/s) | what |\n|---|---|---|---|")
    for n in report["networks"]:
        out.append(f"| {n['name']} | {_num(n['alpha_s'] * 1e6)} | {_gbit(n['beta_s_per_byte'])} | "
                   f"{n['description']} |")
    if report.get("simgrid"):
        out.append("\n| network | nodes | BGD (s/epoch) | SimGrid (model error) | H-ES (s/epoch) | SimGrid (model error) "
                   "| H-ES / BGD |\n|---|---|---|---|---|---|---|")
        for r in report["rows"]:
            sim = [f"{_num(r[f'simgrid_{a}_epoch_s'])} ({100 * r[f'{a}_error_vs_simgrid']:+.1f}%)"
                   if r.get(f"{a}_error_vs_simgrid") is not None else "" for a in ("bgd", "hes")]
            out.append(f"| {r['network']} | {r['nodes']} | {_num(r['bgd_epoch_s'])} | {sim[0]} | "
                       f"{_num(r['hes_epoch_s'])} | {sim[1]} | {_num(r['hes_over_bgd'])} |")
        out.append("\nSimGrid: `hes-mpi simulate` of the same logs on a star of each network's alpha and bandwidth, "
                   "SMPI's factors 1; the replayed steps of one epoch, as the model's figure (neither has the time "
                   "outside the steps). The model error is model / replay - 1.")
    else:
        out.append("\n| network | nodes | BGD (s/epoch) | H-ES (s/epoch) | H-ES / BGD |\n|---|---|---|---|---|")
        for r in report["rows"]:
            out.append(f"| {r['network']} | {r['nodes']} | {_num(r['bgd_epoch_s'])} | {_num(r['hes_epoch_s'])} | "
                       f"{_num(r['hes_over_bgd'])} |")
    if report["crossovers"]:
        out.append("\n### Crossover: where H-ES beats BGD per epoch\n")
        lo, hi = CROSSOVER_SEARCH[0], CROSSOVER_SEARCH[-1]
        for c in report["crossovers"]:
            where = (f"from N = {c['nodes']:,} nodes" if c["nodes"] is not None
                     else f"at no node count {lo}..{hi:,}")
            bw = c["bandwidth_bytes_per_s"]
            if bw is None:
                at = f"on {c['at_nodes']:,} nodes at no bandwidth"
            elif math.isinf(bw):
                at = f"on {c['at_nodes']:,} nodes at any bandwidth"
            else:
                at = f"on {c['at_nodes']:,} nodes when the bandwidth is below {_rate(bw)}"
            out.append(f"- {c['network']}: {where}; {at}")
    fit = report["fit"]
    out.append("\n### This machine: alpha and beta fitted to the logs\n")
    if fit is None:
        out.append(f"No fit: {report['fit_problem']}; the network 'measured' is left out.")
    else:
        out.append(f"alpha = {_num(fit['alpha'] * 1e6)} us, beta = {_num(fit['beta'] * 1e9)} ns/byte "
                   f"({_gbit(fit['beta'])} Gbit/s), from {fit['calls']:,} calls in {len(fit['classes'])} "
                   f"op/size classes (communication only: duration minus waiting; median per class). "
                   f"Model error over the classes: median {100 * fit['median_rel_error']:.0f} %, "
                   f"max {100 * fit['max_rel_error']:.0f} %.")
        ch = report.get("model_check")
        if ch:
            parts = []
            for algo, name in (("bgd", "BGD"), ("hes", "H-ES")):
                if ch[f"{algo}_model_epoch_s"] is not None:
                    parts.append(f"{name} {_num(ch[f'{algo}_model_epoch_s'])} s/epoch modelled vs "
                                 f"{_num(ch[f'{algo}_measured_epoch_s'])} s measured")
            where = sorted({c["ran_on"] for c in report["inputs"] if c.get("ran_on")})
            out.append(f"\nCheck at N = {ch['ranks']} (the runs' own rank count) on the fitted network: "
                       + "; ".join(parts) + " (measured includes waiting and the tool's own work"
                       + (f"; measured on {', '.join(where)}: the model's error against that cluster" if where else "")
                       + ").")
        if fit_table:
            out.append("\n| op | bytes | ranks | calls | measured median (us) | model (us) | error |\n"
                       "|---|---|---|---|---|---|---|")
            for c in fit["classes"]:
                out.append(f"| {c['op']} | {c['nbytes']:,} | {c['ranks']} | {c['calls']:,} | "
                           f"{_num(c['measured_s'] * 1e6)} | {_num(c['predicted_s'] * 1e6)} | "
                           f"{100 * c['rel_error']:+.0f} % |")
    for n in report["notes"]:
        out.append(f"\nNote: {n}.")
    return "\n".join(out)


CSV_COLUMNS = ("network", "alpha_s", "beta_s_per_byte", "nodes", "scaling", "bgd_iteration_s", "bgd_epoch_s",
               "bgd_comm_s", "hes_iteration_s", "hes_epoch_s", "hes_comm_s", "hes_over_bgd")
SIMGRID_COLUMNS = ("simgrid_bgd_epoch_s", "bgd_error_vs_simgrid", "simgrid_hes_epoch_s", "hes_error_vs_simgrid")


def format_csv(report: dict) -> str:
    """The projection rows as CSV (one row per network and node count; empty cells: no such run)."""
    buf = io.StringIO()
    cols = CSV_COLUMNS + (SIMGRID_COLUMNS if report.get("simgrid") else ())
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in report["rows"]:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    return buf.getvalue()


def jsonable(x):
    """``x`` with NaN as None and infinities as the strings "inf"/"-inf" (strict JSON)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
    return x
