"""What the commands print about run logs: ``summary`` (one run log's figures, as text, JSON or a Markdown
row), and the tables a finished ``compare`` or ``sweep`` writes next to its run logs and prints."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..runlog import RunLog
from .figures import write_figures
from .study import write_tables
from .tables import load_runs

#: (summary key, column heading) of ``summary --markdown``.
MARKDOWN_COLUMNS = (("run", "run"), ("algo", "algo"), ("ranks", "ranks"), ("r", "r"), ("K", "K"),
                    ("sigma2", "sigma^2"), ("epochs", "epochs"), ("train_acc", "train"), ("dev_acc", "dev"),
                    ("wall_s", "wall (s)"), ("median_epoch_s", "median epoch (s)"))


def summaries(paths) -> list[dict]:
    """``RunLog.summary()`` of each run log, with its file name as ``run``."""
    out = []
    for path in paths:
        with RunLog(path) as rl:
            out.append({"run": os.path.basename(path), **rl.summary()})
    return out


def _cell(key, v) -> str:
    if key in ("train_acc", "dev_acc"):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.3g}" if key in ("sigma2",) else f"{v:.2f}"
    return str(v)


def format_json(rows: list[dict]) -> str:
    """One strict JSON object per run log and line (NaN as null), without the ``run`` key."""
    lines = []
    for s in rows:
        s = {k: v for k, v in s.items() if k != "run"}
        lines.append(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}))
    return "\n".join(lines)


def format_markdown(rows: list[dict]) -> str:
    """A Markdown table, one row per run log (H-ES columns are '-' for BGD)."""
    out = ["| " + " | ".join(h for _, h in MARKDOWN_COLUMNS) + " |", "|" + "---|" * len(MARKDOWN_COLUMNS)]
    for s in rows:
        s = dict(s)
        if s["algo"] == "bgd":
            s["r"] = s["K"] = s["sigma2"] = "-"
        out.append("| " + " | ".join(_cell(k, s[k]) for k, _ in MARKDOWN_COLUMNS) + " |")
    return "\n".join(out)


def format_text(rows: list[dict]) -> str:
    """Every key and value, aligned, a blank line after each run log."""
    out = []
    for s in rows:
        w = max(len(k) for k in s)
        for k, v in s.items():
            out.append(f"{k:<{w}}  {v:.6g}" if isinstance(v, float) else f"{k:<{w}}  {v}")
        out.append("")
    return "\n".join(out)


def report(paths, out_dir, heading: str, figures: bool = True) -> str:
    """Write the accuracy and savings tables (Markdown and CSV) of the run logs ``paths`` into ``out_dir``,
    and the figures with ``figures``; return what to print (the tables, then where everything is)."""
    out = Path(out_dir)
    runs = load_runs(paths)
    tables = write_tables(runs, out)
    text = [f"\nAccuracy ({heading}):\n\n{tables['accuracy']}\n"]
    if tables.get("savings"):
        text.append(f"Savings relative to the reference (measured from the run logs):\n\n{tables['savings']}\n")
    if "comparisons" in tables:
        text.append(f"H-ES against gradient reuse at the same r (Welch's t-test):\n\n{tables['comparisons']}\n")
    if figures:
        pngs = write_figures(runs, out)
        text.append(f"Run logs, tables ({', '.join(f'{k}.md/.csv' for k in tables)}) and figures ({len(pngs)} PNG, "
                    f"pareto.png: accuracy against bytes and time) in {out}/")
    else:
        text.append(f"Run logs and tables ({', '.join(f'{k}.md/.csv' for k in tables)}; pareto.md: the configurations "
                    f"on the accuracy-bytes and accuracy-time fronts) in {out}/")
    return "\n".join(text)
