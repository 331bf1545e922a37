"""`make wheelhouse`: the wheels an air-gapped GPU node needs beyond its image, and Fashion-MNIST, in one folder.

    python -m resnext_lab.tools.wheelhouse --python-version 3.12 --platform manylinux_2_28_x86_64

The node's image is taken to hold Python with `IMAGE` (torch's stack) and everything those need. This
downloads, with `pip download --no-deps --only-binary=:all:` for the node's Python and platform, each
package the project needs that the image lacks, at the version in requirements/lock.txt, then the
packages those need (read from each wheel's Requires-Dist, markers evaluated for the node), until nothing
is missing; a package PyPI has only as source (antlr4-python3-runtime 4.9.3) is built here, and must
build pure Python. The project itself goes in as a wheel; the IDX files in `fashion-mnist/`.
See docs/OFFLINE.md.
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]

# what the node's image has installed (with what these need): torch's stack and the usual science libraries
IMAGE = [
    *("torch", "torchvision", "pytorch-lightning", "torchmetrics", "numpy", "scipy", "pandas", "matplotlib"),
    *("rich", "psutil", "tensorboard", "pyyaml", "pytest"),
]
# the project's requirements left out of the wheelhouse, and why
LEFT_OUT = {"wandb-workspaces": "only `make dashboard` imports it, and that needs the network"}
# the image has these (torch needs filelock) but maybe older than the project needs: shipped anyway
ALSO = {"filelock": "the run folder's flock needs filelock >= 3.30 (on_acquired); torch asks for any"}
DATA = Path("/usr/share/datasets/fashion-mnist")
LIMIT_MIB = 60  # the wheels (wandb is 20 MiB of them); the data set adds 29 MiB


def platform_tags(platform: str) -> list[str]:
    """The node's platform tag and every older manylinux tag its glibc also runs (2_N down to 2_5, with aliases)."""
    found = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not found:
        return [platform]
    glibc, arch = int(found.group(1)), found.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    aliases = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{alias}_{arch}" for minor, alias in aliases.items() if minor <= glibc]


def marker_environment(python_version: str, platform: str) -> dict[str, str]:
    """PEP 508 marker values for the node (CPython on Linux), to decide which Requires-Dist apply there."""
    arch = re.sub(r"^(manylinux\w*?_(\d+_\d+_)?|linux_)", "", platform)
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "implementation_version": f"{python_version}.0",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_system": "Linux",
        "platform_machine": arch,
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


def applies(requirement: Requirement, env: dict[str, str]) -> bool:
    return requirement.marker is None or Marker(str(requirement.marker)).evaluate(env)


def read_lock(path: Path) -> dict[str, str]:
    """`name==version` lines of the lock file, by canonical name."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==", 1)
            pins[canonicalize_name(name)] = version
    return pins


def wheel_requires(wheel: Path) -> list[Requirement]:
    """A wheel's Requires-Dist, read from its METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        metadata = email.parser.Parser().parsestr(zf.read(name).decode())
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def wheel_name(wheel: Path) -> str:
    return canonicalize_name(wheel.name.split("-")[0])


