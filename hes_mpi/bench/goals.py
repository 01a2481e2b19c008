"""The speed goals (``hes-mpi bench all``): every goal of the performance issue measured in one MPI job,
with its bound and whether it is met (benchmarks/README.md has the figures)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..log import get_logger
from .collectives import overhead
from .steps import forward, steps
from .torch_peer import torch_vs_bgd

log = get_logger("bench")

#: The goals of the performance issue (benchmarks/README.md): key -> (comparison, bound).
GOALS = {
    "forward_vs_blas": (">=", 0.8),
    "bgd_epoch_vs_torch": ("<=", 1.0),
    "es_over_grad_step": ("<=", 0.6),
    "noise_share": ("<=", 0.10),
    "mem_es_over_grad": ("<=", 0.33),
    "instrumentation_overhead": ("<=", 0.03),
}


def goals_met(result: dict) -> dict:
    """{key: True/False} for every goal key present (and finite) in ``result``."""
    out = {}
    for key, (cmp, bound) in GOALS.items():
        v = result.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            out[key] = bool(v >= bound) if cmp == ">=" else bool(v <= bound)
    return out



def run_all(comm, cfg, smoke: bool = False) -> dict:
    """Every speed goal in one JSON-ready dict (``smoke``: a few repetitions, for tests)."""
    reps = 3 if smoke else 40
    out: dict = {"bench": "all", "ranks": comm.size, "data": cfg.data, "smoke": smoke}
    log.info("bench all: forward passes against BLAS")
    fw = forward(comm, cfg, reps=reps if smoke else 30, warmup=1 if smoke else 3)
    log.info("bench all: gradient and ES steps")
    st = steps(comm, cfg, reps=reps, warmup=1 if smoke else 4)
    log.info("bench all: instrumentation overhead")
    ov = overhead(comm, dataclasses.replace(cfg, algo="bgd"), steps=5 if smoke else 50, warmup=1 if smoke else 5)
    log.info("bench all: BGD epochs against torch DDP")
    tv = torch_vs_bgd(comm, cfg, epochs=1 if smoke else 5, warmup=0 if smoke else 1)
    out.update({
        "forward_vs_blas": fw["forward_vs_blas"],
        "bgd_epoch_vs_torch": tv["bgd_epoch_vs_torch"],
        "es_over_grad_step": st["es_over_grad_step"],
        "noise_share": st["noise_share"],
        "mem_es_over_grad": st["mem_es_over_grad"],
        "instrumentation_overhead": ov["instrumentation_overhead"],
    })
    out["goals_met"] = goals_met(out)
    out["details"] = {"forward": fw, "steps": st, "overhead": ov, "torch": tv}
    return out


