"""The peer check against PyTorch (``hes-mpi bench torch``): ``bgd_epoch_vs_torch``.

BGD epochs of hes_mpi against PyTorch DistributedDataParallel (gloo, CPU) training the same MLP (sigmoid
hidden layer, softmax cross-entropy, L2 on the weights, plain SGD) on the same rows of the same global
batches, with the same ranks and threads; epochs alternate between the two. Skipped with a message where
torch is missing.
"""

from __future__ import annotations

import dataclasses
import socket

import numpy as np

from .harness import BenchSetup, interleave, slowest
from .harness import median as _median


def torch_available() -> str | None:
    """None when torch can be imported, else why not."""
    try:
        import torch  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure means: skip)
        return f"torch is not importable ({type(e).__name__}: {e}); pip install torch==2.13.0"
    return None


def torch_vs_bgd(comm, cfg, epochs: int = 5, warmup: int = 1, port: int | None = None) -> dict:
    """Median BGD epoch time of hes_mpi over that of torch DDP (gloo) on the same rows and ranks."""
    why = comm.agree(torch_available)
    if why is not None:
        return {"bench": "torch", "skipped": why, "bgd_epoch_vs_torch": None}
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ..algorithms import BGD

    cfg = dataclasses.replace(cfg, algo="bgd")
    s = BenchSetup(comm, cfg)
    m = s.model
    torch.set_num_threads(s.threads)
    # gloo's rendezvous: rank 0's address (loopback when every rank is on its node) and a free port there.
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
        theta = m.init_params(cfg.seed)
        W1, b1, W2, b2 = (torch.from_numpy(v.copy()) for v in m.views(theta))
        net = torch.nn.Sequential(torch.nn.Linear(m.n_in, m.hidden), torch.nn.Sigmoid(),
                                  torch.nn.Linear(m.hidden, m.n_out))
        with torch.no_grad():
            net[0].weight.copy_(W1.T)
            net[0].bias.copy_(b1)
            net[2].weight.copy_(W2.T)
            net[2].bias.copy_(b2)
        ddp = DistributedDataParallel(net)
        weights = [net[0].weight, net[2].weight]
        biases = [net[0].bias, net[2].bias]
        opt = torch.optim.SGD([{"params": weights, "weight_decay": cfg.l2}, {"params": biases, "weight_decay": 0.0}],
                              lr=cfg.lr)
        loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
        # DDP averages gradients over ranks: scale each rank's summed loss so that the mean is the
        # global batch mean, as in hes_mpi.
        scale = comm.size / cfg.batch

        def torch_epoch(epoch):
            for batch in s.batches(epoch):
                X, y = batch.full()
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(ddp(torch.from_numpy(X)), torch.from_numpy(y).long()) * scale
                loss.backward()
                opt.step()

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
            tw1 = net[0].weight.T.numpy()
        drift = float(np.max(np.abs(tw1 - m.views(ours)[0])))
    finally:
        dist.destroy_process_group()
    med = slowest(comm, [_median(t_ours), _median(t_torch)])
    return {
        "bench": "torch",
        "ranks": comm.size,
        "threads_per_rank": s.threads,
        "torch": torch.__version__,
        "layers": m.layers,
        "batch": cfg.batch,
        "epochs_each": epochs,
        "median_epoch_s_hes_mpi": float(med[0]),
        "median_epoch_s_torch_ddp": float(med[1]),
        "bgd_epoch_vs_torch": float(med[0] / med[1]),
        "max_abs_weight_difference": drift,
    }


