"""Seeded perturbations: eps(i, n, k) regenerated from (run seed, iteration, rank, k) alone.

Each perturbation has its own counter-based stream: a Philox generator keyed by a SeedSequence of
``(tag, seed, iteration, rank, k)``. No state is carried from one draw to the next, so any rank can
rebuild any other rank's perturbation, in any order, and a resumed run draws the same numbers.
"""

from __future__ import annotations

import numpy as np

_TAG = 0xE5_0015E


def perturbation_key(seed: int, iteration: int, rank: int, k: int) -> tuple[int, int, int, int, int]:
    return (_TAG, int(seed), int(iteration), int(rank), int(k))


def standard_normal(seed: int, iteration: int, rank: int, k: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """z ~ N(0, I) in float32, of length ``n``, for perturbation k of rank ``rank`` at ``iteration``."""
    gen = np.random.Generator(np.random.Philox(np.random.SeedSequence(perturbation_key(seed, iteration, rank, k))))
    if out is None:
        out = np.empty(n, dtype=np.float32)
    gen.standard_normal(dtype=np.float32, out=out[:n])
    return out
