"""Tables as text, one way for each medium: rich for the terminal, `markdown` for report files (csv: pandas).

Every table the project prints or writes goes through here: the sweep's closing table, the plan, the ablation
report and the paper tables. Light to import (no torch, no pandas): the plan and the sweep's callbacks use it.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table


def terminal(
    columns: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None, right: Iterable[str] = ()
) -> str:
    """The rows under their columns as plain text (no colour, never wrapped), for the terminal or a log, under
    `title` on a line of its own; the columns named in `right` are aligned right (numbers)."""
    right = set(right)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(str(v) for v in row))
    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None, force_terminal=False).print(table)
    lines = [line.rstrip() for line in out.getvalue().rstrip("\n").splitlines()]
    return "\n".join([title, *lines] if title else lines)


def markdown(columns: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[str] = ()) -> list[str]:
    """The rows as a markdown table, one line each; `|` in a value is escaped, `right` columns right-aligned."""
    right = set(right)
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if c in right else "---" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines
