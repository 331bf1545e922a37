"""The install is reproducible: the environment holds exactly the versions of requirements/lock.txt, and the
README's notebook command has its server."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from conftest import ROOT

LOCK = ROOT / "requirements" / "lock.txt"


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def test_environment_is_the_lock_file() -> None:
    """`make install` (with LOCK=requirements/lock.txt, its default) installs every pinned version and nothing else."""
    pinned = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[_name(name)] = version.strip()
    installed = {_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("resnext-lab", None)
    differ = {
        n: (installed.get(n), pinned.get(n)) for n in set(pinned) | set(installed) if installed.get(n) != pinned.get(n)
    }
    assert not differ, f"installed vs {LOCK.name} (run `make install`, or `make lock` to take new releases): {differ}"


def test_notebook_command_of_the_readme_has_its_server() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make notebook" in readme and "jupyter notebook notebooks/analysis.ipynb" in readme
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.run([str(jupyter), "notebook", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and re.fullmatch(r"7\.\d+\.\d+", proc.stdout.strip()), proc.stderr


def test_every_imported_package_is_declared() -> None:
    """Each third-party package that src/ imports is a dependency in pyproject.toml, not just a dependency's."""
    import ast

    imported = set()
    for path in (ROOT / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    imported -= set(sys.stdlib_module_names) | {"resnext_lab", "hydra_plugins"}
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # tomllib is 3.11+; the project runs on 3.10
    block = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.MULTILINE | re.DOTALL).group(1)
    declared = {_name(spec) for spec in re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block, re.MULTILINE)}
    providers = metadata.packages_distributions()
    undeclared = {m: providers.get(m) for m in imported if not declared & {_name(d) for d in providers.get(m, [])}}
    assert not undeclared, f"imported by src/ but not in pyproject.toml's dependencies: {undeclared}"
