"""The peer checks against PyTorch (``hes-mpi bench torch``): ``bgd_epoch_vs_torch``, and with
``--compress`` the accuracy and bytes of a compressed exchange against PyTorch's communication hook.

BGD epochs of hes_mpi against PyTorch DistributedDataParallel (gloo, CPU) training the same MLP (the same
hidden layers and activation, softmax cross-entropy, L2 on the weights, plain SGD) on the same rows of the same global
batches, with the same ranks and threads; epochs alternate between the two. Skipped with a message where
torch is missing.

:func:`compress_peer`: BGD with ``--compress fp16`` or ``powersgd:R`` and DDP with ``fp16_compress_hook``
or ``PowerSGDState``/``powerSGD_hook`` (error feedback, warm start, the same rank; the hook's first
``start_powerSGD_iter`` = 2 iterations are plain allreduces, as it requires with error feedback) train
the same epochs from the same start; their final dev accuracies and payload bytes per step (ours from
the instrumented communicator, the hook's from the tensors it passes to ``all_reduce``) side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import socket

import numpy as np

from ..errors import UsageError
from .harness import BenchSetup, interleave, slowest
from .harness import median as _median


def torch_available() -> str | None:
    """None when torch can be imported, else why not."""
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure means: skip)
        return f"torch is not importable ({type(e).__name__}: {e}); pip install torch==2.13.0"
    return None


@contextlib.contextmanager
def _gloo(comm, port: int | None = None):
    """A gloo process group for the body of the ``with``, ended on every rank before the next MPI call.

    gloo's rendezvous: rank 0's address (loopback when every rank is on its node) and a free port there.
    On the way out every rank drops what still holds the group (DDP and its reducer, in the body's
    objects: the caller deletes them), collects garbage, destroys the group and, unless the body raised,
    waits for the others in an MPI barrier, so that rank 0's store outlives every rank's teardown. A group left for the
    interpreter's exit, or a store gone while another rank still tears down, can end a rank in
    ``std::terminate`` ("terminate called without an active exception", seen once in CI)."""
    import torch.distributed as dist

    one_node = comm.local_size() == comm.size
    addr = comm.bcast_str("127.0.0.1" if one_node else socket.gethostname())
    if port is None and comm.rank == 0:
        with socket.socket() as probe:
            probe.bind(("" if not one_node else "127.0.0.1", 0))
            port = probe.getsockname()[1]
    port = int(comm.bcast_str(str(port or 0)))
    comm.set_phase("setup", -1)
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=comm.rank, world_size=comm.size)
    try:
        yield
    finally:
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
    comm.set_phase("setup", -1)
    comm.Barrier()  # not on an exception: the failing rank's error ends the job (run/control.py)


class _TorchMLP:
    """The same MLP in torch, from our flat parameters, under DDP with plain SGD (L2 on the weights only);
    ``epoch(setup, e)`` trains on the same rows of the same global batches as hes_mpi."""

    def __init__(self, comm, cfg, m, theta, hook=None, hook_state=None):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        self.torch, self.m = torch, m
        act = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[m.activation]
        self.linears = [torch.nn.Linear(a, b) for a, b in m.layer_dims]
        modules = []
        for lin in self.linears[:-1]:
            modules += [lin, act()]
        net = torch.nn.Sequential(*modules, self.linears[-1])
        Ws, bs = m.layer_views(theta)
        with torch.no_grad():
            for lin, W, b in zip(self.linears, Ws, bs):
                lin.weight.copy_(torch.from_numpy(W.copy()).T)
                lin.bias.copy_(torch.from_numpy(b.copy()))
        self.net = net
        self.ddp = DistributedDataParallel(net)
        if hook is not None:
            self.ddp.register_comm_hook(hook_state, hook)
        weights = [lin.weight for lin in self.linears]
        biases = [lin.bias for lin in self.linears]
        self.opt = torch.optim.SGD([{"params": weights, "weight_decay": cfg.l2},
                                    {"params": biases, "weight_decay": 0.0}], lr=cfg.lr)
        self.loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
        # DDP averages gradients over ranks: scale each rank's summed loss so that the mean is the
        # global batch mean, as in hes_mpi.
        self.scale = comm.size / cfg.batch

    def epoch(self, setup, e: int) -> None:
        torch = self.torch
        for batch in setup.batches(e):
            X, y = batch.full()
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.ddp(torch.from_numpy(X)), torch.from_numpy(y).long()) * self.scale
            loss.backward()
            self.opt.step()

    def theta(self) -> np.ndarray:
        """The torch parameters in hes_mpi's flat layout."""
        with self.torch.no_grad():
            parts = [p for lin in self.linears for p in (lin.weight.T, lin.bias)]
            return np.concatenate([p.contiguous().numpy().reshape(-1) for p in parts]).astype(np.float32)


