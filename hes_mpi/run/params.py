"""Parameter files of sweeps: one configuration per line, ``NAME TRAIN-OPTIONS...``, ``#`` comments; and
their expansion into one run per (line, seed), checked before any MPI starts.

The options of a line are read by the ``train`` command's own parser, which the command line passes in
(``parse``), so that a line means exactly what the same options mean to ``hes-mpi train``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ..config import RunConfig
from ..errors import UsageError


def read_params(path: str) -> list[tuple[int, str, list[str]]]:
    """The configurations of a sweep file: (line number, NAME, train options) per line ``NAME OPTIONS...``;
    ``#`` starts a comment, blank lines are skipped."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"parameter file {path}: {e.strerror or e}") from None
    out, names = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name, opts = words[0], words[1:]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("-"):
            raise UsageError(f"{path}:{n}: a line is NAME OPTIONS... (NAME: letters, digits, _ . -), got {name!r}")
        if name in names:
            raise UsageError(f"{path}:{n}: NAME {name!r} is used twice")
        if any(o in ("--out", "--seed", "--resume") or o.startswith(("--out=", "--seed=")) for o in opts):
            raise UsageError(f"{path}:{n}: --out, --seed and --resume are set by the sweep")
        names.add(name)
        out.append((n, name, opts))
    if not out:
        raise UsageError(f"parameter file {path} has no configuration lines")
    return out


def sets_lr(opts: list[str]) -> bool:
    """True when train options set ``--lr`` themselves."""
    return any(o == "--lr" or o.startswith("--lr=") for o in opts)


def expand(params: str, seeds: list[int], common: str, parse, extra: dict | None = None) -> list[tuple[str, RunConfig]]:
    """(NAME_sSEED, config) of every run of a sweep: each line of ``params`` once per seed, with the
    ``common`` options before the line's own and ``extra[NAME]`` (a list of options) after them.
    ``parse(words) -> RunConfig`` reads train options (raising UsageError); errors name the file, the
    line and its NAME."""
    if not seeds or min(seeds) < 0:
        raise UsageError("--seeds must be one or more integers >= 0")
    runs = []
    for n, name, opts in read_params(params):
        more = (extra or {}).get(name, [])
        for seed in seeds:
            try:
                cfg = parse([*shlex.split(common), *opts, *more, "--seed", str(seed)]).validate()
            except UsageError as e:
                raise UsageError(f"{params}:{n} ({name}): {e}") from None
            runs.append((f"{name}_s{seed}", cfg))
    return runs
