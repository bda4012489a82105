"""`acsl targets [NAME]`: list the deployment targets (targets/*.yaml) or show one."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("targets", help="list deployment targets (targets/*.yaml) or show one")
    p.add_argument("name", nargs="?", help="a target name or path to a target YAML: print all its fields")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolchain.targets import TARGETS_DIR, format_targets_table, list_targets, load_target

    if args.name:
        print(json.dumps(load_target(args.name).model_dump(mode="json"), indent=2))
        return 0
    print(format_targets_table(list_targets()))
    print(f"\n(target files: {TARGETS_DIR}; add a device by dropping a YAML there or pass --target path/to.yaml)")
    return 0
