"""Seeded perturbations: eps(i, n, k) regenerated from (run seed, iteration, rank, k) alone.

Three sources, chosen with ``train --noise``; all give z ~ N(0, I) in float32 and keep no state from one
draw to the next, so any rank can rebuild any other rank's perturbation, in any order, and a resumed
run draws the same numbers:

``philox``
    Each perturbation is its own counter-based stream: NumPy's Philox generator keyed by a SeedSequence of
    ``(tag, seed, iteration, rank, k)``. Exact and independent; costs one pass of the generator per
    candidate (about 4.5 ms for the default network's 238,510 parameters on one core here).
``table``
    A shared noise table, as in OpenAI's evolution strategies: every rank builds the same table of
    standard normals once (from a fixed Philox key), and perturbation (seed, i, n, k) is the slice that
    starts at ``offset = hash(seed, i, n, k) mod (T - P + 1)``. Drawing costs nothing: the candidate
    kernel reads the slice in place. Slices of different candidates may overlap (probability about
    2P/T per pair: 2.8% for the whole default network and its 64 MiB table, 0.2% for its output layer
    and the 12 MiB table that needs), a correlation OpenAI's ES accepted.
``counter``
    Table-free and fast: element j of perturbation (seed, i, n, k) is computed alone, by Philox4x32-10
    (Random123's counter-based generator, in Numba: :mod:`hes_mpi.philox_kernels`) under the 64-bit key
    ``(seed mod 2^32, seed div 2^32)`` of the 128-bit counter ``(j div 4, i, n, k)``, and Box-Muller on
    its four 32-bit words (normals j mod 4 of the block). The run's key (seed, i, n, k) is thus the Philox
    key and counter themselves, without a hash: no two elements of any two perturbations of a run share
    a (key, counter), so perturbations never overlap (unlike the table's slices) and never collide. Any
    chunk of a perturbation is made alone (:func:`counter_normal`'s ``start``); a draw is made tile by
    tile (4096 values, in the L1 cache) straight into the caller's buffer (H-ES's K perturbation buffers,
    or the one vector of ``--perturb all``), and the source holds nothing: about 1.4 ns a value on one
    core here, 0.33 ms for 238,510 parameters (NumPy's Philox: 17 ns a value). Generating inside the
    candidate kernel instead would save at most the pass over that buffer, beside a candidate's forward
    pass of ~10 ms (docs/measurement.md). Limits: iteration, rank and k below 2^32, perturbations of at
    most 2^34 values. The 24-bit uniforms cut the normal's tails at |z| = 5.77 (probability 8e-9).
"""

from __future__ import annotations

import numpy as np

from . import philox_kernels

_TAG = 0xE5_0015E
_TABLE_KEY = 0x7AB1E
SOURCES = ("table", "philox", "counter")
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


def counter_key(seed: int, iteration: int, rank: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``counter`` source's Philox4x32-10 key of perturbation (seed, iteration, rank, k), the seed's two
    32-bit halves, and its counter's words 1..3, (iteration, rank, k) (word 0 is the element index / 4)."""
    seed, iteration, rank, k = int(seed), int(iteration), int(rank), int(k)
    if not (0 <= seed < 1 << 64 and 0 <= iteration < 1 << 32 and 0 <= rank < 1 << 32 and 0 <= k < 1 << 32):
        raise ValueError(f"counter noise key out of range: seed {seed}, iteration {iteration}, rank {rank}, k {k}")
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], dtype=np.uint32)
    return key, np.array([iteration, rank, k], dtype=np.uint32)


def counter_normal(seed: int, iteration: int, rank: int, k: int, n: int, out: np.ndarray | None = None,
                   start: int = 0) -> np.ndarray:
    """Elements ``start`` .. ``start + n - 1`` of perturbation (seed, iteration, rank, k) of the ``counter``
    source (float32), into ``out[:n]`` (a new array if None): any chunk of a perturbation, alone."""
    if out is None:
        out = np.empty(n, dtype=np.float32)
    if start < 0 or start + n > philox_kernels.MAX_ELEMENTS:
        raise ValueError(f"counter noise holds elements 0 .. 2**34 - 1, not {start} .. {start + n - 1}")
    philox_kernels.fill_normals(out[:n], *counter_key(seed, iteration, rank, k), start)
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
    """The perturbation source of a run: ``get(iteration, rank, k, out)`` returns z (float32, length P): a
    read-only view into the table, the ``philox`` draw in this object's buffer, or the ``counter`` draw in
    ``out`` (a new array when None)."""

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

    def get(self, iteration: int, rank: int, k: int, out: np.ndarray | None = None) -> np.ndarray:
        if self._table is not None:
            return self._table.get(self.seed, iteration, rank, k)
        if self.source == "counter":
            return counter_normal(self.seed, iteration, rank, k, self.n, out=out)
        return standard_normal(self.seed, iteration, rank, k, self.n, out=self._buf)
