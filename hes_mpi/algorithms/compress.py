"""The exchange of a gradient step (``--compress``): exact, fp16, top-k or PowerSGD.

A gradient step sums every rank's gradient over the global batch. :func:`make_exchange` gives the
object that does it for :class:`~hes_mpi.algorithms.base.GradientStep`: ``reduce(comm, g, inv_batch)``
turns this rank's gradient sum ``g`` into the sum over all ranks, every byte through ``comm`` (the
instrumented communicator records payload and wire bytes as for any call), and returns the factor
still to apply (the exact exchange leaves the division by the batch to the caller, as before; the
compressed ones work on this rank's share of the mean, ``g / batch``, so their error feedback does
not depend on the batch size, and return 1).

``none``
    One in-place Allreduce of the float32 vector (4 bytes per parameter).
``fp16``
    The share cast to float16, one Allreduce of it (2 bytes per parameter; summed by the user operation
    ``half_sum`` of :mod:`hes_mpi.comm`, as MPICH sums float16 but in a Numba kernel), cast back (PyTorch's ``fp16_compress_hook``: divide by the world size, cast, allreduce).
``topk:F``
    Error feedback (e <- e + share), the k = ceil(F n) entries of largest magnitude of e sent as
    (int32 index, float32 value) pairs in one Allgather (8k bytes sent per rank), e <- 0 at the sent
    entries; every rank adds all ranks' pairs in rank order, so every rank gets the same sum.
``powersgd:R``
    PowerSGD (Vogels et al., 2019) as PyTorch's ``powerSGD_hook`` does it: error feedback (M = share + e),
    a weight matrix (n x m) is compressed when n m >= 2 (n + m) R (the hook's ``min_compression_rate``
    of 2), the rest (biases, small matrices) goes in one uncompressed Allreduce; then P = M Q, Allreduce
    of all P, orthonormal columns (QR), Q = Mᵀ P, Allreduce of all Q, approximation P Qᵀ; Q is kept for
    the next step (warm start) and e <- M - (approximation) / ranks (each rank's part of the error; the
    hook's ``M - mean`` scaled to this module's shares). Up to 3 Allreduces per step.

Error feedback is each rank's own: a checkpoint gathers every rank's (``state`` is collective).

The element-wise work (the float16 cast, top-k's selection and sum, PowerSGD's error feedback) runs in the
Numba kernels of :mod:`hes_mpi.compress_kernels`, which give exactly what the NumPy code they replaced gave
(the runs' recorded final parameters are unchanged); PowerSGD's matrix products and QR stay NumPy's.
"""

from __future__ import annotations

import math

import numpy as np

from .. import compress_kernels
from ..config import parse_compress


def make_exchange(cfg, model, size: int):
    """The exchange ``--compress`` names, for ``model`` on ``size`` ranks."""
    name, value = parse_compress(cfg.compress)
    if name == "fp16":
        return FP16(model)
    if name == "topk":
        return TopK(model, size, value)
    if name == "powersgd":
        return PowerSGD(model, size, int(value), cfg.seed)
    return Exact()


def gather_rows(comm, a: np.ndarray) -> np.ndarray:
    """Every rank's ``a`` (each rank's own error feedback), concatenated in rank order on rank 0 (``a`` elsewhere)."""
    out = comm.Gatherv(a)
    return out if out is not None else a


def my_row(comm, gathered) -> np.ndarray:
    """This rank's part of what :func:`gather_rows` stored."""
    return np.asarray(gathered).reshape(comm.size, -1)[comm.rank]


class Exact:
    """One in-place Allreduce of the float32 gradient sum (the caller divides by the batch)."""

    name = "none"

    def reduce(self, comm, g: np.ndarray, inv_batch: float) -> float:
        comm.Allreduce(g)  # in place: payload = the flat gradient, 4 x param_count bytes
        return inv_batch

    def work_bytes(self) -> int:
        return 0

    def state(self, comm) -> dict:
        """What a checkpoint keeps (collective: every rank calls it; per-rank arrays are gathered to rank 0)."""
        return {}

    def load_state(self, state: dict, comm) -> None:
        pass


class FP16(Exact):
    """This rank's share of the mean in float16, summed by one Allreduce (2 bytes per parameter)."""

    name = "fp16"

    def __init__(self, model):
        self.h = np.empty(model.param_count, dtype=np.float16)

    def reduce(self, comm, g: np.ndarray, inv_batch: float) -> float:
        bits = self.h.view(np.uint16)
        compress_kernels.pack_fp16(g, np.float32(inv_batch), bits)  # NumPy's float32 -> float16, in one pass
        comm.Allreduce(bits, op="half_sum")  # summed by our kernel, not the MPI's own (software) float16 sum
        compress_kernels.unpack_fp16(bits, g)
        return 1.0

    def work_bytes(self) -> int:
        return self.h.nbytes


