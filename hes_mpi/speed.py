"""The speed goals of hes_mpi, measured (``hes-mpi bench steps|forward|torch|all``).

Every figure is a ratio of two medians measured in the same process, in interleaved repetitions after
a warm-up, because the machines these run on are shared and noisy:

``forward``: ``forward_vs_blas``
    One rank's K-candidate evaluation of an ES step (the forward passes of the default ``train --algo
    hes``, or of ``--plain``), against the bare matrix products of the same shapes timed alone (the BLAS
    bound); 1.0 means the element-wise work (sigmoid, softmax, perturbations) costs nothing.
``steps``: ``es_over_grad_step``, ``noise_share``, ``mem_es_over_grad`` and the step table
    Gradient and ES steps of H-ES (r = 2) alternating on the same batches, through the instrumented
    communicator: median step times, their ratio, the share of the ES step spent producing
    perturbations, bytes sent per rank per step, and the step memory of each kind: the bytes of the
    buffers the step writes plus the transient peak tracemalloc sees while it runs.
``torch``: ``bgd_epoch_vs_torch``
    BGD epochs of hes_mpi against PyTorch DistributedDataParallel (gloo, CPU) training the same MLP
    (sigmoid hidden layer, softmax cross-entropy, L2 on the weights, plain SGD) on the same rows of the
    same global batches, with the same ranks and threads; epochs alternate between the two.
``all``
    Everything above plus ``instrumentation_overhead`` (:func:`hes_mpi.bench.overhead`), as one JSON
    object.
"""

from __future__ import annotations

import dataclasses
import socket
import time

import numpy as np

from . import kernels
from .bench import BenchSetup, slowest
from .log import get_logger

log = get_logger("speed")

#: The goals of the performance issue (benchmarks/README.md): key -> (comparison, bound).
GOALS = {
    "forward_vs_blas": (">=", 0.8),
    "bgd_epoch_vs_torch": ("<=", 1.0),
    "es_over_grad_step": ("<=", 0.6),
    "noise_share": ("<=", 0.10),
    "mem_es_over_grad": ("<=", 0.33),
    "instrumentation_overhead": ("<=", 0.03),
}


def goals_met(result: dict) -> dict:
    """{key: True/False} for every goal key present (and finite) in ``result``."""
    out = {}
    for key, (cmp, bound) in GOALS.items():
        v = result.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v):
            out[key] = bool(v >= bound) if cmp == ">=" else bool(v <= bound)
    return out


def _median(ts) -> float:
    return float(np.median(np.asarray(ts))) if len(ts) else float("nan")


