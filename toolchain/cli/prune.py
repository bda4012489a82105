"""`acsl prune CONFIG --checkpoint DENSE.pt [--method M] [--budget B] [--recover R]`: sparsity learning,
channel selection, physical removal and recovery, each stage with a JSON record under the run folder."""
from __future__ import annotations

from toolchain.cli.common import add_config_args, config_from_args


def register(sub) -> None:
    from toolchain.prune.methods import METHODS, PEER_METHODS, SCRATCH_METHODS

    p = sub.add_parser("prune", help="prune a dense checkpoint (ACSL by default) to a parameter or FLOPs budget")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="dense checkpoint from `acsl train`")
    p.add_argument("--method", help=f"one of {', '.join(list(METHODS) + list(PEER_METHODS))} (default: prune.method of "
                   f"the config, acsl); {' and '.join(SCRATCH_METHODS)} are run by benchmarks/compression.py")
    p.add_argument("--budget", help="params=F or flops=F, F the fraction removed, or latency=Tms predicted on "
                   "deploy.target from a measured per-layer table (default: prune.budget)")
    p.add_argument("--recover", choices=["finetune", "distill", "auto", "none"],
                   help="recovery after removal (default: prune.recover.method)")
    p.add_argument("--out", help="run folder (default: <out_dir>/<name>/prune/<method>_<budget>)")
    p.add_argument("--modelopt-divisor", type=int, metavar="N",
                   help="modelopt-fastnas only: ModelOpt's channel multiple (default: its own, 32); docs/MODELOPT.md")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolchain.errors import ToolchainError
    from toolchain.prune.methods import PEER_METHODS, SCRATCH_METHODS, get_method
    from toolchain.prune.pipeline import run_prune

    if args.method in SCRATCH_METHODS:
        raise ToolchainError(f"'{args.method}' is a from-scratch reference, not a pruning method; run it with "
                             "benchmarks/compression.py")
    if args.modelopt_divisor is not None and args.method not in PEER_METHODS:
        raise ToolchainError("--modelopt-divisor applies to --method modelopt-fastnas only")
    if args.method in PEER_METHODS:
        from toolchain.prune.modelopt_peer import require_modelopt, run_modelopt_prune

        require_modelopt()  # a missing package is one line naming the extra, before loading anything
        record = run_modelopt_prune(config_from_args(args), args.checkpoint, budget=args.budget,
                                    recover_method=args.recover, out=args.out, divisor=args.modelopt_divisor)
    else:
        if args.method:
            get_method(args.method)  # fail fast on a typo, before loading anything
        cfg = config_from_args(args)
        record = run_prune(cfg, args.checkpoint, method=args.method, budget=args.budget, recover_method=args.recover,
                           out=args.out)
    name = record["metric"]
    fr = record["fraction_removed"]
    print(f"{record['method']} {record['budget']['kind']}={record['budget']['value']:g}: "
          f"params {record['dense']['params']:,} -> {record['after']['params']:,} ({fr['params']:.1%} removed), "
          f"MACs {record['dense']['macs']:,} -> {record['after']['macs']:,} ({fr['flops']:.1%} removed)")
    test = f", test {name} {record['test']:.4f}" if record.get("test") is not None else ""
    print(f"val {name}: dense {record['dense']['val']:.4f} -> pruned {record['val']:.4f} "
          f"(recover: {record['recover']}){test}")
    print(f"checkpoint: {record['checkpoint']}")
    return 0
