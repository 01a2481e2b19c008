"""The package's structure keeps its promises (docs/architecture.md): imports flow one way through the
layers, there is no import cycle, and no module grows past ~400 lines without saying why."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hes_mpi"

#: The layers, bottom first: a module may import from its own layer and the layers below it, never above.
LAYERS = (
    ("base", ("hes_mpi", "hes_mpi.errors", "hes_mpi.log", "hes_mpi.schema", "hes_mpi.faultpoints")),
    ("numerics", ("hes_mpi.model", "hes_mpi.kernels", "hes_mpi.compress_kernels", "hes_mpi.philox_kernels", "hes_mpi.noise", "hes_mpi.collectives", "hes_mpi.ompi_tuned")),
    ("config and data", ("hes_mpi.config", "hes_mpi.data")),
    ("communication", ("hes_mpi.watchdog", "hes_mpi.comm", "hes_mpi.telemetry")),
    ("storage", ("hes_mpi.atomicfile", "hes_mpi.runlog", "hes_mpi.checkpoint")),
    ("cluster", ("hes_mpi.cluster",)),
    ("algorithms", ("hes_mpi.algorithms",)),
    ("run", ("hes_mpi.run",)),
    ("bench", ("hes_mpi.bench",)),
    ("post", ("hes_mpi.post",)),
    ("cli", ("hes_mpi.cli", "hes_mpi.__main__")),
)
#: Modules above this many lines must be in LONG_MODULES, with a ceiling and the reason they are not split.
MAX_LINES = 400
#: name -> (ceiling in lines, why the module is one piece). A module that grows past its ceiling, a new
#: module over MAX_LINES, or an entry whose module has shrunk back under MAX_LINES fails the test: raise a
#: ceiling only with a reason, and drop entries that are no longer needed.
LONG_MODULES = {
    "hes_mpi.comm": (520, "the one module that touches MPI: every instrumented call and its record"),
    "hes_mpi.kernels": (560, "every Numba kernel, so that the JIT flags stay in one place"),
    "hes_mpi.runlog": (500, "writer and reader of one format, with its layout written out"),
    "hes_mpi.collectives": (480, "each cost written once for scalars and arrays, with the family choice it selects"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(name: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (name == pre or name.startswith(pre + ".")) and len(pre) > best_len and (pre != "hes_mpi" or name == pre):
                best, best_len = i, len(pre)
    if best is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS and to docs/architecture.md")
    return best


def imports_of(name: str, path: Path) -> set[str]:
    """The hes_mpi modules ``name`` imports (at any depth of the file: deferred imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from . import x" / "from .pkg import mod": the names may be modules themselves
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.startswith("hes_mpi") and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_flow_one_way():
    wrong = []
    for name, targets in graph().items():
        for t in targets:
            if t == "hes_mpi":  # the package's own __init__: only __version__
                continue
            if layer_of(t) > layer_of(name):
                wrong.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})")
    assert wrong == []


def test_no_import_cycles():
    g = graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the design: drop package -> child edges
    g = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in g.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for t in sorted(g.get(n, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert cycles == []


def test_the_check_sees_a_wrong_import(tmp_path, monkeypatch):
    """The direction test can fail: a numerics module that imports the run log is caught."""
    bad = imports_of("hes_mpi.kernels", _write(tmp_path, "from .runlog import RunLog\nfrom . import config\n"))
    assert {"hes_mpi.runlog", "hes_mpi.config"} <= bad
    assert layer_of("hes_mpi.runlog") > layer_of("hes_mpi.kernels")


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "kernels.py"
    p.write_text(text)
    return p


def long_module_problems(lengths: dict[str, int], allowed: dict[str, tuple[int, str]]) -> list[str]:
    """What is wrong with the module lengths ``lengths`` (name -> lines) against ``allowed``."""
    out = []
    for name, lines in sorted(lengths.items()):
        if name in allowed:
            ceiling, why = allowed[name]
            if not why.strip():
                out.append(f"{name}: LONG_MODULES gives no reason")
            if lines > ceiling:
                out.append(f"{name} has {lines} lines, over its ceiling of {ceiling}: split it")
            elif lines <= MAX_LINES:
                out.append(f"{name} has {lines} lines: drop it from LONG_MODULES")
        elif lines > MAX_LINES:
            out.append(f"{name} has {lines} lines: split it, or add it to LONG_MODULES with a ceiling and why")
    out += [f"{name}: in LONG_MODULES but not a module" for name in sorted(set(allowed) - set(lengths))]
    return out


def test_long_modules_are_named_with_a_ceiling_and_a_reason():
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert long_module_problems(lengths, LONG_MODULES) == []


def test_the_length_check_can_fail():
    allowed = {"a": (450, "one format"), "b": (450, "")}
    assert long_module_problems({"a": 420, "b": 420, "c": 100}, allowed) == ["b: LONG_MODULES gives no reason"]
    problems = long_module_problems({"a": 451, "b": 300, "c": 401, "d": 10}, {**allowed, "gone": (500, "x")})
    assert problems == ["a has 451 lines, over its ceiling of 450: split it",
                        "b: LONG_MODULES gives no reason", "b has 300 lines: drop it from LONG_MODULES",
                        "c has 401 lines: split it, or add it to LONG_MODULES with a ceiling and why",
                        "gone: in LONG_MODULES but not a module"]
