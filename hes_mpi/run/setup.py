"""What every run and every step benchmark prepares the same way: BLAS threads, this rank's shard and
the network it sizes, warm kernels, and the run log's ``/environment``."""

from __future__ import annotations

import contextlib
import gc
import platform
import socket
import sys

import numpy as np

from .. import __version__, compress_kernels, kernels, philox_kernels
from ..comm import cpu_count
from ..config import RunConfig
from ..data import Shard, load_shard
from ..model import MLP


def set_threads(comm, requested: int) -> int:
    """Limit BLAS threads per rank: ``requested``, or the node's cores divided by its ranks. The nodes of an
    emulated cluster share this host's cores, so there every rank of the job counts (rank 0's reading of
    the cluster's state decides, for every rank)."""
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS Numba's np.dot calls)
    from threadpoolctl import threadpool_limits

    from ..cluster.state import from_environment

    local = comm.local_size()  # a collective: every rank calls it, whatever it reads below
    sharing = comm.size if comm.decide(lambda: from_environment() is not None) else local
    n = requested or max(1, cpu_count() // sharing)
    threadpool_limits(limits=n, user_api="blas")
    return n


def load_run_data(comm, cfg: RunConfig) -> tuple[Shard, MLP]:
    """This rank's shard (every rank agrees it loaded, and that the options fit the rank count) and the
    network it sizes."""
    shard = comm.agree(load_shard, cfg.data, comm.rank, comm.size, cfg.data_dir, cfg.dev_size)
    comm.agree(cfg.validate_for, comm.size, shard.n_train)
    return shard, MLP(shard.n_features, cfg.hidden, shard.n_classes, cfg.activation, cfg.init)


def warm_kernels(comm, n_hidden: int = 1, compress: bool = False) -> None:
    """Compile (or load cached) kernels for networks of ``n_hidden`` hidden layers, and with ``compress`` those
    of the compressed exchanges, on rank 0 first (concurrent cache writes race), before any step is timed."""
    def warm():
        kernels.warm_up(n_hidden)
        philox_kernels.warm_up()
        if compress:
            compress_kernels.warm_up()

    if comm.rank == 0:
        warm()
    comm.Barrier()
    if comm.rank != 0:
        warm()


def freeze_setup_objects() -> None:
    """Take every object made so far (modules, compiled kernels, data, network, buffers) out of the garbage
    collector's scans (``gc.freeze``), after one last collection, so no garbage is frozen with them. With
    Numba loaded a full collection scans about 110,000 of them, 0.1-0.2 s here: the run log collects after
    each flush (to see late write errors) and Python collects on its own now and then, inside a timed step.
    Frozen, both take microseconds; what is made later is collected as usual."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def setup_objects_frozen():
    """:func:`freeze_setup_objects` for a training run, undone at its end, so that a sweep's next run can
    collect what this one leaves behind."""
    freeze_setup_objects()
    try:
        yield
    finally:
        gc.unfreeze()


def environment(comm, threads: int, shard: Shard, model: MLP, processor_names: list[str] | None = None) -> dict:
    """The run log's ``/environment`` attributes: versions, the MPI library, host, ranks (and the processor
    name of each), threads, data, the emulated network or cluster."""
    import h5py
    import numba

    from ..cluster.state import from_environment

    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numba": numba.__version__,
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "mpi4py": comm.mpi4py_version(),
        "mpi_vendor": comm.vendor(),
        "mpi_library": comm.library_version().splitlines()[0],
        **comm.collective_model(processor_names or []),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "hes_mpi": __version__,
        "ranks": comm.size,
        "threads_per_rank": threads,
        "wtick": comm.wtick(),
        "param_count": model.param_count,
        "layers": model.layers,
        "dataset": shard.name,
        "n_train": shard.n_train,
        "n_dev": shard.n_dev,
        "emulated_network": comm.emulation[0] if comm.emulation else "",
        "emulated_alpha_s": comm.emulation[1] if comm.emulation else 0.0,
        "emulated_beta_s_per_byte": comm.emulation[2] if comm.emulation else 0.0,
        "processor_names": ",".join(processor_names or []),
        **cluster_environment(from_environment()),
    }


def cluster_environment(cluster) -> dict:
    """``emulated_cluster`` (one line), ``cluster_nodes``, ``cluster_link_rates`` and ``cluster`` (its state as
    JSON) for a run on an emulated cluster; empty strings otherwise."""
    import json

    if cluster is None:
        return {"emulated_cluster": "", "cluster": ""}
    return {"emulated_cluster": cluster.describe(), "cluster_nodes": len(cluster.nodes),
            "cluster_link_rates": ",".join(n.rate for n in cluster.nodes),
            "cluster": json.dumps(cluster.to_dict(), sort_keys=True)}
