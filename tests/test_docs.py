"""The docs and CI say the same thing, and the code keeps its promises about structure."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    cmd = next(b.strip() for b in blocks if "pytest" in b and "[mpich,test]" in b)
    return cmd.split(" && ", 1)[1]  # after the install step


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_test_command() in ci.splitlines()


def test_only_comm_talks_to_mpi():
    """Every MPI call goes through hes_mpi/comm.py: no other module imports mpi4py."""
    offenders = []
    for path in (ROOT / "hes_mpi").rglob("*.py"):
        if path.name == "comm.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "mpi4py" or n.startswith("mpi4py.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_train_option_is_documented():
    from hes_mpi.__main__ import build_parser

    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in readme, f"{opt} missing from README"
