"""Local SGD (``--algo localsgd --r H``): every rank steps on its own rows, parameters averaged every H
iterations (periodic model averaging, as in post-local SGD).

Each iteration every rank computes the gradient of its own rows of the global batch (their mean, plus
L2) at its own parameters and steps with ``--lr``, sending nothing (step kind ``local``); at every
H-th iteration (i + 1 divisible by H) it then averages the parameters with one Allreduce of the flat
float32 vector, the same payload as a BGD step (kind ``average``, phase ``grad``). With H = 1 on equal
shards this is BGD up to rounding; on one rank it is BGD exactly.

The trainer's ``theta`` is the last average: the same on every rank, so consistency checks,
evaluations, checkpoints and the final parameters all see one model; each rank's own parameters
between averages are this method's state, and a checkpoint gathers them from every rank
(:meth:`LocalSGD.state` is collective).
"""

from __future__ import annotations

import math

import numpy as np

from .. import kernels
from ..schema import StepKind
from .base import GradientStep, StepInfo, UsesGradientStep
from .compress import gather_rows, my_row


class LocalSGD(UsesGradientStep):
    """Local steps on every rank's own rows, one parameter Allreduce every ``r`` iterations."""

    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        self.cfg = cfg
        self.model = model
        self.grad = GradientStep(cfg, model, comm, max_rows, global_batch)
        self.local = np.zeros(model.param_count, dtype=np.float32)
        self.has_local = False  # False: this rank's parameters are the trainer's theta

    def work_bytes(self, kind: int, rows: int) -> int:
        """A gradient step's buffers (:meth:`GradientStep.work_bytes`) and this rank's parameters."""
        return self.grad.work_bytes(rows) + self.local.nbytes

    def state(self) -> dict:
        """Every rank's own parameters (gathered to rank 0: call on every rank), and whether they differ
        from theta."""
        local = self.local if self.has_local else np.zeros(0, dtype=np.float32)
        return {"has_local": bool(self.has_local), "local_all": gather_rows(self.comm, local)}

    def load_state(self, state: dict) -> None:
        self.has_local = bool(state["has_local"])
        if self.has_local:
            self.local[:] = my_row(self.comm, state["local_all"])

    def step(self, i: int, theta: np.ndarray, batch) -> StepInfo:
        cfg = self.cfg
        if not self.has_local:
            self.local[:] = theta
            self.has_local = True
        X, y = batch.full()
        info = StepInfo(kind=StepKind.LOCAL)
        self.grad.backward(i, self.local, X, y, info)
        self.grad.finish(self.local, 1.0 / max(1, X.shape[0]), info)
        kernels.sgd_update(self.local, self.grad.g, cfg.lr)
        if (i + 1) % cfg.r == 0:
            info.kind = StepKind.AVERAGE
            comm = self.comm
            comm.Allreduce(self.local)  # in place: the flat parameters, 4 x param_count bytes
            np.divide(self.local, np.float32(comm.size), out=self.local)
            theta[:] = self.local
            if not np.isfinite(kernels.sum_squares(theta)):  # the same on every rank: all stop together
                info.grad_norm = math.nan
        return info


__all__ = ["LocalSGD"]
