"""Command line: ``python -m hes_mpi`` / ``hes-mpi``.

Subcommands: ``compare`` (the default: the main job), ``train`` (under mpirun/mpiexec/srun), ``sweep``
(a parameter file x seeds), ``data fetch|list``, ``evaluate`` (test accuracy), ``summary``, ``simulate`` (SimGrid replay),
``bench osu|overhead|emulation|steps|forward|torch|all``, ``cluster up|status|run|fault|down``. One module per command group; the work is done
by the package's other layers (docs/architecture.md).
Exit status: 0 success, 1 a run that could not go on (or an MPI abort), 2 bad input.
"""

from __future__ import annotations

import sys

from .. import __version__
from ..errors import RunError, UsageError, silence_stdout
from ..run.control import exit_status, say_error
from . import bench, cluster, data, post, train
from .common import Parser, launcher_rank, show_help, speaks_before_mpi

COMMANDS = ("compare", "train", "sweep", "data", "bench", "evaluate", "summary", "simulate", "cluster")
#: Tokens that the top-level parser itself answers.
TOP_LEVEL = ("-h", "--help", "--version")


def build_parser() -> Parser:
    p = Parser(prog="hes-mpi", description="Train MLPs across MPI ranks with BGD and Hybrid-ES, and measure "
               "what distributed training costs. Launch training as: mpirun -n N python -m hes_mpi train ...")
    p.add_argument("--version", action="version", version=f"hes_mpi {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train.add_parsers(sub)
    data.add_parsers(sub)
    bench.add_parsers(sub)
    post.add_parsers(sub)
    cluster.add_parsers(sub)
    p.set_defaults(func=lambda a: show_help(p))
    return p


def with_default_command(raw: list[str]) -> list[str]:
    """The arguments with ``compare`` in front unless they start with a command or a top-level option: the
    command is the first argument, so option values such as ``--out-dir train`` are never taken for one."""
    if raw and (raw[0] in COMMANDS or raw[0] in TOP_LEVEL):
        return raw
    return ["compare", *raw]


def main(argv: list[str] | None = None) -> int:
    raw = with_default_command(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(raw)
    try:
        status = args.func(args, ["hes-mpi", *raw]) if getattr(args, "wants_argv", False) else args.func(args)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return status
    except (UsageError, RunError) as e:  # raised before MPI started (or by a command without MPI)
        speaker = speaks_before_mpi()
        if speaker:
            say_error(str(e))
        return exit_status(e.exit_code, speaker, under_launcher=launcher_rank() is not None)
    except KeyboardInterrupt:
        say_error("interrupted")
        return 130
    except BrokenPipeError:  # output piped into head & co.
        silence_stdout()
        return 1