def image_closure(env: dict[str, str]) -> set[str]:
    """IMAGE and what it needs, walked through the distributions installed here (make install's, the lock's)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in IMAGE]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [canonicalize_name(r.name) for r in map(Requirement, requires) if applies(r, env)]
    return seen


def _pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)


def fetch(name: str, version: str, out: Path, python_version: str, tags: Iterable[str]) -> Path:
    """One wheel, no dependencies: a binary for the node, else built here from source if it builds pure Python."""
    before = set(out.glob("*.whl"))
    spec = f"{name}=={version}"
    platforms = [arg for tag in tags for arg in ("--platform", tag)]
    proc = _pip(["download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
                 "--implementation", "cp", *platforms, "-d", str(out), spec])  # fmt: skip
    if proc.returncode:
        proc = _pip(["wheel", "-q", "--no-deps", "-w", str(out), spec])
        built = set(out.glob("*.whl")) - before
        if proc.returncode or not all(w.name.endswith("-py3-none-any.whl") for w in built):
            for wheel in built:
                wheel.unlink()
            raise SystemExit(f"wheelhouse: no wheel of {spec} for Python {python_version} on {next(iter(tags))}; "
                             f"PyPI has none and it does not build pure Python here ({proc.stderr.strip()[-300:]})")  # fmt: skip
    return next(w for w in out.glob("*.whl") if wheel_name(w) == canonicalize_name(name))


def build(out: Path, python_version: str, platform: str, lock: Path, data: Path | None) -> list[str]:
    """Fill `out`; returns one line per wheel saying why it is there."""
    env = marker_environment(python_version, platform)
    pins, image, tags = read_lock(lock), image_closure(env), platform_tags(platform)
    out.mkdir(parents=True, exist_ok=True)
    proc = _pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)])
    if proc.returncode:
        raise SystemExit(f"wheelhouse: the project's wheel did not build: {proc.stderr.strip()[-500:]}")
    project = next(out.glob("resnext_lab-*.whl"))
    todo = [(r, "resnext-lab") for r in wheel_requires(project) if applies(r, env)]
    todo += [(Requirement(name), why) for name, why in ALSO.items()]
    done, lines = {"resnext-lab"}, [f"{project.name}: the project"]
    while todo:
        requirement, wanted_by = todo.pop(0)
        name = canonicalize_name(requirement.name)
        if name in done or name in LEFT_OUT or (name in image and name not in ALSO):
            continue
        if name not in pins:
            raise SystemExit(f"wheelhouse: {name} (needed by {wanted_by}) has no version in {lock}; run make lock")
        if pins[name] not in requirement.specifier:
            raise SystemExit(f"wheelhouse: {lock} pins {name}=={pins[name]}, {wanted_by} asks {requirement}")
        wheel = fetch(name, pins[name], out, python_version, tags)
        done.add(name)
        lines.append(f"{wheel.name}: {ALSO.get(name, wanted_by)}")
        todo += [(r, name) for r in wheel_requires(wheel) if applies(r, env)]
    if data is not None:
        shutil.copytree(data, out / "fashion-mnist", dirs_exist_ok=True)
    return lines


def missing(out: Path, python_version: str, platform: str) -> list[str]:
    """Requirements of the wheels in `out` that neither `out` nor the image satisfies (empty: the closure holds)."""
    env = marker_environment(python_version, platform)
    have = {wheel_name(w) for w in out.glob("*.whl")} | image_closure(env) | set(LEFT_OUT)
    return [f"{wheel_name(w)} needs {r}" for w in sorted(out.glob("*.whl")) for r in wheel_requires(w)
            if applies(r, env) and canonicalize_name(r.name) not in have]  # fmt: skip


def size_mib(out: Path) -> float:
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_lab.tools.wheelhouse", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--python-version", default="3.12", help="the node's Python, major.minor")
    parser.add_argument("--platform", default="manylinux_2_28_x86_64", help="the node's newest platform tag")
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements/lock.txt")
    parser.add_argument("--out", type=Path, default=ROOT / ".wheelhouse")
    parser.add_argument(
        "--data", type=Path, default=DATA, help="Fashion-MNIST's IDX files, copied to OUT/fashion-mnist"
    )
    parser.add_argument("--no-data", action="store_true", help="leave the data set out")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version {args.python_version}: accepted: major.minor, such as 3.12")
    data = None if args.no_data else args.data
    if data is not None and not sorted(data.glob("*-ubyte*")):
        parser.error(f"--data {data}: no Fashion-MNIST IDX files there; give their folder, or --no-data")
    with tempfile.TemporaryDirectory() as tmp:  # a failed build leaves the previous wheelhouse as it was
        staged = Path(tmp) / "house"
        lines = build(staged, args.python_version, args.platform, args.lock, data)
        gaps = missing(staged, args.python_version, args.platform)
        if gaps:
            raise SystemExit("wheelhouse: requirements neither the wheelhouse nor the image has: " + "; ".join(gaps))
        wheels = sum(w.stat().st_size for w in staged.glob("*.whl")) / 2**20
        if wheels > LIMIT_MIB:
            raise SystemExit(f"wheelhouse: {wheels:.1f} MiB of wheels, above the {LIMIT_MIB} MiB they are meant to fit")
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(staged, args.out)
    print("\n".join(lines))
    for name, why in LEFT_OUT.items():
        print(f"left out {name}: {why}")
    print(f"{args.out}: {len(lines)} wheels ({wheels:.1f} MiB) for CPython {args.python_version} on {args.platform}, "
          f"{size_mib(args.out):.1f} MiB with the data; every requirement is in it or in the image")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
