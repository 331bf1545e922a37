"""docs/SETTINGS.md from the schemas: `python -m resnext_lab.tools.settings_doc > docs/SETTINGS.md`."""

from __future__ import annotations

import dataclasses

from resnext_lab.config import RunSettings, default_of
from resnext_lab.data.settings import DATA_SCHEMAS
from resnext_lab.job import GROUPS
from resnext_lab.models import Model


def _rows(schema: type, prefix: str) -> list[str]:
    rows = []
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if "schema" in f.metadata:
            rows += _rows(f.metadata["schema"], key)
            continue
        value = default_of(f)
        shown = (
            "null"
            if value is None
            else str(value).lower()
            if isinstance(value, bool)
            else str(list(value))
            if isinstance(value, tuple)
            else str(value)
        )
        rows.append(f"| `{key}` | `{shown}` | {f.metadata['rule'].accepted} | {f.metadata['doc']} |")
    return rows


def settings_markdown() -> str:
    """Every setting of every schema: its default, what it accepts and what it means (docs/SETTINGS.md)."""
    sections = [
        ("Top level", RunSettings, ""),
        *((f"`{group}`", schema, group) for group, schema in GROUPS.items()),
        ("`model`", Model, "model"),
        *((f"`data={name}`", schema, "data") for name, schema in DATA_SCHEMAS.items()),
    ]
    out = [
        "# Settings",
        "",
        "Every setting of `python run.py`, with its default and what it accepts, as the schemas in",
        "`src/resnext_lab/config.py`, `models/spec.py` (`model`) and `data/settings.py` state them (made by",
        "`make settings`; a test keeps it current). A group's YAML under `conf/` extends its schema and",
        "states only what it changes; the launchers' settings are their plugins'.",
        "",
    ]
    for title, schema, prefix in sections:
        out += [
            f"## {title}",
            "",
            (schema.__doc__ or "").strip(),
            "",
            "| setting | default | accepts | meaning |",
            "|---|---|---|---|",
            *_rows(schema, prefix),
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":
    print(settings_markdown(), end="")
