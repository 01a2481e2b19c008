"""Sharding: which rows of the training set a rank holds, the global batches and a step's rows.

Rank ``n`` of ``p`` owns the contiguous block ``[n*N//p, (n+1)*N//p)`` of the training set and holds
only that block in memory (raw files are memory-mapped and only the block is copied). The dev and
test sets are split the same way for evaluation. Minibatches are drawn from one global permutation
per epoch (see :func:`global_batches`): a global batch is the same set of examples whatever the rank
count, and each rank trains on the members of the batch that fall in its block. H-ES's ``--es-rows F``
costs its candidates on a uniform sample of a rank's rows of the batch, drawn from (seed, iteration, rank)
alone (:func:`sample_positions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Shard:
    """This rank's part of a dataset. ``x_*`` are float32 (rows = examples), ``y_*`` int32."""

    name: str
    n_train: int
    n_dev: int
    n_features: int
    n_classes: int
    lo: int
    hi: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_dev: np.ndarray
    y_dev: np.ndarray


def block(n: int, rank: int, size: int) -> tuple[int, int]:
    """The contiguous block ``[lo, hi)`` of ``n`` items that rank ``rank`` of ``size`` owns."""
    return rank * n // size, (rank + 1) * n // size


def global_batches(n_train: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """The global minibatches of one epoch: an ``(n_train // batch, batch)`` array of example indices.

    One permutation per (seed, epoch), independent of the rank count; the last partial batch is
    dropped.
    """
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x5EED_DA7A, seed, epoch])))
    perm = rng.permutation(n_train)
    nb = n_train // batch
    return perm[: nb * batch].reshape(nb, batch)


#: SeedSequence tag of the ``--es-rows`` draws: their streams are apart from the batches' and the perturbations'.
_ES_ROWS_TAG = 0xE5_20E5


def sample_positions(n: int, fraction: float, seed: int, iteration: int, rank: int) -> np.ndarray:
    """``min(n, ceil(fraction * n))`` distinct positions out of ``range(n)``, in increasing order, drawn
    uniformly without replacement from a Philox stream keyed by a SeedSequence of (seed, iteration, rank):
    the same on every call with the same key, on any rank, and independent of every other draw of the run."""
    m = min(n, math.ceil(fraction * n))
    rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([_ES_ROWS_TAG, seed, iteration, rank])))
    return np.sort(rng.choice(n, m, replace=False))


def local_rows(batch_indices: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The rows of this rank's block (relative to ``lo``) that belong to a global batch, sorted."""
    mine = batch_indices[(batch_indices >= lo) & (batch_indices < hi)]
    mine.sort()
    return mine - lo


class Batch:
    """This rank's examples of one global batch, read from its shard as a whole or in chunks.

    ``Batch(x, y)`` is every row of ``x``/``y``; ``Batch(x, y, rows, xbuf, ybuf)`` is the given rows
    (relative to the shard), copied into ``xbuf``/``ybuf`` only when a step asks for them:
    :meth:`full` copies them all (a gradient step needs the whole batch for its backward pass),
    :meth:`chunks` a few at a time into the head of the buffers (a forward-only ES evaluation touches
    ``chunk`` rows at once, whatever the batch size).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None,
                 xbuf: np.ndarray | None = None, ybuf: np.ndarray | None = None):
        self.x, self.y, self.rows = x, y, rows
        self.xbuf, self.ybuf = xbuf, ybuf
        self.n = x.shape[0] if rows is None else rows.shape[0]
        self._full: tuple[np.ndarray, np.ndarray] | None = None

    def head(self, fraction: float) -> Batch:
        """The first ``ceil(fraction * n)`` rows, in shard order: the low-index rows of the rank's block, not a
        random sample (``--es-rows-sample head``, what ``--es-rows`` ran before :meth:`sample`)."""
        if fraction >= 1.0:
            return self
        m = min(self.n, math.ceil(fraction * self.n))
        if self.rows is None:
            return Batch(self.x[:m], self.y[:m])
        sub = Batch(self.x, self.y, self.rows[:m], self.xbuf, self.ybuf)
        if self._full is not None:
            sub._full = (self._full[0][:m], self._full[1][:m])
        return sub

    def sample(self, fraction: float, key: tuple[int, int, int], how: str = "random") -> Batch:
        """``ceil(fraction * n)`` rows drawn uniformly without replacement, keyed by ``key`` = (seed, iteration,
        rank) (:func:`sample_positions`), in batch order; the whole batch when ``fraction >= 1``. ``how="head"``:
        :meth:`head` instead (``--es-rows-sample``)."""
        if fraction >= 1.0 or how == "head":
            return self.head(fraction)
        p = sample_positions(self.n, fraction, *key)
        if self.rows is None:
            return Batch(self.x[p], self.y[p])
        sub = Batch(self.x, self.y, self.rows[p], self.xbuf, self.ybuf)
        if self._full is not None:  # the batch is already copied out (an assisted step): copy the sample from it
            sub._full = (self._full[0][p], self._full[1][p])
        return sub

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of every row of the batch."""
        if self._full is None:
            if self.rows is None:
                self._full = (self.x, self.y)
            else:
                m = self.n
                # mode="clip": with the default "raise", numpy buffers ``out`` (a hidden copy of the batch)
                self._full = (np.take(self.x, self.rows, axis=0, out=self.xbuf[:m], mode="clip"),
                              np.take(self.y, self.rows, out=self.ybuf[:m], mode="clip"))
        return self._full

    def chunks(self, size: int):
        """(X, y) of at most ``size`` rows at a time, in order. A chunk is valid until the next one."""
        size = max(1, size)
        for a in range(0, self.n, size):
            b = min(a + size, self.n)
            if self._full is not None or self.rows is None:
                X, y = self.full()
                yield X[a:b], y[a:b]
            else:
                idx = self.rows[a:b]
                yield (np.take(self.x, idx, axis=0, out=self.xbuf[: b - a], mode="clip"),
                       np.take(self.y, idx, out=self.ybuf[: b - a], mode="clip"))