# ------------------------------------------------------------------------------------------ steps
def steps(comm, cfg, reps: int = 40, warmup: int = 4) -> dict:
    """Gradient and ES steps of H-ES (``cfg``, r forced to 2) alternating on the first batches."""
    from .algorithms import HybridES
    from .comm import OPS, PHASES
    from .telemetry import traced_peak

    cfg = dataclasses.replace(cfg, algo="hes", r=2, assisted=False)
    s = BenchSetup(comm, cfg)
    algo = HybridES(cfg, s.model, comm, s.max_rows, cfg.batch)
    theta = s.model.init_params(cfg.seed)
    batches = list(s.batches(0))
    noise_t = []
    real = algo.perturbation

    def timed_perturbation(*a, **kw):
        t = time.perf_counter()
        out = real(*a, **kw)
        noise_t[-1] += time.perf_counter() - t
        return out

    algo.perturbation = timed_perturbation
    t_grad, t_es, share = [], [], []
    comm.drain()
    for i in range(2 * (reps + warmup)):
        batch = batches[(i // 2) % len(batches)]
        noise_t.append(0.0)
        comm.Barrier()
        t0 = comm.wtime()
        algo.step(i, theta, batch)
        dt = comm.wtime() - t0
        if i >= 2 * warmup:
            (t_grad if i % 2 == 0 else t_es).append(dt)
            if i % 2:
                share.append(noise_t[-1] / dt)
    rec = comm.drain()
    algo.perturbation = real
    sent = {}
    for phase in ("grad", "es"):
        sel = (rec["phase"] == PHASES.index(phase)) & (rec["op"] != OPS.index("barrier"))
        n_steps = len(t_grad if phase == "grad" else t_es) + warmup
        sent[phase] = float(rec["bytes_sent"][sel].sum()) / max(n_steps, 1)
    # Step memory: the buffers each kind writes, plus what it allocates while it runs (tracemalloc).
    raw = comm.raw()
    algo.comm = raw
    peak_grad, _ = traced_peak(algo.step, 0, theta.copy(), batches[0])
    peak_es, _ = traced_peak(algo.step, 1, theta.copy(), batches[0])
    algo.comm = comm
    rows = batches[0].n
    mem_grad = algo.work_bytes(0, rows) + peak_grad
    mem_es = algo.work_bytes(1, rows) + peak_es
    med = slowest(comm, [_median(t_grad), _median(t_es), _median(share),
                         float(np.median(np.array(t_es) / np.array(t_grad)))])
    return {
        "bench": "steps",
        "ranks": comm.size,
        "threads_per_rank": s.threads,
        "data": cfg.data,
        "layers": s.model.layers,
        "batch": cfg.batch,
        "K": cfg.K,
        "es_method": _method(cfg),
        "reps": reps,
        "median_grad_step_s": float(med[0]),
        "median_es_step_s": float(med[1]),
        "es_over_grad_step": float(med[1] / med[0]),
        "es_over_grad_step_paired": float(med[3]),
        "noise_share": float(med[2]),
        "grad_step_bytes_sent_per_rank": sent["grad"],
        "es_step_bytes_sent_per_rank": sent["es"],
        "grad_step_memory_bytes": int(mem_grad),
        "es_step_memory_bytes": int(mem_es),
        "mem_es_over_grad": float(mem_es / mem_grad),
    }


def _method(cfg) -> str:
    from .analysis import method_label

    return method_label(cfg.to_dict())


# ------------------------------------------------------------------------------------------ forward
def forward(comm, cfg, reps: int = 30, warmup: int = 3) -> dict:
    """One rank's K-candidate evaluation against the bare matrix products of the same shapes."""
    from .algorithms import HybridES
    from .algorithms.hes import CHUNK_ROWS

    cfg = dataclasses.replace(cfg, algo="hes", r=2, assisted=False)
    s = BenchSetup(comm, cfg)
    algo = HybridES(cfg, s.model, comm.raw(), s.max_rows, cfg.batch)
    m = s.model
    theta = s.model.init_params(cfg.seed)
    batch = next(iter(s.batches(0)))
    algo.step(0, theta, batch)  # a gradient: candidates are built around it
    sigma = algo.sigma()
    ev = batch.head(cfg.es_rows)
    X, _ = ev.full()
    n, K = X.shape[0], cfg.K
    W1, _, W2, _ = m.views(theta)
    rng = np.random.default_rng(0)
    if algo.head_only:
        chunk = min(CHUNK_ROWS, n)
        H = np.empty((chunk, m.hidden), np.float32)
        Z = np.empty((chunk, m.n_out), np.float32)
        Zp = np.empty((chunk, K * m.n_out), np.float32)
        Zcat = rng.standard_normal((m.hidden, K * m.n_out), dtype=np.float32)

        def blas():
            for a in range(0, n, chunk):
                b = min(a + chunk, n)
                np.dot(X[a:b], W1, H[: b - a])
                np.dot(H[: b - a], W2, Z[: b - a])
                np.dot(H[: b - a], Zcat, Zp[: b - a])

        base = theta.copy()  # the ES step applies the base step once, then evaluates around it
        kernels.sgd_update(base, algo.g, cfg.lr)

        def evaluate():
            algo._head_costs(1, base, ev, sigma)
    else:
        H = np.empty((n, m.hidden), np.float32)
        Z = np.empty((n, m.n_out), np.float32)

        def blas():
            for _ in range(K):
                np.dot(X, W1, H)
                np.dot(H, W2, Z)

        def evaluate():
            algo.candidate_costs(1, theta, batch, sigma)

    t_fwd, t_blas = [], []
    for i in range(reps + warmup):
        for name, fn in (("f", evaluate), ("b", blas)) if i % 2 == 0 else (("b", blas), ("f", evaluate)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                (t_fwd if name == "f" else t_blas).append(dt)
    med = slowest(comm, [_median(t_fwd), _median(t_blas)])
    return {
        "bench": "forward",
        "ranks": comm.size,
        "rows": n,
        "K": K,
        "es_method": _method(cfg),
        "median_candidates_s": float(med[0]),
        "median_blas_s": float(med[1]),
        "forward_vs_blas": float(med[1] / med[0]),
    }


# ------------------------------------------------------------------------------------------ torch
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

    from .algorithms import BGD

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

        t_ours, t_torch = [], []
        for e in range(epochs + warmup):
            pair = (("o", our_epoch), ("t", torch_epoch)) if e % 2 == 0 else (("t", torch_epoch), ("o", our_epoch))
            for name, fn in pair:
                comm.Barrier()
                t0 = comm.wtime()
                fn(e)
                comm.Barrier()
                dt = comm.wtime() - t0
                if e >= warmup:
                    (t_ours if name == "o" else t_torch).append(dt)
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


# ------------------------------------------------------------------------------------------ all
def run_all(comm, cfg, smoke: bool = False) -> dict:
    """Every speed goal in one JSON-ready dict (``smoke``: a few repetitions, for tests)."""
    from .bench import overhead

    reps = 3 if smoke else 40
    out: dict = {"bench": "all", "ranks": comm.size, "data": cfg.data, "smoke": smoke}
    log.info("bench all: forward passes against BLAS")
    fw = forward(comm, cfg, reps=reps if smoke else 30, warmup=1 if smoke else 3)
    log.info("bench all: gradient and ES steps")
    st = steps(comm, cfg, reps=reps, warmup=1 if smoke else 4)
    log.info("bench all: instrumentation overhead")
    ov = overhead(comm, dataclasses.replace(cfg, algo="bgd"), steps=5 if smoke else 50, warmup=1 if smoke else 5)
    log.info("bench all: BGD epochs against torch DDP")
    tv = torch_vs_bgd(comm, cfg, epochs=1 if smoke else 5, warmup=0 if smoke else 1)
    out.update({
        "forward_vs_blas": fw["forward_vs_blas"],
        "bgd_epoch_vs_torch": tv["bgd_epoch_vs_torch"],
        "es_over_grad_step": st["es_over_grad_step"],
        "noise_share": st["noise_share"],
        "mem_es_over_grad": st["mem_es_over_grad"],
        "instrumentation_overhead": ov["instrumentation_overhead"],
    })
    out["goals_met"] = goals_met(out)
    out["details"] = {"forward": fw, "steps": st, "overhead": ov, "torch": tv}
    return out


# ------------------------------------------------------------------------------------------ profiles
STEP_FRAMES = ("HybridES.step", "BGD.step")


def profile_table(raw: str, within: tuple[str, ...] = STEP_FRAMES, top: int = 12) -> list[dict]:
    """The hot spots of a py-spy ``--format raw`` profile (collapsed stacks, one per line with its
    sample count): samples under a frame named in ``within`` (default: the training steps), attributed
    to their innermost hes_mpi frame (a Numba kernel or a BLAS call shows as the line that calls it),
    largest first."""
    counts: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if not any(f.startswith(w + " ") for f in frames for w in within):
            continue
        total += int(n)
        ours = [f for f in frames if "hes_mpi/" in f]
        key = ours[-1] if ours else frames[-1]
        counts[key] = counts.get(key, 0) + int(n)
    rows = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [{"frame": k, "samples": v, "share": v / total} for k, v in rows] if total else []


def profile_markdown(rows: list[dict]) -> str:
    lines = ["| share of step samples | innermost hes_mpi frame: function (file:line) |", "|---|---|"]
    lines += [f"| {100 * r['share']:.1f}% | `{r['frame']}` |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ scaling
def scaling_markdown(rows: list[dict]) -> str:
    """A table of ``bench steps`` results (one per rank count and scaling mode), as Markdown."""
    head = ("| scaling | ranks | global batch | rows/rank | grad step (ms) | ES step (ms) | ES/grad | "
            "grad bytes/rank | ES bytes/rank | grad speed-up | ES speed-up |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("strong", "weak"):
        sel = sorted((r for r in rows if r.get("scaling") == mode), key=lambda r: r["ranks"])
        if not sel:
            continue
        g1, e1 = sel[0]["median_grad_step_s"], sel[0]["median_es_step_s"]
        for r in sel:
            g, e = r["median_grad_step_s"], r["median_es_step_s"]
            # strong: time(1 rank) / time(p ranks); weak: the same ratio is the efficiency (ideal 1)
            lines.append(f"| {mode} | {r['ranks']} | {r['batch']} | {r['batch'] // r['ranks']} | {1e3 * g:.2f} | "
                         f"{1e3 * e:.2f} | {e / g:.2f} | {r['grad_step_bytes_sent_per_rank']:,.0f} | "
                         f"{r['es_step_bytes_sent_per_rank']:,.0f} | {g1 / g:.2f} | {e1 / e:.2f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ runtime
def runtime_markdown(paths: list[str]) -> str:
    """Runtime of each configuration relative to BGD, from short training runs done in interleaved rounds
    (benchmarks/runtime.sh): per configuration the median over rounds of its training time (the sum of
    its epochs, evaluation excluded), divided by BGD's. Rounds interleave the configurations, so a slow
    spell of the machine lands on all of them instead of on one."""
    from .analysis import load_runs

    groups: dict[str, list[float]] = {}
    order: list[str] = []
    for run in load_runs(paths):
        label = run.label
        if label not in groups:
            groups[label] = []
            order.append(label)
        groups[label].append(float(np.sum(run.epochs["epoch_s"])))
    ref = next((lab for lab in order if lab.startswith("Reference")), None)
    if ref is None:
        raise ValueError("no BGD run among the logs: nothing to compare with")
    base = float(np.median(groups[ref]))
    lines = ["| run | rounds | median training time (s) | Runtime |", "|---|---|---|---|"]
    for lab in [ref, *sorted(lab for lab in order if lab != ref)]:
        t = float(np.median(groups[lab]))
        lines.append(f"| {lab} | {len(groups[lab])} | {t:.2f} | {100 * t / base:.1f}% |")
    return "\n".join(lines)
