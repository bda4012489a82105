"""The pruning methods `acsl prune --method` accepts: which sparsity phase and which saliency each uses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from toolchain.errors import ToolchainError


@dataclass(frozen=True)
class Method:
    name: str
    sparsity: Optional[str]  # regulariser of the sparsity-learning phase (sparsity.py), None = none
    saliency: str            # channel ranking (importance.py)
    description: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("acsl", "acsl", "bn-scale", "adaptive correlation-driven sparsity learning (ACSL.md section 3)"),
    Method("cap", "cap", "bn-scale", "context-aware guided sparsification (ACSL.md section 2)"),
    Method("slimming", "slimming", "bn-scale", "Network Slimming: uniform L1 on BN gammas"),
    Method("bn-scale", None, "bn-scale", "|gamma| ranking of the unregularised model"),
    Method("l1", None, "l1", "L1-norm filter pruning (Li et al. 2017)"),
    Method("fpgm", None, "fpgm", "filter pruning via geometric median (He et al. 2019)"),
    Method("depgraph", "depgraph", "depgraph", "DepGraph group-norm sparse learning (Torch-Pruning)"),
    Method("random", None, "random", "random channel selection (sanity floor)"),
]}

# Reference points of the compression benchmark (not pruning methods: trained from scratch).
SCRATCH_METHODS = ("scratch-plan", "scratch-uniform")

# Peers: other tools' pruning run through the same recovery and metrics (toolchain/prune/modelopt_peer.py).
PEER_METHODS = ("modelopt-fastnas",)


def get_method(name: str) -> Method:
    method = METHODS.get(str(name).strip().lower())
    if method is None:
        raise ToolchainError(f"unknown pruning method '{name}' (valid: {', '.join(METHODS)})")
    return method
