"""Data-parallel batch gradient descent: local gradient, one Allreduce, the same update everywhere."""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..schema import StepKind
from .base import GradientStep, StepInfo, UsesGradientStep


class BGD(UsesGradientStep):
    """Batch gradient descent over the flat parameter vector (an :class:`~hes_mpi.algorithms.base.Algorithm`)."""

    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        self.cfg = cfg
        self.model = model
        self.grad = GradientStep(cfg, model, comm, max_rows, global_batch)

    @property
    def g(self) -> np.ndarray:
        """The last full gradient."""
        return self.grad.g

    def work_bytes(self, kind: int, rows: int) -> int:
        """Bytes of the buffers a step writes with ``rows`` local examples (see :meth:`GradientStep.work_bytes`)."""
        return self.grad.work_bytes(rows)

    def state(self) -> dict:
        return self.grad.state()

    def load_state(self, state: dict) -> None:
        self.grad.load_state(state)

    def step(self, i: int, theta: np.ndarray, batch) -> StepInfo:
        """One iteration on this rank's rows of the global batch (a :class:`hes_mpi.data.Batch`)."""
        info = StepInfo(kind=StepKind.GRAD)
        X, y = batch.full()
        self.grad.compute(i, theta, X, y, info)
        kernels.sgd_update(theta, self.grad.g, self.cfg.lr)
        return info
