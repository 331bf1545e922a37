"""The layout docs/ARCHITECTURE.md draws: imports go one way, the core stands without the tools, files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
#: Imports of the project's own modules inside functions, each there to keep torch, Lightning or pandas out of
#: a fast path (Hydra loads sweep.py and the launcher for every command; job.py's check runs for task=plan).
MAX_LOCAL_IMPORTS = 20
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[0] in ("resnext_lab", "hydra_plugins"):
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of import nodes under `if TYPE_CHECKING:`: never executed, so not a dependency."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip |= {id(sub) for sub in ast.walk(node)}
    return skip


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """The project modules one import statement loads (a name that is a submodule counts as that module)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name not in ("resnext_lab", "hydra_plugins"):
            out.append(name)
    return out


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Every module's project imports (module level and in functions), and the function-local statements."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    local: list[tuple[str, int, str]] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        skip = _type_checking_only(tree)
        in_function = {
            id(sub)
            for fn in ast.walk(tree)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for sub in ast.walk(fn)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in skip:
                continue
            targets = [t for t in _targets(node, package) if t != module]
            edges[module] |= set(targets)
            if targets and id(node) in in_function:
                local.append((module, node.lineno, ", ".join(targets)))
    return edges, local


EDGES, LOCAL = _imports()


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, else None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_two_modules_import_each_other_directly_or_in_a_loop() -> None:
    assert EDGES["resnext_lab.sweep"] and EDGES["resnext_lab.job"]  # the scan sees imports at all
    cycle = _cycle(EDGES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_function_local_imports_of_the_project_are_few() -> None:
    listed = "\n".join(f"{m}:{line} imports {t}" for m, line, t in LOCAL)
    assert len(LOCAL) <= MAX_LOCAL_IMPORTS, listed


def test_config_imports_nothing_of_the_project_but_errors() -> None:
    assert EDGES["resnext_lab.config"] == {"resnext_lab.errors"}


def test_the_core_imports_no_tool() -> None:
    core = [m for m in EDGES if not m.startswith("resnext_lab.tools")]
    offenders = {m: sorted(t for t in EDGES[m] if t.startswith("resnext_lab.tools")) for m in core}
    assert not {m: t for m, t in offenders.items() if t}


def test_no_source_file_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long


def test_no_symlinks_in_the_configs() -> None:
    links = [str(p.relative_to(ROOT)) for d in ("conf", "experiments") for p in (ROOT / d).rglob("*") if p.is_symlink()]
    assert not links
