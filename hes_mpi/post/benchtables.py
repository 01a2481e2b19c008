"""Tables of benchmark results: a py-spy profile's hot spots, the scaling table of ``bench steps`` runs, and
the runtime of short runs done in interleaved rounds, MPI implementations side by side (what the scripts in
benchmarks/ print)."""

from __future__ import annotations

import numpy as np

STEP_FRAMES = ("HybridES.step", "BGD.step")


def profile_table(raw: str, within: tuple[str, ...] = STEP_FRAMES, top: int = 12) -> list[dict]:
    """The hot spots of a py-spy ``--format raw`` profile (collapsed stacks, one per line with its
    sample count): samples under a frame named in ``within`` (default: the training steps), attributed
    to their innermost hes_mpi frame (a Numba kernel or a BLAS call shows as the line that calls it),
    largest first."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if not any(f.startswith(w + " ") for f in frames for w in within):
            continue
        total += int(n)
        ours = [f for f in frames if "hes_mpi/" in f]
        key = ours[-1] if ours else frames[-1]
        counts[key] = counts.get(key, 0) + int(n)
    rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [{"frame": k, "samples": v, "share": v / total} for k, v in rows] if total else []


def profile_markdown(rows: list[dict]) -> str:
    lines = ["| share of step samples | innermost hes_mpi frame: function (file:line) |", "|---|---|"]
    lines += [f"| {100 * r['share']:.1f}% | `{r['frame']}` |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ scaling
def scaling_markdown(rows: list[dict]) -> str:
    """A table of ``bench steps`` results (one per rank count and scaling mode), as Markdown."""
    head = ("| scaling | ranks | global batch | rows/rank | grad step (ms) | ES step (ms) | ES/grad | "
            "grad bytes/rank | ES bytes/rank | grad speed-up | ES speed-up |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("strong", "weak"):
        sel = sorted((r for r in rows if r.get("scaling") == mode), key=lambda r: r["ranks"])
        if not sel:
            continue
        g1, e1 = sel[0]["median_grad_step_s"], sel[0]["median_es_step_s"]
        for r in sel:
            g, e = r["median_grad_step_s"], r["median_es_step_s"]
            # strong: time(1 rank) / time(p ranks); weak: the same ratio is the efficiency (ideal 1)
            lines.append(f"| {mode} | {r['ranks']} | {r['batch']} | {r['batch'] // r['ranks']} | {1e3 * g:.2f} | "
                         f"{1e3 * e:.2f} | {e / g:.2f} | {r['grad_step_bytes_sent_per_rank']:,.0f} | "
                         f"{r['es_step_bytes_sent_per_rank']:,.0f} | {g1 / g:.2f} | {e1 / e:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ runtime
def runtime_markdown(paths: list[str]) -> str:
    """Runtime of each configuration relative to BGD, from short training runs done in interleaved rounds
    (benchmarks/runtime.sh): per configuration the median over rounds of its training time (the sum of
    its epochs, evaluation excluded), divided by BGD's. Rounds interleave the configurations, so a slow
    spell of the machine lands on all of them instead of on one."""
    from .tables import load_runs

    groups: dict[str, list[float]] = {}
    order: list[str] = []
    for run in load_runs(paths):
        label = run.label
        if label not in groups:
            groups[label] = []
            order.append(label)
        groups[label].append(float(np.sum(run.epochs["epoch_s"])))
    ref = next((lab for lab in order if lab.startswith("Reference")), None)
    if ref is None:
        raise ValueError("no BGD run among the logs: nothing to compare with")
    base = float(np.median(groups[ref]))
    lines = ["| run | rounds | median training time (s) | Runtime |", "|---|---|---|---|"]
    for lab in [ref, *sorted(lab for lab in order if lab != ref)]:
        t = float(np.median(groups[lab]))
        lines.append(f"| {lab} | {len(groups[lab])} | {t:.2f} | {100 * t / base:.1f}% |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ MPIs
def mpis_markdown(rows: list[dict]) -> str:
    """MPI implementations side by side (benchmarks/mpis.sh): the median over rounds of a trivial job's
    wall time, then of ``bench osu``'s average allreduce latency per size, instrumented and raw, with the
    ratio of each MPI to the first one (by name) on the instrumented figures. An MPI launched with flags
    (a row's ``launch``) is a column of its own."""
    startup: dict[str, list[float]] = {}
    lat: dict[tuple[str, bool, int], list[float]] = {}

    def label(r):  # the MPI and the launcher's flags, if any
        return f"{r['mpi']} {r['launch']}".strip() if r.get("launch") else r["mpi"]

    for r in rows:
        if r.get("bench") == "startup":
            startup.setdefault(label(r), []).append(float(r["seconds"]))
        elif r.get("bench") == "osu":
            for row in r["rows"]:
                lat.setdefault((label(r), bool(r["raw"]), int(row["size"])), []).append(float(row["avg_us"]))
    mpis = sorted({k[0] for k in lat} | set(startup))
    if not mpis:
        return "(no results)"
    lines = ["| MPI | 2-rank job, start to end (s): median (range) | rounds |", "|---|---|---|"]
    for m in mpis:
        s = startup.get(m, [])
        if s:
            lines.append(f"| {m} | {np.median(s):.2f} ({min(s):.2f}–{max(s):.2f}) | {len(s)} |")
    sizes = sorted({k[2] for k in lat})
    if sizes:
        ref = mpis[0]
        head = ["size (bytes)"] + [f"{m} (us)" for m in mpis] + [f"{m} / {ref}" for m in mpis[1:]]
        head += [f"{m} raw (us)" for m in mpis]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def med(m, raw, n):
            v = lat.get((m, raw, n))
            return float(np.median(v)) if v else float("nan")

        for n in sizes:
            cells = [f"{n:,}"] + [f"{med(m, False, n):.1f}" for m in mpis]
            cells += [f"{med(m, False, n) / med(ref, False, n):.2f}" for m in mpis[1:]]
            cells += [f"{med(m, True, n):.1f}" for m in mpis]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the scripts
def jsonl_table_main(argv: list[str], usage: str, render, name: str) -> int:
    """The body of a benchmarks/ table script: read the JSON lines file named by the one argument, print
    ``render(rows)``; a missing or bad file is one line on stderr and status 2."""
    import json
    import sys

    if len(argv) != 1:
        print(usage.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        print(f"{name}: error: {argv[0]}: {e}", file=sys.stderr)
        return 2
    print(render(rows))
    return 0
