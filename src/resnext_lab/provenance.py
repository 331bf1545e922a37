"""Which code ran: the git commit, whether the tree was dirty and a hash of its diff, and a hash of the
analysis code (the `report` package and every module of the project it imports), computed from the files.

Cheap and safe anywhere: one `git status` call for a clean tree (two with the diff for a dirty one), and
outside a git checkout, or without git, every git value is None rather than an error.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import subprocess
from collections.abc import Iterable
from pathlib import Path

from resnext_lab.files import write_atomic

#: the package's folder: git finds the checkout the running code came from
PACKAGE = Path(__file__).resolve().parent
#: what a digest is cut to: 16 hex digits (64 bits), in file names and in results.json alike
DIGEST = 16
#: the analysis code: this package and every project module it imports (its command line is not analysis)
ANALYSIS_ROOTS = ("resnext_lab.report",)
ANALYSIS_LEFT_OUT = ("resnext_lab.report.__main__",)
#: an untracked file larger than this is kept in the diff by its size and hash, not its content
UNTRACKED_LIMIT = 1 << 20
#: where a sweep keeps the diffs of the dirty trees its jobs ran from
DIFF_FOLDER = "provenance"


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST]


@dataclasses.dataclass(frozen=True)
class GitState:
    """The checkout's state: commit (None outside git), dirty (None when unknown), the diff's hash and text."""

    commit: str | None = None
    dirty: bool | None = None
    diff_hash: str | None = None
    diff: bytes = b""

    def record(self) -> dict[str, str | bool | None]:
        """The fields results.json and a pre-registration keep."""
        return {"git_commit": self.commit, "git_dirty": self.dirty, "git_diff_hash": self.diff_hash}


def _git(args: list[str], cwd: Path) -> bytes | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: Path = PACKAGE) -> GitState:
    """The commit of the checkout holding `cwd`, whether its tree differs from it (tracked changes or untracked
    files that git does not ignore) and, when it does, the diff: `git diff HEAD` and each untracked file whole."""
    status = _git(["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"], cwd)
    if status is None:
        return GitState()
    items = [i for i in status.decode("utf-8", "replace").split("\0") if i]
    oid = next((i.split()[2] for i in items if i.startswith("# branch.oid ")), None)
    commit = oid if oid and oid != "(initial)" else None
    changes = [i for i in items if not i.startswith("#")]
    if not changes:
        return GitState(commit, False)
    diff = (_git(["diff", "HEAD", "--binary", "--no-ext-diff", "--no-color"], cwd) or b"") if commit else b""
    top = _git(["rev-parse", "--show-toplevel"], cwd) if any(i.startswith("? ") for i in changes) else None
    for item in sorted(i[2:] for i in changes if i.startswith("? ")):
        path = Path(top.decode().strip()) / item if top else None
        try:
            content = path.read_bytes() if path else b""
        except OSError:
            content = b"(unreadable)\n"
        size = len(content)
        if size > UNTRACKED_LIMIT:  # a large file by its hash: the diff stays a text a referee reads
            content = f"(not copied: sha256 {hashlib.sha256(content).hexdigest()})\n".encode()
        diff += f"untracked file: {item} ({size} bytes)\n".encode() + content + b"\n"
    return GitState(commit, True, digest(diff), diff)


def save_diff(state: GitState, folder: Path) -> Path | None:
    """Keep a dirty tree's diff once in `folder`/provenance/<hash>.diff (None for a clean or unknown tree)."""
    if not state.dirty or state.diff_hash is None:
        return None
    path = Path(folder) / DIFF_FOLDER / f"{state.diff_hash}.diff"
    if not path.is_file():
        write_atomic(path, lambda handle: handle.write(state.diff))
    return path


# --- the analysis code --------------------------------------------------------------------------------------


def _module_file(name: str, src: Path) -> Path | None:
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path, name: str, src: Path) -> set[str]:
    """The project modules a file imports (at module level or in a function), with the packages above them."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for candidate in names:
            while candidate.startswith("resnext_lab") and _module_file(candidate, src) is None:
                candidate = candidate.rpartition(".")[0]
            while candidate.startswith("resnext_lab"):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                found.add(candidate)
                candidate = candidate.rpartition(".")[0]
    return found


def analysis_files(
    roots: Iterable[str] = ANALYSIS_ROOTS, left_out: Iterable[str] = ANALYSIS_LEFT_OUT, src: Path | None = None
) -> dict[str, Path]:
    """Every module of `roots` (packages: all their modules) and, transitively, every project module they import:
    {module name: file}, `left_out` modules not followed."""
    src = src or PACKAGE.parent
    skip = set(left_out)
    todo: list[str] = []
    for root in roots:
        folder = src.joinpath(*root.split("."))
        todo.append(root)
        if folder.is_dir():
            todo += [f"{root}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.stem != "__init__"]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name in skip or (path := _module_file(name, src)) is None:
            continue
        seen[name] = path
        todo += sorted(_imported(path, name, src) - set(seen))
    return dict(sorted(seen.items()))


def analysis_code(src: Path | None = None) -> dict[str, object]:
    """The analysis code's hash and each of its files' ({"hash": ..., "files": {relative path: hash}}), from the
    files' bytes alone: the same files give the same hash on any machine, in or out of git."""
    src = src or PACKAGE.parent
    files = {str(p.relative_to(src.parent)): digest(p.read_bytes()) for p in analysis_files(src=src).values()}
    listing = "".join(f"{path} {h}\n" for path, h in sorted(files.items()))
    return {"hash": digest(listing.encode()), "files": dict(sorted(files.items()))}
