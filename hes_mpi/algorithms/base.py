"""The algorithm interface: what the training loop, checkpoints and benchmarks may rely on.

Every training method is a class with the :class:`Algorithm` methods, built as
``cls(cfg, model, comm, max_rows, global_batch)`` (:func:`hes_mpi.algorithms.make_algorithm`). One call
of :meth:`Algorithm.step` is one iteration on this rank's rows of the global batch; it changes ``theta``
in place, makes every collective through ``comm`` (the instrumented communicator, or its raw twin in
probes), and returns a :class:`StepInfo`. Methods that take full gradient steps compose a
:class:`GradientStep`, which owns the gradient buffer and its one Allreduce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .. import kernels
from ..schema import StepKind
from .compress import make_exchange


@dataclass
class StepInfo:
    """What one iteration did, as seen from this rank."""

    kind: int = StepKind.GRAD
    loss_sum: float = math.nan  # summed cross-entropy of this rank's rows at the pre-step theta (grad steps)
    n_local: int = 0
    grad_norm: float = math.nan
    grad_var: float = math.nan
    sigma: float = math.nan
    es_cost: float = math.nan
    es_rank: int = -1
    es_k: int = -1


class Algorithm(Protocol):
    """The interface of a training method."""

    def step(self, i: int, theta: np.ndarray, batch) -> StepInfo:
        """Iteration ``i`` on this rank's rows (a :class:`hes_mpi.data.Batch`); updates ``theta`` in place."""

    def work_bytes(self, kind: int, rows: int) -> int:
        """Bytes of the buffers a step of ``kind`` writes with ``rows`` local examples (the run log's step memory)."""

    def state(self) -> dict:
        """What a checkpoint must keep to continue bitwise-identically: arrays and scalars by name. Called on
        every rank (rank 0 writes what it returns); state that differs between ranks is gathered here."""

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state` (from a checkpoint)."""


class GradientStep:
    """The full minibatch gradient: this rank's rows forward and backward, one in-place Allreduce of the
    flat float32 gradient (payload 4 x param_count bytes; or its compressed exchange, ``--compress``,
    :mod:`.compress`), then the mean over the global batch plus L2."""

    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        self.cfg = cfg
        self.model = model
        self.comm = comm
        self.global_batch = global_batch
        self.g = np.zeros(model.param_count, dtype=np.float32)
        self.g_layers = model.layer_views(self.g)
        self.ws = kernels.Workspace(model.hidden, model.n_out, max_rows)
        self.segments = model.weight_segments
        self.has_grad = False
        self.exchange = make_exchange(cfg, model, comm.size)

    def compute(self, i: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, info: StepInfo) -> np.ndarray:
        """The gradient at ``theta`` into ``self.g`` (phase ``grad``); fills the loss and gradient fields of ``info``."""
        self.backward(i, theta, X, y, info)
        scale = self.exchange.reduce(self.comm, self.g, 1.0 / self.global_batch)
        return self.finish(theta, scale, info)

    def backward(self, i: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, info: StepInfo) -> np.ndarray:
        """This rank's gradient sum over its rows at ``theta`` into ``self.g`` (phase ``grad``, no communication)."""
        self.comm.set_phase("grad", i)
        Ws, bs = self.model.layer_views(theta)
        if X.shape[0]:
            loss, _ = kernels.forward_backward(X, y, Ws, bs, *self.g_layers, self.ws.Hs, self.ws.Z, self.ws.Ds,
                                               self.model.activation_code)
        else:
            self.g[:] = 0.0
            loss = 0.0
        info.loss_sum = loss
        info.n_local = X.shape[0]
        return self.g

    def finish(self, theta: np.ndarray, scale: float, info: StepInfo) -> np.ndarray:
        """g <- g * scale + L2 term; the gradient's norm and variance into ``info``."""
        kernels.finish_gradient(self.g, theta, scale, self.cfg.l2, self.segments)
        _, var, sq = kernels.component_stats(self.g)
        info.grad_norm = math.sqrt(sq)
        info.grad_var = var
        self.has_grad = True
        return self.g

    def batch_bytes(self, rows: int) -> int:
        """Bytes of ``rows`` examples copied out of the shard: float32 features and int32 labels."""
        return rows * (self.model.n_in * 4 + 4)

    def work_bytes(self, rows: int) -> int:
        """Bytes a gradient step writes: the rows copied out of the shard, the flat gradient, the hidden
        activations and their backward pass (2 x rows x width per hidden layer), and the output layer
        (rows x classes)."""
        m = self.model
        return (self.batch_bytes(rows) + self.g.nbytes + rows * (2 * sum(m.hidden) + m.n_out) * 4
                + self.exchange.work_bytes())

    def state(self) -> dict:
        """The last gradient (the same on every rank) and the exchange's state (collective: see
        :meth:`Algorithm.state`)."""
        return {"g": self.g, "has_grad": bool(self.has_grad), **self.exchange.state(self.comm)}

    def load_state(self, state: dict) -> None:
        self.g[:] = state["g"]
        self.has_grad = bool(state["has_grad"])
        self.exchange.load_state(state, self.comm)


class UsesGradientStep:
    """For methods that compose a :class:`GradientStep` as ``self.grad``: their communicator is its
    communicator (benchmarks and the memory probe swap in the raw one by assigning ``comm``)."""

    grad: GradientStep

    @property
    def comm(self):
        return self.grad.comm

    @comm.setter
    def comm(self, comm) -> None:
        self.grad.comm = comm
