"""Training algorithms: one step each, same interface (``step(i, theta, batch) -> StepInfo``)."""

from .bgd import BGD, StepInfo
from .hes import HybridES


def make_algorithm(cfg, model, comm, max_rows: int, global_batch: int):
    cls = HybridES if cfg.algo == "hes" else BGD
    return cls(cfg, model, comm, max_rows, global_batch)


__all__ = ["BGD", "HybridES", "StepInfo", "make_algorithm"]
