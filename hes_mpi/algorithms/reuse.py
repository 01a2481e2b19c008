"""Gradient reuse (``--algo reuse --r R``): H-ES without the search, the control that isolates what it adds.

A full gradient step every R-th iteration (one Allreduce, or its ``--compress`` exchange); in between,
the last gradient is applied again, damped as H-ES's ES steps are (``--es-step``, auto: 1 for r <= 2,
0.7 for r >= 3): theta <- theta - es_step x lr x g. A reuse step reads no rows and sends nothing, so
it is exactly an H-ES step whose candidates all equal the unperturbed one (``--sigma2 0``), without
the K forward passes and the 12-byte MINLOC.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from ..schema import StepKind
from .base import GradientStep, StepInfo, UsesGradientStep


class GradientReuse(UsesGradientStep):
    """A :class:`GradientStep` every r-th iteration, the stored gradient applied again in between."""

    def __init__(self, cfg, model, comm, max_rows: int, global_batch: int):
        self.cfg = cfg
        self.model = model
        self.grad = GradientStep(cfg, model, comm, max_rows, global_batch)
        self.g = self.grad.g

    def work_bytes(self, kind: int, rows: int) -> int:
        """A gradient step's buffers (:meth:`GradientStep.work_bytes`); a reuse step writes none (in place)."""
        return self.grad.work_bytes(rows) if kind == StepKind.GRAD else 0

    def state(self) -> dict:
        return self.grad.state()

    def load_state(self, state: dict) -> None:
        self.grad.load_state(state)

    def step(self, i: int, theta: np.ndarray, batch) -> StepInfo:
        cfg = self.cfg
        if cfg.is_grad_step(i) or not self.grad.has_grad:
            info = StepInfo(kind=StepKind.GRAD)
            X, y = batch.full()
            self.grad.compute(i, theta, X, y, info)
            kernels.sgd_update(theta, self.g, cfg.lr)
            return info
        kernels.sgd_update(theta, self.g, cfg.lr * cfg.effective_es_step)
        return StepInfo(kind=StepKind.REUSE, n_local=batch.n)


__all__ = ["GradientReuse"]
