"""Training algorithms: one step each, behind one interface (:class:`~hes_mpi.algorithms.base.Algorithm`:
``step(i, theta, batch) -> StepInfo``, ``work_bytes``, ``state``/``load_state``)."""

from .base import Algorithm, GradientStep, StepInfo
from .bgd import BGD
from .hes import HybridES

#: ``--algo`` name -> class.
ALGORITHMS = {"bgd": BGD, "hes": HybridES}


def make_algorithm(cfg, model, comm, max_rows: int, global_batch: int) -> Algorithm:
    return ALGORITHMS[cfg.algo](cfg, model, comm, max_rows, global_batch)


__all__ = ["ALGORITHMS", "BGD", "Algorithm", "GradientStep", "HybridES", "StepInfo", "make_algorithm"]
