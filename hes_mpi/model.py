"""The MLP: every parameter in one flat contiguous float32 vector, with per-layer views into it.

Layout of ``theta`` (row-major, ``X @ W1`` convention):
``W1`` (n_in x hidden) | ``b1`` (hidden) | ``W2`` (hidden x n_out) | ``b2`` (n_out).
One flat vector means one Allreduce per gradient step, one vector operation per perturbation and
one dataset per checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

DTYPE = np.float32


@dataclass(frozen=True)
class MLP:
    n_in: int
    hidden: int
    n_out: int

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return ((self.n_in, self.hidden), (self.hidden,), (self.hidden, self.n_out), (self.n_out,))

    @property
    def layers(self) -> str:
        """The layer sizes, e.g. ``784-300-10``."""
        return f"{self.n_in}-{self.hidden}-{self.n_out}"

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        off = [0]
        for s in self.shapes:
            off.append(off[-1] + int(np.prod(s)))
        return tuple(off)

    @property
    def param_count(self) -> int:
        return self.offsets[-1]

    @property
    def weight_segments(self) -> np.ndarray:
        """``[[start, stop], ...]`` of the weight matrices in ``theta`` (L2 applies to these only)."""
        o = self.offsets
        return np.array([[o[0], o[1]], [o[2], o[3]]], dtype=np.int64)

    def views(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(W1, b1, W2, b2) as views into ``theta`` (no copies)."""
        o = self.offsets
        return tuple(theta[o[i] : o[i + 1]].reshape(s) for i, s in enumerate(self.shapes))

    def init_params(self, seed: int) -> np.ndarray:
        """Weights from a standard normal, zero biases (the poster's initialisation)."""
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x1417, seed])))
        theta = np.zeros(self.param_count, dtype=DTYPE)
        for (a, b) in self.weight_segments:
            theta[a:b] = rng.standard_normal(b - a, dtype=DTYPE)
        return theta

    def l2_term(self, theta: np.ndarray, l2: float) -> float:
        """``l2/2 * ||W||^2`` in float64."""
        s = 0.0
        for (a, b) in self.weight_segments:
            w = theta[a:b].astype(np.float64)
            s += float(w @ w)
        return 0.5 * l2 * s
