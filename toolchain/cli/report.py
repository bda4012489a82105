"""`acsl report combine reports/*.json -o devices.html` and `acsl report render report.json -o DIR`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolchain.errors import ToolchainError


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="combine deploy reports across devices, or re-render one")
    sub = p.add_subparsers(dest="report_command", metavar="ACTION")
    c = sub.add_parser("combine", help="one table and plot across devices (same schema version only)")
    c.add_argument("reports", nargs="+", help="report.json files (e.g. deploy/*/report.json)")
    c.add_argument("-o", "--out", default="devices.html", help="output HTML (a .json of the rows is written next to it)")
    c.set_defaults(func=run_combine)
    r = sub.add_parser("render", help="write Markdown + HTML + PNGs from a report.json")
    r.add_argument("report", help="report.json")
    r.add_argument("-o", "--out", required=True, help="output folder")
    r.set_defaults(func=run_render)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_combine(args: argparse.Namespace) -> int:
    from toolchain.report.combine import combine_reports

    paths = combine_reports(args.reports, args.out)
    print(f"combined {len(args.reports)} reports -> {paths['html']} (rows: {paths['json']})")
    return 0


def run_render(args: argparse.Namespace) -> int:
    from toolchain.report.render import write_report

    try:
        report = json.loads(Path(args.report).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ToolchainError(f"cannot read {args.report}: {err}") from None
    paths = write_report(report, args.out)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
