"""docker/Dockerfile, read without a container engine: its instructions, and its pip steps replayed (the
image itself is built and run with podman in test_container.py).

The first tests read the Dockerfile as plain text. The slow one replays the image's ``pip install`` lines
with ``--dry-run --ignore-installed`` against a copy of exactly the files the Dockerfile COPYs (the build
context it sees), in this interpreter: the dependencies must resolve from PyPI, mpi4py must come as a
source distribution (to be compiled against Debian's MPICH), and nothing may bring the `mpich` wheel.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import resource
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


def run_commands(ins=None) -> list[list[str]]:
    """Every command of every RUN instruction (split on &&, ||, ; and | outside quotes), as argument lists."""
    cmds = []
    for word, rest in instructions() if ins is None else ins:
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


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (from one FROM to the next)."""
    out: list[list[tuple[str, str]]] = []
    for word, rest in instructions():
        if word == "FROM":
            out.append([])
        if out:
            out[-1].append((word, rest))
    return out


def test_dockerfile_two_stages_on_one_base_and_entrypoint():
    ins = instructions()
    assert ins[0][0] == "ARG"
    name, _, default = ins[0][1].partition("=")
    assert name == "BASE" and re.fullmatch(r"(docker\.io/library/)?python:3\.\d+-slim-bookworm", default), ins[0]
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms == ["${BASE} AS build", "${BASE}"], froms
    entry = [json.loads(rest) for word, rest in ins if word == "ENTRYPOINT"]
    assert entry == [["hes-mpi"]]


def _apt_packages(stage) -> set[str]:
    pkgs = set()
    for words in run_commands(stage):
        if words[:2] == ["apt-get", "install"]:
            assert "--no-install-recommends" in words and "-y" in words, words
            pkgs |= {w for w in words[2:] if not w.startswith("-")}
    return pkgs


def test_dockerfile_installs_debian_mpich_and_compiles_mpi4py_against_it():
    build, runtime = stages()
    assert {"mpich", "libmpich-dev", "build-essential"} <= _apt_packages(build)
    mpi4py = [a for a in pip_installs() if "mpi4py" in a]
    assert mpi4py and any(x in ("--no-binary=mpi4py", "--no-binary=:all:") for x in mpi4py[0]), mpi4py
    # the runtime stage: MPICH's runtime only, no compilers or development files; the venv and the data
    # copied from the build stage
    assert _apt_packages(runtime) == {"mpich"}
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies == ["--from=build /opt/hes /opt/hes", "--from=build /data /data"], copies


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
    """What the Dockerfile copies from the build context (not from another stage)."""
    srcs = []
    for word, rest in instructions():
        if word in ("COPY", "ADD") and "--from=" not in rest:
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
        if word == "COPY" and "--from=" not in rest:
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


# ---------------------------------------------------------------------------------------------- docker/run.sh
RUN_SH = ROOT / "docker" / "run.sh"


def stand_in_engines(tmp_path: Path) -> Path:
    """A folder with a ``podman`` and a ``docker`` that print their name and arguments."""
    folder = tmp_path / "bin"
    folder.mkdir(parents=True)
    for name in ("podman", "docker"):
        (folder / name).write_text('#!/bin/sh\necho "$(basename "$0") $*"\n')
        (folder / name).chmod(0o755)
    return folder


def run_sh(tmp_path: Path, limits: str, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    """``bash docker/run.sh ARGS`` in a shell whose limits ``limits`` sets first (e.g. ``ulimit -n 1000``)."""
    env = {**os.environ, "PATH": path if path is not None else f"{stand_in_engines(tmp_path)}:{os.environ['PATH']}"}
    return subprocess.run([shutil.which("bash"), "-c", f'{limits}; exec "{shutil.which("bash")}" {RUN_SH} '
                           + shlex.join(args)], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_run_sh_gives_the_container_the_limits_the_host_allows(tmp_path):
    """docker/run.sh adds --ulimit nofile and nproc at this shell's hard limits (podman's defaults, 1048576,
    fail where root may not raise its own), nproc at most 32768, and passes every argument on."""
    proc = run_sh(tmp_path, "ulimit -n 1000; ulimit -u 500", "--rm", "IMAGE", "train", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["podman", "run", "--ulimit", "nofile=1000:1000", "--ulimit", "nproc=500:500",
                                   "--rm", "IMAGE", "train", "--epochs", "2"]
    nofile, nproc = (cap if hard == resource.RLIM_INFINITY else min(hard, cap) for hard, cap in
                     ((resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1048576),
                      (resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)))
    here = run_sh(tmp_path / "here", "true", "docker", "--rm", "IMAGE")  # this host's own limits; docker named
    assert here.stdout.split() == ["docker", "run", "--ulimit", f"nofile={nofile}:{nofile}",
                                   "--ulimit", f"nproc={nproc}:{nproc}", "--rm", "IMAGE"]
    (tmp_path / "empty").mkdir()
    none = run_sh(tmp_path, "true", "--rm", "IMAGE", path=str(tmp_path / "empty"))
    assert none.returncode == 2 and none.stderr.strip() == "docker/run.sh: error: neither podman nor docker is installed"


def fenced_lines(path: Path) -> list[str]:
    """The lines of the fenced code blocks of a Markdown file, backslash continuations joined."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", path.read_text(), flags=re.DOTALL | re.MULTILINE)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_every_documented_container_run_goes_through_run_sh():
    """A `podman run` or `docker run` shown in the documentation fails on hosts like this project's test host
    unless it caps the ulimits: every one goes through docker/run.sh (podman-hpc has its own configuration)."""
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("*/README.md"))]
    bare = [f"{p.relative_to(ROOT)}: {line}" for p in docs for line in fenced_lines(p)
            if re.search(r"(^|[\s;&|(])(sudo\s+)?(podman|docker)\s+run\b", line)]
    assert bare == []
    assert any("bash docker/run.sh --rm localhost/hes_mpi" in line for line in fenced_lines(ROOT / "docker" / "README.md"))
