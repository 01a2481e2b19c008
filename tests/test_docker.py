"""docker/Dockerfile, tested without a container engine: its instructions, and its pip steps replayed.

The first tests read the Dockerfile as plain text. The slow one replays the image's ``pip install`` lines
with ``--dry-run --ignore-installed`` against a copy of exactly the files the Dockerfile COPYs (the build
context it sees), in this interpreter: the dependencies must resolve from PyPI, mpi4py must come as a
source distribution (to be compiled against Debian's MPICH), and nothing may bring the `mpich` wheel.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def run_commands() -> list[list[str]]:
    """Every command of every RUN instruction (split on &&, ||, ; and | outside quotes), as argument lists."""
    cmds = []
    for word, rest in instructions():
        if word != "RUN":
            continue
        lexer = shlex.shlex(rest, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        current = []
        for token in lexer:
            if token in (";", "&&", "||", "|", "&"):
                if current:
                    cmds.append(current)
                current = []
            else:
                current.append(token)
        if current:
            cmds.append(current)
    return cmds


def pip_installs() -> list[list[str]]:
    """The arguments after 'pip install' of each pip install command, in order."""
    out = []
    for cmd in run_commands():
        for i in range(len(cmd) - 1):
            if cmd[i] in ("pip", "pip3") and cmd[i + 1] == "install":
                out.append(cmd[i + 2:])
    return out


def test_dockerfile_base_image_and_entrypoint():
    ins = instructions()
    assert ins[0][0] == "FROM"
    assert re.fullmatch(r"python:3\.\d+-slim-bookworm", ins[0][1]), ins[0][1]
    entry = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == [["hes-mpi"]]


def test_dockerfile_installs_debian_mpich_and_compiles_mpi4py_against_it():
    apt = [c for c in run_commands() if c[:2] == ["apt-get", "install"]]
    assert apt, "no apt-get install"
    packages = {a for c in apt for a in c[2:] if not a.startswith("-")}
    assert {"mpich", "libmpich-dev"} <= packages
    assert any("--no-install-recommends" in c for c in apt)
    assert any("-y" in c for c in apt)
    mpi4py = [a for a in pip_installs() if "mpi4py" in a]
    assert mpi4py and any(x in ("--no-binary=mpi4py", "--no-binary=:all:") for x in mpi4py[0]), mpi4py


def test_dockerfile_does_not_install_the_mpich_wheel():
    for args in pip_installs():
        for a in args:
            assert not re.search(r"\[[^\]]*\bmpich\b", a), f"pip install of an [mpich] extra: {a}"
            assert a.split("==")[0].split(">=")[0] != "mpich", f"pip install of the mpich wheel: {args}"
    assert "[mpich" not in DOCKERFILE.read_text().replace("`mpich` extra", "")


def test_dockerfile_fetches_mnist_into_data_and_runs_as_a_user():
    ins = instructions()
    words = [w for w, _ in ins]
    env = [i for i, (w, rest) in enumerate(ins) if w == "ENV" and re.search(r"\bHES_MPI_DATA[= ]/data\b", rest)]
    fetch = [i for i, (w, rest) in enumerate(ins) if w == "RUN" and "hes-mpi data fetch mnist" in rest]
    assert env and fetch and env[0] < fetch[0], "ENV HES_MPI_DATA=/data must come before the fetch"
    users = [rest for w, rest in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    last_user = max(i for i, w in enumerate(words) if w == "USER")
    assert all(w != "RUN" for w in words[last_user:]), "RUN after USER: build steps would run unprivileged"


def copied_sources() -> list[str]:
    srcs = []
    for word, rest in instructions():
        if word in ("COPY", "ADD"):
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            srcs += args[:-1]
    return srcs


def test_dockerfile_copies_what_the_package_build_needs():
    srcs = copied_sources()
    assert srcs, "the Dockerfile copies nothing from the build context"
    for s in srcs:
        assert (ROOT / s).exists(), f"COPY {s}: not in the repository"
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    needed = {"setup.cfg", "pyproject.toml"}
    for section in cfg.sections():
        for value in cfg[section].values():
            needed |= {m.strip() for m in re.findall(r"file:\s*([^\s,]+)", value)}
    for pkg in (p.strip() for p in cfg.get("options.packages.find", "include", fallback="").replace(",", " ").split()):
        needed.add(pkg.split(".")[0].rstrip("*"))
    missing = sorted(n for n in needed if not any(n == s.rstrip("/") or n.startswith(s.rstrip("/") + "/")
                                                  for s in srcs) and "." not in srcs)
    assert missing == [], f"the build needs {missing} but the Dockerfile does not COPY them"


@pytest.mark.slow
def test_dockerfile_pip_steps_resolve(tmp_path):
    """Replay the image's pip installs with --dry-run against a copy of the COPYed files (about 15 s)."""
    context = tmp_path / "context"
    context.mkdir()
    dest = {}
    for word, rest in instructions():
        if word == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            for s in args[:-1]:
                src, target = ROOT / s, args[-1]
                to = context / Path(target.lstrip("/")) / (src.name if target.endswith("/") else "")
                if src.is_dir():
                    shutil.copytree(src, to, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, to)
                dest[target.rstrip("/")] = context / target.strip("/")
    reports = []
    for n, args in enumerate(pip_installs()):
        args = [str(dest.get(a.rstrip("/"), a)) for a in args]
        report = tmp_path / f"report{n}.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--disable-pip-version-check", "--report", str(report), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-3000:]}"
        installs = {i["metadata"]["name"].lower().replace("_", "-"): i for i in json.loads(report.read_text())["install"]}
        reports.append(installs)
    everything = {name for r in reports for name in r}
    assert "mpich" not in everything, "a pip step brings the mpich wheel"
    assert {"hes-mpi", "mpi4py", "numpy", "numba", "h5py"} <= everything
    first_mpi4py = next(r["mpi4py"] for r in reports if "mpi4py" in r)
    url = first_mpi4py["download_info"]["url"]
    assert not url.endswith(".whl"), f"mpi4py would be installed from a wheel: {url}"
