"""``compare`` (the main job), ``train`` and ``sweep``: the commands that train."""

from __future__ import annotations

import argparse

from ..config import ALGOS, RunConfig
from ..errors import RunError, UsageError
from ..run.control import run_mpi
from .common import es_methods, network_fields, run_args


def _train_args(p: argparse.ArgumentParser) -> None:
    d = RunConfig()
    a = p.add_argument
    a("--algo", choices=ALGOS, default=d.algo, help="bgd: data-parallel batch gradient descent; hes: Hybrid-ES; "
      "reuse: a gradient step every r-th iteration, the last gradient applied again in between (H-ES without its "
      "search); localsgd: every rank steps on its own rows, parameters averaged every r iterations "
      "(default %(default)s)")
    a("--r", type=int, default=d.r, help="hes, reuse: a full gradient step every r-th iteration; localsgd: "
      "iterations between parameter averages (H) (default %(default)s)")
    a("--compress", default=d.compress, metavar="none|fp16|topk:F|powersgd:R", help="the gradient exchange of bgd, "
      "hes and reuse: exact float32, float16, top-k (fraction F) with error feedback, or PowerSGD of rank R with "
      "error feedback and warm start (default %(default)s)")
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
    run_args(p)


def _compare_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--epochs", type=int, default=10, help="epochs of every run (default %(default)s: a few minutes on 2 cores)")
    a("--out-dir", default=None, help="folder for run logs, tables and figures (default results/compare-TIMESTAMP)")
    a("--r", dest="r_values", type=int, nargs="+", default=[2, 3], help="H-ES gradient intervals to run "
      "(default: 2 3)")
    a("--no-assisted", dest="assisted", action="store_false", help="leave out Assisted H-ES (r = 1)")
    run_args(p)



def add_parsers(sub) -> None:
    c = sub.add_parser("compare", help="the main job: BGD and H-ES variants, then tables and figures "
                       "(the default command)",
                       description="Train the reference (BGD), Assisted H-ES (r = 1) and H-ES for each --r on the "
                       "same data and ranks, one after the other in this MPI job; write the run logs, the accuracy "
                       "and savings tables and the figures into one folder and print the tables. Fetches MNIST "
                       "first when it is missing. Runs when hes_mpi is started with no command.")
    _compare_args(c)
    c.set_defaults(func=cmd_compare, wants_argv=True)

    t = sub.add_parser("train", help="train under MPI (mpirun -n N python -m hes_mpi train ...)",
                       description="Train an MLP with BGD or Hybrid-ES across the MPI ranks of this job.")
    _train_args(t)
    t.set_defaults(func=cmd_train, wants_argv=True)

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
    w.add_argument("--tune-lr", type=float, nargs="+", default=None, metavar="LR", help="first train every line "
                   "that sets no --lr at each of these learning rates with --tune-seed, into OUT-DIR/tune/, and run "
                   "the --seeds at the lr with the best final dev accuracy (the grid and the choice go to "
                   "tuning.md)")
    w.add_argument("--tune-seed", type=int, default=100, help="the seed of the tuning runs, apart from the "
                   "reported --seeds (default %(default)s)")
    w.add_argument("--only", nargs="+", default=None, metavar="PATTERN", help="run only the lines whose name "
                   "matches one of these shell patterns, e.g. --only 'w1024_*' bgd")
    w.add_argument("--interleave", action="store_true", help="run seed by seed (every line's first seed, then every "
                   "line's second, ...) instead of line by line, so that a slow spell of the machine lands on every "
                   "line alike: for timing studies")
    w.add_argument("--dry-run", action="store_true", help="print the runs and exit (no MPI)")
    w.set_defaults(func=cmd_sweep, wants_argv=True)



def cmd_compare(args, argv=None) -> int:
    from ..run.suite import default_out_dir, run_suite

    if not args.r_values or min(args.r_values) < 1:
        raise UsageError("--r values must be >= 1")
    base = RunConfig(K=args.K, sigma2=args.sigma2, sigma_scale=args.sigma_scale, noise=args.noise, lr=args.lr,
                     batch=args.batch, epochs=args.epochs, seed=args.seed, data=args.data,
                     data_dir=args.data_dir, threads=args.threads, emulate_net=args.emulate_net,
                     collective_timeout=args.collective_timeout, stall_factor=args.stall_factor, **network_fields(args), **es_methods(args))

    def body(comm):
        comm.agree(base.validate)
        out_dir = args.out_dir or default_out_dir(comm)
        paths = run_suite(comm, base, out_dir, args.r_values, args.assisted, argv)
        _report(comm, paths, out_dir, f"{base.epochs} epochs, {comm.size} ranks, {base.data}", figures=True)
        return 0

    return run_mpi(body)


def _report(comm, paths, out_dir, heading: str, figures: bool) -> None:
    """Rank 0 writes and prints the tables (and figures) of the finished runs; a write that fails is one line
    (and MPI_Abort: the others may have left already)."""
    if comm.rank == 0:
        from ..post.summary import report

        try:
            text = report(paths, out_dir, heading, figures)
        except OSError as e:
            raise RunError(f"cannot write the tables into {out_dir}: {e.strerror or e}") from None
        print(text, flush=True)


class _LineParser(argparse.ArgumentParser):
    """The train options of one line of a parameter file: errors are UsageErrors naming the line."""

    def error(self, message):
        raise UsageError(message)


