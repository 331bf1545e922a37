"""`make wheelhouse`'s rules: which platform tags a node runs, and the closure check over the wheels' Requires-Dist."""

from __future__ import annotations

import zipfile
from pathlib import Path

from resnext_lab.tools.wheelhouse import marker_environment, missing, platform_tags


def _wheel(folder: Path, name: str, requires: list[str]) -> None:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{name}-1.0.dist-info/METADATA", "\n".join(lines) + "\n")


def test_platform_tags_reach_back_to_manylinux1_and_no_further_forward() -> None:
    tags = platform_tags("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64"
    for tag in ("manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"):
        assert tag in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert platform_tags("manylinux_2_17_aarch64")[-1] == "manylinux1_aarch64"
    assert marker_environment("3.12", "manylinux2014_aarch64")["platform_machine"] == "aarch64"


def test_missing_names_a_requirement_neither_the_wheelhouse_nor_the_image_has(tmp_path: Path) -> None:
    _wheel(
        tmp_path,
        "demo",
        ["omegaconf>=2.3", "numpy", 'not-needed; extra == "media"', 'old-backport; python_version < "3.9"'],
    )
    assert missing(tmp_path, "3.12", "manylinux_2_28_x86_64") == ["demo needs omegaconf>=2.3"]
    _wheel(tmp_path, "omegaconf", [])
    assert missing(tmp_path, "3.12", "manylinux_2_28_x86_64") == []
    assert missing(tmp_path, "3.8", "manylinux_2_28_x86_64") == ['demo needs old-backport; python_version < "3.9"']
