"""Seeded perturbations: eps(i, n, k) regenerated from (run seed, iteration, rank, k) alone.

Two sources, chosen with ``train --noise``; both give z ~ N(0, I) in float32 and keep no state from one
draw to the next, so any rank can rebuild any other rank's perturbation, in any order, and a resumed
run draws the same numbers:

``philox``
    Each perturbation is its own counter-based stream: a Philox generator keyed by a SeedSequence of
    ``(tag, seed, iteration, rank, k)``. Exact and independent; costs one pass of the generator per
    candidate (about 4.5 ms for the default network's 238,510 parameters on one core here).
``table``
    A shared noise table, as in OpenAI's evolution strategies: every rank builds the same table of
    standard normals once (from a fixed Philox key), and perturbation (seed, i, n, k) is the slice that
    starts at ``offset = hash(seed, i, n, k) mod (T - P + 1)``. Drawing costs nothing: the candidate
    kernel reads the slice in place. Slices of different candidates may overlap (probability about
    2P/T per pair: 2.8% for the whole default network and its 64 MiB table, 0.2% for its output layer
    and the 12 MiB table that needs), a correlation OpenAI's ES accepted.
"""

from __future__ import annotations

import numpy as np

_TAG = 0xE5_0015E
_TABLE_KEY = 0x7AB1E
SOURCES = ("philox", "table")
#: Table length: this many float32 values (64 MiB), or 1024 x the perturbation length when that is
#: smaller (a perturbation of the output layer only needs a small table), and at least 16 x it.
TABLE_MIN = 1 << 24


def perturbation_key(seed: int, iteration: int, rank: int, k: int) -> tuple[int, int, int, int, int]:
    return (_TAG, int(seed), int(iteration), int(rank), int(k))


def standard_normal(seed: int, iteration: int, rank: int, k: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """z ~ N(0, I) in float32, of length ``n``, for perturbation k of rank ``rank`` at ``iteration``."""
    gen = np.random.Generator(np.random.Philox(np.random.SeedSequence(perturbation_key(seed, iteration, rank, k))))
    if out is None:
        out = np.empty(n, dtype=np.float32)
    gen.standard_normal(dtype=np.float32, out=out[:n])
    return out


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def table_offset(seed: int, iteration: int, rank: int, k: int, n: int, table_size: int) -> int:
    """Start of perturbation (seed, iteration, rank, k) of length ``n`` in a table of ``table_size``."""
    h = _TAG
    for v in (seed, iteration, rank, k):
        h = _splitmix64(h ^ (int(v) & _M64))
    return h % (table_size - n + 1)


class NoiseTable:
    """The shared table of standard normals (identical on every rank, built once per process)."""

    def __init__(self, n_params: int, size: int | None = None):
        self.size = int(size or max(min(TABLE_MIN, 1024 * n_params), 16 * n_params))
        if self.size < n_params:
            raise ValueError("noise table smaller than the parameter vector")
        gen = np.random.Generator(np.random.Philox(np.random.SeedSequence([_TAG, _TABLE_KEY, self.size])))
        self.table = gen.standard_normal(self.size, dtype=np.float32)
        self.n = n_params

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def get(self, seed: int, iteration: int, rank: int, k: int) -> np.ndarray:
        """Perturbation (seed, iteration, rank, k): a read-only view into the table (no copy)."""
        off = table_offset(seed, iteration, rank, k, self.n, self.size)
        return self.table[off : off + self.n]


class Perturbations:
    """The perturbation source of a run: ``get(iteration, rank, k)`` returns z (float32, length P)."""

    def __init__(self, source: str, seed: int, n_params: int):
        if source not in SOURCES:
            raise ValueError(f"unknown noise source {source!r}")
        self.source = source
        self.seed = seed
        self.n = n_params
        self._buf = np.empty(n_params, dtype=np.float32) if source == "philox" else None
        self._table = NoiseTable(n_params) if source == "table" else None

    @property
    def buffer_bytes(self) -> int:
        """Bytes a step touches for one perturbation (the buffer, or the slice read from the table)."""
        return 4 * self.n

    @property
    def table_bytes(self) -> int:
        return self._table.nbytes if self._table is not None else 0

    def get(self, iteration: int, rank: int, k: int) -> np.ndarray:
        if self._table is not None:
            return self._table.get(self.seed, iteration, rank, k)
        return standard_normal(self.seed, iteration, rank, k, self.n, out=self._buf)
