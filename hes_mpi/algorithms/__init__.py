"""Training algorithms: one step each, behind one interface (:class:`~hes_mpi.algorithms.base.Algorithm`:
``step(i, theta, batch) -> StepInfo``, ``work_bytes``, ``state``/``load_state``)."""

from .base import Algorithm, GradientStep, StepInfo
from .bgd import BGD
from .hes import HybridES
from .localsgd import LocalSGD
from .reuse import GradientReuse

#: ``--algo`` name -> class.
ALGORITHMS = {"bgd": BGD, "hes": HybridES, "reuse": GradientReuse, "localsgd": LocalSGD}


def make_algorithm(cfg, model, comm, max_rows: int, global_batch: int) -> Algorithm:
    return ALGORITHMS[cfg.algo](cfg, model, comm, max_rows, global_batch)


__all__ = ["ALGORITHMS", "BGD", "Algorithm", "GradientReuse", "GradientStep", "HybridES", "LocalSGD", "StepInfo",
           "make_algorithm"]
