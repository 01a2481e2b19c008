"""The MLP: every parameter in one flat contiguous float32 vector, with per-layer views into it.

Layout of ``theta`` (row-major, ``X @ W`` convention), layer by layer from the input:
``W1`` (n_in x h1) | ``b1`` (h1) | ``W2`` (h1 x h2) | ``b2`` (h2) | ... | ``WL`` (h_last x n_out) | ``bL`` (n_out).
The poster's network is ``MLP(784, 300, 10)``: ``W1 | b1 | W2 | b2``. One flat vector means one Allreduce per
gradient step, one vector operation per perturbation and one dataset per checkpoint.

Every hidden layer has the same activation (``sigmoid``, ``relu`` or ``tanh``); the output layer is a
softmax. Weights start from a normal distribution of standard deviation 1 (``normal``, the poster's),
sqrt(2 / (fan_in + fan_out)) (``xavier``, Glorot's) or sqrt(2 / fan_in) (``he``); biases start at zero.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

DTYPE = np.float32
ACTIVATIONS = ("sigmoid", "relu", "tanh")
INITS = ("normal", "xavier", "he")


def parse_hidden(text) -> tuple[int, ...]:
    """``--hidden``: ``300``, ``"300"`` or ``"1024,1024"`` as a tuple of layer widths (ValueError if not
    a comma list of whole numbers >= 1)."""
    if isinstance(text, (int, np.integer)):
        widths = (int(text),)
    elif isinstance(text, (tuple, list)):
        widths = tuple(int(w) for w in text)
    else:
        widths = tuple(int(w) for w in str(text).replace(" ", "").split(","))
    if not widths or min(widths) < 1:
        raise ValueError(f"hidden layer widths must be whole numbers >= 1, got {text!r}")
    return widths


@dataclass(frozen=True)
class MLP:
    n_in: int
    hidden: tuple[int, ...]  # an int (one hidden layer) is accepted and stored as a 1-tuple
    n_out: int
    activation: str = "sigmoid"
    init: str = "normal"

    def __post_init__(self):
        object.__setattr__(self, "hidden", parse_hidden(self.hidden))
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.init not in INITS:
            raise ValueError(f"unknown initialisation {self.init!r}")

    @property
    def dims(self) -> tuple[int, ...]:
        """(n_in, h1, ..., n_out)."""
        return (self.n_in, *self.hidden, self.n_out)

    @property
    def layer_dims(self) -> tuple[tuple[int, int], ...]:
        """(fan_in, fan_out) of every layer, from the input."""
        return tuple(itertools.pairwise(self.dims))

    @property
    def n_layers(self) -> int:
        """Weight matrices (hidden layers + 1)."""
        return len(self.hidden) + 1

    @property
    def activation_code(self) -> int:
        """The activation as the kernels take it (its index in :data:`ACTIVATIONS`)."""
        return ACTIVATIONS.index(self.activation)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        out: list[tuple[int, ...]] = []
        for a, b in self.layer_dims:
            out += [(a, b), (b,)]
        return tuple(out)

    @property
    def layers(self) -> str:
        """The layer sizes, e.g. ``784-300-10``."""
        return "-".join(str(n) for n in self.dims)

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
        return np.array([[o[2 * l], o[2 * l + 1]] for l in range(self.n_layers)], dtype=np.int64)

    def layer_slice(self, l: int) -> slice:
        """Layer ``l``'s weights and bias (0 = the first) as one slice of ``theta``."""
        o = self.offsets
        return slice(o[2 * l], o[2 * l + 2])

    def views(self, theta: np.ndarray) -> tuple[np.ndarray, ...]:
        """(W1, b1, W2, b2, ...) as views into ``theta`` (no copies)."""
        o = self.offsets
        return tuple(theta[o[i] : o[i + 1]].reshape(s) for i, s in enumerate(self.shapes))

    def layer_views(self, theta: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """((W1, W2, ...), (b1, b2, ...)): the tuples the kernels take."""
        v = self.views(theta)
        return v[0::2], v[1::2]

    def init_std(self, l: int) -> float:
        """The standard deviation of layer ``l``'s initial weights."""
        fan_in, fan_out = self.dims[l], self.dims[l + 1]
        if self.init == "xavier":
            return math.sqrt(2.0 / (fan_in + fan_out))
        if self.init == "he":
            return math.sqrt(2.0 / fan_in)
        return 1.0

    def init_params(self, seed: int) -> np.ndarray:
        """Weights from a normal distribution (see the module's docstring), zero biases; one Philox stream
        drawn layer by layer, so the poster's network starts as it always has."""
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x1417, seed])))
        theta = np.zeros(self.param_count, dtype=DTYPE)
        for l, (a, b) in enumerate(self.weight_segments):
            theta[a:b] = rng.standard_normal(b - a, dtype=DTYPE)
            if self.init != "normal":
                theta[a:b] *= np.float32(self.init_std(l))
        return theta

    def l2_term(self, theta: np.ndarray, l2: float) -> float:
        """``l2/2 * ||W||^2`` in float64."""
        s = 0.0
        for (a, b) in self.weight_segments:
            w = theta[a:b].astype(np.float64)
            s += float(w @ w)
        return 0.5 * l2 * s

    def flops_forward(self, rows: int) -> int:
        """Multiply-adds x 2 of one forward pass over ``rows`` examples (the matrix products only)."""
        return 2 * rows * sum(a * b for a, b in self.layer_dims)
