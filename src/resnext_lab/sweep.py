"""The closing table of a sweep, read from its jobs' results.json files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = ("job", "C", "d", "depth", "params", "GFLOPs", "test top-1 err %", "epochs", "status")


def _row(run_dir: Path, sweep_dir: Path, result: dict[str, Any]) -> tuple[str, ...]:
    m, model = result.get("metrics") or {}, result.get("model") or {}
    err = m.get("test/top1_err")
    return (
        str(run_dir.relative_to(sweep_dir)),
        str(model.get("cardinality", "?")),
        str(model.get("width", "?")),
        str(model.get("depth", "?")),
        f"{model['params']:,}" if "params" in model else "?",
        f"{model['flops'] / 1e9:.3f}" if "flops" in model else "?",
        f"{err:.2f}" if isinstance(err, int | float) else "-",
        str(result.get("epochs", "-")),
        str(result.get("status", "?")),
    )


def summarize_sweep(sweep_dir: Path) -> list[str]:
    """Print the sweep's table; return the job folders that did not complete."""
    rows, bad = [], []
    for path in sorted(sweep_dir.rglob("results.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            result = {"status": "unreadable"}
        rows.append(_row(path.parent, sweep_dir, result))
        if result.get("status") != "completed":
            bad.append(f"{path.parent.relative_to(sweep_dir)}: {result.get('status')}: {result.get('error') or ''}")
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    lines = [f"sweep {sweep_dir} ({len(rows)} jobs)", "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if bad:
        lines.append(f"{len(bad)} job(s) did not complete:")
        lines += [f"  {b}" for b in bad]
    print("\n".join(lines), flush=True)
    return bad