class TopK(Exact):
    """Top-k sparsification with error feedback; (index, value) pairs exchanged by one Allgather."""

    name = "topk"

    def __init__(self, model, size: int, fraction: float):
        n = model.param_count
        self.k = min(n, max(1, math.ceil(fraction * n)))
        self.error = np.zeros(n, dtype=np.float32)
        self.send = np.empty(2 * self.k, dtype=np.int32)  # k indices, then k float32 values (their bits)
        self.recv = np.empty(size * 2 * self.k, dtype=np.int32)
        self.cand = np.empty(n + 1, dtype=np.int32)  # the selection's work array
        self.size = size

    def reduce(self, comm, g: np.ndarray, inv_batch: float) -> float:
        k = self.k
        compress_kernels.topk_select(g, np.float32(inv_batch), self.error, k, self.send[:k],
                                     self.send[k:].view(np.float32), self.cand)
        comm.Allgather(self.send, self.recv)
        compress_kernels.topk_scatter(self.recv, self.recv.view(np.float32), self.size, k, g)
        return 1.0

    def work_bytes(self) -> int:
        return self.error.nbytes + self.send.nbytes + self.recv.nbytes + self.cand.nbytes

    def state(self, comm) -> dict:
        return {"compress_error": gather_rows(comm, self.error)}

    def load_state(self, state: dict, comm) -> None:
        self.error[:] = my_row(comm, state["compress_error"])


class PowerSGD(Exact):
    """Rank-R PowerSGD with error feedback and warm start; biases and small matrices uncompressed."""

    name = "powersgd"

    def __init__(self, model, size: int, rank: int, seed: int):
        self.size = size
        self.R = rank
        o = model.offsets
        self.matrices = []  # (start, n, m) of each compressed weight matrix in theta
        plain = []  # (start, stop) of everything sent uncompressed
        for j, shape in enumerate(model.shapes):
            a, b = o[j], o[j + 1]
            if len(shape) == 2 and shape[0] * shape[1] >= 2 * (shape[0] + shape[1]) * rank:
                self.matrices.append((a, *shape))
            else:
                plain.append((a, b))
        self.plain = plain
        self.error = np.zeros(model.param_count, dtype=np.float32)
        self.flat_plain = np.empty(sum(b - a for a, b in plain), dtype=np.float32)
        self.P = np.empty(sum(n * rank for _, n, _ in self.matrices), dtype=np.float32)
        self.Q = np.empty(sum(m * rank for _, _, m in self.matrices), dtype=np.float32)
        rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([0x5D6, seed])))
        self.Q[:] = rng.standard_normal(self.Q.size, dtype=np.float32)  # the same on every rank
        self.views = list(self._views())

    def _views(self):
        p = q = 0
        for a, n, m in self.matrices:
            yield a, n, m, self.P[p : p + n * self.R].reshape(n, self.R), \
                self.Q[q : q + m * self.R].reshape(m, self.R)
            p += n * self.R
            q += m * self.R

    def reduce(self, comm, g: np.ndarray, inv_batch: float) -> float:
        e = self.error
        compress_kernels.accumulate(g, np.float32(inv_batch), e)  # e is M (this rank's share) until the error below
        views = self.views
        if self.flat_plain.size:
            pos = 0
            for a, b in self.plain:
                self.flat_plain[pos : pos + b - a] = e[a:b]
                pos += b - a
            comm.Allreduce(self.flat_plain)
        if views:
            for a, n, m, P, Q in views:
                np.matmul(e[a : a + n * m].reshape(n, m), Q, out=P)
            comm.Allreduce(self.P)
            for _, _, _, P, _ in views:
                P[:] = np.linalg.qr(P)[0]
            for a, n, m, P, Q in views:
                np.matmul(e[a : a + n * m].reshape(n, m).T, P, out=Q)
            comm.Allreduce(self.Q)
        inv_size = np.float32(1.0 / self.size)
        pos = 0
        for a, b in self.plain:
            g[a:b] = self.flat_plain[pos : pos + b - a]
            pos += b - a
        for a, n, m, P, Q in views:
            np.matmul(P, Q.T, out=g[a : a + n * m].reshape(n, m))
        compress_kernels.subtract_scaled(e, g, inv_size)  # each rank's part of M - approximation
        return 1.0

    def work_bytes(self) -> int:
        return self.error.nbytes + self.flat_plain.nbytes + self.P.nbytes + self.Q.nbytes

    def state(self, comm) -> dict:
        return {"compress_error": gather_rows(comm, self.error), "compress_q": self.Q}  # Q: the same everywhere

    def load_state(self, state: dict, comm) -> None:
        self.error[:] = my_row(comm, state["compress_error"])
        self.Q[:] = state["compress_q"]
