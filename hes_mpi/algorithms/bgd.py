"""Data-parallel batch gradient descent: local gradient, one Allreduce, the same update everywhere."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import kernels

KIND_GRAD = 0
KIND_ES = 1
KIND_ASSISTED = 2
KINDS = ("grad", "es", "assisted")


@dataclass
class StepInfo:
    """What one iteration did, as seen from this rank."""

    kind: int = KIND_GRAD
    loss_sum: float = math.nan  # summed cross-entropy of this rank's rows at the pre-step theta (grad steps)
    n_local: int = 0
    grad_norm: float = math.nan
    grad_var: float = math.nan
    sigma: float = math.nan
    es_cost: float = math.nan
    es_rank: int = -1
    es_k: int = -1


class BGD:
    """Batch gradient descent over the flat parameter vector."""

    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        self.cfg = cfg
        self.model = model
        self.comm = comm
        self.global_batch = global_batch
        self.g = np.zeros(model.param_count, dtype=np.float32)
        self.g_views = model.views(self.g)
        self.ws = kernels.Workspace(model.hidden, model.n_out, max_rows)
        self.segments = model.weight_segments
        self.has_grad = False

    def gradient(self, i: int, theta: np.ndarray, X: np.ndarray, y: np.ndarray, info: StepInfo) -> np.ndarray:
        """The full minibatch gradient (mean over the global batch, plus L2) into ``self.g``."""
        self.comm.set_phase("grad", i)
        W = self.model.views(theta)
        if X.shape[0]:
            loss, _ = kernels.forward_backward(X, y, *W, *self.g_views, self.ws.H, self.ws.Z, self.ws.D)
        else:
            self.g[:] = 0.0
            loss = 0.0
        info.loss_sum = loss
        info.n_local = X.shape[0]
        self.comm.Allreduce(self.g)  # in place: payload = the flat gradient, 4 x param_count bytes
        kernels.finish_gradient(self.g, theta, 1.0 / self.global_batch, self.cfg.l2, self.segments)
        _, var, sq = kernels.component_stats(self.g)
        info.grad_norm = math.sqrt(sq)
        info.grad_var = var
        self.has_grad = True
        return self.g

    def _batch_bytes(self, rows: int) -> int:
        return rows * (self.model.n_in * 4 + 4)  # float32 rows and int32 labels

    def work_bytes(self, kind: int, rows: int) -> int:
        """Bytes of the buffers a step of ``kind`` writes with ``rows`` local examples.

        Gradient step: the rows copied out of the shard, the flat gradient, hidden activations and their backward pass
        (2 x rows x hidden), and the output layer (rows x classes).
        """
        m = self.model
        return self._batch_bytes(rows) + self.g.nbytes + rows * (2 * m.hidden + m.n_out) * 4

    def extra_state(self) -> dict:
        """Scalars a checkpoint keeps besides theta and g (none for BGD)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def step(self, i: int, theta: np.ndarray, batch) -> StepInfo:
        """One iteration on this rank's rows of the global batch (a :class:`hes_mpi.data.Batch`)."""
        info = StepInfo(kind=KIND_GRAD)
        X, y = batch.full()
        self.gradient(i, theta, X, y, info)
        kernels.sgd_update(theta, self.g, self.cfg.lr)
        return info