def _train_config(args) -> RunConfig:
    return RunConfig(algo=args.algo, K=args.K, r=args.r, sigma2=args.sigma2, sigma_scale=args.sigma_scale,
                     assisted=args.assisted, lr=args.lr, batch=args.batch, epochs=args.epochs, l2=args.l2,
                     seed=args.seed, data=args.data, data_dir=args.data_dir, dev_size=args.dev_size, out=args.out, force=args.force, check_every=args.check_every,
                     threads=args.threads, eval_train=args.eval_train, sync_barrier=args.sync_barrier,
                     emulate_net=args.emulate_net, checkpoint_every=args.checkpoint_every,
                     checkpoint=args.checkpoint, resume=args.resume, noise=args.noise,
                     collective_timeout=args.collective_timeout, stall_factor=args.stall_factor, compress=args.compress, **network_fields(args),
                     **es_methods(args))


def cmd_train(args, argv=None) -> int:
    from ..run.trainer import train

    cfg = _train_config(args)

    def body(comm):
        comm.sync_barrier = cfg.sync_barrier
        comm.agree(cfg.validate)
        train(cfg, comm, argv)
        return 0

    return run_mpi(body)


def sweep_runs(params: str, seeds: list[int], common: str = "", extra: dict | None = None) -> list[tuple[str, RunConfig]]:
    """(NAME_sSEED, config) of every run of a sweep (:func:`hes_mpi.run.params.expand` with the train
    command's own parser), checked before any MPI starts."""
    from ..run.params import expand

    lp = _LineParser(prog="line", add_help=False)
    _train_args(lp)
    return expand(params, seeds, common, lambda words: _train_config(lp.parse_args(words)), extra)


def tuning_grid(params: str, lrs: list[float], seed: int, common: str = "") -> list[tuple[str, float, RunConfig]]:
    """(NAME, lr, config) of every tuning run: each line that sets no --lr once per lr, with ``seed``."""
    import shlex

    from ..run.params import read_params, sets_lr

    if sets_lr(shlex.split(common)):
        raise UsageError("--tune-lr chooses the learning rate: leave --lr out of --args")
    if min(lrs) <= 0:
        raise UsageError("--tune-lr values must be > 0")
    tuned = [name for _, name, opts in read_params(params) if not sets_lr(opts)]
    by_lr = {lr: dict(sweep_runs(params, [seed], common, {name: ["--lr", f"{lr:g}"] for name in tuned}))
             for lr in sorted(set(lrs))}  # each line parsed and checked as the sweep's own runs are
    return [(name, lr, runs[f"{name}_s{seed}"]) for name in tuned for lr, runs in by_lr.items()]


def _selected(names_of, items: list, only: list[str] | None) -> list:
    """``items`` whose line name (``names_of(item)``) matches one of the --only patterns (all without it)."""
    from fnmatch import fnmatchcase

    if not only:
        return items
    return [it for it in items if any(fnmatchcase(names_of(it), pat) for pat in only)]


def by_seed(runs: list, seeds: list[int]) -> list:
    """``runs`` (NAME_sSEED, config), every line's first seed first, then every line's second, ... (stable
    within a seed: the lines' own order)."""
    order = {s: j for j, s in enumerate(seeds)}
    return sorted(runs, key=lambda r: order[r[1].seed])


def cmd_sweep(args, argv=None) -> int:
    from ..config import run_label

    def line(name: str) -> str:
        return name.rsplit("_s", 1)[0]

    def ordered(rs):
        return by_seed(rs, args.seeds) if args.interleave else rs

    runs = ordered(_selected(lambda r: line(r[0]), sweep_runs(args.params, args.seeds, args.common), args.only))
    if not runs:
        raise UsageError(f"--only {' '.join(args.only)}: no line of {args.params} matches")
    grid = tuning_grid(args.params, args.tune_lr, args.tune_seed, args.common) if args.tune_lr else []
    grid = _selected(lambda g: g[0], grid, args.only)
    if args.dry_run:
        for name, lr, cfg in grid:
            print(f"tune/{name}_lr{lr:g}: {run_label(cfg.to_dict())}, lr {lr:g}, seed {cfg.seed}, {cfg.epochs} epochs, "
                  f"data {cfg.data}")
        tuned = {g[0] for g in grid}
        for name, cfg in runs:
            lr = "" if not grid else ", the tuned lr" if name.rsplit("_s", 1)[0] in tuned else f", lr {cfg.lr:g}"
            print(f"{name}: {run_label(cfg.to_dict())}{lr}, seed {cfg.seed}, {cfg.epochs} epochs, data {cfg.data}")
        return 0

    def body(comm):
        from ..run.suite import default_out_dir, run_sweep, tune_lr, write_tuning

        out_dir = args.out_dir or default_out_dir(comm).replace("compare-", "sweep-")
        final_runs, tuning = runs, ""
        if grid:
            chosen, rows = tune_lr(comm, grid, f"{out_dir}/tune", argv)
            extra = {name: ["--lr", f"{lr:g}"] for name, lr in chosen.items()}
            final_runs = ordered(_selected(lambda r: line(r[0]),
                                           sweep_runs(args.params, args.seeds, args.common, extra), args.only))
            tuning = write_tuning(comm, out_dir, rows)
        paths = run_sweep(comm, final_runs, out_dir, argv)
        if comm.rank == 0 and tuning:
            print(f"\nLearning rate chosen on the dev set (seed {args.tune_seed}; final dev accuracy):\n\n{tuning}\n")
        _report(comm, paths, out_dir, f"{comm.size} ranks; seeds as mean and 95% confidence interval", figures=False)
        return 0

    return run_mpi(body)
