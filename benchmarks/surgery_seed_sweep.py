"""Full demo prune (dense train -> ACSL sparsity -> select -> slim + surgery check) for many seeds, recording the
check's float32 and float64 errors.  usage: python benchmarks/surgery_seed_sweep.py OUT_DIR FIRST_SEED STOP_SEED
The log this wrote is committed as benchmarks/results/surgery_seed_sweep_demo.log (run on the old float32 check)."""
import sys, json, time, shutil, copy
import torch
from pathlib import Path
from toolchain.config import load_config
from toolchain.errors import ToolchainError
from toolchain.train.dense import train_dense
from toolchain.prune.pipeline import run_prune
import toolchain.prune.surgery as surgery

torch.set_num_threads(1)
out = Path(sys.argv[1]); start, stop = int(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
errors = {}
orig = surgery.verify_equivalence
def spy(dense, slim, bn, inputs, rtol=surgery.RELATIVE_TOLERANCE):
    """Record the check's error in float32 and in float64, then run the real check."""
    for name, dtype in (("fp32", torch.float32), ("fp64", torch.float64)):
        ref, got = surgery._outputs(dense, slim, bn, inputs, dtype)
        errors[name] = surgery.relative_error(ref, got)
    return orig(dense, slim, bn, inputs, rtol)


surgery.verify_equivalence = spy
for seed in range(start, stop):
    errors.clear()
    cfg = load_config("configs/demo.yaml", overrides={"train": {"seed": seed}, "prune": {"seed": seed}})
    run = out / f"seed{seed}"
    t = time.time()
    try:
        res = train_dense(cfg, run, resume=True)
        run_prune(cfg, res.best_path, out=run / "prune", evaluate_test=False)
        status = "ok"
    except ToolchainError as exc:
        status = f"error: {exc}"[:200]
    print(json.dumps({"seed": seed, "status": status, **errors, "s": round(time.time() - t, 1)}), flush=True)
    shutil.rmtree(run, ignore_errors=True)
