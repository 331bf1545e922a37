"""Command line: `python -m resnext_lab.report SWEEP_DIR [--table FILE.yaml | --experiment NAME [--scale S]] [--metric M]
[--out DIR]`.

With a table (a paper table's `report:` node) it renders that table beside the paper's numbers;
without, the sweep's ablation report (report/ablation.py): groups, deltas, Holm-adjusted verdicts,
seeds needed for the declared minimum effect.

Prints the markdown table and the written paths. Errors a user can fix (no such
folder, no results yet, a bad `report:` node) print as one line on stderr with
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from resnext_lab.errors import ConfigError
from resnext_lab.job import scales, table_at_scale
from resnext_lab.report.ablation import write_ablation
from resnext_lab.report.ablation_text import to_terminal
from resnext_lab.report.table_def import experiment_file, load_table_def
from resnext_lab.report.tables import write_report


def main(argv: Sequence[str] | None = None) -> int:
    """Write the report of one sweep for one table; 0 on success, 2 on an error the user can fix."""
    parser = argparse.ArgumentParser(
        prog="python -m resnext_lab.report",
        description="Rebuild a paper table from a sweep folder: seeds, 95% CIs, paper-ordering verdicts, figures.",
    )
    parser.add_argument("sweep_dir", type=Path, help="folder holding the jobs' results.json files (any depth)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--table", type=Path, help="YAML file with a top-level report: node")
    source.add_argument("--experiment", help="experiment name: reads experiments/NAME.yaml")
    parser.add_argument(
        "--scale",
        help=f"with --experiment: the table as NAME composes at this scale ({', '.join(s for s in scales() if s != 'none')}), whose presets "
        "may build smaller depths and widths than the paper's",
    )
    parser.add_argument(
        "--metric",
        help="the metric compared instead of the table's (or the ablation's test/top1_err), e.g. eval/test/top1_err "
        "(scored again by task=eval)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/report)")
    parser.add_argument("--baseline", help="ablation report: the group compared against, as key=value")
    parser.add_argument(
        "--min-effect",
        type=float,
        help="ablation report: the declared minimum effect (error points): equivalence margin and "
        "the effect seeds needed is computed for",
    )
    parser.add_argument(
        "--test",
        choices=("difference", "equivalence"),
        default="difference",
        help="ablation report: difference (better/worse) or equivalence (TOST at --min-effect)",
    )
    parser.add_argument("--exclude", help="ablation report: the declared exclusion rule (first_epoch_above_chance)")
    parser.add_argument("--alpha", type=float, default=0.05, help="ablation report: significance level (Holm)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else args.sweep_dir / "report"
    if args.scale and not args.experiment:
        parser.error("--scale needs --experiment")
    if args.table is None and args.experiment is None:
        try:
            report, written = write_ablation(
                args.sweep_dir,
                out,
                args.baseline,
                args.min_effect,
                test=args.test,
                exclude=args.exclude,
                alpha=args.alpha,
                **({"metric": args.metric} if args.metric else {}),
            )
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(to_terminal(report))
        for item in written:
            print(f"wrote {item}")
        return 0
    try:
        if args.scale:
            table = table_at_scale(args.experiment, args.scale)
        else:
            table = load_table_def(args.table if args.table is not None else experiment_file(args.experiment))
        written = write_report(args.sweep_dir, {**table, "metric": args.metric} if args.metric else table, out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(written[0].read_text(encoding="utf-8"))
    for item in written:
        print(f"wrote {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
