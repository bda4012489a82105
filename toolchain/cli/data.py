"""`acsl data check CONFIG [--data PATH] [--profile P] [--full] [--json OUT]`: validate a dataset
folder (every image opens, every label exists, is in range and has its image's size, every points.json
entry is a list of [x, y] pairs inside its image) and print its statistics. Problems are printed one
line each (all of them, not just the first) and the exit status is 2."""
from __future__ import annotations

import sys

from toolchain.cli.common import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("data", help="dataset tools: `acsl data check CONFIG` validates a folder")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    check = data_sub.add_parser("check", help="validate a dataset folder and print its statistics")
    add_config_args(check)
    check.add_argument("--full", action="store_true", help="decode every image (default: header check)")
    check.add_argument("--json", dest="json_out", metavar="OUT", help="also write the statistics as JSON")
    check.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def run_check(args) -> int:
    from toolchain.data.check import DataProblems, check_dataset, format_report
    from toolchain.utils.io import write_json

    cfg = config_from_args(args)
    try:
        report = check_dataset(cfg, full=args.full)
    except DataProblems as err:
        for line in err.problems:
            print(f"acsl data check: error: {line}", file=sys.stderr)
        print(f"acsl data check: {len(err.problems)} problem(s) found; fix them and rerun", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json_out:
        write_json(args.json_out, report)
        print(f"statistics written to {args.json_out}")
    print("ok: no problems found")
    return 0
