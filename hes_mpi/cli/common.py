"""What every command of the command line shares: the parser class (one-line errors, exit status 2), the
options of one training run and the H-ES method options."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import DISTS, ES_ROWS_SAMPLES, NOISES, PERTURB, PLAIN, RECOMBINE, SIGMA_SCALES, RunConfig, perturb_rank
from ..errors import UsageError
from ..model import ACTIVATIONS, INITS


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit status 2."""

    def error(self, message):
        # Every rank parses the same argv: only the launcher's rank 0 says so (MPI is not started yet).
        from ..run.control import exit_status

        speaker = speaks_before_mpi()
        if speaker:
            sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(exit_status(2, speaker, under_launcher=launcher_rank() is not None))


def launcher_rank() -> int | None:
    """This process's rank as the launcher (mpiexec, srun) tells it, without initialising MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        v = os.environ.get(var)
        if v and v.isdigit():
            return int(v)
    return None


def speaks_before_mpi() -> bool:
    """Whether this process prints an error found before MPI starts: every rank sees the same input, so only
    the launcher's rank 0 (or a process not under a launcher) says it, and carries the exit status
    (:func:`hes_mpi.run.control.exit_status`)."""
    return launcher_rank() in (None, 0)


def es_method_args(p: argparse.ArgumentParser) -> None:
    """The H-ES method options (train and compare). Their defaults are resolved by :func:`es_methods`."""
    d = RunConfig()
    g = p.add_argument_group("H-ES methods", "how ES steps perturb, compare and select candidates; defaults are "
                             "the measured best (docs/results.md); --plain gives the poster's algorithm")
    a = g.add_argument
    a("--plain", action="store_true", help="the poster's plain H-ES: every option below at its plain value "
      f"({', '.join(f'{k}={v}' for k, v in PLAIN.items())}); options given explicitly still apply; the noise "
      "source stays --noise's (table by default)")
    a("--perturb", type=_perturb, default=None, metavar="|".join(PERTURB), help="perturb every parameter; only the output layer "
      "(the hidden layers are then computed once and shared by the K candidates); or every layer by a rank-R "
      f"product A B^T, the first layer's product shared (default {d.perturb})")
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
    a("--fallback", action=argparse.BooleanOptionalAction, default=None, help="keep the unperturbed candidate "
      "when no candidate beats it (the step is then a plain reuse of the gradient; needs --baseline; default "
      f"{_on(d.fallback)})")
    a("--dist", choices=DISTS, default=None, help=f"perturbation components: normal or +-1 (default {d.dist})")
    a("--es-rows", type=float, default=None, metavar="F", help="cost the candidates on this fraction of the rank's "
      f"batch rows, a uniform sample drawn from (seed, iteration, rank) (default {d.es_rows:g})")
    a("--es-rows-sample", choices=ES_ROWS_SAMPLES, default=d.es_rows_sample, help="how --es-rows picks its rows: "
      "random, or head: the first rows in shard order, as runs before the sample did (biased to the low-index "
      "rows of each shard; to reproduce them) (default %(default)s)")
    a("--es-step", type=float, default=None, metavar="F", help="ES steps move along the stored gradient by F x lr "
      "(a damped step on an older gradient); 0: 1 for r <= 2, 0.7 for r >= 3 (default 0)")


def _perturb(text: str) -> str:
    """--perturb checked as argparse checks a choice (an error before MPI starts)."""
    try:
        perturb_rank(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--perturb ")) from None
    return text


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def es_methods(args) -> dict:
    """The H-ES method fields of a RunConfig from parsed options: given > --plain > defaults; and
    ``--es-rows-sample``, which --plain leaves alone (the poster costs every row)."""
    d = RunConfig()
    out = {"es_rows_sample": args.es_rows_sample}
    for k in PLAIN:
        v = getattr(args, k)
        out[k] = v if v is not None else PLAIN[k] if args.plain else getattr(d, k)
    return out


def run_args(p: argparse.ArgumentParser) -> None:
    """The options of one training run that ``train`` and ``compare`` share (one help text each)."""
    d = RunConfig()
    a = p.add_argument
    a("--K", type=int, default=d.K, help="ES candidates (perturbations) per rank per ES step (default %(default)s)")
    a("--sigma2", type=float, default=d.sigma2, help="H-ES perturbation variance; with --sigma-scale relative a "
      "multiple of the last gradient's per-component variance (default %(default)s)")
    a("--sigma-scale", choices=SIGMA_SCALES, default=d.sigma_scale, help="how --sigma2 is read: relative to the "
      "gradient's per-component variance, or absolute (default %(default)s)")
    a("--noise", choices=NOISES, default=d.noise, help="H-ES perturbation source: a slice of a shared table of "
      "normals at an offset hashed from the key (seed, iteration, rank, k) (no generation cost), a NumPy Philox "
      "stream per key, or counter: Philox4x32-10 of each element's index and the key, table-free and faster "
      "than philox (default %(default)s)")
    a("--lr", type=float, default=d.lr, help="learning rate (default %(default)s)")
    a("--batch", type=int, default=d.batch, help="global minibatch, split across ranks (default %(default)s)")
    network_args(p)
    a("--seed", type=int, default=d.seed, help="run seed: initial weights, batches, perturbations (default %(default)s)")
    a("--data", default=d.data, help="dataset: mnist, idx:DIR or synthetic[:N[:SEED]] (default %(default)s)")
    a("--data-dir", default=None, help="where fetched datasets live (default $HES_MPI_DATA or ~/.cache/hes_mpi)")
    a("--threads", type=int, default=d.threads, help="BLAS threads per rank; 0 = cores on the node / ranks on the "
      "node (default)")
    a("--collective-timeout", type=float, default=None, metavar="S", help="end the run with a one-line error "
      "when an MPI collective does not complete within S seconds (a dead link or node; 0: wait for ever; default "
      "$HES_MPI_COLLECTIVE_TIMEOUT or 120)")
    a("--stall-factor", type=float, default=d.stall_factor, metavar="F", help="warn in one line about an MPI call "
      "that has taken F times the running median of its kind (operation and size) and at least 5 s; the run "
      "still ends only at --collective-timeout (0: no warnings; default %(default)s)")
    a("--emulate-net", default=None, metavar="PRESET|ALPHA,BETA", help="hold every MPI call for its modelled "
      "cost on this network (presets: 1gbe, 10gbe, 100gbe, ib-hdr; or latency in s and inverse bandwidth in "
      "s/byte), so time-to-accuracy on a slower cluster is measured end to end")
    es_method_args(p)




def network_args(p: argparse.ArgumentParser) -> None:
    """--hidden, --activation and --init (training and the step benchmarks)."""
    d = RunConfig()
    a = p.add_argument
    a("--hidden", default=d.hidden, metavar="W[,W...]", help="hidden layer widths, e.g. 300 (the poster's "
      "784-300-10) or 1024,1024 (default %(default)s)")
    a("--activation", choices=ACTIVATIONS, default=d.activation, help="hidden activation (default %(default)s)")
    a("--init", choices=INITS, default=d.init, help="initial weights: normal with std 1 (the poster's), xavier "
      "(sqrt(2/(fan_in+fan_out))) or he (sqrt(2/fan_in)); biases 0 (default %(default)s)")


def network_fields(args) -> dict:
    """The network fields of a RunConfig from options added by :func:`network_args`."""
    return {"hidden": args.hidden, "activation": args.activation, "init": args.init}


def show_help(p) -> int:
    p.print_help()
    return 0
