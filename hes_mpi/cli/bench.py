"""``bench osu|overhead|emulation|compress|steps|forward|torch|all``."""

from __future__ import annotations

from ..config import NOISES, RunConfig
from ..errors import UsageError
from ..run.control import run_mpi
from .common import Parser, es_method_args, es_methods, network_args, network_fields, show_help


def add_parsers(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks (under mpiexec)", description="Benchmarks; run under mpiexec.")
    bsub = b.add_subparsers(dest="bench_command", metavar="NAME", parser_class=Parser)
    o = bsub.add_parser("osu", help="OSU latency table of one collective through the instrumented communicator",
                        description="The OSU micro-benchmark protocol (warm-up, barrier, timed loop, sizes in "
                        "powers of two, min/avg/max over ranks) through the instrumented communicator.")
    o.add_argument("--op", choices=("allreduce", "allgather", "bcast"), default="allreduce",
                   help="collective to time (default %(default)s)")
    o.add_argument("--raw", action="store_true", help="time the bare mpi4py calls, without instrumentation")
    o.add_argument("--min-size", type=int, default=4, help="smallest per-rank buffer in bytes (default %(default)s)")
    o.add_argument("--max-size", type=int, default=1 << 20, help="largest per-rank buffer in bytes "
                   "(default %(default)s)")
    o.add_argument("--iterations", type=int, default=1000, help="timed iterations up to 8 KiB (default %(default)s)")
    o.add_argument("--iterations-large", type=int, default=100, help="timed iterations above 8 KiB "
                   "(default %(default)s)")
    o.add_argument("--warmup", type=int, default=200, help="untimed iterations up to 8 KiB (default %(default)s)")
    o.add_argument("--warmup-large", type=int, default=10, help="untimed iterations above 8 KiB "
                   "(default %(default)s)")
    o.add_argument("--json", action="store_true", help="print one JSON object instead of OSU's table")
    o.set_defaults(func=cmd_bench_osu)
    ov = bsub.add_parser("overhead", help="instrumented vs raw communication per BGD step",
                         description="Median BGD step time with the instrumented and with the raw communicator, "
                         "interleaved on the same batch; prints one JSON object.")
    ov.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
    ov.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    network_args(ov)
    ov.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
    ov.add_argument("--steps", type=int, default=50, help="timed steps of each kind (default %(default)s)")
    ov.set_defaults(func=cmd_bench_overhead)
    em = bsub.add_parser("emulation", help="BGD step growth under --emulate-net against the cost model",
                         description="BGD steps with and without network emulation, interleaved on the same batch; "
                         "prints one JSON object with the median step growth and the modelled Allreduce cost.")
    em.add_argument("--network", default="1gbe", help="preset or ALPHA,BETA (default %(default)s)")
    em.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
    em.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    network_args(em)
    em.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
    em.add_argument("--steps", type=int, default=50, help="timed steps of each kind (default %(default)s)")
    em.set_defaults(func=cmd_bench_emulation)
    cp = bsub.add_parser("compress", help="encode + decode time of each --compress method against a gradient step "
                         "and its memory floor",
                         description="Each compressed exchange reduces the gradient of a real batch; its time minus "
                         "its collectives' is the encode plus decode time, shown as a ratio to the gradient step and "
                         "beside its floor (the bytes it must read and write at the copy bandwidth measured in the "
                         "same rounds). Prints a markdown table, or one JSON object with --json.")
    cp.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                    help="--compress methods to time (default fp16 topk:0.25 powersgd:4)")
    cp.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
    cp.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    network_args(cp)
    cp.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
    cp.add_argument("--threads", type=int, default=0, help="BLAS threads per rank (default: cores / ranks)")
    cp.add_argument("--reps", type=int, default=40, help="timed repetitions (default %(default)s)")
    cp.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    cp.set_defaults(func=cmd_bench_compress)
    speed_help = {
        "steps": ("gradient vs ES step time, noise share, step memory and bytes (H-ES, r = 2)",
                  ("Gradient and ES steps alternating on the same batches: median step times and their ratio "
                   "(es_over_grad_step), the share of the ES step spent producing perturbations (noise_share), "
                   "bytes sent per rank per step, and step memory (mem_es_over_grad). Prints one JSON object.")),
        "forward": ("K-candidate forward passes vs the bare matrix products (forward_vs_blas)",
                    ("One rank's K-candidate evaluation of an ES step against the matrix products of the same "
                     "shapes timed alone. Prints one JSON object.")),
        "torch": (("BGD epoch time vs PyTorch DDP (gloo) on the same rows and ranks (bgd_epoch_vs_torch); with "
                   "--compress, accuracy and bytes against PyTorch's hook"),
                  ("hes_mpi BGD epochs and torch DistributedDataParallel epochs (same MLP, rows, ranks and "
                   "threads) alternating; with --compress fp16 or powersgd:R, BGD with that exchange and DDP with "
                   "fp16_compress_hook or powerSGD_hook train --epochs from the same start: their final dev "
                   "accuracies and payload bytes per step. Skipped with a message when torch is missing. Prints "
                   "one JSON object.")),
        "all": ("every speed goal in one JSON object (benchmarks/README.md)",
                ("forward, steps, overhead and torch in one MPI job; prints one JSON object whose top-level keys "
                 "are the goals: forward_vs_blas, bgd_epoch_vs_torch, es_over_grad_step, noise_share, "
                 "mem_es_over_grad, instrumentation_overhead, plus goals_met and the details of each bench.")),
    }
    for name, (short, long) in speed_help.items():
        sp = bsub.add_parser(name, help=short, description=long)
        sp.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
        sp.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
        network_args(sp)
        sp.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
        sp.add_argument("--K", type=int, default=RunConfig().K, help="ES candidates per rank (default %(default)s)")
        sp.add_argument("--threads", type=int, default=0, help="BLAS threads per rank (default: cores / ranks)")
        if name in ("steps", "forward"):
            sp.add_argument("--reps", type=int, default=40, help="timed repetitions (default %(default)s)")
        if name == "torch":
            sp.add_argument("--epochs", type=int, default=5, help="timed epochs of each; with --compress, trained "
                            "epochs of each (default %(default)s)")
            sp.add_argument("--compress", default=None, metavar="fp16|powersgd:R", help="compare this exchange with "
                            "PyTorch's communication hook instead of timing plain BGD")
        sp.add_argument("--lr", type=float, default=RunConfig().lr, help="learning rate of the steps (default "
                        "%(default)s; a deep ReLU network needs a smaller one, e.g. 0.2)")
        if name == "all":
            sp.add_argument("--smoke", action="store_true", help="a few repetitions only (CI: checks that it runs)")
            sp.add_argument("--json", action="store_true", help="print the JSON object (the default; for symmetry "
                            "with the other commands)")
        if name in ("steps", "forward", "all"):
            sp.add_argument("--noise", choices=NOISES, default=RunConfig().noise,
                            help="H-ES perturbation source, as in train (default %(default)s)")
        es_method_args(sp)
        sp.set_defaults(func=cmd_bench_speed, bench_name=name)
    b.set_defaults(func=lambda a: show_help(b))



