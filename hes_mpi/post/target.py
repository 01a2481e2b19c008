"""Time to accuracy: how long a run trains before its dev accuracy first reaches a target.

The question users ask of a method is not how long it trains but how long it takes to reach an accuracy.
Every table with a training time carries this beside it (:mod:`.tables`, :mod:`.study`, :mod:`.size`,
:mod:`.clustertables`):

- the **target** is the reference's (the first BGD configuration without compression) mean final dev
  accuracy minus 0.5 points, or the user's ``--target``;
- a run's **time to target** is its training time (the epochs' ``epoch_s``, evaluation left out) up to and
  including the first epoch whose dev accuracy reaches the target; a run that never reaches it has none;
- a configuration's is the median over its seeds that reached it, with their range and how many did
  ("14.1 (12.0-16.2; 2 of 5)"); one that no seed brought there says "never".
"""

from __future__ import annotations

import math

import numpy as np

#: The default target: the reference's final dev accuracy minus this (0.5 points).
BELOW_REFERENCE = 0.005


def is_reference(config: dict) -> bool:
    return config.get("algo") == "bgd" and config.get("compress", "none") in ("none", "")


def default_target(groups, target: float | None = None) -> float:
    """``target`` when given, else the mean final dev accuracy of the first reference configuration among
    ``groups`` (lists of runs of one configuration) minus 0.5 points; NaN when there is none."""
    if target is not None:
        return float(target)
    ref = next((g for g in groups if g and is_reference(g[0].config)), None)
    if ref is None:
        return math.nan
    return float(np.mean([r.summary["dev_acc"] for r in ref])) - BELOW_REFERENCE


def seconds_to(epochs: dict, target: float) -> float:
    """Training seconds until the dev accuracy of ``epochs`` (a run log's epochs table) first reaches
    ``target``; NaN when it never does."""
    acc = np.asarray(epochs.get("dev_acc", ()), dtype=float)
    hit = np.nonzero(acc >= target)[0] if math.isfinite(target) else np.array([], dtype=int)
    if not hit.size:
        return math.nan
    return float(np.sum(np.asarray(epochs["epoch_s"], dtype=float)[: hit[0] + 1]))


def group_time_to_target(group, target: float) -> dict:
    """``time_to_target_s`` (median over the seeds that reached ``target``), ``target_reached`` (how many
    did) and ``target`` for one configuration's runs."""
    times = [seconds_to(r.epochs, target) for r in group]
    reached = [t for t in times if math.isfinite(t)]
    return {"target": target, "time_to_target_s": float(np.median(reached)) if reached else math.nan,
            "time_to_target_min_s": min(reached) if reached else math.nan,
            "time_to_target_max_s": max(reached) if reached else math.nan, "target_reached": len(reached)}


def cell(row: dict, seeds: int) -> str:
    """'12.3' (one seed, or every seed at the same time), '12.3 (11.0-13.5)' (the median of the seeds and
    their range), '14.1 (2 of 5)' or '14.1 (12.0-16.2; 2 of 5)' when some never reached it, 'never' when
    none did."""
    if not row.get("target_reached"):
        return "never"
    lo, hi = row.get("time_to_target_min_s", math.nan), row.get("time_to_target_max_s", math.nan)
    notes = [f"{lo:.1f}-{hi:.1f}"] if math.isfinite(lo) and f"{lo:.1f}" != f"{hi:.1f}" else []
    if row["target_reached"] != seeds:
        notes.append(f"{row['target_reached']} of {seeds}")
    return f"{row['time_to_target_s']:.1f}" + (f" ({'; '.join(notes)})" if notes else "")


def header(target: float) -> str:
    return f"time to {100 * target:.2f}% (s)" if math.isfinite(target) else "time to target (s)"


def accuracy_over_time(group) -> tuple[np.ndarray, np.ndarray]:
    """(cumulative training seconds, best dev accuracy so far) per epoch, the medians over the seeds (on
    the epochs every seed has): the curve of the third Pareto panel."""
    runs = [r for r in group if len(r.epochs.get("dev_acc", ()))]
    if not runs:
        return np.array([]), np.array([])
    n = min(len(r.epochs["dev_acc"]) for r in runs)
    t = np.median([np.cumsum(np.asarray(r.epochs["epoch_s"][:n], dtype=float)) for r in runs], axis=0)
    a = np.median([np.maximum.accumulate(np.asarray(r.epochs["dev_acc"][:n], dtype=float)) for r in runs], axis=0)
    return t, a


def add_target_option(parser) -> None:
    """``--target ACC`` on an analysis script's parser (a fraction in (0, 1]; argparse exits 2 otherwise)."""
    import argparse

    def fraction(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not 0 < v <= 1:
            raise argparse.ArgumentTypeError(f"a dev accuracy as a fraction in (0, 1], e.g. 0.96, not {text}")
        return v

    parser.add_argument("--target", type=fraction, default=None, metavar="ACC",
                        help="dev accuracy of the time-to-target columns, as a fraction (default: the reference "
                        "BGD's final mean minus 0.005)")