def torch_vs_bgd(comm, cfg, epochs: int = 5, warmup: int = 1, port: int | None = None) -> dict:
    """Median BGD epoch time of hes_mpi over that of torch DDP (gloo) on the same rows and ranks."""
    why = comm.agree(torch_available)
    if why is not None:
        return {"bench": "torch", "skipped": why, "bgd_epoch_vs_torch": None}
    import torch

    from ..algorithms import BGD

    cfg = dataclasses.replace(cfg, algo="bgd")
    s = BenchSetup(comm, cfg)
    m = s.model
    torch.set_num_threads(s.threads)
    with _gloo(comm, port):
        peer = _TorchMLP(comm, cfg, m, m.init_params(cfg.seed))

        torch_epoch = functools.partial(peer.epoch, s)
        algo = BGD(cfg, m, comm, s.max_rows, cfg.batch)
        ours = m.init_params(cfg.seed)

        def our_epoch(epoch):
            for batch in s.batches(epoch):
                algo.step(0, ours, batch)

        def timed(epoch_fn):
            def run(e):
                epoch_fn(e)
                comm.Barrier()
            return run

        times = interleave({"o": timed(our_epoch), "t": timed(torch_epoch)}, epochs, warmup, barrier=comm.Barrier,
                           clock=comm.wtime)
        t_ours, t_torch = times["o"], times["t"]
        comm.drain()
        # Same start, same rows, same updates: the two models agree after training (to float32 noise).
        with torch.no_grad():
            tw1 = peer.linears[0].weight.T.numpy().copy()
        drift = float(np.max(np.abs(tw1 - m.views(ours)[0])))
        del peer, torch_epoch  # DDP holds the process group: gone before it is destroyed
    med = slowest(comm, [_median(t_ours), _median(t_torch)])
    return {
        "bench": "torch",
        "ranks": comm.size,
        "threads_per_rank": s.threads,
        "torch": torch.__version__,
        "layers": m.layers,
        "activation": m.activation,
        "batch": cfg.batch,
        "epochs_each": epochs,
        "median_epoch_s_hes_mpi": float(med[0]),
        "median_epoch_s_torch_ddp": float(med[1]),
        "bgd_epoch_vs_torch": float(med[0] / med[1]),
        "max_abs_weight_difference": drift,
    }


def _dev_accuracy(comm, setup, theta: np.ndarray) -> float:
    """Accuracy of ``theta`` on the dev set (each rank its shard, one Allreduce in phase ``eval``)."""
    from .. import kernels

    m, shard = setup.model, setup.shard
    ws = kernels.Workspace(m.hidden, m.n_out, kernels.EVAL_BLOCK)
    buf = np.zeros(2)
    _, buf[0] = kernels.evaluate(shard.x_dev, shard.y_dev, m.layer_views(theta), m.activation_code, ws)
    buf[1] = shard.y_dev.size
    comm.set_phase("eval", -1)
    comm.Allreduce(buf)
    return float(buf[0] / buf[1]) if buf[1] else float("nan")


def compress_peer(comm, cfg, epochs: int, port: int | None = None) -> dict:
    """BGD with ``cfg.compress`` (fp16 or powersgd:R) and DDP with the matching PyTorch hook, the same
    ``epochs`` from the same start on the same rows: final dev accuracy and payload bytes per step of each."""
    from ..config import parse_compress

    name, rank = parse_compress(cfg.compress)
    if name not in ("fp16", "powersgd"):
        raise UsageError(f"bench torch --compress {cfg.compress}: PyTorch has hooks for fp16 and powersgd:R only")
    why = comm.agree(torch_available)
    if why is not None:
        return {"bench": "torch", "compress": cfg.compress, "skipped": why}
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    from ..algorithms import BGD
    from ..schema import PHASES

    cfg = dataclasses.replace(cfg, algo="bgd")
    s = BenchSetup(comm, cfg)
    m = s.model
    torch.set_num_threads(s.threads)
    sent: list[int] = []  # payload bytes of every all_reduce the hook makes
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):
        sent.append(tensor.numel() * tensor.element_size())
        return real_all_reduce(tensor, *args, **kwargs)

    with _gloo(comm, port):
        theta0 = m.init_params(cfg.seed)
        if name == "fp16":
            hook, state = default_hooks.fp16_compress_hook, None
        else:
            state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=int(rank),
                                                start_powerSGD_iter=2, use_error_feedback=True, warm_start=True,
                                                random_seed=cfg.seed)
            hook = powerSGD_hook.powerSGD_hook
        peer = _TorchMLP(comm, cfg, m, theta0, hook, state)
        ours = theta0.copy()
        algo = BGD(cfg, m, comm, s.max_rows, cfg.batch)
        comm.drain()
        for e in range(epochs):
            for batch in s.batches(e):
                algo.step(0, ours, batch)
        rec = comm.drain()
        steps = epochs * sum(1 for _ in s.batches(0))
        ours_bytes = float(rec["bytes_sent"][rec["phase"] == PHASES.index("grad")].sum()) / steps
        dist.all_reduce = counting_all_reduce
        try:
            for e in range(epochs):
                peer.epoch(s, e)
        finally:
            dist.all_reduce = real_all_reduce
        # the hook's steady state: leave out PowerSGD's first 2 iterations, one plain allreduce each (the whole
        # network is one DDP bucket: under its 25 MB default)
        skip = 2 if name == "powersgd" else 0
        torch_bytes = float(sum(sent[skip:]) / (steps - skip)) if steps > skip else float("nan")
        acc_ours = _dev_accuracy(comm, s, ours)
        acc_torch = _dev_accuracy(comm, s, peer.theta())
        del peer, state, hook  # DDP and the hook's state hold the process group: gone before it is destroyed
    return {
        "bench": "torch",
        "compress": cfg.compress,
        "ranks": comm.size,
        "torch": torch.__version__,
        "layers": m.layers,
        "batch": cfg.batch,
        "lr": cfg.lr,
        "epochs": epochs,
        "dev_acc_hes_mpi": acc_ours,
        "dev_acc_torch": acc_torch,
        "dev_acc_difference_points": 100 * (acc_ours - acc_torch),
        "bytes_per_step_hes_mpi": ours_bytes,
        "bytes_per_step_torch": torch_bytes,
        "bytes_per_step_uncompressed": 4.0 * m.param_count,
    }