def cmd_bench_osu(args) -> int:
    from ..bench.collectives import format_osu, osu
    from ..bench.harness import dumps

    if args.min_size < 1 or args.max_size < args.min_size:
        raise UsageError("--min-size must be >= 1 and --max-size >= --min-size")
    if min(args.iterations, args.iterations_large) < 1 or min(args.warmup, args.warmup_large) < 0:
        raise UsageError("--iterations must be >= 1 and --warmup >= 0")

    def body(comm):
        rows = osu(comm, args.op, args.min_size, args.max_size, args.iterations, args.iterations_large,
                   args.warmup, args.warmup_large, args.raw)
        if comm.rank == 0:
            if args.json:
                print(dumps({"bench": "osu", "op": args.op, "raw": args.raw, "ranks": comm.size, "mpi": comm.vendor(),
                             "mpi_family": comm.family, "rows": rows}))
            else:
                print(format_osu(rows, args.op, args.raw, comm.size, comm.vendor()), flush=True)
        return 0

    return run_mpi(body, json_output=args.json)


def _bench_bgd_steps(args, run, **cfg_extra) -> int:
    """A BGD-step benchmark (overhead, emulation): the run configuration from the options, then
    ``run(comm, cfg)`` under MPI; rank 0 prints its JSON object."""
    from ..bench.harness import dumps

    cfg = RunConfig(data=args.data, data_dir=args.data_dir, batch=args.batch, **network_fields(args),
                    **cfg_extra).validate()
    if args.steps < 1:
        raise UsageError("--steps must be >= 1")

    def body(comm):
        result = run(comm, cfg)
        if comm.rank == 0:
            print(dumps(result), flush=True)
        return 0

    return run_mpi(body, json_output=True)


def cmd_bench_overhead(args) -> int:
    from ..bench.collectives import overhead

    return _bench_bgd_steps(args, lambda comm, cfg: overhead(comm, cfg, steps=args.steps))


def cmd_bench_emulation(args) -> int:
    from ..bench.collectives import emulation

    return _bench_bgd_steps(args, lambda comm, cfg: emulation(comm, cfg, args.network, steps=args.steps),
                            emulate_net=args.network)


def cmd_bench_compress(args) -> int:
    from ..bench.compress import METHODS, compress, format_compress
    from ..bench.harness import dumps
    from ..config import parse_compress

    methods = tuple(args.methods or METHODS)
    for m in methods:
        parse_compress(m)
        if m == "none":
            raise UsageError("--methods: 'none' has nothing to encode; name fp16, topk:F or powersgd:R")
    if args.reps < 1:
        raise UsageError("--reps must be >= 1")
    cfg = RunConfig(data=args.data, data_dir=args.data_dir, batch=args.batch, threads=args.threads,
                    **network_fields(args)).validate()

    def body(comm):
        result = compress(comm, cfg, methods, reps=args.reps)
        if comm.rank == 0:
            print(dumps(result) if args.json else format_compress(result), flush=True)
        return 0

    return run_mpi(body, json_output=args.json)


def cmd_bench_speed(args) -> int:
    from ..bench import goals, steps, torch_peer
    from ..bench.harness import dumps

    cfg = RunConfig(algo="hes", data=args.data, data_dir=args.data_dir, batch=args.batch, **network_fields(args),
                    K=args.K, threads=args.threads, lr=args.lr, noise=getattr(args, "noise", RunConfig().noise),
                    compress=getattr(args, "compress", None) or "none", **es_methods(args)).validate()
    reps = getattr(args, "reps", 40)
    if reps < 1 or getattr(args, "epochs", 1) < 1:
        raise UsageError("--reps and --epochs must be >= 1")

    def body(comm):
        name = args.bench_name
        if name == "steps":
            result = steps.steps(comm, cfg, reps=reps)
        elif name == "forward":
            result = steps.forward(comm, cfg, reps=reps)
        elif name == "torch" and args.compress:
            result = torch_peer.compress_peer(comm, cfg, epochs=args.epochs)
        elif name == "torch":
            result = torch_peer.torch_vs_bgd(comm, cfg, epochs=args.epochs)
        else:
            result = goals.run_all(comm, cfg, smoke=args.smoke)
        if comm.rank == 0:
            print(dumps(result), flush=True)
        return 0

    return run_mpi(body, json_output=True)


